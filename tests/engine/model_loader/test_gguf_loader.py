from pathlib import Path

import numpy as np
import pytest
import torch

from fleetlm.engine.errors import ModelNotFoundError, UnsupportedModelError
from fleetlm.engine.model_loader.arch_config import parse_arch_config
from fleetlm.engine.model_loader.gguf_loader import (
    config_from_reader,
    hf_tensor_name,
    iter_gguf_weights,
    read_gguf_config,
    unpermute_qk_rows,
    weights_from_reader,
)


def test_hf_tensor_name() -> None:
    assert hf_tensor_name("token_embd.weight") == "model.embed_tokens.weight"
    assert hf_tensor_name("output.weight") == "lm_head.weight"
    assert hf_tensor_name("blk.12.attn_q.weight") == "model.layers.12.self_attn.q_proj.weight"
    assert hf_tensor_name("blk.0.attn_k.bias") == "model.layers.0.self_attn.k_proj.bias"
    assert (
        hf_tensor_name("blk.3.ffn_norm.weight") == "model.layers.3.post_attention_layernorm.weight"
    )
    assert hf_tensor_name("rope_freqs.weight") is None
    assert hf_tensor_name("blk.0.ffn_gate_exps.weight") is None


def test_unpermute_restores_rotate_half_layout() -> None:
    # Two heads of dim 4; the file interleaves each head's halves: rows (f0, s0, f1, s1).
    rows = np.arange(8, dtype=np.float32).reshape(8, 1)
    unpermuted = unpermute_qk_rows(rows, num_heads=2).ravel()
    assert unpermuted.tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


def test_tiny_llama_config(tiny_gguf) -> None:
    path, _ = tiny_gguf("llama")
    config = read_gguf_config(path)
    assert config["model_type"] == "llama"
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["vocab_size"] == 32  # from the token list: no llama.vocab_size key
    assert config["rope_scaling"] == {"rope_type": "linear", "factor": 2.0}
    arch = parse_arch_config(config)
    assert (arch.num_attention_heads, arch.num_key_value_heads, arch.head_dim) == (2, 1, 4)
    assert arch.tie_word_embeddings
    assert arch.rope_theta == 500000.0
    assert arch.rope_scaling == {"rope_type": "linear", "factor": 2.0}


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_tiny_weights_are_renamed_and_unpermuted(tiny_gguf, arch: str) -> None:
    path, originals = tiny_gguf(arch)
    weights = dict(iter_gguf_weights(path))
    expected = {
        hf_tensor_name(name): array for name, array in originals.items() if hf_tensor_name(name)
    }
    assert weights.keys() == expected.keys()
    for name, array in expected.items():
        assert weights[name].dtype == torch.float32
        assert torch.equal(weights[name], torch.from_numpy(array)), name
    assert read_gguf_config(path)["model_type"] == arch


def test_unknown_architecture(tiny_gguf) -> None:
    path, _ = tiny_gguf("gpt2")
    with pytest.raises(UnsupportedModelError, match="gpt2"):
        read_gguf_config(path)
    with pytest.raises(UnsupportedModelError):
        next(iter_gguf_weights(path))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError):
        read_gguf_config(tmp_path / "nope.gguf")


@pytest.mark.slow
def test_smollm2_config(smollm2_reader) -> None:
    config = config_from_reader(smollm2_reader)
    arch = parse_arch_config(config)
    assert arch.model_type == "llama"
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert arch.num_hidden_layers == 30
    assert arch.hidden_size == 576
    assert (arch.num_attention_heads, arch.num_key_value_heads, arch.head_dim) == (9, 3, 64)
    assert arch.vocab_size == 49152
    assert arch.intermediate_size == 1536
    assert arch.rope_theta == 100000.0
    assert arch.rope_scaling is None
    assert arch.max_position_embeddings == 8192
    assert arch.tie_word_embeddings
    assert arch.rms_norm_eps == pytest.approx(1e-5)
    assert (arch.bos_token_id, arch.eos_token_ids) == (1, (2,))
    assert arch.torch_dtype == "float32"


@pytest.mark.slow
def test_smollm2_weights_equal_transformers(smollm2_reader, gguf_reference_model) -> None:
    reference = gguf_reference_model.state_dict()
    ours = dict(weights_from_reader(smollm2_reader))
    # Tied embeddings: transformers' state dict also lists lm_head, the GGUF has no output.weight.
    assert ours.keys() == reference.keys() - {"lm_head.weight"}
    for name, tensor in ours.items():
        assert tensor.shape == reference[name].shape, name
        assert torch.equal(tensor, reference[name]), name
