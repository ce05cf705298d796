"""Checking and tokenizing what a caller submits, before anything reaches the engine core."""

from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

from fleetlm.engine.config import ModelConfig
from fleetlm.engine.core.protocol import EngineCoreRequest
from fleetlm.engine.errors import InvalidRequestError
from fleetlm.engine.sampling_params import SamplingParams

# A prompt: text, token ids, or {"prompt": text} / {"prompt_token_ids": ids}.
PromptInput = str | list[int] | dict[str, Any]


@dataclass
class ProcessedRequest:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    samples: list[EngineCoreRequest]  # one per sample (n of them)


class Processor:
    def __init__(
        self, model_config: ModelConfig, tokenizer: PreTrainedTokenizerBase | None
    ) -> None:
        self.model_config = model_config
        self.tokenizer = tokenizer

    def process(
        self,
        request_id: str,
        prompt: PromptInput,
        params: SamplingParams,
        arrival_time: float | None = None,
    ) -> ProcessedRequest:
        """Validate and tokenize; raise `InvalidRequestError` and change nothing on bad input."""
        text, token_ids = self.tokenize(prompt)
        return self.build(request_id, text, token_ids, params, arrival_time)

    def build(
        self,
        request_id: str,
        text: str | None,
        token_ids: list[int],
        params: SamplingParams,
        arrival_time: float | None = None,
    ) -> ProcessedRequest:
        """Validate an already tokenized prompt and its parameters."""
        self._check_prompt(token_ids)
        self._check_params(params)
        return ProcessedRequest(
            request_id=request_id,
            prompt=text,
            prompt_token_ids=token_ids,
            sampling_params=params,
            samples=self._fan_out(request_id, token_ids, params, arrival_time),
        )

    def tokenize(self, prompt: PromptInput) -> tuple[str | None, list[int]]:
        """(text or None, token ids) of a prompt."""
        if isinstance(prompt, dict):
            if "prompt_token_ids" in prompt:
                return prompt.get("prompt"), _as_token_ids(prompt["prompt_token_ids"])
            if "prompt" in prompt:
                prompt = prompt["prompt"]
            else:
                raise InvalidRequestError(
                    "a prompt dict needs 'prompt' or 'prompt_token_ids'", param="prompt"
                )
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise InvalidRequestError(
                    "this engine has no tokenizer: give prompts as token ids", param="prompt"
                )
            return prompt, self.tokenizer.encode(prompt)
        return None, _as_token_ids(prompt)

    def _check_prompt(self, token_ids: list[int]) -> None:
        if not token_ids:
            raise InvalidRequestError("the prompt is empty", param="prompt")
        max_len = self.model_config.max_model_len
        if len(token_ids) > max_len:
            raise InvalidRequestError(
                f"the prompt ({len(token_ids)} tokens) is longer than the maximum model length "
                f"({max_len} tokens)",
                param="prompt",
            )
        vocab_size = self.model_config.arch.vocab_size
        bad = next((t for t in token_ids if not 0 <= t < vocab_size), None)
        if bad is not None:
            raise InvalidRequestError(
                f"token id {bad} is outside the vocabulary [0, {vocab_size})", param="prompt"
            )

    def _check_params(self, params: SamplingParams) -> None:
        if not isinstance(params, SamplingParams):
            raise InvalidRequestError(
                "sampling_params must be a SamplingParams", param="sampling_params"
            )
        max_logprobs = self.model_config.max_logprobs
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(params, name)
            if value is not None and value > max_logprobs:
                raise InvalidRequestError(
                    f"{name} ({value}) exceeds the maximum ({max_logprobs})", param=name
                )
        vocab_size = self.model_config.arch.vocab_size
        if any(t >= vocab_size for t in params.stop_token_ids):
            raise InvalidRequestError(
                "stop_token_ids must be inside the vocabulary", param="stop_token_ids"
            )
        if self.tokenizer is None and params.stop:
            raise InvalidRequestError("stop strings need a tokenizer", param="stop")

    def _fan_out(
        self,
        request_id: str,
        token_ids: list[int],
        params: SamplingParams,
        arrival_time: float | None,
    ) -> list[EngineCoreRequest]:
        """One engine-core request per sample; samples 1..n-1 share sample 0's prompt blocks."""
        if params.n == 1:
            ids = [request_id]
        else:
            ids = [sample_request_id(request_id, i) for i in range(params.n)]
        return [
            EngineCoreRequest(
                request_id=sample_id,
                prompt_token_ids=token_ids,
                sampling_params=params.for_sample(index) if params.n > 1 else params,
                eos_token_ids=self.model_config.eos_token_ids,
                leader_id=ids[0] if index > 0 else None,
                arrival_time=arrival_time,
            )
            for index, sample_id in enumerate(ids)
        ]


def sample_request_id(request_id: str, index: int) -> str:
    return f"{request_id}#{index}"


def _as_token_ids(value: Any) -> list[int]:
    if not isinstance(value, list | tuple) or not all(
        isinstance(t, int) and not isinstance(t, bool) for t in value
    ):
        raise InvalidRequestError(
            "a prompt must be a string or a list of token ids", param="prompt"
        )
    return list(value)
