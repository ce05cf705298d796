"""Where a decode step's time goes: runs fleetlm's engine on N requests and profiles a window of
pure decode steps (torch.profiler, CPU + CUDA), then splits the GPU kernel time into GEMM /
attention / other kernels and measures the host gaps (window wall time − GPU busy time).

    .venv/bin/python benchmarks/profile_step.py --num-prompts 2 --input-len 32 --output-len 24 \
        --profile-steps 8                                          # CPU smoke test
    python3 benchmarks/profile_step.py --model benchmarks/configs/llama-3.1-8b \
        --load-format dummy --num-prompts 1 --input-len 512 --output-len 512 --output p.json

Method: a warm-up `generate` of the same prompts (compiles, autotunes, captures whatever the
engine captures), then the prompts again, stepped until every request has its first token
(prefill done); then --profile-steps decode steps timed without the profiler, then as many
under it. GPU busy time is the union of the kernel (and memcpy/memset) intervals of the
profiled window; the idle gap is its wall time minus that, i.e. time the GPU waited on the
host. The profiler's own bookkeeping slows the host down, so the unprofiled step time is
reported beside it. Without CUDA only CPU activities are recorded: kernel figures are empty
and the top CPU ops still show where the host time goes.
"""

import argparse
import json
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

ATTENTION_KEYS = ("attention", "_decode_split", "_merge_splits", "prefill", "flash")
GEMM_KEYS = ("gemm", "cutlass", "sm90", "matmul", "nvjet", "xmma")
DEVICE_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")  # chrome-trace "cat" of GPU work
NUM_TOP = 15


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="model path (default: bundled SmolLM2)")
    parser.add_argument("--load-format", default="auto", choices=["auto", "dummy"])
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--num-prompts", type=int, default=1)
    parser.add_argument("--input-len", type=int, default=512)
    parser.add_argument("--output-len", type=int, default=512)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--max-num-batched-tokens", type=int, default=None)
    parser.add_argument(
        "--window",
        choices=["decode", "prefill"],
        default="decode",
        help="decode: steps after every prompt is in; prefill: the first steps of fresh "
        "prompts (each window on its own requests, the prefix cache reset before it)",
    )
    parser.add_argument("--profile-steps", type=int, default=32, help="decode steps profiled")
    parser.add_argument(
        "--enforce-eager",
        action="store_true",
        help="passed to EngineArgs when it has that option (no CUDA graphs)",
    )
    parser.add_argument(
        "--async-scheduling",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="default: the engine's (on with CUDA)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trace", default=None, help="also keep the chrome trace here")
    parser.add_argument("--output", default=None, help="write the JSON result here")
    return parser.parse_args(argv)


def build_llm(args):
    from fleetlm.engine import LLM

    kwargs = {
        "load_format": args.load_format,
        "dtype": args.dtype,
        "seed": args.seed,
        "max_num_seqs": args.max_num_seqs,
        "max_num_batched_tokens": args.max_num_batched_tokens,
        "max_model_len": args.input_len + args.output_len + 8,
        "enforce_eager": args.enforce_eager,
        "async_scheduling": args.async_scheduling,
    }
    return LLM(args.model, **kwargs)


def model_path(args) -> str:
    if args.model:
        return args.model
    from fleetlm.engine.model_loader.default_model import default_model_dir

    return str(default_model_dir())


def random_prompts(args) -> list[list[int]]:
    vocab = json.loads((Path(model_path(args)) / "config.json").read_text())["vocab_size"]
    rng = np.random.default_rng(args.seed)
    return rng.integers(0, vocab, size=(args.num_prompts, args.input_len)).tolist()


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed_steps(engine, num_steps: int) -> float:
    """Wall seconds of num_steps engine steps, the GPU drained at both ends."""
    synchronize()
    start = time.perf_counter()
    for _ in range(num_steps):
        engine.step()
    synchronize()
    return time.perf_counter() - start


