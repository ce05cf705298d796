"""The engine pod: `fleetlm serve` with the flags of docs/operator.md, its probes, GPUs,
volumes and scheduling. The workload builders (single_node, multi_node) wrap the template.

NOTE: flags. The engine gets a flag only where it differs from the engine's default (vLLM's
convention): sizes of 1, dtype auto and quantization none stay implicit, so a spec that says
nothing runs exactly `fleetlm serve MODEL`. `--served-model-name` is always passed (the
default name would be the model directory's). `$(POD_IP)`, `$(NODE_RANK)` and the LWS
variables are expanded by the kubelet from the container's environment.
"""

import copy
from dataclasses import dataclass
from typing import Any

from fleetlm.operator import naming
from fleetlm.operator.builders.meta import with_spec_hash
from fleetlm.operator.settings import OperatorSettings
from fleetlm.operator.spec import MODELS_DIR, InferenceModel, Pool

CONTAINER_NAME = "engine"
HTTP_PORT = 8000
HEALTH_PATH = "/health"
PROBE_PERIOD_S = 10
TERMINATION_GRACE_S = 60  # the engine drains for 30 s (--drain-timeout) after SIGTERM


@dataclass(frozen=True)
class NodeRank:
    """How a pod of a replica that spans nodes finds its place: `rank` and `master_addr` are
    literal or `$(VAR)` references the kubelet expands."""

    nnodes: int
    rank: str  # "0" (leaders), "$(LWS_WORKER_INDEX)" or "$(NODE_RANK)"
    master_addr: str  # the leader's stable DNS name, or "$(LWS_LEADER_ADDRESS)"
    # NODE_RANK from the StatefulSet pod-index label (the StatefulSet fallback's workers)
    rank_from_pod_index: bool = False


def startup_budget_s(pool: Pool) -> int:
    """How long a pod may take to load its model before its liveness probe starts: 10 minutes
    on CPU, 30 on one GPU node, an hour across nodes (hundreds of GB from a volume)."""
    if pool.gpus_per_node == 0:
        return 600
    return 3600 if pool.spans_nodes else 1800


def engine_args(
    model: InferenceModel,
    pool: Pool,
    settings: OperatorSettings,
    *,
    node: NodeRank | None = None,
    role: str = naming.LEADER,
) -> list[str]:
    """`fleetlm serve ...` (without the leading `fleetlm`) for a pod of `pool`."""
    spec, par = model.model, pool.parallelism
    args = ["serve", spec.source.model_arg, "--host", "0.0.0.0", "--port", str(HTTP_PORT)]
    args += ["--served-model-name", spec.served_name]
    if model.is_cpu:
        args += ["--device", "cpu"]
    if spec.dtype != "auto":
        args += ["--dtype", spec.dtype]
    if spec.quantization != "none":
        args += ["--quantization", spec.quantization]
    if spec.max_model_len is not None:
        args += ["--max-model-len", str(spec.max_model_len)]
    for flag, size in (
        ("--tensor-parallel-size", par.tensor),
        ("--pipeline-parallel-size", par.pipeline),
        ("--data-parallel-size", par.data),
    ):
        if size > 1:
            args += [flag, str(size)]
    if par.expert:
        args.append("--enable-expert-parallel")
    if settings.redis_url:
        args += ["--kv-events-redis-url", settings.redis_url]
        args += ["--redis-key-prefix", naming.redis_key_prefix(model.namespace, model.name)]
    args += ["--advertise-url", f"http://$(POD_IP):{HTTP_PORT}"]
    if node is not None:
        args += ["--nnodes", str(node.nnodes), "--node-rank", node.rank]
        args += ["--master-addr", node.master_addr, "--master-port", str(settings.master_port)]
        if role == naming.WORKER:
            args.append("--headless")
    return args + list(spec.engine_args)


