import pytest
import torch

from fleetlm.kernels.paged_prefill_attention import paged_prefill_attention
from fleetlm.kernels.reference import paged_prefill_attention_ref

# (query_len, seq_len) per chunk: single tokens, block boundaries, chunks without a cached prefix
# and with one, and a prefix longer than a 64-token step (the unmasked part of the loop).
CHUNKS = [(1, 1), (1, 17), (5, 5), (16, 16), (17, 33), (15, 48), (33, 70), (3, 130), (40, 150)]


def _inputs(device, dtype, num_heads, num_kv_heads, head_dim, block_size, chunks, query=None):
    torch.manual_seed(0)
    query_lens = [q for q, _ in chunks]
    seq_lens = [s for _, s in chunks]
    max_blocks = -(-max(seq_lens) // block_size)
    num_blocks = len(chunks) * max_blocks + 3
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    key_cache = torch.randn(shape, dtype=dtype, device=device)
    value_cache = torch.randn(shape, dtype=dtype, device=device)
    # Each chunk gets distinct, shuffled blocks; the padding entries point anywhere.
    block_ids = torch.randperm(num_blocks, device=device)[: len(chunks) * max_blocks]
    block_tables = block_ids.view(len(chunks), max_blocks).to(torch.int32)
    if query is None:
        query = torch.randn(sum(query_lens), num_heads, head_dim, dtype=dtype, device=device)
    starts = torch.tensor([0, *query_lens], device=device).cumsum(0).to(torch.int32)
    seq_lens = torch.tensor(seq_lens, dtype=torch.int32, device=device)
    return query, key_cache, value_cache, block_tables, starts, seq_lens


def _check(inputs, max_query_len, scale, tolerance):
    query, key_cache, value_cache, block_tables, starts, seq_lens = inputs
    out = paged_prefill_attention(
        query, key_cache, value_cache, block_tables, starts, seq_lens, max_query_len, scale
    )
    expected = paged_prefill_attention_ref(
        query, key_cache, value_cache, block_tables, starts, seq_lens, scale
    )
    torch.testing.assert_close(out, expected, atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize(("num_heads", "num_kv_heads"), [(4, 4), (8, 2), (16, 2)])  # GQA 1/4/8
@pytest.mark.parametrize("block_size", [16, 32])
def test_paged_prefill_attention_matches_reference(
    device, head_dim, num_heads, num_kv_heads, block_size
):
    inputs = _inputs(device, torch.float32, num_heads, num_kv_heads, head_dim, block_size, CHUNKS)
    # float32: the kernel uses IEEE dot products (no TF32), so the tolerance is tight on GPUs too.
    _check(inputs, max(q for q, _ in CHUNKS), head_dim**-0.5, 1e-4)


@pytest.mark.parametrize(
    "chunks",
    [
        [(200, 200)],  # one long prompt: several row tiles, 64-token steps
        [(3, 3), (1, 64), (64, 64), (65, 129)],  # short tiles and step boundaries
    ],
)
@pytest.mark.parametrize(("num_heads", "num_kv_heads"), [(4, 4), (6, 2)])  # GQA 1, 3
def test_paged_prefill_attention_row_tiles(device, chunks, num_heads, num_kv_heads):
    # GQA 3 splits a token's heads across row tiles.
    inputs = _inputs(device, torch.float32, num_heads, num_kv_heads, 64, 16, chunks)
    _check(inputs, max(q for q, _ in chunks), 0.125, 1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_paged_prefill_attention_half_precision(device, dtype):
    if device == "cpu" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter has no bfloat16 (numpy); covered on the GPU")
    inputs = _inputs(device, dtype, 8, 2, 64, 16, CHUNKS)
    _check(inputs, max(q for q, _ in CHUNKS), 0.125, 2e-2)


def test_paged_prefill_attention_strided_query(device):
    num_heads, num_kv_heads, head_dim = 8, 2, 64
    num_tokens = sum(q for q, _ in CHUNKS)
    width = (num_heads + 2 * num_kv_heads) * head_dim
    # The query as a view into one fused qkv row, as the model produces it.
    qkv = torch.randn(num_tokens, width, device=device)
    query = qkv[:, : num_heads * head_dim].view(num_tokens, num_heads, head_dim)
    inputs = _inputs(
        device, torch.float32, num_heads, num_kv_heads, head_dim, 32, CHUNKS, query=query
    )
    assert not query.is_contiguous()
    _check(inputs, max(q for q, _ in CHUNKS), 0.125, 1e-4)


def test_paged_prefill_attention_writes_into_out(device):
    query, *rest = _inputs(device, torch.float32, 4, 4, 64, 16, [(5, 20)])
    out = torch.full_like(query, float("nan"))
    result = paged_prefill_attention(query, *rest, 5, 0.125, out=out)
    assert result is out and not out.isnan().any()


def test_unsupported_shapes_are_refused(device):
    inputs = _inputs(device, torch.float32, 4, 4, 64, 8, [(3, 9)])
    with pytest.raises(AssertionError, match="block_size and head_dim"):
        paged_prefill_attention(*inputs, 3, 0.125)
