"""The attention backend for CUDA: Triton kernels for the KV write, for decode attention and
for prompt chunks reading their cached prefix."""

import torch

from fleetlm.engine.layers.attention import AttentionMetadata, TorchAttentionBackend
from fleetlm.kernels.kv_cache_write import write_kv_cache
from fleetlm.kernels.paged_decode_attention import paged_decode_attention, supports
from fleetlm.kernels.paged_prefill_attention import paged_prefill_attention


class TritonAttentionBackend(TorchAttentionBackend):
    """Shapes the kernels do not handle (tl.dot needs block_size and head_dim >= 16, e.g. tiny
    test models with 4-token blocks) take the PyTorch path."""

    def write_kv_cache(self, key, value, kv_cache, slot_mapping) -> None:
        write_kv_cache(key, value, kv_cache[0], kv_cache[1], slot_mapping)

    def prefill(self, query, kv_cache, metadata: AttentionMetadata, scale) -> torch.Tensor:
        block_size, _, head_dim = kv_cache.shape[2:]
        if not supports(block_size, head_dim):
            return super().prefill(query, kv_cache, metadata, scale)
        return paged_prefill_attention(
            query,
            kv_cache[0],
            kv_cache[1],
            metadata.chunk_block_tables,
            metadata.chunk_query_start_loc,
            metadata.chunk_seq_lens_tensor,
            metadata.max_chunk_query_len,
            scale,
        )

    def decode(self, query, kv_cache, block_tables, seq_lens, scale) -> torch.Tensor:
        block_size, _, head_dim = kv_cache.shape[2:]
        if not supports(block_size, head_dim):
            return super().decode(query, kv_cache, block_tables, seq_lens, scale)
        return paged_decode_attention(
            query.contiguous(), kv_cache[0], kv_cache[1], block_tables, seq_lens, scale
        )
