from fleetlm.operator.builders.multi_node import leader_worker_set, stateful_sets
from fleetlm.operator.spec import parse_model
from tests.operator.examples import (
    LLAMA_405B_2NODE,
    REDIS_SETTINGS,
    SETTINGS,
    container,
    flag,
    validate,
    with_spec,
)

MODEL = parse_model(LLAMA_405B_2NODE, SETTINGS)
(POOL,) = MODEL.pools


def test_leader_worker_set():
    lws = leader_worker_set(MODEL, POOL, SETTINGS, owner=LLAMA_405B_2NODE)
    validate(lws)
    assert (lws["apiVersion"], lws["kind"]) == ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet")
    assert lws["metadata"]["name"] == "llama-405b-serve"
    spec = lws["spec"]
    assert spec["replicas"] == 2
    assert spec["startupPolicy"] == "LeaderCreated"
    # Not the shared headless Service: that one would be named like the pool Service.
    assert spec["networkConfig"] == {"subdomainPolicy": "UniquePerReplica"}
    lwt = spec["leaderWorkerTemplate"]
    assert lwt["size"] == 2
    leader, worker = container(lwt["leaderTemplate"]), container(lwt["workerTemplate"])
    assert lwt["leaderTemplate"]["metadata"]["labels"]["fleetlm.dev/role"] == "leader"
    assert lwt["workerTemplate"]["metadata"]["labels"]["fleetlm.dev/role"] == "worker"
    for one in (leader, worker):
        assert one["resources"]["limits"]["nvidia.com/gpu"] == "8"
        assert flag(one["args"], "--nnodes") == "2"
        assert flag(one["args"], "--master-addr") == "$(LWS_LEADER_ADDRESS)"
        assert flag(one["args"], "--master-port") == "29500"
        assert flag(one["args"], "--tensor-parallel-size") == "8"
        assert flag(one["args"], "--pipeline-parallel-size") == "2"
        assert [e["name"] for e in one["env"]] == ["POD_IP"]  # LWS adds its own variables
    assert flag(leader["args"], "--node-rank") == "0"
    assert flag(worker["args"], "--node-rank") == "$(LWS_WORKER_INDEX)"
    assert "--headless" in worker["args"] and "--headless" not in leader["args"]
    assert "readinessProbe" in leader and "readinessProbe" not in worker


def test_stateful_sets():
    sets = stateful_sets(MODEL, POOL, SETTINGS, owner=LLAMA_405B_2NODE)
    assert [s["metadata"]["name"] for s in sets] == [
        "llama-405b-serve-0",
        "llama-405b-serve-0-w",
        "llama-405b-serve-1",
        "llama-405b-serve-1-w",
    ]
    for manifest in sets:
        validate(manifest)
        spec = manifest["spec"]
        assert spec["serviceName"] == "llama-405b-serve-hl"
        assert spec["podManagementPolicy"] == "Parallel"
        labels = spec["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items()
        assert (
            manifest["metadata"]["labels"]["fleetlm.dev/replica"] == labels["fleetlm.dev/replica"]
        )
        assert container(spec["template"])["resources"]["limits"]["nvidia.com/gpu"] == "8"
    for i in range(2):
        leader, worker = sets[2 * i], sets[2 * i + 1]
        address = f"llama-405b-serve-{i}-0.llama-405b-serve-hl.team-a.svc"
        assert leader["spec"]["replicas"] == 1 and "ordinals" not in leader["spec"]
        assert worker["spec"]["replicas"] == 1  # nodes - 1
        assert worker["spec"]["ordinals"] == {"start": 1}  # pod-index label = rank
        for manifest, role in ((leader, "leader"), (worker, "worker")):
            labels = manifest["spec"]["template"]["metadata"]["labels"]
            assert labels["fleetlm.dev/replica"] == str(i)
            assert labels["fleetlm.dev/role"] == role
            assert flag(container(manifest["spec"]["template"])["args"], "--master-addr") == address
        leader_args = container(leader["spec"]["template"])["args"]
        worker_container = container(worker["spec"]["template"])
        assert flag(leader_args, "--node-rank") == "0"
        assert flag(worker_container["args"], "--node-rank") == "$(NODE_RANK)"
        assert "--headless" in worker_container["args"]
        assert worker_container["env"][1] == {
            "name": "NODE_RANK",
            "valueFrom": {
                "fieldRef": {"fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}
            },
        }


def test_four_nodes_per_replica():
    spec = {"parallelism": {"tensor": 4, "pipeline": 4}, "gpusPerNode": 4, "replicas": 1}
    model = parse_model(with_spec(LLAMA_405B_2NODE, **spec), REDIS_SETTINGS)
    (pool,) = model.pools
    leader, worker = stateful_sets(model, pool, REDIS_SETTINGS, owner=LLAMA_405B_2NODE)
    assert worker["spec"]["replicas"] == 3  # ranks 1, 2, 3
    assert worker["spec"]["ordinals"] == {"start": 1}
    for manifest in (leader, worker):
        args = container(manifest["spec"]["template"])["args"]
        assert flag(args, "--nnodes") == "4"
        assert flag(args, "--kv-events-redis-url") == REDIS_SETTINGS.redis_url
        assert container(manifest["spec"]["template"])["resources"]["limits"] == {
            "nvidia.com/gpu": "4"
        }
    lws = leader_worker_set(model, pool, REDIS_SETTINGS, owner=LLAMA_405B_2NODE)
    assert lws["spec"]["leaderWorkerTemplate"]["size"] == 4


def test_no_replicas_no_stateful_sets():
    model = parse_model(with_spec(LLAMA_405B_2NODE, replicas=0), SETTINGS)
    assert stateful_sets(model, model.pools[0], SETTINGS, owner=LLAMA_405B_2NODE) == []
    lws = leader_worker_set(model, model.pools[0], SETTINGS, owner=LLAMA_405B_2NODE)
    assert lws["spec"]["replicas"] == 0
