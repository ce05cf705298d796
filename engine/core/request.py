"""The engine core's view of one request (one sample): tokens, progress and status."""

import enum
import time

from fleetlm.engine.sampling_params import SamplingParams


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED_STOPPED = "stop"
    FINISHED_LENGTH_CAPPED = "length"
    FINISHED_ABORTED = "abort"

    @property
    def is_finished(self) -> bool:
        return self in _FINISHED

    @property
    def finish_reason(self) -> str | None:
        """The OpenAI finish reason: "stop", "length" or "abort"; None while unfinished."""
        return self.value if self in _FINISHED else None


# Checked for every request at every step: a set lookup, not a tuple scan of values.
_FINISHED = frozenset(
    (
        RequestStatus.FINISHED_STOPPED,
        RequestStatus.FINISHED_LENGTH_CAPPED,
        RequestStatus.FINISHED_ABORTED,
    )
)


class Request:
    """One sequence being generated.

    `num_computed_tokens` counts the tokens whose KV is in the cache (or scheduled to be
    written this step); it catches up with `num_tokens` (prompt + generated). There is no
    prefill or decode phase: only the gap between the two.

    `num_output_placeholders` counts tokens sampled by launched steps whose results have not
    reached the host yet: with async scheduling, the next step is scheduled (and its input
    token read on the device) before they arrive.
    """

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        sampling_params: SamplingParams,
        eos_token_ids: tuple[int, ...] = (),
        leader: "Request | None" = None,
        arrival_time: float | None = None,
    ) -> None:
        self.request_id = request_id
        self.prompt_token_ids = list(prompt_token_ids)
        self.sampling_params = sampling_params
        self.eos_token_ids = eos_token_ids
        # n > 1: sample 0 of the same prompt; this sample shares its prompt blocks.
        self.leader = leader
        self.arrival_time = time.monotonic() if arrival_time is None else arrival_time

        self.all_token_ids = list(prompt_token_ids)
        self.output_token_ids: list[int] = []
        self.num_computed_tokens = 0
        self.num_output_placeholders = 0
        self.status = RequestStatus.WAITING
        self.stop_reason: int | str | None = None
        self.num_cached_tokens = -1  # prefix-cache hit at first schedule; -1 until scheduled
        self.num_preemptions = 0
        self.block_hashes: list[bytes] = []  # hashes of the full blocks, filled on demand

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_tokens_with_placeholders(self) -> int:
        """Tokens including those still being sampled on the device: what a step may compute."""
        return len(self.all_token_ids) + self.num_output_placeholders

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished

    def append_output_token_id(self, token_id: int) -> None:
        self.output_token_ids.append(token_id)
        self.all_token_ids.append(token_id)

    def __repr__(self) -> str:
        return (
            f"Request({self.request_id!r}, status={self.status.name}, "
            f"computed={self.num_computed_tokens}/{self.num_tokens})"
        )
