"""What the operator does for one InferenceModel: make its children match the spec, keep its
status in step with them, and clean up after it. Pure builders decide *what*
(`fleetlm.operator.builders`); this module does the API calls, in that order:

1. parse the spec (invalid: `Ready=False` with the reason, nothing is touched);
2. check what the cluster must already have (a PersistentVolumeClaim named in the spec);
3. apply every child (`KubeApi.apply`: create, patch or leave);
4. delete the children this model owns that the spec no longer asks for;
5. write the status from the children's.
"""

import asyncio
import contextlib
import datetime
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from fleetlm.operator import naming, status
from fleetlm.operator.builders import (
    MANAGED_KINDS,
    build_children,
    pool_workloads,
    router_workload,
)
from fleetlm.operator.kube import LWS, RESOURCES, KubeApi, is_subset
from fleetlm.operator.redis_cleanup import delete_keys
from fleetlm.operator.settings import OperatorSettings
from fleetlm.operator.spec import InferenceModel, InvalidSpec, parse_model

logger = logging.getLogger(__name__)

Body = Mapping[str, Any]

MODELS = RESOURCES["fleetlm.dev/v1alpha1", "InferenceModel"]


class MissingVolume(Exception):
    """The spec names a PersistentVolumeClaim the namespace does not have (yet)."""


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def owned_by(obj: Body, uid: str) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(ref.get("uid") == uid for ref in refs)


