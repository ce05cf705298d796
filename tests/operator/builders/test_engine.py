import pytest

from fleetlm.operator.builders.engine import (
    NodeRank,
    engine_args,
    engine_container,
    engine_pod_template,
    startup_budget_s,
)
from fleetlm.operator.spec import parse_model
from tests.operator.examples import (
    LLAMA_8B_1GPU,
    LLAMA_8B_PREFILL_DECODE,
    LLAMA_70B_TP8,
    LLAMA_405B_2NODE,
    REDIS_SETTINGS,
    SETTINGS,
    SMOLLM2_CPU,
    flag,
    validate_pod_template,
    with_spec,
)


def _serve(example, settings=SETTINGS):
    model = parse_model(example, settings)
    return model, model.pools[0]


def test_minimal_flags():
    """Defaults stay implicit: only the model, the address, the name and the advertise URL."""
    spec = {"model": {"source": {"hub": "org/llama"}}, "gpusPerNode": 1}
    model, pool = _serve(with_spec(LLAMA_8B_1GPU, **spec))
    assert engine_args(model, pool, SETTINGS) == [
        "serve",
        "org/llama",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
        "--served-model-name",
        "llama-8b",
        "--advertise-url",
        "http://$(POD_IP):8000",
    ]


def test_every_flag_in_the_contracts_order():
    spec = {
        "model": {
            "source": {"pvc": {"claimName": "models", "subPath": "mixtral"}},
            "servedName": "mixtral",
            "dtype": "float16",
            "quantization": "awq",
            "maxModelLen": 4096,
            "moe": True,
            "engineArgs": ["--max-num-seqs", "64", "--enforce-eager"],
        },
        "parallelism": {"tensor": 2, "pipeline": 2, "data": 2, "expert": True},
        "gpusPerNode": 8,
    }
    model, pool = _serve(with_spec(LLAMA_8B_1GPU, **spec), REDIS_SETTINGS)
    assert engine_args(model, pool, REDIS_SETTINGS) == [
        "serve",
        "/models/mixtral",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
        "--served-model-name",
        "mixtral",
        "--dtype",
        "float16",
        "--quantization",
        "awq",
        "--max-model-len",
        "4096",
        "--tensor-parallel-size",
        "2",
        "--pipeline-parallel-size",
        "2",
        "--data-parallel-size",
        "2",
        "--enable-expert-parallel",
        "--kv-events-redis-url",
        "redis://fleetlm-redis.fleetlm.svc:6379/0",
        "--redis-key-prefix",
        "fleetlm:team-a.llama-8b:",
        "--advertise-url",
        "http://$(POD_IP):8000",
        "--max-num-seqs",
        "64",
        "--enforce-eager",
    ]


def test_redis_flags_only_with_redis():
    model, pool = _serve(LLAMA_8B_1GPU)
    args = engine_args(model, pool, SETTINGS)
    assert "--kv-events-redis-url" not in args and "--redis-key-prefix" not in args
    args = engine_args(model, pool, REDIS_SETTINGS)
    assert flag(args, "--kv-events-redis-url") == REDIS_SETTINGS.redis_url
    assert flag(args, "--redis-key-prefix") == "fleetlm:team-a.llama-8b:"


def test_cpu_engine():
    model, pool = _serve(SMOLLM2_CPU)
    container = engine_container(model, pool, SETTINGS)
    assert container["image"] == SETTINGS.engine_cpu_image
    assert flag(container["args"], "--device") == "cpu"
    assert container["resources"] == {
        "requests": {"cpu": "2", "memory": "2Gi"},
        "limits": {"memory": "4Gi"},
    }
    template = engine_pod_template(model, pool, SETTINGS)
    assert "volumes" not in template["spec"]  # no /dev/shm, no claim
    assert "--device" not in engine_args(*_serve(LLAMA_8B_1GPU), SETTINGS)


@pytest.mark.parametrize(
    ("example", "gpus"), [(LLAMA_8B_1GPU, "1"), (LLAMA_70B_TP8, "8"), (LLAMA_405B_2NODE, "8")]
)
def test_gpu_limit_per_pod(example, gpus):
    model, pool = _serve(example)
    resources = engine_container(model, pool, SETTINGS)["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == gpus
    assert "nvidia.com/gpu" not in resources.get("requests", {})


def test_gpu_resource_and_requests():
    spec = {
        "gpuResource": "amd.com/gpu",
        "resources": {"requests": {"cpu": "1", "amd.com/gpu": "3"}},
        "parallelism": {"tensor": 2},
        "gpusPerNode": 8,
    }
    model, pool = _serve(with_spec(LLAMA_8B_1GPU, **spec))
    resources = engine_container(model, pool, SETTINGS)["resources"]
    assert resources == {
        "requests": {"cpu": "1", "amd.com/gpu": "2"},
        "limits": {"amd.com/gpu": "2"},
    }
    assert model.resources["requests"]["amd.com/gpu"] == "3"  # the model is left as it was


def test_leader_probes():
    model, pool = _serve(LLAMA_70B_TP8)
    container = engine_container(model, pool, SETTINGS)
    assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}
    startup = container["startupProbe"]
    assert startup["failureThreshold"] * startup["periodSeconds"] >= 30 * 60
    liveness = container["livenessProbe"]
    assert liveness["failureThreshold"] * liveness["periodSeconds"] >= 60


