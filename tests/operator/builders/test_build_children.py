"""build_children and pool_workloads on every example (ours and the chart's): complete,
valid, owned, labelled, deterministic; and the package never imports torch."""

import copy
import json
import subprocess
import sys

import pytest

from fleetlm.operator import naming
from fleetlm.operator.builders import (
    MANAGED_KINDS,
    WorkloadRef,
    build_children,
    pool_workloads,
    router_workload,
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
    all_examples,
    by_name,
    container,
    flag,
    pod_templates,
    validate,
    with_spec,
)

CASES = [
    (name, use_lws, settings)
    for name in sorted(all_examples())
    for use_lws in (True, False)
    for settings in ("plain", "redis")
]
SETTINGS_BY_NAME = {"plain": SETTINGS, "redis": REDIS_SETTINGS}


def _build(example, *, use_lws, settings=SETTINGS):
    model = parse_model(example, settings)
    return model, build_children(model, settings, owner=example, use_lws=use_lws)


@pytest.mark.parametrize(("name", "use_lws", "settings"), CASES)
def test_every_manifest(name, use_lws, settings):
    example = all_examples()[name]
    model, children = _build(example, use_lws=use_lws, settings=SETTINGS_BY_NAME[settings])
    keys = [(c["kind"], c["metadata"]["name"]) for c in children]
    assert len(set(keys)) == len(keys)
    kinds = [(c["apiVersion"], c["kind"]) for c in children]
    assert set(kinds) <= set(MANAGED_KINDS)
    for child in children:
        validate(child)
        metadata = child["metadata"]
        assert metadata["namespace"] == model.namespace
        assert metadata["ownerReferences"] == [
            {
                "apiVersion": "fleetlm.dev/v1alpha1",
                "kind": "InferenceModel",
                "name": model.name,
                "uid": example["metadata"]["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        labels = metadata["labels"]
        assert labels["app.kubernetes.io/name"] == "fleetlm"
        assert labels["app.kubernetes.io/instance"] == model.name
        assert labels["app.kubernetes.io/managed-by"] == "fleetlm-operator"
        assert labels["fleetlm.dev/model"] == model.name
        assert labels["app.kubernetes.io/component"] in ("engine", "router")
        if (
            labels["app.kubernetes.io/component"] == "engine"
            and child["metadata"]["name"] != model.name
        ):
            assert labels["fleetlm.dev/pool"] in [pool.name for pool in model.pools]
        for template in pod_templates(child):
            pod_labels = template["metadata"]["labels"]
            assert labels.items() <= pod_labels.items()
            assert "fleetlm.dev/spec-hash" in template["metadata"]["annotations"]
            if pod_labels["app.kubernetes.io/component"] == "engine":
                assert pod_labels["fleetlm.dev/role"] in ("leader", "worker")
            if child["kind"] != "LeaderWorkerSet":
                assert child["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


@pytest.mark.parametrize(("name", "use_lws", "settings"), CASES)
def test_gpus_and_pods_add_up(name, use_lws, settings):
    """Every pool's workloads run `replicas × pods_per_replica` pods of `gpus_per_pod` GPUs."""
    example = all_examples()[name]
    model, children = _build(example, use_lws=use_lws, settings=SETTINGS_BY_NAME[settings])
    for pool in model.pools:
        pods = gpus = 0
        for child in children:
            if child["metadata"]["labels"].get("fleetlm.dev/pool") != pool.name:
                continue
            if child["kind"] in ("Deployment", "StatefulSet"):
                count = [child["spec"]["replicas"]]
                templates = [child["spec"]["template"]]
            elif child["kind"] == "LeaderWorkerSet":
                size, groups = (
                    child["spec"]["leaderWorkerTemplate"]["size"],
                    child["spec"]["replicas"],
                )
                count = [groups, groups * (size - 1)]
                templates = pod_templates(child)
            else:
                continue
            for num, template in zip(count, templates, strict=True):
                limits = container(template)["resources"].get("limits", {})
                pods += num
                gpus += num * int(limits.get(model.gpu_resource, 0))
        assert pods == pool.replicas * pool.pods_per_replica
        assert gpus == pool.replicas * pool.gpus_per_replica


@pytest.mark.parametrize("name", sorted(all_examples()))
def test_deterministic(name):
    example = all_examples()[name]
    for use_lws in (True, False):
        first = _build(example, use_lws=use_lws, settings=REDIS_SETTINGS)[1]
        again = _build(copy.deepcopy(example), use_lws=use_lws, settings=REDIS_SETTINGS)[1]
        assert json.dumps(first) == json.dumps(again)  # equal, in the same order


def test_order_and_names_single_node():
    _, children = _build(LLAMA_8B_1GPU, use_lws=True)
    assert [(c["kind"], c["metadata"]["name"]) for c in children] == [
        ("ServiceAccount", "llama-8b-router"),
        ("Role", "llama-8b-router"),
        ("RoleBinding", "llama-8b-router"),
        ("Service", "llama-8b-serve"),
        ("Service", "llama-8b"),
        ("Deployment", "llama-8b-serve"),
        ("PodDisruptionBudget", "llama-8b-serve"),
        ("Deployment", "llama-8b-router"),
    ]
    # No pool spans nodes: the same with or without LeaderWorkerSet.
    assert _build(LLAMA_8B_1GPU, use_lws=False)[1] == children


def test_order_and_names_multi_node():
    _, children = _build(LLAMA_405B_2NODE, use_lws=True)
    assert [(c["kind"], c["metadata"]["name"]) for c in children] == [
        ("ServiceAccount", "llama-405b-router"),
        ("Role", "llama-405b-router"),
        ("RoleBinding", "llama-405b-router"),
        ("Service", "llama-405b-serve"),
        ("Service", "llama-405b"),
        ("LeaderWorkerSet", "llama-405b-serve"),
        ("PodDisruptionBudget", "llama-405b-serve"),
        ("Deployment", "llama-405b-router"),
    ]
    _, children = _build(LLAMA_405B_2NODE, use_lws=False)
    assert [(c["kind"], c["metadata"]["name"]) for c in children] == [
        ("ServiceAccount", "llama-405b-router"),
        ("Role", "llama-405b-router"),
        ("RoleBinding", "llama-405b-router"),
        ("Service", "llama-405b-serve"),
        ("Service", "llama-405b-serve-hl"),
        ("Service", "llama-405b"),
        ("StatefulSet", "llama-405b-serve-0"),
        ("StatefulSet", "llama-405b-serve-0-w"),
        ("StatefulSet", "llama-405b-serve-1"),
        ("StatefulSet", "llama-405b-serve-1-w"),
        ("PodDisruptionBudget", "llama-405b-serve"),
        ("Deployment", "llama-405b-router"),
    ]


def test_prefill_decode():
    _, children = _build(LLAMA_8B_PREFILL_DECODE, use_lws=False)
    assert [(c["kind"], c["metadata"]["name"]) for c in children] == [
        ("ServiceAccount", "llama-8b-pd-router"),
        ("Role", "llama-8b-pd-router"),
        ("RoleBinding", "llama-8b-pd-router"),
        ("Service", "llama-8b-pd-prefill"),
        ("Service", "llama-8b-pd-decode"),
        ("Service", "llama-8b-pd"),
        ("Deployment", "llama-8b-pd-prefill"),
        ("Deployment", "llama-8b-pd-decode"),
        ("PodDisruptionBudget", "llama-8b-pd-prefill"),
        ("PodDisruptionBudget", "llama-8b-pd-decode"),
        ("Deployment", "llama-8b-pd-router"),
    ]
    deployments = by_name(children, "Deployment")
    # The router discovers the leaders of both pools.
    router_args = container(deployments["llama-8b-pd-router"]["spec"]["template"])["args"]
    selector = flag(router_args, "--kubernetes-label-selector")
    assert selector == "fleetlm.dev/model=llama-8b-pd,fleetlm.dev/role=leader"
    for pool in ("prefill", "decode"):
        labels = deployments[f"llama-8b-pd-{pool}"]["spec"]["template"]["metadata"]["labels"]
        assert all(labels[k] == v for k, v in (t.split("=") for t in selector.split(",")))


def test_no_router():
    original = with_spec(SMOLLM2_CPU, router={"replicas": 0})
    model, children = _build(original, use_lws=True)
    kinds = [(c["kind"], c["metadata"]["name"]) for c in children]
    assert kinds == [
        ("Service", "smollm2-cpu-serve"),
        ("Service", "smollm2-cpu"),
        ("Deployment", "smollm2-cpu-serve"),
        ("PodDisruptionBudget", "smollm2-cpu-serve"),
    ]
    assert (
        by_name(children, "Service")["smollm2-cpu"]["spec"]["selector"]["fleetlm.dev/role"]
        == "leader"
    )
    assert router_workload(model) is None


def test_cpu_example():
    _, children = _build(SMOLLM2_CPU, use_lws=True)
    engine = by_name(children, "Deployment")["smollm2-cpu-serve"]
    one = container(engine["spec"]["template"])
    assert one["image"] == SETTINGS.engine_cpu_image
    assert flag(one["args"], "--device") == "cpu"
    assert "limits" not in one["resources"] or "nvidia.com/gpu" not in one["resources"]["limits"]


def test_70b_example():
    _, children = _build(LLAMA_70B_TP8, use_lws=True)
    engine = by_name(children, "Deployment")["llama-70b-serve"]
    template = engine["spec"]["template"]
    assert container(template)["resources"]["limits"] == {"nvidia.com/gpu": "8"}
    assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in template["spec"]["volumes"]
    assert flag(container(template)["args"], "--tensor-parallel-size") == "8"


def test_pool_workloads():
    model = parse_model(LLAMA_8B_PREFILL_DECODE, SETTINGS)
    assert pool_workloads(model, use_lws=False) == [
        WorkloadRef("apps/v1", "Deployment", "llama-8b-pd-prefill", "prefill", None, 1),
        WorkloadRef("apps/v1", "Deployment", "llama-8b-pd-decode", "decode", None, 1),
    ]
    model = parse_model(LLAMA_405B_2NODE, SETTINGS)
    assert pool_workloads(model, use_lws=True) == [
        WorkloadRef(naming.LWS_API_VERSION, "LeaderWorkerSet", "llama-405b-serve", "serve", None, 2)
    ]
    assert pool_workloads(model, use_lws=False) == [
        WorkloadRef("apps/v1", "StatefulSet", "llama-405b-serve-0", "serve", 0, 1),
        WorkloadRef("apps/v1", "StatefulSet", "llama-405b-serve-0-w", "serve", 0, 1),
        WorkloadRef("apps/v1", "StatefulSet", "llama-405b-serve-1", "serve", 1, 1),
        WorkloadRef("apps/v1", "StatefulSet", "llama-405b-serve-1-w", "serve", 1, 1),
    ]
    assert router_workload(model) == WorkloadRef(
        "apps/v1", "Deployment", "llama-405b-router", "router", None, 2
    )


@pytest.mark.parametrize("name", sorted(all_examples()))
@pytest.mark.parametrize("use_lws", [True, False])
def test_pool_workloads_name_built_workloads(name, use_lws):
    example = all_examples()[name]
    model, children = _build(example, use_lws=use_lws)
    built = {(c["apiVersion"], c["kind"], c["metadata"]["name"]): c for c in children}
    refs = pool_workloads(model, use_lws=use_lws)
    engine_workloads = {
        key
        for key, c in built.items()
        if c["metadata"]["labels"]["app.kubernetes.io/component"] == "engine"
        and c["kind"] in ("Deployment", "StatefulSet", "LeaderWorkerSet")
    }
    assert {(r.api_version, r.kind, r.name) for r in refs} == engine_workloads
    for ref in refs:
        workload = built[ref.api_version, ref.kind, ref.name]
        assert workload["metadata"]["labels"]["fleetlm.dev/pool"] == ref.pool
        if ref.replica is not None:  # a StatefulSet of the fallback: all its pods
            assert workload["spec"]["replicas"] == ref.ready_pods
    router = router_workload(model)
    if router is not None:
        assert (
            built[router.api_version, router.kind, router.name]["spec"]["replicas"]
            == router.ready_pods
        )


def test_importing_the_builders_does_not_import_torch():
    code = (
        "import sys\n"
        "import fleetlm.operator.builders, fleetlm.operator.spec, fleetlm.operator.naming\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'triton', 'transformers')"
        " or m.startswith('fleetlm.engine'))\n"
        "print(heavy)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"


# What the kubelet puts in for $(VAR) in a container's args.
EXPANDED = {
    "$(POD_IP)": "10.1.2.3",
    "$(NODE_RANK)": "1",
    "$(LWS_WORKER_INDEX)": "1",
    "$(LWS_LEADER_ADDRESS)": "llama-405b-serve-0.llama-405b-serve-0.team-a",
}


@pytest.mark.parametrize("name", sorted(all_examples()))
def test_fleetlm_parses_every_command(name):
    """The engine and router flags are ones `fleetlm` knows, with values it accepts."""
    from fleetlm.cli import build_parser

    parser = build_parser()
    example = all_examples()[name]
    for use_lws in (True, False):
        _, children = _build(example, use_lws=use_lws, settings=REDIS_SETTINGS)
        for child in children:
            for template in pod_templates(child):
                one = container(template)
                assert one["command"] == ["fleetlm"]
                args = [_expand(arg) for arg in one["args"]]
                assert "$(" not in " ".join(args)
                parsed = parser.parse_args(args)
                if args[0] == "serve":
                    assert parsed.served_model_name == flag(args, "--served-model-name")


def _expand(arg: str) -> str:
    for var, value in EXPANDED.items():
        arg = arg.replace(var, value)
    return arg
