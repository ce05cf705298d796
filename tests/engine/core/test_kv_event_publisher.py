"""The KV-event publisher against a real redis-server: Redis mirrors the block pool, through
outages and restarts, and end to end behind a real engine-core loop (tiny random model)."""

import itertools
import logging
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from fleetlm.engine.core.engine_core import EngineCore
from fleetlm.engine.core.engine_process import EngineProcess
from fleetlm.engine.core.kv_cache_manager import KVCacheManager
from fleetlm.engine.core.kv_event_publisher import KVEventPublisher
from fleetlm.engine.core.kv_events import KVEvent, blocks_key, stream_key
from fleetlm.engine.core.protocol import EngineCoreRequest
from fleetlm.engine.core.wire import TO_FRONT_END, decode_message, encode_message, recv_frame
from fleetlm.engine.core.wire import send_frame as send_raw_frame
from fleetlm.engine.sampling_params import SamplingParams

from .helpers import make_request, tiny_engine_args

pytestmark = pytest.mark.timeout(60)

REPLICA = "http://10.0.0.7:8000"


@pytest.fixture
def client(redis_server):
    with redis.Redis.from_url(redis_server.url) as client:
        yield client


@pytest.fixture
def publisher(redis_server):
    publisher = KVEventPublisher(redis_server.url, REPLICA)
    yield publisher
    publisher.close()


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.02)


def redis_set(client: redis.Redis, prefix: str = "fleetlm:") -> set[str]:
    return {h.decode() for h in client.smembers(blocks_key(REPLICA, prefix))}


def replayed_stream(client: redis.Redis) -> set[str]:
    """What a follower holds after applying the whole stream to an empty set."""
    held: set[str] = set()
    for _, fields in client.xrange(stream_key(REPLICA), "-", "+"):
        event = KVEvent.from_fields(fields)
        hashes = {h.hex() for h in event.hashes}
        if event.type == "stored":
            held |= hashes
        elif event.type == "removed":
            held -= hashes
        else:
            held.clear()
    return held


def hex_set(hashes: list[bytes]) -> set[str]:
    return {h.hex() for h in hashes}


def run_requests(manager: KVCacheManager, first: int, count: int) -> None:
    """`count` distinct prompts through the cache, one after the other (evicting older ones)."""
    for i in range(first, first + count):
        request = make_request(f"r{i}", num_prompt_tokens=9 + i % 7)
        hits = manager.get_computed_blocks(request)
        assert manager.allocate_slots(request, request.num_tokens, hits) is not None
        manager.free(request)


def mirror(publisher: KVEventPublisher, manager: KVCacheManager) -> None:
    """What the engine loop does after each step."""
    publisher.publish(manager.pool.take_events())
    if publisher.needs_snapshot:
        publisher.publish_snapshot(manager.pool.cached_hashes())


def test_redis_mirrors_the_pool_and_the_stream_replays_to_the_set(client, publisher):
    manager = KVCacheManager(num_blocks=8, block_size=4, record_kv_events=True)
    for batch in range(6):
        run_requests(manager, first=batch * 4, count=4)
        mirror(publisher, manager)
    manager.reset_prefix_cache()
    run_requests(manager, first=100, count=2)
    mirror(publisher, manager)
    expected = hex_set(manager.pool.cached_hashes())
    assert manager.pool.num_evictions > 0 and expected
    wait_until(lambda: redis_set(client) == expected)
    assert replayed_stream(client) == expected
    types = [fields[b"type"] for _, fields in client.xrange(stream_key(REPLICA))]
    assert types[0] == b"cleared" and b"removed" in types and types.count(b"cleared") == 2
    assert publisher.num_failures == 0 and not publisher.needs_snapshot


def test_a_starting_publisher_clears_what_an_earlier_run_left(client, redis_server):
    client.sadd(blocks_key(REPLICA), "ab" * 16)
    publisher = KVEventPublisher(redis_server.url, REPLICA)
    try:
        wait_until(lambda: client.xlen(stream_key(REPLICA)) == 1)
        assert redis_set(client) == set()
    finally:
        publisher.close()


def test_close_flushes_the_queue(client, redis_server):
    publisher = KVEventPublisher(redis_server.url, REPLICA)
    publisher.publish([KVEvent("stored", (b"\x01" * 16, b"\x02" * 16))])
    publisher.publish([KVEvent("removed", (b"\x01" * 16,))])
    publisher.close()
    assert redis_set(client) == {"02" * 16} == replayed_stream(client)


