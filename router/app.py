"""The router's FastAPI app: OpenAI routes proxied to engine replicas, health, metrics, admin."""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import asdict

import httpx
import redis.asyncio as aioredis
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from fleetlm.router.discovery_k8s import KubernetesDiscovery
from fleetlm.router.errors import error_response
from fleetlm.router.health import run_health_checks
from fleetlm.router.kv_follower import KVEventFollower
from fleetlm.router.metrics import RouterMetrics
from fleetlm.router.prefix_index import PrefixIndex
from fleetlm.router.prefix_sources import CachedPrefixes, SentPrefixes
from fleetlm.router.prompts import PromptHasher
from fleetlm.router.proxy import Proxy
from fleetlm.router.rate_limit import RateLimiter
from fleetlm.router.replicas import ReplicaPool
from fleetlm.router.settings import RouterSettings
from fleetlm.router.store import create_store

logger = logging.getLogger(__name__)


def create_app(settings: RouterSettings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        timeout = httpx.Timeout(settings.request_timeout_s, connect=settings.connect_timeout_s)
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
        async with contextlib.AsyncExitStack() as stack:
            client = await stack.enter_async_context(
                httpx.AsyncClient(timeout=timeout, limits=limits)
            )
            metrics = RouterMetrics()
            pool = ReplicaPool(settings.replicas, settings.unhealthy_after)
            store = create_store(
                settings.redis_url,
                settings.router_id,
                prefix_capacity=settings.prefix_index_size,
                prefix_ttl_s=settings.prefix_ttl_s,
                key_prefix=settings.redis_key_prefix,
            )
            stack.push_async_callback(store.close)
            discoverers = [store.registered_replicas] if settings.discover_redis else []
            discovery = None
            if settings.discover_kubernetes:
                if settings.kubernetes_api_url:
                    discovery = KubernetesDiscovery(
                        settings.kubernetes_api_url,
                        settings.kubernetes_namespace or "default",
                        settings.kubernetes_label_selector,
                        settings.kubernetes_port,
                    )
                else:
                    discovery = KubernetesDiscovery.in_cluster(
                        settings.kubernetes_namespace,
                        settings.kubernetes_label_selector,
                        settings.kubernetes_port,
                    )
                stack.push_async_callback(discovery.aclose)
                discoverers.append(discovery.replicas)
            tasks = [
                run_health_checks(
                    client,
                    pool,
                    store,
                    metrics,
                    settings.health_check_interval_s,
                    settings.health_check_timeout_s,
                    settings.replicas,
                    discoverers,
                )
            ]
            if discovery is not None:
                tasks.append(discovery.run())
            prefixes: CachedPrefixes | SentPrefixes = SentPrefixes(store)
            follower = None
            if settings.redis_url and settings.kv_events:
                redis_client = aioredis.Redis.from_url(settings.redis_url, socket_timeout=2.0)
                stack.push_async_callback(redis_client.aclose)
                # exact: it mirrors the engines' caches, which bound its size
                follower = KVEventFollower(
                    redis_client, PrefixIndex(capacity=2**62), settings.redis_key_prefix
                )
                prefixes = CachedPrefixes(follower.index)
                tasks.append(follower.run(lambda: list(pool.replicas)))
            app.state.pool, app.state.metrics, app.state.client = pool, metrics, client
            app.state.store, app.state.follower = store, follower
            app.state.settings = settings
            app.state.proxy = Proxy(
                settings,
                client,
                pool,
                store,
                prefixes,
                PromptHasher(settings.tokenizer, settings.block_size),
                RateLimiter(store, settings.requests_per_minute, settings.tokens_per_minute),
                metrics,
            )
            running = [asyncio.create_task(task) for task in tasks]
            try:
                yield
            finally:
                for task in running:
                    task.cancel()
                await asyncio.gather(*running, return_exceptions=True)

    app = FastAPI(title="fleetlm router", lifespan=lifespan)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await request.app.state.proxy.forward(request, "/v1/completions")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await request.app.state.proxy.forward(request, "/v1/chat/completions")

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        return await aggregate_models(request)

    @app.get("/health")
    async def health(request: Request) -> Response:
        if not request.app.state.pool.available():
            return error_response(503, "no engine replica is available", code="no_replica")
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        state = request.app.state
        in_flight = await state.store.in_flight()
        for replica in state.pool.replicas.values():
            state.metrics.replica_in_flight.labels(replica.url).set(in_flight.get(replica.url, 0))
        state.metrics.redis_failures.set(
            getattr(state.store, "num_failures", 0)
            + (state.follower.num_failures if state.follower else 0)
        )
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/admin/replicas")
    async def replicas(request: Request) -> Response:
        state = request.app.state
        follower = state.follower
        cached = {} if follower is None else follower.index.count_by_replica()
        return JSONResponse(
            {
                "replicas": [
                    {**asdict(r), "cached_blocks": cached.get(r.url)}
                    for r in state.pool.replicas.values()
                ],
                "redis": state.settings.redis_url is not None,
                "prefix_source": "kv_events" if follower else "sent",
            }
        )

    return app


async def aggregate_models(request: Request) -> Response:
    """The union of the available replicas' models (by id)."""
    state = request.app.state
    headers = {k: v for k, v in request.headers.items() if k.lower() == "authorization"}

    async def fetch(url: str) -> httpx.Response | None:
        try:
            return await state.client.get(f"{url}/v1/models", headers=headers)
        except httpx.HTTPError:
            return None

    answers = await asyncio.gather(*(fetch(r.url) for r in state.pool.available()))
    models: dict[str, dict] = {}
    for answer in answers:
        if answer is None:
            continue
        if answer.status_code != 200:  # e.g. a wrong API key: the replica's own answer
            return Response(answer.content, answer.status_code, media_type="application/json")
        for model in answer.json().get("data", []):
            models.setdefault(model["id"], model)
    if not models and not any(answers):
        return error_response(503, "no engine replica is available", code="no_replica")
    return JSONResponse({"object": "list", "data": list(models.values())})
