"""What completions and chat share: admission, limits, running requests, SSE, logprobs."""

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request

from fleetlm.engine.async_llm import AsyncLLM
from fleetlm.engine.core.client import EngineDeadError
from fleetlm.engine.entrypoints.openai.errors import APIError, error_body
from fleetlm.engine.entrypoints.openai.metrics import RequestClock, ServerMetrics
from fleetlm.engine.entrypoints.openai.settings import ServerSettings
from fleetlm.engine.outputs import Logprob, PositionLogprobs, RequestOutput
from fleetlm.engine.processor import ProcessedRequest

T = TypeVar("T")
MIN_LOGPROB = -9999.0  # JSON has no -inf


@dataclass
class ServingContext:
    llm: AsyncLLM
    settings: ServerSettings
    metrics: ServerMetrics
    model_name: str
    num_in_flight: int = 0
    draining: bool = False

    @property
    def max_model_len(self) -> int:
        return self.llm.config.model.max_model_len

    @property
    def max_in_flight(self) -> int:
        return self.llm.config.scheduler.max_num_seqs + self.settings.max_waiting_requests

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.model_name:
            raise APIError(
                404, f"the model '{model}' does not exist", param="model", code="model_not_found"
            )

    def check_available(self) -> None:
        if self.llm.is_dead:
            raise APIError(503, f"the engine is not running: {self.llm.dead_reason}")
        if self.draining:
            raise APIError(503, "the server is shutting down")
        limit = self.max_in_flight
        if self.num_in_flight >= limit:
            self.metrics.rejected.labels(self.model_name, "overload").inc()
            raise APIError(
                429,
                f"too many requests in flight ({limit}); retry later",
                code="overloaded",
                headers={"Retry-After": str(self.settings.retry_after_s)},
            )

    def check_n(self, n: int) -> None:
        if n > self.settings.max_n:
            raise APIError(400, f"n ({n}) exceeds the limit ({self.settings.max_n})", param="n")

    def check_num_prompts(self, num_prompts: int) -> None:
        """A batch of prompts runs as that many requests: no more than the server admits at
        once (else one HTTP request could queue unbounded work, tokenized on the event loop)."""
        if num_prompts > self.max_in_flight:
            raise APIError(
                400,
                f"prompt holds {num_prompts} prompts, more than the limit ({self.max_in_flight})",
                param="prompt",
            )

    def resolve_max_tokens(
        self, requested: int | None, prompt_len: int, param: str, default: int | None = None
    ) -> int:
        """The request's max_tokens: by default `default`, or all the room the context leaves,
        capped by the server limit; an explicit value that cannot fit is refused."""
        room = self.max_model_len - prompt_len
        if room < 1:
            raise APIError(
                400,
                f"the prompt ({prompt_len} tokens) leaves no room to generate "
                f"within the maximum context length ({self.max_model_len} tokens)",
                param="prompt",
            )
        limit = min(room, self.settings.max_tokens_limit or room)
        if requested is None:
            return limit if default is None else min(default, limit)
        if requested < 1:
            raise APIError(400, f"{param} must be at least 1, got {requested}", param=param)
        if requested > room:
            raise APIError(
                400,
                f"this model's maximum context length is {self.max_model_len} "
                f"tokens; the prompt has {prompt_len} and {param} asks for {requested}",
                param=param,
            )
        if requested > limit:
            raise APIError(400, f"{param} ({requested}) exceeds the limit ({limit})", param=param)
        return requested


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


@contextlib.contextmanager
def in_flight(ctx: ServingContext):
    ctx.num_in_flight += 1
    try:
        yield
    finally:
        ctx.num_in_flight -= 1


async def tracked(ctx: ServingContext, request: ProcessedRequest) -> AsyncIterator[RequestOutput]:
    """The request's outputs, recorded in the metrics."""
    clock = RequestClock()
    async with contextlib.aclosing(ctx.llm.generate(request)) as outputs:
        async for output in outputs:
            ctx.metrics.observe(clock, output)
            yield output


async def final_outputs(
    ctx: ServingContext, requests: list[ProcessedRequest]
) -> list[RequestOutput]:
    async def last(request: ProcessedRequest) -> RequestOutput:
        result = None
        async for result in tracked(ctx, request):  # noqa: B007
            pass
        return result

    return list(await asyncio.gather(*(last(r) for r in requests)))


async def merged_outputs(
    ctx: ServingContext, requests: list[ProcessedRequest]
) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Outputs of several requests as they come, tagged with the request's index."""
    if len(requests) == 1:
        async for output in tracked(ctx, requests[0]):
            yield 0, output
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(index: int, request: ProcessedRequest) -> None:
        try:
            async for output in tracked(ctx, request):
                queue.put_nowait((index, output))
        except BaseException as exc:  # handed to the consumer
            queue.put_nowait((index, exc))
            raise

    tasks = [asyncio.create_task(pump(i, r)) for i, r in enumerate(requests)]
    try:
        remaining = len(requests)
        while remaining:
            index, item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            remaining -= item.finished
            yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def unless_disconnected(raw_request: Request, work: Awaitable[T]) -> T:
    """Run `work`, cancelling it (which aborts its requests) if the client goes away."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(raw_request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise APIError(499, "the client closed the connection")
    finally:
        watcher.cancel()


async def _wait_for_disconnect(raw_request: Request) -> None:
    while True:
        message = await raw_request.receive()
        if message["type"] == "http.disconnect":
            return


def sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


def sse_error(exc: BaseException) -> str:
    if isinstance(exc, EngineDeadError):
        return sse(error_body(503, f"the engine stopped: {exc}"))
    return sse(error_body(500, "internal server error"))


def usage(outputs: list[RequestOutput]) -> dict[str, Any]:
    prompt = sum(len(o.prompt_token_ids) for o in outputs)
    completion = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    cached = sum(o.num_cached_tokens for o in outputs)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def logprob_value(logprob: Logprob) -> float:
    return max(logprob.logprob, MIN_LOGPROB)


def top_entries(position: PositionLogprobs, chosen: int, num_top: int) -> list[tuple[int, Logprob]]:
    """The top `num_top` alternatives of a position, most likely first."""
    ranked = sorted(
        ((lp.rank, tid, lp) for tid, lp in position.items() if tid != chosen or lp.rank <= num_top),
        key=lambda e: e[0],
    )
    return [(tid, lp) for rank, tid, lp in ranked if rank <= num_top]


def created() -> int:
    return int(time.time())
