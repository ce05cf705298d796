"""A real `fleetlm serve` process driven by the official `openai` client."""

import httpx
import openai
import pytest

from .server_process import ServerProcess

pytestmark = pytest.mark.slow

MODEL = "smollm2"
CHAT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def server(smollm2_dir):
    with ServerProcess(smollm2_dir, "--served-model-name", MODEL, "--max-n", "4") as process:
        yield process


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def test_models_lists_the_served_model(client):
    (model,) = client.models.list().data
    assert model.id == MODEL and model.owned_by == "fleetlm"


def test_completion_streamed_text_equals_the_non_streamed_text(client):
    kwargs = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 24, "temperature": 0.0}
    full = client.completions.create(**kwargs)
    chunks = list(
        client.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
    )
    streamed = "".join(c.choices[0].text for c in chunks if c.choices)
    assert streamed == full.choices[0].text and streamed
    assert full.choices[0].finish_reason == "length"
    assert full.usage.completion_tokens == 24
    assert chunks[-1].usage.completion_tokens == 24 and chunks[-1].choices == []
    assert full.usage.prompt_tokens == chunks[-1].usage.prompt_tokens > 0


def test_chat_streamed_text_equals_the_non_streamed_text(client):
    full = client.chat.completions.create(
        model=MODEL, messages=CHAT, temperature=0.0, max_tokens=40
    )
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=CHAT, temperature=0.0, max_tokens=40, stream=True
        )
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == full.choices[0].message.content
    assert "Paris" in streamed
    assert full.choices[0].finish_reason == "stop"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_token_id_prompts_and_batches_of_prompts(client, server):
    tokens = httpx.post(f"{server.url}/tokenize", json={"prompt": "Hello there"}).json()["tokens"]
    by_ids = client.completions.create(model=MODEL, prompt=tokens, max_tokens=8, temperature=0.0)
    by_text = client.completions.create(
        model=MODEL, prompt="Hello there", max_tokens=8, temperature=0.0
    )
    assert by_ids.choices[0].text == by_text.choices[0].text
    batch = client.completions.create(
        model=MODEL, prompt=["Hello there", "The sky is"], n=2, max_tokens=4, temperature=0.0
    )
    assert sorted(c.index for c in batch.choices) == [0, 1, 2, 3]


def test_n_samples_seed_and_stop(client):
    kwargs = {
        "model": MODEL,
        "prompt": "My favourite animal is",
        "max_tokens": 16,
        "temperature": 1.0,
        "seed": 11,
        "n": 3,
    }
    first = client.completions.create(**kwargs)
    second = client.completions.create(**kwargs)
    assert [c.text for c in first.choices] == [c.text for c in second.choices]
    assert len({c.text for c in first.choices}) == 3
    greedy = (
        client.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=16, temperature=0.0)
        .choices[0]
        .text
    )
    stop = greedy[greedy.index("6") :][:2]
    stopped = client.completions.create(
        model=MODEL, prompt="1, 2, 3, 4,", max_tokens=16, temperature=0.0, stop=[stop]
    ).choices[0]
    assert stopped.text == greedy[: greedy.index(stop)]
    assert stopped.finish_reason == "stop"


def test_logprobs_in_completions_and_chat(client):
    completion = client.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=4, temperature=0.0, logprobs=3
    )
    logprobs = completion.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == 4
    assert all(len(top) == 3 for top in logprobs.top_logprobs)
    # Greedy: each chosen token is the most likely one.
    assert all(
        lp == pytest.approx(max(top.values()), abs=1e-5)
        for lp, top in zip(logprobs.token_logprobs, logprobs.top_logprobs, strict=True)
    )
    chat = client.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=4, logprobs=True, top_logprobs=2, temperature=0.0
    )
    content = chat.choices[0].logprobs.content
    assert len(content) == 4 and all(len(t.top_logprobs) == 2 for t in content)
    assert "".join(t.token for t in content) == chat.choices[0].message.content


def test_echo_returns_the_prompt_too(client):
    completion = client.completions.create(
        model=MODEL, prompt="The sky is", max_tokens=3, temperature=0.0, echo=True
    )
    assert completion.choices[0].text.startswith("The sky is")


def test_tokenize_detokenize_version_health_metrics(server, client):
    tokens = httpx.post(f"{server.url}/tokenize", json={"prompt": "Hello world"}).json()
    assert tokens["count"] == len(tokens["tokens"]) and tokens["max_model_len"] == 512
    text = httpx.post(f"{server.url}/detokenize", json={"tokens": tokens["tokens"]}).json()
    assert text["prompt"] == "Hello world"
    chat_tokens = httpx.post(f"{server.url}/tokenize", json={"messages": CHAT}).json()
    assert chat_tokens["count"] > tokens["count"]
    assert httpx.get(f"{server.url}/version").json()["version"]
    assert httpx.get(f"{server.url}/health").status_code == 200
    client.completions.create(model=MODEL, prompt="Hi", max_tokens=2)
    metrics = httpx.get(f"{server.url}/metrics").text
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:prefix_cache_queries",
        "vllm:prefix_cache_hits",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:inter_token_latency_seconds_bucket",
        "vllm:e2e_request_latency_seconds_bucket",
        "vllm:request_success_total",
    ):
        assert name in metrics, name
