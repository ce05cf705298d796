import pytest
import torch

from fleetlm.kernels.kv_cache_write import write_kv_cache
from fleetlm.kernels.reference import write_kv_cache_ref


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("num_kv_heads", [1, 2])
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_write_kv_cache_matches_reference(device, head_dim, num_kv_heads, block_size, dtype):
    torch.manual_seed(0)
    num_tokens, num_blocks = 11, 6
    # K and V as views into one fused qkv row, as the model produces them.
    qkv = torch.randn(num_tokens, 3 * num_kv_heads * head_dim, dtype=dtype, device=device)
    key = qkv[:, : num_kv_heads * head_dim].view(num_tokens, num_kv_heads, head_dim)
    value = qkv[:, 2 * num_kv_heads * head_dim :].view(num_tokens, num_kv_heads, head_dim)
    slots = torch.randperm(num_blocks * block_size, device=device)[:num_tokens]
    slots[[3, 7]] = -1  # padding slots are skipped
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    caches = [torch.randn(shape, dtype=dtype, device=device) for _ in range(2)]
    expected = [c.clone() for c in caches]
    write_kv_cache(key, value, *caches, slots)
    write_kv_cache_ref(key, value, *expected, slots)
    torch.testing.assert_close(caches[0], expected[0], atol=0, rtol=0)
    torch.testing.assert_close(caches[1], expected[1], atol=0, rtol=0)
