"""benchmarks/serve.py against a tiny fake OpenAI server (aiohttp, in a thread) that streams
a few SSE chunks per request and fails on demand."""

import asyncio
import importlib.util
import json
import socket
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "serve.py"
NUM_TEXT_CHUNKS = 4  # text chunks the fake server streams per request
NUM_TOKENS = 5  # tokens its usage reports (one chunk holds two)


def load_script():
    spec = importlib.util.spec_from_file_location("serve_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


serve = load_script()


class FakeServer:
    """Streams NUM_TEXT_CHUNKS text chunks (after an empty one), then usage and [DONE].
    `failures` maps a request index (in arrival order) to "http" (a 500) or "event" (an error
    event mid-stream); `send_usage` False leaves the usage chunk out."""

    def __init__(self):
        self.payloads = []
        self.failures = {}
        self.send_usage = True
        self.num_in_flight = 0
        self.peak_in_flight = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/completions", self.generate)
        app.router.add_post("/v1/chat/completions", self.generate)
        return app

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "fake-model"}]})

    async def generate(self, request: web.Request) -> web.StreamResponse:
        payload = await request.json()
        index = len(self.payloads)
        self.payloads.append(payload)
        self.num_in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.num_in_flight)
        try:
            if self.failures.get(index) == "http":
                await asyncio.sleep(0.01)
                return web.Response(status=500, text="boom")
            return await self.stream(request, payload, self.failures.get(index) == "event")
        finally:
            self.num_in_flight -= 1

    async def stream(self, request, payload, is_failing: bool) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        is_chat = "messages" in payload
        for text in ["", "a", "bc", "d", "e"]:
            await asyncio.sleep(0.01)
            choice = {"index": 0, "delta": {"content": text}} if is_chat else {"text": text}
            await send(response, {"choices": [choice], "usage": None})
            if is_failing:
                await send(response, {"error": {"message": "engine died", "code": 500}})
                break
        if self.send_usage:
            num_prompt_tokens = len(
                payload["messages"][0]["content"].split() if is_chat else payload["prompt"]
            )
            usage = {"prompt_tokens": num_prompt_tokens, "completion_tokens": NUM_TOKENS}
            await send(response, {"choices": [], "usage": usage})
        await response.write(b"data: [DONE]\n\n")
        return response


async def send(response: web.StreamResponse, data: dict) -> None:
    await response.write(f"data: {json.dumps(data)}\n\n".encode())


@pytest.fixture
def server():
    """A FakeServer on a free loopback port; yields (server, base_url)."""
    fake = FakeServer()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(fake.app())
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.SockSite(runner, sock).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield fake, f"http://127.0.0.1:{sock.getsockname()[1]}"
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=5)
    loop.close()


def run(base_url: str, *extra: str):
    base = ["--base-url", base_url, "--input-len", "8", "--output-len", "5", "--num-warmups", "0"]
    args = serve.parse_args([*base, *extra])
    return args, asyncio.run(serve.benchmark(args))


def test_streams_token_ids_and_times_each_text_chunk(server):
    fake, url = server
    _, (model, outputs, _) = run(url, "--num-prompts", "3")
    assert model == "fake-model"  # from GET /v1/models
    assert [o.error for o in outputs] == [None] * 3
    for timing in (o.timing for o in outputs):
        assert len(timing.token_times) == NUM_TEXT_CHUNKS  # the empty-text chunk is not timed
        assert timing.token_times == sorted(timing.token_times)
        assert timing.start < timing.token_times[0]
        assert timing.num_output_tokens == NUM_TOKENS  # usage wins over the chunk count
    num_prompt_tokens = sorted(o.timing.num_prompt_tokens for o in outputs)
    assert num_prompt_tokens == sorted(len(p["prompt"]) for p in fake.payloads)  # from usage
    payload = fake.payloads[0]
    assert all(isinstance(t, int) for t in payload["prompt"])
    assert payload["model"] == "fake-model"
    assert payload["max_tokens"] == 5
    assert payload["temperature"] == 1.0
    assert payload["ignore_eos"] is True
    assert payload["stream"] is True
    assert payload["stream_options"] == {"include_usage": True}


def test_counts_chunks_without_usage(server):
    fake, url = server
    fake.send_usage = False
    args, (_, outputs, _) = run(url, "--num-prompts", "2", "--model", "m")
    assert [o.timing.num_output_tokens for o in outputs] == [NUM_TEXT_CHUNKS] * 2
    prompts = serve.random_prompts(2, 8, args.range_ratio, args.vocab_size, args.seed)
    assert [o.timing.num_prompt_tokens for o in outputs] == [len(p) for p in prompts]


