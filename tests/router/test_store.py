"""The router's shared state: the in-process store and the Redis store answer alike, Redis is
shared by routers, and the resilient store survives a Redis outage and re-syncs after it.

Plain sync tests running async scenarios with asyncio.run (no pytest-asyncio here)."""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import pytest

from fleetlm.router.prefix_index import PrefixIndex
from fleetlm.router.store import (
    MemoryStore,
    RedisStore,
    ResilientStore,
    RouterStore,
    create_store,
)

A, B, C, D = (bytes([i]) * 16 for i in range(4))
RA, RB, RC = "http://a:8000", "http://b:8000", "http://c:8000"


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


StoreFactory = Callable[..., RouterStore]


@pytest.fixture(params=["memory", "redis"])
def make_store(request) -> StoreFactory:
    """A store factory: `make_store(clock=...)`, in-process or on a fresh real Redis."""
    if request.param == "memory":
        return lambda clock=time.monotonic: MemoryStore(clock=clock)
    server = request.getfixturevalue("redis_server")
    return lambda clock=time.time: RedisStore(server.url, "router-1", clock=clock)


def run(scenario: Callable[..., Awaitable[None]], *stores: RouterStore) -> None:
    async def main() -> None:
        try:
            await scenario(*stores)
        finally:
            for store in stores:
                await store.close()

    asyncio.run(main())


# --- the interface, in-process and in Redis -------------------------------------------------


def test_in_flight_counts_add_up_and_zeros_are_omitted(make_store):
    async def scenario(store: RouterStore) -> None:
        await store.add_in_flight(RA, 1)
        await store.add_in_flight(RA, 1)
        await store.add_in_flight(RB, 1)
        assert await store.in_flight() == {RA: 2, RB: 1}
        await store.add_in_flight(RB, -1)
        assert await store.in_flight() == {RA: 2}

    run(scenario, make_store())


def test_prefix_matches_like_the_prefix_index(make_store):
    inserts = [(RA, [A, B, C]), (RB, [A, B]), (RC, [B, C])]  # RC's chain does not start at A
    queries = [[A, B, C, D], [A], [D], [B, C], [A, C], []]
    index = PrefixIndex(capacity=100)
    for replica, hashes in inserts:
        index.insert(replica, hashes)
    expected = [index.match(query) for query in queries]

    async def scenario(store: RouterStore) -> None:
        for replica, hashes in inserts:
            await store.record_prefix(replica, hashes)
        assert [await store.match_prefix(query) for query in queries] == expected
        assert expected[0] == {RA: 3, RB: 2}

    run(scenario, make_store())


def test_rate_window_adds_up_and_a_new_window_starts_from_zero(make_store):
    clock = FakeClock(1000.0)

    async def scenario(store: RouterStore) -> None:
        assert await store.incr_window("key-1", 3, window_s=10) == 3
        assert await store.incr_window("key-1", 4, window_s=10) == 7
        assert await store.incr_window("key-2", 1, window_s=10) == 1  # keys are separate
        clock.now += 10
        assert await store.incr_window("key-1", 2, window_s=10) == 2

    run(scenario, make_store(clock=clock))


def test_registered_replicas_appear_and_expire(make_store):
    clock = FakeClock(1000.0)

    async def scenario(store: RouterStore) -> None:
        await store.register_replica(RB, ttl_s=5)
        await store.register_replica(RA, ttl_s=20)
        assert await store.registered_replicas() == [RA, RB]
        clock.now += 4
        await store.register_replica(RB, ttl_s=5)  # a heartbeat extends it
        clock.now += 4
        assert await store.registered_replicas() == [RA, RB]
        clock.now += 2
        assert await store.registered_replicas() == [RA]
        clock.now += 20
        assert await store.registered_replicas() == []

    run(scenario, make_store(clock=clock))


# --- Redis shared by several routers ----------------------------------------------------------


