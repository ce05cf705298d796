"""Read llama.cpp GGUF files: a transformers-style config dict and dequantized float32 weights.

`GGUFReader` parses every metadata field up front (about 4 s for SmolLM2's 49k-token
vocabulary), so code that needs both the config and the weights should open the file once with
`open_gguf` and use `config_from_reader` / `weights_from_reader`.
"""

import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGUFReader
from gguf.quants import dequantize

from fleetlm.engine.errors import ModelNotFoundError, UnsupportedModelError

logger = logging.getLogger(__name__)

# GGUF `general.architecture` -> (transformers model_type, architectures entry)
GGUF_ARCHITECTURES = {
    "llama": ("llama", "LlamaForCausalLM"),
    "qwen2": ("qwen2", "Qwen2ForCausalLM"),
}
# llama.cpp's converter permutes q/k rows for these architectures only (Qwen2 is stored as is).
_PERMUTED_QK_ARCHITECTURES = ("llama",)

_GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_TENSORS = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_TOKEN_ID_KEYS = {
    "bos_token_id": "tokenizer.ggml.bos_token_id",
    "eos_token_id": "tokenizer.ggml.eos_token_id",
    "pad_token_id": "tokenizer.ggml.padding_token_id",
}
_LAYER_TENSOR_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")


def open_gguf(path: Path) -> GGUFReader:
    if not Path(path).is_file():
        raise ModelNotFoundError(f"GGUF file '{path}' does not exist")
    return GGUFReader(path)


def read_gguf_config(path: Path) -> dict[str, Any]:
    """The transformers-style config dict of a GGUF file (see `config_from_reader`)."""
    return config_from_reader(open_gguf(path))


def iter_gguf_weights(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Dequantized float32 weights of a GGUF file under Hugging Face names."""
    return weights_from_reader(open_gguf(path))


def config_from_reader(reader: GGUFReader) -> dict[str, Any]:
    """Build the `config.json` dict transformers would write for this model."""
    arch = _gguf_architecture(reader)
    model_type, architecture = GGUF_ARCHITECTURES[arch]
    num_heads = _field(reader, f"{arch}.attention.head_count")
    hidden_size = _field(reader, f"{arch}.embedding_length")
    config = {
        "architectures": [architecture],
        "model_type": model_type,
        "vocab_size": _field(reader, f"{arch}.vocab_size") or _num_tokens(reader),
        "hidden_size": hidden_size,
        "intermediate_size": _field(reader, f"{arch}.feed_forward_length"),
        "num_hidden_layers": _field(reader, f"{arch}.block_count"),
        "num_attention_heads": num_heads,
        "num_key_value_heads": _field(reader, f"{arch}.attention.head_count_kv") or num_heads,
        "head_dim": _field(reader, f"{arch}.attention.key_length")
        or _field(reader, f"{arch}.rope.dimension_count")
        or hidden_size // num_heads,
        "rms_norm_eps": _field(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-6),
        "rope_theta": _field(reader, f"{arch}.rope.freq_base", 10000.0),
        "max_position_embeddings": _field(reader, f"{arch}.context_length", 2048),
        "tie_word_embeddings": all(t.name != "output.weight" for t in reader.tensors),
        "torch_dtype": "float32",
    }
    rope_scaling = _rope_scaling(reader, arch)
    if rope_scaling is not None:
        config["rope_scaling"] = rope_scaling
    for key, gguf_key in _TOKEN_ID_KEYS.items():
        value = _field(reader, gguf_key)
        if value is not None:
            config[key] = value
    return config


def weights_from_reader(reader: GGUFReader) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield `(hf_name, float32 tensor)` one tensor at a time, q/k rows un-permuted."""
    config = config_from_reader(reader)
    is_permuted = _gguf_architecture(reader) in _PERMUTED_QK_ARCHITECTURES
    for tensor in reader.tensors:
        name = hf_tensor_name(tensor.name)
        if name is None:
            logger.debug("skipping GGUF tensor %s (no Hugging Face equivalent)", tensor.name)
            continue
        # A plain ndarray view: numpy's memmap subclass adds overhead to every slice.
        weights = dequantize(np.asarray(tensor.data), tensor.tensor_type)
        if is_permuted and name.endswith("q_proj.weight"):
            weights = unpermute_qk_rows(weights, config["num_attention_heads"])
        elif is_permuted and name.endswith("k_proj.weight"):
            weights = unpermute_qk_rows(weights, config["num_key_value_heads"])
        yield name, _to_tensor(weights)


def hf_tensor_name(gguf_name: str) -> str | None:
    """`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight`; None if unknown."""
    if gguf_name in _GLOBAL_TENSORS:
        return _GLOBAL_TENSORS[gguf_name]
    match = _LAYER_TENSOR_RE.fullmatch(gguf_name)
    if match is None or match[2] not in _LAYER_TENSORS:
        return None
    return f"model.layers.{match[1]}.{_LAYER_TENSORS[match[2]]}.{match[3]}"


def unpermute_qk_rows(weights: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k permutation, the inverse of its `LlamaModel.permute`.

    NOTE: llama.cpp rotates adjacent pairs (x0, x1), (x2, x3), ... of each head while Hugging
    Face rotates the two halves of the head, so the converter interleaves the rows of each head:
    [first half | second half] -> [f0, s0, f1, s1, ...], i.e. the file holds the rows in
    (head, half_head_dim, 2) order. Swapping the last two axes back restores (head, 2, half).
    """
    half_head_dim = weights.shape[0] // num_heads // 2
    rows = weights.reshape(num_heads, half_head_dim, 2, *weights.shape[1:])
    return rows.swapaxes(1, 2).reshape(weights.shape)


def _gguf_architecture(reader: GGUFReader) -> str:
    arch = _field(reader, "general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise UnsupportedModelError(
            f"GGUF architecture {arch!r} is not supported (supported: {', '.join(GGUF_ARCHITECTURES)})"
        )
    return arch


def _rope_scaling(reader: GGUFReader, arch: str) -> dict[str, Any] | None:
    rope_type = _field(reader, f"{arch}.rope.scaling.type")
    if rope_type in (None, "none"):
        return None
    scaling = {"rope_type": rope_type, "factor": _field(reader, f"{arch}.rope.scaling.factor")}
    original = _field(reader, f"{arch}.rope.scaling.original_context_length")
    if original is not None:
        scaling["original_max_position_embeddings"] = original
    return scaling


def _field(reader: GGUFReader, key: str, default: Any = None) -> Any:
    field = reader.get_field(key)
    return default if field is None else field.contents()


def _num_tokens(reader: GGUFReader) -> int | None:
    field = reader.get_field("tokenizer.ggml.tokens")
    return None if field is None else len(field.data)


def _to_tensor(weights: np.ndarray) -> torch.Tensor:
    """Own the memory: unquantized tensors are read-only views of the memory-mapped file."""
    weights = weights.astype(np.float32, copy=False)
    if not (weights.flags.writeable and weights.flags.c_contiguous):
        weights = np.array(weights, order="C")
    return torch.from_numpy(weights)
