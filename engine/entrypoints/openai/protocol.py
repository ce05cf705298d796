"""OpenAI request bodies (pydantic), and their translation into `SamplingParams`.

Unknown fields are refused (a silently ignored field could change what the caller gets);
fields OpenAI defines that do not change generation are accepted and ignored.

What the engine cannot carry is refused here, with a 400 naming the field, rather than failing
on the way to the engine: integers beyond 64 bits (the engine wire is msgpack), NaN and
infinite numbers, and strings with lone surrogates (legal as JSON escapes, not in UTF-8).
"""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fleetlm.engine.errors import InvalidRequestError
from fleetlm.engine.sampling_params import SamplingParams

Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
TokenIds = list[Annotated[int, Field(ge=0)]]


def _check_encodable(value: Any) -> Any:
    """`value` unchanged, or a ValueError if a string in it cannot be encoded as UTF-8."""
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            raise ValueError("strings must be valid Unicode (no lone surrogates)") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_encodable(key)
            _check_encodable(item)
    elif isinstance(value, list):
        for item in value:
            _check_encodable(item)
    return value


class _Body(BaseModel):
    """Base of every request model: unknown fields, non-finite numbers and strings that UTF-8
    cannot encode are refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*")
    @classmethod
    def _encodable(cls, value: Any) -> Any:
        return _check_encodable(value)


class StreamOptions(_Body):
    include_usage: bool = False


class _SamplingFields(_Body):
    """Fields shared by completions and chat completions."""

    model: str | None = None
    n: Int64 = 1
    temperature: float | None = None
    top_p: float | None = None
    top_k: Int64 | None = None
    min_p: float | None = None
    seed: Int64 | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[Int64] | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float | None = None
    ignore_eos: bool = False
    min_tokens: Int64 = 0
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None  # accepted, recorded nowhere: it does not change generation
    # OpenAI fields that do not change generation.
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    logit_bias: dict[str, float] | None = None

    def check(self) -> None:
        """Cross-field checks, raising `InvalidRequestError` naming the parameter (kept out of
        pydantic validators, which would wrap the error and lose the parameter)."""
        if self.logit_bias:
            raise InvalidRequestError("logit_bias is not supported", param="logit_bias")
        if self.stream_options is not None and not self.stream:
            raise InvalidRequestError(
                "stream_options is only allowed with stream", param="stream_options"
            )

    def sampling_kwargs(self, default_max_tokens: int) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "n": self.n,
            "seed": self.seed,
            "stop": self.stop or [],
            "stop_token_ids": self.stop_token_ids or [],
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
            "ignore_eos": self.ignore_eos,
            "min_tokens": self.min_tokens,
            "include_stop_str_in_output": self.include_stop_str_in_output,
            "skip_special_tokens": self.skip_special_tokens,
            "max_tokens": default_max_tokens,
        }
        optional = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "min_p": self.min_p,
            "repetition_penalty": self.repetition_penalty,
        }
        kwargs.update({k: v for k, v in optional.items() if v is not None})
        return kwargs


class CompletionRequest(_SamplingFields):
    prompt: str | list[str] | TokenIds | list[TokenIds]
    max_tokens: Int64 | None = 16
    logprobs: Int64 | None = None
    echo: bool = False
    best_of: Int64 | None = None
    suffix: str | None = None

    def check(self) -> None:
        super().check()
        if self.suffix:
            raise InvalidRequestError("suffix is not supported", param="suffix")
        if self.best_of is not None and self.best_of != self.n:
            raise InvalidRequestError("best_of must equal n", param="best_of")

    def prompts(self) -> list[str | list[int]]:
        """The prompt field as a list of prompts (text or token ids)."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if not prompt:
            raise InvalidRequestError("prompt must not be empty", param="prompt")
        if isinstance(prompt[0], int):
            return [prompt]
        return list(prompt)

    def to_sampling_params(self, max_tokens: int) -> SamplingParams:
        kwargs = self.sampling_kwargs(max_tokens)
        kwargs["logprobs"] = self.logprobs
        if self.echo and self.logprobs is not None:
            kwargs["prompt_logprobs"] = self.logprobs
        return SamplingParams(**kwargs)


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def as_template_message(self) -> dict[str, str]:
        content = self.content
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": content or ""}


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: Int64 | None = None
    max_completion_tokens: Int64 | None = None
    logprobs: bool = False
    top_logprobs: Int64 | None = None
    echo: bool = False
    add_generation_prompt: bool = True
    chat_template: str | None = None
    parallel_tool_calls: bool | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None

    def check(self) -> None:
        super().check()
        if self.tools or (self.tool_choice not in (None, "none")):
            raise InvalidRequestError("tool calling is not supported", param="tools")
        if self.response_format and self.response_format.get("type") != "text":
            raise InvalidRequestError(
                "only response_format {'type': 'text'} is supported", param="response_format"
            )
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidRequestError("top_logprobs requires logprobs", param="top_logprobs")

    @property
    def requested_max_tokens(self) -> int | None:
        return (
            self.max_completion_tokens
            if self.max_completion_tokens is not None
            else self.max_tokens
        )

    def to_sampling_params(self, max_tokens: int) -> SamplingParams:
        kwargs = self.sampling_kwargs(max_tokens)
        kwargs["logprobs"] = (self.top_logprobs or 0) if self.logprobs else None
        return SamplingParams(**kwargs)


class TokenizeRequest(_Body):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True

    def check(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise InvalidRequestError("give exactly one of prompt and messages", param="prompt")


class DetokenizeRequest(_Body):
    model: str | None = None
    tokens: TokenIds
