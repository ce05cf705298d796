"""Fixtures for the model loader tests: tiny synthetic GGUF files and the transformers reference."""

from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

# Tiny Llama: hidden 8, 2 query heads and 1 KV head of dim 4, one layer.
TINY_SHAPES = {
    "token_embd.weight": (32, 8),
    "blk.0.attn_norm.weight": (8,),
    "blk.0.attn_q.weight": (8, 8),
    "blk.0.attn_k.weight": (4, 8),
    "blk.0.attn_v.weight": (4, 8),
    "blk.0.attn_output.weight": (8, 8),
    "blk.0.ffn_gate.weight": (16, 8),
    "blk.0.ffn_up.weight": (16, 8),
    "blk.0.ffn_down.weight": (8, 16),
    "blk.0.ffn_norm.weight": (8,),
    "output_norm.weight": (8,),
    "rope_freqs.weight": (2,),  # llama3 rope frequencies: no Hugging Face tensor
}
QWEN2_BIAS_SHAPES = {
    "blk.0.attn_q.bias": (8,),
    "blk.0.attn_k.bias": (4,),
    "blk.0.attn_v.bias": (4,),
}


def llama_cpp_permute(weights: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp's `LlamaModel.permute` (convert_hf_to_gguf.py), applied to q/k rows."""
    rows = weights.reshape(num_heads, 2, weights.shape[0] // num_heads // 2, *weights.shape[1:])
    return rows.swapaxes(1, 2).reshape(weights.shape)


def write_tiny_gguf(path: Path, arch: str = "llama") -> dict[str, np.ndarray]:
    """Write a float32 GGUF the way llama.cpp converts a model (q/k permuted for Llama);
    return the original Hugging Face-layout tensors by GGUF name."""
    rng = np.random.default_rng(0)
    shapes = TINY_SHAPES | (QWEN2_BIAS_SHAPES if arch == "qwen2" else {})
    tensors = {name: rng.standard_normal(shape, dtype=np.float32) for name, shape in shapes.items()}
    writer = gguf.GGUFWriter(str(path), arch)
    _add_tiny_metadata(writer)
    for name, array in tensors.items():
        if arch == "llama" and name in ("blk.0.attn_q.weight", "blk.0.attn_k.weight"):
            array = llama_cpp_permute(array, 2 if "attn_q" in name else 1)
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return tensors


def _add_tiny_metadata(writer: gguf.GGUFWriter) -> None:
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(8)
    writer.add_feed_forward_length(16)
    writer.add_head_count(2)
    writer.add_head_count_kv(1)
    writer.add_rope_dimension_count(4)
    writer.add_rope_freq_base(500000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
    writer.add_rope_scaling_factor(2.0)
    writer.add_token_list([f"t{i}" for i in range(32)])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)


@pytest.fixture
def tiny_gguf(tmp_path: Path) -> Callable[..., tuple[Path, dict[str, np.ndarray]]]:
    """Factory: `tiny_gguf(arch="llama")` -> (path, original tensors by GGUF name)."""

    def make(arch: str = "llama", name: str = "tiny.gguf") -> tuple[Path, dict[str, np.ndarray]]:
        path = tmp_path / name
        return path, write_tiny_gguf(path, arch)

    return make


@pytest.fixture(scope="session")
def smollm2_reader(smollm2_gguf: Path) -> gguf.GGUFReader:
    """The bundled GGUF parsed once (the reader takes about 4 s)."""
    from fleetlm.engine.model_loader.gguf_loader import open_gguf

    return open_gguf(smollm2_gguf)


@pytest.fixture(scope="session")
def gguf_reference_model(smollm2_gguf: Path) -> torch.nn.Module:
    """transformers' own GGUF loading of the bundled model (about 25 s on 2 CPU cores)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        smollm2_gguf.parent, gguf_file=smollm2_gguf.name, dtype=torch.float32
    )
    return model.eval()
