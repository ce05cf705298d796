"""Pure-PyTorch references of the kernels (what the tests compare against)."""

import torch


def write_kv_cache_ref(
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    value: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    value_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    slot_mapping: torch.Tensor,  # [num_tokens]; negative = padding, skipped
) -> None:
    keep = slot_mapping >= 0
    slots = slot_mapping[keep]
    key_cache.view(-1, *key.shape[1:])[slots] = key[keep]
    value_cache.view(-1, *value.shape[1:])[slots] = value[keep]


def paged_decode_attention_ref(
    query: torch.Tensor,  # [num_seqs, num_heads, head_dim]
    key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [num_seqs, max_blocks]
    seq_lens: torch.Tensor,  # [num_seqs]
    scale: float,
) -> torch.Tensor:  # [num_seqs, num_heads, head_dim]
    """One query per sequence attending to its first seq_len cached tokens, in float32."""
    num_heads = query.shape[1]
    num_kv_heads = key_cache.shape[2]
    out = torch.empty_like(query)
    for i, seq_len in enumerate(seq_lens.tolist()):
        key = key_cache[block_tables[i]].flatten(0, 1)[:seq_len].float()  # [L, KVH, D]
        value = value_cache[block_tables[i]].flatten(0, 1)[:seq_len].float()
        key = key.repeat_interleave(num_heads // num_kv_heads, dim=1)
        value = value.repeat_interleave(num_heads // num_kv_heads, dim=1)
        scores = torch.einsum("hd,lhd->hl", query[i].float(), key) * scale
        out[i] = torch.einsum("hl,lhd->hd", scores.softmax(-1), value).to(query.dtype)
    return out
