"""Names, labels and addresses of what the operator makes for a model `M` (docs/operator.md).

Plain strings in, plain strings out: the builders, the status code and the finalizer (which only
has a name and a namespace) share them.
"""

GROUP = "fleetlm.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "InferenceModel"
PLURAL = "inferencemodels"

FINALIZER = "fleetlm.dev/cleanup"
SPEC_HASH_ANNOTATION = "fleetlm.dev/spec-hash"  # on pod templates: a spec change rolls the pods

# Labels every object carries.
NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
COMPONENT_LABEL = "app.kubernetes.io/component"
MODEL_LABEL = "fleetlm.dev/model"
# Engine objects, engine pods, and the pods (and StatefulSets) of the StatefulSet fallback.
POOL_LABEL = "fleetlm.dev/pool"
ROLE_LABEL = "fleetlm.dev/role"
REPLICA_LABEL = "fleetlm.dev/replica"

APP_NAME = "fleetlm"
MANAGED_BY = "fleetlm-operator"
ENGINE = "engine"
ROUTER = "router"
LEADER = "leader"  # serves HTTP (every pod of a single-node replica)
WORKER = "worker"  # a further node of a multi-node replica (`fleetlm serve --headless`)

LWS_API_VERSION = "leaderworkerset.x-k8s.io/v1"
POD_INDEX_LABEL = "apps.kubernetes.io/pod-index"  # a StatefulSet pod's ordinal (Kubernetes 1.28+)


def pool_name(model: str, pool: str) -> str:
    """The pool's Deployment or LeaderWorkerSet, Service and PodDisruptionBudget: `M-POOL`."""
    return f"{model}-{pool}"


def leader_set_name(model: str, pool: str, replica: int) -> str:
    """StatefulSet fallback: replica `i`'s leader StatefulSet `M-POOL-i` (1 pod, rank 0)."""
    return f"{model}-{pool}-{replica}"


def worker_set_name(model: str, pool: str, replica: int) -> str:
    """StatefulSet fallback: replica `i`'s worker StatefulSet `M-POOL-i-w` (ranks 1 ..)."""
    return f"{model}-{pool}-{replica}-w"


def headless_service_name(model: str, pool: str) -> str:
    """StatefulSet fallback: the headless Service `M-POOL-hl` giving the pods DNS names."""
    return f"{model}-{pool}-hl"


def router_name(model: str) -> str:
    """The router's ServiceAccount, Role, RoleBinding and Deployment: `M-router`."""
    return f"{model}-router"


def model_service_name(model: str) -> str:
    """The model's Service `M`: the router, or the engines when there is no router."""
    return model


def leader_address(model: str, pool: str, replica: int, namespace: str) -> str:
    """StatefulSet fallback: the stable DNS name of replica `i`'s leader pod (the master)."""
    return f"{leader_set_name(model, pool, replica)}-0.{headless_service_name(model, pool)}.{namespace}.svc"


def redis_key_prefix(namespace: str, model: str) -> str:
    """Every Redis key of the model's engines and routers starts with it (the finalizer deletes
    `PREFIX*`)."""
    return f"fleetlm:{namespace}.{model}:"


def endpoint_url(model: str, namespace: str, cluster_domain: str = "cluster.local") -> str:
    """status.endpoint: the OpenAI base URL of the model's Service."""
    return f"http://{model_service_name(model)}.{namespace}.svc.{cluster_domain}/v1"


def router_pod_selector(model: str) -> str:
    """The label selector the router discovers engines by: the leaders of every pool."""
    return f"{MODEL_LABEL}={model},{ROLE_LABEL}={LEADER}"


def selector_labels(
    model: str,
    *,
    component: str,
    pool: str | None = None,
    role: str | None = None,
    replica: int | None = None,
) -> dict[str, str]:
    """The labels that select a set of pods (workload and Service selectors: immutable on
    workloads, so only what never changes for those pods)."""
    labels = {INSTANCE_LABEL: model, COMPONENT_LABEL: component, MODEL_LABEL: model}
    if pool is not None:
        labels[POOL_LABEL] = pool
    if role is not None:
        labels[ROLE_LABEL] = role
    if replica is not None:
        labels[REPLICA_LABEL] = str(replica)
    return labels


def labels(
    model: str,
    *,
    component: str,
    pool: str | None = None,
    role: str | None = None,
    replica: int | None = None,
) -> dict[str, str]:
    """All the labels of an object (docs/operator.md): the common ones plus its selector's."""
    return {
        NAME_LABEL: APP_NAME,
        MANAGED_BY_LABEL: MANAGED_BY,
        **selector_labels(model, component=component, pool=pool, role=role, replica=replica),
    }
