from fleetlm.engine.core.kv_cache_manager import KVCacheManager

from .helpers import make_request


def test_allocate_slots_grows_block_by_block():
    manager = KVCacheManager(num_blocks=8, block_size=4)
    request = make_request("a", num_prompt_tokens=6)
    assert len(manager.allocate_slots(request, 6)) == 2
    request.num_computed_tokens = 6
    request.append_output_token_id(1)
    assert manager.allocate_slots(request, 1) == []  # the 7th token fits in block 2
    request.num_computed_tokens = 7
    for token in (2, 3):
        request.append_output_token_id(token)
    assert len(manager.allocate_slots(request, 2)) == 1
    assert len(manager.get_block_ids("a")) == 3


def test_allocation_fails_without_changing_anything():
    manager = KVCacheManager(num_blocks=2, block_size=4)
    request = make_request("a", num_prompt_tokens=12)
    assert manager.allocate_slots(request, 12) is None
    assert manager.pool.num_free_blocks == 2
    assert manager.get_block_ids("a") == []


def test_prefix_hits_share_blocks_and_count_tokens():
    manager = KVCacheManager(num_blocks=8, block_size=4)
    first = make_request("a", num_prompt_tokens=10)
    manager.allocate_slots(first, 10)
    second = make_request("b", num_prompt_tokens=10, first_token=first.prompt_token_ids[0])
    hits = manager.get_computed_blocks(second)
    assert [b.block_id for b in hits] == manager.get_block_ids("a")[:2]
    manager.allocate_slots(second, 2, hits)
    assert [b.ref_cnt for b in hits] == [2, 2]
    assert manager.prefix_cache_stats.queries == 10
    assert manager.prefix_cache_stats.hits == 8


def test_a_full_hit_still_leaves_one_token_to_compute():
    manager = KVCacheManager(num_blocks=8, block_size=4)
    first = make_request("a", num_prompt_tokens=8, first_token=100)
    manager.allocate_slots(first, 8)
    second = make_request("b", num_prompt_tokens=8, first_token=100)
    assert len(manager.get_computed_blocks(second)) == 1


def test_freed_blocks_are_hit_later_and_prompt_logprobs_skip_the_cache():
    manager = KVCacheManager(num_blocks=8, block_size=4)
    first = make_request("a", num_prompt_tokens=9, first_token=100)
    manager.allocate_slots(first, 9)
    manager.free(first)
    assert manager.pool.num_free_blocks == 8
    assert (
        len(manager.get_computed_blocks(make_request("b", num_prompt_tokens=9, first_token=100)))
        == 2
    )
    assert (
        manager.get_computed_blocks(
            make_request("c", num_prompt_tokens=9, first_token=100, prompt_logprobs=1)
        )
        == []
    )


def test_hits_on_free_blocks_count_against_free_space():
    manager = KVCacheManager(num_blocks=3, block_size=4)
    first = make_request("a", num_prompt_tokens=8, first_token=100)
    manager.allocate_slots(first, 8)
    manager.free(first)
    second = make_request("b", num_prompt_tokens=16, first_token=100)
    hits = manager.get_computed_blocks(second)
    assert len(hits) == 2
    # 16 tokens need 4 blocks: 2 hits + 2 new, but only 1 block is free besides the hits.
    assert manager.allocate_slots(second, 8, hits) is None
    assert manager.pool.num_free_blocks == 3


def test_disabled_caching_never_hits():
    manager = KVCacheManager(num_blocks=8, block_size=4, enable_caching=False)
    manager.allocate_slots(make_request("a", num_prompt_tokens=9), 9)
    assert (
        manager.get_computed_blocks(make_request("b", num_prompt_tokens=9, first_token=100)) == []
    )


def test_last_blocks_of_a_request_are_evicted_first():
    manager = KVCacheManager(num_blocks=3, block_size=2)
    request = make_request("a", num_prompt_tokens=6)
    blocks = manager.allocate_slots(request, 6)
    manager.free(request)
    assert manager.pool.allocate(1)[0] is blocks[2]
