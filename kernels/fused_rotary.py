"""Rotary position embedding (rotate-half layout) on query and key, one program per token.

NOTE numerics: the same rounding steps as engine/layers/rotary.py, which casts the float32
cos/sin rows to the tensor dtype and then computes `x * cos + rotate_half(x) * sin` in it:
    c, s = cos_cache[pos].to(dtype), sin_cache[pos].to(dtype)
    a = (x.f32 * c.f32).to(dtype);  b = (rotate_half(x).f32 * s.f32).to(dtype)
    out = (a.f32 + b.f32).to(dtype)
There is no reduction, so results are bit-identical to torch's in every dtype; for float32
that needs the multiply and add kept apart (no FMA), hence enable_fp_fusion=False.
"""

import torch
import triton
import triton.language as tl


@triton.jit
def _rotate(
    x_ptr,  # [num_heads, head_dim] of one token, heads contiguous
    out_ptr,  # [num_heads, head_dim] of one token, contiguous
    cos,  # [1, HEAD_BLOCK] float32, already rounded through the tensor dtype
    sin,  # [1, HEAD_BLOCK]
    rotated,  # [1, HEAD_BLOCK]: the column rotate_half reads
    sign,  # [1, HEAD_BLOCK]: -1 for the first half, +1 for the second
    NUM_HEADS: tl.constexpr,
    HEADS_BLOCK: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HEAD_BLOCK: tl.constexpr,
):
    heads = tl.arange(0, HEADS_BLOCK)[:, None]
    dims = tl.arange(0, HEAD_BLOCK)[None, :]
    mask = (heads < NUM_HEADS) & (dims < HEAD_DIM)
    x = tl.load(x_ptr + heads * HEAD_DIM + dims, mask=mask, other=0.0)
    x_rot = tl.load(x_ptr + heads * HEAD_DIM + rotated, mask=mask, other=0.0)
    a = (x.to(tl.float32) * cos).to(x.dtype)
    b = (x_rot.to(tl.float32) * sign * sin).to(x.dtype)
    out = a.to(tl.float32) + b.to(tl.float32)
    tl.store(out_ptr + heads * HEAD_DIM + dims, out.to(x.dtype), mask=mask)


@triton.jit
def _rotary_kernel(
    positions_ptr,  # [num_tokens]
    query_ptr,  # [num_tokens, num_heads, head_dim], tokens may be strided
    key_ptr,  # [num_tokens, num_kv_heads, head_dim], tokens may be strided
    cos_cache_ptr,  # [max_position, head_dim] float32, contiguous
    sin_cache_ptr,  # [max_position, head_dim] float32, contiguous
    query_out_ptr,  # [num_tokens, num_heads, head_dim], contiguous
    key_out_ptr,  # [num_tokens, num_kv_heads, head_dim], contiguous
    query_stride,
    key_stride,
    NUM_HEADS: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    HEADS_BLOCK: tl.constexpr,  # NUM_HEADS rounded up to a power of two
    KV_HEADS_BLOCK: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HEAD_BLOCK: tl.constexpr,  # HEAD_DIM rounded up to a power of two
):
    token = tl.program_id(0).to(tl.int64)
    position = tl.load(positions_ptr + token).to(tl.int64)
    dims = tl.arange(0, HEAD_BLOCK)[None, :]
    dim_mask = dims < HEAD_DIM
    dtype = query_ptr.dtype.element_ty
    cos = tl.load(cos_cache_ptr + position * HEAD_DIM + dims, mask=dim_mask, other=0.0)
    sin = tl.load(sin_cache_ptr + position * HEAD_DIM + dims, mask=dim_mask, other=0.0)
    cos = cos.to(dtype).to(tl.float32)
    sin = sin.to(dtype).to(tl.float32)
    half = HEAD_DIM // 2
    is_first_half = dims < half
    rotated = tl.where(is_first_half, dims + half, dims - half)
    sign = tl.where(is_first_half, -1.0, 1.0)
    _rotate(
        query_ptr + token * query_stride,
        query_out_ptr + token * NUM_HEADS * HEAD_DIM,
        cos,
        sin,
        rotated,
        sign,
        NUM_HEADS,
        HEADS_BLOCK,
        HEAD_DIM,
        HEAD_BLOCK,
    )
    _rotate(
        key_ptr + token * key_stride,
        key_out_ptr + token * NUM_KV_HEADS * HEAD_DIM,
        cos,
        sin,
        rotated,
        sign,
        NUM_KV_HEADS,
        KV_HEADS_BLOCK,
        HEAD_DIM,
        HEAD_BLOCK,
    )


def apply_rotary(
    positions: torch.Tensor,  # [num_tokens] int
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim]; tokens may be strided
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]; tokens may be strided
    cos_cache: torch.Tensor,  # [max_position, head_dim] float32
    sin_cache: torch.Tensor,  # [max_position, head_dim] float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotated (query, key) as new contiguous tensors; the inputs are left as they were."""
    num_tokens, num_heads, head_dim = query.shape
    num_kv_heads = key.shape[1]
    assert key.shape == (num_tokens, num_kv_heads, head_dim) and key.dtype == query.dtype
    assert positions.shape == (num_tokens,) and head_dim % 2 == 0
    assert cos_cache.shape[1] == head_dim and sin_cache.shape == cos_cache.shape
    assert cos_cache.dtype == sin_cache.dtype == torch.float32
    assert cos_cache.is_contiguous() and sin_cache.is_contiguous()
    # Each token's heads must be contiguous; tokens may be strided (views into a fused qkv).
    assert query.stride(2) == 1 and query.stride(1) == head_dim
    assert key.stride(2) == 1 and key.stride(1) == head_dim
    query_out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    key_out = torch.empty(key.shape, dtype=key.dtype, device=key.device)
    if num_tokens > 0:
        _rotary_kernel[(num_tokens,)](
            positions,
            query,
            key,
            cos_cache,
            sin_cache,
            query_out,
            key_out,
            query.stride(0),
            key.stride(0),
            NUM_HEADS=num_heads,
            NUM_KV_HEADS=num_kv_heads,
            HEADS_BLOCK=triton.next_power_of_2(num_heads),
            KV_HEADS_BLOCK=triton.next_power_of_2(num_kv_heads),
            HEAD_DIM=head_dim,
            HEAD_BLOCK=triton.next_power_of_2(head_dim),
            enable_fp_fusion=False,
        )
    return query_out, key_out


def apply_rotary_reference(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    cos_cache: torch.Tensor,
    sin_cache: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The PyTorch ops the kernel replaces (RotaryEmbedding.forward)."""
    cos = cos_cache[positions].to(query.dtype).unsqueeze(1)
    sin = sin_cache[positions].to(query.dtype).unsqueeze(1)

    def rotate_half(x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

    return query * cos + rotate_half(query) * sin, key * cos + rotate_half(key) * sin
