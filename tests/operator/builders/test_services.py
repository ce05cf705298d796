from fleetlm.operator.builders.services import headless_service, model_service, pool_service
from fleetlm.operator.spec import parse_model
from tests.operator.examples import (
    LLAMA_8B_PREFILL_DECODE,
    LLAMA_405B_2NODE,
    SETTINGS,
    validate,
    with_spec,
)


def test_pool_services():
    model = parse_model(LLAMA_8B_PREFILL_DECODE, SETTINGS)
    for pool in model.pools:
        service = pool_service(model, pool, owner=LLAMA_8B_PREFILL_DECODE)
        validate(service)
        assert service["metadata"]["name"] == f"llama-8b-pd-{pool.name}"
        assert service["spec"]["type"] == "ClusterIP"
        assert service["spec"]["ports"] == [
            {"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}
        ]
        assert service["spec"]["selector"] == {
            "app.kubernetes.io/instance": "llama-8b-pd",
            "app.kubernetes.io/component": "engine",
            "fleetlm.dev/model": "llama-8b-pd",
            "fleetlm.dev/pool": pool.name,
            "fleetlm.dev/role": "leader",
        }


def test_model_service_to_the_router():
    model = parse_model(LLAMA_8B_PREFILL_DECODE, SETTINGS)
    service = model_service(model, owner=LLAMA_8B_PREFILL_DECODE)
    validate(service)
    assert service["metadata"]["name"] == "llama-8b-pd"
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
    ]
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "router"
    assert "fleetlm.dev/role" not in service["spec"]["selector"]


def test_model_service_to_the_engines_without_a_router():
    original = with_spec(LLAMA_8B_PREFILL_DECODE, router={"replicas": 0})
    model = parse_model(original, SETTINGS)
    service = model_service(model, owner=original)
    validate(service)
    assert service["spec"]["ports"][0]["port"] == 80
    assert service["spec"]["selector"] == {
        "app.kubernetes.io/instance": "llama-8b-pd",
        "app.kubernetes.io/component": "engine",
        "fleetlm.dev/model": "llama-8b-pd",
        "fleetlm.dev/role": "leader",
    }


def test_headless_service():
    model = parse_model(LLAMA_405B_2NODE, SETTINGS)
    service = headless_service(model, model.pools[0], owner=LLAMA_405B_2NODE)
    validate(service)
    assert service["metadata"]["name"] == "llama-405b-serve-hl"
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    # Leaders and workers alike.
    assert "fleetlm.dev/role" not in service["spec"]["selector"]
    assert service["spec"]["selector"]["fleetlm.dev/pool"] == "serve"
