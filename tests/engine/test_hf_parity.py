"""SmolLM2-135M-Instruct against Hugging Face transformers on the same float32 weights."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from fleetlm.engine import LLM, SamplingParams

from .smollm2 import ENGINE_KWARGS, PROMPTS

pytestmark = pytest.mark.slow
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def hf_model(smollm2_dir):
    return AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def llm(smollm2_dir):
    return LLM(str(smollm2_dir), **ENGINE_KWARGS)


def test_greedy_generations_equal_transformers(llm, hf_model, smollm2_tokenizer):
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    outputs = llm.generate(PROMPTS, params, use_tqdm=False)
    for prompt, output in zip(PROMPTS, outputs, strict=True):
        ids = torch.tensor([output.prompt_token_ids])
        assert output.prompt_token_ids == smollm2_tokenizer.encode(prompt)
        with torch.no_grad():
            expected = hf_model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=MAX_TOKENS,
                eos_token_id=None,
                pad_token_id=0,
            )[0, ids.shape[1] :].tolist()
        assert output.outputs[0].token_ids == expected, prompt
        assert output.outputs[0].text == smollm2_tokenizer.decode(
            expected, skip_special_tokens=True
        )


def test_chat_greedy_equals_transformers(llm, hf_model, smollm2_tokenizer):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    output = llm.chat(messages, SamplingParams(temperature=0.0, max_tokens=40), use_tqdm=False)[0]
    ids = smollm2_tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    assert output.prompt_token_ids == ids[0].tolist()
    with torch.no_grad():
        expected = hf_model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=40,
            pad_token_id=0,
        )[0, ids.shape[1] :].tolist()
    assert output.outputs[0].token_ids == expected
    assert output.outputs[0].finish_reason == "stop"  # the model ends its answer with <|im_end|>
    assert "Paris" in output.outputs[0].text


def test_prompt_logprobs_match_transformers_logits(llm, hf_model):
    # Tolerance: float32 with different kernel choices (fused q/k/v, paged attention) gives
    # differences around 1e-5 in log-probabilities; 1e-3 leaves room for other CPUs.
    params = SamplingParams(max_tokens=1, prompt_logprobs=5)
    outputs = llm.generate(PROMPTS[:4], params, use_tqdm=False)
    for output in outputs:
        prompt = output.prompt_token_ids
        with torch.no_grad():
            logits = hf_model(torch.tensor([prompt])).logits[0]
        reference = torch.log_softmax(logits.float(), dim=-1)
        assert output.prompt_logprobs[0] is None
        for position in range(1, len(prompt)):
            entry = output.prompt_logprobs[position]
            expected_top = reference[position - 1].topk(5)
            for token_id, logprob in entry.items():
                assert logprob.logprob == pytest.approx(
                    reference[position - 1, token_id].item(), abs=1e-3
                )
            top_ids = [t for t, lp in entry.items() if lp.rank <= 5 and t != prompt[position]]
            assert set(top_ids) <= set(expected_top.indices.tolist())
            assert (
                entry[prompt[position]].rank
                == int((reference[position - 1] > reference[position - 1, prompt[position]]).sum())
                + 1
            )


def test_sampled_logprobs_match_log_softmax_of_transformers(llm, hf_model):
    params = SamplingParams(temperature=0.8, seed=3, max_tokens=8, logprobs=3, ignore_eos=True)
    output = llm.generate([PROMPTS[2]], params, use_tqdm=False)[0]
    sample = output.outputs[0]
    sequence = output.prompt_token_ids + sample.token_ids
    with torch.no_grad():
        logits = hf_model(torch.tensor([sequence])).logits[0]
    reference = torch.log_softmax(logits.float(), dim=-1)
    total = 0.0
    for i, (token_id, entry) in enumerate(zip(sample.token_ids, sample.logprobs, strict=True)):
        row = reference[len(output.prompt_token_ids) - 1 + i]
        assert entry[token_id].logprob == pytest.approx(row[token_id].item(), abs=1e-3)
        assert entry[token_id].rank == int((row > row[token_id]).sum()) + 1
        assert {t for t, lp in entry.items() if lp.rank <= 3} == set(row.topk(3).indices.tolist())
        total += entry[token_id].logprob
    assert sample.cumulative_logprob == pytest.approx(total, abs=1e-4)
