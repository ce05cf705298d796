"""An InferenceModel resource, parsed and checked: frozen dataclasses the builders read.

`parse_model` applies the CRD's defaults where a field is missing (a CRD installed by hand may
lack them), the operator's own defaults (replicas 1, the router's strategy and replicas and the
images from the settings), and re-checks every rule of docs/operator.md "Rules the schema
states" (a cluster without CEL lets them through) and the schema's bounds, enums and
patterns, raising `InvalidSpec` naming the field. It also refuses what Kubernetes would refuse
later: a name that is not a DNS-1035 label of at most 40 characters (Service `M`), and replicas
spanning nodes whose StatefulSet names would pass 52 characters. Pure: no cluster, no I/O.
"""

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fleetlm.operator import naming
from fleetlm.operator.settings import OperatorSettings

MAX_NAME_LEN = 40  # room for the suffixes: M-prefill-9-w-0 and its controller-revision-hash
# A Service is named M, so M must be a DNS-1035 label (starting with a letter).
NAME_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# A StatefulSet's pods carry the label controller-revision-hash: NAME-HASH (10), at most 63.
MAX_STATEFUL_SET_NAME_LEN = 52
MODELS_DIR = "/models"  # where a PersistentVolumeClaim source is mounted, read-only

DTYPES = ("auto", "bfloat16", "float16", "float32")
QUANTIZATIONS = ("none", "fp8", "awq", "gptq", "gguf")
STRATEGIES = ("prefix", "round_robin", "least_load", "session")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
POOL_NAMES = ("serve", "prefill", "decode")


class InvalidSpec(Exception):
    """A spec the operator will not build: `reason` is the Ready condition's reason,
    `message` names the field."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


def _invalid(message: str) -> InvalidSpec:
    return InvalidSpec("InvalidSpec", message)


@dataclass(frozen=True)
class Parallelism:
    tensor: int = 1
    pipeline: int = 1
    data: int = 1
    expert: bool = False  # --enable-expert-parallel

    @property
    def gpus(self) -> int:
        """G: the GPUs of one replica."""
        return self.tensor * self.pipeline * self.data


@dataclass(frozen=True)
class Pool:
    """One set of identical engine replicas: `serve`, or `prefill` and `decode`."""

    name: str
    replicas: int
    parallelism: Parallelism
    gpus_per_node: int  # 0: CPU pods

    @property
    def spans_nodes(self) -> bool:
        return self.gpus_per_node > 0 and self.parallelism.gpus > self.gpus_per_node

    @property
    def pods_per_replica(self) -> int:
        """Nodes of one replica: 1, or G / gpusPerNode when it spans nodes."""
        return self.parallelism.gpus // self.gpus_per_node if self.spans_nodes else 1

    @property
    def gpus_per_pod(self) -> int:
        """The GPU limit of each pod (0 on CPU)."""
        if self.gpus_per_node == 0:
            return 0
        return self.gpus_per_node if self.spans_nodes else self.parallelism.gpus

    @property
    def gpus_per_replica(self) -> int:
        return self.gpus_per_pod * self.pods_per_replica


@dataclass(frozen=True)
class PvcSource:
    claim_name: str
    sub_path: str | None = None


@dataclass(frozen=True)
class ModelSource:
    """Exactly one of the three is set."""

    path: str | None = None
    pvc: PvcSource | None = None
    hub: str | None = None

    @property
    def model_arg(self) -> str:
        """The MODEL argument of `fleetlm serve`."""
        if self.pvc is not None:
            sub = self.pvc.sub_path
            return f"{MODELS_DIR}/{sub}" if sub else MODELS_DIR
        return self.path if self.path is not None else str(self.hub)


@dataclass(frozen=True)
class ModelSpec:
    source: ModelSource
    served_name: str
    dtype: str = "auto"
    quantization: str = "none"
    max_model_len: int | None = None
    moe: bool = False
    engine_args: tuple[str, ...] = ()  # extra `fleetlm serve` flags, passed as given


@dataclass(frozen=True)
class RouterSpec:
    strategy: str
    replicas: int  # 0: no router


@dataclass(frozen=True)
class ImageSpec:
    """Resolved: the model's images, else the operator's (the CPU image for gpusPerNode 0)."""

    engine: str
    router: str
    pull_policy: str


@dataclass(frozen=True)
class InferenceModel:
    """A parsed InferenceModel. `resources`, `node_selector` and `tolerations` are copies of
    the spec's JSON (the builders copy them again): read them, do not change them."""

    name: str
    namespace: str
    uid: str
    generation: int
    model: ModelSpec
    gpus_per_node: int
    gpu_resource: str
    pools: tuple[Pool, ...]
    router: RouterSpec
    image: ImageSpec
    resources: dict[str, Any]
    node_selector: dict[str, str]
    tolerations: tuple[dict[str, Any], ...]

    @property
    def is_cpu(self) -> bool:
        return self.gpus_per_node == 0

    @property
    def desired_replicas(self) -> int:
        return sum(pool.replicas for pool in self.pools)

    def pool(self, name: str) -> Pool:
        for pool in self.pools:
            if pool.name == name:
                return pool
        raise KeyError(name)


