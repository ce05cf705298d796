"""Continuous batching on the real model: batch invariance, prefix caching, preemption."""

import pytest

from fleetlm.engine import LLM, SamplingParams

from .smollm2 import ENGINE_KWARGS, PROMPTS

pytestmark = pytest.mark.slow
GREEDY = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)


def _token_ids(outputs):
    return [o.outputs[0].token_ids for o in outputs]


@pytest.fixture(scope="module")
def reference(smollm2_dir):
    """Each prompt alone, one at a time, with a generous budget."""
    llm = LLM(str(smollm2_dir), **ENGINE_KWARGS)
    return {p: _token_ids(llm.generate([p], GREEDY, use_tqdm=False))[0] for p in PROMPTS}


def _mixed_batch(tokenizer):
    """32 requests: the test prompts, repeats, longer prompts, and varied max_tokens."""
    long_prompt = " ".join(PROMPTS)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(28)] + [long_prompt] * 2 + PROMPTS[:2]
    params = [
        SamplingParams(temperature=0.0, max_tokens=4 + (i % 4) * 4, ignore_eos=True)
        for i in range(32)
    ]
    return prompts, params


def test_greedy_output_is_the_same_alone_and_in_a_chunked_batch_of_32(
    smollm2_dir, reference, smollm2_tokenizer
):
    llm = LLM(
        str(smollm2_dir),
        **ENGINE_KWARGS,
        max_num_batched_tokens=48,
        max_num_seqs=32,
        enable_prefix_caching=False,
    )
    prompts, params = _mixed_batch(smollm2_tokenizer)
    outputs = llm.generate(prompts, params, use_tqdm=False)
    for prompt, param, output in zip(prompts, params, outputs, strict=True):
        if prompt in reference:
            assert output.outputs[0].token_ids == reference[prompt][: param.max_tokens], prompt
    # The long prompt is longer than the budget, so it was chunked; check it alone too.
    long_prompt = prompts[28]
    alone = LLM(str(smollm2_dir), **ENGINE_KWARGS).generate(
        [long_prompt], params[28], use_tqdm=False
    )
    assert _token_ids(alone) == [outputs[28].outputs[0].token_ids]
    assert len(outputs[28].prompt_token_ids) > 48


def test_prefix_caching_on_and_off_give_identical_outputs_and_the_second_run_hits(smollm2_dir):
    system = "You are a careful assistant. Answer briefly and precisely. " * 3
    prompts = [
        system + question
        for question in (
            "Why is the sky blue?",
            "What is 2+2?",
            "Name a fruit.",
            "Who wrote Hamlet?",
        )
    ]
    off = LLM(str(smollm2_dir), **ENGINE_KWARGS, enable_prefix_caching=False)
    expected = _token_ids(off.generate(prompts, GREEDY, use_tqdm=False))
    assert off.engine.get_stats().prefix_cache_hits == 0

    on = LLM(str(smollm2_dir), **ENGINE_KWARGS)
    first = on.generate(prompts, GREEDY, use_tqdm=False)
    hits_after_first = on.engine.get_stats().prefix_cache_hits
    second = on.generate(prompts, GREEDY, use_tqdm=False)
    stats = on.engine.get_stats()
    assert _token_ids(first) == expected and _token_ids(second) == expected
    shared_len = len(on.get_tokenizer().encode(system)) // 16 * 16
    # The second run finds every full block of each prompt (the shared prefix at least).
    assert stats.prefix_cache_hits - hits_after_first >= len(prompts) * shared_len
    assert all(o.num_cached_tokens >= shared_len for o in second)
    assert stats.num_free_blocks == stats.num_blocks


def test_preemption_keeps_outputs_identical_and_returns_every_block(smollm2_dir, reference):
    # 12 blocks of 16 tokens for 10 requests of ~10 prompt + 16 output tokens: they cannot
    # all be resident, so the scheduler must preempt and recompute.
    llm = LLM(str(smollm2_dir), max_model_len=128, num_gpu_blocks_override=12)
    outputs = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    stats = llm.engine.get_stats()
    assert stats.num_preemptions > 0
    assert _token_ids(outputs) == [reference[p] for p in PROMPTS]
    assert stats.num_free_blocks == stats.num_blocks == 12
    assert stats.num_running == stats.num_waiting == 0


def test_seeded_sampling_survives_preemption(smollm2_dir):
    params = [
        SamplingParams(temperature=1.0, seed=i, max_tokens=16, ignore_eos=True)
        for i in range(len(PROMPTS))
    ]
    roomy = LLM(str(smollm2_dir), **ENGINE_KWARGS)
    tight = LLM(str(smollm2_dir), max_model_len=128, num_gpu_blocks_override=12)
    expected = _token_ids(roomy.generate(PROMPTS, params, use_tqdm=False))
    assert _token_ids(tight.generate(PROMPTS, params, use_tqdm=False)) == expected
    assert tight.engine.get_stats().num_preemptions > 0
