"""Paged attention for decode: one query token per sequence, flash-decoding style.

NOTE: a program handles one (sequence, KV head, split). It loads each KV block of its split
once for all the query heads sharing that KV head (grouped-query attention), keeps an online
softmax (running max and sum), and writes an unnormalised partial result. It walks its blocks
a tile of several blocks (64 tokens) at a time: one 16-token block per iteration leaves too
few bytes in flight to approach the memory bandwidth. Long contexts are cut
into splits so short batches still fill the GPU; a second kernel merges the splits by their
maxima and sums. With one split the merge is a plain division.

Each sequence's blocks are divided among the splits inside the kernel, from its own length, and
the loops run only over real blocks: the launch depends on the batch size and the block table's
width alone, so a CUDA graph captured once serves every context length.
"""

import functools

import torch
import triton
import triton.language as tl

TILE_TOKENS = 64  # tokens of KV loaded per iteration (a whole number of blocks)


# Integer arguments that vary from step to step are not specialised on (== 1, multiple of 16):
# each distinct specialisation would compile again in the middle of serving.
@triton.jit(do_not_specialize=["num_seqs", "block_table_stride", "num_splits"])
def _decode_split_kernel(
    partial_out_ptr,  # [num_splits, num_seqs, num_heads, head_dim] float32, unnormalised
    partial_max_ptr,  # [num_splits, num_seqs, num_heads] float32
    partial_sum_ptr,  # [num_splits, num_seqs, num_heads] float32
    query_ptr,  # [num_seqs, num_heads, head_dim]
    key_cache_ptr,  # [num_blocks, block_size, num_kv_heads, head_dim]
    value_cache_ptr,  # [num_blocks, block_size, num_kv_heads, head_dim]
    block_tables_ptr,  # [num_seqs, max_blocks]
    seq_lens_ptr,  # [num_seqs]
    scale,
    num_seqs,
    block_table_stride,
    query_seq_stride,
    num_splits,
    NUM_HEADS: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    GROUP: tl.constexpr,  # query heads per KV head
    GROUP_PAD: tl.constexpr,  # GROUP rounded up to a power of two, at least 16 (tl.dot)
    HEAD_DIM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCKS_PER_TILE: tl.constexpr,  # KV blocks loaded per iteration
    DOT_PRECISION: tl.constexpr,  # "ieee" for float32 inputs (no TF32 rounding), else "tf32"
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq)
    num_blocks = tl.cdiv(seq_len, BLOCK_SIZE)
    blocks_per_split = tl.cdiv(num_blocks, num_splits)
    first_block = split * blocks_per_split
    end_block = tl.minimum(first_block + blocks_per_split, num_blocks)

    offs_g = tl.arange(0, GROUP_PAD)
    offs_d = tl.arange(0, HEAD_DIM)
    offs_t = tl.arange(0, BLOCKS_PER_TILE * BLOCK_SIZE)  # tokens of a tile
    tile_block = offs_t // BLOCK_SIZE  # each token's block, counted from the tile's first
    in_block = offs_t % BLOCK_SIZE
    heads = kv_head * GROUP + offs_g
    head_mask = offs_g < GROUP
    query = tl.load(
        query_ptr + seq * query_seq_stride + heads[:, None] * HEAD_DIM + offs_d[None, :],
        mask=head_mask[:, None],
        other=0.0,
    )

    row_max = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    row_sum = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD_DIM], tl.float32)
    kv_offsets = (
        in_block[:, None] * (NUM_KV_HEADS * HEAD_DIM) + kv_head * HEAD_DIM + offs_d[None, :]
    )
    # Splits past the end (short sequences, padding rows with seq_len 0) run no iteration and
    # store max -inf, which the merge weighs 0.
    for tile_first in range(first_block, end_block, BLOCKS_PER_TILE):
        blocks = tile_first + tile_block
        in_split = blocks < end_block  # the last tile may stick out of the split
        block_ids = tl.load(
            block_tables_ptr + seq * block_table_stride + blocks, mask=in_split, other=0
        ).to(tl.int64)
        base = block_ids * (BLOCK_SIZE * NUM_KV_HEADS * HEAD_DIM)
        in_context = in_split & ((blocks * BLOCK_SIZE + in_block) < seq_len)
        key = tl.load(
            key_cache_ptr + base[:, None] + kv_offsets, mask=in_context[:, None], other=0.0
        )
        value = tl.load(
            value_cache_ptr + base[:, None] + kv_offsets, mask=in_context[:, None], other=0.0
        )
        scores = tl.dot(query, tl.trans(key), input_precision=DOT_PRECISION).to(tl.float32) * scale
        scores = tl.where(in_context[None, :], scores, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(scores, axis=1))
        # Nothing seen yet (max -inf): subtract 0 so exp gives 0, not nan.
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        probs = tl.exp(scores - shift[:, None])
        correction = tl.exp(row_max - shift)
        row_sum = row_sum * correction + tl.sum(probs, axis=1)
        acc = acc * correction[:, None] + tl.dot(
            probs.to(value.dtype), value, input_precision=DOT_PRECISION
        ).to(tl.float32)
        row_max = new_max

    stat_offsets = (split * num_seqs + seq) * NUM_HEADS + heads
    tl.store(partial_max_ptr + stat_offsets, row_max, mask=head_mask)
    tl.store(partial_sum_ptr + stat_offsets, row_sum, mask=head_mask)
    tl.store(
        partial_out_ptr + stat_offsets[:, None] * HEAD_DIM + offs_d[None, :],
        acc,
        mask=head_mask[:, None],
    )