class Reconciler:
    def __init__(self, api: KubeApi, settings: OperatorSettings) -> None:
        self.api, self.settings = api, settings
        self.locks: dict[tuple[str, str], asyncio.Lock] = {}

    @contextlib.asynccontextmanager
    async def latest(self, body: Body) -> AsyncIterator[Body | None]:
        """The model as the API server has it now (None: gone or going), while no other
        reconcile of it runs. kopf's handlers, its timer and the children's events may fire
        together, each with the body it saw: one acting on an older spec would undo a newer."""
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        async with self.locks.setdefault(key, asyncio.Lock()):
            fresh = await self.api.get(MODELS, *key)
            if fresh is None or (fresh.get("metadata") or {}).get("deletionTimestamp"):
                self.locks.pop(key, None)
                yield None
            else:
                yield fresh

    async def reconcile(self, body: Body) -> None:
        """Raises MissingVolume (the caller retries later); an invalid spec is a status."""
        async with self.latest(body) as fresh:
            if fresh is not None:
                await self._reconcile(fresh)

    async def refresh_status(self, body: Body) -> None:
        """Read the children, write the status if it changed."""
        async with self.latest(body) as fresh:
            if fresh is None:
                return
            try:
                model = parse_model(fresh, self.settings)
            except InvalidSpec:
                return  # reconcile() wrote why
            use_lws = await self.api.has_resource(LWS)
            children = build_children(model, self.settings, owner=fresh, use_lws=use_lws)
            await self._refresh_status(fresh, model, children, use_lws)

    async def _reconcile(self, body: Body) -> None:
        try:
            model = parse_model(body, self.settings)
        except InvalidSpec as e:
            if await self.write_invalid(body, e.reason, e.message):
                await self.api.post_event(body, "Warning", e.reason, e.message)
            return
        await self.check_volumes(body, model)
        use_lws = await self.api.has_resource(LWS)
        children = build_children(model, self.settings, owner=body, use_lws=use_lws)
        for child in children:
            outcome = await self.api.apply(child)
            if outcome != "unchanged":
                kind, name = child["kind"], child["metadata"]["name"]
                await self.api.post_event(
                    body, "Normal", outcome.capitalize(), f"{outcome} {kind} {name}"
                )
        await self.prune(body, model, children, use_lws)
        await self._refresh_status(body, model, children, use_lws)

    async def resync_forever(self, interval_s: float, namespaces: Sequence[str] = ()) -> None:
        """Reconcile every model again every `interval_s` (cancelled at shutdown): a child
        deleted or edited by hand comes back, the status is recomputed."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                for namespace in namespaces or [None]:
                    for body in await self.api.list(MODELS, namespace, ""):
                        with contextlib.suppress(MissingVolume):  # its status says so
                            await self.reconcile(body)
            except Exception as e:  # the API server away, say: the next round tries again
                logger.warning("resync failed: %r", e)

    async def check_volumes(self, body: Body, model: InferenceModel) -> None:
        pvc = model.model.source.pvc
        if pvc is None:
            return
        claim = pvc.claim_name
        pvcs = RESOURCES["v1", "PersistentVolumeClaim"]
        if await self.api.get(pvcs, model.namespace, claim) is None:
            message = f"spec.model.source.pvc: PersistentVolumeClaim {claim!r} not found"
            if await self.write_invalid(body, "MissingVolume", message):
                await self.api.post_event(body, "Warning", "MissingVolume", message)
            raise MissingVolume(message)

    async def prune(
        self, body: Body, model: InferenceModel, children: list[dict[str, Any]], use_lws: bool
    ) -> None:
        """Delete what this model owns and no longer wants (a pool dropped, fewer
        StatefulSet pairs, a router turned off, a switch to or from LeaderWorkerSets)."""
        wanted = {(c["kind"], c["metadata"]["name"]) for c in children}
        uid = body["metadata"]["uid"]
        selector = f"{naming.MODEL_LABEL}={model.name}"
        for api_version, kind in MANAGED_KINDS:
            resource = RESOURCES[api_version, kind]
            if resource == LWS and not use_lws:
                continue  # not served: nothing to list
            for obj in await self.api.list(resource, model.namespace, selector):
                name = obj["metadata"]["name"]
                if (kind, name) in wanted or not owned_by(obj, uid):
                    continue
                if await self.api.delete(resource, model.namespace, name):
                    await self.api.post_event(body, "Normal", "Deleted", f"deleted {kind} {name}")

    async def _refresh_status(
        self, body: Body, model: InferenceModel, children: list[dict[str, Any]], use_lws: bool
    ) -> None:
        refs = pool_workloads(model, use_lws=use_lws)
        wanted = {(c["kind"], c["metadata"]["name"]): c for c in children}
        observed: dict[tuple[str, str], Body | None] = {}
        for ref in refs:
            resource = RESOURCES[ref.api_version, ref.kind]
            observed[ref.kind, ref.name] = await self.api.get(resource, model.namespace, ref.name)
        # a workload whose spec lags the model's (another reconcile is about to patch it)
        outdated = {
            key
            for key, found in observed.items()
            if key in wanted and not is_subset(wanted[key]["spec"], (found or {}).get("spec"))
        }
        pools = [
            status.pool_status(
                pool.name,
                pool.replicas,
                pool.gpus_per_replica,
                pool.pods_per_replica,
                [ref for ref in refs if ref.pool == pool.name],
                observed,
                outdated,
            )
            for pool in model.pools
        ]
        router = None
        if (ref := router_workload(model)) is not None:
            resource = RESOURCES[ref.api_version, ref.kind]
            found = await self.api.get(resource, model.namespace, ref.name)
            router = (model.router.replicas, status.ready_replicas(found))
        previous = body.get("status") or {}
        new = status.model_status(
            pools,
            router,
            model.generation,
            naming.endpoint_url(model.name, model.namespace, self.settings.cluster_domain),
            previous,
            utc_now(),
        )
        await self.write_status(body, previous, new)

    async def write_invalid(self, body: Body, reason: str, message: str) -> bool:
        meta = body["metadata"]
        previous = body.get("status") or {}
        endpoint = previous.get("endpoint") or ""
        new = status.invalid_status(
            reason, message, meta.get("generation", 0), endpoint, previous, utc_now()
        )
        return await self.write_status(body, previous, new)

    async def write_status(self, body: Body, previous: Body, new: dict[str, Any]) -> bool:
        """Whether it changed (and was written)."""
        if is_subset(new, previous):
            return False
        meta = body["metadata"]
        await self.api.patch(MODELS, meta["namespace"], meta["name"], {"status": new}, "status")
        for before, after in zip(previous.get("conditions") or [], new["conditions"], strict=False):
            if before.get("status") != after["status"] and after["type"] == "Ready":
                kind = "Normal" if after["status"] == "True" else "Warning"
                await self.api.post_event(body, kind, after["reason"], after["message"])
        return True

    async def refresh_owner(self, child: Body, recreate: bool = False) -> None:
        """A child changed: refresh the status of the model that owns it; a child deleted
        (`recreate`): reconcile that model, which makes it again."""
        meta = child.get("metadata") or {}
        name = (meta.get("labels") or {}).get(naming.MODEL_LABEL)
        if not name:
            return
        body = await self.api.get(MODELS, meta["namespace"], name)
        if body is None or not owned_by(child, body["metadata"]["uid"]):
            return
        if recreate:
            with contextlib.suppress(MissingVolume):
                await self.reconcile(body)
        else:
            await self.refresh_status(body)

    async def cleanup(self, body: Body) -> int:
        """The finalizer's work: the model's keys in Redis (owner references take care of the
        Kubernetes objects). Returns how many keys were deleted."""
        if not self.settings.redis_url:
            return 0
        meta = body["metadata"]
        prefix = naming.redis_key_prefix(meta["namespace"], meta["name"])
        deleted = await delete_keys(self.settings.redis_url, prefix)
        await self.api.post_event(
            body, "Normal", "CleanedUp", f"deleted {deleted} Redis keys under {prefix}"
        )
        return deleted
