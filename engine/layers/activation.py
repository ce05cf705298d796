"""SiLU-and-multiply over a fused gate/up projection."""

import torch
import torch.nn.functional as F
from torch import nn


class SiluAndMul(nn.Module):
    def forward(self, gate_up: torch.Tensor) -> torch.Tensor:  # [..., 2 * d] -> [..., d]
        if gate_up.is_cuda:  # one Triton kernel, same rounding (kernels/fused_silu_and_mul.py)
            from fleetlm.kernels.fused_silu_and_mul import silu_and_mul

            return silu_and_mul(gate_up)
        gate, up = gate_up.chunk(2, dim=-1)
        return F.silu(gate) * up
