"""Loading the model's tokenizer and rendering chats with the model's own template."""

from pathlib import Path
from typing import Any

import jinja2
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from fleetlm.engine.errors import InvalidRequestError

ChatMessage = dict[str, Any]


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """A Hugging Face tokenizer from a directory, or built from a GGUF file's vocabulary."""
    source = Path(path)
    if source.suffix == ".gguf":
        return AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    return AutoTokenizer.from_pretrained(source)


def render_chat(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[ChatMessage],
    chat_template: str | None = None,
    add_generation_prompt: bool = True,
) -> str:
    """The prompt text for a conversation (transformers renders in a sandboxed Jinja env)."""
    if not messages:
        raise InvalidRequestError("messages must not be empty", param="messages")
    if chat_template is None and tokenizer.chat_template is None:
        raise InvalidRequestError(
            "the model has no chat template; pass chat_template", param="chat_template"
        )
    for message in messages:
        if not isinstance(message, dict) or "role" not in message:
            raise InvalidRequestError(
                "each message needs a 'role' and a 'content'", param="messages"
            )
    # A caller's template is the caller's code: whatever it raises is a bad request. The
    # model's own template fails on bad messages through `raise_exception` (a TemplateError).
    errors = Exception if chat_template is not None else jinja2.TemplateError
    try:
        return tokenizer.apply_chat_template(
            messages,
            chat_template=chat_template,
            add_generation_prompt=add_generation_prompt,
            tokenize=False,
        )
    except errors as e:
        param = "messages" if chat_template is None else "chat_template"
        raise InvalidRequestError(f"the chat template failed: {e}", param=param) from e
