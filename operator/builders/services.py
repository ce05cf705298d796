"""Services: per pool `M-POOL` (the pool's leaders), the model's `M` (the router, or the
engines without one), and for the StatefulSet fallback the headless `M-POOL-hl`."""

from collections.abc import Mapping
from typing import Any

from fleetlm.operator import naming
from fleetlm.operator.builders.engine import HTTP_PORT
from fleetlm.operator.builders.meta import object_meta
from fleetlm.operator.spec import InferenceModel, Pool

MODEL_SERVICE_PORT = 80


def pool_service(model: InferenceModel, pool: Pool, *, owner: Mapping[str, Any]) -> dict[str, Any]:
    """`M-POOL`: ClusterIP, port 8000, the pool's leaders."""
    selector = naming.selector_labels(
        model.name, component=naming.ENGINE, pool=pool.name, role=naming.LEADER
    )
    labels = naming.labels(model.name, component=naming.ENGINE, pool=pool.name)
    name = naming.pool_name(model.name, pool.name)
    return _service(model, owner, name, labels, selector, port=HTTP_PORT)


def model_service(model: InferenceModel, *, owner: Mapping[str, Any]) -> dict[str, Any]:
    """`M`: ClusterIP, port 80 → the router's 8000; with `router.replicas: 0`, → the leaders'
    8000 (of every pool)."""
    if model.router.replicas > 0:
        component = naming.ROUTER
        selector = naming.selector_labels(model.name, component=naming.ROUTER)
    else:
        component = naming.ENGINE
        selector = naming.selector_labels(model.name, component=naming.ENGINE, role=naming.LEADER)
    labels = naming.labels(model.name, component=component)
    name = naming.model_service_name(model.name)
    return _service(model, owner, name, labels, selector, port=MODEL_SERVICE_PORT)


def headless_service(
    model: InferenceModel, pool: Pool, *, owner: Mapping[str, Any]
) -> dict[str, Any]:
    """`M-POOL-hl`: DNS names for the pool's pods (StatefulSet fallback), not-ready ones too:
    a leader is ready only once its workers, which look it up, have joined."""
    selector = naming.selector_labels(model.name, component=naming.ENGINE, pool=pool.name)
    labels = naming.labels(model.name, component=naming.ENGINE, pool=pool.name)
    name = naming.headless_service_name(model.name, pool.name)
    service = _service(model, owner, name, labels, selector, port=HTTP_PORT)
    service["spec"]["clusterIP"] = "None"
    service["spec"]["publishNotReadyAddresses"] = True
    return service


def _service(
    model: InferenceModel,
    owner: Mapping[str, Any],
    name: str,
    labels: dict[str, str],
    selector: dict[str, str],
    *,
    port: int,
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(model, owner, name, labels),
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}],
        },
    }
