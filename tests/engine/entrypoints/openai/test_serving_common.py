"""ServingContext's limits, on a fake engine (no model, no server)."""

from types import SimpleNamespace

import pytest

from fleetlm.engine.entrypoints.openai.errors import APIError
from fleetlm.engine.entrypoints.openai.serving_common import ServingContext
from fleetlm.engine.entrypoints.openai.settings import ServerSettings


def context(**settings) -> ServingContext:
    config = SimpleNamespace(
        model=SimpleNamespace(max_model_len=512), scheduler=SimpleNamespace(max_num_seqs=4)
    )
    llm = SimpleNamespace(config=config)
    return ServingContext(llm, ServerSettings(**settings), metrics=None, model_name="m")


def test_an_omitted_max_tokens_takes_the_default_capped_by_the_limit():
    # The completions default (16) used to be refused by a server limited to 8 tokens.
    ctx = context(max_tokens_limit=8)
    assert ctx.resolve_max_tokens(None, 10, "max_tokens", default=16) == 8
    assert context().resolve_max_tokens(None, 10, "max_tokens", default=16) == 16
    assert ctx.resolve_max_tokens(None, 10, "max_tokens") == 8  # null: all the room, capped
    with pytest.raises(APIError) as info:
        ctx.resolve_max_tokens(16, 10, "max_tokens")  # asked for explicitly: refused
    assert info.value.status == 400 and info.value.param == "max_tokens"


def test_a_batch_of_prompts_is_limited_to_what_the_server_admits():
    # 100,000 one-word prompts used to be tokenized on the event loop and all queued.
    ctx = context(max_waiting_requests=6)
    ctx.check_num_prompts(10)
    with pytest.raises(APIError) as info:
        ctx.check_num_prompts(11)
    assert info.value.status == 400 and info.value.param == "prompt"
