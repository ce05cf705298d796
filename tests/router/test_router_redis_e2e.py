"""Routers sharing a real Redis, in front of three real `fleetlm serve` replicas that publish
their KV-cache events there: the event-driven index, two routers deciding alike, and Redis
killed and restarted mid-run."""

import time

import httpx
import pytest
import redis

from fleetlm.engine.core.kv_events import blocks_key, stream_key
from tests.engine.entrypoints.openai.server_process import ServerProcess
from tests.redis_server import RedisServer

from .helpers import RouterProcess, client_for, prefix_hits, running, wait_for_a_fresh_minute

pytestmark = pytest.mark.slow
MODEL = "smollm2"


@pytest.fixture(scope="module")
def shared_redis():
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def replicas(smollm2_dir, shared_redis):
    # 0.05 GiB of KV cache: ~70 blocks of 16 tokens, so distinct prompts evict each other.
    servers = [
        ServerProcess(
            smollm2_dir,
            "--served-model-name", MODEL,
            "--cpu-kv-cache-gib", "0.05",
            "--kv-events-redis-url", shared_redis.url,
            "--register-redis-url", shared_redis.url,
        )
        for _ in range(3)
    ]  # fmt: skip
    with running(servers):
        yield servers


def held_in_redis(client: redis.Redis, replica: str) -> int:
    return client.scard(blocks_key(replica))


def ask(url: str, system: str, question: str) -> None:
    client_for(url).chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
        max_tokens=2,
        temperature=0,
    )


def test_the_event_index_follows_the_engines_caches_through_evictions(
    replicas, shared_redis, smollm2_dir
):
    urls = [r.url for r in replicas]
    client = redis.Redis.from_url(shared_redis.url)
    with RouterProcess(
        urls, "--tokenizer", str(smollm2_dir), "--redis-url", shared_redis.url
    ) as router:
        assert httpx.get(f"{router.url}/admin/replicas").json()["prefix_source"] == "kv_events"
        for i in range(24):  # 24 distinct prompts of ~10 blocks over ~3 x 70 blocks
            ask(router.url, f"Story {i}: " + f"the number {i} walks on. " * 20, "Go on.")
        removed = sum(
            1
            for url in urls
            for _, fields in client.xrange(stream_key(url))
            if fields[b"type"] == b"removed"
        )
        assert removed > 0, "no evictions happened: the test proves nothing"
        router.wait_for(
            lambda state: all(
                state[url]["cached_blocks"] == held_in_redis(client, url) for url in urls
            )
        )
        # A prefix just computed by one replica is routed back to it (and hits its cache).
        system = "You are a careful assistant. " * 15
        ask(router.url, system, "First question?")
        time.sleep(0.5)  # its stored event reaches the router
        before = sum(prefix_hits(r.url) for r in replicas)
        ask(router.url, system, "Second question?")
        assert sum(prefix_hits(r.url) for r in replicas) - before >= 5 * 16


def test_two_routers_on_one_redis_choose_the_same_replica(replicas, shared_redis, smollm2_dir):
    """Without KV events (placements shared through Redis) and with them."""
    urls = [r.url for r in replicas]
    for mode in ("--no-kv-events", "--kv-events"):
        common = ["--tokenizer", str(smollm2_dir), "--redis-url", shared_redis.url, mode]
        with RouterProcess(urls, *common) as first, RouterProcess(urls, *common) as second:
            for i in range(3):
                system = f"[{mode} {i}] You are assistant {i}; be brief. " * 12
                ask(first.url, system, "Hello?")
                time.sleep(0.5)  # the engine's events reach the second router
                before = sum(prefix_hits(r.url) for r in replicas)
                ask(second.url, system, "And again?")
                gained = sum(prefix_hits(r.url) for r in replicas) - before
                assert gained >= 5 * 16, f"{mode}: the second router missed the cached prefix"


def test_redis_killed_and_restarted_mid_run_costs_no_request(replicas, shared_redis, smollm2_dir):
    urls = [r.url for r in replicas]
    client = redis.Redis.from_url(shared_redis.url)
    with RouterProcess(
        urls, "--tokenizer", str(smollm2_dir), "--redis-url", shared_redis.url
    ) as router:
        ask(router.url, "Warm up. " * 20, "Hi")
        shared_redis.stop()
        try:
            for i in range(6):  # every request still answered (from the router's local view)
                ask(router.url, f"During the outage {i}. " * 10, "Hi")
        finally:
            shared_redis.start()  # empty: engines and routers re-sync into it
        metrics = httpx.get(f"{router.url}/metrics").text
        failures = next(
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("fleetlm_router_redis_failures ")
        )
        assert failures > 0
        for i in range(3):
            ask(router.url, f"After the outage {i}. " * 10, "Hi")
        router.wait_for(
            lambda state: all(
                state[url]["cached_blocks"] == held_in_redis(client, url) > 0 for url in urls
            ),
            timeout=30,
        )


def test_two_routers_share_one_request_budget(replicas, shared_redis):
    urls = [r.url for r in replicas]
    common = ["--redis-url", shared_redis.url, "--requests-per-minute", "3"]
    with RouterProcess(urls, *common) as first, RouterProcess(urls, *common) as second:
        wait_for_a_fresh_minute()
        body = {"model": MODEL, "prompt": "Hi", "max_tokens": 1}
        headers = {"Authorization": "Bearer shared-key"}
        codes = [
            httpx.post(f"{router.url}/v1/completions", json=body, headers=headers).status_code
            for router in (first, second, first, second)
        ]
    assert codes == [200, 200, 200, 429]


def test_discovery_of_replicas_registered_in_redis(replicas, shared_redis, smollm2_dir):
    """Engines register themselves; a draining one leaves the registry and the router."""
    extra = ServerProcess(
        smollm2_dir, "--served-model-name", MODEL, "--register-redis-url", shared_redis.url
    )
    with RouterProcess([], "--discover", "redis", "--redis-url", shared_redis.url) as router:
        router.wait_for(lambda state: set(state) == {r.url for r in replicas})
        with extra:
            router.wait_for(lambda state: extra.url in state)
            ask(router.url, "Discovered. " * 5, "Hi")
        router.wait_for(lambda state: set(state) == {r.url for r in replicas})


def test_two_models_on_one_redis_keep_to_their_key_prefix(replicas, shared_redis, smollm2_dir):
    """A second model's engine and router under their own key prefix: each router discovers
    and follows only its own model's engines."""
    prefix = "fleetlm:team-b.other:"
    url = shared_redis.url
    other = ServerProcess(
        smollm2_dir,
        "--served-model-name", MODEL,
        "--kv-events-redis-url", url,
        "--register-redis-url", url,
        "--redis-key-prefix", prefix,
    )  # fmt: skip
    common = ["--discover", "redis", "--redis-url", url, "--tokenizer", str(smollm2_dir)]
    client = redis.Redis.from_url(url)
    with (
        other,
        RouterProcess([], *common) as router_a,
        RouterProcess([], *common, "--redis-key-prefix", prefix) as router_b,
    ):
        router_b.wait_for(lambda state: set(state) == {other.url})
        router_a.wait_for(lambda state: set(state) == {r.url for r in replicas})
        ask(router_b.url, "Only for the other model. " * 20, "Hi")
        router_b.wait_for(
            lambda state: (
                state[other.url]["cached_blocks"] == client.scard(blocks_key(other.url, prefix)) > 0
            )
        )
        assert client.exists(blocks_key(other.url), stream_key(other.url)) == 0
        assert other.url not in router_a.replicas()
