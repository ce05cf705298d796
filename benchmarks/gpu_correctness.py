"""Greedy parity with transformers on the current device (CUDA when present): the same 16
fixed prompts (English, code, CJK; plain and chat-templated) and the same weights in the same
dtype, fleetlm (all prompts in one batch) against transformers `generate` (batch 1, no
padding). Exits 0 whatever it finds; only a crash fails.

    .venv/bin/python benchmarks/gpu_correctness.py --dtype float32 --num-prompts 4 \
        --max-tokens 16                                            # CPU smoke test
    python3 benchmarks/gpu_correctness.py --model DIR --dtype bfloat16 --output bf16.json
    python3 benchmarks/gpu_correctness.py --model DIR --dtype float32 --output fp32.json

What the JSON reports (per prompt and in total):
- prefix agreement: generated tokens equal to transformers' before the first divergence, over
  all generated tokens. After a divergence the two continue from different contexts, so
- position-wise agreement (tokens equal at the same position, over all tokens) is looser.
- identical prompts: how many of the generations are equal token for token (`all_identical`).
- at each first divergence, transformers' logprob of its own token minus its logprob of
  fleetlm's token, given the common prefix: near 0 means a near-tie that rounding decided.
- prompt logprobs: fleetlm's `prompt_logprobs=0` (the logprob of each actual prompt token)
  against log_softmax of transformers' prompt logits at those tokens (float32 log_softmax);
  the max and mean absolute difference. Not the full-vocabulary logits, which fleetlm does not
  return.

Both run without stopping at EOS: fleetlm with `ignore_eos`, transformers with
`eos_token_id=None`. (`min_new_tokens` would instead forbid EOS, which `ignore_eos` does not.)

--random-weights replaces the weights with seeded random ones (the architecture of --model's
config.json, saved to a temporary directory both load), for a machine that has the config and
tokenizer but not the weights; prompts are random token ids when the directory has no
tokenizer.
"""

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

