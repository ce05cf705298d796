"""operator/kube.py: the three-way-merge helpers, and KubeApi against the Kubernetes API
emulator (tests/operator/api_server.py, its own thread and loop)."""

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import httpx
import pytest

from fleetlm.operator.kube import (
    LAST_APPLIED,
    LWS,
    RESOURCES,
    ApiError,
    KubeApi,
    is_subset,
    last_applied,
    merge_patch,
    resource_of,
    with_last_applied,
)

from .api_server import RunningApiServer

T = TypeVar("T")
NS = "team-a"
DEPLOYMENTS = RESOURCES["apps/v1", "Deployment"]
SERVICES = RESOURCES["v1", "Service"]
PATH = f"/apis/apps/v1/namespaces/{NS}/deployments/web"


def deployment(
    name: str = "web",
    labels: dict[str, str] | None = None,
    replicas: int = 2,
    image: str = "img:1",
    namespace: str = NS,
) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app": "web", "tier": "engine"} if labels is None else labels,
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "engine", "image": image}]},
            },
        },
    }


@pytest.fixture
def server() -> Iterator[RunningApiServer]:
    with RunningApiServer() as running:
        yield running


def with_api(server: RunningApiServer, work: Callable[[KubeApi], Awaitable[T]]) -> T:
    async def main() -> T:
        api = KubeApi(httpx.AsyncClient(base_url=server.url, timeout=10))
        try:
            return await work(api)
        finally:
            await api.aclose()

    return asyncio.run(main())


def apply(server: RunningApiServer, manifest: dict[str, Any]) -> str:
    return with_api(server, lambda api: api.apply(manifest))


def writes(server: RunningApiServer) -> list[tuple[str, str]]:
    assert server.api is not None
    return list(server.api.writes)


# --- pure helpers ---


def test_is_subset_ignores_what_the_server_added() -> None:
    wanted = {"spec": {"replicas": 2, "ports": [{"port": 80}]}}
    actual = {
        "spec": {"replicas": 2, "ports": [{"port": 80, "protocol": "TCP"}], "paused": False},
        "status": {"readyReplicas": 1},
    }
    assert is_subset(wanted, actual)
    assert is_subset({}, actual)


def test_is_subset_sees_a_difference() -> None:
    actual = {"spec": {"replicas": 2, "ports": [{"port": 80}]}}
    assert not is_subset({"spec": {"replicas": 3}}, actual)
    assert not is_subset({"spec": {"replicas": 2, "paused": True}}, actual)  # missing key
    assert not is_subset({"spec": {"ports": [{"port": 81}]}}, actual)
    assert not is_subset({"spec": {"ports": []}}, actual)  # lists: same length
    assert not is_subset({"spec": {"ports": [{"port": 80}, {"port": 81}]}}, actual)
    assert not is_subset({"spec": {"ports": {"port": 80}}}, actual)  # a map is not a list
    assert not is_subset({"spec": {"replicas": {"x": 1}}}, actual)
    assert not is_subset({"spec": {"ports": [80]}}, {"spec": {"ports": "80"}})


