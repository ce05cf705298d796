import pytest

from fleetlm.operator.builders.single_node import deployment
from fleetlm.operator.spec import parse_model
from tests.operator.examples import (
    LLAMA_8B_1GPU,
    LLAMA_8B_PREFILL_DECODE,
    LLAMA_70B_TP8,
    SETTINGS,
    SMOLLM2_CPU,
    container,
    validate,
)


@pytest.mark.parametrize(
    ("example", "replicas", "gpus"),
    [(SMOLLM2_CPU, 2, None), (LLAMA_8B_1GPU, 3, "1"), (LLAMA_70B_TP8, 1, "8")],
)
def test_deployment(example, replicas, gpus):
    model = parse_model(example, SETTINGS)
    (pool,) = model.pools
    manifest = deployment(model, pool, SETTINGS, owner=example)
    validate(manifest)
    assert manifest["metadata"]["name"] == f"{model.name}-serve"
    assert manifest["metadata"]["labels"]["fleetlm.dev/pool"] == "serve"
    spec = manifest["spec"]
    assert spec["replicas"] == replicas
    template = spec["template"]
    assert spec["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    assert template["metadata"]["labels"]["fleetlm.dev/role"] == "leader"
    limits = container(template)["resources"].get("limits", {})
    assert limits.get("nvidia.com/gpu") == gpus
    assert "--nnodes" not in container(template)["args"]
    # A rollout never lowers the capacity, and waits as long as a pod may take to start.
    assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    startup = container(template)["startupProbe"]
    assert spec["progressDeadlineSeconds"] > startup["failureThreshold"] * startup["periodSeconds"]


def test_a_deployment_per_pool():
    model = parse_model(LLAMA_8B_PREFILL_DECODE, SETTINGS)
    prefill, decode = (
        deployment(model, pool, SETTINGS, owner=LLAMA_8B_PREFILL_DECODE) for pool in model.pools
    )
    assert prefill["metadata"]["name"] == "llama-8b-pd-prefill"
    assert decode["metadata"]["name"] == "llama-8b-pd-decode"
    assert (prefill["spec"]["replicas"], decode["spec"]["replicas"]) == (1, 2)
    assert container(prefill["spec"]["template"])["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert container(decode["spec"]["template"])["resources"]["limits"]["nvidia.com/gpu"] == "1"
    # The two pools' selectors do not overlap.
    assert prefill["spec"]["selector"]["matchLabels"]["fleetlm.dev/pool"] == "prefill"
    assert decode["spec"]["selector"]["matchLabels"]["fleetlm.dev/pool"] == "decode"