def test_startup_budget():
    assert startup_budget_s(_serve(SMOLLM2_CPU)[1]) == 600
    assert startup_budget_s(_serve(LLAMA_8B_1GPU)[1]) == 1800
    assert startup_budget_s(_serve(LLAMA_405B_2NODE)[1]) == 3600
    model, pool = _serve(LLAMA_405B_2NODE)
    startup = engine_container(model, pool, SETTINGS)["startupProbe"]
    assert startup["failureThreshold"] * startup["periodSeconds"] == 3600


def test_pod_ip_from_the_downward_api():
    model, pool = _serve(LLAMA_8B_1GPU)
    assert engine_container(model, pool, SETTINGS)["env"] == [
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
    ]


def test_shared_memory_with_more_than_one_gpu():
    model, pool = _serve(LLAMA_70B_TP8)
    template = engine_pod_template(model, pool, SETTINGS)
    assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in template["spec"]["volumes"]
    mounts = template["spec"]["containers"][0]["volumeMounts"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in mounts
    model, pool = _serve(LLAMA_8B_1GPU)
    template = engine_pod_template(model, pool, SETTINGS)
    assert all(v["name"] != "dshm" for v in template["spec"]["volumes"])


def test_claim_mounted_read_only_at_models():
    model, pool = _serve(LLAMA_8B_1GPU)
    template = engine_pod_template(model, pool, SETTINGS)
    assert template["spec"]["volumes"] == [
        {"name": "models", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}}
    ]
    assert template["spec"]["containers"][0]["volumeMounts"] == [
        {"name": "models", "mountPath": "/models", "readOnly": True}
    ]
    assert engine_args(model, pool, SETTINGS)[1] == "/models/llama-3.1-8b-instruct"


def test_scheduling():
    model, pool = _serve(LLAMA_70B_TP8)
    spec = engine_pod_template(model, pool, SETTINGS)["spec"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert "tolerations" not in spec
    model, pool = _serve(LLAMA_8B_1GPU)
    spec = engine_pod_template(model, pool, SETTINGS)["spec"]
    assert spec["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert "nodeSelector" not in spec
    assert spec["automountServiceAccountToken"] is False


def test_images_and_pull_policy():
    spec = {"image": {"engine": "registry.local/engine:dev", "pullPolicy": "Always"}}
    model, pool = _serve(with_spec(LLAMA_8B_1GPU, **spec))
    container = engine_container(model, pool, SETTINGS)
    assert container["image"] == "registry.local/engine:dev"
    assert container["imagePullPolicy"] == "Always"
    assert container["command"] == ["fleetlm"] and container["args"][0] == "serve"


def test_multi_node_flags():
    model, pool = _serve(LLAMA_405B_2NODE)
    leader = NodeRank(2, "0", "llama-405b-serve-0-0.llama-405b-serve-hl.team-a.svc")
    args = engine_args(model, pool, SETTINGS, node=leader, role="leader")
    assert args[args.index("--nnodes") :][:8] == [
        "--nnodes",
        "2",
        "--node-rank",
        "0",
        "--master-addr",
        "llama-405b-serve-0-0.llama-405b-serve-hl.team-a.svc",
        "--master-port",
        "29500",
    ]
    assert "--headless" not in args
    assert args[-2:] == ["--max-num-seqs", "128"]  # engineArgs last
    worker = NodeRank(2, "$(NODE_RANK)", "addr", rank_from_pod_index=True)
    args = engine_args(model, pool, SETTINGS, node=worker, role="worker")
    assert flag(args, "--node-rank") == "$(NODE_RANK)"
    assert args.index("--headless") < args.index("--max-num-seqs")
    container = engine_container(model, pool, SETTINGS, node=worker, role="worker")
    assert {
        "name": "NODE_RANK",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}},
    } in container["env"]
    # Workers serve no HTTP: no port, no probes.
    assert not {"ports", "startupProbe", "readinessProbe", "livenessProbe"} & set(container)


def test_master_port_from_settings():
    model, pool = _serve(LLAMA_405B_2NODE)
    settings = SETTINGS.model_copy(update={"master_port": 12345})
    args = engine_args(model, pool, settings, node=NodeRank(2, "0", "a"))
    assert flag(args, "--master-port") == "12345"


def test_template_labels_and_hash():
    model, pool = _serve(LLAMA_8B_PREFILL_DECODE)
    template = engine_pod_template(model, pool, SETTINGS)
    assert template["metadata"]["labels"]["fleetlm.dev/pool"] == "prefill"
    assert template["metadata"]["labels"]["fleetlm.dev/role"] == "leader"
    assert "fleetlm.dev/replica" not in template["metadata"]["labels"]
    spec_hash = template["metadata"]["annotations"]["fleetlm.dev/spec-hash"]
    assert engine_pod_template(model, pool, SETTINGS) == template  # stable
    changed = parse_model(
        with_spec(LLAMA_8B_PREFILL_DECODE, resources={"limits": {"memory": "1Gi"}}), SETTINGS
    )
    other = engine_pod_template(changed, changed.pools[0], SETTINGS)
    assert other["metadata"]["annotations"]["fleetlm.dev/spec-hash"] != spec_hash
    assert engine_pod_template(model, pool, REDIS_SETTINGS) != template


@pytest.mark.parametrize("example", [SMOLLM2_CPU, LLAMA_8B_1GPU, LLAMA_70B_TP8, LLAMA_405B_2NODE])
def test_templates_are_valid(example):
    model, pool = _serve(example)
    for node, role in ((None, "leader"), (NodeRank(2, "$(NODE_RANK)", "a", True), "worker")):
        template = engine_pod_template(model, pool, REDIS_SETTINGS, node=node, role=role)
        validate_pod_template(template, model.namespace)
