import pytest

from fleetlm.engine.core.block_hash import extend_block_hashes, hash_block_tokens
from fleetlm.engine.core.block_pool import BlockPool


def test_allocate_and_free_track_reference_counts():
    pool = BlockPool(4)
    blocks = pool.allocate(3)
    assert [b.ref_cnt for b in blocks] == [1, 1, 1]
    assert pool.num_free_blocks == 1
    pool.touch(blocks[:1])
    pool.free(blocks)
    assert blocks[0].ref_cnt == 1 and pool.num_free_blocks == 3
    pool.free(blocks[:1])
    assert pool.num_free_blocks == 4 and pool.usage == 0.0


def test_allocating_more_than_free_raises():
    pool = BlockPool(2)
    pool.allocate(2)
    with pytest.raises(ValueError, match="cannot allocate"):
        pool.allocate(1)


def test_freed_cached_blocks_stay_findable_until_evicted():
    pool = BlockPool(3)
    blocks = pool.allocate(2)
    hashes = [b"h0", b"h1"]
    pool.cache_blocks(blocks, hashes)
    pool.free(blocks)
    assert pool.get_cached_block(b"h0") is blocks[0]
    # The third (never used) block is handed out first, then the least recently freed.
    fresh = pool.allocate(1)
    assert fresh[0].block_id == 2 and pool.get_cached_block(b"h0") is blocks[0]
    pool.allocate(1)
    assert pool.get_cached_block(b"h0") is None
    assert pool.get_cached_block(b"h1") is blocks[1]
    assert pool.num_evictions == 1


def test_eviction_follows_free_order():
    pool = BlockPool(3)
    blocks = pool.allocate(3)
    pool.cache_blocks(blocks, [b"a", b"b", b"c"])
    pool.free([blocks[2], blocks[0], blocks[1]])
    evicted = [pool.allocate(1)[0].block_id for _ in range(3)]
    assert evicted == [2, 0, 1]


def test_touch_takes_a_free_cached_block_out_of_the_queue():
    pool = BlockPool(2)
    blocks = pool.allocate(2)
    pool.cache_blocks(blocks[:1], [b"a"])
    pool.free(blocks)
    pool.touch([blocks[0]])
    assert pool.num_free_blocks == 1
    assert pool.allocate(1)[0] is blocks[1]  # the touched block is not handed out


def test_one_block_per_hash_and_disabled_caching():
    pool = BlockPool(2)
    a, b = pool.allocate(2)
    pool.cache_blocks([a], [b"x"])
    pool.cache_blocks([b], [b"x"])
    assert pool.get_cached_block(b"x") is a and b.block_hash is None
    off = BlockPool(2, enable_caching=False)
    blocks = off.allocate(1)
    off.cache_blocks(blocks, [b"x"])
    assert off.get_cached_block(b"x") is None


def test_reset_prefix_cache_only_when_all_blocks_are_free():
    pool = BlockPool(2)
    blocks = pool.allocate(1)
    pool.cache_blocks(blocks, [b"x"])
    assert not pool.reset_prefix_cache()
    pool.free(blocks)
    assert pool.reset_prefix_cache()
    assert pool.get_cached_block(b"x") is None


def test_block_hashes_chain_over_the_whole_prefix():
    a = extend_block_hashes([], [1, 2, 3, 4, 5], block_size=2)
    b = extend_block_hashes([], [9, 9, 3, 4], block_size=2)
    assert len(a) == 2 and len(b) == 2
    assert a[1] != b[1]  # same tokens in block 1, different prefix
    assert a[0] == hash_block_tokens(None, [1, 2])
    assert a[1] == hash_block_tokens(a[0], [3, 4])
    # Extending is incremental and stable.
    hashes = extend_block_hashes([], [1, 2], block_size=2)
    assert extend_block_hashes(hashes, [1, 2, 3, 4, 5, 6], block_size=2)[:2] == a
