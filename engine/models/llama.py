"""The Llama family (Llama 2/3, Mistral, Qwen2, SmolLM2), written for the paged KV cache.

q/k/v and gate/up projections are fused into one matmul each; `load_weights` maps Hugging
Face checkpoint names onto the fused parameters.
"""

from collections.abc import Iterable

import torch
from torch import nn

from fleetlm.engine.layers.activation import SiluAndMul
from fleetlm.engine.layers.attention import AttentionMetadata, TorchAttentionBackend
from fleetlm.engine.layers.layernorm import RMSNorm
from fleetlm.engine.layers.rotary import RotaryEmbedding
from fleetlm.engine.model_loader.arch_config import ArchConfig

# checkpoint projection name -> (fused parameter, shard index)
_FUSED_PROJECTIONS = {
    "q_proj": ("qkv_proj", 0),
    "k_proj": ("qkv_proj", 1),
    "v_proj": ("qkv_proj", 2),
    "gate_proj": ("gate_up_proj", 0),
    "up_proj": ("gate_up_proj", 1),
}


class LlamaAttention(nn.Module):
    def __init__(
        self, arch: ArchConfig, max_position: int, attention: TorchAttentionBackend
    ) -> None:
        super().__init__()
        self.attention = attention
        self.num_heads = arch.num_attention_heads
        self.num_kv_heads = arch.num_key_value_heads
        self.head_dim = arch.head_dim
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.shard_sizes = (self.q_size, self.kv_size, self.kv_size)
        self.scale = self.head_dim**-0.5
        self.qkv_proj = nn.Linear(arch.hidden_size, sum(self.shard_sizes), bias=arch.attention_bias)
        self.o_proj = nn.Linear(self.q_size, arch.hidden_size, bias=arch.o_proj_bias)
        self.rotary_emb = RotaryEmbedding(
            self.head_dim, max_position, arch.rope_theta, arch.rope_scaling
        )

    def forward(
        self,
        positions: torch.Tensor,
        hidden: torch.Tensor,
        kv_cache: torch.Tensor,
        metadata: AttentionMetadata,
    ) -> torch.Tensor:
        q, k, v = self.qkv_proj(hidden).split(self.shard_sizes, dim=-1)
        q = q.view(-1, self.num_heads, self.head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        q, k = self.rotary_emb(positions, q, k)
        out = self.attention.forward(q, k, v, kv_cache, metadata, self.scale)
        return self.o_proj(out.flatten(1))


class LlamaMLP(nn.Module):
    def __init__(self, arch: ArchConfig) -> None:
        super().__init__()
        self.shard_sizes = (arch.intermediate_size, arch.intermediate_size)
        self.gate_up_proj = nn.Linear(
            arch.hidden_size, 2 * arch.intermediate_size, bias=arch.mlp_bias
        )
        self.down_proj = nn.Linear(arch.intermediate_size, arch.hidden_size, bias=arch.mlp_bias)
        self.act = SiluAndMul()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_up_proj(x)))


class LlamaDecoderLayer(nn.Module):
    def __init__(
        self, arch: ArchConfig, max_position: int, attention: TorchAttentionBackend
    ) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(arch, max_position, attention)
        self.mlp = LlamaMLP(arch)
        self.input_layernorm = RMSNorm(arch.hidden_size, arch.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(arch.hidden_size, arch.rms_norm_eps)

    def forward(self, positions, hidden, residual, kv_cache, metadata):
        """(sublayer output, residual) in, the same out; the residual adds are fused into
        the norms."""
        if residual is None:
            residual = hidden
            hidden = self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(positions, hidden, kv_cache, metadata)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class LlamaModel(nn.Module):
    def __init__(
        self, arch: ArchConfig, max_position: int, attention: TorchAttentionBackend
    ) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(arch.vocab_size, arch.hidden_size)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(arch, max_position, attention) for _ in range(arch.num_hidden_layers)
        )
        self.norm = RMSNorm(arch.hidden_size, arch.rms_norm_eps)

    def forward(self, input_ids, positions, kv_caches, metadata):
        hidden, residual = self.embed_tokens(input_ids), None
        for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
            hidden, residual = layer(positions, hidden, residual, kv_cache, metadata)
        return self.norm(hidden, residual)[0]


class LlamaForCausalLM(nn.Module):
    def __init__(
        self, arch: ArchConfig, max_position: int, attention: TorchAttentionBackend | None = None
    ) -> None:
        super().__init__()
        self.arch = arch
        self.model = LlamaModel(arch, max_position, attention or TorchAttentionBackend())
        self.lm_head = nn.Linear(arch.hidden_size, arch.vocab_size, bias=False)
        if arch.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(
        self,
        input_ids: torch.Tensor,  # [num_tokens]
        positions: torch.Tensor,  # [num_tokens]
        kv_caches: list[torch.Tensor],  # [num_layers] of [2, num_blocks, block_size, kv_heads, dim]
        metadata: AttentionMetadata,
    ) -> torch.Tensor:  # [num_tokens, hidden_size]
        return self.model(input_ids, positions, kv_caches, metadata)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:  # -> [n, vocab] float32
        return self.lm_head(hidden).float()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy checkpoint tensors in; raise if any parameter was left unset."""
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, tensor in weights:
            if "rotary_emb.inv_freq" in name or (
                name == "lm_head.weight" and self.arch.tie_word_embeddings
            ):
                continue
            target, shard = self._param_target(name)
            if target not in params:
                raise KeyError(f"checkpoint tensor {name!r} has no parameter in the model")
            _copy_shard(params[target], tensor, shard, self._shard_sizes(target))
            loaded.add(f"{target}#{shard}")
        missing = [n for n in params if not _fully_loaded(n, loaded, self._shard_sizes(n))]
        if missing:
            raise ValueError(f"checkpoint is missing weights for: {', '.join(missing[:8])}")

    def _param_target(self, name: str) -> tuple[str, int | None]:
        for proj, (fused, shard) in _FUSED_PROJECTIONS.items():
            if f".{proj}." in name:
                return name.replace(f".{proj}.", f".{fused}."), shard
        return name, None

    def _shard_sizes(self, param_name: str) -> tuple[int, ...] | None:
        if ".qkv_proj." in param_name:
            return self.model.layers[0].self_attn.shard_sizes
        if ".gate_up_proj." in param_name:
            return self.model.layers[0].mlp.shard_sizes
        return None


def _copy_shard(
    param: nn.Parameter,
    tensor: torch.Tensor,
    shard: int | None,
    shard_sizes: tuple[int, ...] | None,
) -> None:
    if shard is None:
        target = param.data
    else:
        offset = sum(shard_sizes[:shard])
        target = param.data.narrow(0, offset, shard_sizes[shard])
    if target.shape != tensor.shape:
        raise ValueError(
            f"shape mismatch: checkpoint {tuple(tensor.shape)} vs parameter {tuple(target.shape)}"
        )
    target.copy_(tensor)


def _fully_loaded(param_name: str, loaded: set[str], shard_sizes: tuple[int, ...] | None) -> bool:
    if shard_sizes is None:
        return f"{param_name}#None" in loaded
    return all(f"{param_name}#{i}" in loaded for i in range(len(shard_sizes)))
