"""InferenceModel bodies for the operator's tests, and checks every built manifest must pass.

`EXAMPLES` are equivalents of the chart's examples (charts/fleetlm/examples/*.yaml), as the API
server returns them (metadata.uid and generation set); `example_files()` reads the real files
when they exist, so the tests run on both.
"""

import copy
import functools
import zlib
from pathlib import Path
from typing import Any
from unittest import mock

import kubernetes_validate
import yaml

from fleetlm.operator import naming
from fleetlm.operator.settings import OperatorSettings

REPO = Path(__file__).resolve().parents[2]
EXAMPLES_DIR = REPO / "charts" / "fleetlm" / "examples"
# The oldest Kubernetes the operator needs (start ordinals and the pod-index label are GA in
# 1.31/1.32) is older than this one; the newest kubernetes-validate ships is checked too.
K8S_VERSIONS = ("1.33", kubernetes_validate.latest_version())
CORE_API_VERSIONS = ("v1", "apps/v1", "policy/v1", "rbac.authorization.k8s.io/v1")

SETTINGS = OperatorSettings()
REDIS_SETTINGS = OperatorSettings(redis_url="redis://fleetlm-redis.fleetlm.svc:6379/0")


def body(name: str, spec: dict[str, Any], namespace: str = "team-a") -> dict[str, Any]:
    """An InferenceModel as the API server returns it."""
    return {
        "apiVersion": naming.API_VERSION,
        "kind": naming.KIND,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"00000000-0000-4000-8000-{zlib.crc32(name.encode()):012d}",
            "generation": 1,
        },
        "spec": spec,
    }


SMOLLM2_CPU = body(
    "smollm2-cpu",
    {
        "model": {
            "source": {"path": "/opt/fleetlm/models/SmolLM2-135M-Instruct.Q4_1.gguf"},
            "servedName": "smollm2",
        },
        "gpusPerNode": 0,
        "replicas": 2,
        "resources": {"requests": {"cpu": "2", "memory": "2Gi"}, "limits": {"memory": "4Gi"}},
    },
)

LLAMA_8B_1GPU = body(
    "llama-8b",
    {
        "model": {
            "source": {"pvc": {"claimName": "models", "subPath": "llama-3.1-8b-instruct"}},
            "servedName": "llama-3.1-8b",
            "dtype": "bfloat16",
            "maxModelLen": 8192,
        },
        "gpusPerNode": 1,
        "replicas": 3,
        "resources": {"requests": {"cpu": "4", "memory": "32Gi"}, "limits": {"memory": "64Gi"}},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    },
)

LLAMA_70B_TP8 = body(
    "llama-70b",
    {
        "model": {
            "source": {"pvc": {"claimName": "models", "subPath": "llama-3.1-70b-instruct"}},
            "servedName": "llama-3.1-70b",
            "maxModelLen": 32768,
        },
        "parallelism": {"tensor": 8},
        "gpusPerNode": 8,
        "replicas": 1,
        "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        "resources": {"requests": {"cpu": "32", "memory": "256Gi"}},
    },
)

LLAMA_405B_2NODE = body(
    "llama-405b",
    {
        "model": {
            "source": {"pvc": {"claimName": "models-405b"}},
            "servedName": "llama-3.1-405b",
            "quantization": "fp8",
            "engineArgs": ["--max-num-seqs", "128"],
        },
        "parallelism": {"tensor": 8, "pipeline": 2},
        "gpusPerNode": 8,
        "replicas": 2,
        "router": {"strategy": "least_load", "replicas": 2},
    },
)

LLAMA_8B_PREFILL_DECODE = body(
    "llama-8b-pd",
    {
        "model": {"source": {"hub": "meta-llama/Llama-3.1-8B-Instruct"}},
        "gpusPerNode": 8,
        "prefill": {"replicas": 1, "parallelism": {"tensor": 2}},
        "decode": {"replicas": 2, "parallelism": {"tensor": 1}},
        "router": {"strategy": "prefix"},
    },
)

EXAMPLES = {
    "smollm2-cpu": SMOLLM2_CPU,
    "llama-8b-1gpu": LLAMA_8B_1GPU,
    "llama-70b-tp8": LLAMA_70B_TP8,
    "llama-405b-2node": LLAMA_405B_2NODE,
    "llama-8b-prefill-decode": LLAMA_8B_PREFILL_DECODE,
}


