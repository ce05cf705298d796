"""RMSNorm, computed in float32 as Hugging Face Llama does, optionally fused with the residual
add before it (vLLM's layout: each layer passes the un-normalised residual along)."""

import torch
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """norm(x), or with `residual`: (norm(residual + x), residual + x)."""
        if x.is_cuda:  # one Triton kernel, same rounding (kernels/fused_rms_norm.py)
            from fleetlm.kernels.fused_rms_norm import rms_norm

            return rms_norm(x, self.weight, self.eps, residual)
        if residual is not None:
            x = residual + x
            residual = x
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        out = self.weight * h.to(dtype)
        return out if residual is None else (out, residual)
