"""kmock's KubernetesEmulator, with the API server's behaviours the operator relies on, served
on a loopback port from a thread of its own (so tests stay synchronous and the operator under
test runs as a real separate process).

Added to the emulator, as kube-apiserver and kube-controller-manager do them:
- a JSON patch whose `test` op fails is answered 422, as the API server does (kmock: 500);
- `metadata.uid`, a name from `generateName` (kopf's Events), `creationTimestamp`, `generation` (1, then +1 at each change of `spec`) and
  `resourceVersion` (+1 at each write);
- the garbage collector: an object whose owners (`ownerReferences` by uid) are all gone is
  deleted, a little after them (it is asynchronous in Kubernetes too);
- a log of the write requests (method, path), to check that a reconcile writes nothing.

Not emulated (kmock's limits): labelSelector filtering on LIST and WATCH, resourceVersion
semantics of watches, strategic-merge patches, admission (the CRD's schema and CEL rules:
tests/crds checks those), and the Deployment / StatefulSet controllers: tests set their
`status` themselves, as those controllers would.
"""

import asyncio
import contextlib
import copy
import datetime
import itertools
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import yaml
from kmock import KubernetesEmulator, KubernetesError, ResourceInfo, Server

CRD = Path(__file__).resolve().parents[2] / "crds" / "inferencemodel.yaml"
LWS_RESOURCE = "leaderworkerset.x-k8s.io/v1/leaderworkersets"


@attrs.define(kw_only=True)
class ApiServer(KubernetesEmulator):
    _versions: Any = attrs.field(factory=lambda: itertools.count(1), init=False)
    writes: list[tuple[str, str]] = attrs.field(factory=list, init=False)
    bodies: list[tuple[str, str, str]] = attrs.field(factory=list, init=False)
    collecting: set[asyncio.Task] = attrs.field(factory=set, init=False)

    async def _handle(self, request):  # type: ignore[no-untyped-def]
        if request.resource is not None and request.method.name in {"POST", "PATCH", "PUT"}:
            self.writes.append((request.method.name, request.url.path))
            self.bodies.append((request.method.name, request.url.path, request.text))
            if isinstance(request.data, dict):
                self._stamp(request)
            elif isinstance(request.data, list):  # a JSON patch (kopf's finalizers)
                self._check_json_patch(request)
        elif request.resource is not None and request.method.name == "DELETE":
            self.writes.append(("DELETE", request.url.path))
        answer = await super()._handle(request)
        if request.method.name in {"DELETE", "PATCH", "PUT"}:
            task = asyncio.get_running_loop().create_task(self._collect_garbage())
            self.collecting.add(task)
            task.add_done_callback(self.collecting.discard)
        return answer

    def _stamp(self, request) -> None:  # type: ignore[no-untyped-def]
        meta = request.data.setdefault("metadata", {})
        meta["resourceVersion"] = str(next(self._versions))
        if request.method.name == "POST":
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault(
                "creationTimestamp",
                datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            )
            meta["generation"] = 1
            return
        if request.subresource or "spec" not in request.data:
            return
        current = self._current(request)
        if current is not None:
            spec = current.get("spec") or {}
            new_spec = apply_merge_patch(spec, request.data["spec"])
            if new_spec != spec:
                meta["generation"] = (current.get("metadata") or {}).get("generation", 1) + 1

    def _check_json_patch(self, request) -> None:  # type: ignore[no-untyped-def]
        """As the API server: a failed `test` op is 422 (kopf then retries at the next event,
        which the conflicting write caused); a patch that applies is a new resourceVersion."""
        current = self._current(request) or {}
        for op in request.data:
            if op.get("op") == "test" and resolve(current, op["path"]) != op.get("value"):
                raise KubernetesError(
                    status=422, reason="Invalid", message=f"the test of {op['path']} failed"
                )
        version = str(next(self._versions))
        request.data.append({"op": "add", "path": "/metadata/resourceVersion", "value": version})

    def _current(self, request) -> dict[str, Any] | None:  # type: ignore[no-untyped-def]
        for (resource, namespace, name), obj in self.objects.items():
            if (resource, namespace, name) == (request.resource, request.namespace, request.name):
                return None if obj.deleted else copy.deepcopy(dict(obj.raw))
        return None

    async def _collect_garbage(self) -> None:
        await asyncio.sleep(0.05)
        live = {
            (obj.raw.get("metadata") or {}).get("uid")
            for obj in list(self.objects.values())
            if not obj.deleted
        }
        for (resource, namespace, name), obj in list(self.objects.items()):
            if obj.deleted:
                continue
            owners = (obj.raw.get("metadata") or {}).get("ownerReferences") or []
            if owners and not any(o.get("uid") in live for o in owners):
                with contextlib.suppress(Exception):
                    await self.delete(path_of(resource, namespace, name))


