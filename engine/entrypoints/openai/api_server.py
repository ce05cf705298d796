"""The OpenAI-compatible HTTP app: `create_app(settings, engine_args)`."""

import asyncio
import hmac
import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from fleetlm import __version__
from fleetlm.engine.async_llm import AsyncLLM
from fleetlm.engine.config import EngineArgs
from fleetlm.engine.entrypoints.openai.body_guard import BodyGuard
from fleetlm.engine.entrypoints.openai.errors import (
    ERROR_RESPONSES,
    APIError,
    install_error_handlers,
)
from fleetlm.engine.entrypoints.openai.metrics import ServerMetrics
from fleetlm.engine.entrypoints.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
)
from fleetlm.engine.entrypoints.openai.registration import keep_registered
from fleetlm.engine.entrypoints.openai.serving_chat import create_chat_completion
from fleetlm.engine.entrypoints.openai.serving_common import ServingContext, created
from fleetlm.engine.entrypoints.openai.serving_completion import create_completion
from fleetlm.engine.entrypoints.openai.settings import ServerSettings
from fleetlm.engine.tokenizer import render_chat

logger = logging.getLogger(__name__)


def get_context(request: Request) -> ServingContext:
    context = getattr(request.app.state, "context", None)
    if context is None:
        raise APIError(503, "the engine is still starting")
    return context


Context = Annotated[ServingContext, Depends(get_context)]


def require_api_key(request: Request) -> None:
    expected = request.app.state.settings.api_key
    if expected is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), expected.encode()):
        raise APIError(
            401,
            "invalid or missing API key",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )


def create_app(settings: ServerSettings, engine_args: EngineArgs) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        llm = AsyncLLM(engine_args, ready_timeout=settings.engine_ready_timeout_s)
        await llm.start()
        name = settings.served_model_name or Path(llm.config.model.model).name
        app.state.context = ServingContext(
            llm, settings, ServerMetrics(name, lambda: llm.stats), name
        )
        _log_ready(app.state.context)
        registration = None
        if settings.register_redis_url and settings.advertise_url:
            registration = asyncio.create_task(
                keep_registered(
                    settings.register_redis_url,
                    settings.advertise_url,
                    app.state.context,
                    settings.redis_key_prefix,
                )
            )
        try:
            yield
        finally:
            if registration is not None:
                registration.cancel()
                await asyncio.gather(registration, return_exceptions=True)
            await llm.shutdown()

    app = FastAPI(title="fleetlm", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.context = None
    app.add_middleware(
        BodyGuard, max_bytes=settings.max_body_bytes, max_depth=settings.max_json_depth
    )
    install_error_handlers(app)
    app.include_router(_public_router())
    app.include_router(_api_router(), dependencies=[Depends(require_api_key)])
    return app


def _public_router() -> APIRouter:
    router = APIRouter()

    @router.get("/health")
    async def health(request: Request) -> Response:
        context: ServingContext | None = request.app.state.context
        if context is None:
            return JSONResponse({"status": "starting"}, status_code=503)
        if context.llm.is_dead:
            return JSONResponse(
                {"status": "engine dead", "reason": context.llm.dead_reason}, status_code=503
            )
        if context.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @router.get("/metrics")
    async def metrics(context: Context) -> Response:
        return Response(context.metrics.render(), media_type="text/plain; version=0.0.4")

    return router


def _api_router() -> APIRouter:
    router = APIRouter(responses=ERROR_RESPONSES)

    @router.get("/v1/models")
    async def models(context: Context) -> JSONResponse:
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {
                        "id": context.model_name,
                        "object": "model",
                        "created": created(),
                        "owned_by": "fleetlm",
                        "root": context.llm.config.model.model,
                        "max_model_len": context.max_model_len,
                    }
                ],
            }
        )

    @router.post("/v1/completions")
    async def completions(body: CompletionRequest, context: Context, request: Request):
        return await create_completion(context, body, request)

    @router.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, context: Context, request: Request):
        return await create_chat_completion(context, body, request)

    @router.post("/tokenize")
    async def tokenize(body: TokenizeRequest, context: Context) -> JSONResponse:
        body.check()
        context.check_model(body.model)
        tokenizer = _tokenizer(context)
        if body.messages is not None:
            text = render_chat(
                tokenizer,
                [m.as_template_message() for m in body.messages],
                add_generation_prompt=body.add_generation_prompt,
            )
            tokens = tokenizer.encode(text, add_special_tokens=False)
        else:
            tokens = tokenizer.encode(body.prompt, add_special_tokens=body.add_special_tokens)
        return JSONResponse(
            {"count": len(tokens), "max_model_len": context.max_model_len, "tokens": tokens}
        )

    @router.post("/detokenize")
    async def detokenize(body: DetokenizeRequest, context: Context) -> JSONResponse:
        context.check_model(body.model)
        vocab_size = context.llm.config.model.arch.vocab_size
        if any(t >= vocab_size for t in body.tokens):
            raise APIError(
                400, f"token ids must be below the vocabulary size ({vocab_size})", param="tokens"
            )
        return JSONResponse({"prompt": _tokenizer(context).decode(body.tokens)})

    @router.get("/version")
    async def version() -> JSONResponse:
        return JSONResponse({"version": __version__})

    return router


def _tokenizer(context: ServingContext):
    if context.llm.tokenizer is None:
        raise APIError(400, "this model has no tokenizer")
    return context.llm.tokenizer


def _log_ready(context: ServingContext) -> None:
    config = context.llm.config
    settings = context.settings
    logger.info(
        "model %s (%s, %s) served as %r; max_model_len %d",
        config.model.model,
        config.model.dtype,
        config.device,
        context.model_name,
        config.model.max_model_len,
    )
    logger.info(
        "KV cache: %d blocks of %d tokens = %d tokens",
        context.llm.num_blocks,
        config.cache.block_size,
        context.llm.num_blocks * config.cache.block_size,
    )
    logger.info("ready: http://%s:%d/v1", settings.host, settings.port)