def test_routers_on_one_redis_see_the_sum_of_their_in_flight(redis_server):
    async def scenario(one: RedisStore, two: RedisStore) -> None:
        await one.add_in_flight(RA, 2)
        await two.add_in_flight(RA, 1)
        await two.add_in_flight(RB, 1)
        assert await one.in_flight() == await two.in_flight() == {RA: 3, RB: 1}

    run(scenario, RedisStore(redis_server.url, "one"), RedisStore(redis_server.url, "two"))


def test_a_dead_routers_in_flight_expires_unless_it_heartbeats(redis_server):
    async def scenario(short: RedisStore, other: RedisStore) -> None:
        await short.add_in_flight(RA, 2)
        await other.add_in_flight(RA, 1)
        assert await other.in_flight() == {RA: 3}
        await asyncio.sleep(0.4)
        await short.heartbeat()
        await asyncio.sleep(0.4)  # 0.8 s after the write, 0.4 s after the heartbeat
        assert await other.in_flight() == {RA: 3}
        await asyncio.sleep(0.7)  # no heartbeat: the router is taken for dead
        assert await other.in_flight() == {RA: 1}

    run(
        scenario,
        RedisStore(redis_server.url, "short", inflight_ttl_s=0.6),
        RedisStore(redis_server.url, "other"),
    )


def test_routers_on_one_redis_match_the_same_prefixes_in_one_round_trip(redis_server):
    async def scenario(one: RedisStore, two: RedisStore) -> None:
        await one.record_prefix(RA, [A, B, C])
        await two.record_prefix(RB, [A, B])
        pipelines = 0
        make_pipeline = two.client.pipeline

        def counting_pipeline(*args, **kwargs):
            nonlocal pipelines
            pipelines += 1
            return make_pipeline(*args, **kwargs)

        two.client.pipeline = counting_pipeline
        assert await one.match_prefix([A, B, C, D]) == {RA: 3, RB: 2}
        assert await two.match_prefix([A, B, C, D]) == {RA: 3, RB: 2}
        assert pipelines == 1

    run(scenario, RedisStore(redis_server.url, "one"), RedisStore(redis_server.url, "two"))


def test_prefix_records_expire_after_their_ttl(redis_server):
    async def scenario(store: RedisStore) -> None:
        await store.record_prefix(RA, [A, B])
        assert await store.match_prefix([A, B]) == {RA: 2}
        ttl_ms = await store.client.pttl(store.prefix_key(A))
        assert 0 < ttl_ms <= 300
        await asyncio.sleep(0.4)
        assert await store.match_prefix([A, B]) == {}

    run(scenario, RedisStore(redis_server.url, "one", prefix_ttl_s=0.3))


# --- several models on one Redis: one key prefix each ---------------------------------------


def test_default_key_prefix_writes_the_historical_key_names(redis_server):
    clock = FakeClock(1000.0)

    async def scenario(store: RedisStore) -> None:
        await store.add_in_flight(RA, 1)
        await store.record_prefix(RA, [A])
        await store.incr_window("key-1", 1, window_s=60)
        await store.register_replica(RB, ttl_s=30)
        assert set(await store.client.keys("*")) == {
            "fleetlm:router:router-1:inflight",
            "fleetlm:routers",
            f"fleetlm:prefix:{A.hex()}",
            "fleetlm:rate:key-1:16",  # 1000 s // 60 s
            "fleetlm:replicas",
        }

    run(scenario, RedisStore(redis_server.url, "router-1", clock=clock))


