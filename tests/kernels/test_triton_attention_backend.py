"""The engine's Triton backend against its PyTorch backend on one mixed step (decodes and a
prompt chunk reading a cached prefix)."""

import torch

from fleetlm.engine.layers.attention import AttentionMetadata, TorchAttentionBackend
from fleetlm.engine.layers.triton_attention import TritonAttentionBackend


def test_triton_backend_matches_the_torch_backend(device):
    torch.manual_seed(0)
    num_heads, num_kv_heads, head_dim, block_size, num_blocks = 8, 2, 64, 16, 12
    kv_cache = torch.randn(2, num_blocks, block_size, num_kv_heads, head_dim, device=device)
    # Two decodes (contexts 20 and 5), a chunk of 6 tokens after 10 cached ones and a
    # whole 18-token prompt crossing a block boundary.
    decode_tables = torch.tensor([[3, 7], [5, 0]], device=device)
    decode_seq_lens = torch.tensor([20, 5], device=device)
    slots = (
        [7 * 16 + 3, 5 * 16 + 4]
        + [9 * 16 + i for i in range(10, 16)]
        + [1 * 16 + i for i in range(16)]
        + [10 * 16 + i for i in range(2)]
    )
    metadata = AttentionMetadata(
        slot_mapping=torch.tensor(slots, device=device),
        num_decodes=2,
        decode_block_tables=decode_tables,
        decode_seq_lens=decode_seq_lens,
        chunk_query_lens=[6, 18],
        chunk_seq_lens=[16, 18],
        chunk_block_tables=torch.tensor([[9, 0], [1, 10]], device=device),
        chunk_query_start_loc=torch.tensor([0, 6, 24], device=device),
        chunk_seq_lens_tensor=torch.tensor([16, 18], device=device),
        max_chunk_query_len=18,
    )
    num_tokens = len(slots)
    query = torch.randn(num_tokens, num_heads, head_dim, device=device)
    key = torch.randn(num_tokens, num_kv_heads, head_dim, device=device)
    value = torch.randn(num_tokens, num_kv_heads, head_dim, device=device)
    expected_cache = kv_cache.clone()
    expected = TorchAttentionBackend().forward(query, key, value, expected_cache, metadata, 0.125)
    out = TritonAttentionBackend().forward(query, key, value, kv_cache, metadata, 0.125)
    torch.testing.assert_close(kv_cache, expected_cache, atol=0, rtol=0)
    tolerance = 1e-4
    torch.testing.assert_close(out, expected, atol=tolerance, rtol=tolerance)