def test_merge_patch_removes_what_the_new_manifest_dropped() -> None:
    last = {"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"x": 1, "gone": True}}
    wanted = {"metadata": {"labels": {"a": "1"}}, "spec": {"x": 2}}
    assert merge_patch(last, wanted) == {
        "metadata": {"labels": {"a": "1", "b": None}},
        "spec": {"x": 2, "gone": None},
    }


def test_merge_patch_drops_a_whole_map_and_adds_new_keys() -> None:
    last = {"spec": {"x": 1}, "extra": {"deep": {"k": "v"}}}
    wanted = {"spec": {"x": 1, "y": {"z": 3}}}
    assert merge_patch(last, wanted) == {"spec": {"x": 1, "y": {"z": 3}}, "extra": None}


def test_merge_patch_replaces_lists_whole() -> None:
    last = {"spec": {"args": ["--a", "--b"], "ports": [{"port": 80, "name": "http"}]}}
    wanted = {"spec": {"args": ["--a"], "ports": [{"port": 81}]}}
    assert merge_patch(last, wanted) == wanted


def test_merge_patch_from_nothing_sets_everything() -> None:
    wanted = deployment()
    assert merge_patch({}, wanted) == wanted


def test_merge_patch_where_a_map_becomes_a_scalar() -> None:
    assert merge_patch({"a": {"b": 1}}, {"a": 5}) == {"a": 5}
    assert merge_patch({"a": 5}, {"a": {"b": 1}}) == {"a": {"b": 1}}


def test_with_last_applied_round_trips() -> None:
    manifest = deployment()
    annotated = with_last_applied(manifest)
    assert LAST_APPLIED in annotated["metadata"]["annotations"]
    assert LAST_APPLIED not in (manifest["metadata"].get("annotations") or {})  # not mutated
    assert last_applied(annotated) == manifest
    annotation = annotated["metadata"]["annotations"][LAST_APPLIED]
    assert " " not in annotation  # compact
    assert json.loads(annotation) == manifest
    rest = {k: v for k, v in annotated.items() if k != "metadata"}
    assert rest == {k: v for k, v in manifest.items() if k != "metadata"}


def test_with_last_applied_keeps_the_manifests_own_annotations() -> None:
    manifest = deployment()
    manifest["metadata"]["annotations"] = {"note": "hi"}
    annotated = with_last_applied(manifest)
    assert annotated["metadata"]["annotations"]["note"] == "hi"
    assert last_applied(annotated) == manifest


def test_last_applied_without_or_with_a_broken_annotation() -> None:
    assert last_applied({}) == {}
    assert last_applied({"metadata": {"annotations": None}}) == {}
    assert last_applied({"metadata": {"annotations": {LAST_APPLIED: "{not json"}}}) == {}


def test_resource_of() -> None:
    assert resource_of(deployment()) is DEPLOYMENTS
    assert DEPLOYMENTS.path(NS, "web") == PATH
    assert SERVICES.path(NS) == f"/api/v1/namespaces/{NS}/services"
    assert SERVICES.api_version == "v1"
    assert LWS.api_version == "leaderworkerset.x-k8s.io/v1"
    with pytest.raises(ValueError, match="ConfigMap"):
        resource_of({"apiVersion": "v1", "kind": "ConfigMap"})
    with pytest.raises(ValueError):
        resource_of({"apiVersion": "apps/v2", "kind": "Deployment"})


# --- KubeApi against the emulator ---


def test_apply_creates_then_leaves_it_alone(server: RunningApiServer) -> None:
    manifest = deployment()
    assert apply(server, manifest) == "created"
    assert writes(server) == [("POST", f"/apis/apps/v1/namespaces/{NS}/deployments")]
    stored = server.get(PATH)
    assert stored is not None
    assert is_subset(manifest, stored)
    assert last_applied(stored) == manifest

    assert apply(server, manifest) == "unchanged"
    assert apply(server, deployment()) == "unchanged"  # an equal manifest, not the same dict
    assert len(writes(server)) == 1  # nothing written by the second and third apply


def test_apply_leaves_alone_what_the_server_and_others_added(server: RunningApiServer) -> None:
    assert apply(server, deployment()) == "created"
    server.patch(f"{PATH}/status", {"status": {"readyReplicas": 2, "replicas": 2}})
    server.patch(PATH, {"metadata": {"annotations": {"other.io/note": "x"}}})
    before = len(writes(server))
    assert apply(server, deployment()) == "unchanged"
    assert len(writes(server)) == before


def test_apply_updates_and_removes_a_dropped_label(server: RunningApiServer) -> None:
    assert apply(server, deployment()) == "created"
    changed = deployment(labels={"app": "web", "owner": "me"}, replicas=3, image="img:2")
    assert apply(server, changed) == "updated"
    assert writes(server)[-1] == ("PATCH", PATH)
    stored = server.get(PATH)
    assert stored is not None
    assert stored["metadata"]["labels"] == {"app": "web", "owner": "me"}  # "tier" is gone
    assert stored["spec"]["replicas"] == 3
    assert stored["spec"]["template"]["spec"]["containers"][0]["image"] == "img:2"
    assert last_applied(stored) == changed
    assert apply(server, changed) == "unchanged"


def test_apply_keeps_what_others_set_and_the_manifest_never_did(
    server: RunningApiServer,
) -> None:
    assert apply(server, deployment()) == "created"
    server.patch(PATH, {"metadata": {"labels": {"team": "ops"}}})
    assert apply(server, deployment(replicas=4)) == "updated"
    stored = server.get(PATH)
    assert stored is not None
    assert stored["metadata"]["labels"] == {"app": "web", "tier": "engine", "team": "ops"}


def test_apply_restores_what_someone_else_changed(server: RunningApiServer) -> None:
    manifest = deployment()
    assert apply(server, manifest) == "created"
    server.patch(PATH, {"spec": {"replicas": 7}, "metadata": {"labels": {"tier": None}}})
    edited = server.get(PATH)
    assert edited is not None and edited["spec"]["replicas"] == 7
    assert "tier" not in edited["metadata"]["labels"]

    assert apply(server, manifest) == "updated"
    stored = server.get(PATH)
    assert stored is not None
    assert stored["spec"]["replicas"] == 2
    assert stored["metadata"]["labels"] == {"app": "web", "tier": "engine"}
    assert apply(server, manifest) == "unchanged"


def test_apply_when_someone_else_creates_it_first(server: RunningApiServer) -> None:
    """The object appears between apply's GET (404) and its POST (409): apply patches it."""
    assert server.api is not None
    theirs = deployment(labels={"app": "web", "by": "them"}, replicas=5)
    server.create(f"/apis/apps/v1/namespaces/{NS}/deployments", theirs)
    server.api[server.api.action.FETCH][:1] << 404  # apply's first GET misses it
    manifest = deployment()

    assert apply(server, manifest) == "updated"
    assert [method for method, _ in writes(server)] == ["POST", "POST", "PATCH"]
    stored = server.get(PATH)
    assert stored is not None
    assert is_subset(manifest, stored)
    assert stored["metadata"]["labels"]["by"] == "them"  # never in a manifest of ours
    assert last_applied(stored) == manifest


def test_apply_after_a_409_on_create(server: RunningApiServer) -> None:
    """The POST answers 409. (kmock records an intercepted create all the same: the object the
    "other" writer made is exactly ours, so there is nothing left to write.)"""
    assert server.api is not None
    server.api[server.api.action.CREATE][:1] << 409
    manifest = deployment()
    assert apply(server, manifest) == "unchanged"
    assert [method for method, _ in writes(server)] == ["POST"]
    stored = server.get(PATH)
    assert stored is not None and is_subset(manifest, stored)


@pytest.mark.timeout(20)  # an apply that retried forever would hang here
def test_apply_gives_up_when_the_object_keeps_changing(server: RunningApiServer) -> None:
    assert server.api is not None
    server.create(f"/apis/apps/v1/namespaces/{NS}/deployments", deployment(replicas=5))
    server.api[server.api.action.FETCH] << 404  # never seen by GET, always there for POST
    with pytest.raises(ApiError) as raised:
        apply(server, deployment())
    assert raised.value.status == 409


def test_create_raises_other_errors(server: RunningApiServer) -> None:
    assert server.api is not None
    server.api[server.api.action.CREATE] << 403
    with pytest.raises(ApiError) as raised:
        apply(server, deployment())
    assert raised.value.status == 403


def test_get_list_delete(server: RunningApiServer) -> None:
    assert apply(server, deployment("web")) == "created"
    assert apply(server, deployment("api")) == "created"
    assert apply(server, deployment("elsewhere", namespace="team-b")) == "created"

    async def work(api: KubeApi) -> None:
        found = await api.get(DEPLOYMENTS, NS, "web")
        assert found is not None and found["metadata"]["name"] == "web"
        assert await api.get(DEPLOYMENTS, NS, "nothing") is None
        listed = await api.list(DEPLOYMENTS, NS, "app=web")
        assert sorted(o["metadata"]["name"] for o in listed) == ["api", "web"]
        assert await api.list(DEPLOYMENTS, "empty-ns", "app=web") == []

        assert await api.delete(DEPLOYMENTS, NS, "web") is True
        assert await api.get(DEPLOYMENTS, NS, "web") is None
        assert await api.delete(DEPLOYMENTS, NS, "web") is False  # already gone
        assert await api.delete(DEPLOYMENTS, NS, "never-was") is False

    with_api(server, work)
    assert ("DELETE", PATH) in writes(server)
    assert server.get(f"/apis/apps/v1/namespaces/{NS}/deployments/api") is not None


def test_list_sends_the_label_selector(server: RunningApiServer) -> None:
    assert server.api is not None
    with_api(server, lambda api: api.list(DEPLOYMENTS, NS, "fleetlm.dev/model=m"))
    lists = [r for r in server.api if r.url.path.endswith(f"/namespaces/{NS}/deployments")]
    assert [r.params.get("labelSelector") for r in lists] == ["fleetlm.dev/model=m"]


def test_apply_after_the_object_was_deleted(server: RunningApiServer) -> None:
    assert apply(server, deployment()) == "created"
    server.delete(PATH)
    assert apply(server, deployment()) == "created"


def test_has_resource() -> None:
    async def probe(api: KubeApi) -> tuple[bool, bool]:
        return await api.has_resource(DEPLOYMENTS), await api.has_resource(LWS)

    with RunningApiServer() as plain:
        assert with_api(plain, probe) == (True, False)
    with RunningApiServer(with_lws=True) as with_lws:
        assert with_api(with_lws, probe) == (True, True)


def test_has_resource_of_the_core_group(server: RunningApiServer) -> None:
    assert with_api(server, lambda api: api.has_resource(SERVICES)) is True
