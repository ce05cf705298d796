import pytest
import torch

from fleetlm.kernels.paged_decode_attention import paged_decode_attention
from fleetlm.kernels.reference import paged_decode_attention_ref

# Context lengths: 1, block boundaries and ragged ones.
SEQ_LENS = [1, 15, 16, 17, 33, 64, 70]


def _inputs(device, dtype, num_heads, num_kv_heads, head_dim, block_size, seq_lens):
    torch.manual_seed(0)
    max_blocks = -(-max(seq_lens) // block_size)
    num_blocks = len(seq_lens) * max_blocks + 3
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    key_cache = torch.randn(shape, dtype=dtype, device=device)
    value_cache = torch.randn(shape, dtype=dtype, device=device)
    # Each sequence gets distinct, shuffled blocks; the padding entries point anywhere.
    block_ids = torch.randperm(num_blocks, device=device)[: len(seq_lens) * max_blocks]
    block_tables = block_ids.view(len(seq_lens), max_blocks).to(torch.int32)
    query = torch.randn(len(seq_lens), num_heads, head_dim, dtype=dtype, device=device)
    seq_lens = torch.tensor(seq_lens, dtype=torch.int32, device=device)
    return query, key_cache, value_cache, block_tables, seq_lens


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize(("num_heads", "num_kv_heads"), [(4, 4), (8, 2), (16, 2)])  # GQA 1/4/8
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("num_splits", [1, 3])
def test_paged_decode_attention_matches_reference(
    device, head_dim, num_heads, num_kv_heads, block_size, num_splits
):
    dtype = torch.float32
    query, key_cache, value_cache, block_tables, seq_lens = _inputs(
        device, dtype, num_heads, num_kv_heads, head_dim, block_size, SEQ_LENS
    )
    scale = head_dim**-0.5
    out = paged_decode_attention(
        query, key_cache, value_cache, block_tables, seq_lens, scale, num_splits=num_splits
    )
    expected = paged_decode_attention_ref(
        query, key_cache, value_cache, block_tables, seq_lens, scale
    )
    # float32: the kernel uses IEEE dot products (no TF32), so the tolerance is tight on GPUs too.
    tolerance = 1e-4
    torch.testing.assert_close(out, expected, atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_paged_decode_attention_half_precision(device, dtype):
    if device == "cpu" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter has no bfloat16 (numpy); covered on the GPU")
    query, key_cache, value_cache, block_tables, seq_lens = _inputs(
        device, dtype, 8, 2, 64, 16, SEQ_LENS
    )
    out = paged_decode_attention(
        query, key_cache, value_cache, block_tables, seq_lens, 0.125, num_splits=2
    )
    expected = paged_decode_attention_ref(
        query, key_cache, value_cache, block_tables, seq_lens, 0.125
    )
    torch.testing.assert_close(out, expected, atol=2e-2, rtol=2e-2)


def test_unsupported_shapes_are_refused(device):
    query, key_cache, value_cache, block_tables, seq_lens = _inputs(
        device, torch.float32, 4, 4, 64, 8, [9]
    )
    with pytest.raises(AssertionError, match="block_size and head_dim"):
        paged_decode_attention(query, key_cache, value_cache, block_tables, seq_lens, 0.125)


def test_padding_rows_give_zeros_and_leave_real_rows_alone(device):
    """A CUDA graph runs a padded batch: rows with seq_len 0 must not disturb the others."""
    query, key_cache, value_cache, block_tables, seq_lens = _inputs(
        device, torch.float32, 8, 2, 64, 16, [33, 0, 17, 0]
    )
    out = paged_decode_attention(
        query, key_cache, value_cache, block_tables, seq_lens, 0.125, num_splits=3
    )
    real = [0, 2]
    expected = paged_decode_attention_ref(
        query[real], key_cache, value_cache, block_tables[real], seq_lens[real], 0.125
    )
    torch.testing.assert_close(out[real], expected, atol=1e-4, rtol=1e-4)
    assert torch.equal(out[[1, 3]], torch.zeros_like(out[[1, 3]]))


def test_splits_follow_each_sequence_length(device):
    """More splits than a short sequence has blocks: the extra splits are empty, not wrong."""
    query, key_cache, value_cache, block_tables, seq_lens = _inputs(
        device, torch.float32, 4, 4, 64, 16, [1, 100]
    )
    out = paged_decode_attention(
        query, key_cache, value_cache, block_tables, seq_lens, 0.125, num_splits=5
    )
    expected = paged_decode_attention_ref(
        query, key_cache, value_cache, block_tables, seq_lens, 0.125
    )
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
