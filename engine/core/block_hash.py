"""Content hashes of KV-cache blocks (torch-free: the router hashes prompts the same way).

NOTE: a block's hash covers its tokens *and* every token before it, by chaining: the hash of
block i is sha256(hash of block i-1 || token ids of block i || extra keys). Two requests
share a cached block only if their whole prefixes up to the end of that block are equal.
Only full blocks are hashed. The digest is deterministic across processes and machines
(unlike Python's `hash`), so replicas and routers agree on it.
"""

import hashlib
from array import array
from collections.abc import Sequence

ROOT_HASH = hashlib.sha256(b"fleetlm-kv-block-v1").digest()[:16]


def hash_block_tokens(
    parent_hash: bytes | None, token_ids: Sequence[int], extra_keys: bytes = b""
) -> bytes:
    """Hash of one full block given the hash of the block before it (None for the first)."""
    digest = hashlib.sha256(parent_hash or ROOT_HASH)
    digest.update(array("q", token_ids).tobytes())
    digest.update(extra_keys)
    return digest.digest()[:16]


def extend_block_hashes(
    block_hashes: list[bytes], token_ids: Sequence[int], block_size: int, extra_keys: bytes = b""
) -> list[bytes]:
    """Append the hashes of the full blocks of `token_ids` not yet in `block_hashes`."""
    for start in range(len(block_hashes) * block_size, len(token_ids) - block_size + 1, block_size):
        parent = block_hashes[-1] if block_hashes else None
        block_hashes.append(
            hash_block_tokens(parent, token_ids[start : start + block_size], extra_keys)
        )
    return block_hashes
