from fleetlm.operator.builders.meta import owner_reference, spec_hash, with_spec_hash
from tests.operator.examples import LLAMA_8B_1GPU


def test_owner_reference():
    assert owner_reference(LLAMA_8B_1GPU) == {
        "apiVersion": "fleetlm.dev/v1alpha1",
        "kind": "InferenceModel",
        "name": "llama-8b",
        "uid": LLAMA_8B_1GPU["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def test_spec_hash_ignores_key_order():
    assert spec_hash({"a": 1, "b": [1, 2]}) == spec_hash({"b": [1, 2], "a": 1})
    assert spec_hash({"a": 1}) != spec_hash({"a": 2})
    assert len(spec_hash({})) == 16


def test_with_spec_hash_keeps_the_template():
    template = {"metadata": {"labels": {"a": "b"}, "annotations": {"x": "y"}}, "spec": {"c": 1}}
    hashed = with_spec_hash(template)
    assert hashed["metadata"]["annotations"] == {
        "x": "y",
        "fleetlm.dev/spec-hash": spec_hash(template),
    }
    assert hashed["spec"] == template["spec"] and hashed["metadata"]["labels"] == {"a": "b"}
    assert template["metadata"]["annotations"] == {"x": "y"}  # not changed
