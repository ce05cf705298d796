import pytest
import torch

from fleetlm.engine.sample.metadata import SamplingMetadata, build_sampling_metadata
from fleetlm.engine.sample.sampler import (
    Sampler,
    apply_temperature,
    filtered_probs,
    random_sample,
)
from fleetlm.engine.sampling_params import SamplingParams

VOCAB = 20
EOS = 0


@pytest.fixture(autouse=True)
def _seed_default_generator():
    torch.manual_seed(0)


def build(
    params: list[SamplingParams],
    outputs: list[list[int]] | None = None,
    generators: dict[int, torch.Generator] | None = None,
    vocab_size: int = VOCAB,
) -> SamplingMetadata:
    return build_sampling_metadata(
        params,
        [[1, 2, 3]] * len(params),
        outputs if outputs is not None else [[]] * len(params),
        generators or {},
        [EOS],
        vocab_size,
        "cpu",
    )


def random_logits(num_rows: int, vocab_size: int = VOCAB, seed: int = 0) -> torch.Tensor:
    return torch.randn(num_rows, vocab_size, generator=torch.Generator().manual_seed(seed)) * 2


def empirical(tokens: torch.Tensor, vocab_size: int = VOCAB) -> torch.Tensor:
    return torch.bincount(tokens, minlength=vocab_size).double() / tokens.numel()


def total_variation(p: torch.Tensor, q: torch.Tensor) -> float:
    return 0.5 * (p.double() - q.double()).abs().sum().item()


def reference_probs(row: torch.Tensor, top_k: int, top_p: float, min_p: float) -> torch.Tensor:
    """The distribution after top-k, top-p and min-p, one row, in float64 and plain Python."""
    values = row.double().tolist()
    order = sorted(range(len(values)), key=lambda i: -values[i])
    kept = set(order)
    if top_k > 0:
        kept = {i for i in kept if values[i] >= values[order[top_k - 1]]}
    probs = _renormalised(values, kept)
    if top_p < 1.0:
        nucleus, cumulative = set(), 0.0
        for i in (i for i in order if i in kept):
            if cumulative < top_p:
                nucleus.add(i)
            cumulative += probs[i].item()
        kept = nucleus
        probs = _renormalised(values, kept)
    if min_p > 0.0:
        kept = {i for i in kept if probs[i] >= min_p * probs.max()}
        probs = _renormalised(values, kept)
    return probs


def _renormalised(values: list[float], kept: set[int]) -> torch.Tensor:
    logits = torch.tensor(values, dtype=torch.float64)
    mask = torch.tensor([i in kept for i in range(len(values))])
    return torch.softmax(logits.masked_fill(~mask, -torch.inf), dim=0)


# ---- greedy ----------------------------------------------------------------------------


@pytest.mark.parametrize("num_rows", [1, 7])
def test_all_greedy_is_argmax(num_rows: int):
    logits = random_logits(num_rows, vocab_size=1000)
    metadata = build([SamplingParams(temperature=0.0)] * num_rows, vocab_size=1000)
    out = Sampler()(logits, metadata)
    assert out.sampled_token_ids.dtype == torch.int64
    torch.testing.assert_close(out.sampled_token_ids, logits.argmax(dim=-1), rtol=0, atol=0)
    assert out.logprobs is None


def test_greedy_ties_take_lowest_index():
    logits = torch.tensor([[0.0, 3.0, 1.0, 3.0], [2.0, 2.0, 2.0, 2.0]])
    out = Sampler()(logits, build([SamplingParams(temperature=0.0)] * 2, vocab_size=4))
    assert out.sampled_token_ids.tolist() == [1, 0]


def test_mixed_batch_greedy_rows_are_argmax():
    logits = random_logits(8, vocab_size=500)
    params = [
        SamplingParams(temperature=0.0 if row % 2 == 0 else 5.0, top_p=0.99) for row in range(8)
    ]
    metadata = build(params, vocab_size=500)
    assert not metadata.all_greedy and not metadata.all_random
    sampled = Sampler()(logits, metadata).sampled_token_ids
    torch.testing.assert_close(sampled[::2], logits[::2].argmax(dim=-1), rtol=0, atol=0)
    # At temperature 5 over 500 tokens the random rows almost surely miss the argmax.
    assert not torch.equal(sampled[1::2], logits[1::2].argmax(dim=-1))


def test_greedy_sees_repetition_penalty():
    logits = torch.zeros(1, VOCAB)
    logits[0, 2], logits[0, 5] = 3.0, 2.0  # 2 is in the prompt [1, 2, 3]
    params = [SamplingParams(temperature=0.0, repetition_penalty=2.0)]
    assert Sampler()(logits, build(params)).sampled_token_ids.tolist() == [5]


# ---- temperature and the distribution ------------------------------------------------------