def run(args) -> dict:
    from fleetlm.engine import SamplingParams

    args.model = model_path(args)
    llm = build_llm(args)
    prompts = random_prompts(args)
    params = SamplingParams(
        temperature=1.0, max_tokens=args.output_len, ignore_eos=True, detokenize=False
    )
    warmup = SamplingParams(
        temperature=0.0, max_tokens=min(8, args.output_len), ignore_eos=True, detokenize=False
    )
    llm.generate(prompts, warmup, use_tqdm=False)
    engine = llm.engine
    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    if args.window == "prefill":
        num_prefill_steps = num_steps = args.profile_steps
        unprofiled_s = prefill_window(engine, prompts, params, num_steps, "unprofiled")
        with profile(activities=activities) as prof:
            profiled_s = prefill_window(engine, prompts, params, num_steps, "profiled")
    else:
        ids = [f"profile-{i}" for i in range(len(prompts))]
        for request_id, prompt in zip(ids, prompts, strict=True):
            engine.add_request(request_id, prompt, params)
        num_prefill_steps = step_through_prefill(engine, set(ids))
        # Both windows must stay inside every request's decode.
        num_steps = min(args.profile_steps, (args.output_len - 2) // 2)
        if num_steps < 1:
            raise SystemExit("--output-len is too short for a decode window")
        unprofiled_s = timed_steps(engine, num_steps)
        with profile(activities=activities) as prof:
            profiled_s = timed_steps(engine, num_steps)
        engine.abort_request(ids)
    summary = summarize_trace(prof, args.trace)
    gpu = window_split(summary, profiled_s * 1e3, num_steps) if torch.cuda.is_available() else {}
    return {
        "num_prefill_steps": num_prefill_steps,
        "num_profiled_steps": num_steps,
        "unprofiled_step_ms": unprofiled_s * 1e3 / num_steps,
        "profiled_step_ms": profiled_s * 1e3 / num_steps,
        "window_wall_ms": profiled_s * 1e3,
        **gpu,
        "top_cpu_ops": top_cpu_ops(prof),
    }


def prefill_window(engine, prompts, params, num_steps: int, label: str) -> float:
    """The first num_steps steps of the prompts as fresh requests; then they are aborted."""
    while engine.has_unfinished_requests():  # nothing of an earlier window left in flight
        engine.step()
    engine.reset_prefix_cache()
    ids = [f"{label}-{i}" for i in range(len(prompts))]
    for request_id, prompt in zip(ids, prompts, strict=True):
        engine.add_request(request_id, prompt, params)
    seconds = timed_steps(engine, num_steps)
    engine.abort_request(ids)
    return seconds


def step_through_prefill(engine, request_ids: set[str]) -> int:
    """Step until every request has its first output token; returns the number of steps."""
    started: set[str] = set()
    num_steps = 0
    while started != request_ids:
        for output in engine.step():
            if output.outputs[0].token_ids:
                started.add(output.request_id)
        num_steps += 1
    return num_steps


def kernel_category(name: str) -> str:
    lowered = name.lower()
    if any(key in lowered for key in ATTENTION_KEYS):
        return "attention"
    if any(key in lowered for key in GEMM_KEYS):
        return "gemm"
    return "other"


def summarize_trace(prof, keep_path: str | None) -> dict:
    """GPU intervals (us) of the chrome trace: per-kernel totals and the busy union."""
    with tempfile.TemporaryDirectory() as tmp:
        path = keep_path or os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        events = json.loads(Path(path).read_text())
        events = events.get("traceEvents", events) if isinstance(events, dict) else events
    gpu = [
        e for e in events if e.get("ph") == "X" and e.get("cat") in DEVICE_CATEGORIES and "dur" in e
    ]
    per_kernel = defaultdict(lambda: [0.0, 0])  # name -> [total us, count]
    per_category = defaultdict(float)
    for e in gpu:
        per_kernel[e["name"]][0] += e["dur"]
        per_kernel[e["name"]][1] += 1
        category = kernel_category(e["name"]) if e["cat"] == "kernel" else "memcpy/memset"
        per_category[category] += e["dur"]
    intervals = sorted((float(e["ts"]), float(e["ts"]) + float(e["dur"])) for e in gpu)
    return {
        "per_kernel": per_kernel,
        "per_category": per_category,
        "busy_us": union_length(intervals),
    }


def union_length(intervals: list[tuple[float, float]]) -> float:
    """Total length covered by sorted (start, end) intervals."""
    total, current_start, current_end = 0.0, None, None
    for start, end in intervals:
        if current_end is None or start > current_end:
            if current_end is not None:
                total += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None:
        total += current_end - current_start
    return total


def window_split(summary: dict, wall_ms: float, num_steps: int) -> dict:
    kernel_ms = sum(summary["per_category"].values()) / 1e3
    busy_ms = summary["busy_us"] / 1e3
    top = sorted(summary["per_kernel"].items(), key=lambda kv: kv[1][0], reverse=True)[:NUM_TOP]
    return {
        "gpu_kernel_ms": kernel_ms,
        "gpu_kernel_ms_by_category": {
            c: summary["per_category"].get(c, 0.0) / 1e3
            for c in ("gemm", "attention", "other", "memcpy/memset")
        },
        "gpu_busy_ms": busy_ms,
        "idle_gap_ms": wall_ms - busy_ms,
        "idle_gap_fraction": (wall_ms - busy_ms) / wall_ms,
        "per_step_ms": {
            "wall": wall_ms / num_steps,
            "gpu_busy": busy_ms / num_steps,
            "idle_gap": (wall_ms - busy_ms) / num_steps,
        },
        "top_kernels": [
            {"name": name, "total_ms": us / 1e3, "count": count, "category": kernel_category(name)}
            for name, (us, count) in top
        ],
    }


def top_cpu_ops(prof) -> list[dict]:
    """The operators with the most self CPU time (host work, launch overhead included)."""
    averages = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    return [
        {"name": e.key, "self_cpu_ms": e.self_cpu_time_total / 1e3, "count": e.count}
        for e in averages[:NUM_TOP]
    ]


def print_report(report: dict) -> None:
    r = report["results"]
    window = report["config"]["window"]
    print(f"============ {window} profile ({report['machine']['device']}) ============")
    if window == "prefill":
        print(f"Steps profiled:        the first {r['num_profiled_steps']}")
    else:
        print(
            f"Steps profiled:        {r['num_profiled_steps']} (after "
            f"{r['num_prefill_steps']} prefill steps)"
        )
    print(f"Step, unprofiled (ms): {r['unprofiled_step_ms']:.3f}")
    print(f"Step, profiled (ms):   {r['profiled_step_ms']:.3f}")
    if "per_step_ms" not in r:
        print("No CUDA: GPU kernel time, busy time and idle gap not measured")
    else:
        print_gpu_split(r)
    print("Top CPU ops (self ms, count):")
    for op in r["top_cpu_ops"][:8]:
        print(f"  {op['self_cpu_ms']:9.3f} {op['count']:6d}  {op['name'][:90]}")


def print_gpu_split(r: dict) -> None:
    step = r["per_step_ms"]
    print(
        f"Per step: GPU busy {step['gpu_busy']:.3f} ms, idle gap {step['idle_gap']:.3f} ms "
        f"({100 * r['idle_gap_fraction']:.1f}% of wall)"
    )
    for category, ms in r["gpu_kernel_ms_by_category"].items():
        print(f"  {category:14} {ms / r['num_profiled_steps']:.3f} ms/step")
    if r["top_kernels"]:
        print("Top kernels (total ms, count):")
        for k in r["top_kernels"]:
            print(f"  {k['total_ms']:9.3f} {k['count']:6d}  [{k['category']}] {k['name'][:90]}")


def main(argv=None) -> None:
    args = parse_args(argv)
    results = run(args)
    machine = {"torch": torch.__version__, "device": "cpu"}
    if torch.cuda.is_available():
        machine["device"] = torch.cuda.get_device_name()
    report = {
        "benchmark": "profile_step",
        "config": {k: v for k, v in vars(args).items() if k != "output"},
        "machine": machine,
        "definitions": {
            "gpu_busy_ms": "union of the GPU kernel/memcpy/memset intervals in the window",
            "idle_gap_ms": "window wall time - GPU busy time: the GPU waiting on the host",
            "categories": {"attention": ATTENTION_KEYS, "gemm": GEMM_KEYS},
        },
        "results": results,
    }
    print_report(report)
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
