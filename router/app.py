"""The router's FastAPI app: OpenAI routes proxied to engine replicas, health, metrics, admin."""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import asdict

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from fleetlm.router.errors import error_response
from fleetlm.router.health import run_health_checks
from fleetlm.router.metrics import RouterMetrics
from fleetlm.router.prefix_index import PrefixIndex
from fleetlm.router.prompts import PromptHasher
from fleetlm.router.proxy import Proxy
from fleetlm.router.replicas import ReplicaPool
from fleetlm.router.settings import RouterSettings

logger = logging.getLogger(__name__)


def create_app(settings: RouterSettings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        timeout = httpx.Timeout(settings.request_timeout_s, connect=settings.connect_timeout_s)
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
        async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
            metrics = RouterMetrics()
            pool = ReplicaPool(settings.replicas, settings.unhealthy_after)
            app.state.pool = pool
            app.state.metrics = metrics
            app.state.client = client
            app.state.proxy = Proxy(
                settings,
                client,
                pool,
                PrefixIndex(settings.prefix_index_size),
                PromptHasher(settings.tokenizer, settings.block_size),
                metrics,
            )
            checks = asyncio.create_task(
                run_health_checks(
                    client,
                    pool,
                    metrics,
                    settings.health_check_interval_s,
                    settings.health_check_timeout_s,
                )
            )
            try:
                yield
            finally:
                checks.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await checks

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
        app_state = request.app.state
        for replica in app_state.pool.replicas.values():
            app_state.metrics.replica_in_flight.labels(replica.url).set(replica.in_flight)
        return Response(app_state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/admin/replicas")
    async def replicas(request: Request) -> Response:
        pool = request.app.state.pool
        return JSONResponse({"replicas": [asdict(r) for r in pool.replicas.values()]})

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
