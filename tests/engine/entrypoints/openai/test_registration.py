"""The server's registration in Redis for `fleetlm router --discover redis`, against a real
redis-server: each model registers under its key prefix, and routers see only their own."""

import asyncio
from types import SimpleNamespace

from fleetlm.engine.entrypoints.openai.registration import keep_registered
from fleetlm.router.store import RedisStore

URL_A, URL_B = "http://10.0.0.7:8000", "http://10.0.0.8:8000"
PREFIX_B = "fleetlm:team-b.llama:"


def serving_context() -> SimpleNamespace:
    """What registration reads of the server's `ServingContext`."""
    return SimpleNamespace(draining=False, llm=SimpleNamespace(is_dead=False))


async def wait_for(condition, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not await condition():
            await asyncio.sleep(0.02)


def test_servers_register_under_their_key_prefix_and_leave_when_draining(redis_server):
    async def scenario() -> None:
        router_a = RedisStore(redis_server.url, "router-a")  # the default prefix
        router_b = RedisStore(redis_server.url, "router-b", key_prefix=PREFIX_B)
        context_a, context_b = serving_context(), serving_context()
        tasks = [
            asyncio.create_task(
                keep_registered(redis_server.url, URL_A, context_a, interval_s=0.05)
            ),
            asyncio.create_task(
                keep_registered(redis_server.url, URL_B, context_b, PREFIX_B, interval_s=0.05)
            ),
        ]
        try:
            await wait_for(lambda: _registered_are(router_a, [URL_A]))
            await wait_for(lambda: _registered_are(router_b, [URL_B]))
            assert await router_a.client.exists("fleetlm:replicas", f"{PREFIX_B}replicas") == 2
            context_b.draining = True
            await wait_for(lambda: _registered_are(router_b, []))
            assert await router_a.registered_replicas() == [URL_A]
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        assert await router_a.registered_replicas() == []  # a stopped server leaves at once
        await router_a.close()
        await router_b.close()

    asyncio.run(scenario())


async def _registered_are(store: RedisStore, urls: list[str]) -> bool:
    return await store.registered_replicas() == urls
