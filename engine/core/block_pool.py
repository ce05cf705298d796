"""The pool of KV-cache blocks: reference counts, the prefix-cache index and LRU eviction."""

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from fleetlm.engine.core.kv_events import KVEvent


@dataclass(eq=False)
class KVCacheBlock:
    block_id: int
    ref_cnt: int = 0
    block_hash: bytes | None = None  # set while the block is in the prefix-cache index

    def __repr__(self) -> str:
        return f"KVCacheBlock({self.block_id}, ref={self.ref_cnt}, cached={self.block_hash is not None})"


class BlockPool:
    """Owns every block.

    NOTE: a block whose reference count drops to zero goes to the tail of the free queue but
    keeps its hash, so a later request with the same prefix can take it back (`touch`). New
    allocations pop from the head: the least recently freed block is evicted first, and only
    then does it leave the prefix-cache index.

    With `record_events` (off by default), every change to the index is also recorded as a
    `KVEvent`, in order, until `take_events` hands them over: whoever turns it on must take
    them regularly (the engine process does, after every step, to publish them for routers).
    """

    def __init__(
        self, num_blocks: int, enable_caching: bool = True, record_events: bool = False
    ) -> None:
        if num_blocks < 1:
            raise ValueError(f"the KV cache needs at least one block, got {num_blocks}")
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self.blocks = [KVCacheBlock(i) for i in range(num_blocks)]
        self.free_blocks: OrderedDict[int, KVCacheBlock] = OrderedDict(
            (block.block_id, block) for block in self.blocks
        )
        self.cached_blocks: dict[bytes, KVCacheBlock] = {}
        self.num_evictions = 0
        self.events: list[KVEvent] | None = [] if record_events else None

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_blocks)

    @property
    def usage(self) -> float:
        """Fraction of blocks held by requests (cached but free blocks count as free)."""
        return 1.0 - self.num_free_blocks / self.num_blocks

    def get_cached_block(self, block_hash: bytes) -> KVCacheBlock | None:
        return self.cached_blocks.get(block_hash)

    def touch(self, blocks: Iterable[KVCacheBlock]) -> None:
        """Take a reference on blocks found in the cache (removing free ones from the queue)."""
        for block in blocks:
            if block.ref_cnt == 0:
                del self.free_blocks[block.block_id]
            block.ref_cnt += 1

    def allocate(self, num_blocks: int) -> list[KVCacheBlock]:
        if num_blocks > self.num_free_blocks:
            raise ValueError(f"cannot allocate {num_blocks} blocks, {self.num_free_blocks} free")
        blocks = []
        evicted_hashes = []
        for _ in range(num_blocks):
            _, block = self.free_blocks.popitem(last=False)
            evicted_hash = self._evict(block)
            if evicted_hash is not None:
                evicted_hashes.append(evicted_hash)
            block.ref_cnt = 1
            blocks.append(block)
        self._record("removed", evicted_hashes)
        return blocks

    def free(self, blocks: Iterable[KVCacheBlock]) -> None:
        """Drop one reference per block; blocks reaching zero join the free queue in order."""
        for block in blocks:
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                self.free_blocks[block.block_id] = block

    def cache_blocks(self, blocks: Iterable[KVCacheBlock], block_hashes: Iterable[bytes]) -> None:
        """Enter full blocks into the prefix-cache index (first block per hash wins)."""
        if not self.enable_caching:
            return
        stored_hashes = []
        for block, block_hash in zip(blocks, block_hashes, strict=True):
            if block.block_hash is None and block_hash not in self.cached_blocks:
                block.block_hash = block_hash
                self.cached_blocks[block_hash] = block
                stored_hashes.append(block_hash)
        self._record("stored", stored_hashes)

    def reset_prefix_cache(self) -> bool:
        """Forget every cached hash; only possible when no request holds a block."""
        if self.num_free_blocks != self.num_blocks:
            return False
        for block in self.blocks:
            block.block_hash = None
        self.cached_blocks.clear()
        if self.events is not None:
            self.events.append(KVEvent("cleared"))
        return True

    def cached_hashes(self) -> list[bytes]:
        """A snapshot of the hashes in the prefix-cache index now."""
        return list(self.cached_blocks)

    def take_events(self) -> list[KVEvent]:
        """The events recorded since the last call, oldest first (none when not recording)."""
        if not self.events:
            return []
        events, self.events = self.events, []
        return events

    def _record(self, event_type: Literal["stored", "removed"], hashes: list[bytes]) -> None:
        if self.events is not None and hashes:
            self.events.append(KVEvent(event_type, tuple(hashes)))

    def _evict(self, block: KVCacheBlock) -> bytes | None:
        """Drop the block from the prefix-cache index; the hash it held, if any."""
        block_hash = block.block_hash
        if block_hash is not None:
            del self.cached_blocks[block_hash]
            block.block_hash = None
            self.num_evictions += 1
        return block_hash
