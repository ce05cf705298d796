"""Roofline of a decode step: the device's measured copy bandwidth and matmul rate, and the
fastest TPOT that bandwidth allows for a model config at a batch size and context length.

    .venv/bin/python benchmarks/roofline.py                       # CPU: small buffers, float32
    python3 benchmarks/roofline.py --model benchmarks/configs/llama-3.1-8b --batch-size 1 \
        --input-len 512 --output-len 512 --output roofline.json    # GPU

Definitions (also written into the JSON):
- copy bandwidth: `dst.copy_(src)` of N bytes moves N bytes read + N bytes written, so the
  bandwidth is 2N / time (median over timed copies, after warm-up; CUDA events on GPU).
- matmul rate: 2·n³ FLOP / time of an n×n×n product (bf16 n=8192 on CUDA, float32 n=1024 on
  CPU), median.
- bytes a decode step reads: every weight once (all layers' q/k/v/o, gate/up/down, norms, the
  final norm, and the lm_head, counted once when tied to the embeddings; the embedding table
  itself is not read, only `batch` rows of it, which are not counted), plus the KV cache of
  the context: 2 (K and V) × layers × kv_heads × head_dim × dtype bytes × context × batch.
- context: the mean over the decode of an input-len / output-len request, i.e. input-len +
  output-len / 2 (the prefill produces the first token; each later step attends over one more).
- roofline TPOT = bytes per step / copy bandwidth. Nothing decodes faster on this device.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        default=str(Path(__file__).resolve().parent / "configs" / "llama-3.1-8b"),
        help="HF directory (only its config.json is read)",
    )
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--input-len", type=int, default=512)
    parser.add_argument("--output-len", type=int, default=512)
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPE_BYTES))
    parser.add_argument(
        "--copy-gib", type=float, default=None, help="copy buffer size (default: 2 CUDA, 0.25 CPU)"
    )
    parser.add_argument("--matmul-n", type=int, default=None, help="default: 8192 CUDA, 1024 CPU")
    parser.add_argument("--iters", type=int, default=20, help="timed repetitions of each")
    parser.add_argument("--output", default=None, help="write the JSON result here")
    return parser.parse_args(argv)


def _median_seconds(fn, iters: int, warmup: int, device: str) -> float:
    """Median time of fn() over iters calls after warmup calls (CUDA events on GPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def copy_bandwidth(device: str, num_bytes: int, iters: int) -> dict:
    """Bytes moved per second by dst.copy_(src): 2 × num_bytes (read + write) / time."""
    src = torch.full((num_bytes,), 7, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    seconds = _median_seconds(lambda: dst.copy_(src), iters, warmup=3, device=device)
    return {
        "buffer_bytes": num_bytes,
        "median_copy_s": seconds,
        "bandwidth_bytes_per_s": 2 * num_bytes / seconds,
        "definition": "2 x buffer bytes (read + write) / median time of dst.copy_(src)",
    }


def matmul_rate(device: str, n: int, dtype: torch.dtype, iters: int) -> dict:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = _median_seconds(lambda: a @ b, iters, warmup=3, device=device)
    return {
        "n": n,
        "dtype": str(dtype).removeprefix("torch."),
        "median_matmul_s": seconds,
        "tflops": 2 * n**3 / seconds / 1e12,
        "definition": "2 n^3 FLOP / median time of an n x n x n product (random data)",
    }


def measure_device(copy_gib: float | None = None, matmul_n: int | None = None, iters: int = 20):
    """Copy bandwidth and matmul rate of the current device (CUDA if present, else CPU)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    on_gpu = device == "cuda"
    copy_gib = copy_gib if copy_gib is not None else (2.0 if on_gpu else 0.25)
    matmul_n = matmul_n if matmul_n is not None else (8192 if on_gpu else 1024)
    result = {
        "device": torch.cuda.get_device_name() if on_gpu else "cpu",
        "torch": torch.__version__,
        "copy": copy_bandwidth(device, int(copy_gib * 2**30), iters),
        "matmul": matmul_rate(
            device, matmul_n, torch.bfloat16 if on_gpu else torch.float32, iters if on_gpu else 5
        ),
    }
    if not on_gpu:
        result["torch_threads"] = torch.get_num_threads()
    return result


def decode_bytes(config: dict, batch: int, context_len: int, dtype_bytes: int) -> dict:
    """Bytes one decode step must read: weights (see the module docstring) and the KV cache."""
    hidden = config["hidden_size"]
    layers = config["num_hidden_layers"]
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    inter = config["intermediate_size"]
    attn = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2  # q, o; k, v
    if config.get("attention_bias"):
        attn += (heads + 2 * kv_heads) * head_dim + hidden
    mlp = 3 * hidden * inter + (2 * inter + hidden if config.get("mlp_bias") else 0)
    layer_params = attn + mlp + 2 * hidden  # two RMSNorms
    lm_head_params = config["vocab_size"] * hidden
    weight_params = layers * layer_params + hidden + lm_head_params  # + the final norm
    kv_bytes = 2 * layers * kv_heads * head_dim * dtype_bytes * context_len * batch
    return {
        "weight_params": weight_params,
        "weight_bytes": weight_params * dtype_bytes,
        "lm_head_bytes": lm_head_params * dtype_bytes,
        "embedding_bytes_not_counted": (
            0 if config.get("tie_word_embeddings") else lm_head_params * dtype_bytes
        ),
        "kv_bytes_per_token": 2 * layers * kv_heads * head_dim * dtype_bytes,
        "kv_bytes": kv_bytes,
        "total_bytes": weight_params * dtype_bytes + kv_bytes,
    }


def roofline_tpot_ms(
    config: dict, bandwidth_bytes_per_s: float, batch: int, context_len: int, dtype_bytes: int
) -> float:
    """The fastest decode step (ms) the bandwidth allows: bytes read per step / bandwidth."""
    return decode_bytes(config, batch, context_len, dtype_bytes)["total_bytes"] / (
        bandwidth_bytes_per_s / 1e3
    )


def main(argv=None) -> None:
    args = parse_args(argv)
    config = json.loads((Path(args.model) / "config.json").read_text())
    measured = measure_device(args.copy_gib, args.matmul_n, args.iters)
    bandwidth = measured["copy"]["bandwidth_bytes_per_s"]
    dtype_bytes = DTYPE_BYTES[args.dtype]
    context = args.input_len + args.output_len / 2
    step = decode_bytes(config, args.batch_size, round(context), dtype_bytes)
    tpot = roofline_tpot_ms(config, bandwidth, args.batch_size, round(context), dtype_bytes)
    # For comparison with figures that count the untied embedding table as read too.
    tpot_with_embedding = (step["total_bytes"] + step["embedding_bytes_not_counted"]) / (
        bandwidth / 1e3
    )
    report = {
        "benchmark": "roofline",
        "config": {k: v for k, v in vars(args).items() if k != "output"},
        "machine": measured,
        "decode_step": {
            "context_len": round(context),
            "context_definition": "input_len + output_len / 2: mean context over the decode",
            **step,
            "roofline_tpot_ms": tpot,
            "roofline_output_tokens_per_s": args.batch_size * 1e3 / tpot,
            "roofline_tpot_ms_if_embedding_read": tpot_with_embedding,
        },
    }
    print_report(report)
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n")


def print_report(report: dict) -> None:
    machine, step, cfg = report["machine"], report["decode_step"], report["config"]
    print(f"============ roofline on {machine['device']} ============")
    copy = machine["copy"]
    print(
        f"Copy bandwidth (read+write):  {copy['bandwidth_bytes_per_s'] / 1e12:.3f} TB/s "
        f"({copy['buffer_bytes'] / 2**30:.2f} GiB buffer)"
    )
    mm = machine["matmul"]
    print(f"Matmul {mm['n']}^3 {mm['dtype']}:    {mm['tflops']:.1f} TFLOP/s")
    print(
        f"Decode step of {Path(cfg['model']).name}, batch {cfg['batch_size']}, "
        f"context {step['context_len']}, {cfg['dtype']}:"
    )
    print(f"  weights read:               {step['weight_bytes'] / 1e9:.3f} GB")
    print(f"  KV cache read:              {step['kv_bytes'] / 1e9:.3f} GB")
    print(f"  roofline TPOT:              {step['roofline_tpot_ms']:.3f} ms")
    print(f"  (embedding table counted:   {step['roofline_tpot_ms_if_embedding_read']:.3f} ms)")


if __name__ == "__main__":
    main()
