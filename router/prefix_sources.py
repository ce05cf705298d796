"""Where the router learns which replica holds a prompt's prefix.

- `CachedPrefixes`: what the engines say they hold (their KV-cache events, followed in
  Redis): exact after evictions and restarts.
- `SentPrefixes`: where this router (and its peers, through the store) sent each prompt: the
  fallback when engines publish no events, bounded by an LRU / TTL.
"""

from fleetlm.router.prefix_index import PrefixIndex
from fleetlm.router.store import RouterStore


class CachedPrefixes:
    def __init__(self, index: PrefixIndex) -> None:
        self.index = index

    async def match(self, block_hashes: list[bytes]) -> dict[str, int]:
        return self.index.match(block_hashes)

    async def record(self, replica: str, block_hashes: list[bytes]) -> None:
        """Nothing to do: the replica's own events will say what it cached."""


class SentPrefixes:
    def __init__(self, store: RouterStore) -> None:
        self.store = store

    async def match(self, block_hashes: list[bytes]) -> dict[str, int]:
        return await self.store.match_prefix(block_hashes)

    async def record(self, replica: str, block_hashes: list[bytes]) -> None:
        await self.store.record_prefix(replica, block_hashes)
