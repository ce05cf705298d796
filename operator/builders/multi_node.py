"""A pool whose replicas span nodes: `nodes = G / gpusPerNode` pods per replica, each with
`gpusPerNode` GPUs, one leader (rank 0, serves HTTP) and `nodes - 1` workers (`--headless`).

NOTE: two forms. With the LeaderWorkerSet CRD, one LeaderWorkerSet `M-POOL` (a group per
replica); LWS injects LWS_WORKER_INDEX and LWS_LEADER_ADDRESS. Its subdomain policy is
`UniquePerReplica`: with the default (`Shared`) LWS would give its pods DNS names through a
headless Service named `M-POOL` and create it only if no Service of that name exists, but the
pool Service `M-POOL` (ClusterIP, the leaders) takes that name, and pods get no DNS names from a
Service that is not headless. Per replica, LWS names the headless Service after the group's
leader pod (`M-POOL-i`), which nothing else here uses.
Without LWS, per replica `i` a StatefulSet `M-POOL-i` (the leader) and `M-POOL-i-w` (the
workers, ordinals from 1, so the pod-index label is the rank), both named through the headless
Service `M-POOL-hl` (it publishes not-ready pods: workers must resolve their leader before it
is ready, which it is only once they joined).
"""

from collections.abc import Mapping
from typing import Any

from fleetlm.operator import naming
from fleetlm.operator.builders.engine import NodeRank, engine_pod_template
from fleetlm.operator.builders.meta import object_meta
from fleetlm.operator.settings import OperatorSettings
from fleetlm.operator.spec import InferenceModel, Pool

LWS_WORKER_INDEX = "$(LWS_WORKER_INDEX)"
LWS_LEADER_ADDRESS = "$(LWS_LEADER_ADDRESS)"
NODE_RANK = "$(NODE_RANK)"


def leader_worker_set(
    model: InferenceModel, pool: Pool, settings: OperatorSettings, *, owner: Mapping[str, Any]
) -> dict[str, Any]:
    """The LeaderWorkerSet `M-POOL`: `replicas` groups of `size: nodes` pods."""
    nodes = pool.pods_per_replica
    leader = NodeRank(nodes, "0", LWS_LEADER_ADDRESS)
    worker = NodeRank(nodes, LWS_WORKER_INDEX, LWS_LEADER_ADDRESS)
    name = naming.pool_name(model.name, pool.name)
    labels = naming.labels(model.name, component=naming.ENGINE, pool=pool.name)
    return {
        "apiVersion": naming.LWS_API_VERSION,
        "kind": "LeaderWorkerSet",
        "metadata": object_meta(model, owner, name, labels),
        "spec": {
            "replicas": pool.replicas,
            # Workers start with their leader, not once it is ready: it is ready only after
            # they joined.
            "startupPolicy": "LeaderCreated",
            "networkConfig": {"subdomainPolicy": "UniquePerReplica"},
            "leaderWorkerTemplate": {
                "size": nodes,
                # One process group: a pod that restarts takes its group with it.
                "restartPolicy": "RecreateGroupOnPodRestart",
                "leaderTemplate": engine_pod_template(
                    model, pool, settings, node=leader, role=naming.LEADER
                ),
                "workerTemplate": engine_pod_template(
                    model, pool, settings, node=worker, role=naming.WORKER
                ),
            },
        },
    }


def stateful_sets(
    model: InferenceModel, pool: Pool, settings: OperatorSettings, *, owner: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """The StatefulSet fallback: per replica `i`, `M-POOL-i` (the leader) then `M-POOL-i-w`."""
    sets = []
    for replica in range(pool.replicas):
        sets.append(_leader_set(model, pool, settings, replica, owner))
        sets.append(_worker_set(model, pool, settings, replica, owner))
    return sets


def _leader_set(
    model: InferenceModel,
    pool: Pool,
    settings: OperatorSettings,
    replica: int,
    owner: Mapping[str, Any],
) -> dict[str, Any]:
    address = naming.leader_address(model.name, pool.name, replica, model.namespace)
    node = NodeRank(pool.pods_per_replica, "0", address)
    name = naming.leader_set_name(model.name, pool.name, replica)
    return _stateful_set(model, pool, settings, owner, name, naming.LEADER, replica, node, 1)


def _worker_set(
    model: InferenceModel,
    pool: Pool,
    settings: OperatorSettings,
    replica: int,
    owner: Mapping[str, Any],
) -> dict[str, Any]:
    address = naming.leader_address(model.name, pool.name, replica, model.namespace)
    node = NodeRank(pool.pods_per_replica, NODE_RANK, address, rank_from_pod_index=True)
    name = naming.worker_set_name(model.name, pool.name, replica)
    workers = pool.pods_per_replica - 1
    sts = _stateful_set(model, pool, settings, owner, name, naming.WORKER, replica, node, workers)
    sts["spec"]["ordinals"] = {"start": 1}  # pod-index label = rank: 1 .. nodes - 1
    return sts


def _stateful_set(
    model: InferenceModel,
    pool: Pool,
    settings: OperatorSettings,
    owner: Mapping[str, Any],
    name: str,
    role: str,
    replica: int,
    node: NodeRank,
    num_pods: int,
) -> dict[str, Any]:
    labels = naming.labels(model.name, component=naming.ENGINE, pool=pool.name, replica=replica)
    selector = naming.selector_labels(
        model.name, component=naming.ENGINE, pool=pool.name, role=role, replica=replica
    )
    template = engine_pod_template(model, pool, settings, node=node, role=role, replica=replica)
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": object_meta(model, owner, name, labels),
        "spec": {
            "replicas": num_pods,
            "serviceName": naming.headless_service_name(model.name, pool.name),
            "podManagementPolicy": "Parallel",  # a replica's pods start together
            "selector": {"matchLabels": selector},
            "template": template,
        },
    }
