import asyncio
import json

from fleetlm.router.rate_limit import RateLimiter, limit_key
from fleetlm.router.store import MemoryStore
from fleetlm.router.usage import UsageMeter


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_requests_per_minute_per_key_with_retry_after():
    clock = Clock(120.0 + 45)  # 45 s into a minute window
    limiter = RateLimiter(MemoryStore(clock=clock), 2, None, clock=clock)

    async def scenario():
        assert await limiter.admit("a") is None
        assert await limiter.admit("a") is None
        assert await limiter.admit("a") == 15  # until the window ends
        assert await limiter.admit("b") is None  # another key has its own budget
        clock.now = 180.0 + 1  # the next window
        assert await limiter.admit("a") is None

    asyncio.run(scenario())


def test_tokens_per_minute_refuses_once_the_window_is_spent():
    clock = Clock(600.0)
    limiter = RateLimiter(MemoryStore(clock=clock), None, 100, clock=clock)

    async def scenario():
        assert await limiter.admit("a") is None
        await limiter.charge("a", 60)
        assert await limiter.admit("a") is None  # 60 < 100
        await limiter.charge("a", 40)
        assert await limiter.admit("a") == 60
        clock.now += 60
        assert await limiter.admit("a") is None

    asyncio.run(scenario())


def test_limit_keys_are_digests_of_the_api_key():
    assert limit_key("Bearer sk-1") == limit_key("sk-1") != limit_key("Bearer sk-2")
    assert "sk-1" not in limit_key("Bearer sk-1")
    assert limit_key(None) == limit_key("")


def test_usage_meter_reads_usage_or_estimates_a_stream():
    body = json.dumps({"choices": [], "usage": {"total_tokens": 42}}).encode()
    meter = UsageMeter(streaming=False, prompt_tokens_estimate=7)
    meter.feed(body[:10])
    meter.feed(body[10:])
    assert meter.total_tokens() == 42

    events = [b'data: {"choices": [{"text": "a"}]}\n\n'] * 5
    stream = b"".join(events) + b'data: {"choices": [], "usage": {"total_tokens": 30}}\n\n'
    meter = UsageMeter(streaming=True, prompt_tokens_estimate=7)
    for i in range(0, len(stream), 7):  # chunk boundaries split lines
        meter.feed(stream[i : i + 7])
    assert meter.total_tokens() == 30

    meter = UsageMeter(streaming=True, prompt_tokens_estimate=7)
    meter.feed(b"".join(events) + b"data: [DONE]\n\n")
    assert meter.total_tokens() == 7 + 5
