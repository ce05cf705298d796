"""The router's shared state behind one async interface: in Redis when a URL is configured, so
that router replicas sharing it make the same decisions, otherwise in-process.

NOTE: the Redis key layout. Every key starts with the key prefix P (`--redis-key-prefix`,
default `fleetlm:`): routers and engines of one model share a prefix, other models on the same
Redis use others and never see these keys. URLs and router ids are stored as-is.
- `{P}router:{router_id}:inflight`: hash, replica URL -> requests this router has open on
  it. Its TTL (`inflight_ttl_s`) is re-set on every write and at `heartbeat()`, so a dead
  router's counts expire with it.
- `{P}routers`: sorted set of router ids scored by their hash's expiry (wall clock). It
  only indexes the hashes to sum (no SCAN over the keyspace); the hash's own TTL is what
  counts, and members are pruned one TTL after their score, so clock skew between routers
  never drops a live router's counts.
- `{P}prefix:{block hash hex}`: set of the replica URLs a prompt with that block was
  sent to, with a TTL (`prefix_ttl_s`) refreshed on record and on match: an approximate LRU.
- `{P}rate:{key}:{window index}`: fixed-window counter (INCRBY), expiring after two
  windows; window index = wall-clock seconds // window_s.
- `{P}replicas` (`kv_events.replicas_key`): sorted set of engine replica URLs scored by their
  registration's expiry (wall clock). A sorted set rather than one key per replica: listing
  the live ones is one ZRANGEBYSCORE, and expired ones are dropped with ZREMRANGEBYSCORE, no
  SCAN.
- `{P}kv:{replica}:blocks`, `{P}kv:{replica}:events`: the engines' KV-cache events, read by
  `kv_follower.py` (layout in `engine/core/kv_events.py`).

A Redis outage never fails the router: `ResilientStore` serves from its in-process mirror
(`MemoryStore`), counts the outage, and pushes its own state back when Redis returns. What it
does not push back: rate-limit windows (during an outage each router counts only its own
requests) and replica registrations (engines re-register at their next heartbeat).
"""

import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from fleetlm.engine.core.kv_events import DEFAULT_KEY_PREFIX, replicas_key
from fleetlm.router.prefix_index import PrefixIndex

logger = logging.getLogger(__name__)

T = TypeVar("T")
Clock = Callable[[], float]

# Errors that mean "Redis is not answering": redis-py wraps socket errors in its own, but a
# raw OSError (or TimeoutError, a subclass) must not reach the caller either.
REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError, OSError)


class RouterStore(Protocol):
    async def add_in_flight(self, replica: str, delta: int) -> None: ...

    async def in_flight(self) -> dict[str, int]:
        """replica -> requests open on it, summed over all live routers (0 omitted)."""
        ...

    async def record_prefix(self, replica: str, block_hashes: list[bytes]) -> None: ...

    async def match_prefix(self, block_hashes: list[bytes]) -> dict[str, int]:
        """replica -> how many leading blocks of the prompt it holds (0 omitted)."""
        ...

    async def incr_window(self, key: str, amount: int, window_s: int) -> int:
        """Adds `amount` to the current fixed window of `key`; the window's new total."""
        ...

    async def register_replica(self, url: str, ttl_s: float) -> None: ...

    async def registered_replicas(self) -> list[str]:
        """Registered replica URLs whose registration has not expired, sorted."""
        ...

    async def heartbeat(self) -> None: ...

    async def close(self) -> None: ...


def leading_matches(holders: list[set[str]]) -> dict[str, int]:
    """`PrefixIndex.match` over the holders of each block of a prompt, in order."""
    matched: dict[str, int] = {}
    candidates: set[str] | None = None
    for depth, replicas in enumerate(holders):
        if not replicas:
            break
        candidates = set(replicas) if candidates is None else candidates & replicas
        if not candidates:
            break
        for replica in candidates:
            matched[replica] = depth + 1
    return matched


