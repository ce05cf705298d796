"""The router in front of three real `fleetlm serve` replicas (SmolLM2 on CPU), driven by the
`openai` client: pass-through, prefix-aware placement, failover, ejection, errors."""

import os
import signal
import time

import httpx
import openai
import pytest

from tests.engine.entrypoints.openai.server_process import ServerProcess, free_port

from .helpers import RouterProcess, client_for, prefix_hits, running, wait_for_a_fresh_minute

pytestmark = pytest.mark.slow
MODEL = "smollm2"


@pytest.fixture(scope="module")
def replicas(smollm2_dir):
    servers = [
        ServerProcess(smollm2_dir, "--served-model-name", MODEL, "--seed", "0") for _ in range(3)
    ]
    with running(servers):
        yield servers


def test_completions_and_chat_pass_through_streaming_and_not(replicas, smollm2_dir):
    with RouterProcess([r.url for r in replicas], "--tokenizer", str(smollm2_dir)) as router:
        client = client_for(router.url)
        direct = client_for(replicas[0].url).completions.create(
            model=MODEL, prompt="The capital of France is", max_tokens=12, temperature=0
        )
        routed = client.completions.create(
            model=MODEL, prompt="The capital of France is", max_tokens=12, temperature=0
        )
        assert routed.choices[0].text == direct.choices[0].text
        messages = [{"role": "user", "content": "Name three colours."}]
        whole = client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=16, temperature=0
        )
        stream = client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=16, temperature=0, stream=True
        )
        streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert streamed == whole.choices[0].message.content
        models = client.models.list()
        assert [m.id for m in models.data] == [MODEL]
        answer = httpx.post(
            f"{router.url}/v1/completions",
            json={"model": MODEL, "prompt": "Hi", "max_tokens": 2},
            headers={"X-Request-Id": "trace-me"},
        )
        assert answer.status_code == 200 and answer.headers["x-request-id"] == "trace-me"


def test_prefix_aware_placement_sends_a_shared_prefix_to_one_replica(replicas, smollm2_dir):
    """Three system prompts x three users: with prefix routing each system prompt's blocks are
    computed once and hit by the next two users (the engines' own counters say so)."""
    systems = [
        f"You are assistant number {i}. " + "Always answer briefly and politely. " * 12
        for i in range(3)
    ]
    with RouterProcess([r.url for r in replicas], "--tokenizer", str(smollm2_dir)) as router:
        client = client_for(router.url)
        before = [prefix_hits(r.url) for r in replicas]
        for user in range(3):
            for system in systems:
                client.chat.completions.create(
                    model=MODEL,
                    messages=[
                        {"role": "system", "content": system},
                        {"role": "user", "content": f"Question {user}: what is {user} + 1?"},
                    ],
                    max_tokens=2,
                    temperature=0,
                )
        gained = [prefix_hits(r.url) - b for r, b in zip(replicas, before, strict=True)]
        prompt_tokens = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "system", "content": systems[0]}],
            max_tokens=1,
        ).usage.prompt_tokens
    # each of the 6 repeat requests hits (nearly) its whole system prompt
    assert sum(gained) >= 6 * (prompt_tokens - 2 * 16)


def test_failover_before_the_first_byte_and_ejection(replicas):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    urls = [dead, replicas[0].url, replicas[1].url]
    with RouterProcess(urls, "--strategy", "round_robin") as router:
        client = client_for(router.url)
        for i in range(6):
            kwargs = {"model": MODEL, "prompt": f"Count {i}:", "max_tokens": 3}
            if i % 2:
                text = "".join(
                    c.choices[0].text for c in client.completions.create(stream=True, **kwargs)
                )
            else:
                text = client.completions.create(**kwargs).choices[0].text
            assert text
        router.wait_for(lambda state: not state[dead]["healthy"])
        assert router.replicas()[replicas[0].url]["healthy"]


def test_no_replica_left_is_503_in_the_openai_shape():
    with RouterProcess([f"http://127.0.0.1:{free_port()}"]) as router:
        router.wait_for(lambda state: not any(r["healthy"] for r in state.values()))
        answer = httpx.post(f"{router.url}/v1/completions", json={"prompt": "x"}, timeout=10)
        assert answer.status_code == 503
        assert answer.json()["error"]["type"] == "server_error"
        assert httpx.get(f"{router.url}/health").status_code == 503


def test_client_errors_are_not_retried(replicas):
    with RouterProcess([r.url for r in replicas]) as router:
        answer = httpx.post(
            f"{router.url}/v1/completions",
            json={"model": MODEL, "prompt": "x", "max_tokens": -1},
            timeout=10,
        )
        assert answer.status_code == 400 and answer.json()["error"]["param"] == "max_tokens"
        metrics = httpx.get(f"{router.url}/metrics").text
        assert "fleetlm_router_retries_total 0.0" in metrics


def test_ejection_and_readmission_of_a_stopped_replica(replicas):
    target = replicas[2]
    with RouterProcess([r.url for r in replicas]) as router:
        router.wait_for(lambda state: all(r["healthy"] for r in state.values()))
        os.killpg(target.process.pid, signal.SIGSTOP)
        try:
            router.wait_for(lambda state: not state[target.url]["healthy"], timeout=30)
            client = client_for(router.url)
            for i in range(3):  # nothing goes to the frozen replica
                client.completions.create(model=MODEL, prompt=f"Hello {i}", max_tokens=2)
        finally:
            os.killpg(target.process.pid, signal.SIGCONT)
        router.wait_for(lambda state: state[target.url]["healthy"], timeout=30)


def test_a_replica_dying_mid_stream_ends_the_stream_with_an_error_event(smollm2_dir):
    doomed = ServerProcess(smollm2_dir, "--served-model-name", MODEL)
    with doomed, RouterProcess([doomed.url]) as router:
        stream = client_for(router.url).completions.create(
            model=MODEL,
            prompt="Once upon a time",
            max_tokens=400,
            temperature=0,
            extra_body={"ignore_eos": True},
            stream=True,
        )
        chunks = 0
        with pytest.raises(openai.APIError, match="mid-stream"):
            for _ in stream:
                chunks += 1
                if chunks == 3:
                    os.killpg(doomed.process.pid, signal.SIGKILL)
                    time.sleep(0.5)
        assert 3 <= chunks < 400


def test_rate_limits_per_api_key(replicas):
    urls = [r.url for r in replicas]
    with RouterProcess(urls, "--requests-per-minute", "2") as router:
        wait_for_a_fresh_minute()
        body = {"model": MODEL, "prompt": "Hi", "max_tokens": 1}

        def post(key: str) -> httpx.Response:
            headers = {"Authorization": f"Bearer {key}"}
            return httpx.post(f"{router.url}/v1/completions", json=body, headers=headers)

        assert [post("key-a").status_code for _ in range(2)] == [200, 200]
        refused = post("key-a")
        assert refused.status_code == 429
        assert refused.json()["error"]["type"] == "rate_limit_error"
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert post("key-b").status_code == 200
    with RouterProcess(urls, "--tokens-per-minute", "40") as router:
        wait_for_a_fresh_minute()
        client = client_for(router.url)
        answer = client.completions.create(
            model=MODEL, prompt="Count to ten:", max_tokens=40, extra_body={"ignore_eos": True}
        )
        assert answer.usage.total_tokens >= 40
        with pytest.raises(openai.RateLimitError):
            client.completions.create(model=MODEL, prompt="Again", max_tokens=1)
