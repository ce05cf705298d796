"""Log probabilities of chosen tokens, their ranks and the top-k alternatives."""

from dataclasses import dataclass

import torch


@dataclass
class LogprobsTensors:
    """Per row: the chosen token first, then the `k` most likely tokens."""

    token_ids: torch.Tensor  # [num_rows, k + 1] int64
    logprobs: torch.Tensor  # [num_rows, k + 1] float32
    ranks: torch.Tensor  # [num_rows] int64, rank of the chosen token (1 = most likely)


def compute_logprobs(
    logits: torch.Tensor, token_ids: torch.Tensor, num_topk: int
) -> LogprobsTensors:
    """Logprobs of `token_ids` ([num_rows]) under `logits` ([num_rows, vocab]), plus the
    `num_topk` most likely tokens of each row. Used for sampled and prompt tokens alike."""
    return gather_logprobs(torch.log_softmax(logits.float(), dim=-1), token_ids, num_topk)


def gather_logprobs(
    logprobs: torch.Tensor, token_ids: torch.Tensor, num_topk: int
) -> LogprobsTensors:
    """Like `compute_logprobs`, from logprobs already normalised.

    Rank = 1 + the number of tokens with a strictly greater logprob, so tokens tied with
    the chosen one do not push it down (vLLM counts them, giving the worst rank of a tie).
    """
    token_ids = token_ids.to(torch.int64)
    chosen = logprobs.gather(1, token_ids.unsqueeze(1))
    ranks = (logprobs > chosen).sum(dim=1) + 1
    if num_topk == 0:
        return LogprobsTensors(token_ids.unsqueeze(1), chosen, ranks)
    top_logprobs, top_ids = logprobs.topk(num_topk, dim=1)
    return LogprobsTensors(
        token_ids=torch.cat([token_ids.unsqueeze(1), top_ids], dim=1),
        logprobs=torch.cat([chosen, top_logprobs], dim=1),
        ranks=ranks,
    )