class MemoryStore:
    """In-process state: one router's own view. Deterministic, no background tasks."""

    PRUNE_EVERY = 1024  # incr_window calls between sweeps of ended windows

    def __init__(self, prefix_capacity: int = 200_000, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self.counts: dict[str, int] = {}
        self.index = PrefixIndex(prefix_capacity)
        self.windows: dict[str, tuple[int, int, int]] = {}  # key -> (window_s, index, total)
        self.registry: dict[str, float] = {}  # url -> expiry (clock)
        self._calls = 0

    async def add_in_flight(self, replica: str, delta: int) -> None:
        self.counts[replica] = self.counts.get(replica, 0) + delta

    async def in_flight(self) -> dict[str, int]:
        return {replica: n for replica, n in self.counts.items() if n}

    async def record_prefix(self, replica: str, block_hashes: list[bytes]) -> None:
        self.index.insert(replica, block_hashes)

    async def match_prefix(self, block_hashes: list[bytes]) -> dict[str, int]:
        return self.index.match(block_hashes)

    async def incr_window(self, key: str, amount: int, window_s: int) -> int:
        now = self.clock()
        window = int(now // window_s)
        size, index, total = self.windows.get(key, (window_s, window, 0))
        total = total + amount if (size, index) == (window_s, window) else amount
        self.windows[key] = (window_s, window, total)
        self._calls += 1
        if self._calls % self.PRUNE_EVERY == 0:
            self.windows = {k: v for k, v in self.windows.items() if v[1] == int(now // v[0])}
        return total

    async def register_replica(self, url: str, ttl_s: float) -> None:
        self.registry[url] = self.clock() + ttl_s

    async def registered_replicas(self) -> list[str]:
        now = self.clock()
        self.registry = {url: until for url, until in self.registry.items() if until > now}
        return sorted(self.registry)

    async def heartbeat(self) -> None:
        pass

    async def close(self) -> None:
        pass


class RedisStore:
    """State shared by all routers on one Redis (see the key layout at the top)."""

    def __init__(
        self,
        url: str,
        router_id: str,
        *,
        inflight_ttl_s: float = 30.0,
        prefix_ttl_s: float = 3600.0,
        socket_timeout_s: float = 0.5,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        clock: Clock = time.time,
    ) -> None:
        self.router_id = router_id
        self.key_prefix = key_prefix
        self.inflight_key = self._inflight_key(router_id)
        self.routers_key = f"{key_prefix}routers"
        self.replicas_key = replicas_key(key_prefix)
        self.inflight_ttl_ms = int(inflight_ttl_s * 1000)
        self.prefix_ttl_ms = int(prefix_ttl_s * 1000)
        self.clock = clock
        # Short timeouts so an outage is noticed fast; one immediate retry, on a fresh
        # connection, so a pooled connection left broken by a Redis restart is not an error.
        self.client = aioredis.Redis.from_url(
            url,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
            retry=Retry(NoBackoff(), 1),
            decode_responses=True,
        )

    def _pipeline(self):
        return self.client.pipeline(transaction=False)

    def _inflight_key(self, router_id: str) -> str:
        return f"{self.key_prefix}router:{router_id}:inflight"

    def prefix_key(self, block_hash: bytes) -> str:
        return f"{self.key_prefix}prefix:{block_hash.hex()}"

    def window_key(self, key: str, window: int) -> str:
        return f"{self.key_prefix}rate:{key}:{window}"

    def _touch_router(self, pipe) -> None:
        """Queues the refresh of this router's in-flight hash TTL and its index entry."""
        pipe.pexpire(self.inflight_key, self.inflight_ttl_ms)
        expiry = self.clock() + self.inflight_ttl_ms / 1000
        pipe.zadd(self.routers_key, {self.router_id: expiry})

    async def add_in_flight(self, replica: str, delta: int) -> None:
        async with self._pipeline() as pipe:
            pipe.hincrby(self.inflight_key, replica, delta)
            self._touch_router(pipe)
            await pipe.execute()

    async def set_in_flight(self, counts: dict[str, int]) -> None:
        """Replaces this router's in-flight counts (the re-sync after an outage)."""
        async with self._pipeline() as pipe:
            pipe.delete(self.inflight_key)
            if counts:
                pipe.hset(self.inflight_key, mapping=counts)
            self._touch_router(pipe)
            await pipe.execute()

    async def in_flight(self) -> dict[str, int]:
        """Two round trips: the live routers, then all their hashes."""
        grace = self.inflight_ttl_ms / 1000
        async with self._pipeline() as pipe:
            pipe.zremrangebyscore(self.routers_key, "-inf", f"({self.clock() - grace}")
            pipe.zrange(self.routers_key, 0, -1)
            _, routers = await pipe.execute()
        if not routers:
            return {}
        async with self._pipeline() as pipe:
            for router_id in routers:
                pipe.hgetall(self._inflight_key(router_id))
            hashes = await pipe.execute()
        totals: dict[str, int] = {}
        for counts in hashes:
            for replica, n in counts.items():
                totals[replica] = totals.get(replica, 0) + int(n)
        return {replica: n for replica, n in totals.items() if n}

    async def record_prefix(self, replica: str, block_hashes: list[bytes]) -> None:
        await self.record_prefixes([(replica, block_hashes)])

    async def record_prefixes(self, records: Iterable[tuple[str, list[bytes]]]) -> None:
        """Several `record_prefix` in one round trip."""
        async with self._pipeline() as pipe:
            for replica, block_hashes in records:
                for block_hash in block_hashes:
                    key = self.prefix_key(block_hash)
                    pipe.sadd(key, replica)
                    pipe.pexpire(key, self.prefix_ttl_ms)
            await pipe.execute()

    async def match_prefix(self, block_hashes: list[bytes]) -> dict[str, int]:
        """One round trip: the holders of every block (and their TTLs refreshed), then the
        leading matches computed here."""
        if not block_hashes:
            return {}
        async with self._pipeline() as pipe:
            for block_hash in block_hashes:
                key = self.prefix_key(block_hash)
                pipe.smembers(key)
                pipe.pexpire(key, self.prefix_ttl_ms)
            replies = await pipe.execute()
        return leading_matches(replies[::2])

    async def incr_window(self, key: str, amount: int, window_s: int) -> int:
        window_key = self.window_key(key, int(self.clock() // window_s))
        async with self._pipeline() as pipe:
            pipe.incrby(window_key, amount)
            pipe.expire(window_key, window_s * 2)
            total, _ = await pipe.execute()
        return int(total)

    async def register_replica(self, url: str, ttl_s: float) -> None:
        await self.client.zadd(self.replicas_key, {url: self.clock() + ttl_s})

    async def registered_replicas(self) -> list[str]:
        now = self.clock()
        async with self._pipeline() as pipe:
            pipe.zremrangebyscore(self.replicas_key, "-inf", now)
            pipe.zrangebyscore(self.replicas_key, f"({now}", "+inf")
            _, urls = await pipe.execute()
        return sorted(urls)

    async def heartbeat(self) -> None:
        async with self._pipeline() as pipe:
            self._touch_router(pipe)
            await pipe.execute()

    async def close(self) -> None:
        await self.client.aclose()


class ResilientStore:
    """Redis first, this router's in-process view when Redis fails; never raises a Redis
    error. Writes always go to `local` too, so it is current when an outage starts."""

    RESYNC_ROUNDS = 3  # re-syncs raced by concurrent writes before waiting for the next retry

    def __init__(
        self,
        redis: RedisStore,
        local: MemoryStore,
        *,
        retry_interval_s: float = 1.0,
        max_pending_prefixes: int = 10_000,
        clock: Clock = time.monotonic,
    ) -> None:
        self.redis = redis
        self.local = local
        self.retry_interval_s = retry_interval_s
        self.clock = clock
        self.num_failures = 0  # Redis calls that failed (the app exports it)
        self.degraded = False
        self.next_retry = 0.0
        # Prefixes recorded while degraded, pushed to Redis when it returns (oldest dropped).
        self.pending_prefixes: deque[tuple[str, list[bytes]]] = deque(maxlen=max_pending_prefixes)

    async def _redis(self, call: Callable[[], Awaitable[T]]) -> tuple[bool, T | None]:
        """(True, the answer) from Redis, or (False, None) when degraded or it failed."""
        if self.degraded and not await self._recover():
            return False, None
        try:
            return True, await call()
        except REDIS_ERRORS as e:
            self._failed(e)
            return False, None

    def _failed(self, error: Exception) -> None:
        self.num_failures += 1
        self.next_retry = self.clock() + self.retry_interval_s
        if not self.degraded:
            self.degraded = True
            logger.warning("redis failed, serving from the local view until it returns: %r", error)

    async def _recover(self) -> bool:
        """True once Redis holds this router's state again; at most one try per interval."""
        if self.clock() < self.next_retry:
            return False
        self.next_retry = self.clock() + self.retry_interval_s  # concurrent calls stay local
        for _ in range(self.RESYNC_ROUNDS):
            counts = await self.local.in_flight()
            prefixes = list(self.pending_prefixes)
            self.pending_prefixes.clear()
            try:
                await self.redis.set_in_flight(counts)
                await self.redis.record_prefixes(prefixes)
            except REDIS_ERRORS as e:
                # keep what was taken, before what was recorded meanwhile (the newest win)
                self.pending_prefixes = deque(
                    prefixes + list(self.pending_prefixes), maxlen=self.pending_prefixes.maxlen
                )
                self._failed(e)
                return False
            # No await between this check and clearing `degraded`: no write can slip by.
            if not self.pending_prefixes and _same_counts(counts, self.local.counts):
                self.degraded = False
                logger.info("redis is back: re-synced %d prefix records", len(prefixes))
                return True
        return False

    async def add_in_flight(self, replica: str, delta: int) -> None:
        await self.local.add_in_flight(replica, delta)
        await self._redis(lambda: self.redis.add_in_flight(replica, delta))

    async def in_flight(self) -> dict[str, int]:
        ok, answer = await self._redis(self.redis.in_flight)
        return answer if ok and answer is not None else await self.local.in_flight()

    async def record_prefix(self, replica: str, block_hashes: list[bytes]) -> None:
        await self.local.record_prefix(replica, block_hashes)
        ok, _ = await self._redis(lambda: self.redis.record_prefix(replica, block_hashes))
        if not ok:
            self.pending_prefixes.append((replica, list(block_hashes)))

    async def match_prefix(self, block_hashes: list[bytes]) -> dict[str, int]:
        local = await self.local.match_prefix(block_hashes)  # keeps the local LRU current
        ok, answer = await self._redis(lambda: self.redis.match_prefix(block_hashes))
        return answer if ok and answer is not None else local

    async def incr_window(self, key: str, amount: int, window_s: int) -> int:
        local = await self.local.incr_window(key, amount, window_s)
        ok, answer = await self._redis(lambda: self.redis.incr_window(key, amount, window_s))
        return answer if ok and answer is not None else local

    async def register_replica(self, url: str, ttl_s: float) -> None:
        await self.local.register_replica(url, ttl_s)
        await self._redis(lambda: self.redis.register_replica(url, ttl_s))

    async def registered_replicas(self) -> list[str]:
        ok, answer = await self._redis(self.redis.registered_replicas)
        return answer if ok and answer is not None else await self.local.registered_replicas()

    async def heartbeat(self) -> None:
        """Also where an idle router notices that Redis is back."""
        await self._redis(self.redis.heartbeat)

    async def close(self) -> None:
        with contextlib.suppress(*REDIS_ERRORS):
            await self.redis.close()
        await self.local.close()


def _same_counts(snapshot: dict[str, int], counts: dict[str, int]) -> bool:
    """Whether live counts still equal a snapshot taken by `MemoryStore.in_flight`
    (synchronous, so nothing can change them between the check and what follows)."""
    return snapshot == {replica: n for replica, n in counts.items() if n}


def create_store(
    redis_url: str | None,
    router_id: str,
    *,
    prefix_capacity: int = 200_000,
    prefix_ttl_s: float = 3600.0,
    key_prefix: str = DEFAULT_KEY_PREFIX,
) -> RouterStore:
    """Redis (keys under `key_prefix`) with an in-process fallback when a URL is given;
    in-process only otherwise."""
    # Wall-clock windows, as in Redis: the rate limiter computes Retry-After from the same clock.
    local = MemoryStore(prefix_capacity, clock=time.time)
    if not redis_url:
        return local
    redis = RedisStore(redis_url, router_id, prefix_ttl_s=prefix_ttl_s, key_prefix=key_prefix)
    return ResilientStore(redis, local)
