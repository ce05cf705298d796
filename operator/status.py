"""An InferenceModel's status from its children's: pure functions, no API calls.

`Ready`: every pool has all its replicas ready, and the router too (when it has one).
`Progressing`: some workload has not caught up with the spec yet (a rollout, a scale-up).
`Degraded`: a settled workload is short of ready replicas, or the spec is invalid.
"""

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Body = Mapping[str, Any]


@dataclass(frozen=True)
class PoolStatus:
    name: str
    desired: int
    ready: int
    gpus_per_replica: int
    pods_per_replica: int
    settled: bool  # every workload observed its latest spec and finished rolling

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "desiredReplicas": self.desired,
            "readyReplicas": self.ready,
            "gpusPerReplica": self.gpus_per_replica,
            "podsPerReplica": self.pods_per_replica,
        }


def settled(workload: Body | None) -> bool:
    """Whether a Deployment / StatefulSet / LeaderWorkerSet has seen its latest spec and has
    every replica on it."""
    if workload is None:
        return False
    meta, spec, status = (workload.get(k) or {} for k in ("metadata", "spec", "status"))
    observed = status.get("observedGeneration")
    if observed is not None and observed < meta.get("generation", 0):
        return False
    want = spec.get("replicas", 1)
    # the API server leaves out zero counts: no updatedReplicas means none updated yet
    return status.get("updatedReplicas", 0) >= want and status.get("replicas", 0) <= want


def ready_replicas(workload: Body | None) -> int:
    return int(((workload or {}).get("status") or {}).get("readyReplicas") or 0)


def pool_status(
    name: str,
    desired: int,
    gpus_per_replica: int,
    pods_per_replica: int,
    refs: Sequence[Any],
    observed: Mapping[tuple[str, str], Body | None],
    outdated: Collection[tuple[str, str]] = (),
) -> PoolStatus:
    """`refs`: the pool's workloads (`WorkloadRef`s: kind, name, replica, ready_pods). One with
    `replica None` holds all the pool's replicas (a Deployment, a LeaderWorkerSet); the ones of
    replica i make replica i together (the leader and worker StatefulSets), which is ready when
    each has its `ready_pods` ready. `outdated`: (kind, name) of the workloads whose spec has
    not been brought up to the model's yet (they are not settled, whatever their status)."""
    whole = [ref for ref in refs if ref.replica is None]
    ready = sum(ready_replicas(observed.get((ref.kind, ref.name))) for ref in whole)
    for i in sorted({ref.replica for ref in refs if ref.replica is not None}):
        group = [ref for ref in refs if ref.replica == i]
        ready += all(
            ready_replicas(observed.get((ref.kind, ref.name))) >= ref.ready_pods for ref in group
        )
    return PoolStatus(
        name=name,
        desired=desired,
        ready=min(ready, desired),
        gpus_per_replica=gpus_per_replica,
        pods_per_replica=pods_per_replica,
        settled=all(
            (ref.kind, ref.name) not in outdated and settled(observed.get((ref.kind, ref.name)))
            for ref in refs
        ),
    )


def condition(
    previous: Sequence[Body],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    generation: int,
    now: str,
) -> dict[str, Any]:
    """A condition; its lastTransitionTime moves only when its status flips."""
    value = "True" if status else "False"
    before = next((c for c in previous if c.get("type") == type_), None)
    since = before["lastTransitionTime"] if before and before.get("status") == value else now
    return {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
        "observedGeneration": generation,
    }


def model_status(
    pools: Sequence[PoolStatus],
    router: tuple[int, int] | None,  # (desired, ready) router pods; None: no router
    generation: int,
    endpoint: str,
    previous: Body,
    now: str,
) -> dict[str, Any]:
    conditions = previous.get("conditions") or []
    short = [p for p in pools if p.ready < p.desired]
    router_short = router is not None and router[1] < router[0]
    rolling = [p.name for p in pools if not p.settled]
    ready = not short and not router_short
    if ready:
        reason, message = "AllReplicasReady", "every pool has all its replicas ready"
    else:
        parts = [f"{p.name}: {p.ready}/{p.desired} replicas ready" for p in short]
        if router_short:
            parts.append(f"router: {router[1]}/{router[0]} pods ready")
        reason, message = "ReplicasNotReady", "; ".join(parts)
    degraded = [p for p in short if p.settled]
    return {
        "observedGeneration": generation,
        "endpoint": endpoint,
        "replicas": sum(p.ready for p in pools),
        "desiredReplicas": sum(p.desired for p in pools),
        "pools": [p.as_dict() for p in pools],
        "conditions": [
            condition(conditions, "Ready", ready, reason, message, generation, now),
            condition(
                conditions,
                "Progressing",
                bool(rolling),
                "RollingOut" if rolling else "Stable",
                f"rolling out: {', '.join(rolling)}" if rolling else "every workload is current",
                generation,
                now,
            ),
            condition(
                conditions,
                "Degraded",
                bool(degraded),
                "ReplicasUnavailable" if degraded else "AsExpected",
                "; ".join(f"{p.name}: {p.ready}/{p.desired} ready" for p in degraded)
                or "no settled pool is short of ready replicas",
                generation,
                now,
            ),
        ],
    }


def invalid_status(
    reason: str, message: str, generation: int, endpoint: str, previous: Body, now: str
) -> dict[str, Any]:
    """An invalid spec: not Ready, not progressing, degraded; the reason says what is wrong."""
    conditions = previous.get("conditions") or []
    return {
        "observedGeneration": generation,
        "endpoint": endpoint,
        "conditions": [
            condition(conditions, "Ready", False, reason, message, generation, now),
            condition(conditions, "Progressing", False, reason, message, generation, now),
            condition(conditions, "Degraded", True, reason, message, generation, now),
        ],
    }