def example_files() -> dict[str, dict[str, Any]]:
    """The InferenceModels of charts/fleetlm/examples/*.yaml (none while the directory is
    missing), keyed `FILE-STEM` (`FILE-STEM/NAME` where a file holds several), completed as
    the API server would (namespace, uid, generation)."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(EXAMPLES_DIR.glob("*.y*ml")):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if _is_model(d)]
        for doc in docs:
            key = path.stem if len(docs) == 1 else f"{path.stem}/{doc['metadata']['name']}"
            metadata = doc.setdefault("metadata", {})
            completed = body(metadata["name"], doc.get("spec") or {})
            completed["metadata"]["namespace"] = metadata.get("namespace", "default")
            found[key] = completed
    return found


def all_examples() -> dict[str, dict[str, Any]]:
    """EXAMPLES, and the chart's files as `file:KEY`."""
    return {**EXAMPLES, **{f"file:{k}": v for k, v in example_files().items()}}


def _is_model(doc: Any) -> bool:
    return isinstance(doc, dict) and doc.get("kind") == naming.KIND


def with_spec(original: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A copy of `original` with top-level spec fields replaced (None: removed)."""
    new = copy.deepcopy(original)
    for key, value in changes.items():
        if value is None:
            new["spec"].pop(key, None)
        else:
            new["spec"][key] = value
    return new


# kubernetes_validate reads its schema files (megabytes of JSON) at every call: read once.
_cached_schema_contents = functools.cache(kubernetes_validate.utils.schema_contents)


def validate_core(manifest: dict[str, Any]) -> None:
    """kubernetes_validate.validate(manifest, VERSION, strict=True) for K8S_VERSIONS."""
    with mock.patch.object(kubernetes_validate.utils, "schema_contents", _cached_schema_contents):
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(manifest, version, strict=True)


def validate(manifest: dict[str, Any]) -> None:
    """The Kubernetes schemas (strict: no unknown fields) for core kinds; for others (the
    LeaderWorkerSet) structural checks, its pod templates against the PodTemplateSpec schema."""
    if manifest["apiVersion"] in CORE_API_VERSIONS:
        validate_core(manifest)
        return
    assert manifest["apiVersion"] == naming.LWS_API_VERSION
    assert manifest["kind"] == "LeaderWorkerSet"
    spec = manifest["spec"]
    assert set(spec) <= {
        "replicas",
        "startupPolicy",
        "networkConfig",
        "leaderWorkerTemplate",
        "rolloutStrategy",
    }
    assert isinstance(spec["replicas"], int) and spec["replicas"] >= 0
    assert spec["startupPolicy"] in ("LeaderCreated", "LeaderReady")
    assert spec["networkConfig"]["subdomainPolicy"] in ("Shared", "UniquePerReplica")
    lwt = spec["leaderWorkerTemplate"]
    assert set(lwt) <= {"size", "restartPolicy", "leaderTemplate", "workerTemplate"}
    assert isinstance(lwt["size"], int) and lwt["size"] >= 2
    assert lwt["restartPolicy"] in ("RecreateGroupOnPodRestart", "None", "Default")
    for key in ("leaderTemplate", "workerTemplate"):
        validate_pod_template(lwt[key], manifest["metadata"]["namespace"])


def validate_pod_template(template: dict[str, Any], namespace: str) -> None:
    """A pod template against the schema, as the template of a (throwaway) Deployment."""
    labels = template["metadata"]["labels"]
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "check", "namespace": namespace},
        "spec": {"selector": {"matchLabels": labels}, "template": template},
    }
    validate_core(deployment)


def pod_templates(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The pod templates of a workload manifest (none for other kinds)."""
    spec = manifest.get("spec") or {}
    if manifest["kind"] in ("Deployment", "StatefulSet"):
        return [spec["template"]]
    if manifest["kind"] == "LeaderWorkerSet":
        lwt = spec["leaderWorkerTemplate"]
        return [lwt["leaderTemplate"], lwt["workerTemplate"]]
    return []


def by_name(manifests: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {m["metadata"]["name"]: m for m in manifests if m["kind"] == kind}


def container(template: dict[str, Any]) -> dict[str, Any]:
    (only,) = template["spec"]["containers"]
    return only


def flag(args: list[str], name: str) -> str | None:
    """The value after flag `name` in `args` (None if absent)."""
    return args[args.index(name) + 1] if name in args else None
