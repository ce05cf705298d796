"""`fleetlm operator`: kopf, with the handlers of `fleetlm.operator.handlers` on a registry of
its own, standalone (one operator per cluster: the Helm chart runs one replica)."""

import logging
import threading
from collections.abc import Sequence

import kopf

from fleetlm.operator.handlers import register
from fleetlm.operator.settings import OperatorSettings


def run(
    config: OperatorSettings,
    namespaces: Sequence[str] = (),
    liveness_endpoint: str | None = None,
    stop_flag: threading.Event | None = None,
    ready_flag: threading.Event | None = None,
) -> None:
    """Until stopped (SIGINT / SIGTERM in the main thread, or `stop_flag`). No namespaces: all
    of them (cluster-wide)."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per API call
    registry = kopf.OperatorRegistry()
    register(registry, config, namespaces)
    kopf.run(
        registry=registry,
        standalone=True,
        clusterwide=not namespaces,
        namespaces=list(namespaces),
        liveness_endpoint=liveness_endpoint,
        memo=kopf.Memo(),
        stop_flag=stop_flag,
        ready_flag=ready_flag,
    )