def test_chat_endpoint_sends_words_and_reads_deltas(server):
    fake, url = server
    _, (_, outputs, _) = run(url, "--num-prompts", "2", "--endpoint", "/v1/chat/completions")
    assert all(len(o.timing.token_times) == NUM_TEXT_CHUNKS for o in outputs)
    (message,) = fake.payloads[0]["messages"]
    assert message["role"] == "user"
    assert set(message["content"].split()) <= set(serve.WORDS)
    assert "prompt" not in fake.payloads[0]


def test_failures_are_counted_not_fatal(server):
    fake, url = server
    fake.failures = {0: "http", 2: "event", 3: "http"}
    args, (model, outputs, duration) = run(url, "--num-prompts", "6", "--max-concurrency", "1")
    report = serve.make_report(args, model, outputs, duration)["results"]
    assert report["num_failed"] == 3
    assert report["num_requests"] == 3
    assert report["num_output_tokens"] == 3 * NUM_TOKENS
    assert report["errors"] == ["HTTP 500: boom", "engine died", "HTTP 500: boom"]


def test_connection_errors_are_counted():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    args, (model, outputs, duration) = run(url, "--num-prompts", "2", "--model", "m")
    sock.close()
    report = serve.make_report(args, model, outputs, duration)["results"]
    assert report["num_failed"] == 2
    assert report["num_requests"] == 0
    assert report["errors"][0].startswith("ClientConnectorError")


@pytest.mark.parametrize("max_concurrency", [1, 3])
def test_max_concurrency_is_respected(server, max_concurrency):
    fake, url = server
    run(url, "--num-prompts", "8", "--max-concurrency", str(max_concurrency))
    assert fake.peak_in_flight == max_concurrency


def test_all_at_once_without_limits(server):
    fake, url = server
    run(url, "--num-prompts", "8")
    assert fake.peak_in_flight == 8


def test_poisson_arrivals_spread_requests(server):
    _, url = server
    _, (_, outputs, _) = run(url, "--num-prompts", "5", "--request-rate", "100", "--seed", "3")
    gaps = np.random.default_rng(3).exponential(1 / 100, size=4)  # the script's draws
    starts = [o.timing.start for o in outputs]
    assert starts[-1] - starts[0] >= gaps.sum() - 0.005
    assert all(o.error is None for o in outputs)


def test_main_prints_table_and_writes_json(server, tmp_path, capsys):
    fake, url = server
    path = tmp_path / "serve.json"
    argv = ["--base-url", url, "--num-prompts", "4", "--input-len", "8", "--output-len", "5"]
    argv += ["--num-warmups", "0"]
    serve.main([*argv, "--max-concurrency", "2", "--output", str(path), "--label", "fake"])
    report = json.loads(path.read_text())
    assert report["benchmark"] == "serve"
    assert report["label"] == "fake"
    config, results = report["config"], report["results"]
    assert config["model"] == "fake-model"
    assert config["max_concurrency"] == 2
    assert config["request_rate"] == "inf"
    assert "api_key" not in config
    assert results["num_requests"] == 4
    assert results["num_failed"] == 0
    assert results["num_output_tokens"] == 4 * NUM_TOKENS
    assert results["num_prompt_tokens"] == sum(len(p["prompt"]) for p in fake.payloads)
    assert results["mean_ttft_ms"] > 0
    assert results["mean_itl_ms"] > 0
    assert results["mean_tpot_ms"] > 0
    out = capsys.readouterr().out
    for line in ("Successful requests:", "Output token throughput", "Median TPOT (ms):", "P99 ITL"):
        assert line in out


def test_summarize_prefers_the_reported_token_count():
    timing = serve.RequestTiming(0.0, [1.0, 2.0, 3.0], 7)
    assert serve.summarize([timing], 1.0)["mean_tpot_ms"] == pytest.approx(1000.0)
    timing.reported_output_tokens = 5  # three chunks held five tokens
    result = serve.summarize([timing], 1.0)
    assert result["num_output_tokens"] == 5
    assert result["mean_tpot_ms"] == pytest.approx(500.0)
    assert result["mean_itl_ms"] == pytest.approx(1000.0)  # between chunks


def test_warmup_requests_come_first_and_are_not_measured(server):
    fake, url = server
    args = serve.parse_args(["--base-url", url, "--num-prompts", "3", "--num-warmups", "2"])
    _, outputs, _ = asyncio.run(serve.benchmark(args))
    assert len(outputs) == 3
    assert [p["max_tokens"] for p in fake.payloads] == [4, 4] + [args.output_len] * 3
