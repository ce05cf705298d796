"""Choosing a replica for a request: pure functions of the replicas' state.

NOTE: every choice is deterministic given the same state, so routers sharing their state make
the same decisions. Ties are broken by rendezvous hashing (the highest sha256 of key + URL):
the same key keeps landing on the same replica, and removing a replica moves only its keys.
"""

import hashlib
from dataclasses import dataclass

from fleetlm.router.replicas import Replica
from fleetlm.router.settings import RouterSettings


@dataclass(frozen=True)
class RouteRequest:
    block_hashes: list[bytes]  # the prompt's full blocks, hashed as the engine hashes them
    session_key: str | None  # session header or the `user` field


@dataclass(frozen=True)
class Decision:
    replica: Replica
    reason: str  # "prefix_hit", "least_load", "round_robin", "session"
    matched_blocks: int  # blocks of the prompt the index says the replica holds


def rendezvous(key: bytes, replicas: list[Replica]) -> Replica:
    return max(replicas, key=lambda r: hashlib.sha256(key + r.url.encode()).digest())


def least_loaded(replicas: list[Replica], key: bytes) -> Replica:
    lowest = min(r.load for r in replicas)
    return rendezvous(key, [r for r in replicas if r.load == lowest])


def choose(
    settings: RouterSettings,
    replicas: list[Replica],
    request: RouteRequest,
    matches: dict[str, int],
    counter: int,
) -> Decision:
    """`replicas` is non-empty; `matches` is the prefix index's answer for the prompt."""
    key = request.block_hashes[0] if request.block_hashes else b""
    if settings.strategy == "round_robin":
        return Decision(replicas[counter % len(replicas)], "round_robin", 0)
    if settings.strategy == "session" and request.session_key is not None:
        return Decision(rendezvous(request.session_key.encode(), replicas), "session", 0)
    if settings.strategy == "prefix":
        decision = _by_prefix(settings, replicas, matches)
        if decision is not None:
            return decision
    replica = least_loaded(replicas, key)
    return Decision(replica, "least_load", matches.get(replica.url, 0))


def _by_prefix(
    settings: RouterSettings, replicas: list[Replica], matches: dict[str, int]
) -> Decision | None:
    """The replica with the best cached tokens minus load cost, among those not more than
    `max_load_gap` requests above the least loaded; None when no candidate holds a block."""
    lowest = min(r.load for r in replicas)
    candidates = [
        r for r in replicas if matches.get(r.url) and r.load <= lowest + settings.max_load_gap
    ]
    if not candidates:
        return None

    def score(replica: Replica) -> tuple[float, str]:
        cached = matches[replica.url] * settings.block_size
        return cached - settings.load_cost_tokens * replica.load, replica.url

    best = max(candidates, key=score)
    if score(best)[0] <= -settings.load_cost_tokens * lowest:  # no better than no cache
        return None
    return Decision(best, "prefix_hit", matches[best.url])
