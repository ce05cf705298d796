"""A small Kubernetes API client for the operator's own writes: get / create / patch / delete /
list by label, and `apply`, the one helper every child goes through.

kopf watches and patches the InferenceModels itself; this client writes the children. It uses
the credentials kopf's login produced (`kopf.ConnectionInfo`), so both talk to the same server
as the same identity.

NOTE: `apply` is a client-side three-way merge, as `kubectl apply` does: the manifest last
applied is kept in an annotation; the patch sets what the new manifest sets and nulls what the
last one set and the new one dropped. Fields the server or other controllers own (status,
defaults, a HorizontalPodAutoscaler's replicas) are left alone. When the object already holds
everything the manifest says, nothing is written: running a reconcile twice changes nothing.
"""

import base64
import contextlib
import datetime
import json
import logging
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import kopf

logger = logging.getLogger(__name__)

LAST_APPLIED = "fleetlm.dev/last-applied"
FIELD_MANAGER = "fleetlm-operator"

Outcome = Literal["created", "updated", "unchanged"]


@dataclass(frozen=True)
class Resource:
    """Where a kind lives in the API: `/api/v1/...` for the core group, else `/apis/G/V/...`."""

    group: str
    version: str
    plural: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        return f"{base}/{name}" if name else base


# Every kind the operator writes or reads, by (apiVersion, kind).
RESOURCES: dict[tuple[str, str], Resource] = {
    ("v1", "Service"): Resource("", "v1", "services"),
    ("v1", "ServiceAccount"): Resource("", "v1", "serviceaccounts"),
    ("v1", "PersistentVolumeClaim"): Resource("", "v1", "persistentvolumeclaims"),
    ("v1", "Pod"): Resource("", "v1", "pods"),
    ("apps/v1", "Deployment"): Resource("apps", "v1", "deployments"),
    ("apps/v1", "StatefulSet"): Resource("apps", "v1", "statefulsets"),
    ("rbac.authorization.k8s.io/v1", "Role"): Resource("rbac.authorization.k8s.io", "v1", "roles"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): Resource(
        "rbac.authorization.k8s.io", "v1", "rolebindings"
    ),
    ("policy/v1", "PodDisruptionBudget"): Resource("policy", "v1", "poddisruptionbudgets"),
    ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"): Resource(
        "leaderworkerset.x-k8s.io", "v1", "leaderworkersets"
    ),
    ("fleetlm.dev/v1alpha1", "InferenceModel"): Resource(
        "fleetlm.dev", "v1alpha1", "inferencemodels"
    ),
}
LWS = RESOURCES["leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"]


def resource_of(manifest: Mapping[str, Any]) -> Resource:
    key = (manifest["apiVersion"], manifest["kind"])
    if key not in RESOURCES:
        raise ValueError(f"the operator does not write {key[1]} ({key[0]})")
    return RESOURCES[key]


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


def is_subset(wanted: Any, actual: Any) -> bool:
    """Whether `actual` holds everything `wanted` says (maps: recursively; lists: item by item,
    same length; the rest: equal). Server-side defaults inside `actual` do not count."""
    if isinstance(wanted, Mapping):
        return isinstance(actual, Mapping) and all(
            key in actual and is_subset(value, actual[key]) for key, value in wanted.items()
        )
    if isinstance(wanted, list):
        return (
            isinstance(actual, list)
            and len(wanted) == len(actual)
            and all(is_subset(w, a) for w, a in zip(wanted, actual, strict=True))
        )
    return wanted == actual


