"""Which blocks each request holds: prefix-cache lookups, allocation and freeing."""

from collections.abc import Sequence
from dataclasses import dataclass

from fleetlm.engine.core.block_hash import extend_block_hashes
from fleetlm.engine.core.block_pool import BlockPool, KVCacheBlock
from fleetlm.engine.core.request import Request


@dataclass
class PrefixCacheStats:
    """Counted in tokens, as vLLM's `prefix_cache_queries` / `prefix_cache_hits` metrics."""

    queries: int = 0
    hits: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0


def cdiv(a: int, b: int) -> int:
    return -(a // -b)


class KVCacheManager:
    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        enable_caching: bool = True,
        record_kv_events: bool = False,
    ) -> None:
        """`record_kv_events`: the pool records prefix-cache changes (see `BlockPool`)."""
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.pool = BlockPool(num_blocks, enable_caching, record_events=record_kv_events)
        self.req_to_blocks: dict[str, list[KVCacheBlock]] = {}
        self.num_cached_blocks: dict[str, int] = {}  # how many of a request's blocks are indexed
        self.prefix_cache_stats = PrefixCacheStats()

    @property
    def usage(self) -> float:
        return self.pool.usage

    def get_block_ids(self, request_id: str) -> list[int]:
        return [block.block_id for block in self.req_to_blocks.get(request_id, ())]

    def get_computed_blocks(self, request: Request) -> list[KVCacheBlock]:
        """The longest run of cached full blocks matching the request's tokens.

        At least one token is always left to compute: the last position's logits are needed.
        Requests asking for prompt logprobs skip the cache (every position must be computed).
        """
        if not self.enable_caching or request.sampling_params.prompt_logprobs is not None:
            return []
        block_hashes = extend_block_hashes(
            request.block_hashes, request.all_token_ids, self.block_size
        )
        max_hit_blocks = (request.num_tokens - 1) // self.block_size
        hits = []
        for block_hash in block_hashes[:max_hit_blocks]:
            block = self.pool.get_cached_block(block_hash)
            if block is None:
                break
            hits.append(block)
        self.prefix_cache_stats.queries += request.num_tokens
        self.prefix_cache_stats.hits += len(hits) * self.block_size
        return hits

    def get_shared_prompt_blocks(self, follower: Request, leader: Request) -> list[KVCacheBlock]:
        """For sample i > 0 of an n > 1 request: the leader's computed full prompt blocks."""
        num_blocks = min(
            (follower.num_prompt_tokens - 1) // self.block_size,
            leader.num_computed_tokens // self.block_size,
        )
        return self.req_to_blocks.get(leader.request_id, [])[:num_blocks]

    def allocate_slots(
        self,
        request: Request,
        num_new_tokens: int,
        new_computed_blocks: Sequence[KVCacheBlock] = (),
    ) -> list[KVCacheBlock] | None:
        """Give the request room for `num_new_tokens` more tokens; None if blocks run out.

        `new_computed_blocks` (prefix hits, or blocks shared with a leader) are taken first;
        they hold `len(new_computed_blocks) * block_size` tokens already computed.
        """
        blocks = self.req_to_blocks.setdefault(request.request_id, [])
        if not new_computed_blocks:  # the common case, a decode: usually no new block at all
            num_total = request.num_computed_tokens + num_new_tokens
            if num_total <= len(blocks) * self.block_size:
                self._cache_full_blocks(request, blocks, num_total)
                return []
        num_computed = request.num_computed_tokens + len(new_computed_blocks) * self.block_size
        num_total = num_computed + num_new_tokens
        num_new_blocks = cdiv(num_total, self.block_size) - len(blocks) - len(new_computed_blocks)
        num_reclaimed = sum(1 for block in new_computed_blocks if block.ref_cnt == 0)
        if num_new_blocks > self.pool.num_free_blocks - num_reclaimed:
            return None
        self.pool.touch(new_computed_blocks)
        blocks.extend(new_computed_blocks)
        new_blocks = self.pool.allocate(max(num_new_blocks, 0))
        blocks.extend(new_blocks)
        self._cache_full_blocks(request, blocks, num_total)
        return new_blocks

    def free(self, request: Request) -> None:
        """Release the request's blocks; the last block is evicted first when memory is needed."""
        blocks = self.req_to_blocks.pop(request.request_id, [])
        self.num_cached_blocks.pop(request.request_id, None)
        self.pool.free(reversed(blocks))

    def reset_prefix_cache(self) -> bool:
        return self.pool.reset_prefix_cache()

    def _cache_full_blocks(
        self, request: Request, blocks: list[KVCacheBlock], num_tokens: int
    ) -> None:
        """Index the blocks that are full once this step's tokens are written.

        A block whose last token is still being sampled on the device (async scheduling) has
        no hash yet: it is indexed at the request's next allocation.
        """
        if not self.enable_caching:
            return
        num_full = min(num_tokens, request.num_tokens) // self.block_size
        num_cached = self.num_cached_blocks.get(request.request_id, 0)
        if num_full <= num_cached:
            return
        block_hashes = extend_block_hashes(
            request.block_hashes, request.all_token_ids, self.block_size
        )
        self.pool.cache_blocks(blocks[num_cached:num_full], block_hashes[num_cached:num_full])
        self.num_cached_blocks[request.request_id] = num_full
