"""A PodDisruptionBudget `M-POOL` per pool: voluntary evictions (node drains) take one pod of
the pool at a time, so at most one replica is down for them."""

from collections.abc import Mapping
from typing import Any

from fleetlm.operator import naming
from fleetlm.operator.builders.meta import object_meta
from fleetlm.operator.spec import InferenceModel, Pool


def pod_disruption_budget(
    model: InferenceModel, pool: Pool, *, owner: Mapping[str, Any]
) -> dict[str, Any]:
    selector = naming.selector_labels(model.name, component=naming.ENGINE, pool=pool.name)
    labels = naming.labels(model.name, component=naming.ENGINE, pool=pool.name)
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": object_meta(model, owner, naming.pool_name(model.name, pool.name), labels),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector}},
    }
