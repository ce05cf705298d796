"""Sampling options, stop conditions, n > 1 and aborts, end to end on the real model."""

import pytest

from fleetlm.engine import LLM, SamplingParams

from .smollm2 import ENGINE_KWARGS, PROMPTS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def llm(smollm2_dir):
    return LLM(str(smollm2_dir), **ENGINE_KWARGS, enable_prefix_caching=False)


def _texts(outputs):
    return [c.text for o in outputs for c in o.outputs]


def test_seeded_sampling_is_reproducible_whatever_the_batch(llm):
    seeded = SamplingParams(
        temperature=1.0, top_p=0.9, top_k=50, seed=1234, max_tokens=20, ignore_eos=True
    )
    alone = llm.generate([PROMPTS[0]], seeded, use_tqdm=False)
    others = [SamplingParams(temperature=1.0, max_tokens=5 + i) for i in range(5)]
    mixed = llm.generate(
        [*PROMPTS[1:4], PROMPTS[0], *PROMPTS[4:6]],
        [*others[:3], seeded, *others[3:]],
        use_tqdm=False,
    )
    assert mixed[3].outputs[0].token_ids == alone[0].outputs[0].token_ids
    other_seed = llm.generate(
        [PROMPTS[0]],
        SamplingParams(
            temperature=1.0, top_p=0.9, top_k=50, seed=99, max_tokens=20, ignore_eos=True
        ),
        use_tqdm=False,
    )
    assert other_seed[0].outputs[0].token_ids != alone[0].outputs[0].token_ids


def test_n_samples_are_distinct_and_share_the_prompt_blocks(llm):
    prompt = "Write a short poem about the sea. " * 4  # several full blocks
    params = SamplingParams(n=4, temperature=1.0, seed=7, max_tokens=16, ignore_eos=True)
    engine = llm.engine
    engine.add_request("poem", prompt, params)
    engine.step()  # leader computes the prompt; the samples take its blocks in the same step
    manager = engine.engine_core.scheduler.kv_cache_manager
    leader_blocks = manager.req_to_blocks["poem#0"]
    num_prompt_blocks = (len(llm.get_tokenizer().encode(prompt)) - 1) // 16
    assert num_prompt_blocks >= 2
    assert all(b.ref_cnt == 4 for b in leader_blocks[:num_prompt_blocks])
    outputs = []
    while engine.has_unfinished_requests():
        outputs += [o for o in engine.step() if o.finished]
    (output,) = outputs
    assert [c.index for c in output.outputs] == [0, 1, 2, 3]
    assert len({tuple(c.token_ids) for c in output.outputs}) == 4
    again = llm.generate([prompt], params, use_tqdm=False)[0]
    assert [c.token_ids for c in again.outputs] == [c.token_ids for c in output.outputs]
    assert manager.pool.num_free_blocks == manager.pool.num_blocks


def test_stop_string_spanning_tokens_is_cut_and_reported(llm):
    greedy = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    full = llm.generate([PROMPTS[4]], greedy, use_tqdm=False)[0].outputs[0]
    assert "8," in full.text
    stop = full.text[full.text.index("7,") : full.text.index("8,") + 1]  # e.g. "7, 8" over tokens
    params = SamplingParams(temperature=0.0, max_tokens=24, stop=[stop], ignore_eos=True)
    cut = llm.generate([PROMPTS[4]], params, use_tqdm=False)[0].outputs[0]
    assert cut.text == full.text[: full.text.index(stop)]
    assert cut.finish_reason == "stop" and cut.stop_reason == stop
    assert len(cut.token_ids) < len(full.token_ids)
    kept = llm.generate(
        [PROMPTS[4]],
        SamplingParams(
            temperature=0.0,
            max_tokens=24,
            stop=[stop],
            include_stop_str_in_output=True,
            ignore_eos=True,
        ),
        use_tqdm=False,
    )
    assert kept[0].outputs[0].text == full.text[: full.text.index(stop) + len(stop)]


def test_stop_token_ids_min_tokens_and_max_tokens(llm):
    greedy = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    full = llm.generate([PROMPTS[0]], greedy, use_tqdm=False)[0].outputs[0]
    stop_id = full.token_ids[3]
    stopped = llm.generate(
        [PROMPTS[0]],
        SamplingParams(temperature=0.0, max_tokens=12, stop_token_ids=[stop_id], ignore_eos=True),
        use_tqdm=False,
    )[0].outputs[0]
    first = full.token_ids.index(stop_id)
    assert stopped.token_ids == full.token_ids[: first + 1]
    assert (stopped.finish_reason, stopped.stop_reason) == ("stop", stop_id)
    assert full.finish_reason == "length" and len(full.token_ids) == 12

    chat = [{"role": "user", "content": "Say hi."}]
    short = llm.chat(chat, SamplingParams(temperature=0.0, max_tokens=64), use_tqdm=False)[0]
    natural_len = len(short.outputs[0].token_ids)
    assert short.outputs[0].finish_reason == "stop" and natural_len < 64
    longer = llm.chat(
        chat,
        SamplingParams(temperature=0.0, max_tokens=64, min_tokens=natural_len + 5),
        use_tqdm=False,
    )[0]
    assert len(longer.outputs[0].token_ids) >= natural_len + 5


def test_penalties_change_a_repetitive_continuation(llm):
    prompt = "the the the the the the the the"
    plain = llm.generate(
        [prompt], SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True), use_tqdm=False
    )[0].outputs[0]
    penalised = llm.generate(
        [prompt],
        SamplingParams(
            temperature=0.0,
            max_tokens=12,
            repetition_penalty=1.5,
            frequency_penalty=1.0,
            presence_penalty=1.0,
            ignore_eos=True,
        ),
        use_tqdm=False,
    )[0].outputs[0]
    # Greedy decoding loops ("-the-future-of-the-..."); the penalties push it off its own tokens.
    assert len(set(penalised.token_ids)) > len(set(plain.token_ids))


def test_multibyte_text_is_never_split(llm):
    params = SamplingParams(temperature=1.0, seed=5, max_tokens=40, ignore_eos=True)
    output = llm.generate([PROMPTS[8], PROMPTS[9]], params, use_tqdm=False)
    tokenizer = llm.get_tokenizer()
    for request in output:
        sample = request.outputs[0]
        assert sample.text == tokenizer.decode(sample.token_ids, skip_special_tokens=True)


def test_abort_mid_generation_frees_blocks_and_keeps_others_running(llm):
    engine = llm.engine
    params = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    engine.add_request("keep", PROMPTS[0], params)
    engine.add_request("drop", PROMPTS[1], params)
    engine.step()
    engine.step()
    (aborted,) = engine.abort_request("drop")
    assert aborted.finished and aborted.outputs[0].finish_reason == "abort"
    assert len(aborted.outputs[0].token_ids) == 2
    assert engine.abort_request("drop") == []  # already gone
    finished = []
    while engine.has_unfinished_requests():
        finished += [o for o in engine.step() if o.finished]
    assert [o.request_id for o in finished] == ["keep"]
    assert len(finished[0].outputs[0].token_ids) == 10
    stats = engine.get_stats()
    assert stats.num_free_blocks == stats.num_blocks
