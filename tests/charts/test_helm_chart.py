"""The Helm chart charts/fleetlm, through the real helm (lint, template, install --dry-run):
every rendered manifest against the Kubernetes schemas (kubernetes-validate), the operator's
RBAC, Deployment and settings, Redis, monitoring, values.schema.json and NOTES.txt."""

import copy
import dataclasses
import functools
import json
import re
from pathlib import Path

import kubernetes_validate
import pytest

from fleetlm.engine.core.protocol import EngineCoreStats
from fleetlm.engine.entrypoints.openai.metrics import ServerMetrics
from fleetlm.router.metrics import RouterMetrics

from .helm import CHART, NAMESPACE, RELEASE, REPO, find, helm, kinds, render, requires_helm

pytestmark = requires_helm

# The chart's kubeVersion (>=1.29) and the newest Kubernetes of helm's and kubectl's v1.35.
K8S_VERSIONS = ("1.29.0", "1.35.0")
FULLNAME = f"{RELEASE}-fleetlm"
OPERATOR = f"{FULLNAME}-operator"
REDIS = f"{FULLNAME}-redis"
EXTERNAL_REDIS = ("redis.enabled=false", "redis.url=redis://ext:6379/0")

# Values that switch on every optional block of the templates.
EVERYTHING = (
    "monitoring.serviceMonitor.enabled=true",
    "monitoring.serviceMonitor.labels.release=prometheus",
    "monitoring.grafanaDashboard.namespace=monitoring",
    "monitoring.grafanaDashboard.labels.team=ml",
    "operator.watchNamespaces={team-a,team-b}",
    "imagePullSecrets[0].name=regcred",
    "operator.serviceAccount.annotations.owner=ml",
    "operator.podAnnotations.note=x",
    "operator.podLabels.tier=control",
    "operator.priorityClassName=system-cluster-critical",
    "operator.nodeSelector.pool=system",
    "operator.tolerations[0].key=dedicated",
    "operator.tolerations[0].operator=Exists",
    "operator.tolerations[0].effect=NoSchedule",
    "redis.nodeSelector.pool=system",
    "redis.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
    ".nodeSelectorTerms[0].matchExpressions[0].key=pool",
    "redis.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
    ".nodeSelectorTerms[0].matchExpressions[0].operator=Exists",
)
SCENARIOS = {
    "defaults": (),
    "external-redis": EXTERNAL_REDIS,
    "service-monitor": ("monitoring.serviceMonitor.enabled=true",),
    "watch-namespaces": ("operator.watchNamespaces={team-a,team-b}",),
    "everything": EVERYTHING,
    "nothing-optional": (
        *EXTERNAL_REDIS,
        "monitoring.grafanaDashboard.enabled=false",
        "operator.serviceAccount.create=false",
        "operator.serviceAccount.name=existing",
    ),
}
# Kinds kubernetes-validate has no schema for, checked by their own tests below.
CUSTOM_KINDS = {"ServiceMonitor"}


# --- helm lint, kubeVersion ---------------------------------------------------------------


@pytest.mark.parametrize("strict", [False, True], ids=["lint", "lint-strict"])
def test_helm_lint(strict):
    result = helm("lint", str(CHART), *(["--strict"] if strict else []))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_chart_metadata():
    result = helm("show", "chart", str(CHART))
    assert result.returncode == 0, result.stderr
    for line in ("apiVersion: v2", "name: fleetlm", "version: 0.1.0", "appVersion: 0.1.0"):
        assert line in result.stdout.splitlines()
    assert "kubeVersion: '>=1.29.0-0'" in result.stdout


def test_kubernetes_older_than_1_29_is_refused():
    result = helm("template", RELEASE, str(CHART), "--kube-version", "1.28.0")
    assert result.returncode != 0
    assert "kubeVersion" in result.stderr


# --- every manifest against the Kubernetes schemas ----------------------------------------


