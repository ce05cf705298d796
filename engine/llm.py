"""`LLM`: the offline Python API (`generate`, `chat`), as in vLLM."""

from collections.abc import Sequence
from itertools import count
from typing import Any

from tqdm.auto import tqdm

from fleetlm.engine.config import EngineArgs
from fleetlm.engine.errors import InvalidRequestError
from fleetlm.engine.llm_engine import LLMEngine
from fleetlm.engine.outputs import RequestOutput
from fleetlm.engine.processor import PromptInput
from fleetlm.engine.sampling_params import SamplingParams
from fleetlm.engine.tokenizer import ChatMessage, render_chat

Conversation = list[ChatMessage]


class LLM:
    """Generate text offline: `LLM().generate(["Hello"], SamplingParams(max_tokens=32))`.

    With no `model`, it serves the bundled SmolLM2-135M-Instruct. Keyword arguments are the
    engine options of `EngineArgs` (max_model_len, max_num_seqs, enable_prefix_caching, ...).
    """

    def __init__(self, model: str | None = None, **engine_kwargs: Any) -> None:
        self.engine = LLMEngine.from_engine_args(EngineArgs(model=model, **engine_kwargs))
        self._request_counter = count()

    def get_tokenizer(self):
        return self.engine.tokenizer

    def generate(
        self,
        prompts: PromptInput | Sequence[PromptInput],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """One output per prompt, in order. All prompts are validated before any runs."""
        prompt_list = _as_prompt_list(prompts)
        params_list = _as_params_list(sampling_params, len(prompt_list))
        processed = [
            self.engine.process_request(str(next(self._request_counter)), prompt, params)
            for prompt, params in zip(prompt_list, params_list, strict=True)
        ]
        for request in processed:
            self.engine.add_processed_request(request)
        return self._run_to_completion([r.request_id for r in processed], use_tqdm)

    def chat(
        self,
        messages: Conversation | Sequence[Conversation],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
        chat_template: str | None = None,
        add_generation_prompt: bool = True,
    ) -> list[RequestOutput]:
        """Chat with the model's own chat template; one output per conversation."""
        tokenizer = self.engine.tokenizer
        if tokenizer is None:
            raise InvalidRequestError("chat needs a tokenizer", param="messages")
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        prompts = [
            {"prompt_token_ids": tokenizer.encode(text, add_special_tokens=False), "prompt": text}
            for text in (
                render_chat(tokenizer, c, chat_template, add_generation_prompt)
                for c in conversations
            )
        ]
        return self.generate(prompts, sampling_params, use_tqdm)

    def _run_to_completion(self, request_ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        finished: dict[str, RequestOutput] = {}
        progress = tqdm(total=len(request_ids), desc="Processed prompts", disable=not use_tqdm)
        num_output_tokens = 0
        try:
            while self.engine.has_unfinished_requests():
                for output in self.engine.step():
                    if output.finished:
                        finished[output.request_id] = output
                        num_output_tokens += sum(len(o.token_ids) for o in output.outputs)
                        progress.update(1)
                        progress.set_postfix(
                            output_toks_per_s=round(
                                num_output_tokens / max(progress.format_dict["elapsed"], 1e-6), 1
                            )
                        )
        except BaseException:
            self.engine.abort_request([r for r in request_ids if r not in finished])
            raise
        finally:
            progress.close()
        return [finished[r] for r in request_ids]


def _as_prompt_list(prompts: PromptInput | Sequence[PromptInput]) -> list[PromptInput]:
    if isinstance(prompts, str | dict):
        return [prompts]
    prompts = list(prompts)
    if prompts and all(isinstance(p, int) for p in prompts):
        return [prompts]  # one prompt given as token ids
    return prompts


def _as_params_list(
    params: SamplingParams | Sequence[SamplingParams] | None, num_prompts: int
) -> list[SamplingParams]:
    if params is None:
        return [SamplingParams() for _ in range(num_prompts)]
    if isinstance(params, SamplingParams):
        return [params] * num_prompts
    params = list(params)
    if len(params) != num_prompts:
        raise InvalidRequestError(
            f"got {len(params)} sampling params for {num_prompts} prompts", param="sampling_params"
        )
    return params