def parse_model(body: Mapping[str, Any], settings: OperatorSettings) -> InferenceModel:
    """The InferenceModel of a resource body (as the API server returns it); InvalidSpec if
    it breaks a rule of docs/operator.md."""
    metadata = _mapping(body.get("metadata"), "metadata")
    spec = _mapping(body.get("spec"), "spec")
    name = _name(metadata.get("name"))
    gpus_per_node = _int(spec, "gpusPerNode", "spec", default=1, lo=0, hi=16)
    model = _model_spec(_mapping(spec.get("model"), "spec.model"), name)
    pools = _pools(spec, gpus_per_node)
    # The serve pool's parallelism is checked with the schema's rules even when prefill and
    # decode replace it, as the CRD's CEL rules do.
    checks = [("spec.parallelism", _parallelism(spec.get("parallelism"), "spec.parallelism"))]
    checks += [(f"spec.{p.name}.parallelism", p.parallelism) for p in pools if p.name != "serve"]
    for path, parallelism in checks:
        _check_parallelism(parallelism, path, gpus_per_node, model.moe)
    for pool in pools:
        _check_stateful_set_names(name, pool)
    return InferenceModel(
        name=name,
        namespace=str(metadata.get("namespace") or "default"),
        uid=str(metadata.get("uid") or ""),
        generation=int(metadata.get("generation") or 0),
        model=model,
        gpus_per_node=gpus_per_node,
        gpu_resource=_str(spec, "gpuResource", "spec", default="nvidia.com/gpu"),
        pools=pools,
        router=_router(_mapping(spec.get("router"), "spec.router"), settings),
        image=_image(_mapping(spec.get("image"), "spec.image"), settings, gpus_per_node),
        resources=_resources(spec.get("resources")),
        node_selector=_node_selector(spec.get("nodeSelector")),
        tolerations=_tolerations(spec.get("tolerations")),
    )


def _name(name: Any) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name) or len(name) > MAX_NAME_LEN:
        raise _invalid(
            f"metadata.name: {name!r} must be a DNS label of at most {MAX_NAME_LEN} characters "
            "(lower-case letters, digits and '-', starting with a letter)"
        )
    return name


