"""Health checks: each replica's /health, and its load and cache figures from /metrics."""

import asyncio
import logging
from collections.abc import Awaitable, Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families

from fleetlm.router.metrics import RouterMetrics
from fleetlm.router.replicas import Replica, ReplicaPool
from fleetlm.router.store import RouterStore

logger = logging.getLogger(__name__)

# engine metric (vLLM's name) -> Replica field
ENGINE_METRICS = {
    "vllm:num_requests_running": "num_running",
    "vllm:num_requests_waiting": "num_waiting",
    "vllm:kv_cache_usage_perc": "kv_cache_usage",
    "vllm:prefix_cache_queries": "prefix_cache_queries",
    "vllm:prefix_cache_hits": "prefix_cache_hits",
}


def parse_engine_metrics(text: str) -> dict[str, float]:
    """Replica fields from an engine's Prometheus text (sums over label sets)."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        field = ENGINE_METRICS.get(family.name)
        if field is None:
            continue
        values[field] = sum(
            s.value for s in family.samples if s.name in (family.name, family.name + "_total")
        )
    return values


async def check_replica(
    client: httpx.AsyncClient, replica: Replica, timeout_s: float
) -> tuple[bool, dict]:
    """(passed, engine figures): /health must answer 200 within the timeout."""
    try:
        health = await client.get(f"{replica.url}/health", timeout=timeout_s)
        if health.status_code != 200:
            return False, {}
        metrics = await client.get(f"{replica.url}/metrics", timeout=timeout_s)
        return True, parse_engine_metrics(metrics.text) if metrics.status_code == 200 else {}
    except httpx.HTTPError:
        return False, {}


async def check_all(
    client: httpx.AsyncClient, pool: ReplicaPool, metrics: RouterMetrics, timeout_s: float
) -> None:
    replicas = list(pool.replicas.values())
    results = await asyncio.gather(*(check_replica(client, r, timeout_s) for r in replicas))
    for replica, (ok, values) in zip(replicas, results, strict=True):
        was_healthy = replica.healthy
        pool.record_check(replica, ok, values)
        if replica.healthy != was_healthy:
            logger.warning(
                "replica %s %s", replica.url, "readmitted" if replica.healthy else "ejected"
            )
        metrics.replica_healthy.labels(replica.url).set(1 if replica.healthy else 0)
        metrics.replica_prefix_hits.labels(replica.url).set(replica.prefix_cache_hits)
        metrics.replica_prefix_queries.labels(replica.url).set(replica.prefix_cache_queries)


async def run_health_checks(
    client: httpx.AsyncClient,
    pool: ReplicaPool,
    store: RouterStore,
    metrics: RouterMetrics,
    interval_s: float,
    timeout_s: float,
    static: list[str],
    discoverers: list[Callable[[], Awaitable[list[str]]]],
) -> None:
    """Forever, every interval (cancelled by the app's lifespan): discovery (the static list
    plus what each discoverer finds), the checks, and the store's heartbeat (this router's
    in-flight counts stay alive in Redis)."""
    while True:
        try:
            if discoverers:
                found = await asyncio.gather(*(discover() for discover in discoverers))
                pool.sync(sorted({*static, *(url for urls in found for url in urls)}))
            await check_all(client, pool, metrics, timeout_s)
            await store.heartbeat()
        except Exception:  # a bug here must not stop the checks
            logger.exception("health check round failed")
        await asyncio.sleep(interval_s)
