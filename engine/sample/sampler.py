"""Turns one step's logits into one token per row: bans, penalties, temperature, top-k,
top-p, min-p, then greedy or random choice; plus the raw logprobs when asked."""

from dataclasses import dataclass

import torch

from fleetlm.engine.sample.logprobs import LogprobsTensors, gather_logprobs
from fleetlm.engine.sample.metadata import SamplingMetadata
from fleetlm.engine.sample.penalties import apply_bans, apply_penalties
from fleetlm.engine.sampling_params import GREEDY_TEMPERATURE_EPS


@dataclass
class SamplerOutput:
    sampled_token_ids: torch.Tensor  # [num_reqs] int64
    logprobs: LogprobsTensors | None  # of the raw logits; None when no row asked for logprobs


class Sampler:
    """Stateless; the state that makes seeded rows reproducible lives in the generators the
    caller puts in the metadata. The logits passed in are never modified."""

    def __call__(self, logits: torch.Tensor, metadata: SamplingMetadata) -> SamplerOutput:
        logits = logits.float()
        num_logprobs = metadata.max_num_logprobs
        # Logprobs are of the model's own distribution, before anything below changes it.
        raw_logprobs = None if num_logprobs is None else torch.log_softmax(logits, dim=-1)
        logits = apply_penalties(apply_bans(logits, metadata.banned_token_ids), metadata)
        sampled = sample(logits, metadata)
        if raw_logprobs is None or num_logprobs is None:
            return SamplerOutput(sampled, None)
        return SamplerOutput(sampled, gather_logprobs(raw_logprobs, sampled, num_logprobs))


def sample(logits: torch.Tensor, metadata: SamplingMetadata) -> torch.Tensor:
    """[num_reqs] int64: argmax for greedy rows, a random draw for the others."""
    if metadata.all_greedy:
        return logits.argmax(dim=-1)
    probs = filtered_probs(apply_temperature(logits, metadata.temperature), metadata)
    random = random_sample(probs, metadata.generators, metadata.default_generator)
    if metadata.all_random:
        return random
    is_greedy = metadata.temperature < GREEDY_TEMPERATURE_EPS
    return torch.where(is_greedy, logits.argmax(dim=-1), random)


def apply_temperature(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """Divide each row by its temperature; greedy rows (0) are left as they are, since their
    random draw is thrown away."""
    is_greedy = temperature < GREEDY_TEMPERATURE_EPS
    return logits / torch.where(is_greedy, 1.0, temperature).unsqueeze(1)


def filtered_probs(logits: torch.Tensor, metadata: SamplingMetadata) -> torch.Tensor:
    """Probabilities after top-k, top-p and min-p, in that order. Not renormalised after
    min-p: `random_sample` does not need it."""
    probs = apply_top_k_top_p(logits, metadata.top_k, metadata.top_p).softmax(dim=-1)
    if metadata.min_p is not None:
        probs = apply_min_p(probs, metadata.min_p)
    return probs


def apply_top_k_top_p(
    logits: torch.Tensor, top_k: torch.Tensor | None, top_p: torch.Tensor | None
) -> torch.Tensor:
    """Set the logits outside each row's top-k, then outside its top-p nucleus (of the
    distribution renormalised after top-k), to -inf. k = 0 and p = 1 keep everything.

    Tokens tied with the k-th largest logit are all kept. The nucleus is the smallest set of
    most likely tokens whose probability reaches p, so it always holds at least one token.
    """
    if top_p is None:
        return logits if top_k is None else apply_top_k(logits, top_k)
    vocab_size = logits.shape[1]
    sorted_logits, order = logits.sort(dim=-1)  # ascending
    if top_k is not None:
        k = torch.where(top_k == 0, vocab_size, top_k)
        kth_largest = sorted_logits.gather(1, (vocab_size - k).unsqueeze(1))
        sorted_logits = sorted_logits.masked_fill(sorted_logits < kth_largest, -torch.inf)
    # A token is dropped when it and all less likely tokens hold at most 1 - p; the most
    # likely token is always kept.
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    drop = cumulative <= 1 - top_p.unsqueeze(1)
    drop[:, -1] = False
    sorted_logits = sorted_logits.masked_fill(drop, -torch.inf)
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)


def apply_top_k(logits: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    """Top-k alone: `torch.topk` up to the largest k instead of sorting the whole vocabulary."""
    is_disabled = top_k == 0
    k = top_k.masked_fill(is_disabled, 1)
    top_values = logits.topk(int(k.max()), dim=1).values
    kth_largest = top_values.gather(1, (k - 1).unsqueeze(1))
    kth_largest = kth_largest.masked_fill(is_disabled.unsqueeze(1), -torch.inf)
    return logits.masked_fill(logits < kth_largest, -torch.inf)


def apply_min_p(probs: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Zero the tokens less likely than `min_p` times the row's most likely token."""
    threshold = min_p.unsqueeze(1) * probs.amax(dim=1, keepdim=True)
    return probs.masked_fill(probs < threshold, 0.0)


def random_sample(
    probs: torch.Tensor,
    generators: dict[int, torch.Generator],
    default_generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token per row, drawn from `probs` (which need not sum to 1).

    NOTE: the exponential race. With q_i ~ Exponential(1) independent, argmax_i p_i / q_i is
    distributed as p / sum(p), so a whole batch samples with one division and one argmax
    instead of a per-row `torch.multinomial`. A seeded row draws its q from its own generator,
    a vocab-sized draw each step, so its tokens depend on nothing but its seed and its logits;
    the other rows share one draw from `default_generator`.
    """
    q = torch.empty_like(probs)
    if len(generators) < probs.shape[0]:
        exponential_(q, default_generator)
    for row, generator in generators.items():
        exponential_(q[row], generator)
    # q == 0 would turn a zero probability into 0 / 0 = nan, which argmax picks.
    q = q.clamp_min(torch.finfo(q.dtype).tiny)
    return probs.div(q).argmax(dim=-1)


def exponential_(q: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill `q` with Exponential(1) draws as -log(U), U ~ Uniform[0, 1): on CPU several times
    faster than `Tensor.exponential_` (U = 0 gives q = inf, i.e. that token is never chosen)."""
    return q.uniform_(generator=generator).log_().neg_()
