"""operator/status.py: an InferenceModel's status from its workloads' (pure functions)."""

from typing import Any

from fleetlm.operator.builders import WorkloadRef
from fleetlm.operator.status import (
    PoolStatus,
    condition,
    invalid_status,
    model_status,
    pool_status,
    ready_replicas,
    settled,
)

T0 = "2025-01-01T00:00:00Z"
T1 = "2025-01-01T00:05:00Z"


def workload(
    want: int = 2,
    *,
    generation: int = 1,
    observed: int | None = 1,
    **status: int,
) -> dict[str, Any]:
    """A Deployment / StatefulSet body as its controller reports it (`status` fields as given:
    Kubernetes omits zero-valued ones)."""
    body_status: dict[str, Any] = dict(status)
    if observed is not None:
        body_status["observedGeneration"] = observed
    return {
        "metadata": {"name": "w", "generation": generation},
        "spec": {"replicas": want},
        "status": body_status,
    }


def deployment_ref(name: str = "m-a", pool: str = "a") -> WorkloadRef:
    return WorkloadRef("apps/v1", "Deployment", name, pool, None, 1)


def pair_refs(pool: str, replicas: int, workers: int) -> list[WorkloadRef]:
    """The StatefulSet fallback: a leader set (1 pod) and a worker set per replica."""
    refs = []
    for i in range(replicas):
        refs.append(WorkloadRef("apps/v1", "StatefulSet", f"{pool}-{i}-leader", pool, i, 1))
        refs.append(WorkloadRef("apps/v1", "StatefulSet", f"{pool}-{i}-worker", pool, i, workers))
    return refs


def pool(name: str, desired: int, ready: int, settled: bool = True) -> PoolStatus:
    return PoolStatus(name, desired, ready, 1, 1, settled)


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


# --- settled / ready_replicas ---


def test_settled_when_observed_and_every_replica_updated() -> None:
    body = workload(2, generation=3, observed=3, replicas=2, updatedReplicas=2, readyReplicas=2)
    assert settled(body)


def test_not_settled_before_the_controller_observed_the_latest_generation() -> None:
    body = workload(2, generation=4, observed=3, replicas=2, updatedReplicas=2)
    assert not settled(body)


def test_not_settled_while_replicas_are_not_updated() -> None:
    assert not settled(workload(3, replicas=3, updatedReplicas=2))


def test_not_settled_during_a_surge() -> None:
    # maxSurge: 3 pods for 2 wanted, all updated already, the old one not yet gone
    assert not settled(workload(2, replicas=3, updatedReplicas=3))


def test_not_settled_when_missing_or_never_observed() -> None:
    assert not settled(None)
    # a new Deployment its controller has not looked at yet: no status at all
    assert not settled({"metadata": {"generation": 1}, "spec": {"replicas": 1}})


def test_scaled_to_zero_is_settled() -> None:
    # Kubernetes omits the zero counts
    assert settled(workload(0))


def test_not_settled_when_no_replica_is_updated_yet() -> None:
    # A StatefulSet that observed its new template and has not replaced any pod yet: the API
    # shows replicas 2 and no updatedReplicas (0 is omitted).
    body = workload(2, generation=2, observed=2, replicas=2, currentReplicas=2, readyReplicas=2)
    assert not settled(body)


def test_ready_replicas() -> None:
    assert ready_replicas(workload(3, readyReplicas=2)) == 2
    assert ready_replicas(workload(3)) == 0  # omitted: 0
    assert ready_replicas(None) == 0
    assert ready_replicas({"metadata": {}, "status": None}) == 0


# --- pool_status ---


def test_deployment_pool_counts_ready_replicas() -> None:
    ref = deployment_ref()
    body = workload(3, replicas=3, updatedReplicas=3, readyReplicas=2)
    status = pool_status("a", 3, 1, 1, [ref], {("Deployment", "m-a"): body})
    assert (status.desired, status.ready, status.settled) == (3, 2, True)
    assert status.as_dict() == {
        "name": "a",
        "desiredReplicas": 3,
        "readyReplicas": 2,
        "gpusPerReplica": 1,
        "podsPerReplica": 1,
    }


def test_deployment_pool_ready_is_capped_at_desired() -> None:
    # a surge: 3 ready pods (old and new) for 2 wanted
    body = workload(2, replicas=3, updatedReplicas=2, readyReplicas=3)
    status = pool_status("a", 2, 1, 1, [deployment_ref()], {("Deployment", "m-a"): body})
    assert status.ready == 2
    assert not status.settled


def test_pool_whose_workload_is_missing() -> None:
    status = pool_status("a", 2, 1, 1, [deployment_ref()], {})
    assert (status.ready, status.settled) == (0, False)


