"""Paged attention for prompt chunks (prefill), flash-attention-2 style.

NOTE: each request of the batch computes a chunk of query_len new tokens, the last ones of its
context of seq_len tokens; their K/V are already in the paged cache, after the cached prefix. A
program handles one (chunk, tile of BLOCK_M query rows, KV head). The rows of a tile are the
chunk's (token, query head) pairs of that KV head, flattened token-major (row r is token
r // GROUP, head r % GROUP), so each K/V tile read from the cache serves every query head sharing
it (grouped-query attention) and any GROUP fills tl.dot's M dimension without padding heads.
The program walks the context in tiles of BLOCK_N tokens (several cache blocks; each token's slot
comes from the block table) with an online softmax in float32 and base 2, and stops after the
last position its rows can see. Tiles wholly before the tile's first query position need no
causal mask; only the tiles on the diagonal are masked. So every row sees at least one key in
the first tile it walks, and the running maximum is finite from then on.
"""

import torch
import triton
import triton.language as tl

from fleetlm.kernels.paged_decode_attention import supports

__all__ = ["paged_prefill_attention", "supports"]

LOG2_E = 1.4426950408889634


@triton.jit
def _attend_range(
    acc,  # [BLOCK_M, HEAD_DIM] float32, unnormalised output
    row_sum,  # [BLOCK_M] float32
    row_max,  # [BLOCK_M] float32, in base-2 units
    query,  # [BLOCK_M, HEAD_DIM]
    key_cache_ptr,  # [num_blocks, block_size, num_kv_heads, head_dim]
    value_cache_ptr,  # [num_blocks, block_size, num_kv_heads, head_dim]
    block_table_ptr,  # [max_blocks]: this chunk's row of the block tables
    kv_head,
    positions,  # [BLOCK_M] context position of each row's token
    qk_scale,  # scale * log2(e)
    start,  # a multiple of BLOCK_N
    end,  # the first position no row sees
    NUM_KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr,  # mask keys past each row's position, and past `end`
    DOT_PRECISION: tl.constexpr,
):
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    for tile_start in range(start, end, BLOCK_N):
        n = tile_start + offs_n
        if CAUSAL:
            in_context = n < end
            block_ids = tl.load(block_table_ptr + n // BLOCK_SIZE, mask=in_context, other=0)
        else:
            block_ids = tl.load(block_table_ptr + n // BLOCK_SIZE)
        slots = block_ids.to(tl.int64) * BLOCK_SIZE + n % BLOCK_SIZE
        kv_offsets = (slots[:, None] * NUM_KV_HEADS + kv_head) * HEAD_DIM + offs_d[None, :]
        if CAUSAL:
            key = tl.load(key_cache_ptr + kv_offsets, mask=in_context[:, None], other=0.0)
            value = tl.load(value_cache_ptr + kv_offsets, mask=in_context[:, None], other=0.0)
        else:
            key = tl.load(key_cache_ptr + kv_offsets)
            value = tl.load(value_cache_ptr + kv_offsets)
        scores = tl.dot(query, tl.trans(key), input_precision=DOT_PRECISION) * qk_scale
        if CAUSAL:
            # positions < end, so this also masks the keys past the context.
            scores = tl.where(n[None, :] <= positions[:, None], scores, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(scores, axis=1))
        probs = tl.math.exp2(scores - new_max[:, None])
        correction = tl.math.exp2(row_max - new_max)
        row_sum = row_sum * correction + tl.sum(probs, axis=1)
        acc = acc * correction[:, None] + tl.dot(
            probs.to(value.dtype), value, input_precision=DOT_PRECISION
        )
        row_max = new_max
    return acc, row_sum, row_max


# The block tables' width varies from step to step: not specialised on, so it compiles once.
@triton.jit(do_not_specialize=["block_table_stride"])
def _prefill_kernel(
    out_ptr,  # [num_tokens, num_heads, head_dim], contiguous
    query_ptr,  # [num_tokens, num_heads, head_dim], rows may be strided
    key_cache_ptr,  # [num_blocks, block_size, num_kv_heads, head_dim], contiguous
    value_cache_ptr,  # [num_blocks, block_size, num_kv_heads, head_dim], contiguous
    block_tables_ptr,  # [num_chunks, max_blocks]
    query_start_loc_ptr,  # [num_chunks + 1]
    seq_lens_ptr,  # [num_chunks]
    qk_scale,  # scale * log2(e): the softmax runs in base 2
    block_table_stride,
    query_token_stride,
    NUM_HEADS: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    GROUP: tl.constexpr,  # query heads per KV head
    HEAD_DIM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr,  # (token, head) rows per program
    BLOCK_N: tl.constexpr,  # context tokens per step, a multiple of BLOCK_SIZE
    DOT_PRECISION: tl.constexpr,  # "ieee" for float32 inputs (no TF32 rounding), else "tf32"
):
    chunk = tl.program_id(0)
    kv_head = tl.program_id(2)
    query_start = tl.load(query_start_loc_ptr + chunk)
    query_len = tl.load(query_start_loc_ptr + chunk + 1) - query_start
    first_row = tl.program_id(1) * BLOCK_M
    if first_row >= query_len * GROUP:
        return
    prefix_len = tl.load(seq_lens_ptr + chunk) - query_len

    rows = first_row + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    # Rows past the chunk repeat its last token: in bounds, never stored.
    tokens = tl.minimum(rows // GROUP, query_len - 1)
    heads = kv_head * GROUP + rows % GROUP
    positions = prefix_len + tokens
    token_rows = (query_start + tokens).to(tl.int64)
    query = tl.load(
        query_ptr
        + token_rows[:, None] * query_token_stride
        + heads[:, None] * HEAD_DIM
        + offs_d[None, :]
    )

    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    row_sum = tl.zeros([BLOCK_M], tl.float32)
    row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    block_table_ptr = block_tables_ptr + chunk.to(tl.int64) * block_table_stride
    first_position = prefix_len + first_row // GROUP
    end = prefix_len + tl.minimum((first_row + BLOCK_M - 1) // GROUP, query_len - 1) + 1
    num_unmasked = (first_position + 1) // BLOCK_N * BLOCK_N
    acc, row_sum, row_max = _attend_range(
        acc, row_sum, row_max, query, key_cache_ptr, value_cache_ptr, block_table_ptr,
        kv_head, positions, qk_scale, 0, num_unmasked,
        NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE, BLOCK_N, False, DOT_PRECISION,
    )  # fmt: skip
    acc, row_sum, row_max = _attend_range(
        acc, row_sum, row_max, query, key_cache_ptr, value_cache_ptr, block_table_ptr,
        kv_head, positions, qk_scale, num_unmasked, end,
        NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE, BLOCK_N, True, DOT_PRECISION,
    )  # fmt: skip

    out = acc / row_sum[:, None]
    tl.store(
        out_ptr + (token_rows[:, None] * NUM_HEADS + heads[:, None]) * HEAD_DIM + offs_d[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=(rows < query_len * GROUP)[:, None],
    )


def paged_prefill_attention(
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim]: the chunks' tokens, concatenated
    key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    value_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    block_tables: torch.Tensor,  # [num_chunks, max_blocks] int32 or int64
    query_start_loc: torch.Tensor,  # [num_chunks + 1] int32: [0, q0, q0 + q1, ...]
    seq_lens: torch.Tensor,  # [num_chunks] int32: context lengths, the chunk included
    max_query_len: int,
    scale: float,
    out: torch.Tensor | None = None,  # [num_tokens, num_heads, head_dim], contiguous
) -> torch.Tensor:  # [num_tokens, num_heads, head_dim]
    """Each chunk's tokens are the last positions of its context; a token at position p
    attends to the cached positions 0..p of its request."""
    num_tokens, num_heads, head_dim = query.shape
    _, block_size, num_kv_heads, _ = key_cache.shape
    num_chunks = seq_lens.shape[0]
    assert num_heads % num_kv_heads == 0 and key_cache.shape[3] == head_dim
    assert supports(block_size, head_dim), "tl.dot needs block_size and head_dim >= 16"
    assert value_cache.shape == key_cache.shape
    assert key_cache.is_contiguous() and value_cache.is_contiguous()
    # Each token's heads must be contiguous; tokens may be strided (views into a fused qkv).
    assert query.stride(2) == 1 and query.stride(1) == head_dim
    assert block_tables.shape[0] == num_chunks and block_tables.stride(1) == 1
    assert query_start_loc.shape == (num_chunks + 1,)
    if out is None:
        out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    assert out.is_contiguous() and out.shape == query.shape
    if num_tokens == 0 or max_query_len == 0:
        return out
    group = num_heads // num_kv_heads
    config = _launch_config(max_query_len * group, block_size, head_dim)
    grid = (num_chunks, triton.cdiv(max_query_len * group, config["BLOCK_M"]), num_kv_heads)
    _prefill_kernel[grid](
        out,
        query,
        key_cache,
        value_cache,
        block_tables,
        query_start_loc,
        seq_lens,
        scale * LOG2_E,
        block_tables.stride(0),
        query.stride(0),
        NUM_HEADS=num_heads,
        NUM_KV_HEADS=num_kv_heads,
        GROUP=group,
        HEAD_DIM=head_dim,
        BLOCK_SIZE=block_size,
        DOT_PRECISION="ieee" if query.dtype == torch.float32 else "tf32",
        **config,
    )
    return out


def _launch_config(max_rows: int, block_size: int, head_dim: int) -> dict[str, int]:
    """Tiles of 128 rows (64 for other head sizes) x 64 context tokens, 4 warps, 2 stages: the
    fastest of those tried on an H100 in bf16. Fewer rows for short chunks (at least 16, for
    tl.dot); at least one whole cache block per step."""
    most_rows = 128 if head_dim == 128 else 64
    return {
        "BLOCK_M": max(16, min(most_rows, triton.next_power_of_2(max_rows))),
        "BLOCK_N": max(64, block_size),
        "num_warps": 4,
        "num_stages": 2,
    }