def merge_patch(last: Mapping[str, Any], wanted: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch (RFC 7386) that sets all of `wanted` and removes what `last` set and
    `wanted` no longer does."""
    patch: dict[str, Any] = {key: None for key in last if key not in wanted}
    for key, value in wanted.items():
        before = last.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            patch[key] = merge_patch(before, value)
        else:
            patch[key] = value
    return patch


def with_last_applied(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest, annotated with itself (without that annotation), compactly."""
    result = json.loads(json.dumps(manifest))
    annotations = result.setdefault("metadata", {}).setdefault("annotations", {})
    annotations[LAST_APPLIED] = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
    return result


def last_applied(current: Mapping[str, Any]) -> dict[str, Any]:
    annotations = (current.get("metadata") or {}).get("annotations") or {}
    try:
        return json.loads(annotations.get(LAST_APPLIED) or "{}")
    except ValueError:
        return {}


class KubeApi:
    """An httpx client bound to one API server and identity."""

    def __init__(self, client: httpx.AsyncClient, tmp_files: list[Any] | None = None) -> None:
        self.client = client
        self._tmp_files = tmp_files or []  # the PEM files of kubeconfig's inline data

    @classmethod
    def from_connection(cls, info: kopf.ConnectionInfo) -> "KubeApi":
        headers = {"User-Agent": FIELD_MANAGER}
        if info.token:
            headers["Authorization"] = f"{info.scheme or 'Bearer'} {info.token}"
        auth = httpx.BasicAuth(info.username, info.password or "") if info.username else None
        tmp: list[Any] = []
        verify: ssl.SSLContext | bool = True
        if info.insecure:
            verify = False
        else:
            cafile = info.ca_path or _to_file(info.ca_data, tmp)
            verify = ssl.create_default_context(cafile=cafile)
            certfile = info.certificate_path or _to_file(info.certificate_data, tmp)
            keyfile = info.private_key_path or _to_file(info.private_key_data, tmp)
            if certfile:
                verify.load_cert_chain(certfile, keyfile)
        client = httpx.AsyncClient(
            base_url=str(info.server),
            headers=headers,
            auth=auth,
            verify=verify,
            timeout=httpx.Timeout(30.0),
        )
        return cls(client, tmp)

    async def aclose(self) -> None:
        await self.client.aclose()
        for f in self._tmp_files:
            f.close()

    async def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any] | None:
        """The answer's JSON; None for 404. Other errors raise ApiError."""
        answer = await self.client.request(method, path, **kwargs)
        if answer.status_code == 404:
            return None
        if answer.status_code >= 400:
            try:
                message = answer.json().get("message", answer.text)
            except ValueError:
                message = answer.text
            raise ApiError(answer.status_code, f"{method} {path}: {message}")
        return answer.json() if answer.content else {}

    async def has_resource(self, resource: Resource) -> bool:
        """Whether the server serves this kind (e.g. the LeaderWorkerSet CRD is installed)."""
        group_version = resource.path().rsplit("/", 1)[0]  # /api/v1 or /apis/G/V
        found = await self._call("GET", group_version)
        return found is not None and any(
            r.get("name") == resource.plural for r in found.get("resources") or []
        )

    async def get(self, resource: Resource, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._call("GET", resource.path(namespace, name))

    async def list(
        self, resource: Resource, namespace: str | None, label_selector: str = ""
    ) -> list[dict[str, Any]]:
        """In one namespace, or in all (None)."""
        params = {"labelSelector": label_selector} if label_selector else {}
        found = await self._call("GET", resource.path(namespace), params=params)
        return list((found or {}).get("items") or [])

    async def create(self, manifest: Mapping[str, Any]) -> dict[str, Any] | None:
        """None when it already exists (409)."""
        namespace = manifest["metadata"].get("namespace")
        try:
            return await self._call(
                "POST",
                resource_of(manifest).path(namespace),
                json=manifest,
                params={"fieldManager": FIELD_MANAGER},
            )
        except ApiError as e:
            if e.status == 409:
                return None
            raise

    async def patch(
        self,
        resource: Resource,
        namespace: str,
        name: str,
        patch: Mapping[str, Any],
        subresource: str | None = None,
    ) -> dict[str, Any] | None:
        """A JSON merge patch; None when the object is gone (404)."""
        path = resource.path(namespace, name) + (f"/{subresource}" if subresource else "")
        return await self._call(
            "PATCH",
            path,
            content=json.dumps(patch),
            headers={"Content-Type": "application/merge-patch+json"},
            params={"fieldManager": FIELD_MANAGER},
        )

    async def delete(self, resource: Resource, namespace: str, name: str) -> bool:
        """Whether it was there (404 is "already gone")."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        return await self._call("DELETE", resource.path(namespace, name), json=body) is not None

    async def post_event(
        self, about: Mapping[str, Any], type_: str, reason: str, message: str
    ) -> None:
        """A Kubernetes Event on `about` (type Normal / Warning). Best effort: an Event that
        cannot be posted is logged, never raised."""
        meta = about["metadata"]
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": about.get("apiVersion"),
                "kind": about.get("kind"),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": FIELD_MANAGER,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self._call("POST", f"/api/v1/namespaces/{meta['namespace']}/events", json=event)
        except (ApiError, httpx.HTTPError) as e:
            logger.warning("could not post the event %s %s: %r", reason, message, e)

    async def apply(self, manifest: Mapping[str, Any]) -> Outcome:
        """Create the object, or patch it to the manifest, or leave it (see the module's NOTE).
        Tolerates the races of a restarted operator: 409 on create (someone was first: patch
        it), 404 on patch (someone deleted it: create it)."""
        resource = resource_of(manifest)
        namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
        for _ in range(3):
            current = await self.get(resource, namespace, name)
            if current is None:
                if await self.create(with_last_applied(manifest)) is not None:
                    return "created"
                continue  # 409: it appeared meanwhile
            if is_subset(manifest, current) and last_applied(current) == manifest:
                return "unchanged"
            patch = merge_patch(last_applied(current), with_last_applied(manifest))
            if await self.patch(resource, namespace, name, patch) is not None:
                return "updated"
        raise ApiError(409, f"{manifest['kind']} {namespace}/{name} kept changing under apply")


def _to_file(data: bytes | str | None, keep: list[Any]) -> str | None:
    """kubeconfig's inline `*-data` fields (base64) as a temporary file ssl can read."""
    if not data:
        return None
    raw = data if isinstance(data, bytes) else data.encode()
    with contextlib.suppress(ValueError):  # else: already PEM
        raw = base64.b64decode(raw, validate=True)
    f = tempfile.NamedTemporaryFile(suffix=".pem")  # noqa: SIM115 (lives as long as the client)
    f.write(raw)
    f.flush()
    keep.append(f)
    return f.name
