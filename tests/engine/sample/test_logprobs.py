import pytest
import torch

from fleetlm.engine.sample.logprobs import compute_logprobs


def reference_ranks(logprobs: torch.Tensor, token_ids: torch.Tensor) -> list[int]:
    """1 + the number of tokens with a strictly greater logprob, one row at a time."""
    return [
        1 + sum(1 for value in row.tolist() if value > row[token].item())
        for row, token in zip(logprobs, token_ids.tolist(), strict=True)
    ]


@pytest.mark.parametrize("num_topk", [0, 1, 5])
@pytest.mark.parametrize("vocab_size", [7, 100])
def test_matches_log_softmax_reference(num_topk: int, vocab_size: int):
    generator = torch.Generator().manual_seed(vocab_size + num_topk)
    logits = torch.randn(6, vocab_size, generator=generator) * 4
    token_ids = torch.randint(vocab_size, (6,), generator=generator)
    out = compute_logprobs(logits, token_ids, num_topk)
    reference = torch.log_softmax(logits.double(), dim=-1).float()

    assert out.token_ids.shape == out.logprobs.shape == (6, num_topk + 1)
    assert out.token_ids.dtype == out.ranks.dtype == torch.int64
    assert out.logprobs.dtype == torch.float32
    torch.testing.assert_close(out.token_ids[:, 0], token_ids, rtol=0, atol=0)
    torch.testing.assert_close(
        out.logprobs[:, 0], reference.gather(1, token_ids[:, None])[:, 0], rtol=1e-5, atol=1e-5
    )
    expected_top = reference.topk(num_topk, dim=1)
    torch.testing.assert_close(out.logprobs[:, 1:], expected_top.values, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.token_ids[:, 1:], expected_top.indices, rtol=0, atol=0)
    assert out.ranks.tolist() == reference_ranks(reference, token_ids)


def test_num_topk_zero_returns_only_chosen_token():
    logits = torch.tensor([[0.0, 1.0, 2.0], [3.0, 2.0, 1.0]])
    out = compute_logprobs(logits, torch.tensor([1, 2]), 0)
    assert out.token_ids.tolist() == [[1], [2]]
    assert out.logprobs.shape == (2, 1)
    assert out.ranks.tolist() == [2, 3]


def test_ties_share_the_best_rank():
    """Policy: rank = 1 + number of strictly more likely tokens, so ties share a rank."""
    logits = torch.tensor([[1.0, 2.0, 2.0, 0.0]] * 4)
    out = compute_logprobs(logits, torch.tensor([1, 2, 0, 3]), 2)
    assert out.ranks.tolist() == [1, 1, 3, 4]


def test_sums_to_one():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    out = compute_logprobs(logits, torch.zeros(3, dtype=torch.int64), 50)
    torch.testing.assert_close(
        out.logprobs[:, 1:].exp().sum(dim=1), torch.ones(3), rtol=1e-5, atol=1e-5
    )
