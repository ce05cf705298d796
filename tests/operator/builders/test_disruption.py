from fleetlm.operator.builders.disruption import pod_disruption_budget
from fleetlm.operator.spec import parse_model
from tests.operator.examples import LLAMA_8B_PREFILL_DECODE, SETTINGS, validate


def test_a_budget_per_pool():
    model = parse_model(LLAMA_8B_PREFILL_DECODE, SETTINGS)
    for pool in model.pools:
        pdb = pod_disruption_budget(model, pool, owner=LLAMA_8B_PREFILL_DECODE)
        validate(pdb)
        assert (pdb["apiVersion"], pdb["kind"]) == ("policy/v1", "PodDisruptionBudget")
        assert pdb["metadata"]["name"] == f"llama-8b-pd-{pool.name}"
        assert pdb["spec"]["maxUnavailable"] == 1
        assert pdb["spec"]["selector"]["matchLabels"] == {
            "app.kubernetes.io/instance": "llama-8b-pd",
            "app.kubernetes.io/component": "engine",
            "fleetlm.dev/model": "llama-8b-pd",
            "fleetlm.dev/pool": pool.name,
        }
