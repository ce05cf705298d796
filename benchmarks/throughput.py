"""Offline throughput: fleetlm (continuous batching) vs transformers `generate` (static batches)
on the same random-token prompts, in one run. Each system runs in its own subprocess so its
peak memory is its own.

    .venv/bin/python benchmarks/throughput.py                     # CPU, bundled SmolLM2-135M
    .venv/bin/python benchmarks/throughput.py --output benchmarks/results/cpu_throughput.json
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from metrics import RequestTiming, random_prompts, summarize


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="model path (default: bundled SmolLM2)")
    parser.add_argument("--load-format", default="auto", choices=["auto", "dummy"])
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument(
        "--range-ratio",
        type=float,
        default=0.5,
        help="prompt lengths vary uniformly by this fraction around --input-len",
    )
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--max-num-batched-tokens", type=int, default=None)
    parser.add_argument(
        "--max-model-len", type=int, default=None, help="default: 2 x input-len + output-len"
    )
    parser.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs")
    parser.add_argument(
        "--async-scheduling",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="default: the engine's (on with CUDA)",
    )
    parser.add_argument(
        "--hf-batch-sizes", default="64,8", help="static batch sizes for transformers, one run each"
    )
    parser.add_argument("--systems", default="fleetlm,transformers")
    parser.add_argument("--output", default=None, help="write the JSON result here")
    parser.add_argument("--run-one", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--hf-batch-size", type=int, default=64, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def model_path(args) -> str:
    if args.model:
        return args.model
    from fleetlm.engine.model_loader.default_model import default_model_dir

    return str(default_model_dir())


def vocab_size(path: str) -> int:
    return json.loads((Path(path) / "config.json").read_text())["vocab_size"]


def run_fleetlm(args, prompts) -> dict:
    from fleetlm.engine import LLM, SamplingParams

    started = time.perf_counter()
    llm = LLM(
        model_path(args),
        load_format=args.load_format,
        dtype=args.dtype,
        seed=args.seed,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_model_len=args.max_model_len or args.input_len * 2 + args.output_len,
        enforce_eager=args.enforce_eager,
        async_scheduling=args.async_scheduling,
    )
    load_time = time.perf_counter() - started
    params = SamplingParams(
        temperature=args.temperature,
        max_tokens=args.output_len,
        ignore_eos=True,
        detokenize=False,
        seed=None,
    )
    # Warm-up: a few full-length prompts, so nothing is compiled or first-touched while timed.
    warmup = SamplingParams(max_tokens=4, ignore_eos=True, detokenize=False)
    llm.generate(prompts[: min(4, len(prompts))], warmup, use_tqdm=False)
    llm.engine.reset_prefix_cache()  # the measured run must not hit the warm-up's blocks
    engine = llm.engine
    timings = {}
    start = time.perf_counter()
    for i, prompt in enumerate(prompts):
        engine.add_request(str(i), prompt, params)
        timings[str(i)] = RequestTiming(start, [], len(prompt))
    while engine.has_unfinished_requests():
        outputs = engine.step()
        now = time.perf_counter()
        for output in outputs:
            timing = timings[output.request_id]
            new = len(output.outputs[0].token_ids) - len(timing.token_times)
            timing.token_times.extend([now] * new)
    duration = time.perf_counter() - start
    result = summarize(list(timings.values()), duration)
    stats = engine.get_stats()
    result.update(
        load_time_s=load_time,
        num_preemptions=stats.num_preemptions,
        kv_cache_blocks=stats.num_blocks,
        batching="continuous",
    )
    return result


def run_transformers(args, prompts) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, StoppingCriteria

    class StepClock(StoppingCriteria):
        def __init__(self):
            self.times = []

        def __call__(self, input_ids, scores, **kwargs):
            self.times.append(time.perf_counter())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    started = time.perf_counter()
    if args.load_format == "dummy":  # random weights, drawn on the device (as fleetlm's dummy)
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model_path(args))
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    else:
        model = AutoModelForCausalLM.from_pretrained(model_path(args), dtype=dtype)
        model = model.to(device).eval()
    load_time = time.perf_counter() - started
    sampling = (
        {"do_sample": True, "temperature": args.temperature, "top_k": 0, "top_p": 1.0}
        if args.temperature > 0
        else {"do_sample": False}
    )
    timings = []
    start = time.perf_counter()
    for first in range(0, len(prompts), args.hf_batch_size):
        batch = prompts[first : first + args.hf_batch_size]
        width = max(map(len, batch))
        # Left padding, as generation requires.
        ids = torch.tensor([[0] * (width - len(p)) + p for p in batch], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=device)
        clock = StepClock()
        with torch.no_grad():
            model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=args.output_len,
                min_new_tokens=args.output_len,
                stopping_criteria=[clock],
                pad_token_id=0,
                **sampling,
            )
        timings += [RequestTiming(start, list(clock.times), len(p)) for p in batch]
    duration = time.perf_counter() - start
    result = summarize(timings, duration)
    result.update(
        load_time_s=load_time, batching=f"static batches of {args.hf_batch_size}, left-padded"
    )
    return result


def peak_memory() -> dict:
    result = {"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    import torch

    if torch.cuda.is_available():
        result["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


def run_one(args) -> None:
    prompts = random_prompts(
        args.num_prompts, args.input_len, args.range_ratio, vocab_size(model_path(args)), args.seed
    )
    runner = {"fleetlm": run_fleetlm, "transformers": run_transformers}[args.run_one]
    result = runner(args, prompts)
    result.update(peak_memory())
    print(json.dumps(result))


def machine_info() -> dict:
    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.run_one:
        run_one(args)
        return
    results = {}
    for name, extra in runs(args):
        command = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), *extra]
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
        if completed.returncode != 0:
            sys.exit(f"{name} failed:\n{completed.stderr[-4000:]}")
        results[name] = json.loads(completed.stdout.strip().splitlines()[-1])
        print_result(name, results[name])
    report = {
        "benchmark": "throughput",
        "config": {
            k: v for k, v in vars(args).items() if k not in ("run_one", "output", "hf_batch_size")
        },
        "machine": machine_info(),
        "results": results,
    }
    if "fleetlm" in results:
        ours = results["fleetlm"]["output_throughput"]
        report["ratio_output_throughput"] = {
            name: ours / r["output_throughput"] for name, r in results.items() if name != "fleetlm"
        }
        for name, ratio in report["ratio_output_throughput"].items():
            print(f"fleetlm / {name} output throughput: {ratio:.2f}x")
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n")


def runs(args) -> list[tuple[str, list[str]]]:
    """(result name, extra arguments of its subprocess) for each system run."""
    result = []
    for system in args.systems.split(","):
        if system == "transformers":
            result += [
                (f"transformers-bs{b}", ["--run-one", system, "--hf-batch-size", b])
                for b in args.hf_batch_sizes.split(",")
            ]
        else:
            result.append((system, ["--run-one", system]))
    return result


def print_result(system: str, r: dict) -> None:
    print(f"============ {system} ({r['batching']}) ============")
    print(f"Successful requests:        {r['num_requests']}")
    print(f"Duration (s):               {r['duration_s']:.2f}")
    print(f"Request throughput (req/s): {r['request_throughput']:.2f}")
    print(f"Output token throughput:    {r['output_throughput']:.1f} tok/s")
    print(f"Total token throughput:     {r['total_token_throughput']:.1f} tok/s")
    for name in ("ttft", "tpot", "itl"):
        print(
            f"{name.upper():5} mean / p50 / p99 (ms): {r[f'mean_{name}_ms']:.1f} / "
            f"{r[f'median_{name}_ms']:.1f} / {r[f'p99_{name}_ms']:.1f}"
        )
    print(f"Peak RSS (GiB):             {r['peak_rss_gib']:.2f}")


if __name__ == "__main__":
    main()