def test_apply_temperature_divides_random_rows_only():
    logits = random_logits(3)
    temperature = torch.tensor([0.5, 0.0, 2.0])
    got = apply_temperature(logits, temperature)
    expected = torch.stack([logits[0] / 0.5, logits[1], logits[2] / 2.0])
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 1.7])
def test_empirical_distribution_matches_softmax(temperature: float):
    num_draws = 20_000
    row = random_logits(1, seed=3)
    metadata = build([SamplingParams(temperature=temperature)] * num_draws)
    sampled = Sampler()(row.expand(num_draws, VOCAB), metadata).sampled_token_ids
    expected = torch.softmax(row[0].double() / temperature, dim=0)
    assert total_variation(empirical(sampled), expected) < 0.02


# ---- top-k / top-p / min-p -------------------------------------------------------------------

FILTER_CASES = [  # (top_k, top_p, min_p)
    (1, 1.0, 0.0),
    (5, 1.0, 0.0),
    (0, 0.3, 0.0),
    (0, 0.8, 0.0),
    (8, 0.9, 0.0),
    (0, 1.0, 0.1),
    (0, 0.95, 0.3),
    (6, 0.7, 0.05),
]


@pytest.mark.parametrize(("top_k", "top_p", "min_p"), FILTER_CASES)
def test_filtered_probs_keep_the_reference_set(top_k: int, top_p: float, min_p: float):
    """Rows with the filters at two temperatures, next to a neutral row and a greedy row."""
    logits = random_logits(4, seed=top_k + int(100 * top_p))
    params = [
        SamplingParams(temperature=1.0, top_k=top_k, top_p=top_p, min_p=min_p),
        SamplingParams(temperature=1.0),
        SamplingParams(temperature=0.6, top_k=top_k, top_p=top_p, min_p=min_p),
        SamplingParams(temperature=0.0),
    ]
    metadata = build(params)
    probs = filtered_probs(apply_temperature(logits, metadata.temperature), metadata)
    for row, (p, top_k_row, top_p_row, min_p_row) in enumerate(
        [
            (params[0], top_k, top_p, min_p),
            (params[1], 0, 1.0, 0.0),
            (params[2], top_k, top_p, min_p),
        ]
    ):
        expected = reference_probs(logits[row] / p.temperature, top_k_row, top_p_row, min_p_row)
        assert (probs[row] > 0).tolist() == (expected > 0).tolist(), row
        torch.testing.assert_close(
            probs[row].double() / probs[row].sum(), expected, rtol=1e-5, atol=1e-6
        )


@pytest.mark.parametrize(("top_k", "top_p", "min_p"), FILTER_CASES[1::2])
def test_samples_cover_exactly_the_reference_set(top_k: int, top_p: float, min_p: float):
    num_draws = 20_000
    row = random_logits(1, seed=7) * 0.5  # flat enough that every kept token gets drawn
    params = SamplingParams(temperature=0.9, top_k=top_k, top_p=top_p, min_p=min_p)
    sampled = Sampler()(row.expand(num_draws, VOCAB), build([params] * num_draws))
    counts = empirical(sampled.sampled_token_ids)
    expected = reference_probs(row[0] / 0.9, top_k, top_p, min_p)
    assert ((counts > 0) == (expected > 0)).all()
    assert total_variation(counts, expected) < 0.02


def test_min_p_applies_after_top_p():
    """Order top-p then min-p: with probs [.4, .3, .2, .1], top_p = 0.75 keeps {0, 1, 2} and
    min_p = 0.3 (threshold .12) then keeps all three. Min-p first would drop 3 and leave a
    nucleus of {0, 1} (.44 + .33 >= .75), which is what vLLM v1 does."""
    logits = torch.tensor([[0.4, 0.3, 0.2, 0.1]]).log()
    metadata = build([SamplingParams(top_p=0.75, min_p=0.3)], vocab_size=4)
    probs = filtered_probs(apply_temperature(logits, metadata.temperature), metadata)
    assert (probs[0] > 0).tolist() == [True, True, True, False]


# ---- min_tokens ------------------------------------------------------------------------------


def test_min_tokens_bans_eos_and_stop_ids():
    logits = torch.zeros(4, VOCAB)
    logits[:, EOS] = 10.0
    logits[:, 7] = 9.0
    logits[:, 4] = 8.0
    params = [
        SamplingParams(temperature=0.0, min_tokens=2, stop_token_ids=[7]),
        SamplingParams(temperature=0.0, min_tokens=2, stop_token_ids=[7]),
        SamplingParams(temperature=0.0, min_tokens=2, stop_token_ids=[7], ignore_eos=True),
        SamplingParams(temperature=0.0),
    ]
    metadata = build(params, outputs=[[5], [5, 6], [], []])
    assert Sampler()(logits, metadata).sampled_token_ids.tolist() == [4, EOS, EOS, EOS]


def test_min_tokens_bans_hold_for_random_rows():
    num_draws = 2_000
    logits = torch.zeros(num_draws, VOCAB)
    logits[:, EOS] = 3.0
    metadata = build([SamplingParams(min_tokens=1, stop_token_ids=[3])] * num_draws)
    sampled = Sampler()(logits, metadata).sampled_token_ids
    assert not torch.isin(sampled, torch.tensor([EOS, 3])).any()


# ---- seeds -----------------------------------------------------------------------------------


