"""The request models refuse, with a 400 naming the field, what the engine cannot carry
(each case was a 500 found by tests/engine/entrypoints/openai/test_schemathesis.py)."""

import json

import pytest
from pydantic import ValidationError

from fleetlm.engine.entrypoints.openai.errors import validation_error_response
from fleetlm.engine.entrypoints.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    TokenizeRequest,
)

CHAT = [{"role": "user", "content": "hi"}]


def refused_param(model, body: dict) -> str:
    """The `param` of the 400 the server answers for `body`."""
    with pytest.raises(ValidationError) as info:
        model.model_validate(body)
    response = validation_error_response(list(info.value.errors()))
    assert response.status_code == 400
    return json.loads(response.body)["error"]["param"]


@pytest.mark.parametrize(
    "field", ["seed", "top_k", "n", "min_tokens", "max_tokens", "logprobs", "best_of"]
)
@pytest.mark.parametrize("value", [2**64, -(2**63) - 1])
def test_integers_beyond_64_bits_are_refused(field, value):
    # They used to fail on the msgpack wire to the engine (500).
    assert refused_param(CompletionRequest, {"prompt": "hi", field: value}) == field


def test_64_bit_integers_are_accepted():
    body = {"prompt": "hi", "seed": 2**63 - 1, "top_k": -(2**63)}
    assert CompletionRequest.model_validate(body).seed == 2**63 - 1
    assert refused_param(CompletionRequest, {"prompt": "hi", "stop_token_ids": [2**64]}) == (
        "stop_token_ids.0"
    )


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("field", ["temperature", "top_p", "repetition_penalty"])
def test_non_finite_numbers_are_refused(field, value):
    # temperature=Infinity used to run, sampling from garbage.
    assert refused_param(CompletionRequest, {"prompt": "hi", field: value}) == field
    assert refused_param(ChatCompletionRequest, {"messages": CHAT, field: value}) == field


@pytest.mark.parametrize(
    ("model", "body", "param"),
    [
        (CompletionRequest, {"prompt": "\ud800"}, "prompt"),
        (CompletionRequest, {"prompt": ["ok", "\udc00"]}, "prompt"),
        (CompletionRequest, {"prompt": "hi", "stop": "\ud800"}, "stop"),
        (CompletionRequest, {"prompt": "hi", "model": "\ud800"}, "model"),
        (CompletionRequest, {"prompt": "hi", "metadata": {"\ud800": "x"}}, "metadata"),
        (
            ChatCompletionRequest,
            {"messages": [{"role": "user", "content": "\ud800"}]},
            "messages.0.content",
        ),
        (TokenizeRequest, {"prompt": "a\ud800b"}, "prompt"),
    ],
)
def test_lone_surrogates_are_refused(model, body, param):
    # Legal as JSON escapes but not encodable as UTF-8: the tokenizer, the engine wire, or the
    # error message itself used to fail (500).
    assert refused_param(model, body) == param


def test_empty_messages_are_refused_and_documented():
    assert refused_param(ChatCompletionRequest, {"messages": []}) == "messages"
    schema = ChatCompletionRequest.model_json_schema()
    assert schema["properties"]["messages"]["minItems"] == 1
