"""The attention backend for CUDA: Triton kernels for the KV write and for decode attention.

Prompt chunks still use the PyTorch path (a Triton chunk kernel reading the cached prefix is
the next step of the GPU work).
"""

import torch

from fleetlm.engine.layers.attention import TorchAttentionBackend
from fleetlm.kernels.kv_cache_write import write_kv_cache
from fleetlm.kernels.paged_decode_attention import paged_decode_attention, supports


class TritonAttentionBackend(TorchAttentionBackend):
    def write_kv_cache(self, key, value, kv_cache, slot_mapping) -> None:
        write_kv_cache(key, value, kv_cache[0], kv_cache[1], slot_mapping)

    def decode(self, query, kv_cache, block_tables, seq_lens, scale) -> torch.Tensor:
        block_size, _, head_dim = kv_cache.shape[2:]
        if not supports(block_size, head_dim):  # e.g. tiny test models with 4-token blocks
            return super().decode(query, kv_cache, block_tables, seq_lens, scale)
        return paged_decode_attention(
            query.contiguous(), kv_cache[0], kv_cache[1], block_tables, seq_lens, scale
        )
