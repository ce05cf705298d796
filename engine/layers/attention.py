"""Paged attention in plain PyTorch (the CPU path; the reference for the GPU kernels)."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class AttentionMetadata:
    """Where this step's tokens go in the paged cache and what each one attends to.

    The batch holds the decode requests first (exactly one new token each), then the
    requests computing a chunk of several tokens.
    """

    slot_mapping: torch.Tensor  # [num_tokens] int64: block_id * block_size + offset; -1 = none
    num_decodes: int
    decode_block_tables: torch.Tensor  # [num_decodes, max_blocks] int64 (padded with 0)
    decode_seq_lens: torch.Tensor  # [num_decodes] int64: context length incl. the new token
    chunk_query_lens: list[int]  # [num_chunks]: new tokens of each chunked request
    chunk_seq_lens: list[int]  # [num_chunks]: context length incl. the chunk
    chunk_block_tables: torch.Tensor  # [num_chunks, max_blocks] int64 (padded with 0)
    chunk_query_start_loc: torch.Tensor  # [num_chunks + 1] int64: cumulative query lengths
    chunk_seq_lens_tensor: torch.Tensor  # [num_chunks] int64: chunk_seq_lens on the device
    max_chunk_query_len: int

    @property
    def num_chunks(self) -> int:
        return len(self.chunk_query_lens)


class TorchAttentionBackend:
    """Paged attention in PyTorch ops: the CPU path and the reference for the GPU kernels.

    A backend writes the step's new K/V into the cache and computes attention over it; the
    model holds one and calls `forward` in every layer.
    """

    def forward(
        self,
        query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
        key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
        value: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
        kv_cache: torch.Tensor,  # [2, num_blocks, block_size, num_kv_heads, head_dim]
        metadata: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:  # [num_tokens, num_heads, head_dim]
        self.write_kv_cache(key, value, kv_cache, metadata.slot_mapping)
        output = torch.empty_like(query)
        num_decodes = metadata.num_decodes
        if num_decodes:
            output[:num_decodes] = self.decode(
                query[:num_decodes],
                kv_cache,
                metadata.decode_block_tables,
                metadata.decode_seq_lens,
                scale,
            )
        if metadata.num_chunks:
            output[num_decodes:] = self.prefill(query[num_decodes:], kv_cache, metadata, scale)
        return output

    def write_kv_cache(self, key, value, kv_cache, slot_mapping) -> None:
        num_kv_heads, head_dim = key.shape[1:]
        kv_cache[0].view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, key)
        kv_cache[1].view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, value)

    def prefill(self, query, kv_cache, metadata: AttentionMetadata, scale) -> torch.Tensor:
        """Each chunk's tokens attend causally to their request's cached context."""
        output = torch.empty_like(query)
        start = 0
        for i, (query_len, seq_len) in enumerate(
            zip(metadata.chunk_query_lens, metadata.chunk_seq_lens, strict=True)
        ):
            end = start + query_len
            block_table = metadata.chunk_block_tables[i, : -(-seq_len // kv_cache.shape[2])]
            output[start:end] = _chunk_attention(
                query[start:end], kv_cache, block_table, seq_len, scale
            )
            start = end
        return output

    def decode(self, query, kv_cache, block_tables, seq_lens, scale) -> torch.Tensor:
        """One query per request. The G query heads sharing a KV head act as G queries of one
        head (no mask between them), which avoids expanding K/V for grouped-query attention."""
        key, value = gather_kv(kv_cache, block_tables)  # [B, L, KVH, D]
        batch, max_len, num_kv_heads, head_dim = key.shape
        positions = torch.arange(max_len, device=query.device)
        mask = positions[None, :] < seq_lens[:, None]  # [B, L]
        out = F.scaled_dot_product_attention(
            query.view(batch, num_kv_heads, -1, head_dim),  # [B, KVH, G, D]
            key.transpose(1, 2),  # [B, KVH, L, D]
            value.transpose(1, 2),
            attn_mask=mask[:, None, None, :],
            scale=scale,
        )
        return out.reshape(query.shape)


def attention_backend_for(device: torch.device) -> TorchAttentionBackend:
    """Triton kernels on CUDA, PyTorch ops elsewhere."""
    if device.type == "cuda":
        from fleetlm.engine.layers.triton_attention import TritonAttentionBackend

        return TritonAttentionBackend()
    return TorchAttentionBackend()


def gather_kv(
    kv_cache: torch.Tensor, block_table: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V of the blocks in `block_table` ([..., num_blocks]) as [..., tokens, heads, dim]."""
    key = kv_cache[0][block_table]
    value = kv_cache[1][block_table]
    return key.flatten(-4, -3), value.flatten(-4, -3)


def _chunk_attention(query, kv_cache, block_table, seq_len, scale):
    """Causal attention of a chunk of `query_len` tokens that ends at position seq_len - 1."""
    key, value = gather_kv(kv_cache, block_table)
    key, value = key[:seq_len].transpose(0, 1), value[:seq_len].transpose(0, 1)  # [KVH, L, D]
    query_len = query.shape[0]
    if query_len == seq_len:
        mask, is_causal = None, True
    else:
        query_pos = torch.arange(seq_len - query_len, seq_len, device=query.device)
        mask = torch.arange(seq_len, device=query.device)[None, :] <= query_pos[:, None]
        is_causal = False
    out = F.scaled_dot_product_attention(
        query.transpose(0, 1),
        key,
        value,
        attn_mask=mask,
        is_causal=is_causal,
        scale=scale,
        enable_gqa=True,
    )
    return out.transpose(0, 1)
