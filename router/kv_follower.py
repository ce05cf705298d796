"""The router's exact view of the replicas' prefix caches, following their KV-cache events.

NOTE: for each replica the follower reads the id of the last event, then the replica's block
set (`kv_events.blocks_key`), then every event after that id in order (`kv_events.stream_key`),
both under the key prefix the engines publish with.
Events are set operations, so replaying ones the snapshot already reflects leaves the same
set. The follower counts the events it has seen (Redis counts those ever added to a stream:
`entries-added`); when the stream no longer holds the next one (trimmed), when the stream was
recreated, or after any Redis outage, the replica is reloaded from its snapshot.
"""

import asyncio
import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from fleetlm.engine.core.kv_events import DEFAULT_KEY_PREFIX, KVEvent, blocks_key, stream_key
from fleetlm.router.prefix_index import PrefixIndex

logger = logging.getLogger(__name__)

READ_COUNT = 1000  # events read per stream per round


class KVEventFollower:
    def __init__(
        self, client: aioredis.Redis, index: PrefixIndex, key_prefix: str = DEFAULT_KEY_PREFIX
    ) -> None:
        self.client = client
        self.index = index
        self.key_prefix = key_prefix
        # replica -> (id of the last event applied, how many events the stream had by then)
        self.positions: dict[str, tuple[str, int]] = {}
        self.num_failures = 0

    async def load(self, replica: str) -> None:
        """Snapshot of the replica's blocks, and the stream position it corresponds to."""
        info = await self._stream_info(replica)
        members = await self.client.smembers(blocks_key(replica, self.key_prefix))
        self.index.drop_replica(replica)
        self.index.insert(replica, [bytes.fromhex(_text(h)) for h in members])
        self.positions[replica] = (
            (_text(info["last-generated-id"]), int(info["entries-added"])) if info else ("0-0", 0)
        )

    async def poll(self, replicas: list[str], block_ms: int = 200) -> int:
        """Load new replicas, apply new events (waiting up to block_ms); returns how many."""
        for replica in set(self.positions) - set(replicas):
            self.positions.pop(replica)
            self.index.drop_replica(replica)
        for replica in replicas:
            if replica not in self.positions:
                await self.load(replica)
        await self._reload_trimmed(replicas)
        if not replicas:
            await asyncio.sleep(block_ms / 1e3)
            return 0
        by_stream = {self._stream_key(r): r for r in replicas}
        streams = {key: self.positions[r][0] for key, r in by_stream.items()}
        answer = await self.client.xread(streams, count=READ_COUNT, block=block_ms)
        num_applied = 0
        for key, entries in answer or []:
            replica = by_stream[_text(key)]
            for entry_id, fields in entries:
                self._apply(replica, KVEvent.from_fields(fields))
                self.positions[replica] = (_text(entry_id), self.positions[replica][1] + 1)
                num_applied += 1
        return num_applied

    async def run(self, replicas_of, retry_s: float = 1.0) -> None:
        """Forever (cancelled by the app): `replicas_of()` gives the replicas to follow."""
        while True:
            try:
                await self.poll(replicas_of())
            except (RedisError, OSError) as e:
                self.num_failures += 1
                logger.warning(
                    "KV events unavailable (%s); the index reloads when Redis is back", e
                )
                self.positions.clear()  # every replica is reloaded from its snapshot
                await asyncio.sleep(retry_s)

    async def _reload_trimmed(self, replicas: list[str]) -> None:
        """Reload replicas whose stream lost events we had not read, or was recreated."""
        async with self.client.pipeline(transaction=False) as pipe:
            for replica in replicas:
                pipe.xinfo_stream(self._stream_key(replica))
            infos = await pipe.execute(raise_on_error=False)
        for replica, info in zip(replicas, infos, strict=True):
            position, num_seen = self.positions[replica]
            if not isinstance(info, dict):  # no stream (yet, or deleted)
                if num_seen:
                    await self.load(replica)
                continue
            num_added, length = int(info["entries-added"]), int(info["length"])
            recreated = num_seen > num_added or _id(info["last-generated-id"]) < _id(position)
            if num_seen < num_added - length or recreated:
                logger.info("KV events of %s: stream trimmed or recreated, reloading", replica)
                await self.load(replica)

    async def _stream_info(self, replica: str) -> dict | None:
        try:
            return await self.client.xinfo_stream(self._stream_key(replica))
        except ResponseError:  # no such stream yet
            return None

    def _stream_key(self, replica: str) -> str:
        return stream_key(replica, self.key_prefix)

    def _apply(self, replica: str, event: KVEvent) -> None:
        if event.type == "stored":
            self.index.insert(replica, list(event.hashes))
        elif event.type == "removed":
            self.index.remove(replica, list(event.hashes))
        else:
            self.index.drop_replica(replica)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _id(entry_id: str | bytes) -> tuple[int, int]:
    milliseconds, sequence = _text(entry_id).split("-")
    return int(milliseconds), int(sequence)
