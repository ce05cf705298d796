"""KV-cache events recorded by the block pool (no model, no Redis), and their configuration."""

import dataclasses
import json
from pathlib import Path

import pytest

from fleetlm.cli import advertise_url, build_parser
from fleetlm.engine.config import EngineArgs, KVEventsConfig
from fleetlm.engine.core.block_pool import BlockPool
from fleetlm.engine.core.kv_cache_manager import KVCacheManager
from fleetlm.engine.core.kv_events import (
    KVEvent,
    blocks_key,
    check_key_prefix,
    replicas_key,
    stream_key,
)

from .helpers import make_request, tiny_engine_args


def replay(events: list[KVEvent]) -> set[bytes]:
    """What a follower holds after applying `events` to an empty set."""
    held: set[bytes] = set()
    for event in events:
        if event.type == "stored":
            held.update(event.hashes)
        elif event.type == "removed":
            held.difference_update(event.hashes)
        else:
            held.clear()
    return held


def test_cache_evict_and_reset_are_recorded_in_order():
    pool = BlockPool(3, record_events=True)
    blocks = pool.allocate(2)
    pool.cache_blocks(blocks, [b"h0", b"h1"])
    pool.free(blocks)
    pool.allocate(1)  # the never used block: nothing evicted
    pool.allocate(2)  # evicts h0 then h1
    assert pool.take_events() == [
        KVEvent("stored", (b"h0", b"h1")),
        KVEvent("removed", (b"h0", b"h1")),
    ]
    assert pool.take_events() == []
    pool.free(pool.blocks)
    assert pool.reset_prefix_cache()
    assert pool.take_events() == [KVEvent("cleared")]


def test_only_hashes_actually_indexed_are_stored():
    pool = BlockPool(4, record_events=True)
    first, second = pool.allocate(2), pool.allocate(2)
    pool.cache_blocks(first, [b"a", b"b"])
    pool.cache_blocks(second, [b"a", b"c"])  # "a" is indexed already: first block wins
    pool.cache_blocks(first, [b"x", b"y"])  # these blocks hold a hash already
    assert pool.take_events() == [KVEvent("stored", (b"a", b"b")), KVEvent("stored", (b"c",))]
    assert pool.cached_hashes() == [b"a", b"b", b"c"]


def test_failed_reset_records_nothing():
    pool = BlockPool(2, record_events=True)
    blocks = pool.allocate(1)
    pool.cache_blocks(blocks, [b"a"])
    pool.take_events()
    assert not pool.reset_prefix_cache()
    assert pool.take_events() == [] and pool.cached_hashes() == [b"a"]


def test_nothing_is_recorded_when_off():
    pool = BlockPool(2)
    blocks = pool.allocate(2)
    pool.cache_blocks(blocks, [b"a", b"b"])
    pool.free(blocks)
    pool.allocate(2)
    pool.free(pool.blocks)
    assert pool.reset_prefix_cache()
    assert pool.events is None and pool.take_events() == []


def test_replayed_events_match_the_cache_under_eviction():
    """Many distinct prompts through a small cache: replaying the events gives the index."""
    manager = KVCacheManager(num_blocks=8, block_size=4, record_kv_events=True)
    events: list[KVEvent] = []
    for i in range(20):
        request = make_request(f"r{i}", num_prompt_tokens=9 + i % 7)
        hits = manager.get_computed_blocks(request)
        assert manager.allocate_slots(request, request.num_tokens, hits) is not None
        manager.free(request)
        events += manager.pool.take_events()
        assert replay(events) == set(manager.pool.cached_hashes())
    assert manager.pool.num_evictions > 0
    assert any(event.type == "removed" for event in events)


def test_kv_events_config(tmp_path: Path):
    args = tiny_engine_args(tmp_path)
    assert args.create_engine_config().kv_events is None
    args.kv_events_redis_url = "redis://127.0.0.1:6379/0"
    with pytest.raises(ValueError, match="kv_events_replica"):
        args.create_engine_config()
    args.kv_events_replica = "http://10.0.0.7:8000"
    args.kv_events_redis_url = "127.0.0.1:6379"
    with pytest.raises(ValueError, match="redis://"):
        args.create_engine_config()
    args.kv_events_redis_url = "redis://127.0.0.1:6379/0"
    assert args.create_engine_config().kv_events == KVEventsConfig(
        "redis://127.0.0.1:6379/0", "http://10.0.0.7:8000", "fleetlm:"
    )
    args.redis_key_prefix = "fleetlm:team-a.llama:"
    assert args.create_engine_config().kv_events.key_prefix == "fleetlm:team-a.llama:"
    # The engine process gets its args as JSON (see core/client.py).
    assert EngineArgs(**json.loads(json.dumps(dataclasses.asdict(args), default=str))) == args


def test_default_key_prefix_gives_the_historical_key_names():
    assert blocks_key("http://10.0.0.7:8000") == "fleetlm:kv:http://10.0.0.7:8000:blocks"
    assert stream_key("http://10.0.0.7:8000") == "fleetlm:kv:http://10.0.0.7:8000:events"
    assert replicas_key() == "fleetlm:replicas"


def test_key_prefix_starts_every_key():
    prefix = "fleetlm:team-a.llama:"
    assert blocks_key("http://e:1", prefix) == "fleetlm:team-a.llama:kv:http://e:1:blocks"
    assert stream_key("http://e:1", prefix) == "fleetlm:team-a.llama:kv:http://e:1:events"
    assert replicas_key(prefix) == "fleetlm:team-a.llama:replicas"


@pytest.mark.parametrize(
    ("prefix", "why"),
    [("", "empty"), ("a b:", "whitespace"), ("a\n", "whitespace"), ("p" * 129, "128")],
)
def test_bad_key_prefixes_are_refused(tmp_path: Path, prefix: str, why: str):
    from pydantic import ValidationError

    from fleetlm.engine.entrypoints.openai.settings import ServerSettings

    assert check_key_prefix("p" * 128) == "p" * 128
    with pytest.raises(ValueError, match=why):
        check_key_prefix(prefix)
    with pytest.raises(ValidationError, match=why):
        ServerSettings(redis_key_prefix=prefix)
    args = tiny_engine_args(tmp_path)
    args.kv_events_redis_url, args.kv_events_replica = "redis://r:6379/0", "http://e:1"
    args.redis_key_prefix = prefix
    with pytest.raises(ValueError, match=why):
        args.create_engine_config()


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:8001"),
        ("0.0.0.0", "http://127.0.0.1:8001"),
        ("localhost", "http://127.0.0.1:8001"),
        ("10.1.2.3", "http://10.1.2.3:8001"),
        ("fd00::1", "http://[fd00::1]:8001"),
    ],
)
def test_default_advertise_url(host: str, url: str):
    assert advertise_url(None, host, 8001) == url


def test_given_advertise_url_loses_its_trailing_slash():
    assert advertise_url("http://engine-3:8000/", "0.0.0.0", 8000) == "http://engine-3:8000"


def test_serve_flags():
    args = build_parser().parse_args(
        ["serve", "--kv-events-redis-url", "redis://r:6379/0", "--advertise-url", "http://e:1"]
    )
    assert args.kv_events_redis_url == "redis://r:6379/0" and args.advertise_url == "http://e:1"
