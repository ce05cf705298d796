"""The operator's settings: FLEETLM_OPERATOR_* environment variables (the Helm chart sets them).

They hold what a cluster decides and a model may not: the default images, the shared Redis,
the cluster's DNS domain. A model's own choices (router strategy and replicas, images) override
the defaults here (docs/operator.md).
"""

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PullPolicy = Literal["Always", "IfNotPresent", "Never"]
RouterStrategy = Literal["prefix", "round_robin", "least_load", "session"]


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLEETLM_OPERATOR_", extra="forbid")

    engine_image: str = "ghcr.io/fleetlm/engine-cuda:0.1.0"
    engine_cpu_image: str = "ghcr.io/fleetlm/engine-cpu:0.1.0"  # models with gpusPerNode 0
    router_image: str = "ghcr.io/fleetlm/router:0.1.0"
    image_pull_policy: PullPolicy = "IfNotPresent"
    # The Redis engines publish KV-cache events to and routers share state in; None: engines
    # publish nothing and each router keeps its state in-process.
    redis_url: str | None = None
    router_strategy: RouterStrategy = "prefix"  # a model's default spec.router.strategy
    router_replicas: int = Field(1, ge=0)  # a model's default spec.router.replicas
    cluster_domain: str = "cluster.local"  # status.endpoint: http://M.NS.svc.DOMAIN/v1
    # how often every model is reconciled again, whatever happened (drift: a child edited or
    # deleted by hand is restored; the status is recomputed)
    resync_interval_s: float = Field(30.0, gt=0)
    master_port: int = Field(29500, ge=1, le=65535)  # torch.distributed across nodes
