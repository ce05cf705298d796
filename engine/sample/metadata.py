"""What the sampler needs to know about the rows it samples this step."""

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch

from fleetlm.engine.sampling_params import SamplingParams


@dataclass
class SamplingMetadata:
    """One row per request being sampled this step (the rows of the logits).

    Optional tensors are None when no row uses the feature, so the sampler can skip it;
    rows that do not use it hold the neutral value.
    """

    temperature: torch.Tensor  # [num_reqs] float32, 0 for greedy rows
    all_greedy: bool
    all_random: bool
    top_k: torch.Tensor | None  # [num_reqs] int64, 0 = disabled
    top_p: torch.Tensor | None  # [num_reqs] float32, 1.0 = disabled
    min_p: torch.Tensor | None  # [num_reqs] float32, 0.0 = disabled
    generators: dict[int, torch.Generator]  # row -> generator, for random rows with a seed
    default_generator: torch.Generator | None  # for the other random rows (None: torch's global)
    presence_penalties: torch.Tensor | None  # [num_reqs] float32, 0.0 = none
    frequency_penalties: torch.Tensor | None  # [num_reqs] float32, 0.0 = none
    repetition_penalties: torch.Tensor | None  # [num_reqs] float32, 1.0 = none
    # [num_reqs, max_prompt_len] int64, padded with vocab_size; None without repetition penalties
    prompt_token_ids: torch.Tensor | None
    output_token_ids: list[list[int]]  # per row, the tokens generated so far
    banned_token_ids: list[list[int]]  # per row, ids that must not be sampled now (min_tokens)
    max_num_logprobs: int | None  # top-k logprobs wanted (max over rows); None = no row wants any


def build_sampling_metadata(
    params: Sequence[SamplingParams],
    prompt_token_ids: Sequence[Sequence[int]],
    output_token_ids: Sequence[Sequence[int]],
    generators: dict[int, torch.Generator],
    eos_token_ids: Collection[int],
    vocab_size: int,
    device: torch.device | str,
    default_generator: torch.Generator | None = None,
) -> SamplingMetadata:
    """Metadata for rows `0..len(params)-1`; row i is the request with `params[i]`.

    `generators` maps a row to its request's generator (created and seeded by the caller, on
    the logits' device). Generators of greedy rows are dropped: a greedy row draws nothing, so
    a seeded request's stream does not depend on whether it shared a step with greedy rows.
    `vocab_size` must be the width of the logits.
    """
    is_greedy = [p.is_greedy for p in params]
    # Greedy rows take the neutral value of every random-only knob.
    random_rows = [None if greedy else p for p, greedy in zip(params, is_greedy, strict=True)]
    return SamplingMetadata(
        temperature=_tensor(
            [0.0 if p is None else p.temperature for p in random_rows], torch.float32, device
        ),
        all_greedy=all(is_greedy),
        all_random=not any(is_greedy),
        top_k=_optional([_top_k(p, vocab_size) for p in random_rows], 0, torch.int64, device),
        top_p=_optional(
            [1.0 if p is None else p.top_p for p in random_rows], 1.0, torch.float32, device
        ),
        min_p=_optional(
            [0.0 if p is None else p.min_p for p in random_rows], 0.0, torch.float32, device
        ),
        generators={row: g for row, g in generators.items() if not is_greedy[row]},
        default_generator=default_generator,
        presence_penalties=_optional(
            [p.presence_penalty for p in params], 0.0, torch.float32, device
        ),
        frequency_penalties=_optional(
            [p.frequency_penalty for p in params], 0.0, torch.float32, device
        ),
        repetition_penalties=_optional(
            [p.repetition_penalty for p in params], 1.0, torch.float32, device
        ),
        prompt_token_ids=(
            pad_token_ids(prompt_token_ids, vocab_size, device)
            if any(p.repetition_penalty != 1.0 for p in params)
            else None
        ),
        output_token_ids=[list(ids) for ids in output_token_ids],
        banned_token_ids=[
            banned_token_ids(p, len(out), eos_token_ids, vocab_size)
            for p, out in zip(params, output_token_ids, strict=True)
        ],
        max_num_logprobs=max((p.logprobs for p in params if p.logprobs is not None), default=None),
    )


def banned_token_ids(
    params: SamplingParams,
    num_output_tokens: int,
    eos_token_ids: Collection[int],
    vocab_size: int,
) -> list[int]:
    """Ids a request must not produce next: its stop ids (and EOS unless `ignore_eos`) while
    it has fewer than `min_tokens` output tokens. Ids outside the vocabulary are dropped."""
    if num_output_tokens >= params.min_tokens:
        return []
    stop_ids = set(params.stop_token_ids)
    if not params.ignore_eos:
        stop_ids.update(eos_token_ids)
    return sorted(i for i in stop_ids if 0 <= i < vocab_size)


def pad_token_ids(
    rows: Sequence[Sequence[int]], pad_id: int, device: torch.device | str
) -> torch.Tensor:
    """[len(rows), max_len] int64 tensor of `rows`, right-padded with `pad_id`."""
    max_len = max((len(row) for row in rows), default=0)
    padded = [list(row) + [pad_id] * (max_len - len(row)) for row in rows]
    return to_device(torch.tensor(padded, dtype=torch.int64), device).reshape(len(rows), max_len)


def _top_k(params: SamplingParams | None, vocab_size: int) -> int:
    """A random row's top-k; 0 when disabled (greedy row, -1/0, or the whole vocabulary)."""
    if params is None or params.top_k <= 0 or params.top_k >= vocab_size:
        return 0
    return params.top_k


def _optional(
    values: list[float] | list[int], neutral: float, dtype: torch.dtype, device: torch.device | str
) -> torch.Tensor | None:
    """A tensor of `values`, or None when every row holds the neutral value."""
    if all(v == neutral for v in values):
        return None
    return _tensor(values, dtype, device)


def _tensor(
    values: list[float] | list[int], dtype: torch.dtype, device: torch.device | str
) -> torch.Tensor:
    return to_device(torch.tensor(values, dtype=dtype), device)


def to_device(host: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A host tensor on `device`. To CUDA through pinned memory without blocking: a copy from
    pageable memory would wait for the work already queued (the step's forward pass)."""
    if torch.device(device).type != "cuda":
        return host
    return host.pin_memory().to(device, non_blocking=True)
