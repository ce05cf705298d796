"""The Llama family (Llama, Mistral, Qwen2: GQA, rope scaling, tied embeddings, biases) against
transformers, on tiny randomly initialised models saved as sharded safetensors."""

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

from fleetlm.engine import LLM, SamplingParams

TINY = {
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 256,
    "bos_token_id": 1,
    "eos_token_id": 2,
}

VARIANTS = {
    "llama2-mha": LlamaConfig(**TINY, num_key_value_heads=4),
    "llama3-gqa-rope-scaling": LlamaConfig(
        **TINY,
        num_key_value_heads=2,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    ),
    "llama-linear-rope-tied-bias": LlamaConfig(
        **TINY,
        num_key_value_heads=1,
        tie_word_embeddings=True,
        attention_bias=True,
        rope_scaling={"rope_type": "linear", "factor": 2.0},
    ),
    "mistral-head-dim": MistralConfig(
        **TINY, num_key_value_heads=2, head_dim=32, sliding_window=None
    ),
    "qwen2-bias": Qwen2Config(**TINY, num_key_value_heads=2, tie_word_embeddings=True),
}

PROMPTS = [[5, 17, 99, 3, 250, 11], list(range(30, 70)), [7] * 19, [400, 401]]


def _save_tiny_model(config, path):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # larger weights than the init so the outputs vary per position
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.2)
    model.save_pretrained(path, max_shard_size="100KB")  # several shards + index
    return model.eval()


def _hf_greedy(model, prompt, max_new_tokens):
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    return out[0, len(prompt) :].tolist()


@pytest.mark.parametrize("variant", VARIANTS)
def test_greedy_tokens_equal_transformers(variant, tmp_path):
    hf_model = _save_tiny_model(VARIANTS[variant], tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    llm = LLM(
        str(tmp_path),
        skip_tokenizer_init=True,
        dtype="float32",
        block_size=4,
        max_num_batched_tokens=16,
        num_gpu_blocks_override=128,
    )
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, detokenize=False)
    outputs = llm.generate(PROMPTS, params, use_tqdm=False)
    for prompt, output in zip(PROMPTS, outputs, strict=True):
        assert output.outputs[0].token_ids == _hf_greedy(hf_model, prompt, 12), variant


def test_prompt_logprobs_equal_transformers(tmp_path):
    hf_model = _save_tiny_model(VARIANTS["llama3-gqa-rope-scaling"], tmp_path)
    llm = LLM(
        str(tmp_path),
        skip_tokenizer_init=True,
        dtype="float32",
        block_size=4,
        max_num_batched_tokens=8,
        num_gpu_blocks_override=64,
    )
    prompt = list(range(30, 70))
    output = llm.generate(
        [prompt], SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False
    )[0]
    with torch.no_grad():
        reference = torch.log_softmax(hf_model(torch.tensor([prompt])).logits[0].float(), -1)
    ours = torch.tensor(
        [output.prompt_logprobs[i][prompt[i]].logprob for i in range(1, len(prompt))]
    )
    expected = reference[torch.arange(len(prompt) - 1), torch.tensor(prompt[1:])]
    assert output.prompt_logprobs[0] is None
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=0)


def test_dummy_weights_need_only_a_config(tmp_path):
    VARIANTS["llama2-mha"].save_pretrained(tmp_path)  # config.json only
    llm = LLM(str(tmp_path), load_format="dummy", num_gpu_blocks_override=64, block_size=4)
    assert llm.get_tokenizer() is None
    output = llm.generate(
        [[1, 2, 3]], SamplingParams(max_tokens=5, ignore_eos=True), use_tqdm=False
    )
    assert len(output[0].outputs[0].token_ids) == 5
    assert output[0].outputs[0].text == ""