def test_redis_outage_then_snapshot_restores_the_exact_set(client, publisher, redis_server, caplog):
    manager = KVCacheManager(num_blocks=8, block_size=4, record_kv_events=True)
    run_requests(manager, first=0, count=3)
    mirror(publisher, manager)
    wait_until(lambda: redis_set(client) == hex_set(manager.pool.cached_hashes()))

    redis_server.stop()
    with caplog.at_level(logging.WARNING, logger="fleetlm.engine.core.kv_event_publisher"):
        for batch in range(3):  # publishing never raises nor blocks while Redis is down
            run_requests(manager, first=10 + batch * 3, count=3)
            mirror(publisher, manager)
        wait_until(lambda: publisher.needs_snapshot)
        mirror(publisher, manager)  # a snapshot, tried (and failed) about a second later
        wait_until(lambda: publisher.num_failures >= 2)
        assert len(caplog.records) == 1  # one warning per outage

    redis_server.start()  # empty: no persistence
    expected = hex_set(manager.pool.cached_hashes())
    deadline = time.monotonic() + 10
    while redis_set(client) != expected:  # the engine loop goes on meanwhile
        assert time.monotonic() < deadline
        mirror(publisher, manager)
        time.sleep(0.02)
    assert replayed_stream(client) == expected
    run_requests(manager, first=50, count=3)  # and events apply on top of the snapshot
    mirror(publisher, manager)
    expected = hex_set(manager.pool.cached_hashes())
    wait_until(lambda: redis_set(client) == expected)
    assert replayed_stream(client) == expected and not publisher.needs_snapshot


def test_redis_restarted_between_writes_is_noticed(client, publisher, redis_server):
    """redis-py reconnects silently: the publisher notices the lost stream (idle or not)."""
    manager = KVCacheManager(num_blocks=8, block_size=4, record_kv_events=True)
    run_requests(manager, first=0, count=2)
    mirror(publisher, manager)
    expected = hex_set(manager.pool.cached_hashes())
    wait_until(lambda: redis_set(client) == expected)
    redis_server.stop()
    redis_server.start()
    wait_until(lambda: publisher.needs_snapshot)  # the idle check
    mirror(publisher, manager)
    wait_until(lambda: redis_set(client) == expected)
    assert replayed_stream(client) == expected


class FrontEnd:
    """The front end's side of an in-process `EngineProcess`, over a socket pair."""

    def __init__(self, core: EngineCore) -> None:
        self.sock, core_sock = socket.socketpair()
        self.request_counter = itertools.count()
        self.process = EngineProcess(core, core_sock)
        self.thread = threading.Thread(target=self.process.run, daemon=True)
        self.thread.start()

    def send(self, message_type: str, **fields) -> None:
        send_raw_frame(self.sock, encode_message(message_type, **fields))

    def run_requests(self, prompts: list[list[int]], max_tokens: int) -> None:
        """Send the prompts and read outputs until every request has finished."""
        params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0.0)
        unfinished = set()
        for prompt in prompts:
            request_id = f"q{next(self.request_counter)}"
            self.send("add", request=EngineCoreRequest(request_id, prompt, params, ()))
            unfinished.add(request_id)
        while unfinished:
            message = decode_message(recv_frame(self.sock), allowed=TO_FRONT_END)
            assert message.type == "outputs"
            for output in message.fields["outputs"]:
                if output.finish_reason is not None:
                    assert output.finish_reason == "length"  # not refused
                    unfinished.discard(output.request_id)

    def shutdown(self) -> None:
        self.send("shutdown")
        self.thread.join(10)
        self.sock.close()


def test_engine_process_publishes_its_prefix_cache(client, redis_server, tmp_path: Path):
    args = tiny_engine_args(tmp_path)
    args.num_gpu_blocks_override, args.max_model_len = 16, 64
    args.kv_events_redis_url, args.kv_events_replica = redis_server.url, REPLICA
    core = EngineCore(args.create_engine_config())
    front_end = FrontEnd(core)
    try:
        distinct = [[1 + i, *range(2, 14 + i % 5)] for i in range(12)]
        front_end.run_requests(distinct, max_tokens=6)  # 16 blocks: many evictions
        shared = [[200, *range(2, 18), 3 + i] for i in range(3)]  # a shared 4-block prefix
        front_end.run_requests(shared, max_tokens=3)
        front_end.send("reset_prefix_cache")
        front_end.run_requests(distinct[:2], max_tokens=2)
        publisher = front_end.process.kv_event_publisher
        assert publisher is not None
        expected = hex_set(core.cached_block_hashes())
        wait_until(lambda: redis_set(client) == expected)
    finally:
        front_end.shutdown()
    assert core.scheduler.kv_cache_manager.pool.num_evictions > 0 and expected
    assert not front_end.thread.is_alive() and redis_set(client) == expected
    assert replayed_stream(client) == expected
    types = [fields[b"type"] for _, fields in client.xrange(stream_key(REPLICA))]
    assert types.count(b"cleared") == 2 and b"removed" in types
    assert publisher.num_failures == 0


def test_engine_process_publishes_under_its_key_prefix(client, redis_server, tmp_path: Path):
    prefix = "fleetlm:team-b.llama:"  # `fleetlm serve --redis-key-prefix`
    args = tiny_engine_args(tmp_path)
    args.kv_events_redis_url, args.kv_events_replica = redis_server.url, REPLICA
    args.redis_key_prefix = prefix
    core = EngineCore(args.create_engine_config())
    front_end = FrontEnd(core)
    try:
        front_end.run_requests([list(range(1, 14))], max_tokens=2)
        expected = hex_set(core.cached_block_hashes())
        wait_until(lambda: redis_set(client, prefix) == expected)
    finally:
        front_end.shutdown()
    assert expected
    keys = {blocks_key(REPLICA, prefix), stream_key(REPLICA, prefix)}
    assert {key.decode() for key in client.keys("*")} == keys