def _model_spec(model: Mapping[str, Any], name: str) -> ModelSpec:
    engine_args = model.get("engineArgs")
    if engine_args is None:
        engine_args = []
    if not isinstance(engine_args, list) or not all(isinstance(a, str) for a in engine_args):
        raise _invalid("spec.model.engineArgs: must be a list of strings")
    served_name = _str(model, "servedName", "spec.model", default=name)
    if any(c.isspace() for c in served_name):
        raise _invalid(f"spec.model.servedName: must not contain whitespace, got {served_name!r}")
    return ModelSpec(
        source=_source(_mapping(model.get("source"), "spec.model.source")),
        served_name=served_name,
        dtype=_enum(model, "dtype", "spec.model", DTYPES),
        quantization=_enum(model, "quantization", "spec.model", QUANTIZATIONS),
        max_model_len=_int(model, "maxModelLen", "spec.model", default=None, lo=16, hi=1048576),
        moe=_bool(model, "moe", "spec.model"),
        engine_args=tuple(engine_args),
    )


def _source(source: Mapping[str, Any]) -> ModelSource:
    given = [key for key in ("path", "pvc", "hub") if source.get(key) is not None]
    if len(given) != 1:
        got = ", ".join(given) or "none"
        raise _invalid(f"spec.model.source: exactly one of path, pvc, hub (got {got})")
    if given == ["pvc"]:
        pvc = _mapping(source["pvc"], "spec.model.source.pvc")
        claim = _str(pvc, "claimName", "spec.model.source.pvc", default=None)
        sub_path = pvc.get("subPath")
        if sub_path is not None and not _is_relative_path(sub_path):
            raise _invalid(
                "spec.model.source.pvc.subPath: must be a relative path inside the volume, "
                f"got {sub_path!r}"
            )
        return ModelSource(pvc=PvcSource(claim_name=claim, sub_path=sub_path or None))
    key = given[0]
    value = _str(source, key, "spec.model.source", default=None)
    if key == "path" and not value.startswith("/"):
        raise _invalid(f"spec.model.source.path: must be an absolute path, got {value!r}")
    return ModelSource(**{key: value})


def _is_relative_path(path: Any) -> bool:
    return (
        isinstance(path, str)
        and not path.startswith("/")
        and ".." not in path.split("/")
        and not any(c.isspace() for c in path)
    )


def _pools(spec: Mapping[str, Any], gpus_per_node: int) -> tuple[Pool, ...]:
    prefill, decode = spec.get("prefill"), spec.get("decode")
    if (prefill is None) != (decode is None):
        raise _invalid("spec.prefill, spec.decode: both or neither")
    if prefill is None:
        replicas = _int(spec, "replicas", "spec", default=1, lo=0, hi=1000)
        parallelism = _parallelism(spec.get("parallelism"), "spec.parallelism")
        return (Pool("serve", replicas, parallelism, gpus_per_node),)
    if spec.get("replicas") is not None:
        raise _invalid("spec.replicas: not with spec.prefill and spec.decode")
    pools = []
    for name, value in (("prefill", prefill), ("decode", decode)):
        path = f"spec.{name}"
        pool = _mapping(value, path)
        replicas = _int(pool, "replicas", path, default=1, lo=0, hi=1000)
        parallelism = _parallelism(pool.get("parallelism"), f"{path}.parallelism")
        pools.append(Pool(name, replicas, parallelism, gpus_per_node))
    return tuple(pools)


def _parallelism(value: Any, path: str) -> Parallelism:
    par = _mapping(value, path)
    return Parallelism(
        tensor=_int(par, "tensor", path, default=1, lo=1, hi=64),
        pipeline=_int(par, "pipeline", path, default=1, lo=1, hi=64),
        data=_int(par, "data", path, default=1, lo=1, hi=64),
        expert=_bool(par, "expert", path),
    )


def _check_parallelism(par: Parallelism, path: str, per_node: int, moe: bool) -> None:
    if par.expert and not moe:
        raise _invalid(f"{path}.expert: needs spec.model.moe: true")
    product = f"tensor × pipeline × data = {par.gpus}"
    if per_node == 0 and par.gpus != 1:
        raise _invalid(f"{path}: gpusPerNode 0 (CPU pods) needs {product} to be 1")
    if per_node > 0 and par.gpus > per_node and par.gpus % per_node:
        raise _invalid(
            f"{path}: {product} GPUs neither fits on one node (gpusPerNode {per_node}) "
            "nor fills whole nodes"
        )


