"""The router's settings: flags of `fleetlm router`, or FLEETLM_ROUTER_* environment variables."""

import os
import socket
from typing import Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fleetlm.engine.core.kv_events import DEFAULT_KEY_PREFIX, check_key_prefix

Strategy = Literal["prefix", "round_robin", "least_load", "session"]


class RouterSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FLEETLM_ROUTER_", extra="forbid", populate_by_name=True
    )

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    replicas: list[str] = Field(default_factory=list)  # engine base URLs (static discovery)
    # Also the replicas registered in Redis (`fleetlm serve --register-redis-url`).
    discover_redis: bool = False
    # Also the Ready pods of a label selector in Kubernetes, on `kubernetes_port` (watched).
    discover_kubernetes: bool = False
    # None: this pod's own namespace in a cluster, "default" with an explicit API URL.
    kubernetes_namespace: str | None = None
    kubernetes_label_selector: str = "app.kubernetes.io/component=engine"
    kubernetes_port: int = Field(8000, ge=1, le=65535)  # the engines' port in their pods
    # None: in-cluster (service account); else e.g. `kubectl proxy`'s http://127.0.0.1:8001.
    kubernetes_api_url: str | None = None
    strategy: Strategy = "prefix"
    # Shared state (in-flight counts, prefix index, rate limits) in this Redis; without it an
    # in-process store (one router). REDIS_URL is read too.
    redis_url: str | None = Field(
        None, validation_alias=AliasChoices("redis_url", "FLEETLM_ROUTER_REDIS_URL", "REDIS_URL")
    )
    # Every key this router reads or writes in Redis starts with it: the routers and engines
    # of one model share a prefix, and models sharing a Redis each have their own.
    redis_key_prefix: str = DEFAULT_KEY_PREFIX
    router_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    # With Redis: follow the engines' KV-cache events (engines started with
    # --kv-events-redis-url) for an exact prefix view; otherwise remember where prompts went.
    kv_events: bool = True
    prefix_ttl_s: float = Field(3600.0, gt=0)  # remembered placements expire (Redis)
    # The served model's tokenizer (a Hugging Face directory): prompts are tokenized and cut
    # into blocks hashed as the engine hashes them. Without one, only token-id prompts are.
    tokenizer: str | None = None
    block_size: int = Field(16, ge=1)  # the engines' KV block size
    prefix_index_size: int = Field(200_000, ge=1)  # block hashes remembered (LRU)
    # Prefix routing weighs a cached token against load: one request in flight or waiting
    # on a replica costs as much as this many cached prompt tokens.
    load_cost_tokens: int = Field(256, ge=0)
    # Never pile onto a hot replica: a replica more than this many requests above the least
    # loaded one is not chosen for its cache.
    max_load_gap: int = Field(8, ge=0)
    session_header: str = "x-session-id"
    # Per-API-key limits (None: no limit), counted in the store: every router shares them.
    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1)
    health_check_interval_s: float = Field(1.0, gt=0)
    health_check_timeout_s: float = Field(2.0, gt=0)
    # A replica is ejected after this many failed health checks or failed requests in a row,
    # and readmitted at its first passing health check.
    unhealthy_after: int = Field(2, ge=1)
    max_attempts: int = Field(3, ge=1)  # replicas tried per request before the first byte
    connect_timeout_s: float = Field(2.0, gt=0)
    request_timeout_s: float = Field(600.0, gt=0)
    log_level: str = "info"

    @model_validator(mode="after")
    def _has_replicas(self) -> "RouterSettings":
        if self.discover_redis and not self.redis_url:
            raise ValueError("discover_redis needs redis_url (or REDIS_URL)")
        if not self.replicas and not self.discover_redis and not self.discover_kubernetes:
            raise ValueError("no replicas: give a list, or discover them in Redis or Kubernetes")
        return self

    @field_validator("redis_key_prefix")
    @classmethod
    def _check_key_prefix(cls, value: str) -> str:
        return check_key_prefix(value)

    @field_validator("replicas", mode="before")
    @classmethod
    def _split(cls, value):
        if isinstance(value, str):
            value = value.split(",")
        return [url.strip().rstrip("/") for url in value if url.strip()]
