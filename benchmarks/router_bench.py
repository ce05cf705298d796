"""Router benchmarks: routing strategies on a shared-prefix chat workload, and the router's own
latency overhead.

    .venv/bin/python benchmarks/router_bench.py prefix --output router_prefix.json
    .venv/bin/python benchmarks/router_bench.py overhead --rate 200 --output router_overhead.json

`prefix`: for each strategy, fresh `fleetlm serve` replicas (the bundled SmolLM2 unless
--model; --kv-cache-gib bounds each replica's cache) behind a fresh `fleetlm router`; users
hold multi-turn chats, user u under system prompt u % --systems, --concurrency users at a
time, each turn streamed with temperature 0 and --max-tokens tokens. Reported per strategy:
the engines' own prefix-cache hit rate (`vllm:prefix_cache_hits / queries`, summed over the
replicas), TTFT mean / p50 / p99, requests per replica and the wall time.

`overhead`: a trivial OpenAI backend (answers at once) is loaded open-loop at --rate
requests/s (Poisson arrivals), directly and through a router in front of it; the router's
overhead is the difference of the latency percentiles.
"""

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

FILLER = (
    "Follow the house style guide: short sentences, active voice, no jargon, cite sources, "
    "prefer concrete examples, and say so plainly when you do not know something. "
)
QUESTIONS = [
    "What should I read first?",
    "Can you give me an example?",
    "How would you summarise that in one line?",
    "What is a common mistake here?",
]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    modes = parser.add_subparsers(dest="mode", required=True)
    prefix = modes.add_parser("prefix", help="strategies on a shared-prefix chat workload")
    prefix.add_argument("--model", default=None, help="default: the bundled SmolLM2")
    prefix.add_argument("--replicas", type=int, default=3)
    prefix.add_argument("--strategies", default="prefix,round_robin,least_load")
    prefix.add_argument("--systems", type=int, default=8)
    prefix.add_argument("--users", type=int, default=40)
    prefix.add_argument("--turns", type=int, default=3)
    prefix.add_argument("--system-repeats", type=int, default=12, help="system prompt length")
    prefix.add_argument("--max-tokens", type=int, default=8)
    prefix.add_argument("--concurrency", type=int, default=8)
    prefix.add_argument("--kv-cache-gib", type=float, default=0.1, help="per CPU replica")
    prefix.add_argument(
        "--serve-args", default="--max-model-len 2048", help="more `fleetlm serve` flags"
    )
    prefix.add_argument(
        "--token-ids",
        action="store_true",
        help="models without a tokenizer (random weights): completions of token-id prompts, "
        "a system prompt of --system-tokens random ids, each answer stood in for by "
        "--max-tokens random ids; the router hashes the ids",
    )
    prefix.add_argument("--system-tokens", type=int, default=1024)
    prefix.add_argument(
        "--warmup",
        action="store_true",
        help="first a short untimed pass (fills Triton's compile cache: the first replicas "
        "started on a machine compile kernels on their first requests)",
    )
    prefix.add_argument(
        "--start-one-at-a-time",
        action="store_true",
        help="start each replica once the previous one is ready (replicas sharing one GPU)",
    )
    prefix.add_argument("--seed", type=int, default=0)
    prefix.add_argument("--output", default=None)
    overhead = modes.add_parser("overhead", help="the router's added latency")
    overhead.add_argument("--rate", type=float, default=200.0, help="requests per second")
    overhead.add_argument("--duration", type=float, default=20.0, help="seconds per target")
    overhead.add_argument("--seed", type=int, default=0)
    overhead.add_argument("--output", default=None)
    backend = modes.add_parser("fake-backend", help="(internal) the trivial backend")
    backend.add_argument("--port", type=int, required=True)
    return parser.parse_args(argv)


# -- processes ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(command: list[str], health_url: str) -> subprocess.Popen:
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL)
    try:
        start_wait(process, health_url)
    except Exception:
        stop(process)
        raise
    return process


