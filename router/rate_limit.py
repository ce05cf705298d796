"""Per-API-key rate limits (requests and tokens per minute), counted in the router's store so
that every router replica enforces the same budget.

Tokens are known only once a response is done: a request is refused when the key's window
has already used its token budget, and its tokens are charged when it ends (the `usage` of
the answer; for a stream without usage, its prompt blocks and one token per event).
"""

import hashlib
import math
import time
from collections.abc import Callable

from fleetlm.router.store import RouterStore

WINDOW_S = 60


def limit_key(authorization: str | None) -> str:
    """The key's identity in the store: a digest, never the key itself."""
    secret = (authorization or "").removeprefix("Bearer ").strip() or "anonymous"
    return hashlib.sha256(secret.encode()).hexdigest()[:32]


class RateLimiter:
    def __init__(
        self,
        store: RouterStore,
        requests_per_minute: int | None,
        tokens_per_minute: int | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self.clock = clock

    @property
    def enabled(self) -> bool:
        return self.requests_per_minute is not None or self.tokens_per_minute is not None

    async def admit(self, key: str) -> int | None:
        """None if the request may go; otherwise the seconds to wait (Retry-After)."""
        if self.requests_per_minute is not None:
            count = await self.store.incr_window(f"requests:{key}", 1, WINDOW_S)
            if count > self.requests_per_minute:
                return self.retry_after()
        if self.tokens_per_minute is not None:
            used = await self.store.incr_window(f"tokens:{key}", 0, WINDOW_S)
            if used >= self.tokens_per_minute:
                return self.retry_after()
        return None

    async def charge(self, key: str, num_tokens: int) -> None:
        if self.tokens_per_minute is not None and num_tokens > 0:
            await self.store.incr_window(f"tokens:{key}", num_tokens, WINDOW_S)

    def retry_after(self) -> int:
        """Seconds until the current window ends."""
        return max(1, math.ceil(WINDOW_S - self.clock() % WINDOW_S))
