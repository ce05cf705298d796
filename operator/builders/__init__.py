"""Pure builders: an InferenceModel in, the manifests of everything it owns out
(docs/operator.md "What the operator makes"). No cluster, no I/O, no torch.

The handlers call `build_children` and apply the list in its order; they delete owned objects
(of `MANAGED_KINDS`, labelled `fleetlm.dev/model: M`) that it no longer returns (fewer
StatefulSet replicas, a router scaled to 0, pools changed, LeaderWorkerSet installed later).
The status code reads the workloads `pool_workloads` and `router_workload` name.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fleetlm.operator import naming
from fleetlm.operator.builders import disruption, multi_node, router, services, single_node
from fleetlm.operator.settings import OperatorSettings
from fleetlm.operator.spec import InferenceModel, Pool

# (apiVersion, kind) of every object build_children may return, in apply order.
MANAGED_KINDS: tuple[tuple[str, str], ...] = (
    ("v1", "ServiceAccount"),
    ("rbac.authorization.k8s.io/v1", "Role"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("v1", "Service"),
    ("apps/v1", "Deployment"),
    ("apps/v1", "StatefulSet"),
    (naming.LWS_API_VERSION, "LeaderWorkerSet"),
    ("policy/v1", "PodDisruptionBudget"),
)


@dataclass(frozen=True)
class WorkloadRef:
    """A workload the status code reads to count a pool's ready replicas.

    - `replica is None` (a Deployment, or a LeaderWorkerSet): it runs all `pool`'s replicas,
      and its `status.readyReplicas` counts the ready ones (pods of a Deployment, each a
      replica; groups of a LeaderWorkerSet, each ready when all its `ready_pods` pods are).
    - `replica == i` (the StatefulSet fallback): replica `i` of `pool` is ready when every
      workload of that replica (its leader set and its worker set) has
      `status.readyReplicas >= ready_pods`.
    """

    api_version: str
    kind: str  # Deployment | LeaderWorkerSet | StatefulSet
    name: str
    pool: str
    replica: int | None  # None: the workload runs every replica of the pool
    ready_pods: int  # ready pods it needs: per replica (replica None), else in all


def build_children(
    model: InferenceModel,
    settings: OperatorSettings,
    *,
    owner: Mapping[str, Any],
    use_lws: bool,
) -> list[dict[str, Any]]:
    """Every object `model` owns, complete and in apply order: the router's ServiceAccount,
    Role and RoleBinding, the Services, the engine workloads, the PodDisruptionBudgets, the
    router's Deployment (no router objects with `router.replicas: 0`). `owner` is the
    InferenceModel's body (apiVersion, kind, metadata.name, metadata.uid). Deterministic;
    never raises for a model parse_model returned.
    """
    children: list[dict[str, Any]] = []
    has_router = model.router.replicas > 0
    if has_router:
        children += [
            router.service_account(model, owner=owner),
            router.role(model, owner=owner),
            router.role_binding(model, owner=owner),
        ]
    children += [services.pool_service(model, pool, owner=owner) for pool in model.pools]
    if not use_lws:
        children += [
            services.headless_service(model, pool, owner=owner)
            for pool in model.pools
            if pool.spans_nodes
        ]
    children.append(services.model_service(model, owner=owner))
    for pool in model.pools:
        children += _workloads(model, pool, settings, owner=owner, use_lws=use_lws)
    children += [disruption.pod_disruption_budget(model, pool, owner=owner) for pool in model.pools]
    if has_router:
        children.append(router.deployment(model, settings, owner=owner))
    return children


def pool_workloads(model: InferenceModel, *, use_lws: bool) -> list[WorkloadRef]:
    """The engine workloads build_children makes, pool by pool (see WorkloadRef)."""
    refs: list[WorkloadRef] = []
    for pool in model.pools:
        name = naming.pool_name(model.name, pool.name)
        if not pool.spans_nodes:
            refs.append(WorkloadRef("apps/v1", "Deployment", name, pool.name, None, 1))
        elif use_lws:
            nodes = pool.pods_per_replica
            refs.append(
                WorkloadRef(naming.LWS_API_VERSION, "LeaderWorkerSet", name, pool.name, None, nodes)
            )
        else:
            for i in range(pool.replicas):
                leader = naming.leader_set_name(model.name, pool.name, i)
                worker = naming.worker_set_name(model.name, pool.name, i)
                workers = pool.pods_per_replica - 1
                refs.append(WorkloadRef("apps/v1", "StatefulSet", leader, pool.name, i, 1))
                refs.append(WorkloadRef("apps/v1", "StatefulSet", worker, pool.name, i, workers))
    return refs


def router_workload(model: InferenceModel) -> WorkloadRef | None:
    """The router's Deployment (ready: `status.readyReplicas >= ready_pods`, all its
    replicas), or None without a router. `pool` is "router"."""
    if model.router.replicas == 0:
        return None
    name = naming.router_name(model.name)
    return WorkloadRef("apps/v1", "Deployment", name, "router", None, model.router.replicas)


def _workloads(
    model: InferenceModel,
    pool: Pool,
    settings: OperatorSettings,
    *,
    owner: Mapping[str, Any],
    use_lws: bool,
) -> list[dict[str, Any]]:
    if not pool.spans_nodes:
        return [single_node.deployment(model, pool, settings, owner=owner)]
    if use_lws:
        return [multi_node.leader_worker_set(model, pool, settings, owner=owner)]
    return multi_node.stateful_sets(model, pool, settings, owner=owner)


__all__ = [
    "MANAGED_KINDS",
    "WorkloadRef",
    "build_children",
    "pool_workloads",
    "router_workload",
]
