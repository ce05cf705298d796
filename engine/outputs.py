"""What the engine returns to its callers (torch-free)."""

from dataclasses import dataclass, field


@dataclass
class Logprob:
    """Log probability of one token at one position, and its rank (1 = most likely)."""

    logprob: float
    rank: int
    decoded_token: str | None = None


# One position: token id -> Logprob (the chosen token first, then the top-k).
PositionLogprobs = dict[int, Logprob]


@dataclass
class CompletionOutput:
    """One generated sample of a request."""

    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None = None
    logprobs: list[PositionLogprobs] | None = None
    finish_reason: str | None = None  # "stop" | "length" | "abort" | None while running
    stop_reason: str | int | None = None  # the stop string or stop token id that matched
    # Since the previous output of this request (for streaming). The text holds back what
    # could still become a stop string, so the deltas never show one.
    delta_text: str = ""
    num_delta_tokens: int = 0  # the last num_delta_tokens of token_ids (and logprobs) are new

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def delta_token_ids(self) -> list[int]:
        return self.token_ids[len(self.token_ids) - self.num_delta_tokens :]

    @property
    def delta_logprobs(self) -> list[PositionLogprobs]:
        if not self.logprobs:
            return []
        return self.logprobs[len(self.logprobs) - self.num_delta_tokens :]


@dataclass
class RequestOutput:
    """The state of one request: its prompt and its n samples so far."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    prompt_logprobs: list[PositionLogprobs | None] | None = None
    num_cached_tokens: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
