"""The paged prompt-chunk attention kernel against dense causal `scaled_dot_product_attention`
(contiguous K/V, no paging: the ceiling) on the GPU, in bf16.

    python3 benchmarks/prefill_attention.py --output prefill_attention.json

Each case: chunks of (query_len, context_len) over a randomly permuted paged cache. Figures are
the median of `triton.testing.do_bench`; TF/s counts the causal attention's useful FLOPs.
"""

import argparse
import json

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench

from fleetlm.kernels.paged_prefill_attention import paged_prefill_attention

# name -> (chunks as (query_len, context_len), heads, kv heads, head_dim, block_size)
CASES = {
    "1x8192, no prefix": ([(8192, 8192)], 32, 8, 128, 16),
    "16x512 after a 1536 prefix": ([(512, 2048)] * 16, 32, 8, 128, 16),
    "4x2048, no GQA": ([(2048, 2048)] * 4, 32, 32, 128, 16),
    "8x1024, head_dim 64, GQA 4": ([(1024, 1024)] * 8, 32, 8, 64, 16),
    "256x1 after a 2047 prefix": ([(1, 2048)] * 256, 32, 8, 128, 16),
}


def paged_inputs(chunks, num_heads, num_kv_heads, head_dim, block_size):
    torch.manual_seed(0)
    bf16 = {"dtype": torch.bfloat16, "device": "cuda"}
    query_lens = [q for q, _ in chunks]
    max_blocks = triton.cdiv(max(s for _, s in chunks), block_size)
    num_blocks = len(chunks) * max_blocks
    cache_shape = (num_blocks, block_size, num_kv_heads, head_dim)
    block_tables = torch.randperm(num_blocks, device="cuda").view(len(chunks), max_blocks)
    return (
        torch.randn(sum(query_lens), num_heads, head_dim, **bf16),
        torch.randn(cache_shape, **bf16),
        torch.randn(cache_shape, **bf16),
        block_tables.int(),
        torch.tensor([0, *query_lens], device="cuda").cumsum(0).int(),
        torch.tensor([s for _, s in chunks], dtype=torch.int32, device="cuda"),
        max(query_lens),
    )


def causal_flops(chunks, num_heads, head_dim) -> int:
    """2 matmuls x 2 FLOPs per (query, visible key) pair per head dimension."""
    pairs = sum(q * s - q * (q - 1) // 2 for q, s in chunks)
    return 4 * num_heads * head_dim * pairs


def run_case(chunks, num_heads, num_kv_heads, head_dim, block_size) -> dict:
    args = paged_inputs(chunks, num_heads, num_kv_heads, head_dim, block_size)
    scale = head_dim**-0.5
    paged_ms = do_bench(lambda: paged_prefill_attention(*args, scale), return_mode="median")
    flops = causal_flops(chunks, num_heads, head_dim)
    result = {"paged_us": paged_ms * 1e3, "paged_tflops": flops / paged_ms / 1e9}
    if all(q == s for q, s in chunks) and len(set(chunks)) == 1:  # dense has no prefix
        shape = (len(chunks), num_heads, chunks[0][0], head_dim)
        q, k, v = (torch.randn(shape, dtype=torch.bfloat16, device="cuda") for _ in range(3))
        dense_ms = do_bench(
            lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), return_mode="median"
        )
        result.update(
            sdpa_us=dense_ms * 1e3,
            sdpa_tflops=flops / dense_ms / 1e9,
            paged_over_sdpa_rate=dense_ms / paged_ms,
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", default=None, help="write the JSON result here")
    args = parser.parse_args()
    results = {}
    for name, case in CASES.items():
        results[name] = run_case(*case)
        r = results[name]
        dense = (
            f", SDPA {r['sdpa_us']:.0f} us ({r['sdpa_tflops']:.0f} TF/s)" if "sdpa_us" in r else ""
        )
        print(f"{name:30s} paged {r['paged_us']:7.0f} us ({r['paged_tflops']:.0f} TF/s){dense}")
    if args.output:
        report = {"device": torch.cuda.get_device_name(), "results": results}
        with open(args.output, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
