"""Time of one decode step with a full batch: fleetlm's engine step vs a transformers forward
with its dynamic KV cache, same model, batch size and context length (median of N steps).

    .venv/bin/python benchmarks/decode_step.py --batch-size 64 --context-len 160
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="HF directory (default: bundled SmolLM2)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--context-len", type=int, default=160)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--output", default=None)
    return parser.parse_args()


def fleetlm_step_ms(model: str, prompts: list[list[int]], steps: int) -> list[float]:
    from fleetlm.engine import LLM, SamplingParams

    llm = LLM(
        model,
        max_model_len=len(prompts[0]) + steps + 8,
        max_num_seqs=len(prompts),
        max_num_batched_tokens=len(prompts) * len(prompts[0]),
    )
    engine = llm.engine
    params = SamplingParams(
        temperature=1.0, max_tokens=steps + 4, ignore_eos=True, detokenize=False
    )
    for i, prompt in enumerate(prompts):
        engine.add_request(str(i), prompt, params)
    engine.step()  # the whole prefill
    engine.step()  # warm-up decode
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        engine.step()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def transformers_step_ms(model: str, prompts: list[list[int]], steps: int) -> list[float]:
    from transformers import AutoModelForCausalLM, DynamicCache

    hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    times = []
    with torch.no_grad():
        cache = DynamicCache(config=hf.config)
        out = hf(input_ids=torch.tensor(prompts), past_key_values=cache, logits_to_keep=1)
        for i in range(steps + 1):
            start = time.perf_counter()
            probs = out.logits[:, -1].softmax(-1)  # sampling as `generate` does it
            next_ids = torch.multinomial(probs, 1)
            out = hf(input_ids=next_ids, past_key_values=cache, logits_to_keep=1)
            if i:  # the first step is a warm-up
                times.append((time.perf_counter() - start) * 1e3)
    return times


def main() -> None:
    args = parse_args()
    if args.model is None:
        from fleetlm.engine.model_loader.default_model import default_model_dir

        args.model = str(default_model_dir())
    vocab = json.loads((Path(args.model) / "config.json").read_text())["vocab_size"]
    rng = np.random.default_rng(0)
    prompts = rng.integers(0, vocab, size=(args.batch_size, args.context_len)).tolist()
    result = {"config": vars(args), "torch_threads": torch.get_num_threads()}
    for name, measure in (("fleetlm", fleetlm_step_ms), ("transformers", transformers_step_ms)):
        times = measure(args.model, prompts, args.steps)
        result[name] = {"median_step_ms": statistics.median(times), "step_ms": times}
        print(f"{name:13} median decode step: {result[name]['median_step_ms']:.1f} ms")
    ratio = result["transformers"]["median_step_ms"] / result["fleetlm"]["median_step_ms"]
    result["speedup"] = ratio
    print(f"fleetlm step is {ratio:.2f}x faster")
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
