"""operator/redis_cleanup.py: the finalizer's deletion of a model's keys, on a real Redis."""

import asyncio
import contextlib

import pytest
import redis

from fleetlm.operator.naming import redis_key_prefix
from fleetlm.operator.redis_cleanup import BATCH, delete_keys

PREFIX = "fleetlm:ns.a:"
NEIGHBOUR = "fleetlm:ns.ab:"  # PREFIX without its colon is a prefix of this one


def fill(client: redis.Redis, prefix: str, count: int) -> None:
    pipe = client.pipeline(transaction=False)
    for i in range(count):
        pipe.set(f"{prefix}block:{i}", b"x")
    pipe.execute()


def test_deletes_every_key_under_the_prefix_and_only_those(redis_server) -> None:
    client = redis.Redis.from_url(redis_server.url)
    try:
        count = 2 * BATCH + 200  # several batches and a partial one
        fill(client, PREFIX, count)
        client.hset(f"{PREFIX}meta", mapping={"a": "1"})  # any type of key
        client.rpush(f"{PREFIX}queue", "x")
        fill(client, NEIGHBOUR, 30)
        client.set("fleetlm:ns.a", b"no colon")  # not under "fleetlm:ns.a:"
        client.set("other:fleetlm:ns.a:1", b"prefix in the middle")
        client.set("fleetlm:ns.b:1", b"another model")

        deleted = asyncio.run(delete_keys(redis_server.url, PREFIX))

        assert deleted == count + 2
        assert list(client.scan_iter(match=f"{PREFIX}*")) == []
        left = {key.decode() for key in client.scan_iter()}
        assert left == {f"{NEIGHBOUR}block:{i}" for i in range(30)} | {
            "fleetlm:ns.a",
            "other:fleetlm:ns.a:1",
            "fleetlm:ns.b:1",
        }
        # again: nothing left to delete
        assert asyncio.run(delete_keys(redis_server.url, PREFIX)) == 0
    finally:
        client.close()


def test_the_models_prefix_protects_its_neighbour(redis_server) -> None:
    """Models "a" and "ab" of one namespace, through the operator's own prefix."""
    client = redis.Redis.from_url(redis_server.url)
    try:
        a, ab = redis_key_prefix("ns", "a"), redis_key_prefix("ns", "ab")
        assert (a, ab) == (PREFIX, NEIGHBOUR)
        fill(client, a, 10)
        fill(client, ab, 10)
        assert asyncio.run(delete_keys(redis_server.url, a)) == 10
        assert client.dbsize() == 10
        assert all(key.startswith(ab.encode()) for key in client.scan_iter())
    finally:
        client.close()


def test_nothing_to_delete(redis_server) -> None:
    assert asyncio.run(delete_keys(redis_server.url, PREFIX)) == 0


@pytest.mark.parametrize("prefix", ["", "fleetlm:*", "fleetlm:ns.a?:", "fleetlm:[ab]:", "a]"])
def test_refuses_pattern_like_prefixes(redis_server, prefix: str) -> None:
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.set("fleetlm:ns.a:1", b"x")
        client.set("a]", b"x")
        with pytest.raises(ValueError, match="pattern-like prefix"):
            asyncio.run(delete_keys(redis_server.url, prefix))
        assert client.dbsize() == 2  # nothing deleted
    finally:
        client.close()


def test_refuses_before_connecting() -> None:
    # no server at this URL: the check comes first
    with pytest.raises(ValueError):
        asyncio.run(delete_keys("redis://127.0.0.1:1/0", "*"))


def test_a_backslash_is_not_a_pattern_escape(redis_server) -> None:
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.set("fleetlm:ab:1", b"someone else's")
        with contextlib.suppress(ValueError):  # refusing it is fine too
            asyncio.run(delete_keys(redis_server.url, "fleetlm:a\\b:"))
        assert client.exists("fleetlm:ab:1") == 1
    finally:
        client.close()
