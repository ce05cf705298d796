"""RMSNorm, optionally fused with the residual add before it, in one pass over each row.

NOTE numerics: the same rounding steps as engine/layers/layernorm.py (and `residual + x`):
    h = residual + x                      # rounded to x.dtype, as torch's add
    y = (h.f32 * rsqrt(mean(h.f32^2) + eps)).to(dtype)
    out = (weight.f32 * y.f32).to(out dtype)  # torch's half `weight * y`: fp32, rounded once
Only the order of the sum of squares (and, on CUDA, possibly the approximate rsqrt) differs
from torch's, so float32 results agree to a few float32 ulps; in half precision y is
bit-identical or, where it lands on a rounding boundary, one ulp away, and out = weight * y
then within two ulps (it keeps y's relative error of at most 2^-mantissa_bits).
"""

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(
    x_ptr,  # [num_rows, hidden], rows may be strided
    residual_ptr,  # [num_rows, hidden], rows may be strided; unused without HAS_RESIDUAL
    weight_ptr,  # [hidden]
    out_ptr,  # [num_rows, hidden], contiguous
    new_residual_ptr,  # [num_rows, hidden], contiguous; unused without HAS_RESIDUAL
    x_stride,
    residual_stride,
    eps,
    HIDDEN: tl.constexpr,
    BLOCK: tl.constexpr,  # HIDDEN rounded up to a power of two
    HAS_RESIDUAL: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offsets = tl.arange(0, BLOCK)
    mask = offsets < HIDDEN
    h = tl.load(x_ptr + row * x_stride + offsets, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        residual = tl.load(residual_ptr + row * residual_stride + offsets, mask=mask, other=0.0)
        h = (residual.to(tl.float32) + h.to(tl.float32)).to(h.dtype)
        tl.store(new_residual_ptr + row * HIDDEN + offsets, h, mask=mask)
    h = h.to(tl.float32)
    mean_square = tl.sum(h * h, axis=0) * (1.0 / HIDDEN)  # as torch's CUDA mean
    y = (h * tl.rsqrt(mean_square + eps)).to(x_ptr.dtype.element_ty)
    weight = tl.load(weight_ptr + offsets, mask=mask, other=0.0)
    out = weight.to(tl.float32) * y.to(tl.float32)
    tl.store(out_ptr + row * HIDDEN + offsets, out.to(out_ptr.dtype.element_ty), mask=mask)


def rms_norm(
    x: torch.Tensor,  # [num_rows, hidden]; rows may be strided
    weight: torch.Tensor,  # [hidden]
    eps: float,
    residual: torch.Tensor | None = None,  # [num_rows, hidden], x.dtype
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm(x), or with a residual (RMSNorm(residual + x), residual + x). Outputs are new
    contiguous tensors; `out` has torch's promoted dtype of weight and x, as the layer's."""
    num_rows, hidden = x.shape
    assert x.stride(1) == 1 and weight.shape == (hidden,) and weight.is_contiguous()
    out = torch.empty(
        (num_rows, hidden), dtype=torch.promote_types(weight.dtype, x.dtype), device=x.device
    )
    new_residual = None
    if residual is not None:
        assert residual.shape == x.shape and residual.dtype == x.dtype
        assert residual.stride(1) == 1
        new_residual = torch.empty((num_rows, hidden), dtype=x.dtype, device=x.device)
    if num_rows > 0:
        block = triton.next_power_of_2(hidden)
        _rms_norm_kernel[(num_rows,)](
            x,
            x if residual is None else residual,
            weight,
            out,
            out if new_residual is None else new_residual,
            x.stride(0),
            0 if residual is None else residual.stride(0),
            eps,
            HIDDEN=hidden,
            BLOCK=block,
            HAS_RESIDUAL=residual is not None,
            num_warps=min(max(block // 256, 1), 8),
        )
    return out if new_residual is None else (out, new_residual)


def rms_norm_reference(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The PyTorch ops the kernel replaces: `residual + x`, then the RMSNorm layer."""
    h = x if residual is None else residual + x
    y = h.float()
    y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + eps)
    out = weight * y.to(h.dtype)
    return out if residual is None else (out, h)
