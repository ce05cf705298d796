"""The served model's tokenizer, read with `tokenizers` and Jinja alone (no transformers, so
no torch): prompts are tokenized exactly as the engine's front end does (its
transformers tokenizer is built from the same tokenizer.json and chat template)."""

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2.exceptions import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer


class RouterTokenizer:
    def __init__(self, model_dir: str) -> None:
        directory = Path(model_dir)
        self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        config_path = directory / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.exists() else {}
        template_path = directory / "chat_template.jinja"
        template = (
            template_path.read_text() if template_path.exists() else config.get("chat_template")
        )
        self.special_tokens = {
            name: _token_text(config.get(name))
            for name in ("bos_token", "eos_token", "unk_token", "pad_token")
        }
        self.template = None if template is None else _environment().from_string(template)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def render_chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        """The prompt text of a conversation, rendered as transformers renders it."""
        if self.template is None:
            raise ValueError("the model has no chat template")
        return self.template.render(
            messages=messages, add_generation_prompt=add_generation_prompt, **self.special_tokens
        )


def _environment() -> ImmutableSandboxedEnvironment:
    """The Jinja environment transformers renders chat templates in."""

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(
            value,
            ensure_ascii=ensure_ascii,
            indent=indent,
            separators=separators,
            sort_keys=sort_keys,
        )

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def _token_text(token: str | dict | None) -> str | None:
    return token.get("content") if isinstance(token, dict) else token