def test_statefulset_pair_replica_needs_leader_and_workers_ready() -> None:
    refs = pair_refs("p", replicas=3, workers=3)  # 4 pods a replica: 1 leader, 3 workers

    def ready(n: int, want: int) -> dict[str, Any]:
        return workload(want, replicas=want, updatedReplicas=want, readyReplicas=n)

    observed = {
        # replica 0: all 4 pods ready
        ("StatefulSet", "p-0-leader"): ready(1, 1),
        ("StatefulSet", "p-0-worker"): ready(3, 3),
        # replica 1: its leader is not ready
        ("StatefulSet", "p-1-leader"): ready(0, 1),
        ("StatefulSet", "p-1-worker"): ready(3, 3),
        # replica 2: one worker of 3 is not ready
        ("StatefulSet", "p-2-leader"): ready(1, 1),
        ("StatefulSet", "p-2-worker"): ready(2, 3),
    }
    status = pool_status("p", 3, 8, 4, refs, observed)
    assert status.ready == 1
    assert status.settled
    assert (status.gpus_per_replica, status.pods_per_replica) == (8, 4)

    observed["StatefulSet", "p-1-leader"] = ready(1, 1)
    observed["StatefulSet", "p-2-worker"] = ready(3, 3)
    assert pool_status("p", 3, 8, 4, refs, observed).ready == 3


def test_statefulset_pair_replica_with_a_missing_set_is_not_ready() -> None:
    refs = pair_refs("p", replicas=2, workers=1)
    ok = workload(1, replicas=1, updatedReplicas=1, readyReplicas=1)
    observed = {
        ("StatefulSet", "p-0-leader"): ok,
        ("StatefulSet", "p-0-worker"): ok,
        ("StatefulSet", "p-1-leader"): ok,  # its worker set does not exist (yet)
    }
    status = pool_status("p", 2, 2, 2, refs, observed)
    assert (status.ready, status.settled) == (1, False)


def test_pool_not_settled_when_any_of_its_workloads_is_rolling() -> None:
    refs = pair_refs("p", replicas=1, workers=1)
    done = workload(1, replicas=1, updatedReplicas=1, readyReplicas=1)
    rolling = workload(1, generation=2, observed=1, replicas=1, updatedReplicas=1, readyReplicas=1)
    observed = {("StatefulSet", "p-0-leader"): done, ("StatefulSet", "p-0-worker"): rolling}
    status = pool_status("p", 1, 2, 2, refs, observed)
    assert (status.ready, status.settled) == (1, False)


def test_leader_worker_set_counts_its_ready_groups() -> None:
    ref = WorkloadRef("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet", "m-big", "big", None, 4)
    body = workload(2, replicas=2, updatedReplicas=2, readyReplicas=1)
    status = pool_status("big", 2, 8, 4, [ref], {("LeaderWorkerSet", "m-big"): body})
    assert (status.ready, status.settled) == (1, True)


# --- condition ---


def test_condition_keeps_its_transition_time_while_its_status_holds() -> None:
    previous = [{"type": "Ready", "status": "True", "lastTransitionTime": T0, "reason": "Old"}]
    new = condition(previous, "Ready", True, "AllReplicasReady", "fine", 7, T1)
    assert new == {
        "type": "Ready",
        "status": "True",
        "reason": "AllReplicasReady",
        "message": "fine",
        "lastTransitionTime": T0,
        "observedGeneration": 7,
    }


def test_condition_moves_its_transition_time_when_its_status_flips() -> None:
    previous = [{"type": "Ready", "status": "True", "lastTransitionTime": T0}]
    new = condition(previous, "Ready", False, "ReplicasNotReady", "short", 7, T1)
    assert (new["status"], new["lastTransitionTime"]) == ("False", T1)


def test_condition_matches_by_type() -> None:
    # a Degraded=False from before says nothing about Ready's transition
    previous = [{"type": "Degraded", "status": "False", "lastTransitionTime": T0}]
    assert condition(previous, "Ready", False, "R", "m", 1, T1)["lastTransitionTime"] == T1
    assert condition([], "Ready", True, "R", "m", 1, T1)["lastTransitionTime"] == T1


# --- model_status ---


