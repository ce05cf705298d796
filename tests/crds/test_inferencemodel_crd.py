"""The InferenceModel CRD (crds/inferencemodel.yaml): its structure, the chart's examples, and
resources its schema and CEL rules must refuse, checked with the CRD's own schema and rules."""

import copy

import kubernetes_validate
import pytest
import yaml

from tests.crds.crd_schema import (
    CEL_SKIPPED,
    CRD_PATH,
    REPO,
    admit,
    compile_rule,
    iter_rules,
    load_crd,
    version_schema,
)

CHART_CRD_PATH = REPO / "charts" / "fleetlm" / "crds" / "inferencemodel.yaml"
EXAMPLES = REPO / "charts" / "fleetlm" / "examples"
EXAMPLE_NAMES = [
    "smollm2-cpu",
    "llama-8b-1gpu",
    "llama-70b-tp8",
    "llama-405b-2node",
    "llama-8b-prefill-decode",
]
PARALLELISM_DEFAULTS = {"tensor": 1, "pipeline": 1, "data": 1, "expert": False}


@pytest.fixture(scope="module")
def crd() -> dict:
    return load_crd()


@pytest.fixture(scope="module")
def schema(crd: dict) -> dict:
    return version_schema(crd, "v1alpha1")


def llama_8b(**spec) -> dict:
    """A valid resource: Llama-3.1-8B from a PVC on 8-GPU nodes; `spec` keys replace its own."""
    return {
        "apiVersion": "fleetlm.dev/v1alpha1",
        "kind": "InferenceModel",
        "metadata": {"name": "llama-8b", "namespace": "team-a"},
        "spec": {
            "model": {"source": {"pvc": {"claimName": "models", "subPath": "llama-3.1-8b"}}},
            "gpusPerNode": 8,
        }
        | spec,
    }


def merge(obj: dict, patch: dict) -> dict:
    """A JSON merge patch (RFC 7386): None deletes, dicts merge, anything else replaces."""
    out = copy.deepcopy(obj)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def load_example(name: str) -> dict:
    return yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())


# -- the CRD itself ----------------------------------------------------------------------------


def test_crd_is_a_namespaced_v1_crd_with_one_served_storage_version(crd: dict):
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"]["name"] == "inferencemodels.fleetlm.dev"
    spec = crd["spec"]
    assert spec["group"] == "fleetlm.dev"
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": "InferenceModel",
        "listKind": "InferenceModelList",
        "plural": "inferencemodels",
        "singular": "inferencemodel",
        "shortNames": ["im"],
    }
    [version] = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}
    root = version["schema"]["openAPIV3Schema"]
    assert root["type"] == "object"
    assert {"spec", "status"} <= set(root["properties"])


def test_crd_matches_the_kubernetes_crd_schema(crd: dict):
    """Kubernetes' own schema of CustomResourceDefinition (strict: no unknown fields)."""
    kubernetes_validate.validate(crd, kubernetes_validate.latest_version(), strict=True)


def test_printer_columns(crd: dict):
    columns = {
        c["name"]: c["jsonPath"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]
    }
    assert columns == {
        "Served Name": ".spec.model.servedName",
        "Ready": '.status.conditions[?(@.type=="Ready")].status',
        "Replicas": ".status.replicas",
        "Desired": ".status.desiredReplicas",
        "Endpoint": ".status.endpoint",
        "Age": ".metadata.creationTimestamp",
    }


def test_chart_copy_is_byte_identical():
    assert CHART_CRD_PATH.read_bytes() == CRD_PATH.read_bytes()


def _nodes(node: dict, path: str = ""):
    yield path, node
    for key, sub in node.get("properties", {}).items():
        yield from _nodes(sub, f"{path}.{key}")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            yield from _nodes(node[key], f"{path}[*]")


def test_schema_is_structural(schema: dict):
    """Every node has a type; only `resources` keeps unknown fields."""
    untyped = [p for p, n in _nodes(schema) if "type" not in n]
    assert untyped == []
    preserving = [p for p, n in _nodes(schema) if n.get("x-kubernetes-preserve-unknown-fields")]
    assert preserving == [".spec.resources"]


def test_rules_compile_in_celpy_and_have_messages(schema: dict):
    rules = iter_rules(schema)
    assert len(rules) >= 8
    for _, rule in rules:
        compile_rule(rule["rule"])  # raises celpy.CELParseError
        assert rule["message"].strip()