def start_wait(process: subprocess.Popen, health_url: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[:4]} exited with {process.returncode}")
        try:
            if httpx.get(health_url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{process.args[:4]} did not become ready")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def fleetlm(*args: str) -> list[str]:
    return [sys.executable, "-m", "fleetlm.cli", *args]


def model_dir(args) -> str:
    if args.model:
        return args.model
    from fleetlm.engine.model_loader.default_model import default_model_dir

    return str(default_model_dir())


# -- the shared-prefix workload -------------------------------------------------------------


def system_prompt(index: int, repeats: int) -> str:
    return f"You are assistant number {index} of the documentation team. " + FILLER * repeats


async def stream_chat(client: httpx.AsyncClient, url: str, messages, max_tokens) -> tuple:
    """(TTFT in seconds, the answer's text) of one streamed chat completion."""
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    started = time.perf_counter()
    ttft, text = None, []
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            delta = json.loads(line[6:])["choices"]
            content = delta[0]["delta"].get("content") if delta else None
            if content:
                ttft = ttft or time.perf_counter() - started
                text.append(content)
    return ttft if ttft is not None else time.perf_counter() - started, "".join(text)


async def stream_completion(client: httpx.AsyncClient, url: str, prompt, max_tokens) -> float:
    """TTFT in seconds of one streamed completion of token ids (the first chunk with a
    choice: a model without a tokenizer streams empty text)."""
    body = {
        "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
        "ignore_eos": True,
    }  # fmt: skip
    started = time.perf_counter()
    ttft = None
    async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if ttft is None and line.startswith("data: {") and json.loads(line[6:])["choices"]:
                ttft = time.perf_counter() - started
    return ttft if ttft is not None else time.perf_counter() - started


async def run_token_id_users(args, router_url: str) -> list[float]:
    vocab = json.loads((Path(model_dir(args)) / "config.json").read_text())["vocab_size"]
    rng = np.random.default_rng(args.seed)
    systems = rng.integers(0, vocab, (args.systems, args.system_tokens)).tolist()
    limit = asyncio.Semaphore(args.concurrency)
    ttfts: list[float] = []

    async def user(u: int, client: httpx.AsyncClient) -> None:
        turns = np.random.default_rng([args.seed, u]).integers(0, vocab, (args.turns, 2, 32))
        async with limit:
            prompt = list(systems[u % args.systems])
            for turn in range(args.turns):
                prompt += turns[turn, 0].tolist()  # the user's question
                ttft = await stream_completion(client, router_url, prompt, args.max_tokens)
                ttfts.append(ttft)
                prompt += turns[turn, 1, : args.max_tokens].tolist()  # the answer's stand-in

    async with httpx.AsyncClient(timeout=600) as client:
        await asyncio.gather(*(user(u, client) for u in range(args.users)))
    return ttfts


async def run_users(args, router_url: str) -> list[float]:
    if args.token_ids:
        return await run_token_id_users(args, router_url)
    systems = [system_prompt(i, args.system_repeats) for i in range(args.systems)]
    limit = asyncio.Semaphore(args.concurrency)
    ttfts: list[float] = []

    async def user(u: int, client: httpx.AsyncClient) -> None:
        async with limit:
            messages = [{"role": "system", "content": systems[u % args.systems]}]
            for turn in range(args.turns):
                question = f"User {u}: {QUESTIONS[(u + turn) % len(QUESTIONS)]}"
                messages.append({"role": "user", "content": question})
                ttft, answer = await stream_chat(client, router_url, messages, args.max_tokens)
                ttfts.append(ttft)
                messages.append({"role": "assistant", "content": answer})

    async with httpx.AsyncClient(timeout=600) as client:
        await asyncio.gather(*(user(u, client) for u in range(args.users)))
    return ttfts


def engine_counters(url: str) -> dict[str, float]:
    """The replica's prefix-cache and finished-request counters (summed over labels)."""
    from prometheus_client.parser import text_string_to_metric_families

    wanted = ("vllm:prefix_cache_queries", "vllm:prefix_cache_hits", "vllm:request_success")
    counters = dict.fromkeys(wanted, 0.0)
    text = httpx.get(f"{url}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        if family.name in counters:
            counters[family.name] += sum(
                s.value for s in family.samples if s.name in (family.name, family.name + "_total")
            )
    return counters


def run_strategy(args, strategy: str) -> dict:
    model = model_dir(args)
    ports = [free_port() for _ in range(args.replicas)]
    serve = [*args.serve_args.split()]
    if not args.token_ids:
        serve += ["--cpu-kv-cache-gib", str(args.kv_cache_gib)]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    replicas: list[subprocess.Popen] = []
    router = None
    try:
        for port, url in zip(ports, urls, strict=True):
            command = fleetlm("serve", model, "--port", str(port), "--log-level", "warning")
            replicas.append(subprocess.Popen([*command, *serve], start_new_session=True))
            if args.start_one_at_a_time:
                start_wait(replicas[-1], f"{url}/health")
        for process, url in zip(replicas, urls, strict=True):  # else loading in parallel
            start_wait(process, f"{url}/health")
        port = free_port()
        tokenizer = [] if args.token_ids else ["--tokenizer", model]
        router = start(
            fleetlm(
                "router", "--replicas", ",".join(urls), "--port", str(port),
                "--strategy", strategy, "--log-level", "warning", *tokenizer,
            ),
            f"http://127.0.0.1:{port}/health",
        )  # fmt: skip
        before = [engine_counters(u) for u in urls]
        started = time.perf_counter()
        ttfts = asyncio.run(run_users(args, f"http://127.0.0.1:{port}"))
        wall = time.perf_counter() - started
        after = [engine_counters(u) for u in urls]
    finally:
        if router is not None:
            stop(router)
        for process in replicas:
            stop(process)
    delta = [{k: a[k] - b[k] for k in a} for a, b in zip(after, before, strict=True)]
    queries = sum(d["vllm:prefix_cache_queries"] for d in delta)
    hits = sum(d["vllm:prefix_cache_hits"] for d in delta)
    ms = np.array(ttfts) * 1e3
    return {
        "num_requests": len(ttfts),
        "wall_s": wall,
        "prefix_cache_hit_rate": hits / queries if queries else 0.0,
        "prefix_cache_hit_tokens": hits,
        "prefix_cache_query_tokens": queries,
        "mean_ttft_ms": float(ms.mean()),
        "median_ttft_ms": float(np.median(ms)),
        "p99_ttft_ms": float(np.percentile(ms, 99)),
        "requests_per_replica": [d["vllm:request_success"] for d in delta],
    }


# -- the router's overhead ------------------------------------------------------------------


def fake_backend(port: int) -> None:
    """An OpenAI backend that answers every completion at once, with a fixed body."""
    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, PlainTextResponse

    app = FastAPI()
    answer = {
        "id": "cmpl-0",
        "object": "text_completion",
        "model": "fake",
        "choices": [{"index": 0, "text": " ok", "finish_reason": "length"}],
        "usage": {"prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 5},
    }

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse("")

    @app.post("/v1/completions")
    async def completions():
        return JSONResponse(answer)

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


async def open_loop(url: str, rate: float, duration: float, seed: int) -> list[float]:
    """Latencies (s) of POSTs sent at Poisson arrivals of `rate` per second."""
    rng = np.random.default_rng(seed)
    body = {"model": "fake", "prompt": "Hello there", "max_tokens": 1}
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)

    async def one(client: httpx.AsyncClient) -> None:
        started = time.perf_counter()
        response = await client.post(f"{url}/v1/completions", json=body)
        response.raise_for_status()
        latencies.append(time.perf_counter() - started)

    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        tasks, end = [], time.perf_counter() + duration
        while time.perf_counter() < end:
            tasks.append(asyncio.create_task(one(client)))
            await asyncio.sleep(rng.exponential(1 / rate))
        await asyncio.gather(*tasks)
    return latencies


def run_overhead(args) -> dict:
    backend_port, router_port = free_port(), free_port()
    backend_url = f"http://127.0.0.1:{backend_port}"
    router_url = f"http://127.0.0.1:{router_port}"
    backend = start(
        [sys.executable, __file__, "fake-backend", "--port", str(backend_port)],
        f"{backend_url}/health",
    )
    router = None
    try:
        router = start(
            fleetlm(
                "router", "--replicas", backend_url, "--port", str(router_port),
                "--strategy", "round_robin", "--log-level", "warning",
            ),
            f"{router_url}/health",
        )  # fmt: skip
        asyncio.run(open_loop(backend_url, args.rate, 2.0, args.seed))  # warm-up
        direct = asyncio.run(open_loop(backend_url, args.rate, args.duration, args.seed))
        routed = asyncio.run(open_loop(router_url, args.rate, args.duration, args.seed))
    finally:
        if router is not None:
            stop(router)
        stop(backend)
    result = {}
    for name, latencies in (("direct", direct), ("router", routed)):
        ms = np.array(latencies) * 1e3
        result[name] = {
            "num_requests": len(ms),
            "p50_ms": float(np.median(ms)),
            "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()),
        }
    result["added_p50_ms"] = result["router"]["p50_ms"] - result["direct"]["p50_ms"]
    result["added_p99_ms"] = result["router"]["p99_ms"] - result["direct"]["p99_ms"]
    return result


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.mode == "fake-backend":
        fake_backend(args.port)
        return
    if args.mode == "prefix":
        if args.warmup:
            warmup = argparse.Namespace(**{**vars(args), "users": args.systems, "turns": 2})
            run_strategy(warmup, args.strategies.split(",")[0])
        results = {}
        for strategy in args.strategies.split(","):
            results[strategy] = r = run_strategy(args, strategy)
            print(
                f"{strategy:12s} hit rate {100 * r['prefix_cache_hit_rate']:5.1f}%  "
                f"TTFT mean {r['mean_ttft_ms']:7.1f} ms  p99 {r['p99_ttft_ms']:7.1f} ms  "
                f"requests/replica {r['requests_per_replica']}  wall {r['wall_s']:.1f} s"
            )
    else:
        results = run_overhead(args)
        print(
            f"direct p50 {results['direct']['p50_ms']:.2f} ms p99 "
            f"{results['direct']['p99_ms']:.2f} ms; router p50 {results['router']['p50_ms']:.2f} "
            f"ms p99 {results['router']['p99_ms']:.2f} ms; added p50 "
            f"{results['added_p50_ms']:.2f} ms, p99 {results['added_p99_ms']:.2f} ms"
        )
    if args.output:
        config = {k: v for k, v in vars(args).items() if k != "output"}
        report = {"benchmark": f"router_{args.mode}", "config": config, "results": results}
        report["machine"] = {"cpu_count": os.cpu_count(), "python": sys.version.split()[0]}
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
