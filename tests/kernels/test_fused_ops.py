"""The fused RMSNorm / SiLU-and-mul / rotary kernels against the PyTorch ops they replace
(each module's `*_reference`, run on the same device; on CUDA the engine's layers call the
kernels themselves, so the layers are checked against the references on the CPU only).

What is asserted: RMSNorm and SiLU-and-mul to 1e-5 in float32 (they sum or exponentiate in
another order or precision than torch); in float16 and bfloat16 at least 99% of the elements
bit-identical and all within two ulps: their intermediate (the normalized row, silu(gate)) is
rounded to the dtype as in torch and may land one ulp away, which the final product with the
weight or `up` turns into at most two ulps of the output. Rotary, with no reduction and no
transcendental, bit-identical in every dtype. bfloat16 runs on the GPU only (Triton's
interpreter has no bfloat16)."""

import pytest
import torch

from fleetlm.engine.layers.activation import SiluAndMul
from fleetlm.engine.layers.layernorm import RMSNorm
from fleetlm.engine.layers.rotary import RotaryEmbedding
from fleetlm.kernels.fused_rms_norm import rms_norm, rms_norm_reference
from fleetlm.kernels.fused_rotary import apply_rotary, apply_rotary_reference
from fleetlm.kernels.fused_silu_and_mul import silu_and_mul, silu_and_mul_reference

DTYPES = [
    torch.float32,
    torch.float16,
    pytest.param(
        torch.bfloat16,
        marks=pytest.mark.skipif(
            not torch.cuda.is_available(), reason="Triton's interpreter has no bfloat16"
        ),
    ),
]


def _ordered_bits(x: torch.Tensor) -> torch.Tensor:
    """16-bit floats as integers that count ulps across zero (sign-magnitude -> two's)."""
    bits = x.view(torch.int16).int()
    return torch.where(bits < 0, -(bits & 0x7FFF), bits)


def assert_matches(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    if actual.dtype == torch.float32:
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
        return
    ulps = (_ordered_bits(actual) - _ordered_bits(expected)).abs()
    assert ulps.max().item() <= 2, f"{ulps.max().item()} ulps apart"
    assert (ulps == 0).float().mean().item() >= 0.99


def _rows(num_rows: int, hidden: int, is_strided: bool, dtype, device) -> torch.Tensor:
    """[num_rows, hidden], contiguous or a column slice of a wider tensor."""
    if not is_strided:
        return torch.randn(num_rows, hidden, dtype=dtype, device=device)
    return torch.randn(num_rows, hidden + 24, dtype=dtype, device=device)[:, 8 : 8 + hidden]


@pytest.mark.parametrize("hidden", [64, 96, 128])
@pytest.mark.parametrize("is_strided", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_matches_layer(device, hidden, is_strided, dtype):
    torch.manual_seed(0)
    layer = RMSNorm(hidden, eps=1e-5).to(device=device, dtype=dtype)
    layer.weight.data.normal_(1.0, 0.5)
    x = _rows(9, hidden, is_strided, dtype, device)
    with torch.no_grad():
        assert_matches(
            rms_norm(x, layer.weight, layer.eps), rms_norm_reference(x, layer.weight, layer.eps)
        )


@pytest.mark.parametrize("hidden", [64, 96])
@pytest.mark.parametrize("is_strided", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_with_residual_matches_add_then_layer(device, hidden, is_strided, dtype):
    torch.manual_seed(0)
    layer = RMSNorm(hidden, eps=1e-6).to(device=device, dtype=dtype)
    layer.weight.data.normal_(1.0, 0.5)
    x = _rows(9, hidden, is_strided, dtype, device)
    residual = _rows(9, hidden, is_strided, dtype, device) * 4
    with torch.no_grad():
        out, new_residual = rms_norm(x, layer.weight, layer.eps, residual=residual)
        expected_residual = residual + x
        torch.testing.assert_close(new_residual, expected_residual, atol=0, rtol=0)
        assert_matches(out, rms_norm_reference(expected_residual, layer.weight, layer.eps))


@pytest.mark.parametrize("d", [64, 96, 1100])  # 1100: two column tiles, the second partial
@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_and_mul_matches_layer(device, d, dtype):
    torch.manual_seed(0)
    gate_up = torch.randn(2, 3, 2 * d, dtype=dtype, device=device) * 3
    assert_matches(silu_and_mul(gate_up), silu_and_mul_reference(gate_up))


def test_silu_and_mul_strided_rows(device):
    torch.manual_seed(0)
    gate_up = torch.randn(5, 2 * 64 + 16, dtype=torch.float16, device=device)[:, 16:]
    assert_matches(silu_and_mul(gate_up), silu_and_mul_reference(gate_up))


@pytest.mark.parametrize("head_dim", [64, 96, 128])
@pytest.mark.parametrize(("num_heads", "num_kv_heads"), [(4, 4), (8, 2), (6, 2)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_matches_layer(device, head_dim, num_heads, num_kv_heads, dtype):
    torch.manual_seed(0)
    num_tokens, max_position = 7, 4096
    scaling = {"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 2048}
    layer = RotaryEmbedding(head_dim, max_position, base=500000.0, scaling=scaling)
    cos_cache, sin_cache = layer.cos_cache.to(device), layer.sin_cache.to(device)
    layer.cos_cache, layer.sin_cache = cos_cache, sin_cache
    # Q and K as views into one fused qkv row, as the model produces them.
    q_size, kv_size = num_heads * head_dim, num_kv_heads * head_dim
    qkv = torch.randn(num_tokens, q_size + 2 * kv_size, dtype=dtype, device=device)
    query = qkv[:, :q_size].view(num_tokens, num_heads, head_dim)
    key = qkv[:, q_size : q_size + kv_size].view(num_tokens, num_kv_heads, head_dim)
    positions = torch.randint(0, max_position, (num_tokens,), device=device)
    query_out, key_out = apply_rotary(positions, query, key, cos_cache, sin_cache)
    expected_query, expected_key = apply_rotary_reference(
        positions, query, key, cos_cache, sin_cache
    )
    torch.testing.assert_close(query_out, expected_query, atol=0, rtol=0)
    torch.testing.assert_close(key_out, expected_key, atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_layers_are_the_references(dtype):
    """The layers' own PyTorch path (CPU) computes exactly what the references compute."""
    torch.manual_seed(0)
    norm = RMSNorm(96, eps=1e-6).to(dtype=dtype)
    norm.weight.data.normal_(1.0, 0.5)
    x, residual = torch.randn(5, 96, dtype=dtype), torch.randn(5, 96, dtype=dtype)
    with torch.no_grad():
        assert torch.equal(norm(x), rms_norm_reference(x, norm.weight, norm.eps))
        for got, want in zip(
            norm(x, residual), rms_norm_reference(x, norm.weight, norm.eps, residual), strict=True
        ):
            assert torch.equal(got, want)
    gate_up = torch.randn(5, 128, dtype=dtype)
    assert torch.equal(SiluAndMul()(gate_up), silu_and_mul_reference(gate_up))
    rotary = RotaryEmbedding(64, 128, base=10000.0, scaling=None)
    positions = torch.tensor([0, 5, 127])
    query, key = torch.randn(3, 4, 64, dtype=dtype), torch.randn(3, 2, 64, dtype=dtype)
    expected = apply_rotary_reference(positions, query, key, rotary.cos_cache, rotary.sin_cache)
    for got, want in zip(rotary(positions, query, key), expected, strict=True):
        assert torch.equal(got, want)
