"""The server registering itself in Redis for routers to discover it (`fleetlm router
--discover redis`): its URL in the replica registry, with an expiry a heartbeat keeps moving.
A draining or dead server leaves the registry; one that vanishes expires."""

import asyncio
import contextlib
import logging
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from fleetlm.engine.core.kv_events import DEFAULT_KEY_PREFIX, replicas_key
from fleetlm.engine.entrypoints.openai.serving_common import ServingContext

logger = logging.getLogger(__name__)


async def keep_registered(
    redis_url: str,
    url: str,
    context: ServingContext,
    key_prefix: str = DEFAULT_KEY_PREFIX,
    interval_s: float = 2.0,
    ttl_s: float = 10.0,
) -> None:
    """Until cancelled: every interval, register (or, once draining or dead, deregister)."""
    key = replicas_key(key_prefix)
    client = aioredis.Redis.from_url(redis_url, socket_timeout=2.0)
    failing = False
    try:
        while True:
            try:
                if context.draining or context.llm.is_dead:
                    await client.zrem(key, url)
                else:
                    await client.zadd(key, {url: time.time() + ttl_s})
                if failing:
                    logger.info("registered in Redis again as %s", url)
                failing = False
            except (RedisError, OSError) as e:
                if not failing:
                    logger.warning("cannot register in Redis (%s); retrying", e)
                failing = True
            await asyncio.sleep(interval_s)
    finally:
        with contextlib.suppress(RedisError, OSError):
            await client.zrem(key, url)
        await client.aclose()
