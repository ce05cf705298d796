import json
from pathlib import Path

import pytest
import torch

from fleetlm.engine.model_loader.arch_config import parse_arch_config
from fleetlm.engine.model_loader.convert import convert_gguf_to_hf, save_safetensors
from fleetlm.engine.model_loader.gguf_loader import hf_tensor_name
from fleetlm.engine.model_loader.safetensors_loader import iter_safetensors_weights

PROMPT = "The capital of France is"


def test_save_safetensors_single_file(tmp_path: Path) -> None:
    weights = {"a": torch.ones(4), "b": torch.zeros(2, 3)}
    save_safetensors(weights.items(), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
    assert dict(iter_safetensors_weights(tmp_path)).keys() == weights.keys()


def test_save_safetensors_shards(tmp_path: Path) -> None:
    weights = {f"w{i}": torch.full((64,), float(i)) for i in range(5)}  # 256 bytes each
    save_safetensors(weights.items(), tmp_path, max_shard_bytes=600)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 5 * 256
    assert index["weight_map"] == {
        "w0": "model-00001-of-00003.safetensors",
        "w1": "model-00001-of-00003.safetensors",
        "w2": "model-00002-of-00003.safetensors",
        "w3": "model-00002-of-00003.safetensors",
        "w4": "model-00003-of-00003.safetensors",
    }
    loaded = dict(iter_safetensors_weights(tmp_path))
    assert all(torch.equal(loaded[name], tensor) for name, tensor in weights.items())
    assert not list(tmp_path.glob("*.partial"))


def test_convert_tiny_gguf(tiny_gguf, tmp_path: Path) -> None:
    path, originals = tiny_gguf("llama")
    out_dir = convert_gguf_to_hf(path, tmp_path / "hf", write_tokenizer=False)
    config = json.loads((out_dir / "config.json").read_text())
    assert parse_arch_config(config).num_key_value_heads == 1
    generation = json.loads((out_dir / "generation_config.json").read_text())
    assert generation == {"bos_token_id": 1, "eos_token_id": 2}
    weights = dict(iter_safetensors_weights(out_dir))
    assert "lm_head.weight" not in weights  # tied embeddings
    for name, array in originals.items():
        if hf_tensor_name(name):
            assert torch.equal(weights[hf_tensor_name(name)], torch.from_numpy(array))


@pytest.mark.slow
def test_converted_logits_equal_transformers_gguf(
    smollm2_dir: Path, smollm2_tokenizer, gguf_reference_model
) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    assert parse_arch_config(model.config.to_dict()).tie_word_embeddings
    input_ids = smollm2_tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(input_ids).logits
        expected = gguf_reference_model(input_ids).logits
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_converted_tokenizer(smollm2_tokenizer) -> None:
    text = "Hello, world! Ünïcödé and   spaces."
    ids = smollm2_tokenizer.encode(text, add_special_tokens=False)
    assert smollm2_tokenizer.decode(ids) == text
    assert (smollm2_tokenizer.bos_token_id, smollm2_tokenizer.eos_token_id) == (1, 2)
    prompt = smollm2_tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert "<|im_start|>user\nHi<|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


@pytest.mark.slow
def test_convert_sharded(smollm2_gguf: Path, smollm2_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    out_dir = convert_gguf_to_hf(
        smollm2_gguf, tmp_path, max_shard_size_mb=150, write_tokenizer=False
    )
    index = json.loads((out_dir / "model.safetensors.index.json").read_text())
    shard_names = sorted(set(index["weight_map"].values()))
    num_shards = len(shard_names)  # 538 MB of float32 weights
    assert num_shards >= 4
    assert shard_names == [
        f"model-{i:05d}-of-{num_shards:05d}.safetensors" for i in range(1, num_shards + 1)
    ]
    assert not (out_dir / "model.safetensors").exists()
    expected = dict(iter_safetensors_weights(smollm2_dir))
    loaded = dict(iter_safetensors_weights(out_dir))
    assert loaded.keys() == expected.keys() == index["weight_map"].keys()
    assert all(torch.equal(loaded[name], tensor) for name, tensor in expected.items())
    assert AutoModelForCausalLM.from_pretrained(out_dir).config.num_hidden_layers == 30
