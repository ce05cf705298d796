"""POST /v1/completions."""

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from fleetlm.engine.entrypoints.openai.protocol import CompletionRequest
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
from fleetlm.engine.outputs import CompletionOutput, PositionLogprobs, RequestOutput
from fleetlm.engine.processor import ProcessedRequest


async def create_completion(ctx: ServingContext, body: CompletionRequest, raw_request: Request):
    body.check()
    ctx.check_model(body.model)
    ctx.check_n(body.n)
    prompts = body.prompts()
    ctx.check_num_prompts(len(prompts))
    ctx.check_available()
    request_id = new_id("cmpl")
    requests = [
        _process(ctx, f"{request_id}-{i}", prompt, body) for i, prompt in enumerate(prompts)
    ]
    if body.stream:
        return StreamingResponse(
            _stream(ctx, body, request_id, requests), media_type="text/event-stream"
        )
    with in_flight(ctx):
        outputs = await unless_disconnected(raw_request, final_outputs(ctx, requests))
    choices = [
        _choice(ctx, body, i * body.n + c.index, output, c, c.token_ids, c.text, True)
        for i, output in enumerate(outputs)
        for c in output.outputs
    ]
    return JSONResponse(
        {
            "id": request_id,
            "object": "text_completion",
            "created": created(),
            "model": ctx.model_name,
            "choices": choices,
            "usage": usage(outputs),
        }
    )


def _process(
    ctx: ServingContext, request_id: str, prompt, body: CompletionRequest
) -> ProcessedRequest:
    processor = ctx.llm.processor
    text, token_ids = processor.tokenize(prompt)
    # An omitted max_tokens takes OpenAI's default (16) capped by the server limit, never
    # refused; an explicit null asks for all the room the context leaves.
    given = "max_tokens" in body.model_fields_set
    max_tokens = ctx.resolve_max_tokens(
        body.max_tokens if given else None,
        len(token_ids),
        "max_tokens",
        default=None if given else body.max_tokens,
    )
    return processor.build(request_id, text, token_ids, body.to_sampling_params(max_tokens))


async def _stream(
    ctx: ServingContext, body: CompletionRequest, request_id: str, requests: list[ProcessedRequest]
) -> AsyncIterator[str]:
    base = {
        "id": request_id,
        "object": "text_completion",
        "created": created(),
        "model": ctx.model_name,
    }
    finished: set[int] = set()
    started: set[int] = set()
    outputs: dict[int, RequestOutput] = {}
    with in_flight(ctx):
        try:
            async with contextlib.aclosing(merged_outputs(ctx, requests)) as stream:
                async for index, output in stream:
                    outputs[index] = output
                    for c in output.outputs:
                        choice_index = index * body.n + c.index
                        if choice_index in finished:
                            continue
                        new_ids = c.delta_token_ids
                        if not (c.delta_text or new_ids or c.finish_reason):
                            continue
                        echo = choice_index not in started
                        started.add(choice_index)
                        if c.finish_reason:
                            finished.add(choice_index)
                        choice = _choice(
                            ctx, body, choice_index, output, c, new_ids, c.delta_text, echo
                        )
                        yield sse({**base, "choices": [choice]})
        except Exception as exc:  # the stream ends with an error event
            yield sse_error(exc)
            yield sse("[DONE]")
            return
        if body.stream_options and body.stream_options.include_usage:
            yield sse({**base, "choices": [], "usage": usage(list(outputs.values()))})
        yield sse("[DONE]")


def _choice(
    ctx: ServingContext,
    body: CompletionRequest,
    index: int,
    output: RequestOutput,
    completion: CompletionOutput,
    token_ids: list[int],
    text: str,
    with_echo: bool,
) -> dict:
    logprobs = None
    if body.logprobs is not None:
        positions = (
            completion.logprobs[len(completion.logprobs) - len(token_ids) :] if token_ids else []
        )
        logprobs = _logprobs(token_ids, positions, body.logprobs)
    if body.echo and with_echo:
        prompt_text = output.prompt or ctx.llm.tokenizer.decode(output.prompt_token_ids)
        text = prompt_text + text
        if logprobs is not None:
            logprobs = _merge(
                _logprobs(output.prompt_token_ids, output.prompt_logprobs, body.logprobs), logprobs
            )
    return {
        "index": index,
        "text": text,
        "logprobs": logprobs,
        "finish_reason": completion.finish_reason,
        "stop_reason": completion.stop_reason,
    }


def _logprobs(
    token_ids: list[int], positions: list[PositionLogprobs | None], num_top: int
) -> dict[str, list[Any]]:
    tokens, values, tops, offsets = [], [], [], []
    offset = 0
    for token_id, position in zip(token_ids, positions, strict=True):
        if position is None:  # the first prompt token has no logprob
            tokens.append("")
            values.append(None)
            tops.append(None)
        else:
            chosen = position[token_id]
            tokens.append(chosen.decoded_token or "")
            values.append(logprob_value(chosen))
            tops.append(
                {
                    lp.decoded_token or "": logprob_value(lp)
                    for _, lp in top_entries(position, token_id, num_top)
                }
            )
        offsets.append(offset)
        offset += len(tokens[-1])
    return {
        "tokens": tokens,
        "token_logprobs": values,
        "top_logprobs": tops,
        "text_offset": offsets,
    }


def _merge(first: dict[str, list], second: dict[str, list]) -> dict[str, list]:
    shift = sum(len(t) for t in first["tokens"])
    merged = {key: first[key] + second[key] for key in ("tokens", "token_logprobs", "top_logprobs")}
    merged["text_offset"] = first["text_offset"] + [o + shift for o in second["text_offset"]]
    return merged
