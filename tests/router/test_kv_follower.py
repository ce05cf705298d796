"""The router's KV-event follower against a real Redis, fed events in the engine's format."""

import asyncio

import redis
import redis.asyncio as aioredis

from fleetlm.engine.core.kv_event_publisher import KVEventPublisher
from fleetlm.engine.core.kv_events import KVEvent, blocks_key, stream_key
from fleetlm.router.kv_follower import KVEventFollower
from fleetlm.router.prefix_index import PrefixIndex

R1, R2 = "http://replica-1", "http://replica-2"


def h(i: int) -> bytes:
    return i.to_bytes(16, "big")


def publish(client: redis.Redis, replica: str, event: KVEvent, maxlen: int | None = None) -> None:
    """As the engine publishes: the set change and the event in one transaction."""
    pipe = client.pipeline(transaction=True)
    hexes = [x.hex() for x in event.hashes]
    if event.type == "stored":
        pipe.sadd(blocks_key(replica), *hexes)
    elif event.type == "removed":
        pipe.srem(blocks_key(replica), *hexes)
    else:
        pipe.delete(blocks_key(replica))
    pipe.xadd(stream_key(replica), event.to_fields(), maxlen=maxlen, approximate=False)
    pipe.execute()


def held(client: redis.Redis, replica: str, prefix: str = "fleetlm:") -> set[bytes]:
    return {bytes.fromhex(x.decode()) for x in client.smembers(blocks_key(replica, prefix))}


def index_view(index: PrefixIndex, replica: str) -> set[bytes]:
    return {block for block, holders in index.holders.items() if replica in holders}


def run(coroutine):
    return asyncio.run(coroutine)


def test_follower_mirrors_stored_removed_and_cleared(redis_server):
    client = redis.Redis.from_url(redis_server.url)
    publish(client, R1, KVEvent("stored", (h(1), h(2), h(3))))  # before the follower starts

    async def scenario():
        async with aioredis.Redis.from_url(redis_server.url) as aclient:
            follower = KVEventFollower(aclient, PrefixIndex(10_000))
            await follower.poll([R1, R2], block_ms=10)
            assert follower.index.match([h(1), h(2), h(3)]) == {R1: 3}
            publish(client, R1, KVEvent("removed", (h(2),)))
            publish(client, R2, KVEvent("stored", (h(1), h(2))))
            await follower.poll([R1, R2], block_ms=10)
            assert follower.index.match([h(1), h(2), h(3)]) == {R1: 1, R2: 2}
            publish(client, R2, KVEvent("cleared"))  # an engine restarted
            await follower.poll([R1, R2], block_ms=10)
            assert follower.index.match([h(1), h(2)]) == {R1: 1}
            await follower.poll([R1], block_ms=10)  # R2 left the replica list
            assert index_view(follower.index, R2) == set()

    run(scenario())


def test_events_between_snapshot_and_stream_read_are_not_lost(redis_server):
    client = redis.Redis.from_url(redis_server.url)

    async def scenario():
        async with aioredis.Redis.from_url(redis_server.url) as aclient:
            follower = KVEventFollower(aclient, PrefixIndex(10_000))
            for i in range(50):
                publish(client, R1, KVEvent("stored", (h(i),)))
                if i % 3 == 0:
                    publish(client, R1, KVEvent("removed", (h(i // 2),)))
                if i % 10 == 0:
                    await follower.poll([R1], block_ms=1)
            await follower.poll([R1], block_ms=1)
            assert index_view(follower.index, R1) == held(client, R1)

    run(scenario())


def test_a_trimmed_stream_reloads_the_snapshot(redis_server):
    client = redis.Redis.from_url(redis_server.url)

    async def scenario():
        async with aioredis.Redis.from_url(redis_server.url) as aclient:
            follower = KVEventFollower(aclient, PrefixIndex(10_000))
            publish(client, R1, KVEvent("stored", (h(0),)), maxlen=5)
            await follower.poll([R1], block_ms=1)
            for i in range(1, 40):  # the follower falls 39 events behind a stream of 5
                publish(client, R1, KVEvent("stored", (h(i),)), maxlen=5)
                publish(client, R1, KVEvent("removed", (h(i - 1),)), maxlen=5)
            await follower.poll([R1], block_ms=1)
            assert index_view(follower.index, R1) == held(client, R1) == {h(39)}

    run(scenario())


def test_redis_restart_makes_the_follower_reload(redis_server):
    client = redis.Redis.from_url(redis_server.url)
    publish(client, R1, KVEvent("stored", (h(1), h(2))))

    async def scenario():
        async with aioredis.Redis.from_url(redis_server.url) as aclient:
            follower = KVEventFollower(aclient, PrefixIndex(10_000))
            task = asyncio.create_task(follower.run(lambda: [R1], retry_s=0.05))
            await asyncio.sleep(0.3)
            assert follower.index.match([h(1), h(2)]) == {R1: 2}
            redis_server.stop()
            await asyncio.sleep(0.3)
            assert follower.num_failures > 0
            redis_server.start()  # empty: the replica republishes what it holds
            fresh = redis.Redis.from_url(redis_server.url)
            publish(fresh, R1, KVEvent("cleared"))
            publish(fresh, R1, KVEvent("stored", (h(7),)))
            for _ in range(50):
                await asyncio.sleep(0.1)
                if follower.index.match([h(7)]) == {R1: 1}:
                    break
            task.cancel()
            assert follower.index.match([h(7)]) == {R1: 1}
            assert follower.index.match([h(1)]) == {}

    run(scenario())


def test_models_with_different_key_prefixes_do_not_see_each_others_blocks(redis_server):
    """Two models' engines publish on one Redis (even under the same replica URL), each under
    its key prefix; each model's router follows only its own."""
    prefix_a, prefix_b = "fleetlm:", "fleetlm:team-b.llama:"
    publisher_a = KVEventPublisher(redis_server.url, R1)  # the default prefix
    publisher_b = KVEventPublisher(redis_server.url, R1, key_prefix=prefix_b)
    publisher_a.publish([KVEvent("stored", (h(1), h(2)))])
    publisher_b.publish([KVEvent("stored", (h(1), h(3)))])
    publisher_b.publish([KVEvent("removed", (h(1),))])
    publisher_a.close()
    publisher_b.close()
    client = redis.Redis.from_url(redis_server.url)
    assert held(client, R1, prefix_a) == {h(1), h(2)}
    assert held(client, R1, prefix_b) == {h(3)}

    async def scenario():
        async with aioredis.Redis.from_url(redis_server.url) as aclient:
            follower_a = KVEventFollower(aclient, PrefixIndex(10_000), prefix_a)
            follower_b = KVEventFollower(aclient, PrefixIndex(10_000), prefix_b)
            for follower in (follower_a, follower_b):
                await follower.poll([R1], block_ms=10)
            assert index_view(follower_a.index, R1) == {h(1), h(2)}
            assert index_view(follower_b.index, R1) == {h(3)}
            publish(client, R1, KVEvent("cleared"))  # model A's engine restarts
            for follower in (follower_a, follower_b):
                await follower.poll([R1], block_ms=10)
            assert index_view(follower_a.index, R1) == set()
            assert index_view(follower_b.index, R1) == {h(3)}

    run(scenario())
