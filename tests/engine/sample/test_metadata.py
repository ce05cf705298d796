import torch

from fleetlm.engine.sample.metadata import (
    banned_token_ids,
    build_sampling_metadata,
    pad_token_ids,
)
from fleetlm.engine.sampling_params import SamplingParams

VOCAB = 32
EOS = 2


def build(params, prompts=None, outputs=None, generators=None, eos=(EOS,)):
    return build_sampling_metadata(
        params,
        prompts if prompts is not None else [[1, 3]] * len(params),
        outputs if outputs is not None else [[]] * len(params),
        generators or {},
        eos,
        VOCAB,
        "cpu",
    )


def test_defaults_leave_every_optional_field_none():
    metadata = build([SamplingParams(), SamplingParams()])
    assert metadata.all_random and not metadata.all_greedy
    for name in (
        "top_k",
        "top_p",
        "min_p",
        "presence_penalties",
        "frequency_penalties",
        "repetition_penalties",
        "prompt_token_ids",
        "max_num_logprobs",
    ):
        assert getattr(metadata, name) is None, name
    assert metadata.banned_token_ids == [[], []]
    assert metadata.generators == {}


def test_greedy_rows_get_zero_temperature_and_neutral_filters():
    params = [
        SamplingParams(temperature=0.0, top_k=5, top_p=0.5, min_p=0.3),
        SamplingParams(temperature=0.7, top_k=4, top_p=0.9, min_p=0.1),
    ]
    metadata = build(params)
    assert not metadata.all_greedy and not metadata.all_random
    torch.testing.assert_close(metadata.temperature, torch.tensor([0.0, 0.7]), rtol=0, atol=0)
    assert metadata.top_k is not None and metadata.top_k.tolist() == [0, 4]
    torch.testing.assert_close(metadata.top_p, torch.tensor([1.0, 0.9]), rtol=0, atol=0)
    torch.testing.assert_close(metadata.min_p, torch.tensor([0.0, 0.1]), rtol=0, atol=0)


def test_all_greedy_needs_no_filters():
    metadata = build([SamplingParams(temperature=0.0, top_k=3)] * 2)
    assert metadata.all_greedy and not metadata.all_random
    assert metadata.top_k is None


def test_top_k_of_whole_vocab_or_minus_one_is_disabled():
    metadata = build([SamplingParams(top_k=-1), SamplingParams(top_k=VOCAB)])
    assert metadata.top_k is None


def test_generators_of_greedy_rows_are_dropped():
    generators = {0: torch.Generator().manual_seed(1), 1: torch.Generator().manual_seed(2)}
    params = [SamplingParams(temperature=0.0, seed=1), SamplingParams(seed=2)]
    metadata = build(params, generators=generators)
    assert metadata.generators == {1: generators[1]}


def test_penalties_are_neutral_on_rows_without_them():
    params = [SamplingParams(repetition_penalty=1.3), SamplingParams(presence_penalty=0.5)]
    metadata = build(params, prompts=[[4, 5, 6], [7]])
    torch.testing.assert_close(metadata.repetition_penalties, torch.tensor([1.3, 1.0]))
    torch.testing.assert_close(metadata.presence_penalties, torch.tensor([0.0, 0.5]))
    assert metadata.frequency_penalties is None
    assert metadata.prompt_token_ids is not None
    assert metadata.prompt_token_ids.tolist() == [[4, 5, 6], [7, VOCAB, VOCAB]]


def test_prompt_ids_only_built_for_repetition_penalty():
    metadata = build([SamplingParams(frequency_penalty=1.0)])
    assert metadata.prompt_token_ids is None


def test_max_num_logprobs_is_max_over_rows():
    params = [SamplingParams(logprobs=2), SamplingParams(), SamplingParams(logprobs=5)]
    assert build(params).max_num_logprobs == 5
    assert build([SamplingParams(logprobs=0)]).max_num_logprobs == 0


def test_min_tokens_bans_eos_and_stop_ids_until_reached():
    params = SamplingParams(min_tokens=3, stop_token_ids=[7, 5, VOCAB + 4])
    assert banned_token_ids(params, 0, [EOS], VOCAB) == [EOS, 5, 7]
    assert banned_token_ids(params, 2, [EOS, 9], VOCAB) == [EOS, 5, 7, 9]
    assert banned_token_ids(params, 3, [EOS], VOCAB) == []


def test_ignore_eos_keeps_eos_allowed_but_bans_stop_ids():
    params = SamplingParams(min_tokens=2, ignore_eos=True, stop_token_ids=[5])
    assert banned_token_ids(params, 0, [EOS], VOCAB) == [5]


def test_banned_ids_per_row_follow_output_lengths():
    params = [SamplingParams(min_tokens=2), SamplingParams(min_tokens=2), SamplingParams()]
    metadata = build(params, outputs=[[1], [1, 4], []])
    assert metadata.banned_token_ids == [[EOS], [], []]


def test_pad_token_ids_handles_empty_rows():
    assert pad_token_ids([[], []], VOCAB, "cpu").shape == (2, 0)
    assert pad_token_ids([], VOCAB, "cpu").shape == (0, 0)
    assert pad_token_ids([[1], []], 9, "cpu").tolist() == [[1], [9]]