@pytest.mark.parametrize("values", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_manifests_validate_against_kubernetes_schemas(values):
    manifests = render(*values)
    assert manifests
    for manifest in manifests:
        if manifest["kind"] in CUSTOM_KINDS:
            continue
        for version in K8S_VERSIONS:
            error = validation_error(json.dumps(manifest, sort_keys=True), version)
            assert error is None, f"{manifest['kind']} {manifest['metadata']['name']}: {error}"


@functools.cache
def validation_error(manifest: str, version: str) -> str | None:
    """kubernetes-validate's complaint (strict: unknown fields too), cached: the scenarios
    share most manifests, and each call parses 1.5 MB of schemas."""
    try:
        kubernetes_validate.validate(json.loads(manifest), version, strict=True)
    except kubernetes_validate.ValidationError as e:
        return f"({version}) {e}"
    return None


def test_the_validation_is_strict():
    """A field Kubernetes does not know fails (the check above is not vacuous)."""
    deployment = copy.deepcopy(find(render(), "Deployment", OPERATOR))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGett"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)


def test_crds_are_installed_and_validate():
    crd_files = sorted((CHART / "crds").glob("*.yaml"))
    if not crd_files:
        pytest.skip("charts/fleetlm/crds/ has no CRD yet")
    crds = [m for m in render(include_crds=True) if m["kind"] == "CustomResourceDefinition"]
    assert "inferencemodels.fleetlm.dev" in {crd["metadata"]["name"] for crd in crds}
    for crd in crds:
        kubernetes_validate.validate(crd, K8S_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("values", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_selectors_match_their_pods(values):
    manifests = render(*values)
    pod_labels = {}
    for deployment in (m for m in manifests if m["kind"] == "Deployment"):
        selector = deployment["spec"]["selector"]["matchLabels"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), deployment["metadata"]["name"]
        pod_labels[deployment["metadata"]["name"]] = labels
    for service in (m for m in manifests if m["kind"] == "Service"):
        selected = [
            n
            for n, labels in pod_labels.items()
            if service["spec"]["selector"].items() <= labels.items()
        ]
        assert selected == [service["metadata"]["name"]]


# --- the operator ------------------------------------------------------------------------

CRUD = {"get", "list", "watch", "create", "update", "patch", "delete"}
READ = {"get", "list", "watch"}
OPERATOR_NEEDS = {
    ("fleetlm.dev", "inferencemodels"): {"get", "list", "watch", "patch", "update"},
    ("fleetlm.dev", "inferencemodels/status"): {"get", "patch", "update"},
    ("fleetlm.dev", "inferencemodels/finalizers"): {"update"},
    ("apps", "deployments"): CRUD,
    ("apps", "statefulsets"): CRUD,
    ("leaderworkerset.x-k8s.io", "leaderworkersets"): CRUD,
    ("", "services"): CRUD,
    ("", "serviceaccounts"): CRUD,
    ("rbac.authorization.k8s.io", "roles"): CRUD,
    ("rbac.authorization.k8s.io", "rolebindings"): CRUD,
    ("policy", "poddisruptionbudgets"): CRUD,
    # What it grants the routers' Role (it cannot grant more than it holds).
    ("", "pods"): READ,
    ("", "persistentvolumeclaims"): {"get"},
    ("", "events"): {"create", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
    ("apiextensions.k8s.io", "customresourcedefinitions"): READ,
    ("", "namespaces"): READ,
}


def granted(rules: list[dict]) -> dict[tuple[str, str], set[str]]:
    grants: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, rule  # no resourceNames, URLs
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                grants.setdefault((group, resource), set()).update(rule["verbs"])
    return grants


def test_operator_cluster_role_grants_exactly_what_it_needs():
    role = find(render(), "ClusterRole", OPERATOR)
    assert "*" not in json.dumps(role)
    assert granted(role["rules"]) == OPERATOR_NEEDS


@pytest.mark.parametrize("values", [(), SCENARIOS["nothing-optional"]], ids=["own", "existing"])
def test_operator_runs_as_the_bound_service_account(values):
    manifests = render(*values)
    binding = find(manifests, "ClusterRoleBinding", OPERATOR)
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": OPERATOR,
    }
    (subject,) = binding["subjects"]
    pod = find(manifests, "Deployment", OPERATOR)["spec"]["template"]["spec"]
    assert subject == {
        "kind": "ServiceAccount",
        "name": pod["serviceAccountName"],
        "namespace": NAMESPACE,
    }
    accounts = [m["metadata"]["name"] for m in manifests if m["kind"] == "ServiceAccount"]
    assert accounts == ([] if values else [pod["serviceAccountName"]])


def operator_container(*values: str) -> dict:
    pod = find(render(*values), "Deployment", OPERATOR)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return container


def operator_env(*values: str) -> dict[str, str]:
    return {env["name"]: env["value"] for env in operator_container(*values)["env"]}


def test_operator_deployment():
    deployment = find(render(), "Deployment", OPERATOR)
    assert deployment["metadata"]["namespace"] == NAMESPACE
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}  # standalone kopf: never two
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    container = operator_container()
    assert container["image"] == "ghcr.io/fleetlm/operator:0.1.0"
    assert container["command"] + container["args"] == [
        "fleetlm",
        "operator",
        "--all-namespaces",
        "--liveness",
        "http://0.0.0.0:8080/healthz",
    ]
    probe = container["livenessProbe"]["httpGet"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert probe["path"] == "/healthz"
    assert ports.get(probe["port"], probe["port"]) == 8080
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert {"requests", "limits"} <= container["resources"].keys()
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


def test_operator_watches_the_listed_namespaces():
    container = operator_container(*SCENARIOS["watch-namespaces"])
    assert container["args"] == [
        "--namespace",
        "team-a",
        "--namespace",
        "team-b",
        "--liveness",
        "http://0.0.0.0:8080/healthz",
    ]


def test_operator_settings():
    assert operator_env() == {
        "FLEETLM_OPERATOR_ENGINE_IMAGE": "ghcr.io/fleetlm/engine-cuda:0.1.0",
        "FLEETLM_OPERATOR_ENGINE_CPU_IMAGE": "ghcr.io/fleetlm/engine-cpu:0.1.0",
        "FLEETLM_OPERATOR_ROUTER_IMAGE": "ghcr.io/fleetlm/router:0.1.0",
        "FLEETLM_OPERATOR_IMAGE_PULL_POLICY": "IfNotPresent",
        "FLEETLM_OPERATOR_REDIS_URL": f"redis://{REDIS}.{NAMESPACE}.svc:6379/0",
        "FLEETLM_OPERATOR_ROUTER_STRATEGY": "prefix",
        "FLEETLM_OPERATOR_ROUTER_REPLICAS": "1",
    }


def test_operator_settings_follow_the_values():
    env = operator_env(
        "image.engine.repository=registry.local/engine",
        "image.engine.tag=v2",
        "image.router.tag=v3",
        "image.pullPolicy=Always",
        "router.strategy=least_load",
        "router.replicas=0",
        *EXTERNAL_REDIS,
    )
    assert env["FLEETLM_OPERATOR_ENGINE_IMAGE"] == "registry.local/engine:v2"
    assert env["FLEETLM_OPERATOR_ENGINE_CPU_IMAGE"] == "ghcr.io/fleetlm/engine-cpu:0.1.0"
    assert env["FLEETLM_OPERATOR_ROUTER_IMAGE"] == "ghcr.io/fleetlm/router:v3"
    assert env["FLEETLM_OPERATOR_IMAGE_PULL_POLICY"] == "Always"
    assert env["FLEETLM_OPERATOR_ROUTER_STRATEGY"] == "least_load"
    assert env["FLEETLM_OPERATOR_ROUTER_REPLICAS"] == "0"
    assert env["FLEETLM_OPERATOR_REDIS_URL"] == "redis://ext:6379/0"


@pytest.mark.parametrize("values", [(), EVERYTHING], ids=["all-namespaces", "namespaces"])
def test_the_operator_accepts_its_command_and_settings(values, monkeypatch):
    """The rendered command line parses with `fleetlm operator`'s own parser, and every env
    variable is a field of its OperatorSettings."""
    from fleetlm.cli import build_parser

    settings = pytest.importorskip("fleetlm.operator.settings")
    container = operator_container(*values)
    assert container["command"][0] == "fleetlm"
    args = build_parser().parse_args(container["command"][1:] + container["args"])
    assert args.liveness == "http://0.0.0.0:8080/healthz"
    assert args.namespace == (["team-a", "team-b"] if values else [])
    fields = settings.OperatorSettings.model_fields
    for name, value in operator_env(*values).items():
        assert name.removeprefix("FLEETLM_OPERATOR_").lower() in fields, name
        monkeypatch.setenv(name, value)
    operator_settings = settings.OperatorSettings()
    assert operator_settings.redis_url == operator_env(*values)["FLEETLM_OPERATOR_REDIS_URL"]
    assert operator_settings.router_replicas == 1


# --- Redis ------------------------------------------------------------------------------


def test_redis_runs_in_memory_behind_its_service():
    manifests = render()
    deployment = find(manifests, "Deployment", REDIS)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "redis:7.4-alpine"
    args = container["args"]
    assert args[args.index("--save") + 1] == ""
    assert args[args.index("--appendonly") + 1] == "no"
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["exec"]["command"] == ["redis-cli", "ping"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    assert {"requests", "limits"} <= container["resources"].keys()
    service = find(manifests, "Service", REDIS)
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(6379, "redis")]
    assert operator_env()["FLEETLM_OPERATOR_REDIS_URL"].startswith(f"redis://{REDIS}.")


def test_external_redis_replaces_the_charts():
    names = kinds(render(*EXTERNAL_REDIS))
    assert ("Deployment", REDIS) not in names and ("Service", REDIS) not in names


def test_external_redis_needs_its_url():
    result = helm("template", RELEASE, str(CHART), "--set", "redis.enabled=false")
    assert result.returncode != 0
    assert "redis.url is required" in result.stderr


# --- values.schema.json -----------------------------------------------------------------

BAD_VALUES = {
    "router.strategy=bogus": "/router/strategy",
    "router.replicas=-1": "/router/replicas",
    "router.replicas=101": "/router/replicas",
    "router.colour=red": "colour",
    "surprise=1": "surprise",
    "image.pullPolicy=Sometimes": "/image/pullPolicy",
    "image.router.registry=x": "registry",
    "operator.watchNamespaces={Team_A}": "/operator/watchNamespaces/0",
    "redis.url=http://not-redis:6379": "/redis/url",
    "redis.enabled=maybe": "/redis/enabled",
    "monitoring.serviceMonitor.interval=often": "/monitoring/serviceMonitor/interval",
}


@pytest.mark.parametrize("value", BAD_VALUES)
def test_schema_rejects_bad_values(value):
    result = helm("template", RELEASE, str(CHART), "--set", value)
    assert result.returncode != 0, f"--set {value} rendered"
    assert BAD_VALUES[value] in result.stderr


def test_schema_is_strict_at_every_level_it_defines():
    def objects(schema):
        if isinstance(schema, dict):
            if schema.get("type") == "object" and "properties" in schema:
                yield schema
            for child in schema.values():
                yield from objects(child)
        elif isinstance(schema, list):
            for child in schema:
                yield from objects(child)

    schema = json.loads((CHART / "values.schema.json").read_text())
    for obj in objects(schema):
        assert obj.get("additionalProperties") is False, sorted(obj["properties"])


# --- monitoring -------------------------------------------------------------------------


def test_service_monitor_is_off_by_default():
    assert "ServiceMonitor" not in {m["kind"] for m in render()}


@pytest.mark.parametrize(
    ("values", "namespaces"),
    [
        (SCENARIOS["service-monitor"], {"any": True}),
        (EVERYTHING, {"matchNames": ["team-a", "team-b"]}),
    ],
    ids=["all-namespaces", "watched-namespaces"],
)
def test_service_monitor_scrapes_the_models_services(values, namespaces):
    monitor = find(render(*values), "ServiceMonitor", FULLNAME)
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["namespace"] == NAMESPACE
    spec = monitor["spec"]
    assert spec["selector"] == {"matchLabels": {"app.kubernetes.io/managed-by": "fleetlm-operator"}}
    assert spec["namespaceSelector"] == namespaces
    (endpoint,) = spec["endpoints"]
    assert endpoint["port"] == "http" and endpoint["path"] == "/metrics"
    assert re.fullmatch(r"(\d+(ms|s|m|h))+", endpoint["interval"])
    assert set(spec) <= {"selector", "namespaceSelector", "endpoints", "targetLabels"}
    assert spec["targetLabels"] == ["fleetlm.dev/model", "app.kubernetes.io/component"]


# The Services the operator makes for a model M (docs/operator.md), by their labels.
MODEL_SERVICES = {
    "m-serve": {"app.kubernetes.io/component": "engine", "fleetlm.dev/pool": "serve"},
    "m-prefill": {"app.kubernetes.io/component": "engine", "fleetlm.dev/pool": "prefill"},
    "m-serve-hl": {"app.kubernetes.io/component": "engine", "fleetlm.dev/pool": "serve"},
    "m-decode-hl": {"app.kubernetes.io/component": "engine", "fleetlm.dev/pool": "decode"},
    "m (router)": {"app.kubernetes.io/component": "router"},
    "m (no router)": {"app.kubernetes.io/component": "engine"},
}


def scraped(relabelings: list[dict], name: str, labels: dict[str, str]) -> bool:
    """Prometheus' `drop` relabeling over a Service's meta labels."""
    meta = {"__meta_kubernetes_service_name": name.split()[0]}
    for key, value in labels.items():
        meta["__meta_kubernetes_service_label_" + re.sub(r"\W", "_", key)] = value
    for rule in relabelings:
        assert rule["action"] == "drop"
        value = rule["separator"].join(meta.get(label, "") for label in rule["sourceLabels"])
        if re.fullmatch(rule["regex"], value):
            return False
    return True


def test_service_monitor_scrapes_each_pod_once():
    monitor = find(render(*SCENARIOS["service-monitor"]), "ServiceMonitor", FULLNAME)
    (endpoint,) = monitor["spec"]["endpoints"]
    kept = {
        n for n, labels in MODEL_SERVICES.items() if scraped(endpoint["relabelings"], n, labels)
    }
    assert kept == {"m-serve", "m-prefill", "m (router)"}


DASHBOARD = CHART / "dashboards" / "fleetlm.json"


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    variables = [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return exprs + [v["query"] if isinstance(v, dict) else v for v in variables]


def queried_metrics() -> set[str]:
    """The metric names of the dashboard's PromQL (label names dropped)."""
    names = set()
    for query in dashboard_queries():
        query = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", query)  # selectors, ranges
        query = re.sub(r"\b(by|without)\s*\([^)]*\)", "", query)  # grouping labels
        query = re.sub(r"label_values\(([^,)]+),[^)]*\)", r"\1", query)
        names.update(re.findall(r"\b(?:vllm|fleetlm)[:_][\w:]*", query))
    return names


def test_dashboard_configmap_holds_the_dashboard():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["uid"] and dashboard["panels"]
    configmap = find(render(), "ConfigMap", f"{FULLNAME}-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(configmap["data"]["fleetlm.json"]) == dashboard
    moved = find(render(*EVERYTHING), "ConfigMap", f"{FULLNAME}-dashboard")
    assert moved["metadata"]["namespace"] == "monitoring"
    assert "ConfigMap" not in {
        m["kind"] for m in render("monitoring.grafanaDashboard.enabled=false")
    }


def test_dashboard_metrics_exist_in_the_source():
    sources = "\n".join(
        path.read_text()
        for folder in ("engine", "router")
        for path in (REPO / folder).rglob("*.py")
    )
    names = queried_metrics()
    assert any(n.startswith("vllm:") for n in names) and any(
        n.startswith("fleetlm_router_") for n in names
    )
    for name in names:
        base = re.sub(r"_(total|bucket|sum|count)$", "", name)
        found = f'"{base}"' in sources or f'"{name}"' in sources
        assert found, f"{name} is in no source file of engine/ or router/"


def exposed_metrics() -> set[str]:
    """Every series name the engine's and the router's /metrics can expose."""
    stats = EngineCoreStats(**{f.name: 0 for f in dataclasses.fields(EngineCoreStats)})
    registries = [ServerMetrics("m", lambda: stats).registry, RouterMetrics().registry]
    suffixes = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_sum", "_count"]}
    return {
        family.name + suffix
        for registry in registries
        for family in registry.collect()
        for suffix in suffixes[family.type]
    }


def test_dashboard_metrics_are_exposed_under_these_names():
    """With the suffixes Prometheus sees (_total of counters, _bucket of histograms)."""
    unknown = queried_metrics() - exposed_metrics()
    assert not unknown, f"the dashboard queries series no /metrics exposes: {sorted(unknown)}"


# --- NOTES.txt --------------------------------------------------------------------------


def test_notes_say_how_to_check_the_operator_and_try_a_model():
    result = helm("install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client")
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    assert f"kubectl -n {NAMESPACE} rollout status deployment/{OPERATOR}" in notes
    assert "kubectl apply -f charts/fleetlm/examples/smollm2-cpu.yaml" in notes
    assert "kubectl get im" in notes
    assert "port-forward svc/" in notes and "curl " in notes and "openai.OpenAI(" in notes
    example = CHART / "examples" / "smollm2-cpu.yaml"
    if example.is_file():  # the NOTES name the example's model and its served name
        model = _yaml_field(example, r"^  name: (\S+)")
        served = _yaml_field(example, r"^    servedName: (\S+)")
        assert f"port-forward svc/{model} 8000:80" in notes
        assert f'"model": "{served}"' in notes


def _yaml_field(path: Path, pattern: str) -> str:
    match = re.search(pattern, path.read_text(), re.MULTILINE)
    assert match, f"{pattern} not in {path}"
    return match.group(1)
