"""Online serving benchmark, in the style of `vllm bench serve`: streams random-token requests
to a running OpenAI-compatible server (`fleetlm serve`, or vLLM) and reports throughput, TTFT,
TPOT and ITL.

    .venv/bin/python benchmarks/serve.py --num-prompts 200 --max-concurrency 32
    .venv/bin/python benchmarks/serve.py --request-rate 8 --output serve.json --label fleetlm

/v1/completions gets random token ids as its `prompt`; /v1/chat/completions gets random common
English words instead (about one token each; the server's usage gives the real count). Every
request streams with `ignore_eos`, so it produces exactly --output-len tokens. A chunk's time
is recorded when it carries text: the first gives TTFT, the gaps between them ITL, and the
usage chunk the token count (chunks are counted when the server sends no usage). Failed
requests (HTTP status, error event, stream cut short, connection error) are counted, not fatal.
"""

import argparse
import asyncio
import contextlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from metrics import RequestTiming, random_prompts, summarize

# Common words that most BPE vocabularies hold as one token (with their leading space).
_WORDS_TEXT = (
    "the of and to in is that for it as was with be by on not he this are or his from at which "
    "but have an they you were her she there one all we their has been if more when will would "
    "who so no time about out up them some could what into than other then its only new year"
)
WORDS = _WORDS_TEXT.split()
NUM_ERRORS_SHOWN = 5


@dataclass
class RequestOutput:
    timing: RequestTiming
    error: str | None = None  # None when the request succeeded


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    parser.add_argument(
        "--endpoint",
        default="/v1/completions",
        choices=["/v1/completions", "/v1/chat/completions"],
    )
    parser.add_argument("--model", default=None, help="default: the first of GET /v1/models")
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"))
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument(
        "--range-ratio",
        type=float,
        default=0.5,
        help="prompt lengths vary uniformly by this fraction around --input-len",
    )
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--vocab-size", type=int, default=49152, help="default: SmolLM2's")
    parser.add_argument(
        "--max-concurrency", type=int, default=None, help="requests in flight at most"
    )
    parser.add_argument(
        "--request-rate",
        type=float,
        default=math.inf,
        help="Poisson arrivals, requests/s (inf: all at once)",
    )
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="write the JSON result here")
    parser.add_argument("--label", default=None, help="a name for this run, kept in the JSON")
    parser.add_argument(
        "--num-warmups", type=int, default=1, help="short unmeasured requests sent first"
    )
    parser.add_argument(
        "--time-empty-chunks",
        action="store_true",
        help="time every choice chunk, also those with empty text (a model served without a "
        "tokenizer streams one empty-text chunk per token)",
    )
    return parser.parse_args(argv)