def test_stores_with_different_key_prefixes_share_nothing(redis_server):
    """Two models' routers on one Redis, even with the same router id and replica URLs."""
    clock = FakeClock(1000.0)

    async def scenario(one: RedisStore, two: RedisStore) -> None:
        await one.add_in_flight(RA, 2)
        await two.add_in_flight(RA, 1)
        await two.add_in_flight(RB, 1)
        await one.record_prefix(RA, [A, B])
        await two.record_prefix(RB, [A])
        assert await one.incr_window("key-1", 5, window_s=60) == 5
        assert await two.incr_window("key-1", 1, window_s=60) == 1
        await one.register_replica(RA, ttl_s=30)
        await two.register_replica(RC, ttl_s=30)

        assert await one.in_flight() == {RA: 2}
        assert await two.in_flight() == {RA: 1, RB: 1}
        assert await one.match_prefix([A, B]) == {RA: 2}
        assert await two.match_prefix([A, B]) == {RB: 1}
        assert await one.incr_window("key-1", 0, window_s=60) == 5
        assert await two.incr_window("key-1", 0, window_s=60) == 1
        assert await one.registered_replicas() == [RA]
        assert await two.registered_replicas() == [RC]
        keys = await one.client.keys("*")
        assert {key.startswith("fleetlm:team-b.llama:") for key in keys} == {True, False}
        assert all(key.startswith("fleetlm:") for key in keys)

    run(
        scenario,
        RedisStore(redis_server.url, "router-1", clock=clock),
        RedisStore(redis_server.url, "router-1", key_prefix="fleetlm:team-b.llama:", clock=clock),
    )


def test_create_store_keeps_the_key_prefix():
    store = create_store("redis://127.0.0.1:1/0", "router-1", key_prefix="fleetlm:ns.m:")
    assert store.redis.prefix_key(A) == f"fleetlm:ns.m:prefix:{A.hex()}"
    assert store.redis.inflight_key == "fleetlm:ns.m:router:router-1:inflight"


# --- surviving a Redis outage -------------------------------------------------------------------


def test_resilient_store_survives_an_outage_and_resyncs(redis_server, caplog):
    clock = FakeClock(0.0)  # the retry interval's clock

    async def scenario(store: ResilientStore, observer: RedisStore) -> None:
        await store.add_in_flight(RA, 2)
        await store.record_prefix(RA, [A, B])
        assert await observer.in_flight() == {RA: 2}
        assert await observer.match_prefix([A, B]) == {RA: 2}

        redis_server.stop()
        await store.add_in_flight(RB, 1)
        await store.record_prefix(RB, [C, D])
        assert await store.in_flight() == {RA: 2, RB: 1}  # from the local view
        assert await store.match_prefix([A, B]) == {RA: 2}
        assert await store.match_prefix([C, D]) == {RB: 2}
        assert await store.incr_window("key", 2, 60) == 2
        await store.register_replica(RC, ttl_s=30)
        assert await store.registered_replicas() == [RC]
        await store.heartbeat()
        assert store.degraded
        assert store.num_failures == 1  # no retry before the interval
        clock.now += 1.0
        await store.heartbeat()
        assert store.num_failures == 2  # one retry per interval while Redis is down

        redis_server.start()  # same port, empty
        await store.heartbeat()
        assert store.degraded  # the interval has not passed since the last try
        clock.now += 1.0
        await store.heartbeat()
        assert not store.degraded and store.num_failures == 2
        # Redis again holds this router's counts and what it recorded during the outage
        # (what it recorded before went with the restarted Redis).
        assert await observer.in_flight() == {RA: 2, RB: 1}
        assert await observer.match_prefix([C, D]) == {RB: 2}
        await store.add_in_flight(RB, -1)
        assert await observer.in_flight() == {RA: 2}

    caplog.set_level(logging.WARNING, logger="fleetlm.router.store")
    store = ResilientStore(RedisStore(redis_server.url, "router-1"), MemoryStore(), clock=clock)
    run(scenario, store, RedisStore(redis_server.url, "observer"))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # once per outage


def test_resilient_store_works_without_redis_from_the_start(redis_server):
    async def scenario(store: RouterStore) -> None:
        await store.add_in_flight(RA, 1)
        await store.record_prefix(RA, [A])
        assert await store.in_flight() == {RA: 1}
        assert await store.match_prefix([A, B]) == {RA: 1}
        assert store.num_failures >= 1

    redis_server.stop()
    run(scenario, create_store(redis_server.url, "router-1"))


def test_create_store_is_in_process_without_a_url():
    assert isinstance(create_store(None, "router-1"), MemoryStore)
    assert isinstance(create_store("redis://127.0.0.1:1/0", "router-1"), ResilientStore)
