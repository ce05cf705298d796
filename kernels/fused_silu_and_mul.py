"""SiLU(gate) * up over a fused gate/up projection, in one pass.

NOTE numerics: the same rounding steps as engine/layers/activation.py, where torch computes
F.silu in float32 and rounds it to the dtype, then the product in float32, rounded again:
    s = (g.f32 / (1 + exp(-g.f32))).to(dtype)
    out = (s.f32 * up.f32).to(dtype)
On CUDA the kernel takes exp from libdevice (what torch's expf is) and divides with IEEE
rounding, as torch does; Triton's interpreter has no libdevice and uses numpy's exp. Where exp
differs in the last float32 bit, s can land one ulp away, and out then within two ulps (out
= s * up keeps s's relative error of at most 2^-mantissa_bits).
"""

import os

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice


@triton.jit
def _silu_and_mul_kernel(
    gate_up_ptr,  # [num_rows, 2 * d], rows may be strided
    out_ptr,  # [num_rows, d], contiguous
    gate_up_stride,
    D: tl.constexpr,
    BLOCK: tl.constexpr,
    USE_LIBDEVICE: tl.constexpr,  # False in the interpreter, which lacks it
):
    row = tl.program_id(0).to(tl.int64)
    offsets = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < D
    gate = tl.load(gate_up_ptr + row * gate_up_stride + offsets, mask=mask, other=0.0)
    up = tl.load(gate_up_ptr + row * gate_up_stride + D + offsets, mask=mask, other=0.0)
    g = gate.to(tl.float32)
    exp = libdevice.exp(-g) if USE_LIBDEVICE else tl.exp(-g)
    silu = tl.div_rn(g, 1.0 + exp).to(gate.dtype)
    out = silu.to(tl.float32) * up.to(tl.float32)
    tl.store(out_ptr + row * D + offsets, out.to(gate.dtype), mask=mask)


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:  # [..., 2 * d] -> [..., d], new
    *leading, two_d = gate_up.shape
    assert two_d % 2 == 0 and gate_up.stride(-1) == 1
    d = two_d // 2
    rows = gate_up.reshape(-1, two_d)  # a view for contiguous or row-strided 2D input
    out = torch.empty((rows.shape[0], d), dtype=gate_up.dtype, device=gate_up.device)
    if rows.shape[0] > 0:
        block = min(triton.next_power_of_2(d), 1024)
        grid = (rows.shape[0], triton.cdiv(d, block))
        _silu_and_mul_kernel[grid](
            rows,
            out,
            rows.stride(0),
            D=d,
            BLOCK=block,
            USE_LIBDEVICE=gate_up.is_cuda and os.environ.get("TRITON_INTERPRET") != "1",
            num_warps=4,
        )
    return out.view(*leading, d)


def silu_and_mul_reference(gate_up: torch.Tensor) -> torch.Tensor:
    """The PyTorch ops the kernel replaces (SiluAndMul)."""
    gate, up = gate_up.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up