def run_steps(
    params: list[SamplingParams], row: int, logits_per_step: list[torch.Tensor], seed: int
) -> list[int]:
    """Sample `len(logits_per_step)` steps; return the tokens of `row`, seeded with `seed`."""
    generators = {row: torch.Generator().manual_seed(seed)}
    for other, p in enumerate(params):
        if p.seed is not None and other != row:
            generators[other] = torch.Generator().manual_seed(p.seed)
    tokens = []
    for logits in logits_per_step:
        metadata = build(params, generators=generators, vocab_size=logits.shape[1])
        tokens.append(Sampler()(logits, metadata).sampled_token_ids[row].item())
    return tokens


@pytest.mark.parametrize("row_params", [SamplingParams(temperature=1.3), SamplingParams(top_p=0.9)])
@pytest.mark.parametrize("position", [0, 5])
def test_seeded_row_ignores_batch(row_params: SamplingParams, position: int):
    seed, num_steps, vocab_size = 1234, 6, 256
    row_params = SamplingParams(**{**row_params.__dict__, "seed": seed})
    row_logits = [random_logits(1, vocab_size, seed=step) for step in range(num_steps)]
    alone = run_steps([row_params], 0, row_logits, seed)

    others = [
        SamplingParams(temperature=0.0),
        SamplingParams(top_k=5),
        SamplingParams(seed=99, top_p=0.5),
        SamplingParams(),
        SamplingParams(min_p=0.2, repetition_penalty=1.2),
        SamplingParams(temperature=0.7, seed=7),
        SamplingParams(presence_penalty=1.0),
    ]
    batch_params = [*others[:position], row_params, *others[position:]]
    batch_logits = []
    for step, logits in enumerate(row_logits):
        batch = random_logits(8, vocab_size, seed=100 + step)
        batch[position] = logits[0]
        batch_logits.append(batch)
    in_batch = run_steps(batch_params, position, batch_logits, seed)

    assert alone == in_batch
    assert alone != run_steps([row_params], 0, row_logits, seed + 1)


def test_seeded_row_draws_one_exponential_per_vocab_entry():
    """The contract callers rely on: a row's noise is -log(U) of one vocab-sized uniform draw."""
    probs = torch.softmax(random_logits(3, vocab_size=64), dim=-1)
    sampled = random_sample(probs, {1: torch.Generator().manual_seed(5)})
    q = -torch.empty(64).uniform_(generator=torch.Generator().manual_seed(5)).log()
    assert sampled[1].item() == (probs[1] / q).argmax().item()


def test_unseeded_rows_draw_independently():
    num_rows, vocab_size = 64, 1000
    logits = torch.zeros(num_rows, vocab_size)
    sampled = Sampler()(logits, build([SamplingParams()] * num_rows, vocab_size=vocab_size))
    assert sampled.sampled_token_ids.unique().numel() > num_rows // 2


# ---- logprobs and the sampler's contract --------------------------------------------------


def test_logprobs_are_of_the_raw_logits():
    logits = random_logits(4, vocab_size=50)
    params = [
        SamplingParams(logprobs=3, temperature=0.5, repetition_penalty=1.5, top_k=4),
        SamplingParams(logprobs=1, temperature=0.0, presence_penalty=2.0),
        SamplingParams(min_tokens=3, top_p=0.5),
        SamplingParams(logprobs=0, temperature=2.0, min_p=0.1),
    ]
    out = Sampler()(logits, build(params, outputs=[[1, 4], [4], [], [9]], vocab_size=50))
    assert out.logprobs is not None
    reference = torch.log_softmax(logits.double(), dim=-1).float()
    sampled = out.sampled_token_ids
    assert out.logprobs.token_ids.shape == (4, 4)
    torch.testing.assert_close(out.logprobs.token_ids[:, 0], sampled, rtol=0, atol=0)
    torch.testing.assert_close(
        out.logprobs.logprobs[:, 0],
        reference.gather(1, sampled[:, None])[:, 0],
        rtol=1e-5,
        atol=1e-5,
    )
    torch.testing.assert_close(
        out.logprobs.logprobs[:, 1:], reference.topk(3).values, rtol=1e-5, atol=1e-5
    )
    expected_ranks = (reference > reference.gather(1, sampled[:, None])).sum(dim=1) + 1
    torch.testing.assert_close(out.logprobs.ranks, expected_ranks, rtol=0, atol=0)


def test_sampler_does_not_modify_logits():
    logits = random_logits(3)
    before = logits.clone()
    params = [
        SamplingParams(temperature=0.5, top_k=3, top_p=0.8, min_p=0.1, repetition_penalty=1.3),
        SamplingParams(min_tokens=2, frequency_penalty=1.0),
        SamplingParams(temperature=0.0, presence_penalty=0.5),
    ]
    Sampler()(logits, build(params, outputs=[[1], [2, 2], [3]]))
    torch.testing.assert_close(logits, before, rtol=0, atol=0)


def test_empty_batch():
    out = Sampler()(torch.empty(0, VOCAB), build([]))
    assert out.sampled_token_ids.shape == (0,)
