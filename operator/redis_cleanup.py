"""The finalizer's Redis work: delete every key under a model's prefix."""

import redis.asyncio as aioredis

BATCH = 500


async def delete_keys(redis_url: str, prefix: str) -> int:
    """Delete the keys starting with `prefix` (SCAN + UNLINK, in batches: never KEYS, which
    blocks a shared Redis). Returns how many were deleted."""
    if not prefix or any(c in prefix for c in "*?[]\\"):
        raise ValueError(f"refusing to delete by the pattern-like prefix {prefix!r}")
    client = aioredis.Redis.from_url(redis_url)
    deleted = 0
    try:
        batch: list[bytes] = []
        async for key in client.scan_iter(match=f"{prefix}*", count=BATCH):
            batch.append(key)
            if len(batch) >= BATCH:
                deleted += await client.unlink(*batch)
                batch.clear()
        if batch:
            deleted += await client.unlink(*batch)
    finally:
        await client.aclose()
    return deleted
