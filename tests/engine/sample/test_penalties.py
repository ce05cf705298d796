import pytest
import torch
from transformers import RepetitionPenaltyLogitsProcessor

from fleetlm.engine.sample.metadata import build_sampling_metadata
from fleetlm.engine.sample.penalties import apply_bans, apply_penalties, token_counts
from fleetlm.engine.sampling_params import SamplingParams

VOCAB = 40


def build(params, prompts, outputs):
    return build_sampling_metadata(params, prompts, outputs, {}, [0], VOCAB, "cpu")


def random_logits(num_rows: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(num_rows, VOCAB, generator=torch.Generator().manual_seed(seed)) * 3


PROMPTS = [[1, 2, 3, 3], [5], [], [7, 8, 9, 10, 11, 12]]
OUTPUTS = [[4, 4, 1], [], [6, 6, 6, 7], [12, 13]]


@pytest.mark.parametrize("penalty", [0.5, 1.0, 1.2, 2.0])
def test_repetition_penalty_matches_transformers(penalty: float):
    params = [SamplingParams(repetition_penalty=penalty)] * len(PROMPTS)
    logits = random_logits(len(PROMPTS))
    got = apply_penalties(logits, build(params, PROMPTS, OUTPUTS))
    processor = RepetitionPenaltyLogitsProcessor(penalty=penalty)
    for row, (prompt, output) in enumerate(zip(PROMPTS, OUTPUTS, strict=True)):
        ids = torch.tensor([prompt + output], dtype=torch.int64).reshape(1, -1)
        expected = processor(ids, logits[row : row + 1].clone())
        torch.testing.assert_close(got[row : row + 1], expected, rtol=1e-6, atol=1e-6)


def test_presence_and_frequency_penalties_match_hand_reference():
    presence, frequency = [0.5, -1.0, 0.0, 2.0], [0.25, 0.0, 1.5, -0.5]
    params = [
        SamplingParams(presence_penalty=p, frequency_penalty=f)
        for p, f in zip(presence, frequency, strict=True)
    ]
    logits = random_logits(len(params))
    got = apply_penalties(logits, build(params, PROMPTS, OUTPUTS))
    expected = logits.clone()
    for row, output in enumerate(OUTPUTS):
        for token in set(output):  # prompt tokens are not penalised
            count = output.count(token)
            expected[row, token] -= frequency[row] * count + presence[row]
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_repetition_then_presence_frequency_order():
    params = [SamplingParams(repetition_penalty=2.0, presence_penalty=1.0, frequency_penalty=0.5)]
    logits = torch.zeros(1, VOCAB)
    logits[0, 3], logits[0, 4], logits[0, 5] = 4.0, -4.0, 1.0
    got = apply_penalties(logits, build(params, [[3]], [[4, 4, 5]]))
    torch.testing.assert_close(got[0, 3], torch.tensor(2.0))  # prompt: repetition only
    torch.testing.assert_close(got[0, 4], torch.tensor(-8.0 - 1.0 - 0.5 * 2))
    torch.testing.assert_close(got[0, 5], torch.tensor(0.5 - 1.0 - 0.5))
    assert got[0, 6] == 0.0


def test_rows_without_penalties_are_unchanged():
    params = [
        SamplingParams(repetition_penalty=1.5),
        SamplingParams(),
        SamplingParams(frequency_penalty=1.0),
        SamplingParams(),
    ]
    logits = random_logits(len(params))
    got = apply_penalties(logits, build(params, PROMPTS, OUTPUTS))
    torch.testing.assert_close(got[[1, 3]], logits[[1, 3]], rtol=0, atol=0)
    assert not torch.equal(got[0], logits[0]) and not torch.equal(got[2], logits[2])


def test_no_penalties_returns_logits_untouched():
    logits = random_logits(2)
    metadata = build([SamplingParams()] * 2, PROMPTS[:2], OUTPUTS[:2])
    assert apply_penalties(logits, metadata) is logits


def test_penalties_do_not_modify_input():
    logits = random_logits(len(PROMPTS))
    before = logits.clone()
    params = [SamplingParams(repetition_penalty=1.5, presence_penalty=1.0)] * len(PROMPTS)
    apply_penalties(logits, build(params, PROMPTS, OUTPUTS))
    torch.testing.assert_close(logits, before, rtol=0, atol=0)


def test_token_counts_ignore_padding():
    ids = torch.tensor([[1, 1, 3, VOCAB, VOCAB], [VOCAB, VOCAB, VOCAB, VOCAB, VOCAB]])
    counts = token_counts(ids, VOCAB)
    assert counts.shape == (2, VOCAB)
    assert counts[0, 1] == 2 and counts[0, 3] == 1 and counts[0].sum() == 3
    assert counts[1].sum() == 0


def test_all_empty_outputs_with_presence_penalty():
    params = [SamplingParams(presence_penalty=1.0)] * 2
    logits = random_logits(2)
    got = apply_penalties(logits, build(params, [[1], [2]], [[], []]))
    torch.testing.assert_close(got, logits, rtol=0, atol=0)


def test_apply_bans_sets_minus_inf_only_on_banned():
    logits = random_logits(3)
    got = apply_bans(logits, [[0, 5], [], [7]])
    expected = logits.clone()
    expected[0, [0, 5]] = -torch.inf
    expected[2, 7] = -torch.inf
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert apply_bans(logits, [[], [], []]) is logits
