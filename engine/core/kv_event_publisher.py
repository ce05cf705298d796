"""Publishes an engine replica's KV-cache events to Redis for routers (see `kv_events.py`).

NOTE: the engine loop must never wait on Redis, so `publish` only enqueues and a daemon thread
applies each batch in one MULTI/EXEC. When Redis fails, the changes in flight are lost: the
thread skips what is queued and `needs_snapshot` turns on; the engine loop answers with
`publish_snapshot(every cached hash)`, which, once Redis answers again (tried at most once a
`RETRY_INTERVAL_S`), replaces the set and tells followers "cleared" then "stored". Batches
queued after the snapshot apply on top of it.

A Redis that restarts between two writes loses the set without any error (redis-py reconnects
silently), so every transaction also reads the stream's last entry: unless it is the one this
publisher wrote last, Redis lost or replaced our keys, and a snapshot is needed as well. While
idle, the thread checks that about once a `CHECK_INTERVAL_S`.
"""

import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis
from redis.backoff import NoBackoff
from redis.client import Pipeline
from redis.retry import Retry

from fleetlm.engine.core.kv_events import (
    DEFAULT_KEY_PREFIX,
    STREAM_MAXLEN,
    KVEvent,
    blocks_key,
    stream_key,
)

logger = logging.getLogger(__name__)

RETRY_INTERVAL_S = 1.0  # at most one attempt this often while Redis fails
CHECK_INTERVAL_S = 1.0  # while idle, check this often that Redis still holds our events
SOCKET_TIMEOUT_S = 2.0  # a Redis that hangs counts as failed after this long
CLOSE_TIMEOUT_S = 2.0  # how long `close` waits for the queue to be flushed


@dataclass(frozen=True)
class _Snapshot:
    hashes: tuple[bytes, ...]


_Batch = list[KVEvent] | _Snapshot  # an empty list only checks the stream
_STOP = None


class KVEventPublisher:
    """Publishes the events of one replica; `publish*` are called by the engine loop only."""

    def __init__(self, redis_url: str, replica: str, key_prefix: str = DEFAULT_KEY_PREFIX) -> None:
        self.replica = replica
        self.num_failures = 0  # failed attempts to write to Redis
        self._blocks_key = blocks_key(replica, key_prefix)
        self._stream_key = stream_key(replica, key_prefix)
        self._client = redis.Redis.from_url(
            redis_url,
            socket_timeout=SOCKET_TIMEOUT_S,
            socket_connect_timeout=SOCKET_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),  # this class retries, without blocking the queue
        )
        self._queue: queue.Queue[_Batch | None] = queue.Queue()
        self._in_sync = True  # Redis has every change published so far (or will, in order)
        self._snapshot_queued = False
        self._last_id: bytes | None = None  # of the last stream entry written
        self._failing = False  # in an outage (warned once)
        self._retry_at = 0.0
        self._closing = threading.Event()
        self._queue.put([KVEvent("cleared")])  # a starting engine holds nothing
        self._thread = threading.Thread(target=self._run, name="kv-event-publisher", daemon=True)
        self._thread.start()

    @property
    def needs_snapshot(self) -> bool:
        """Redis missed changes and no snapshot is on its way: call `publish_snapshot`."""
        return not self._in_sync and not self._snapshot_queued

    def publish(self, events: list[KVEvent]) -> None:
        if events:
            self._queue.put(events)

    def publish_snapshot(self, hashes: Sequence[bytes]) -> None:
        """Replace what Redis holds with `hashes`, every block cached now."""
        self._snapshot_queued = True
        self._queue.put(_Snapshot(tuple(hashes)))

    def close(self) -> None:
        """Flush what is queued (unless Redis is failing), waiting at most CLOSE_TIMEOUT_S."""
        self._closing.set()
        self._queue.put(_STOP)
        self._thread.join(CLOSE_TIMEOUT_S)
        if not self._thread.is_alive():
            self._client.close()

    def _run(self) -> None:
        while True:
            try:
                batch = self._queue.get(timeout=CHECK_INTERVAL_S)
            except queue.Empty:
                batch = []
            if batch is _STOP:
                return
            # Out of sync, only a snapshot helps: it will cover what other batches change.
            if isinstance(batch, _Snapshot) or self._in_sync:
                self._try_apply(batch)

    def _try_apply(self, batch: _Batch) -> None:
        delay = self._retry_at - time.monotonic()
        if delay > 0 and self._closing.wait(delay):
            return  # closing during an outage: drop it
        try:
            continued = self._apply(batch)
        except redis.RedisError as e:
            self._on_failure(e)
            return
        self._on_success(batch)
        if not continued:
            logger.warning(
                "Redis lost the KV-cache events of %s (restarted?); resyncing", self.replica
            )
            self._lose_sync()

    def _apply(self, batch: _Batch) -> bool:
        """One transaction; False if the stream did not end with our last entry before it."""
        pipe = self._client.pipeline(transaction=True)
        pipe.xrevrange(self._stream_key, count=1)
        if isinstance(batch, _Snapshot):
            self._add_event(pipe, KVEvent("cleared"))
            if batch.hashes:
                self._add_event(pipe, KVEvent("stored", batch.hashes))
        else:
            for event in batch:
                self._add_event(pipe, event)
        last_entry, *changes = pipe.execute()
        continued = isinstance(batch, _Snapshot) or self._follows_last_write(last_entry)
        if changes:  # each event ends with its XADD, which answers the new entry's id
            self._last_id = changes[-1]
        return continued

    def _follows_last_write(self, last_entry: list) -> bool:
        if self._last_id is None:  # nothing written yet
            return True
        return bool(last_entry) and last_entry[0][0] == self._last_id

    def _add_event(self, pipe: Pipeline, event: KVEvent) -> None:
        """Queue the change to the set and the stream entry of one event."""
        hex_hashes = [h.hex() for h in event.hashes]
        if event.type == "cleared":
            pipe.delete(self._blocks_key)
        elif event.type == "stored" and hex_hashes:
            pipe.sadd(self._blocks_key, *hex_hashes)
        elif event.type == "removed" and hex_hashes:
            pipe.srem(self._blocks_key, *hex_hashes)
        pipe.xadd(self._stream_key, event.to_fields(), maxlen=STREAM_MAXLEN, approximate=True)

    def _on_failure(self, error: redis.RedisError) -> None:
        self.num_failures += 1
        self._retry_at = time.monotonic() + RETRY_INTERVAL_S
        if not self._failing:
            logger.warning(
                "cannot publish KV-cache events of %s to Redis (%s); retrying, then resyncing",
                self.replica,
                error,
            )
            self._failing = True
        self._lose_sync()

    def _on_success(self, batch: _Batch) -> None:
        if isinstance(batch, _Snapshot):
            self._in_sync = True
            self._snapshot_queued = False
        if self._failing:
            logger.info("KV-cache events of %s reach Redis again", self.replica)
            self._failing = False

    def _lose_sync(self) -> None:
        self._snapshot_queued = False
        self._in_sync = False
