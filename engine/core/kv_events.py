"""KV-cache events: what an engine replica holds in its prefix cache, kept in Redis for routers.

Torch-free: the engine (publisher) and the router (follower) both import it.

NOTE: the truth about replica R lives in two Redis keys:
- `blocks_key(R)` (`{prefix}kv:{R}:blocks`): a set of the hex hashes of the blocks R's prefix
  cache holds now;
- `stream_key(R)` (`{prefix}kv:{R}:events`): a stream of events, each applied to that set in
  order:
  {"type": "stored", "hashes": "h1,h2,..."}, {"type": "removed", "hashes": ...} or
  {"type": "cleared"} (the cache was reset, or the engine restarted: the set is empty).
The publisher updates the set and appends the event in one MULTI transaction, so a follower
that reads the set and then the stream from the id it read just before the set never misses
or double-applies a change that matters (stored and removed are idempotent on a set).
The stream is capped (approximately) at STREAM_MAXLEN entries; a follower that falls further
behind reloads the set.

Every fleetlm key in Redis starts with a key prefix (`--redis-key-prefix`, default
`fleetlm:`), so that several models share one Redis without seeing each other's replicas.
"""

from dataclasses import dataclass
from typing import Literal

DEFAULT_KEY_PREFIX = "fleetlm:"
MAX_KEY_PREFIX_LEN = 128
STREAM_MAXLEN = 10_000
EventType = Literal["stored", "removed", "cleared"]


def check_key_prefix(prefix: str) -> str:
    """`prefix` if it can start Redis keys (non-empty, no whitespace, at most 128 characters);
    ValueError otherwise."""
    if not prefix:
        raise ValueError("the Redis key prefix must not be empty")
    if any(c.isspace() for c in prefix):
        raise ValueError(f"the Redis key prefix must not contain whitespace, got {prefix!r}")
    if len(prefix) > MAX_KEY_PREFIX_LEN:
        raise ValueError(
            f"the Redis key prefix must be at most {MAX_KEY_PREFIX_LEN} characters, "
            f"got {len(prefix)}"
        )
    return prefix


def blocks_key(replica: str, prefix: str = DEFAULT_KEY_PREFIX) -> str:
    return f"{prefix}kv:{replica}:blocks"


def stream_key(replica: str, prefix: str = DEFAULT_KEY_PREFIX) -> str:
    return f"{prefix}kv:{replica}:events"


def replicas_key(prefix: str = DEFAULT_KEY_PREFIX) -> str:
    """The registry of engine replicas (`fleetlm serve --register-redis-url`): a sorted set of
    their URLs scored by the wall-clock time their registration expires."""
    return f"{prefix}replicas"


@dataclass(frozen=True)
class KVEvent:
    type: EventType
    hashes: tuple[bytes, ...] = ()  # block hashes (empty for "cleared")

    def to_fields(self) -> dict[str, str]:
        return {"type": self.type, "hashes": ",".join(h.hex() for h in self.hashes)}

    @classmethod
    def from_fields(cls, fields: dict) -> "KVEvent":
        """From a stream entry's fields (str or bytes keys and values, as redis-py gives)."""
        decoded = {_text(k): _text(v) for k, v in fields.items()}
        event_type = decoded.get("type")
        if event_type not in ("stored", "removed", "cleared"):
            raise ValueError(f"unknown KV event type {event_type!r}")
        hashes = decoded.get("hashes", "")
        return cls(event_type, tuple(bytes.fromhex(h) for h in hashes.split(",") if h))


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