def build_payload(args, model: str, prompt: list[int]) -> dict:
    payload = {
        "model": model,
        "max_tokens": args.output_len,
        "temperature": args.temperature,
        "ignore_eos": True,  # vLLM's extension, fleetlm's too
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if args.endpoint == "/v1/chat/completions":
        content = " ".join(WORDS[i % len(WORDS)] for i in prompt)
        payload["messages"] = [{"role": "user", "content": content}]
    else:
        payload["prompt"] = prompt
    return payload


async def sse_data(content: aiohttp.StreamReader):
    """The payload of each `data:` line of a server-sent event stream."""
    async for line in content:
        line = line.decode().strip()
        if line.startswith("data:"):
            yield line.removeprefix("data:").strip()


def event_error(data: dict) -> str | None:
    """The message of an error event (`{"error": {...}}`, or vLLM's `{"object": "error"}`)."""
    error = data.get("error") or (data if data.get("object") == "error" else None)
    if error is None:
        return None
    return str(error.get("message", error)) if isinstance(error, dict) else str(error)


def chunk_text(data: dict) -> str | None:
    choices = data.get("choices") or [{}]
    return choices[0].get("text") or (choices[0].get("delta") or {}).get("content")


def chunk_has_choice(data: dict) -> bool:
    return bool(data.get("choices"))


async def read_stream(
    response: aiohttp.ClientResponse, timing: RequestTiming, time_empty_chunks: bool = False
) -> str | None:
    """Times each chunk that carries text (or, with `time_empty_chunks`, every choice chunk)
    and takes the usage; returns the error, if any."""
    async for payload in sse_data(response.content):
        if payload == "[DONE]":
            return None
        data = json.loads(payload)
        if error := event_error(data):
            return error
        if chunk_text(data) or (time_empty_chunks and chunk_has_choice(data)):
            timing.token_times.append(time.perf_counter())
        if usage := data.get("usage"):
            timing.num_prompt_tokens = usage.get("prompt_tokens", timing.num_prompt_tokens)
            timing.reported_output_tokens = usage.get("completion_tokens")
    return "stream ended without data: [DONE]"


async def send_request(
    session: aiohttp.ClientSession,
    url: str,
    payload: dict,
    num_prompt_tokens: int,
    time_empty_chunks: bool = False,
) -> RequestOutput:
    timing = RequestTiming(time.perf_counter(), [], num_prompt_tokens)
    try:
        async with session.post(url, json=payload) as response:
            if response.status != 200:
                body = await response.text()
                return RequestOutput(timing, f"HTTP {response.status}: {body[:200]}")
            error = await read_stream(response, timing, time_empty_chunks)
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as e:
        error = f"{type(e).__name__}: {e}"
    return RequestOutput(timing, error)


async def first_model(session: aiohttp.ClientSession, base_url: str) -> str:
    async with session.get(f"{base_url}/v1/models") as response:
        response.raise_for_status()
        return (await response.json())["data"][0]["id"]


async def arrivals(prompts: list[list[int]], request_rate: float, seed: int):
    """Yields the prompts with exponential gaps between them (Poisson arrivals)."""
    rng = np.random.default_rng(seed)
    for i, prompt in enumerate(prompts):
        if i and math.isfinite(request_rate):
            await asyncio.sleep(rng.exponential(1 / request_rate))
        yield prompt


def make_session(args) -> aiohttp.ClientSession:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    # limit=0: aiohttp would otherwise cap the connections, hence the concurrency, at 100.
    connector = aiohttp.TCPConnector(limit=args.max_concurrency or 0)
    timeout = aiohttp.ClientTimeout(total=6 * 3600)
    return aiohttp.ClientSession(headers=headers, connector=connector, timeout=timeout)


async def benchmark(args) -> tuple[str, list[RequestOutput], float]:
    """(model, one output per prompt, duration in seconds)."""
    prompts = random_prompts(
        args.num_prompts, args.input_len, args.range_ratio, args.vocab_size, args.seed
    )
    limit = asyncio.Semaphore(args.max_concurrency) if args.max_concurrency else None
    async with make_session(args) as session:
        model = args.model or await first_model(session, args.base_url)

        async def limited(prompt: list[int]) -> RequestOutput:
            async with limit or contextlib.nullcontext():
                payload = build_payload(args, model, prompt)
                return await send_request(
                    session,
                    args.base_url + args.endpoint,
                    payload,
                    len(prompt),
                    args.time_empty_chunks,
                )

        # Warm-up: short requests first (as vLLM's benchmark sends one), not measured.
        warmup = {**build_payload(args, model, prompts[0][:16]), "max_tokens": 4}
        for _ in range(args.num_warmups):
            await send_request(session, args.base_url + args.endpoint, warmup, 16)
        start = time.perf_counter()
        tasks = [
            asyncio.create_task(limited(prompt))
            async for prompt in arrivals(prompts, args.request_rate, args.seed)
        ]
        outputs = await asyncio.gather(*tasks)
        duration = time.perf_counter() - start
    return model, outputs, duration


def make_report(args, model: str, outputs: list[RequestOutput], duration: float) -> dict:
    errors = [o.error for o in outputs if o.error is not None]
    result = summarize([o.timing for o in outputs if o.error is None], duration)
    result.update(num_failed=len(errors), errors=errors[:NUM_ERRORS_SHOWN])
    config = {k: v for k, v in vars(args).items() if k not in ("api_key", "output", "label")}
    rate = args.request_rate if math.isfinite(args.request_rate) else "inf"  # JSON has no inf
    config.update(model=model, request_rate=rate)
    return {"benchmark": "serve", "label": args.label, "config": config, "results": result}


def print_report(report: dict) -> None:
    r, config = report["results"], report["config"]
    title = " Serving Benchmark Result " + (f"({report['label']}) " if report["label"] else "")
    print(f"{title:=^50}")
    rows = [
        ("Successful requests:", r["num_requests"]),
        ("Failed requests:", r["num_failed"]),
        ("Maximum request concurrency:", config["max_concurrency"]),
        ("Request rate (req/s):", config["request_rate"]),
        ("Benchmark duration (s):", f"{r['duration_s']:.2f}"),
        ("Total input tokens:", r["num_prompt_tokens"]),
        ("Total generated tokens:", r["num_output_tokens"]),
        ("Request throughput (req/s):", f"{r['request_throughput']:.2f}"),
        ("Output token throughput (tok/s):", f"{r['output_throughput']:.2f}"),
        ("Total token throughput (tok/s):", f"{r['total_token_throughput']:.2f}"),
    ]
    for label, value in rows:
        print(f"{label:<40} {value}")
    for name, title in (
        ("TTFT", "Time to First Token"),
        ("TPOT", "Time per Output Token (excl. 1st token)"),
        ("ITL", "Inter-token Latency"),
    ):
        print(f"{' ' + title + ' ':-^50}")
        for stat, label in (("mean", "Mean"), ("median", "Median"), ("p99", "P99")):
            print(f"{f'{label} {name} (ms):':<40} {r[f'{stat}_{name.lower()}_ms']:.2f}")
    print("=" * 50)
    for error in r["errors"]:
        print(f"error: {error}")


def main(argv=None) -> None:
    args = parse_args(argv)
    report = make_report(args, *asyncio.run(benchmark(args)))
    print_report(report)
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