def test_operator_filled_fields_have_no_default(schema: dict):
    spec = schema["properties"]["spec"]["properties"]
    assert "default" not in spec["replicas"]
    assert "default" not in spec["router"]["properties"]["strategy"]
    assert "default" not in spec["router"]["properties"]["replicas"]
    assert "default" not in spec["model"]["properties"].get("servedName", {})


# -- the chart's examples ----------------------------------------------------------------------


def test_every_example_is_listed():
    assert sorted(p.stem for p in EXAMPLES.glob("*.yaml")) == sorted(EXAMPLE_NAMES)


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_example_is_accepted_and_defaulted(crd: dict, name: str):
    text = (EXAMPLES / f"{name}.yaml").read_text()
    assert text.startswith("# "), "each example starts with a comment saying what it shows"
    obj, errors = admit(crd, yaml.safe_load(text))
    assert errors == []
    spec = obj["spec"]
    assert spec["model"]["moe"] is False
    assert spec["model"]["engineArgs"] == []
    assert spec["gpuResource"] == "nvidia.com/gpu"
    assert spec["image"]["pullPolicy"] == "IfNotPresent"
    assert spec["parallelism"].keys() == PARALLELISM_DEFAULTS.keys()
    assert ("replicas" in spec) != ("prefill" in spec)


def test_cpu_example_gets_every_default(crd: dict):
    obj, errors = admit(crd, load_example("smollm2-cpu"))
    assert errors == []
    spec = obj["spec"]
    assert spec["model"] == {
        "source": {"path": "/opt/fleetlm/models/SmolLM2-135M-Instruct"},
        "servedName": "SmolLM2-135M-Instruct",
        "dtype": "auto",
        "quantization": "none",
        "moe": False,
        "engineArgs": [],
    }
    assert spec["parallelism"] == PARALLELISM_DEFAULTS
    assert spec["gpusPerNode"] == 0
    assert spec["gpuResource"] == "nvidia.com/gpu"
    assert spec["image"] == {
        "engine": "ghcr.io/fleetlm/engine-cpu:0.1.0",
        "pullPolicy": "IfNotPresent",
    }
    assert "router" not in spec


@pytest.mark.parametrize(
    ("name", "gpus_per_replica", "gpus_per_node"),
    [("llama-8b-1gpu", 1, 1), ("llama-70b-tp8", 8, 8), ("llama-405b-2node", 16, 8)],
)
def test_gpu_example_replica_size(crd: dict, name: str, gpus_per_replica: int, gpus_per_node: int):
    obj, _ = admit(crd, load_example(name))
    p = obj["spec"]["parallelism"]
    assert p["tensor"] * p["pipeline"] * p["data"] == gpus_per_replica
    assert obj["spec"]["gpusPerNode"] == gpus_per_node


def test_prefill_decode_example_pools_are_defaulted_without_replicas(crd: dict):
    obj, errors = admit(crd, load_example("llama-8b-prefill-decode"))
    assert errors == []
    spec = obj["spec"]
    assert "replicas" not in spec
    assert spec["prefill"] == {"replicas": 1, "parallelism": PARALLELISM_DEFAULTS}
    assert spec["decode"] == {"replicas": 2, "parallelism": PARALLELISM_DEFAULTS}


# -- accepted and refused resources ------------------------------------------------------------

ACCEPTED = {
    "minimal": {},
    "tensor 4 fits on an 8-GPU node": {"parallelism": {"tensor": 4}},
    "tensor 16 fills two nodes": {"parallelism": {"tensor": 16}},
    "8 x 3 x 1 fills three nodes": {"parallelism": {"tensor": 8, "pipeline": 3}},
    "expert with moe": {
        "model": {"source": {"pvc": None, "hub": "org/moe-model"}, "moe": True},
        "parallelism": {"tensor": 8, "expert": True},
    },
    "cpu": {"gpusPerNode": 0, "replicas": 0},
    "prefill and decode": {"prefill": {}, "decode": {"parallelism": {"tensor": 16}}},
    "hub id without an org": {"model": {"source": {"pvc": None, "hub": "gpt2"}}},
    "subPath with dots that stay inside": {
        "model": {"source": {"pvc": {"subPath": "./models/.cache/llama..v2"}}}
    },
    "router off": {"router": {"replicas": 0, "strategy": "session"}},
    "tolerations and node selector": {
        "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
    },
}


