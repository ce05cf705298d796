"""Errors and limits of a real server: the OpenAI error shape, never 422 or 500; auth;
overload; client disconnects; SIGTERM draining; the engine process dying."""

import json
import os
import re
import signal
import threading
import time

import httpx
import pytest

from .server_process import ServerProcess

pytestmark = pytest.mark.slow

MODEL = "smollm2"


@pytest.fixture(scope="module")
def server(smollm2_dir):
    with ServerProcess(
        smollm2_dir, "--served-model-name", MODEL, "--max-n", "4", "--max-body-bytes", "65536"
    ) as process:
        yield process


def post(server, path, body=None, content=None, **kwargs):
    return httpx.post(f"{server.url}{path}", json=body, content=content, timeout=60, **kwargs)


def assert_error(response, status, param=None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param, error
    return error


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "hi", "temperature": -1}, "temperature"),
        ({"prompt": "hi", "top_p": 0}, "top_p"),
        ({"prompt": "hi", "n": 5}, "n"),
        ({"prompt": "hi", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "hi", "max_tokens": 600}, "max_tokens"),
        ({"prompt": "hi", "logprobs": 21}, "logprobs"),
        ({"prompt": [1, 2, 49152]}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "hi", "frobnicate": True}, "frobnicate"),
        ({"prompt": "hi", "logit_bias": {"1": 5}}, "logit_bias"),
        ({"prompt": "hi", "max_tokens": "ten"}, "max_tokens"),
        ({}, "prompt"),
    ],
)
def test_invalid_completion_requests_are_400_naming_the_parameter(server, body, param):
    assert_error(post(server, "/v1/completions", body), 400, param)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
        (
            {"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 10**6},
            "max_completion_tokens",
        ),
        (
            {"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]},
            "tools",
        ),
        ({"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}, "top_logprobs"),
    ],
)
def test_invalid_chat_requests_are_400_naming_the_parameter(server, body, param):
    assert_error(post(server, "/v1/chat/completions", body), 400, param)


def test_bodies_rejected_before_any_work(server):
    headers = {"content-type": "application/json"}
    assert_error(post(server, "/v1/completions", content=b"{not json", headers=headers), 400)
    assert_error(post(server, "/v1/completions", content=b"[1, 2]", headers=headers), 400)
    deep = b'{"prompt": ' + b"[" * 200 + b"]" * 200 + b"}"
    assert (
        "nests deeper"
        in assert_error(post(server, "/v1/completions", content=deep, headers=headers), 400)[
            "message"
        ]
    )
    big = json.dumps({"prompt": "x" * 70000}).encode()
    assert_error(post(server, "/v1/completions", content=big, headers=headers), 413)


def test_unknown_model_is_404_and_unknown_route_too(server):
    error = assert_error(
        post(server, "/v1/completions", {"prompt": "hi", "model": "gpt-9"}), 404, "model"
    )
    assert error["code"] == "model_not_found"
    assert_error(httpx.get(f"{server.url}/v1/nothing"), 404)


def test_the_server_still_answers_after_bad_requests(server):
    response = post(server, "/v1/completions", {"prompt": "hi", "max_tokens": 2, "model": MODEL})
    assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] == 2


def metric(server, name):
    text = httpx.get(f"{server.url}/metrics").text
    match = re.search(rf"^{re.escape(name)}{{[^}}]*}} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


def wait_idle(server, timeout=10.0):
    """Until no request runs and every KV block is free again (stats arrive about each second)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        free = metric(server, "fleetlm:kv_cache_free_blocks")
        if metric(server, "vllm:num_requests_running") == 0 and free == metric(
            server, "fleetlm:kv_cache_blocks"
        ):
            return True
        time.sleep(0.2)
    return False


def test_a_client_disconnecting_mid_stream_aborts_its_request(server):
    body = {
        "prompt": "Tell me a long story.",
        "max_tokens": 400,
        "ignore_eos": True,
        "stream": True,
    }
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as response:
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))
    started = time.monotonic()
    assert wait_idle(server)
    assert time.monotonic() - started < 8  # 400 tokens would take far longer


def test_a_client_disconnecting_before_the_answer_aborts_its_request(server):
    body = {"prompt": "Tell me a long story.", "max_tokens": 400, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/completions", json=body, timeout=httpx.Timeout(60, read=1.0))
    assert wait_idle(server)


def test_api_key_is_required_except_on_health_and_metrics(smollm2_dir):
    with ServerProcess(smollm2_dir, "--api-key", "s3cret") as server:
        body = {"prompt": "hi", "max_tokens": 1}
        assert_error(post(server, "/v1/completions", body), 401)
        assert_error(
            post(server, "/v1/completions", body, headers={"authorization": "Bearer nope"}), 401
        )
        assert_error(httpx.get(f"{server.url}/v1/models"), 401)
        assert_error(post(server, "/tokenize", {"prompt": "hi"}), 401)
        ok = post(server, "/v1/completions", body, headers={"authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert httpx.get(f"{server.url}/health").status_code == 200
        assert httpx.get(f"{server.url}/metrics").status_code == 200


def _stream_in_thread(url, body, chunks, done):
    def run():
        with httpx.stream("POST", url, json=body, timeout=120) as response:
            chunks.append(response.status_code)
            for line in response.iter_lines():
                if line.startswith("data:"):
                    chunks.append(line)
        done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_overload_is_429_with_retry_after_and_accepted_requests_finish(smollm2_dir):
    with ServerProcess(smollm2_dir, "--max-num-seqs", "1", "--max-waiting-requests", "0") as server:
        chunks, done = [], threading.Event()
        body = {"prompt": "Count to fifty:", "max_tokens": 40, "ignore_eos": True, "stream": True}
        _stream_in_thread(f"{server.url}/v1/completions", body, chunks, done)
        _wait_for(lambda: len(chunks) > 1)
        refused = post(server, "/v1/completions", {"prompt": "hi", "max_tokens": 1})
        assert_error(refused, 429)
        assert refused.headers["retry-after"] == "1"
        done.wait(60)
        assert chunks[-1] == "data: [DONE]" and '"finish_reason": "length"' in chunks[-2]
        assert post(server, "/v1/completions", {"prompt": "hi", "max_tokens": 1}).status_code == 200


def test_sigterm_drains_in_flight_requests_then_exits_cleanly(smollm2_dir):
    server = ServerProcess(smollm2_dir, "--drain-timeout", "60")
    with server:
        engine_pids = server.children()
        assert engine_pids
        chunks, done = [], threading.Event()
        body = {"prompt": "Count to fifty:", "max_tokens": 30, "ignore_eos": True, "stream": True}
        _stream_in_thread(f"{server.url}/v1/completions", body, chunks, done)
        _wait_for(lambda: len(chunks) > 1)
        server.process.send_signal(signal.SIGTERM)
        _wait_for(lambda: httpx.get(f"{server.url}/health").status_code == 503, timeout=5)
        assert_error(post(server, "/v1/completions", {"prompt": "hi", "max_tokens": 1}), 503)
        assert done.wait(60)
        assert chunks[-1] == "data: [DONE]"
        assert chunks[0] == 200 and '"finish_reason": "length"' in chunks[-2]
        assert sum('"text"' in c for c in chunks[1:]) == 30  # every token arrived
        assert server.process.wait(30) == 0
    assert not any(_is_running(pid) for pid in engine_pids)


def _is_running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as status:
            return "zombie" not in status.read().lower()
    except FileNotFoundError:
        return False


def test_engine_death_turns_health_503_and_ends_streams_with_an_error_event(smollm2_dir):
    with ServerProcess(smollm2_dir) as server:
        chunks, done = [], threading.Event()
        body = {"prompt": "Count to fifty:", "max_tokens": 400, "ignore_eos": True, "stream": True}
        _stream_in_thread(f"{server.url}/v1/completions", body, chunks, done)
        _wait_for(lambda: len(chunks) > 1)
        (engine_pid,) = server.children()
        os.kill(engine_pid, signal.SIGKILL)
        assert done.wait(30)
        assert chunks[-1] == "data: [DONE]"
        assert '"error"' in chunks[-2]
        assert httpx.get(f"{server.url}/health").status_code == 503
        assert_error(post(server, "/v1/completions", {"prompt": "hi", "max_tokens": 1}), 503)
