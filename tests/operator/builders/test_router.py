from fleetlm.operator.builders import router
from fleetlm.operator.spec import parse_model
from tests.operator.examples import (
    LLAMA_8B_1GPU,
    LLAMA_405B_2NODE,
    REDIS_SETTINGS,
    SETTINGS,
    container,
    flag,
    validate,
    with_spec,
)

MODEL = parse_model(LLAMA_8B_1GPU, SETTINGS)


def test_rbac():
    account = router.service_account(MODEL, owner=LLAMA_8B_1GPU)
    role = router.role(MODEL, owner=LLAMA_8B_1GPU)
    binding = router.role_binding(MODEL, owner=LLAMA_8B_1GPU)
    for manifest in (account, role, binding):
        validate(manifest)
        assert manifest["metadata"]["name"] == "llama-8b-router"
        assert manifest["metadata"]["labels"]["app.kubernetes.io/component"] == "router"
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
    ]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "llama-8b-router",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "llama-8b-router", "namespace": "team-a"}
    ]


def test_args_without_redis():
    assert router.router_args(MODEL, SETTINGS) == [
        "router",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
        "--discover",
        "kubernetes",
        "--kubernetes-label-selector",
        "fleetlm.dev/model=llama-8b,fleetlm.dev/role=leader",
        "--strategy",
        "prefix",
    ]


def test_args_with_redis_and_a_strategy():
    model = parse_model(LLAMA_405B_2NODE, REDIS_SETTINGS)
    args = router.router_args(model, REDIS_SETTINGS)
    assert flag(args, "--strategy") == "least_load"
    assert flag(args, "--redis-url") == REDIS_SETTINGS.redis_url
    assert flag(args, "--redis-key-prefix") == "fleetlm:team-a.llama-405b:"
    assert "--tokenizer" not in args


def test_strategy_from_the_settings():
    settings = SETTINGS.model_copy(update={"router_strategy": "session"})
    model = parse_model(with_spec(LLAMA_8B_1GPU, router=None), settings)
    assert flag(router.router_args(model, settings), "--strategy") == "session"


def test_deployment():
    model = parse_model(LLAMA_405B_2NODE, REDIS_SETTINGS)
    manifest = router.deployment(model, REDIS_SETTINGS, owner=LLAMA_405B_2NODE)
    validate(manifest)
    assert manifest["metadata"]["name"] == "llama-405b-router"
    spec = manifest["spec"]
    assert spec["replicas"] == 2
    template = spec["template"]
    assert spec["selector"]["matchLabels"] == {
        "app.kubernetes.io/instance": "llama-405b",
        "app.kubernetes.io/component": "router",
        "fleetlm.dev/model": "llama-405b",
    }
    assert spec["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    assert "fleetlm.dev/spec-hash" in template["metadata"]["annotations"]
    assert template["spec"]["serviceAccountName"] == "llama-405b-router"
    one = container(template)
    assert one["image"] == REDIS_SETTINGS.router_image
    assert one["command"] == ["fleetlm"]
    assert one["args"] == router.router_args(model, REDIS_SETTINGS)
    assert one["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert one["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    # /health is 503 while no engine is ready: liveness must not restart the router for that.
    assert one["livenessProbe"]["tcpSocket"] == {"port": "http"}


def test_router_image_from_the_spec():
    original = with_spec(LLAMA_8B_1GPU, image={"router": "registry.local/router:dev"})
    model = parse_model(original, SETTINGS)
    manifest = router.deployment(model, SETTINGS, owner=original)
    assert container(manifest["spec"]["template"])["image"] == "registry.local/router:dev"
