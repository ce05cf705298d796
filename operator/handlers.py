"""The kopf handlers: thin, each one call into the Reconciler (`fleetlm.operator.reconcile`).

They are registered on a registry passed in (never kopf's global one), so a test can run an
operator of its own in-process, and nothing lives at module level.
"""

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import kopf

from fleetlm.operator.kube import LWS, RESOURCES, KubeApi
from fleetlm.operator.naming import FINALIZER, GROUP, MANAGED_BY, MANAGED_BY_LABEL, PLURAL, VERSION
from fleetlm.operator.reconcile import MissingVolume, Reconciler
from fleetlm.operator.settings import OperatorSettings

# The workloads whose changes move a model's status (and whose deletion is undone).
CHILD_WORKLOADS = [RESOURCES["apps/v1", "Deployment"], RESOURCES["apps/v1", "StatefulSet"], LWS]
MISSING_VOLUME_RETRY_S = 15
CLEANUP_ATTEMPTS = 3

logger = logging.getLogger(__name__)


def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod: its service account; elsewhere: the kubeconfig ($KUBECONFIG, ~/.kube/config)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


def register(
    registry: kopf.OperatorRegistry, config: OperatorSettings, namespaces: Sequence[str] = ()
) -> None:
    """Register every handler of the operator on `registry` (`namespaces`: those it watches;
    none: all)."""
    models = {"group": GROUP, "version": VERSION, "plural": PLURAL, "registry": registry}

    @kopf.on.login(registry=registry)
    def authenticate(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return login(**kwargs)

    @kopf.on.startup(registry=registry)
    async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        settings.persistence.finalizer = FINALIZER
        settings.posting.level = logging.WARNING  # our own Events say what was done
        info = login(settings=settings)
        if info is None:
            raise kopf.PermanentError("no service account and no kubeconfig to log in with")
        memo.reconciler = Reconciler(KubeApi.from_connection(info), config)
        # NOTE: a loop of our own, not a kopf timer per model: kopf keeps a model's finalizer
        # until its timers have stopped, and a timer caught mid-reconcile by a deletion could
        # leave the model undeletable until its next event.
        memo.resync = asyncio.create_task(
            memo.reconciler.resync_forever(config.resync_interval_s, namespaces)
        )

    @kopf.on.cleanup(registry=registry)
    async def stop(memo: kopf.Memo, **_: Any) -> None:
        if getattr(memo, "resync", None) is not None:
            memo.resync.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await memo.resync
        if getattr(memo, "reconciler", None) is not None:
            await memo.reconciler.api.aclose()

    @kopf.on.resume(**models)
    @kopf.on.create(**models)
    @kopf.on.update(**models)
    async def reconcile(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        try:
            await memo.reconciler.reconcile(body)
        except MissingVolume as e:
            raise kopf.TemporaryError(str(e), delay=MISSING_VOLUME_RETRY_S) from e

    @kopf.on.delete(**models)
    async def clean_up(body: kopf.Body, memo: kopf.Memo, retry: int, **_: Any) -> None:
        try:
            await memo.reconciler.cleanup(body)
        except Exception as e:
            if retry + 1 >= CLEANUP_ATTEMPTS:  # never hold a deletion forever on Redis
                logger.warning("gave up cleaning Redis for %s: %r", body["metadata"]["name"], e)
                return
            raise kopf.TemporaryError(f"cleaning up Redis: {e!r}", delay=2) from e

    for workload in CHILD_WORKLOADS:

        @kopf.on.event(
            workload.group,
            workload.version,
            workload.plural,
            labels={MANAGED_BY_LABEL: MANAGED_BY},
            registry=registry,
        )
        async def child_changed(
            body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any
        ) -> None:
            reconciler = getattr(memo, "reconciler", None)
            if reconciler is not None:  # DELETED: put it back (unless its model is going)
                await reconciler.refresh_owner(body, recreate=type == "DELETED")
