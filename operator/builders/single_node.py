"""A pool whose replicas fit on one node (or CPU pods): a Deployment `M-POOL`, one pod per
replica, each pod a leader requesting the replica's G GPUs."""

from collections.abc import Mapping
from typing import Any

from fleetlm.operator import naming
from fleetlm.operator.builders.engine import engine_pod_template, startup_budget_s
from fleetlm.operator.builders.meta import object_meta
from fleetlm.operator.settings import OperatorSettings
from fleetlm.operator.spec import InferenceModel, Pool


def deployment(
    model: InferenceModel, pool: Pool, settings: OperatorSettings, *, owner: Mapping[str, Any]
) -> dict[str, Any]:
    name = naming.pool_name(model.name, pool.name)
    labels = naming.labels(model.name, component=naming.ENGINE, pool=pool.name)
    selector = naming.selector_labels(
        model.name, component=naming.ENGINE, pool=pool.name, role=naming.LEADER
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": object_meta(model, owner, name, labels),
        "spec": {
            "replicas": pool.replicas,
            "selector": {"matchLabels": selector},
            # Never below the desired capacity while rolling: a new pod starts (and loads its
            # model) before an old one stops. Without a free GPU the rollout waits, serving.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            # A rollout is stuck only once a new pod had its whole startup budget, and more.
            "progressDeadlineSeconds": startup_budget_s(pool) + 600,
            "template": engine_pod_template(model, pool, settings, role=naming.LEADER),
        },
    }
