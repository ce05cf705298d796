"""Rendering chats: a failing chat template is a bad request naming what to fix."""

import pytest

from fleetlm.engine.errors import InvalidRequestError
from fleetlm.engine.tokenizer import render_chat

CHAT = [{"role": "user", "content": "hi"}]


def test_the_models_template_renders_the_chat(smollm2_tokenizer):
    text = render_chat(smollm2_tokenizer, CHAT)
    assert "hi" in text and text.endswith("assistant\n")


@pytest.mark.parametrize(
    "template",
    [
        "{{",  # syntax error
        "{{ raise_exception('no') }}",
        "{{ foo.bar }}",  # undefined
        "{{ 1 / 0 }}",  # a Python error inside the template
        "{{ 1 + 'a' }}",
    ],
)
def test_a_callers_template_that_fails_is_refused(smollm2_tokenizer, template):
    # These used to escape as jinja2 or Python errors (500).
    with pytest.raises(InvalidRequestError, match="the chat template failed") as info:
        render_chat(smollm2_tokenizer, CHAT, chat_template=template)
    assert info.value.param == "chat_template"


def test_the_models_template_refusing_the_messages_names_them(smollm2_tokenizer, monkeypatch):
    monkeypatch.setattr(smollm2_tokenizer, "chat_template", "{{ raise_exception('roles') }}")
    with pytest.raises(InvalidRequestError, match="roles") as info:
        render_chat(smollm2_tokenizer, CHAT)
    assert info.value.param == "messages"
