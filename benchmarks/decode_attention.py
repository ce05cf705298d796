"""The paged decode attention kernel on the GPU, in bf16, as the bandwidth it reaches reading
the KV cache, with tiles of 64 tokens (the default) and of one 16-token block (the kernel before
tiling) measured in the same run.

    python3 benchmarks/decode_attention.py --output decode_attention.json

Shapes of Llama-3.1-8B (32 query heads, 8 KV heads, head_dim 128, blocks of 16 tokens) over a
randomly permuted paged cache. Figures are the median of `triton.testing.do_bench`; the split
count is the kernel's own choice.
"""

import argparse
import json

import torch
import triton
from triton.testing import do_bench

from fleetlm.kernels.paged_decode_attention import TILE_TOKENS, paged_decode_attention

NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE = 32, 8, 128, 16
# (sequences, context length of each)
CASES = [(1, 768), (64, 560), (256, 560), (512, 640), (8, 8192)]


def decode_inputs(num_seqs: int, context_len: int):
    torch.manual_seed(0)
    bf16 = {"dtype": torch.bfloat16, "device": "cuda"}
    max_blocks = triton.cdiv(context_len, BLOCK_SIZE)
    num_blocks = num_seqs * max_blocks
    cache_shape = (num_blocks, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM)
    block_tables = torch.randperm(num_blocks, device="cuda").view(num_seqs, max_blocks)
    return (
        torch.randn(num_seqs, NUM_HEADS, HEAD_DIM, **bf16),
        torch.randn(cache_shape, **bf16),
        torch.randn(cache_shape, **bf16),
        block_tables.int(),
        torch.full((num_seqs,), context_len, dtype=torch.int32, device="cuda"),
    )


def run_case(num_seqs: int, context_len: int) -> dict:
    args = decode_inputs(num_seqs, context_len)
    kv_bytes = 2 * num_seqs * context_len * NUM_KV_HEADS * HEAD_DIM * 2
    result = {"kv_bytes": kv_bytes}
    for label, tile in (("tiled", TILE_TOKENS), ("one_block", BLOCK_SIZE)):
        ms = do_bench(
            lambda tile=tile: paged_decode_attention(*args, HEAD_DIM**-0.5, tile_tokens=tile),
            return_mode="median",
        )
        result[f"{label}_us"] = ms * 1e3
        result[f"{label}_tb_per_s"] = kv_bytes / ms / 1e9
    result["speedup"] = result["one_block_us"] / result["tiled_us"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", default=None, help="write the JSON result here")
    args = parser.parse_args()
    results = {}
    for num_seqs, context_len in CASES:
        name = f"{num_seqs}x{context_len}"
        r = results[name] = run_case(num_seqs, context_len)
        print(
            f"{name:10s} tiled {r['tiled_us']:7.1f} us ({r['tiled_tb_per_s']:.2f} TB/s), "
            f"one block {r['one_block_us']:7.1f} us ({r['one_block_tb_per_s']:.2f} TB/s), "
            f"{r['speedup']:.2f}x"
        )
    if args.output:
        report = {"device": torch.cuda.get_device_name(), "tile_tokens": TILE_TOKENS}
        with open(args.output, "w") as f:
            json.dump({**report, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
