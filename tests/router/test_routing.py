import pydantic
import pytest

from fleetlm.router.replicas import Replica, ReplicaPool
from fleetlm.router.routing import RouteRequest, choose
from fleetlm.router.settings import RouterSettings

URLS = ["http://a", "http://b", "http://c"]
PROMPT = RouteRequest([b"h1", b"h2", b"h3", b"h4"], None)


def replicas(loads=(0, 0, 0)) -> list[Replica]:
    return [Replica(url, in_flight=load) for url, load in zip(URLS, loads, strict=True)]


def settings(**kwargs) -> RouterSettings:
    return RouterSettings(replicas=URLS, **kwargs)


def test_prefix_prefers_the_replica_holding_the_longest_prefix():
    decision = choose(settings(), replicas(), PROMPT, {"http://a": 4, "http://b": 2}, 0)
    assert (decision.replica.url, decision.reason, decision.matched_blocks) == (
        "http://a",
        "prefix_hit",
        4,
    )


def test_prefix_weighs_cache_against_load():
    # 2 blocks of 16 tokens = 32 cached tokens do not pay for 1 request of load (256 tokens)
    decision = choose(settings(), replicas((1, 0, 0)), PROMPT, {"http://a": 2}, 0)
    assert decision.reason == "least_load" and decision.replica.url != "http://a"
    # 32 blocks = 512 tokens do
    long_prompt = RouteRequest([bytes([i]) for i in range(32)], None)
    decision = choose(settings(), replicas((1, 0, 0)), long_prompt, {"http://a": 32}, 0)
    assert decision.replica.url == "http://a"


def test_prefix_never_piles_onto_a_hot_replica():
    long_prompt = RouteRequest([i.to_bytes(2) for i in range(500)], None)
    decision = choose(
        settings(max_load_gap=4), replicas((5, 0, 0)), long_prompt, {"http://a": 500}, 0
    )
    assert decision.replica.url != "http://a"


def test_without_matches_the_choice_is_least_loaded_and_stable():
    first = choose(settings(), replicas(), PROMPT, {}, 0)
    again = choose(settings(), replicas(), PROMPT, {}, 7)
    assert first.reason == "least_load" and first.replica.url == again.replica.url
    assert choose(settings(), replicas((3, 1, 2)), PROMPT, {}, 0).replica.url == "http://b"


def test_round_robin_and_least_load():
    rr = settings(strategy="round_robin")
    assert [choose(rr, replicas(), PROMPT, {}, i).replica.url for i in range(4)] == [*URLS, URLS[0]]
    ll = settings(strategy="least_load")
    assert choose(ll, replicas((2, 0, 1)), PROMPT, {"http://a": 4}, 0).replica.url == "http://b"


def test_session_affinity_is_stable_and_moves_only_the_removed_replicas_keys():
    session = settings(strategy="session")
    keys = [f"user-{i}" for i in range(30)]
    placed = {k: choose(session, replicas(), RouteRequest([], k), {}, 0).replica.url for k in keys}
    assert len(set(placed.values())) == 3
    remaining = [r for r in replicas() if r.url != "http://b"]
    for key, url in placed.items():
        now = choose(session, remaining, RouteRequest([], key), {}, 0).replica.url
        assert now == url or url == "http://b"


def test_pool_ejects_after_failures_and_readmits_on_a_passing_check():
    pool = ReplicaPool(URLS, unhealthy_after=2)
    a = pool.replicas["http://a"]
    pool.record_error(a)
    assert a.healthy
    pool.record_error(a)
    assert not a.healthy and [r.url for r in pool.available()] == URLS[1:]
    pool.record_check(a, True, {"num_waiting": 3.0})
    assert a.healthy and a.load == 3.0
    pool.record_check(a, False, {})
    pool.record_check(a, False, {})
    assert not a.healthy


def test_settings_need_a_replica_source():
    with pytest.raises(pydantic.ValidationError, match="no replicas"):
        RouterSettings()
    with pytest.raises(pydantic.ValidationError, match="needs redis_url"):
        RouterSettings(discover_redis=True)
    assert RouterSettings(discover_redis=True, redis_url="redis://r").replicas == []
    assert RouterSettings(replicas="http://a/, http://b").replicas == ["http://a", "http://b"]


def test_pool_sync_adds_and_forgets_replicas():
    pool = ReplicaPool(["http://a"], unhealthy_after=2)
    pool.sync(["http://a", "http://b"])
    assert sorted(pool.replicas) == ["http://a", "http://b"]
    pool.sync(["http://b"])
    assert list(pool.replicas) == ["http://b"]
