"""The architecture facts the engine needs, parsed from a Hugging Face `config.json` dict."""

from dataclasses import dataclass
from typing import Any

from fleetlm.engine.errors import UnsupportedModelError

# Llama-family architectures: they differ only in configuration.
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


@dataclass(frozen=True)
class ArchConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None  # None or {"rope_type": "linear" | "llama3", ...}
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool  # biases on q/k/v
    o_proj_bias: bool
    mlp_bias: bool
    sliding_window: int | None
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    torch_dtype: str | None  # as stored in the config, e.g. "bfloat16"

    @property
    def num_params(self) -> int:
        """Number of weights (embeddings counted once when tied)."""
        h, kv = self.hidden_size, self.num_key_value_heads * self.head_dim
        q = self.num_attention_heads * self.head_dim
        attn = h * q + 2 * h * kv + q * h
        mlp = 3 * h * self.intermediate_size
        per_layer = attn + mlp + 2 * h
        embed = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return self.num_hidden_layers * per_layer + embed + h


def parse_arch_config(config: dict[str, Any]) -> ArchConfig:
    """Parse a transformers-style config dict; raise `UnsupportedModelError` for other models."""
    model_type = config.get("model_type", "")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"model_type {model_type!r} is not supported (supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    num_heads = config["num_attention_heads"]
    hidden = config["hidden_size"]
    return ArchConfig(
        model_type=model_type,
        vocab_size=config["vocab_size"],
        hidden_size=hidden,
        intermediate_size=config["intermediate_size"],
        num_hidden_layers=config["num_hidden_layers"],
        num_attention_heads=num_heads,
        num_key_value_heads=config.get("num_key_value_heads") or num_heads,
        head_dim=config.get("head_dim") or hidden // num_heads,
        rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        rope_theta=float(_rope_parameters(config).get("rope_theta", 10000.0)),
        rope_scaling=_rope_scaling(config),
        max_position_embeddings=config.get("max_position_embeddings", 2048),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        # Qwen2 always has q/k/v biases (and none on o_proj); Llama's `attention_bias` sets all four.
        attention_bias=model_type == "qwen2" or bool(config.get("attention_bias", False)),
        o_proj_bias=model_type != "qwen2" and bool(config.get("attention_bias", False)),
        mlp_bias=bool(config.get("mlp_bias", False)),
        sliding_window=_sliding_window(config),
        bos_token_id=config.get("bos_token_id"),
        eos_token_ids=_as_tuple(config.get("eos_token_id")),
        torch_dtype=config.get("torch_dtype") or config.get("dtype"),
    )


def _rope_parameters(config: dict[str, Any]) -> dict[str, Any]:
    """transformers 5 keeps rope settings in `rope_parameters`; 4.x in `rope_theta`/`rope_scaling`."""
    params = dict(config.get("rope_parameters") or {})
    params.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    for key, value in (config.get("rope_scaling") or {}).items():
        params.setdefault(key, value)
    return params


def _rope_scaling(config: dict[str, Any]) -> dict[str, Any] | None:
    params = _rope_parameters(config)
    rope_type = params.get("rope_type") or params.get("type") or "default"
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise UnsupportedModelError(
            f"rope scaling {rope_type!r} is not supported (supported: {', '.join(SUPPORTED_ROPE_TYPES)})"
        )
    if rope_type == "default":
        return None
    return {**{k: v for k, v in params.items() if k != "rope_theta"}, "rope_type": rope_type}


def _sliding_window(config: dict[str, Any]) -> int | None:
    if config.get("model_type") == "qwen2" and not config.get("use_sliding_window", False):
        return None
    return config.get("sliding_window")


def _as_tuple(value: int | list[int] | None) -> tuple[int, ...]:
    if value is None:
        return ()
    return tuple(value) if isinstance(value, list | tuple) else (value,)
