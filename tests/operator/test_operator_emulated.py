"""The real operator (`fleetlm operator`, a separate process running kopf) against the
Kubernetes API emulator (tests/operator/api_server.py) and a real Redis: create → children;
children ready → Ready=True; spec change → workloads updated; restart mid-reconcile → no
duplicates; a second reconcile writes nothing; delete → nothing left, Redis keys gone;
invalid spec → Ready=False with a reason."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

from fleetlm.operator.builders import build_children
from fleetlm.operator.settings import OperatorSettings
from fleetlm.operator.spec import parse_model

from .api_server import RunningApiServer

NS = "team-a"
MODELS = f"/apis/fleetlm.dev/v1alpha1/namespaces/{NS}/inferencemodels"
DEPLOYMENTS = f"/apis/apps/v1/namespaces/{NS}/deployments"
STATEFULSETS = f"/apis/apps/v1/namespaces/{NS}/statefulsets"
LWSS = f"/apis/leaderworkerset.x-k8s.io/v1/namespaces/{NS}/leaderworkersets"
SERVICES = f"/api/v1/namespaces/{NS}/services"
PVCS = f"/api/v1/namespaces/{NS}/persistentvolumeclaims"
EVENTS = f"/api/v1/namespaces/{NS}/events"
T = TypeVar("T")


def until(what: Callable[[], T], timeout: float = 30, message: str | Callable[[], str] = "") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if value:
            return value
        if time.monotonic() > deadline:
            said = message() if callable(message) else message
            raise AssertionError(f"timed out waiting: {said or what}")
        time.sleep(0.05)


def model(name: str = "smol", replicas: int = 2, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "fleetlm.dev/v1alpha1",
        "kind": "InferenceModel",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "model": {"source": {"path": "/opt/fleetlm/models/SmolLM2-135M-Instruct"}},
            "gpusPerNode": 0,
            "replicas": replicas,
            "router": {"replicas": 1},
            **spec,
        },
    }


class OperatorProcess:
    def __init__(self, kubeconfig: Path, log: Path, redis_url: str | None) -> None:
        self.env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "FLEETLM_OPERATOR_RESYNC_INTERVAL_S": "2",
        }
        if redis_url:
            self.env["FLEETLM_OPERATOR_REDIS_URL"] = redis_url
        self.log = log
        self.process: subprocess.Popen | None = None

    def start(self) -> "OperatorProcess":
        command = "import sys; from fleetlm.cli import main; sys.exit(main())"
        with self.log.open("a") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", command, "operator", "--all-namespaces"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def cluster() -> Iterator[RunningApiServer]:
    with RunningApiServer() as server:
        yield server


@pytest.fixture
def operator(cluster, tmp_path, redis_server) -> Iterator[OperatorProcess]:
    process = OperatorProcess(cluster.kubeconfig(tmp_path / "kubeconfig"), tmp_path / "log", None)
    process.env["FLEETLM_OPERATOR_REDIS_URL"] = redis_server.url
    process.start()
    try:
        yield process
    finally:
        process.stop()
        print(process.log.read_text()[-5000:])


def conditions(body: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    found = ((body or {}).get("status") or {}).get("conditions") or []
    return {c["type"]: c for c in found}


def owned(cluster: RunningApiServer, uid: str) -> list[tuple[str, str]]:
    """(resource, name) of every object owned by this uid."""
    return sorted(
        (resource, name)
        for resource, _, name, body in cluster.objects()
        if any(o["uid"] == uid for o in body["metadata"].get("ownerReferences") or [])
    )


def mark_ready(cluster: RunningApiServer, path: str) -> None:
    """Do what the Deployment controller does once every pod is Ready."""
    body = cluster.get(path)
    assert body is not None, path
    want = body["spec"].get("replicas", 1)
    status = {
        "observedGeneration": body["metadata"]["generation"],
        "replicas": want,
        "updatedReplicas": want,
        "readyReplicas": want,
        "availableReplicas": want,
    }
    cluster.patch(f"{path}/status", {"status": status})


def test_create_ready_update_delete(cluster, operator, redis_server):
    created = cluster.create(MODELS, model())
    uid = created["metadata"]["uid"]

    # children appear, owned by the model
    engine = until(lambda: cluster.get(f"{DEPLOYMENTS}/smol-serve"), message="engine")
    router = until(lambda: cluster.get(f"{DEPLOYMENTS}/smol-router"), message="router")
    assert engine["spec"]["replicas"] == 2 and router["spec"]["replicas"] == 1
    for name in ["smol", "smol-serve"]:
        until(lambda name=name: cluster.get(f"{SERVICES}/{name}"), message=name)
    children = until(lambda: len(owned(cluster, uid)) >= 8 and owned(cluster, uid))
    kinds = {resource.rsplit("/", 1)[1] for resource, _ in children}
    assert kinds >= {
        "deployments",
        "services",
        "poddisruptionbudgets",
        "serviceaccounts",
        "roles",
        "rolebindings",
    }

    # not ready yet, and saying so
    body = until(
        lambda: (
            conditions(cluster.get(f"{MODELS}/smol")).get("Ready") and cluster.get(f"{MODELS}/smol")
        )
    )
    assert conditions(body)["Ready"]["status"] == "False"
    assert body["status"]["desiredReplicas"] == 2 and body["status"]["replicas"] == 0
    assert body["status"]["endpoint"] == f"http://smol.{NS}.svc.cluster.local/v1"
    assert "fleetlm.dev/cleanup" in body["metadata"]["finalizers"]

    # the workloads report ready → the model is Ready, with the counts
    mark_ready(cluster, f"{DEPLOYMENTS}/smol-serve")
    mark_ready(cluster, f"{DEPLOYMENTS}/smol-router")

    def ready() -> dict[str, Any] | None:
        found = cluster.get(f"{MODELS}/smol")
        return found if conditions(found).get("Ready", {}).get("status") == "True" else None

    body = until(ready, message="Ready=True")
    assert body["status"]["replicas"] == 2
    assert body["status"]["pools"] == [
        {
            "name": "serve",
            "desiredReplicas": 2,
            "readyReplicas": 2,
            "gpusPerReplica": 0,
            "podsPerReplica": 1,
        }
    ]
    assert conditions(body)["Progressing"]["status"] == "False"
    assert conditions(body)["Degraded"]["status"] == "False"
    assert body["status"]["observedGeneration"] == 1

    # a spec change rolls the engine
    template_before = engine["spec"]["template"]
    cluster.patch(
        f"{MODELS}/smol", {"spec": {"replicas": 3, "model": {"engineArgs": ["--seed", "7"]}}}
    )
    engine = until(
        lambda: (d := cluster.get(f"{DEPLOYMENTS}/smol-serve"))["spec"]["replicas"] == 3 and d,
        message="scaled",
    )
    assert engine["spec"]["template"] != template_before
    assert "--seed" in engine["spec"]["template"]["spec"]["containers"][0]["args"]
    body = until(
        lambda: (b := cluster.get(f"{MODELS}/smol"))["status"]["observedGeneration"] == 2 and b
    )
    assert conditions(body)["Ready"]["status"] == "False"  # 2 of 3
    assert body["status"]["desiredReplicas"] == 3
    assert conditions(body)["Progressing"]["status"] == "True"

    # events were posted for what it did
    reasons = {e.get("reason") for e in cluster.items(EVENTS)}
    assert {"Created", "Updated"} <= reasons

    # delete: the finalizer clears the model's Redis keys (only its own), the garbage
    # collector the children
    keys = redis.Redis.from_url(redis_server.url)
    keys.set(f"fleetlm:{NS}.smol:router:x:inflight", 1)
    keys.sadd(f"fleetlm:{NS}.smol:kv:http://10.0.0.1:8000:blocks", "ab")
    keys.set(f"fleetlm:{NS}.smoller:router:x:inflight", 1)  # another model's
    cluster.delete(f"{MODELS}/smol")
    until(
        lambda: cluster.get(f"{MODELS}/smol") is None,
        message=lambda: (
            f"model deleted: {cluster.get(f'{MODELS}/smol')} "
            + "\n".join(str(b) for b in cluster.api.bodies if "inferencemodels" in b[1])
        ),
    )
    until(lambda: not owned(cluster, uid), message="children collected")
    assert sorted(k.decode() for k in keys.scan_iter("fleetlm:*")) == [
        f"fleetlm:{NS}.smoller:router:x:inflight"
    ]


def test_a_second_reconcile_writes_nothing_and_a_restart_leaves_no_duplicates(cluster, operator):
    cluster.create(MODELS, model())
    until(lambda: cluster.get(f"{DEPLOYMENTS}/smol-router"), message="router")
    until(lambda: cluster.get(f"{MODELS}/smol").get("status", {}).get("conditions"))
    time.sleep(1)
    expected = sorted((r, n) for r, ns, n, _ in cluster.objects() if ns == NS and "events" not in r)

    # killed at once, restarted: kopf resumes; everything is there already
    operator.kill()
    writes_before = len(cluster.api.writes)
    operator.start()
    until(
        lambda: "Resuming is processed: 1 succeeded" in operator.log.read_text(), message="resume"
    )
    time.sleep(1)
    child_writes = [
        w
        for w in cluster.api.writes[writes_before:]
        if "/inferencemodels" not in w[1] and "/events" not in w[1]
    ]
    assert child_writes == []
    now = sorted((r, n) for r, ns, n, _ in cluster.objects() if ns == NS and "events" not in r)
    assert now == expected


def test_restarted_mid_reconcile(cluster, tmp_path, redis_server):
    first = OperatorProcess(cluster.kubeconfig(tmp_path / "kc"), tmp_path / "log", redis_server.url)
    first.start()
    try:
        cluster.create(MODELS, model())
        until(lambda: cluster.items(SERVICES), message="the first child")
        first.kill()  # somewhere in the middle of creating the children
        first.start()
        until(lambda: cluster.get(f"{DEPLOYMENTS}/smol-router"), message="router")
        body = cluster.get(f"{MODELS}/smol")
        time.sleep(1)
        # exactly the objects the builders make for this model, each once, each owned once
        wanted = build_children(
            parse_model(body, OperatorSettings()), OperatorSettings(), owner=body, use_lws=False
        )
        children = [
            (resource, name, obj)
            for resource, ns, name, obj in cluster.objects()
            if ns == NS and "events" not in resource and "inferencemodels" not in resource
        ]
        assert sorted((obj["kind"], name) for _, name, obj in children) == sorted(
            (c["kind"], c["metadata"]["name"]) for c in wanted
        )
        for _, _, obj in children:
            assert [o["uid"] for o in obj["metadata"]["ownerReferences"]] == [
                body["metadata"]["uid"]
            ]
        assert cluster.get(f"{DEPLOYMENTS}/smol-serve")["spec"]["replicas"] == 2
    finally:
        first.stop()
        print((tmp_path / "log").read_text()[-5000:])


def test_an_invalid_spec_is_not_ready_with_a_reason(cluster, operator):
    bad = model(parallelism={"tensor": 1, "pipeline": 1, "data": 1, "expert": True})
    cluster.create(MODELS, bad)  # the emulator does not run the CRD's CEL rules
    body = until(
        lambda: (
            conditions(cluster.get(f"{MODELS}/smol")).get("Ready") and cluster.get(f"{MODELS}/smol")
        )
    )
    ready = conditions(body)["Ready"]
    assert ready["status"] == "False" and ready["reason"] == "InvalidSpec"
    assert "expert" in ready["message"]
    assert conditions(body)["Degraded"]["status"] == "True"
    assert cluster.items(DEPLOYMENTS) == []
    warnings = [e for e in cluster.items(EVENTS) if e.get("type") == "Warning"]
    assert any(e["reason"] == "InvalidSpec" for e in warnings)

    # fixed: it proceeds
    cluster.patch(f"{MODELS}/smol", {"spec": {"model": {"moe": True}, "gpusPerNode": 0}})
    cluster.patch(f"{MODELS}/smol", {"spec": {"parallelism": {"expert": False}}})
    until(lambda: cluster.get(f"{DEPLOYMENTS}/smol-serve"), message="engine after the fix")


def test_a_missing_volume_waits_for_it(cluster, operator):
    cluster.create(
        MODELS,
        model(model={"source": {"pvc": {"claimName": "models", "subPath": "smol"}}}),
    )
    body = until(
        lambda: (
            conditions(cluster.get(f"{MODELS}/smol")).get("Ready", {}).get("reason")
            == "MissingVolume"
            and cluster.get(f"{MODELS}/smol")
        )
    )
    assert "models" in conditions(body)["Ready"]["message"]
    assert cluster.items(DEPLOYMENTS) == []
    cluster.create(
        PVCS,
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "models", "namespace": NS},
        },
    )
    engine = until(lambda: cluster.get(f"{DEPLOYMENTS}/smol-serve"), timeout=40)
    volumes = engine["spec"]["template"]["spec"]["volumes"]
    assert any((v.get("persistentVolumeClaim") or {}).get("claimName") == "models" for v in volumes)


@pytest.mark.parametrize("with_lws", [False, True])
def test_multi_node_replicas(tmp_path, redis_server, with_lws):
    with RunningApiServer(with_lws=with_lws) as cluster:
        process = OperatorProcess(
            cluster.kubeconfig(tmp_path / "kc"), tmp_path / "log", redis_server.url
        )
        process.start()
        try:
            spec = model(
                name="big",
                replicas=1,
                parallelism={"tensor": 8, "pipeline": 2},
                gpusPerNode=8,
                model={"source": {"path": "/models/llama-405b"}},
            )
            cluster.create(MODELS, spec)
            if with_lws:
                lws = until(lambda: cluster.get(f"{LWSS}/big-serve"), message="LeaderWorkerSet")
                assert lws["spec"]["leaderWorkerTemplate"]["size"] == 2
                assert cluster.items(STATEFULSETS) == []
            else:
                leader = until(lambda: cluster.get(f"{STATEFULSETS}/big-serve-0"), message="leader")
                workers = until(
                    lambda: cluster.get(f"{STATEFULSETS}/big-serve-0-w"), message="workers"
                )
                assert leader["spec"]["replicas"] == 1 and workers["spec"]["replicas"] == 1
                # ready when both are
                mark_ready(cluster, f"{STATEFULSETS}/big-serve-0")
                mark_ready(cluster, f"{STATEFULSETS}/big-serve-0-w")
                until(lambda: cluster.get(f"{DEPLOYMENTS}/big-router"), message="router")
                mark_ready(cluster, f"{DEPLOYMENTS}/big-router")
                body = until(
                    lambda: (
                        conditions(b := cluster.get(f"{MODELS}/big")).get("Ready", {}).get("status")
                        == "True"
                        and b
                    ),
                    message="Ready",
                )
                assert body["status"]["pools"][0]["podsPerReplica"] == 2
                assert body["status"]["pools"][0]["gpusPerReplica"] == 16
        finally:
            process.stop()
            print((tmp_path / "log").read_text()[-5000:])


def test_drift_is_undone(cluster, operator):
    """A child deleted by hand comes back at once (its DELETED event); one edited by hand is
    restored by the next resync (every 2 s here)."""
    created = cluster.create(MODELS, model())
    engine = until(lambda: cluster.get(f"{DEPLOYMENTS}/smol-serve"), message="engine")
    cluster.delete(f"{DEPLOYMENTS}/smol-serve")
    back = until(
        lambda: (
            (d := cluster.get(f"{DEPLOYMENTS}/smol-serve"))
            and d["metadata"]["uid"] != engine["metadata"]["uid"]
            and d
        ),
        message="recreated",
    )
    assert back["metadata"]["ownerReferences"][0]["uid"] == created["metadata"]["uid"]

    cluster.patch(f"{DEPLOYMENTS}/smol-serve", {"spec": {"replicas": 7}})
    until(
        lambda: cluster.get(f"{DEPLOYMENTS}/smol-serve")["spec"]["replicas"] == 2,
        message="restored",
    )
    assert any(e.get("reason") == "Updated" for e in cluster.items(EVENTS))