def resolve(obj: Any, pointer: str) -> Any:
    """The value at a JSON pointer (RFC 6901), or None."""
    for part in pointer.lstrip("/").split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(obj, dict):
            obj = obj.get(part)
        elif isinstance(obj, list) and part.isdigit() and int(part) < len(obj):
            obj = obj[int(part)]
        else:
            return None
    return obj


def apply_merge_patch(value: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return patch
    result = dict(value) if isinstance(value, dict) else {}
    for key, item in patch.items():
        if item is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge_patch(result.get(key), item)
    return result


def path_of(resource: Any, namespace: str | None, name: str) -> str:
    base = f"/apis/{resource.group}/{resource.version}" if resource.group else "/api/v1"
    ns = f"/namespaces/{namespace}" if namespace else ""
    return f"{base}{ns}/{resource.plural}/{name}"


def crd_resource_info() -> ResourceInfo:
    crd = yaml.safe_load(CRD.read_text())
    names = crd["spec"]["names"]
    return ResourceInfo(
        kind=names["kind"],
        singular=names["singular"],
        namespaced=crd["spec"]["scope"] == "Namespaced",
        verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
        shortnames=set(names.get("shortNames") or []),
        subresources={"status"},
    )


class RunningApiServer:
    """The ApiServer on a loopback port, in a thread with its own event loop."""

    def __init__(self, with_lws: bool = False) -> None:
        self.with_lws = with_lws
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.api: ApiServer | None = None
        self.url = ""
        self._stack = contextlib.AsyncExitStack()

    def __enter__(self) -> "RunningApiServer":
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        self.http = httpx.Client(base_url=self.url, timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    async def _start(self) -> None:
        self.api = await self._stack.enter_async_context(ApiServer())
        server = await self._stack.enter_async_context(Server(self.api))
        self.api.resources.load_bundled()
        self.api.resources["fleetlm.dev/v1alpha1/inferencemodels"] = crd_resource_info()
        if self.with_lws:
            self.api.resources[LWS_RESOURCE] = ResourceInfo(
                kind="LeaderWorkerSet",
                singular="leaderworkerset",
                namespaced=True,
                verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
                subresources={"status", "scale"},
            )
        self.url = str(server.url).rstrip("/")

    async def _stop(self) -> None:
        assert self.api is not None
        for task in list(self.api.collecting):
            task.cancel()
        await self._stack.aclose()

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "emulator",
                    "contexts": [{"name": "emulator", "context": {"cluster": "c", "user": "u"}}],
                    "clusters": [{"name": "c", "cluster": {"server": self.url}}],
                    "users": [{"name": "u", "user": {"token": "test-token"}}],
                }
            )
        )
        return path

    # --- reading and writing objects, as kubectl would ---

    def get(self, path: str) -> dict[str, Any] | None:
        answer = self.http.get(path)
        return None if answer.status_code == 404 else answer.raise_for_status().json()

    def items(self, path: str) -> list[dict[str, Any]]:
        answer = self.http.get(path)
        if answer.status_code == 404:
            return []
        return answer.raise_for_status().json().get("items") or []

    def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.http.post(path, json=body).raise_for_status().json()

    def patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/merge-patch+json"}
        return self.http.patch(path, json=body, headers=headers).raise_for_status().json()

    def delete(self, path: str) -> None:
        self.http.delete(path).raise_for_status()

    def objects(self) -> Iterator[tuple[str, str | None, str, dict[str, Any]]]:
        """(resource as group/version/plural, namespace, name, body) of every live object."""
        assert self.api is not None
        for (resource, namespace, name), obj in list(self.api.objects.items()):
            if not obj.deleted:
                key = f"{resource.group}/{resource.version}/{resource.plural}".lstrip("/")
                yield key, namespace, name, copy.deepcopy(dict(obj.raw))
