from fleetlm.operator import naming


def test_names():
    assert naming.pool_name("llama", "decode") == "llama-decode"
    assert naming.leader_set_name("llama", "serve", 2) == "llama-serve-2"
    assert naming.worker_set_name("llama", "serve", 2) == "llama-serve-2-w"
    assert naming.headless_service_name("llama", "serve") == "llama-serve-hl"
    assert naming.router_name("llama") == "llama-router"
    assert naming.model_service_name("llama") == "llama"


def test_addresses():
    assert (
        naming.leader_address("llama", "serve", 1, "team-a")
        == "llama-serve-1-0.llama-serve-hl.team-a.svc"
    )
    assert naming.redis_key_prefix("team-a", "llama") == "fleetlm:team-a.llama:"
    assert naming.endpoint_url("llama", "team-a") == "http://llama.team-a.svc.cluster.local/v1"
    assert (
        naming.endpoint_url("llama", "ns", "corp.internal")
        == "http://llama.ns.svc.corp.internal/v1"
    )
    assert naming.router_pod_selector("llama") == "fleetlm.dev/model=llama,fleetlm.dev/role=leader"


def test_labels():
    assert naming.labels("llama", component="engine", pool="serve", role="leader") == {
        "app.kubernetes.io/name": "fleetlm",
        "app.kubernetes.io/instance": "llama",
        "app.kubernetes.io/managed-by": "fleetlm-operator",
        "app.kubernetes.io/component": "engine",
        "fleetlm.dev/model": "llama",
        "fleetlm.dev/pool": "serve",
        "fleetlm.dev/role": "leader",
    }
    assert naming.labels("llama", component="router") == {
        "app.kubernetes.io/name": "fleetlm",
        "app.kubernetes.io/instance": "llama",
        "app.kubernetes.io/managed-by": "fleetlm-operator",
        "app.kubernetes.io/component": "router",
        "fleetlm.dev/model": "llama",
    }


def test_selector_labels_are_a_subset_of_the_labels():
    for kwargs in (
        {"component": "engine", "pool": "prefill", "role": "worker", "replica": 3},
        {"component": "engine", "pool": "serve"},
        {"component": "router"},
    ):
        selector = naming.selector_labels("m", **kwargs)
        assert selector.items() <= naming.labels("m", **kwargs).items()
        assert selector["fleetlm.dev/model"] == "m"
    assert naming.selector_labels("m", component="engine", replica=3)["fleetlm.dev/replica"] == "3"