@pytest.mark.parametrize("patch", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_accepted(crd: dict, patch: dict):
    _, errors = admit(crd, merge(llama_8b(), {"spec": patch}))
    assert errors == []


def _name(name: str) -> dict:
    return {"metadata": {"name": name}}


def _spec(**spec) -> dict:
    return {"spec": spec}


REFUSED = {
    "two model sources": (
        _spec(model={"source": {"hub": "meta-llama/Llama-3.1-8B-Instruct"}}),
        "spec.model.source: exactly one of model.source.path, model.source.pvc, model.source.hub",
    ),
    "no model source": (
        _spec(model={"source": {"pvc": None}}),
        "spec.model.source: exactly one of",
    ),
    "no model": (_spec(model=None), "'model' is a required property"),
    "prefill without decode": (
        _spec(prefill={"replicas": 1}),
        "spec: prefill and decode must be given together",
    ),
    "decode without prefill": (_spec(decode={}), "prefill and decode must be given together"),
    "prefill and decode with replicas": (
        _spec(prefill={}, decode={}, replicas=2),
        "spec.replicas: replicas must not be set with prefill/decode",
    ),
    "expert without moe": (
        _spec(parallelism={"expert": True}),
        "spec.model.moe: parallelism.expert (of any pool) needs model.moe true",
    ),
    "decode expert without moe": (
        _spec(prefill={}, decode={"parallelism": {"expert": True}}),
        "needs model.moe true",
    ),
    "tensor 12 on 8-GPU nodes": (
        _spec(parallelism={"tensor": 12}),
        "spec.parallelism: the GPUs of one serve replica",
    ),
    "4 x 3 on 8-GPU nodes": (
        _spec(parallelism={"tensor": 4, "pipeline": 3}),
        "spec.parallelism: the GPUs of one serve replica",
    ),
    "prefill tensor 12 on 8-GPU nodes": (
        _spec(prefill={"parallelism": {"tensor": 12}}, decode={}),
        "spec.prefill.parallelism: the GPUs of one prefill replica",
    ),
    "decode 2 x 2 x 3 on 8-GPU nodes": (
        _spec(prefill={}, decode={"parallelism": {"tensor": 2, "pipeline": 2, "data": 3}}),
        "spec.decode.parallelism: the GPUs of one decode replica",
    ),
    "cpu with tensor 2": (
        _spec(gpusPerNode=0, parallelism={"tensor": 2}),
        "spec.gpusPerNode: gpusPerNode 0 (CPU pods) needs tensor × pipeline × data == 1",
    ),
    "cpu with decode data 2": (
        _spec(gpusPerNode=0, prefill={}, decode={"parallelism": {"data": 2}}),
        "gpusPerNode 0 (CPU pods)",
    ),
    "bad dtype": (_spec(model={"dtype": "float8"}), "spec.model.dtype: 'float8' is not one of"),
    "bad quantization": (
        _spec(model={"quantization": "int4"}),
        "spec.model.quantization: 'int4' is not one of",
    ),
    "tensor 0": (
        _spec(parallelism={"tensor": 0}),
        "spec.parallelism.tensor: 0 is less than the minimum of 1",
    ),
    "tensor 65": (
        _spec(gpusPerNode=1, parallelism={"tensor": 65}),
        "spec.parallelism.tensor: 65 is greater than the maximum of 64",
    ),
    "tensor as a string": (_spec(parallelism={"tensor": "8"}), "is not of type 'integer'"),
    "negative replicas": (_spec(replicas=-1), "spec.replicas: -1 is less than the minimum of 0"),
    "gpusPerNode 17": (_spec(gpusPerNode=17), "spec.gpusPerNode: 17 is greater than the maximum"),
    "maxModelLen 8": (_spec(model={"maxModelLen": 8}), "spec.model.maxModelLen: 8 is less than"),
    "router replicas 101": (
        _spec(router={"replicas": 101}),
        "spec.router.replicas: 101 is greater than the maximum of 100",
    ),
    "unknown spec field": (_spec(replica=2), 'unknown field "spec.replica"'),
    "unknown model source": (
        _spec(model={"source": {"s3": "s3://models/llama"}}),
        'unknown field "spec.model.source.s3"',
    ),
    "name over 40 characters": (
        _name("a" * 41),
        "metadata.name: metadata.name must be at most 40 characters",
    ),
    "name not a DNS label": (_name("Llama_8B"), "metadata.name: 'Llama_8B' does not match"),
    "bad router strategy": (
        _spec(router={"strategy": "random"}),
        "spec.router.strategy: 'random' is not one of",
    ),
    "hub id with a space": (
        _spec(model={"source": {"pvc": None, "hub": "meta llama/Llama-3.1-8B"}}),
        "spec.model.source.hub: 'meta llama/Llama-3.1-8B' does not match",
    ),
    "hub id with two slashes": (
        _spec(model={"source": {"pvc": None, "hub": "a/b/c"}}),
        "spec.model.source.hub: 'a/b/c' does not match",
    ),
    "relative path": (
        _spec(model={"source": {"pvc": None, "path": "models/llama"}}),
        "spec.model.source.path: 'models/llama' does not match",
    ),
    "subPath escaping the claim": (
        _spec(model={"source": {"pvc": {"subPath": "llama/../../etc"}}}),
        "spec.model.source.pvc.subPath: 'llama/../../etc' does not match",
    ),
    "absolute subPath": (
        _spec(model={"source": {"pvc": {"subPath": "/llama"}}}),
        "spec.model.source.pvc.subPath: '/llama' does not match",
    ),
    "bad gpuResource": (_spec(gpuResource="gpu"), "spec.gpuResource: 'gpu' does not match"),
    "bad pull policy": (
        _spec(image={"pullPolicy": "Sometimes"}),
        "spec.image.pullPolicy: 'Sometimes' is not one of",
    ),
    "node selector value not a string": (
        _spec(nodeSelector={"gpu": True}),
        "spec.nodeSelector.gpu: True is not of type 'string'",
    ),
}


@pytest.mark.parametrize(("patch", "expected"), REFUSED.values(), ids=REFUSED.keys())
def test_refused(crd: dict, patch: dict, expected: str):
    _, errors = admit(crd, merge(llama_8b(), patch))
    reasons = [e for e in errors if e != CEL_SKIPPED]
    assert len(reasons) == 1, errors
    assert expected in reasons[0]


def test_type_errors_skip_the_cel_rules(crd: dict):
    """As in the API server: with a wrongly typed field the rules do not run (here the GPU
    rule would also fail)."""
    _, errors = admit(crd, merge(llama_8b(), _spec(parallelism={"tensor": 12, "data": "1"})))
    assert errors[-1] == CEL_SKIPPED
    assert not any("GPUs of one" in e for e in errors)


def test_unknown_fields_are_pruned_and_null_fields_defaulted(crd: dict):
    patch = _spec(model={"revision": "main"})
    obj, errors = admit(crd, merge(llama_8b(), patch) | {"extra": 1})
    assert sorted(errors) == ['unknown field "extra"', 'unknown field "spec.model.revision"']
    assert "extra" not in obj and "revision" not in obj["spec"]["model"]
    obj, _ = admit(crd, llama_8b(model={"source": {"path": "/m"}, "dtype": None}))
    assert obj["spec"]["model"]["dtype"] == "auto"


def test_wrong_api_version_is_refused(crd: dict):
    _, errors = admit(crd, llama_8b() | {"apiVersion": "fleetlm.dev/v1"})
    assert errors == ["no served kind InferenceModel in 'fleetlm.dev/v1'"]


def test_metadata_is_not_pruned(crd: dict):
    obj = llama_8b()
    obj["metadata"]["labels"] = {"team": "a"}
    admitted, errors = admit(crd, obj)
    assert errors == []
    assert admitted["metadata"] == obj["metadata"]


def test_status_of_the_docs_is_valid(crd: dict):
    """The status the operator writes (docs/operator.md) fits the status schema."""
    status = {
        "observedGeneration": 3,
        "endpoint": "http://llama-8b.team-a.svc.cluster.local/v1",
        "replicas": 3,
        "desiredReplicas": 3,
        "pools": [
            {
                "name": "serve",
                "desiredReplicas": 3,
                "readyReplicas": 3,
                "gpusPerReplica": 1,
                "podsPerReplica": 1,
            }
        ],
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "AllReplicasReady",
                "message": "3/3 replicas ready",
                "lastTransitionTime": "2026-11-21T10:00:00Z",
                "observedGeneration": 3,
            },
            {"type": "Progressing", "status": "False", "reason": "Stable"},
        ],
    }
    _, errors = admit(crd, llama_8b() | {"status": status})
    assert errors == []
    status["conditions"][1]["status"] = "false"
    _, errors = admit(crd, llama_8b() | {"status": status})
    assert errors[0].startswith("status.conditions[1].status: 'false' is not one of")
