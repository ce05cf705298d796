"""POST /v1/chat/completions."""

import contextlib
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from fleetlm.engine.entrypoints.openai.protocol import ChatCompletionRequest
from fleetlm.engine.entrypoints.openai.serving_common import (
    ServingContext,
    created,
    final_outputs,
    in_flight,
    logprob_value,
    merged_outputs,
    new_id,
    sse,
    sse_error,
    top_entries,
    unless_disconnected,
    usage,
)
from fleetlm.engine.errors import InvalidRequestError
from fleetlm.engine.outputs import CompletionOutput, PositionLogprobs
from fleetlm.engine.processor import ProcessedRequest
from fleetlm.engine.tokenizer import render_chat


async def create_chat_completion(
    ctx: ServingContext, body: ChatCompletionRequest, raw_request: Request
):
    body.check()
    ctx.check_model(body.model)
    ctx.check_n(body.n)
    ctx.check_available()
    request_id = new_id("chatcmpl")
    request = _process(ctx, request_id, body)
    echo = _echo_text(body)
    if body.stream:
        return StreamingResponse(
            _stream(ctx, body, request_id, request, echo), media_type="text/event-stream"
        )
    with in_flight(ctx):
        (output,) = await unless_disconnected(raw_request, final_outputs(ctx, [request]))
    choices = [
        {
            "index": c.index,
            "message": {"role": "assistant", "content": echo + c.text},
            "logprobs": _logprobs(c.token_ids, c.logprobs, body) if body.logprobs else None,
            "finish_reason": c.finish_reason,
            "stop_reason": c.stop_reason,
        }
        for c in output.outputs
    ]
    return JSONResponse(
        {
            "id": request_id,
            "object": "chat.completion",
            "created": created(),
            "model": ctx.model_name,
            "choices": choices,
            "usage": usage([output]),
        }
    )


def _process(ctx: ServingContext, request_id: str, body: ChatCompletionRequest) -> ProcessedRequest:
    tokenizer = ctx.llm.tokenizer
    if tokenizer is None:
        raise InvalidRequestError(
            "this model has no tokenizer, so no chat template", param="messages"
        )
    if body.chat_template is not None and not ctx.settings.trust_request_chat_template:
        raise InvalidRequestError(
            "chat_template in a request is refused unless the server runs with "
            "--trust-request-chat-template",
            param="chat_template",
        )
    messages = [m.as_template_message() for m in body.messages]
    text = render_chat(tokenizer, messages, body.chat_template, body.add_generation_prompt)
    token_ids = tokenizer.encode(text, add_special_tokens=False)
    max_tokens = ctx.resolve_max_tokens(
        body.requested_max_tokens,
        len(token_ids),
        "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens",
    )
    return ctx.llm.processor.build(request_id, text, token_ids, body.to_sampling_params(max_tokens))


def _echo_text(body: ChatCompletionRequest) -> str:
    """With echo, the answer continues the last message when it is the assistant's."""
    last = body.messages[-1]
    if body.echo and last.role == "assistant":
        return last.as_template_message()["content"]
    return ""


async def _stream(
    ctx: ServingContext,
    body: ChatCompletionRequest,
    request_id: str,
    request: ProcessedRequest,
    echo: str,
) -> AsyncIterator[str]:
    base = {
        "id": request_id,
        "object": "chat.completion.chunk",
        "created": created(),
        "model": ctx.model_name,
    }
    finished: set[int] = set()
    started: set[int] = set()
    last_output = None
    with in_flight(ctx):
        try:
            async with contextlib.aclosing(merged_outputs(ctx, [request])) as stream:
                async for _, output in stream:
                    last_output = output
                    for c in output.outputs:
                        if c.index in finished:
                            continue
                        if c.index not in started:
                            started.add(c.index)
                            yield sse(
                                {
                                    **base,
                                    "choices": [
                                        _delta_choice(
                                            c.index, {"role": "assistant", "content": echo}
                                        )
                                    ],
                                }
                            )
                        chunk = _delta(c, body)
                        if chunk is not None:
                            yield sse({**base, "choices": [chunk]})
                        if c.finish_reason:
                            finished.add(c.index)
        except Exception as exc:  # the stream ends with an error event
            yield sse_error(exc)
            yield sse("[DONE]")
            return
        if body.stream_options and body.stream_options.include_usage and last_output is not None:
            yield sse({**base, "choices": [], "usage": usage([last_output])})
        yield sse("[DONE]")


def _delta(c: CompletionOutput, body: ChatCompletionRequest) -> dict | None:
    new_ids = c.delta_token_ids
    if not (c.delta_text or new_ids or c.finish_reason):
        return None
    choice = _delta_choice(c.index, {"content": c.delta_text} if c.delta_text else {})
    if body.logprobs and new_ids:
        choice["logprobs"] = _logprobs(new_ids, c.delta_logprobs, body)
    choice["finish_reason"] = c.finish_reason
    choice["stop_reason"] = c.stop_reason
    return choice


def _delta_choice(index: int, delta: dict) -> dict:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}


def _logprobs(
    token_ids: list[int], positions: list[PositionLogprobs], body: ChatCompletionRequest
) -> dict:
    num_top = body.top_logprobs or 0
    content = []
    for token_id, position in zip(token_ids, positions, strict=True):
        chosen = position[token_id]
        content.append(
            {
                **_token(chosen.decoded_token, logprob_value(chosen)),
                "top_logprobs": [
                    _token(lp.decoded_token, logprob_value(lp))
                    for _, lp in top_entries(position, token_id, num_top)
                ],
            }
        )
    return {"content": content}


def _token(text: str | None, logprob: float) -> dict:
    text = text or ""
    return {"token": text, "logprob": logprob, "bytes": list(text.encode())}
