from fleetlm.router.prefix_index import PrefixIndex

A, B, C, D = (bytes([i]) * 16 for i in range(4))


def test_match_counts_leading_blocks_held_by_each_replica():
    index = PrefixIndex(capacity=100)
    index.insert("r1", [A, B, C])
    index.insert("r2", [A, B])
    index.insert("r3", [B, C])  # not a prefix: a chain starts at the first block
    assert index.match([A, B, C, D]) == {"r1": 3, "r2": 2}
    assert index.match([D]) == {}


def test_lru_bound_evicts_the_oldest_blocks_first():
    index = PrefixIndex(capacity=3)
    index.insert("r1", [A, B])
    index.insert("r2", [C])
    index.match([A])  # A is used again: B is now the oldest
    index.insert("r2", [D])
    assert len(index) == 3
    assert index.match([A, B]) == {"r1": 1}
    assert index.match([C, D]) == {"r2": 2}


def test_remove_and_drop_replica():
    index = PrefixIndex(capacity=100)
    index.insert("r1", [A, B])
    index.insert("r2", [A, B])
    index.remove("r1", [B])
    assert index.match([A, B]) == {"r1": 1, "r2": 2}
    index.drop_replica("r2")
    assert index.match([A, B]) == {"r1": 1}
    index.drop_replica("r1")
    assert len(index) == 0