def test_all_ready() -> None:
    status = model_status(
        [pool("a", 2, 2), pool("b", 1, 1)], (2, 2), 5, "http://m.ns.svc/v1", {}, T0
    )
    assert status["observedGeneration"] == 5
    assert status["endpoint"] == "http://m.ns.svc/v1"
    assert (status["replicas"], status["desiredReplicas"]) == (3, 3)
    assert [p["name"] for p in status["pools"]] == ["a", "b"]
    c = conditions(status)
    assert [x["type"] for x in status["conditions"]] == ["Ready", "Progressing", "Degraded"]
    assert (c["Ready"]["status"], c["Ready"]["reason"]) == ("True", "AllReplicasReady")
    assert (c["Progressing"]["status"], c["Progressing"]["reason"]) == ("False", "Stable")
    assert c["Degraded"]["status"] == "False"
    assert all(x["observedGeneration"] == 5 for x in status["conditions"])


def test_without_a_router() -> None:
    c = conditions(model_status([pool("a", 1, 1)], None, 1, "e", {}, T0))
    assert c["Ready"]["status"] == "True"


def test_rolling_out_is_progressing_not_degraded() -> None:
    status = model_status([pool("a", 3, 1, settled=False)], (1, 1), 2, "e", {}, T0)
    c = conditions(status)
    assert c["Ready"]["status"] == "False"
    assert c["Ready"]["reason"] == "ReplicasNotReady"
    assert "a: 1/3 replicas ready" in c["Ready"]["message"]
    assert (c["Progressing"]["status"], c["Progressing"]["reason"]) == ("True", "RollingOut")
    assert "a" in c["Progressing"]["message"]
    assert c["Degraded"]["status"] == "False"


def test_rolling_out_with_every_replica_ready_is_ready_and_progressing() -> None:
    c = conditions(model_status([pool("a", 2, 2, settled=False)], None, 2, "e", {}, T0))
    assert (c["Ready"]["status"], c["Progressing"]["status"]) == ("True", "True")
    assert c["Degraded"]["status"] == "False"


def test_settled_but_short_is_degraded() -> None:
    pools = [pool("a", 2, 2), pool("b", 3, 1), pool("c", 2, 0, settled=False)]
    status = model_status(pools, None, 1, "e", {}, T0)
    c = conditions(status)
    assert c["Ready"]["status"] == "False"
    assert (c["Degraded"]["status"], c["Degraded"]["reason"]) == ("True", "ReplicasUnavailable")
    assert "b: 1/3" in c["Degraded"]["message"]
    assert "c:" not in c["Degraded"]["message"]  # c is still rolling out, not degraded
    assert "a:" not in c["Degraded"]["message"]
    assert c["Progressing"]["status"] == "True"
    assert (status["replicas"], status["desiredReplicas"]) == (3, 7)


def test_router_short_is_not_ready() -> None:
    c = conditions(model_status([pool("a", 2, 2)], (2, 1), 1, "e", {}, T0))
    assert c["Ready"]["status"] == "False"
    assert c["Ready"]["reason"] == "ReplicasNotReady"
    assert "router: 1/2 pods ready" in c["Ready"]["message"]


def test_transition_times_follow_the_flips() -> None:
    first = model_status([pool("a", 2, 1, settled=False)], None, 1, "e", {}, T0)
    assert {c["lastTransitionTime"] for c in first["conditions"]} == {T0}
    # later: all ready. Ready and Progressing flip, Degraded stays False.
    second = model_status([pool("a", 2, 2)], None, 1, "e", first, T1)
    c = conditions(second)
    assert c["Ready"]["lastTransitionTime"] == T1
    assert c["Progressing"]["lastTransitionTime"] == T1
    assert c["Degraded"]["lastTransitionTime"] == T0
    # again, unchanged: every time kept
    third = model_status([pool("a", 2, 2)], None, 1, "e", second, "2025-01-01T01:00:00Z")
    assert third["conditions"] == second["conditions"]


# --- invalid_status ---


def test_invalid_status() -> None:
    previous = {
        "endpoint": "e",
        "conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": T0},
            {"type": "Progressing", "status": "False", "lastTransitionTime": T0},
            {"type": "Degraded", "status": "False", "lastTransitionTime": T0},
        ],
    }
    status = invalid_status("InvalidSpec", "replicas: must be >= 0", 9, "e", previous, T1)
    assert status["observedGeneration"] == 9
    assert status["endpoint"] == "e"
    c = conditions(status)
    assert (c["Ready"]["status"], c["Ready"]["lastTransitionTime"]) == ("False", T1)
    assert (c["Progressing"]["status"], c["Progressing"]["lastTransitionTime"]) == ("False", T0)
    assert (c["Degraded"]["status"], c["Degraded"]["lastTransitionTime"]) == ("True", T1)
    for x in c.values():
        assert (x["reason"], x["message"]) == ("InvalidSpec", "replicas: must be >= 0")
        assert x["observedGeneration"] == 9