# (kind, text), mixed so that any first few hold English, code, CJK and chat.
PROMPTS = [
    ("plain", "The capital of France is"),
    ("plain", 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n'),
    ("plain", "日本の首都は東京です。東京の人口は"),
    ("chat", "What is the capital of France?"),
    ("plain", "Once upon a time, in a small village by the sea,"),
    ("chat", "Write a Python function that reverses a string."),
    ("plain", "SELECT name, COUNT(*) AS num_orders\nFROM orders\nWHERE"),
    ("chat", "日本語で自己紹介してください。"),
    ("plain", "Les fleurs du jardin sont"),
    ("plain", "北京是中国的首都，它有着悠久的历史和"),
    ("chat", "Explain photosynthesis in two sentences."),
    ("plain", "import torch\nimport torch.nn as nn\n\n\nclass MLP(nn.Module):\n"),
    ("plain", "1, 1, 2, 3, 5, 8, 13,"),
    ("chat", "Give me three tips for writing clean code."),
    ("plain", "Q: What is 12 * 12?\nA:"),
    ("chat", "Translate to German: 'Good morning, how are you?'"),
]
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="HF directory (default: bundled SmolLM2)")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    parser.add_argument("--num-prompts", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--seed", type=int, default=0, help="for --random-weights")
    parser.add_argument("--output", default=None, help="write the JSON result here")
    return parser.parse_args(argv)


def model_dir(args) -> str:
    if args.model:
        return args.model
    from fleetlm.engine.model_loader.default_model import default_model_dir

    return str(default_model_dir())


def save_random_model(source: str, target: str, seed: int) -> None:
    """The architecture of source with seeded random weights (larger than the init, so each
    position's prediction is distinct), plus source's tokenizer files."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(
        AutoConfig.from_pretrained(source), dtype=torch.float32
    )
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.2)
    model.save_pretrained(target)
    for name in TOKENIZER_FILES:
        if (Path(source) / name).is_file():
            shutil.copy(Path(source) / name, Path(target) / name)


def build_prompts(path: str, num_prompts: int, seed: int) -> list[dict]:
    """[{"kind", "text", "ids"}]: the fixed prompts tokenized as fleetlm tokenizes them."""
    from fleetlm.engine.config import EngineArgs
    from fleetlm.engine.tokenizer import load_tokenizer, render_chat

    tokenizer_path = EngineArgs(model=path).create_engine_config().model.tokenizer
    if tokenizer_path is None:  # no tokenizer: random token ids of varied lengths
        vocab = json.loads((Path(path) / "config.json").read_text())["vocab_size"]
        generator = torch.Generator().manual_seed(seed)
        return [
            {"kind": "token_ids", "text": None, "ids": ids}
            for ids in (
                torch.randint(0, vocab, (8 + 4 * i,), generator=generator).tolist()
                for i in range(num_prompts)
            )
        ]
    tokenizer = load_tokenizer(tokenizer_path)
    prompts = []
    for i in range(num_prompts):
        kind, text = PROMPTS[i % len(PROMPTS)]
        if kind == "chat" and tokenizer.chat_template is not None:
            rendered = render_chat(tokenizer, [{"role": "user", "content": text}])
            ids = tokenizer.encode(rendered, add_special_tokens=False)
        else:
            kind, ids = "plain", tokenizer.encode(text)
        prompts.append({"kind": kind, "text": text, "ids": ids})
    return prompts


def run_fleetlm(path: str, dtype: str, prompts: list[dict], max_tokens: int) -> dict:
    from fleetlm.engine import LLM, SamplingParams

    llm = LLM(
        path,
        dtype=dtype,
        max_model_len=max(len(p["ids"]) for p in prompts) + max_tokens + 8,
        gpu_memory_utilization=0.3,  # leaves room for the transformers model
        cpu_kv_cache_gib=0.25,
    )
    inputs = [{"prompt_token_ids": p["ids"]} for p in prompts]
    greedy = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    started = time.perf_counter()
    outputs = llm.generate(inputs, greedy, use_tqdm=False)
    generate_s = time.perf_counter() - started
    scoring = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0, detokenize=False)
    scored = llm.generate(inputs, scoring, use_tqdm=False)
    return {
        "device": llm.engine.config.device,
        "generate_s": generate_s,
        "tokens": [o.outputs[0].token_ids for o in outputs],
        "prompt_logprobs": [
            [o.prompt_logprobs[i][o.prompt_token_ids[i]].logprob for i in range(1, len(p["ids"]))]
            for o, p in zip(scored, prompts, strict=True)
        ],
    }


def run_transformers(path: str, dtype: str, device: str, prompts: list[dict], max_tokens: int):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype]).to(device).eval()
    tokens, prompt_logprobs = [], []
    started = time.perf_counter()
    with torch.no_grad():
        for p in prompts:
            ids = torch.tensor([p["ids"]], device=device)
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=max_tokens,
                eos_token_id=None,  # go on past EOS, as ignore_eos does
                pad_token_id=0,
            )
            tokens.append(out[0, ids.shape[1] :].tolist())
        generate_s = time.perf_counter() - started
        for p in prompts:
            logprobs = log_softmax_rows(model, p["ids"], device)
            targets = torch.tensor(p["ids"][1:], device=device)
            prompt_logprobs.append(logprobs[torch.arange(len(targets)), targets].tolist())
    return model, {"generate_s": generate_s, "tokens": tokens, "prompt_logprobs": prompt_logprobs}


def log_softmax_rows(model, ids: list[int], device: str) -> torch.Tensor:
    """float32 log_softmax of the logits after each position of ids: [len(ids), vocab]."""
    logits = model(torch.tensor([ids], device=device)).logits[0]
    return torch.log_softmax(logits.float(), dim=-1)


def compare(prompts, ours: dict, theirs: dict, model, device: str) -> dict:
    per_prompt = []
    for i, p in enumerate(prompts):
        a, b = ours["tokens"][i], theirs["tokens"][i]
        prefix = next((j for j, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
        entry = {
            "kind": p["kind"],
            "text": p["text"],
            "num_prompt_tokens": len(p["ids"]),
            "num_tokens": [len(a), len(b)],  # fleetlm, transformers
            "identical": a == b,
            "first_divergence": prefix,
            "num_prefix_equal": min(len(a), len(b)) if prefix is None else prefix,
            "num_positions_equal": sum(x == y for x, y in zip(a, b, strict=False)),
        }
        if prefix is not None:
            with torch.no_grad():
                row = log_softmax_rows(model, p["ids"] + b[:prefix], device)[-1]
            entry["divergence"] = {
                "fleetlm_token": a[prefix],
                "transformers_token": b[prefix],
                "transformers_logprob_gap": (row[b[prefix]] - row[a[prefix]]).item(),
            }
        diffs = [
            abs(x - y)
            for x, y in zip(ours["prompt_logprobs"][i], theirs["prompt_logprobs"][i], strict=True)
        ]
        entry["prompt_logprob_max_abs_diff"] = max(diffs, default=0.0)
        entry["prompt_logprob_mean_abs_diff"] = statistics.fmean(diffs) if diffs else 0.0
        per_prompt.append(entry)
    return summarize(per_prompt) | {"per_prompt": per_prompt}


def summarize(per_prompt: list[dict]) -> dict:
    total = sum(max(e["num_tokens"]) for e in per_prompt)
    gaps = [e["divergence"]["transformers_logprob_gap"] for e in per_prompt if "divergence" in e]
    return {
        "num_prompts": len(per_prompt),
        "num_identical": sum(e["identical"] for e in per_prompt),
        "all_identical": all(e["identical"] for e in per_prompt),
        "prefix_agreement": sum(e["num_prefix_equal"] for e in per_prompt) / total,
        "positionwise_agreement": sum(e["num_positions_equal"] for e in per_prompt) / total,
        "max_divergence_logprob_gap": max(gaps, default=None),
        "prompt_logprob_max_abs_diff": max(e["prompt_logprob_max_abs_diff"] for e in per_prompt),
        "prompt_logprob_mean_abs_diff": statistics.fmean(
            e["prompt_logprob_mean_abs_diff"] for e in per_prompt
        ),
    }


def run(args, path: str) -> dict:
    prompts = build_prompts(path, args.num_prompts, args.seed)
    ours = run_fleetlm(path, args.dtype, prompts, args.max_tokens)
    model, theirs = run_transformers(path, args.dtype, ours["device"], prompts, args.max_tokens)
    result = compare(prompts, ours, theirs, model, ours["device"])
    result["generate_s"] = {"fleetlm": ours["generate_s"], "transformers": theirs["generate_s"]}
    result["device"] = ours["device"]
    return result


def print_report(report: dict) -> None:
    r = report["results"]
    cfg = report["config"]
    print(f"============ greedy parity, {cfg['dtype']} on {report['machine']['device']} =========")
    print(f"Prompts identical:          {r['num_identical']} / {r['num_prompts']}")
    print(f"Prefix agreement:           {100 * r['prefix_agreement']:.1f}% of generated tokens")
    print(f"Position-wise agreement:    {100 * r['positionwise_agreement']:.1f}%")
    if r["max_divergence_logprob_gap"] is not None:
        print(f"Largest gap at divergence:  {r['max_divergence_logprob_gap']:.4f} (logprob)")
    print(
        f"Prompt logprobs |diff|:     max {r['prompt_logprob_max_abs_diff']:.2e}, "
        f"mean {r['prompt_logprob_mean_abs_diff']:.2e}"
    )
    for i, e in enumerate(r["per_prompt"]):
        if not e["identical"]:
            gap = e.get("divergence", {}).get("transformers_logprob_gap", float("nan"))
            print(
                f"  prompt {i} ({e['kind']}) diverges at token {e['first_divergence']} "
                f"(gap {gap:.4f}): {str(e['text'])[:40]!r}"
            )


def main(argv=None) -> None:
    args = parse_args(argv)
    source = model_dir(args)
    with tempfile.TemporaryDirectory() as tmp:
        if args.random_weights:
            save_random_model(source, tmp, args.seed)
        results = run(args, tmp if args.random_weights else source)
    machine = {"torch": torch.__version__, "device": results.pop("device")}
    if machine["device"] == "cuda":
        machine["device"] = torch.cuda.get_device_name()
    report = {
        "benchmark": "gpu_correctness",
        "config": {k: v for k, v in vars(args).items() if k != "output"} | {"model": source},
        "machine": machine,
        "definitions": {
            "prefix_agreement": "tokens equal before each prompt's first divergence / all tokens",
            "positionwise_agreement": "tokens equal at the same position / all tokens",
            "transformers_logprob_gap": "at the first divergence, transformers' logprob of its "
            "token minus that of fleetlm's token (given the common prefix)",
            "prompt_logprob_abs_diff": "|fleetlm prompt_logprobs=0 logprob of each prompt token "
            "- transformers float32 log_softmax of its prompt logits at that token|",
        },
        "results": results,
    }
    print_report(report)
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