@triton.jit(do_not_specialize=["num_seqs", "num_splits"])
def _merge_splits_kernel(
    out_ptr,  # [num_seqs, num_heads, head_dim]
    partial_out_ptr,  # [num_splits, num_seqs, num_heads, head_dim] float32
    partial_max_ptr,  # [num_splits, num_seqs, num_heads] float32
    partial_sum_ptr,  # [num_splits, num_seqs, num_heads] float32
    num_seqs,
    num_splits,
    NUM_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    SPLITS_PAD: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    offs_s = tl.arange(0, SPLITS_PAD)
    offs_d = tl.arange(0, HEAD_DIM)
    split_mask = offs_s < num_splits
    stats = (offs_s * num_seqs + seq) * NUM_HEADS + head
    maxima = tl.load(partial_max_ptr + stats, mask=split_mask, other=float("-inf"))
    sums = tl.load(partial_sum_ptr + stats, mask=split_mask, other=0.0)
    overall = tl.max(maxima, axis=0)
    overall = tl.where(overall == float("-inf"), 0.0, overall)  # a padding row: no -inf - -inf
    # Empty splits have max -inf: their weight is 0 (and must not become nan).
    weights = tl.where(maxima == float("-inf"), 0.0, tl.exp(maxima - overall))
    outs = tl.load(
        partial_out_ptr + stats[:, None] * HEAD_DIM + offs_d[None, :],
        mask=split_mask[:, None],
        other=0.0,
    )
    total = tl.sum(weights * sums, axis=0)
    # A padding row (no context at all) has total 0: write zeros, not nan.
    result = tl.sum(outs * weights[:, None], axis=0) / tl.where(total == 0.0, 1.0, total)
    tl.store(
        out_ptr + (seq * NUM_HEADS + head) * HEAD_DIM + offs_d, result.to(out_ptr.dtype.element_ty)
    )


def paged_decode_attention(
    query: torch.Tensor,  # [num_seqs, num_heads, head_dim]
    key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    value_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    block_tables: torch.Tensor,  # [num_seqs, max_blocks] int
    seq_lens: torch.Tensor,  # [num_seqs] int; 0 marks a padding row (its output is 0)
    scale: float,
    num_splits: int | None = None,
    out: torch.Tensor | None = None,
    tile_tokens: int = TILE_TOKENS,
) -> torch.Tensor:  # [num_seqs, num_heads, head_dim]
    num_seqs, num_heads, head_dim = query.shape
    _, block_size, num_kv_heads, _ = key_cache.shape
    assert num_heads % num_kv_heads == 0 and key_cache.shape[3] == head_dim
    assert supports(block_size, head_dim), "tl.dot needs block_size and head_dim >= 16"
    assert key_cache.is_contiguous() and value_cache.is_contiguous()
    assert query.stride(2) == 1 and query.stride(1) == head_dim
    assert block_tables.shape[0] == num_seqs and block_tables.stride(1) == 1
    assert seq_lens.shape == (num_seqs,)
    max_blocks = block_tables.shape[1]
    if num_splits is None:
        num_splits = choose_num_splits(num_seqs * num_kv_heads, max_blocks, query.device)
    num_splits = max(1, min(num_splits, max_blocks))
    group = num_heads // num_kv_heads
    f32 = {"dtype": torch.float32, "device": query.device}
    partial_out = torch.empty((num_splits, num_seqs, num_heads, head_dim), **f32)
    partial_max = torch.empty((num_splits, num_seqs, num_heads), **f32)
    partial_sum = torch.empty((num_splits, num_seqs, num_heads), **f32)
    _decode_split_kernel[(num_seqs, num_kv_heads, num_splits)](
        partial_out,
        partial_max,
        partial_sum,
        query,
        key_cache,
        value_cache,
        block_tables,
        seq_lens,
        scale,
        num_seqs,
        block_tables.stride(0),
        query.stride(0),
        num_splits,
        NUM_HEADS=num_heads,
        NUM_KV_HEADS=num_kv_heads,
        GROUP=group,
        GROUP_PAD=max(16, triton.next_power_of_2(group)),
        HEAD_DIM=head_dim,
        BLOCK_SIZE=block_size,
        BLOCKS_PER_TILE=max(1, tile_tokens // block_size),
        DOT_PRECISION="ieee" if query.dtype == torch.float32 else "tf32",
    )
    if out is None:
        out = torch.empty_like(query)
    assert out.is_contiguous() and out.shape == query.shape
    _merge_splits_kernel[(num_seqs, num_heads)](
        out,
        partial_out,
        partial_max,
        partial_sum,
        num_seqs,
        num_splits,
        NUM_HEADS=num_heads,
        HEAD_DIM=head_dim,
        SPLITS_PAD=triton.next_power_of_2(num_splits),
    )
    return out


def supports(block_size: int, head_dim: int) -> bool:
    """Shapes the kernel handles: tl.dot needs dimensions of at least 16 (powers of two)."""
    return all(n >= 16 and n & (n - 1) == 0 for n in (block_size, head_dim))


def choose_num_splits(num_programs: int, max_blocks: int, device: torch.device) -> int:
    """Enough splits for about two programs per multiprocessor, each covering 4+ blocks."""
    if device.type != "cuda":
        return max(1, min(4, max_blocks))
    num_sms = _num_sms(device.index if device.index is not None else torch.cuda.current_device())
    wanted = triton.cdiv(2 * num_sms, max(num_programs, 1))
    return max(1, min(wanted, triton.cdiv(max_blocks, 4)))


@functools.cache
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count
