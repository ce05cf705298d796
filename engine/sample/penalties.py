"""Logit changes that depend on a request's token history: min_tokens bans and penalties.

Every function returns a new tensor and leaves its input alone, so the caller can still take
raw logprobs from the logits it passed in.
"""

import torch

from fleetlm.engine.sample.metadata import SamplingMetadata, pad_token_ids, to_device


def apply_bans(logits: torch.Tensor, banned_token_ids: list[list[int]]) -> torch.Tensor:
    """Set `logits[row, id]` to -inf for every banned id of every row."""
    rows = [row for row, ids in enumerate(banned_token_ids) for _ in ids]
    if not rows:
        return logits
    cols = [i for ids in banned_token_ids for i in ids]
    index = to_device(torch.tensor([rows, cols], dtype=torch.int64), logits.device)
    return logits.index_put((index[0], index[1]), logits.new_full((), -torch.inf))


def apply_penalties(logits: torch.Tensor, metadata: SamplingMetadata) -> torch.Tensor:
    """Repetition penalty (prompt and output tokens), then presence and frequency penalties
    (output tokens only); each is skipped when no row uses it."""
    repetition = metadata.repetition_penalties
    presence, frequency = metadata.presence_penalties, metadata.frequency_penalties
    if repetition is None and presence is None and frequency is None:
        return logits
    vocab_size = logits.shape[1]
    output_ids = pad_token_ids(metadata.output_token_ids, vocab_size, logits.device)
    output_counts = token_counts(output_ids, vocab_size)
    if repetition is not None:
        assert metadata.prompt_token_ids is not None
        seen = token_mask(metadata.prompt_token_ids, vocab_size) | (output_counts > 0)
        logits = apply_repetition_penalty(logits, seen, repetition)
    if presence is not None or frequency is not None:
        logits = apply_presence_frequency_penalties(
            logits, output_counts, _or_zeros(presence, logits), _or_zeros(frequency, logits)
        )
    return logits


def token_counts(token_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[num_reqs, vocab_size] int64: how often each id occurs in each row of `token_ids`
    ([num_reqs, len]). Ids >= vocab_size (the padding) are not counted."""
    counts = torch.zeros(
        token_ids.shape[0], vocab_size + 1, dtype=torch.int64, device=token_ids.device
    )
    counts.scatter_add_(1, token_ids.clamp(max=vocab_size), torch.ones_like(token_ids))
    return counts[:, :vocab_size]


def token_mask(token_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[num_reqs, vocab_size] bool: which ids occur in each row of `token_ids`
    ([num_reqs, len]). Ids >= vocab_size (the padding) are ignored."""
    mask = torch.zeros(
        token_ids.shape[0], vocab_size + 1, dtype=torch.bool, device=token_ids.device
    )
    mask.scatter_(1, token_ids.clamp(max=vocab_size), True)
    return mask[:, :vocab_size]


def apply_repetition_penalty(
    logits: torch.Tensor, seen: torch.Tensor, penalties: torch.Tensor
) -> torch.Tensor:
    """CTRL / Hugging Face repetition penalty: a seen token's logit is divided by the penalty
    when positive and multiplied by it otherwise. `seen`: [num_reqs, vocab] bool."""
    penalty = torch.where(seen, penalties.unsqueeze(1), 1.0)
    return torch.where(logits > 0, logits / penalty, logits * penalty)


def apply_presence_frequency_penalties(
    logits: torch.Tensor,
    output_counts: torch.Tensor,
    presence_penalties: torch.Tensor,
    frequency_penalties: torch.Tensor,
) -> torch.Tensor:
    """OpenAI's formula: `logit -= frequency * count + presence * (count > 0)`."""
    frequency = frequency_penalties.unsqueeze(1) * output_counts
    presence = presence_penalties.unsqueeze(1) * (output_counts > 0)
    return logits - frequency - presence


def _or_zeros(penalties: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
    if penalties is not None:
        return penalties
    return torch.zeros(logits.shape[0], dtype=logits.dtype, device=logits.device)
