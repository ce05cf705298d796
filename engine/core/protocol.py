"""Messages between the engine front end (tokenizing, detokenizing) and the engine core.

Torch-free plain dataclasses; the HTTP server will carry them over a local socket.
"""

from dataclasses import dataclass

from fleetlm.engine.core.scheduler_output import TokenLogprobs
from fleetlm.engine.sampling_params import SamplingParams


@dataclass
class EngineCoreRequest:
    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams  # n == 1: the front end fans n > 1 out into samples
    eos_token_ids: tuple[int, ...]
    leader_id: str | None = None  # sample 0 of the same prompt, whose prompt blocks to share
    arrival_time: float | None = None


@dataclass
class EngineCoreOutput:
    request_id: str
    new_token_ids: list[int]
    new_logprobs: TokenLogprobs | None = None
    # (index of the first prompt token covered, logprobs of those prompt tokens)
    new_prompt_logprobs: tuple[int, TokenLogprobs] | None = None
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    stop_reason: int | str | None = None
    num_cached_tokens: int = 0

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class EngineCoreStats:
    num_running: int
    num_waiting: int
    kv_cache_usage: float  # fraction of blocks held by requests
    num_blocks: int
    num_free_blocks: int
    prefix_cache_queries: int  # tokens looked up
    prefix_cache_hits: int  # tokens found
    num_preemptions: int
