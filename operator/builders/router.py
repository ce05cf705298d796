"""The router: ServiceAccount, Role (pods get/list/watch) and RoleBinding `M-router`, and the
Deployment `M-router` running `fleetlm router`, discovering the model's leader pods.

NOTE: no `--tokenizer`. The router image holds no model, so the router hashes only token-id
prompts for the prefix index; with Redis it follows the engines' KV-cache events instead.
NOTE: the router's /health is 503 while no engine is ready (its readiness, so Service `M`
sends nothing to a router with nowhere to send it); liveness is a TCP check, or every router
would restart while the engines load their models.
"""

from collections.abc import Mapping
from typing import Any

from fleetlm.operator import naming
from fleetlm.operator.builders.engine import HEALTH_PATH, HTTP_PORT
from fleetlm.operator.builders.meta import object_meta, with_spec_hash
from fleetlm.operator.settings import OperatorSettings
from fleetlm.operator.spec import InferenceModel

ROUTER_RESOURCES = {"requests": {"cpu": "500m", "memory": "512Mi"}}


def router_args(model: InferenceModel, settings: OperatorSettings) -> list[str]:
    """`fleetlm router ...` (without the leading `fleetlm`)."""
    args = ["router", "--host", "0.0.0.0", "--port", str(HTTP_PORT), "--discover", "kubernetes"]
    args += ["--kubernetes-label-selector", naming.router_pod_selector(model.name)]
    args += ["--strategy", model.router.strategy]
    if settings.redis_url:
        args += ["--redis-url", settings.redis_url]
        args += ["--redis-key-prefix", naming.redis_key_prefix(model.namespace, model.name)]
    return args


def service_account(model: InferenceModel, *, owner: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(model, owner),
    }


def role(model: InferenceModel, *, owner: Mapping[str, Any]) -> dict[str, Any]:
    """Read the pods of the model's namespace (discovery watches the leaders)."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _meta(model, owner),
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}],
    }


def role_binding(model: InferenceModel, *, owner: Mapping[str, Any]) -> dict[str, Any]:
    name = naming.router_name(model.name)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(model, owner),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": model.namespace}],
    }


def deployment(
    model: InferenceModel, settings: OperatorSettings, *, owner: Mapping[str, Any]
) -> dict[str, Any]:
    selector = naming.selector_labels(model.name, component=naming.ROUTER)
    template = {
        "metadata": {"labels": naming.labels(model.name, component=naming.ROUTER)},
        "spec": {
            "serviceAccountName": naming.router_name(model.name),
            "enableServiceLinks": False,
            "containers": [_container(model, settings)],
        },
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(model, owner),
        "spec": {
            "replicas": model.router.replicas,
            "selector": {"matchLabels": selector},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": with_spec_hash(template),
        },
    }


def _container(model: InferenceModel, settings: OperatorSettings) -> dict[str, Any]:
    http = {"path": HEALTH_PATH, "port": "http"}
    return {
        "name": "router",
        "image": model.image.router,
        "imagePullPolicy": model.image.pull_policy,
        "command": ["fleetlm"],
        "args": router_args(model, settings),
        "ports": [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": http, "periodSeconds": 5, "failureThreshold": 2},
        "livenessProbe": {
            "tcpSocket": {"port": "http"},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "resources": {key: dict(value) for key, value in ROUTER_RESOURCES.items()},
    }


def _meta(model: InferenceModel, owner: Mapping[str, Any]) -> dict[str, Any]:
    labels = naming.labels(model.name, component=naming.ROUTER)
    return object_meta(model, owner, naming.router_name(model.name), labels)
