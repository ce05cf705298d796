"""The data handed from the scheduler to the model runner and back: one engine step.

Plain dataclasses of lists and ints (no tensors), so they can cross a process boundary.
"""

from dataclasses import dataclass, field

from fleetlm.engine.sampling_params import SamplingParams


@dataclass
class NewRequestData:
    """A request the runner has not seen yet, or one resumed after preemption."""

    req_id: str
    token_ids: list[int]  # prompt + tokens generated so far
    num_prompt_tokens: int
    sampling_params: SamplingParams
    block_ids: list[int]
    num_computed_tokens: int  # tokens already in the cache (prefix hit or shared blocks)


@dataclass
class CachedRequestData:
    """A request the runner already holds: what changed since its last step."""

    req_id: str
    new_block_ids: list[int]
    num_computed_tokens: int


@dataclass
class SchedulerOutput:
    scheduled_new_reqs: list[NewRequestData]
    scheduled_cached_reqs: list[CachedRequestData]
    # req_id -> number of tokens to compute this step (a prompt chunk, or 1 when decoding)
    num_scheduled_tokens: dict[str, int]
    total_num_scheduled_tokens: int
    # requests finished or aborted since the last step: the runner drops their state
    finished_req_ids: set[str] = field(default_factory=set)

    @property
    def is_empty(self) -> bool:
        return self.total_num_scheduled_tokens == 0


@dataclass
class TokenLogprobs:
    """Logprobs of consecutive positions, as lists."""

    token_ids: list[list[int]]  # [num_positions][1 + k]: the chosen token, then the top-k
    logprobs: list[list[float]]  # [num_positions][1 + k]
    ranks: list[int]  # [num_positions]: rank of the chosen token (1 = most likely)


@dataclass
class ModelRunnerOutput:
    req_ids: list[str]  # [num_reqs], batch order
    sampled_token_ids: list[list[int]]  # [num_reqs]; [] for a request in the middle of its prompt
    logprobs: dict[str, TokenLogprobs] = field(default_factory=dict)  # req_id -> sampled token's
    # req_id -> (index of the first prompt token covered, logprobs of this chunk's prompt tokens)
    prompt_logprobs: dict[str, tuple[int, TokenLogprobs]] = field(default_factory=dict)