def engine_container(
    model: InferenceModel,
    pool: Pool,
    settings: OperatorSettings,
    *,
    node: NodeRank | None = None,
    role: str = naming.LEADER,
) -> dict[str, Any]:
    """The engine container. Leaders serve HTTP (port `http`, probes on /health); workers
    (`--headless`) only join the leader's torch.distributed group."""
    env: list[dict[str, Any]] = [_field_env("POD_IP", "status.podIP")]
    if node is not None and node.rank_from_pod_index:
        env.append(_field_env("NODE_RANK", f"metadata.labels['{naming.POD_INDEX_LABEL}']"))
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": model.image.engine,
        "imagePullPolicy": model.image.pull_policy,
        "command": ["fleetlm"],
        "args": engine_args(model, pool, settings, node=node, role=role),
        "env": env,
        "resources": _resources(model, pool),
    }
    if role == naming.LEADER:
        container["ports"] = [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}]
        container.update(_probes(pool))
    mounts = _volume_mounts(model, pool)
    if mounts:
        container["volumeMounts"] = mounts
    return container


def engine_pod_template(
    model: InferenceModel,
    pool: Pool,
    settings: OperatorSettings,
    *,
    node: NodeRank | None = None,
    role: str = naming.LEADER,
    replica: int | None = None,
) -> dict[str, Any]:
    """The pod template of `pool`'s pods of `role` (and StatefulSet-fallback `replica`),
    annotated with its own hash (fleetlm.dev/spec-hash)."""
    labels = naming.labels(
        model.name, component=naming.ENGINE, pool=pool.name, role=role, replica=replica
    )
    spec: dict[str, Any] = {
        "containers": [engine_container(model, pool, settings, node=node, role=role)],
        "terminationGracePeriodSeconds": TERMINATION_GRACE_S,
        # Engines never call the API server, and thousands of service env vars help no one.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
    }
    volumes = _volumes(model, pool)
    if volumes:
        spec["volumes"] = volumes
    if model.node_selector:
        spec["nodeSelector"] = dict(model.node_selector)
    if model.tolerations:
        spec["tolerations"] = copy.deepcopy(list(model.tolerations))
    return with_spec_hash({"metadata": {"labels": labels}, "spec": spec})


def _field_env(name: str, field_path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": field_path}}}


def _resources(model: InferenceModel, pool: Pool) -> dict[str, Any]:
    """The spec's resources, with the pod's GPUs as the limit of `gpuResource` (and as its
    request, if the spec requests it: extended resources need requests == limits)."""
    resources = copy.deepcopy(model.resources)
    if pool.gpus_per_pod:
        gpus = str(pool.gpus_per_pod)
        resources["limits"] = {**(resources.get("limits") or {}), model.gpu_resource: gpus}
        if model.gpu_resource in (resources.get("requests") or {}):
            resources["requests"] = {**resources["requests"], model.gpu_resource: gpus}
    return resources


def _probes(pool: Pool) -> dict[str, Any]:
    def probe(period_s: int, failures: int, timeout_s: int) -> dict[str, Any]:
        return {
            "httpGet": {"path": HEALTH_PATH, "port": "http"},
            "periodSeconds": period_s,
            "timeoutSeconds": timeout_s,
            "failureThreshold": failures,
        }

    return {
        # Loading weights (and capturing CUDA graphs) may take long; liveness waits for it.
        "startupProbe": probe(PROBE_PERIOD_S, startup_budget_s(pool) // PROBE_PERIOD_S, 5),
        # /health turns 503 while draining: the pod leaves the Services before it stops.
        "readinessProbe": probe(5, 2, 5),
        # A dead engine (503) or a hung server is restarted after a minute.
        "livenessProbe": probe(PROBE_PERIOD_S, 6, 10),
    }


def _volumes(model: InferenceModel, pool: Pool) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = []
    pvc = model.model.source.pvc
    if pvc is not None:
        claim = {"claimName": pvc.claim_name, "readOnly": True}
        volumes.append({"name": "models", "persistentVolumeClaim": claim})
    if pool.gpus_per_pod > 1:  # NCCL between the pod's GPUs goes through shared memory
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
    return volumes


def _volume_mounts(model: InferenceModel, pool: Pool) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = []
    if model.model.source.pvc is not None:
        mounts.append({"name": "models", "mountPath": MODELS_DIR, "readOnly": True})
    if pool.gpus_per_pod > 1:
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    return mounts
