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


def paged_prefill_attention_ref(
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim]: the chunks' tokens, concatenated
    key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [num_chunks, max_blocks]
    query_start_loc: torch.Tensor,  # [num_chunks + 1]: cumulative query lengths
    seq_lens: torch.Tensor,  # [num_chunks]: context lengths, the chunk included
    scale: float,
) -> torch.Tensor:  # [num_tokens, num_heads, head_dim]
    """Each chunk's tokens, the last positions of its context, attending causally to the cached
    context, in float32."""
    num_heads = query.shape[1]
    group = num_heads // key_cache.shape[2]
    out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    starts = query_start_loc.tolist()
    for i, seq_len in enumerate(seq_lens.tolist()):
        chunk = query[starts[i] : starts[i + 1]].float()  # [Q, H, D]
        key = key_cache[block_tables[i]].flatten(0, 1)[:seq_len].float()  # [L, KVH, D]
        value = value_cache[block_tables[i]].flatten(0, 1)[:seq_len].float()
        key = key.repeat_interleave(group, dim=1)
        value = value.repeat_interleave(group, dim=1)
        scores = torch.einsum("qhd,lhd->hql", chunk, key) * scale
        positions = torch.arange(seq_len - chunk.shape[0], seq_len, device=query.device)
        future = torch.arange(seq_len, device=query.device)[None, :] > positions[:, None]
        scores = scores.masked_fill(future, float("-inf"))
        chunk_out = torch.einsum("hql,lhd->qhd", scores.softmax(-1), value)
        out[starts[i] : starts[i + 1]] = chunk_out.to(query.dtype)
    return out