def _check_stateful_set_names(name: str, pool: Pool) -> None:
    """A replica that spans nodes runs as StatefulSets (ours, or a LeaderWorkerSet's) whose
    names, plus a revision hash, become a pod label value (at most 63 characters)."""
    if not pool.spans_nodes or pool.replicas == 0:
        return
    longest = naming.worker_set_name(name, pool.name, pool.replicas - 1)
    if len(longest) > MAX_STATEFUL_SET_NAME_LEN:
        field = "spec.replicas" if pool.name == "serve" else f"spec.{pool.name}.replicas"
        raise _invalid(
            f"{field}: {pool.replicas} replicas spanning nodes need StatefulSets named like "
            f"{longest}, longer than {MAX_STATEFUL_SET_NAME_LEN} characters: use a shorter "
            "metadata.name or fewer replicas"
        )


def _router(router: Mapping[str, Any], settings: OperatorSettings) -> RouterSpec:
    return RouterSpec(
        strategy=_enum(router, "strategy", "spec.router", STRATEGIES, settings.router_strategy),
        replicas=_int(
            router, "replicas", "spec.router", default=settings.router_replicas, lo=0, hi=100
        ),
    )


def _image(image: Mapping[str, Any], settings: OperatorSettings, gpus_per_node: int) -> ImageSpec:
    engine = settings.engine_image if gpus_per_node else settings.engine_cpu_image
    return ImageSpec(
        engine=_str(image, "engine", "spec.image", default=engine),
        router=_str(image, "router", "spec.image", default=settings.router_image),
        pull_policy=_enum(
            image, "pullPolicy", "spec.image", PULL_POLICIES, settings.image_pull_policy
        ),
    )


def _resources(value: Any) -> dict[str, Any]:
    resources = _mapping(value, "spec.resources")
    for key in ("requests", "limits"):
        if resources.get(key) is not None:
            _mapping(resources[key], f"spec.resources.{key}")
    return copy.deepcopy(dict(resources))


def _node_selector(value: Any) -> dict[str, str]:
    selector = _mapping(value, "spec.nodeSelector")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in selector.items()):
        raise _invalid("spec.nodeSelector: must map strings to strings")
    return dict(selector)


def _tolerations(value: Any) -> tuple[dict[str, Any], ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(t, Mapping) for t in value):
        raise _invalid("spec.tolerations: must be a list of tolerations")
    return tuple(copy.deepcopy(dict(t)) for t in value)


def _mapping(value: Any, path: str) -> Mapping[str, Any]:
    """`value`, or {} for a missing one."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _invalid(f"{path}: must be an object")
    return value


def _int(obj: Mapping[str, Any], key: str, path: str, *, default: Any, lo: int, hi: int) -> Any:
    value = obj.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _invalid(f"{path}.{key}: must be an integer from {lo} to {hi}, got {value!r}")
    return value


def _bool(obj: Mapping[str, Any], key: str, path: str) -> bool:
    value = obj.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _invalid(f"{path}.{key}: must be true or false, got {value!r}")
    return value


def _str(obj: Mapping[str, Any], key: str, path: str, *, default: str | None) -> str:
    value = obj.get(key)
    if value is None and default is not None:
        return default
    if not isinstance(value, str) or not value:
        raise _invalid(f"{path}.{key}: must be a non-empty string, got {value!r}")
    return value


def _enum(
    obj: Mapping[str, Any], key: str, path: str, allowed: tuple[str, ...], default: str = ""
) -> str:
    value = obj.get(key)
    if value is None:
        return default or allowed[0]
    if value not in allowed:
        raise _invalid(f"{path}.{key}: must be one of {', '.join(allowed)}, got {value!r}")
    return value
