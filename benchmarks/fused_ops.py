"""Fused Triton kernels (RMSNorm, residual add + RMSNorm, SiLU-and-mul, rotary) against the
PyTorch layers they would replace, at Llama-3.1-8B shapes, per token count.

    python3 benchmarks/fused_ops.py --output fused_ops.json     # GPU: Llama-3.1-8B, bf16
    .venv/bin/python benchmarks/fused_ops.py                   # CPU smoke test: tiny, float32

Method: each op is called `--warmup` times (Triton compiles on the first call), then timed
`--iters` times, one call each, and the median is reported. On CUDA a pair of events brackets
each call. `torch_us` / `fused_us` time eager calls, so they include the launch gaps whenever
the CPU cannot stay ahead of the GPU, as in the engine's eager forward; `*_graph_us` time the
replay of a CUDA graph of one call, i.e. the GPU's work with launches nearly free, as under
CUDA graphs. Inputs are the same every call, so at small token counts they sit in L2. On CPU,
where Triton runs in its interpreter, wall-clock time of tiny shapes only shows that
everything runs.
"""

import argparse
import json
import os
import statistics
import time

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton

from fleetlm.engine.layers.activation import SiluAndMul
from fleetlm.engine.layers.layernorm import RMSNorm
from fleetlm.engine.layers.rotary import RotaryEmbedding
from fleetlm.kernels.fused_rms_norm import rms_norm
from fleetlm.kernels.fused_rotary import apply_rotary
from fleetlm.kernels.fused_silu_and_mul import silu_and_mul

# Llama-3.1-8B on the GPU; a tiny model on CPU, where the interpreter is slow.
SHAPES = {
    "cuda": dict(hidden=4096, intermediate=14336, num_heads=32, num_kv_heads=8, head_dim=128),
    "cpu": dict(hidden=256, intermediate=512, num_heads=4, num_kv_heads=2, head_dim=64),
}
DEFAULTS = {
    "cuda": dict(tokens=[1, 64, 256, 2048, 8192], iters=50, warmup=10, dtype="bfloat16"),
    "cpu": dict(tokens=[1, 8], iters=3, warmup=1, dtype="float32"),
}
MAX_POSITION = 8192
RMS_NORM_EPS = 1e-5


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, nargs="+", default=None)
    parser.add_argument("--iters", type=int, default=None, help="timed calls per op")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--output", default=None, help="write the JSON result here")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for name, value in DEFAULTS[device].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.device = device
    return args


def median_us(fn, iters: int, warmup: int, device: str) -> float:
    for _ in range(warmup):
        fn()
    if device == "cpu":
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e6)
        return statistics.median(times)
    events = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        events.append((start, end))
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) * 1e3 for start, end in events)


def median_graph_us(fn, iters: int, warmup: int) -> float:
    """median_us of replaying a CUDA graph of one fn() call (fn has been warmed up)."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return median_us(graph.replay, iters, warmup, "cuda")


def make_ops(num_tokens: int, shape: dict, dtype: torch.dtype, device: str) -> dict:
    """op name -> (the PyTorch layers' call, the fused kernel's call), on random inputs."""
    hidden, head_dim = shape["hidden"], shape["head_dim"]
    q_size = shape["num_heads"] * head_dim
    kv_size = shape["num_kv_heads"] * head_dim
    norm = RMSNorm(hidden, RMS_NORM_EPS).to(device=device, dtype=dtype)
    x = torch.randn(num_tokens, hidden, dtype=dtype, device=device)
    residual = torch.randn(num_tokens, hidden, dtype=dtype, device=device)
    gate_up = torch.randn(num_tokens, 2 * shape["intermediate"], dtype=dtype, device=device)
    act = SiluAndMul()
    rotary = RotaryEmbedding(head_dim, MAX_POSITION, base=500000.0, scaling=None)
    rotary.cos_cache, rotary.sin_cache = rotary.cos_cache.to(device), rotary.sin_cache.to(device)
    qkv = torch.randn(num_tokens, q_size + 2 * kv_size, dtype=dtype, device=device)
    query = qkv[:, :q_size].view(num_tokens, -1, head_dim)
    key = qkv[:, q_size : q_size + kv_size].view(num_tokens, -1, head_dim)
    positions = torch.randint(0, MAX_POSITION, (num_tokens,), device=device)
    caches = (rotary.cos_cache, rotary.sin_cache)
    return {
        "rms_norm": (lambda: norm(x), lambda: rms_norm(x, norm.weight, norm.eps)),
        "add_rms_norm": (
            lambda: norm(residual + x),
            lambda: rms_norm(x, norm.weight, norm.eps, residual=residual),
        ),
        "silu_and_mul": (lambda: act(gate_up), lambda: silu_and_mul(gate_up)),
        "rotary": (
            lambda: rotary(positions, query, key),
            lambda: apply_rotary(positions, query, key, *caches),
        ),
    }


def main(argv=None) -> None:
    args = parse_args(argv)
    shape = SHAPES[args.device]
    dtype = getattr(torch, args.dtype)
    results: dict[str, dict[str, dict[str, float]]] = {}
    header = f"{'op':<14}{'tokens':>8}{'torch_us':>10}{'fused_us':>10}{'speedup':>9}"
    if args.device == "cuda":
        header += f"{'graph: torch':>14}{'fused':>6}{'speedup':>9}"
    print(header)
    with torch.inference_mode():
        for num_tokens in args.tokens:
            for name, (torch_fn, fused_fn) in make_ops(
                num_tokens, shape, dtype, args.device
            ).items():
                torch_us = median_us(torch_fn, args.iters, args.warmup, args.device)
                fused_us = median_us(fused_fn, args.iters, args.warmup, args.device)
                row = dict(torch_us=torch_us, fused_us=fused_us, speedup=torch_us / fused_us)
                line = f"{name:<14}{num_tokens:>8}{torch_us:>10.1f}{fused_us:>10.1f}"
                line += f"{row['speedup']:>8.2f}x"
                if args.device == "cuda":
                    row["torch_graph_us"] = median_graph_us(torch_fn, args.iters, args.warmup)
                    row["fused_graph_us"] = median_graph_us(fused_fn, args.iters, args.warmup)
                    row["graph_speedup"] = row["torch_graph_us"] / row["fused_graph_us"]
                    line += f"{row['torch_graph_us']:>10.1f}{row['fused_graph_us']:>10.1f}"
                    line += f"{row['graph_speedup']:>8.2f}x"
                results.setdefault(name, {})[str(num_tokens)] = row
                print(line)
    report = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "torch": torch.__version__,
        "dtype": args.dtype,
        "shape": shape,
        "iters": args.iters,
        "warmup": args.warmup,
        "method": "median of per-call times after warm-up; CUDA events on GPU, wall clock on "
        "CPU; *_graph_us: replays of a CUDA graph of one call (GPU only)",
        # op -> num_tokens -> {torch_us, fused_us, speedup[, torch_graph_us, fused_graph_us,
        # graph_speedup]}
        "results": results,
    }
    if args.output:
        with open(args.output, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
