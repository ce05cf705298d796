"""Which replica holds which KV blocks, by block hash, bounded by an LRU.

Without KV-cache events from the engines, the router remembers where it sent each prompt's
blocks: the replica that computed a prefix holds it until evicted, which the LRU bound
approximates.
"""

from collections import OrderedDict


class PrefixIndex:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.holders: OrderedDict[bytes, set[str]] = OrderedDict()  # oldest first

    def __len__(self) -> int:
        return len(self.holders)

    def match(self, block_hashes: list[bytes]) -> dict[str, int]:
        """replica -> how many leading blocks of the prompt it holds (0 omitted)."""
        matched: dict[str, int] = {}
        candidates: set[str] | None = None
        for depth, block_hash in enumerate(block_hashes):
            holders = self.holders.get(block_hash)
            if not holders:
                break
            candidates = set(holders) if candidates is None else candidates & holders
            if not candidates:
                break
            self.holders.move_to_end(block_hash)
            for replica in candidates:
                matched[replica] = depth + 1
        return matched

    def insert(self, replica: str, block_hashes: list[bytes]) -> None:
        for block_hash in block_hashes:
            self.holders.setdefault(block_hash, set()).add(replica)
            self.holders.move_to_end(block_hash)
        while len(self.holders) > self.capacity:
            self.holders.popitem(last=False)

    def remove(self, replica: str, block_hashes: list[bytes]) -> None:
        for block_hash in block_hashes:
            holders = self.holders.get(block_hash)
            if holders is not None:
                holders.discard(replica)
                if not holders:
                    del self.holders[block_hash]

    def count_by_replica(self) -> dict[str, int]:
        """How many blocks each replica holds (the admin view)."""
        counts: dict[str, int] = {}
        for holders in self.holders.values():
            for replica in holders:
                counts[replica] = counts.get(replica, 0) + 1
        return counts

    def drop_replica(self, replica: str) -> None:
        for block_hash in [h for h, holders in self.holders.items() if replica in holders]:
            self.remove(replica, [block_hash])
