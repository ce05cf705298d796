import copy

import pytest

from fleetlm.operator.settings import OperatorSettings
from fleetlm.operator.spec import InvalidSpec, Parallelism, Pool, parse_model
from tests.operator.examples import (
    EXAMPLES,
    LLAMA_8B_1GPU,
    LLAMA_8B_PREFILL_DECODE,
    LLAMA_70B_TP8,
    LLAMA_405B_2NODE,
    SETTINGS,
    SMOLLM2_CPU,
    all_examples,
    body,
    example_files,
    with_spec,
)

PVC_SOURCE = {"pvc": {"claimName": "models", "subPath": "m"}}


def minimal(**spec):
    return body("m", {"model": {"source": {"hub": "org/m"}}, **spec})


@pytest.mark.parametrize("name", sorted(all_examples()))
def test_examples_parse(name):
    model = parse_model(all_examples()[name], SETTINGS)
    assert model.pools and all(pool.replicas >= 0 for pool in model.pools)


def test_the_chart_examples_are_there():
    """The tests run on the chart's examples too (parametrized as file:NAME)."""
    assert set(example_files()) >= set(EXAMPLES)


def test_minimal_spec_gets_every_default():
    """A body without the CRD's defaults (a CRD installed by hand) gets the same ones."""
    settings = OperatorSettings(router_strategy="least_load", router_replicas=2)
    model = parse_model(minimal(), settings)
    assert (model.name, model.namespace, model.generation) == ("m", "team-a", 1)
    assert model.model.served_name == "m"
    assert (model.model.dtype, model.model.quantization) == ("auto", "none")
    assert model.model.max_model_len is None and model.model.moe is False
    assert model.model.engine_args == ()
    assert model.gpus_per_node == 1 and model.gpu_resource == "nvidia.com/gpu"
    assert model.pools == (Pool("serve", 1, Parallelism(1, 1, 1, False), 1),)
    assert (model.router.strategy, model.router.replicas) == ("least_load", 2)
    assert model.image.engine == settings.engine_image
    assert model.image.router == settings.router_image
    assert model.image.pull_policy == "IfNotPresent"
    assert (model.resources, model.node_selector, model.tolerations) == ({}, {}, ())


def test_missing_namespace_and_uid():
    model = parse_model({"metadata": {"name": "m"}, "spec": minimal()["spec"]}, SETTINGS)
    assert (model.namespace, model.uid, model.generation) == ("default", "", 0)


def test_cpu_model_uses_the_cpu_image_unless_given():
    settings = OperatorSettings(engine_cpu_image="cpu:1", engine_image="cuda:1")
    model = parse_model(with_spec(SMOLLM2_CPU, image=None), settings)
    assert model.is_cpu and model.image.engine == "cpu:1"
    assert parse_model(with_spec(LLAMA_8B_1GPU, image=None), settings).image.engine == "cuda:1"
    given = with_spec(SMOLLM2_CPU, image={"engine": "mine:2", "pullPolicy": "Always"})
    image = parse_model(given, settings).image
    assert (image.engine, image.pull_policy) == ("mine:2", "Always")


def test_pool_geometry():
    # One GPU per replica.
    (pool,) = parse_model(LLAMA_8B_1GPU, SETTINGS).pools
    assert (pool.gpus_per_pod, pool.pods_per_replica, pool.spans_nodes) == (1, 1, False)
    # A whole 8-GPU node per replica.
    (pool,) = parse_model(LLAMA_70B_TP8, SETTINGS).pools
    assert (pool.gpus_per_pod, pool.pods_per_replica, pool.spans_nodes) == (8, 1, False)
    assert pool.gpus_per_replica == pool.parallelism.gpus == 8
    # Two nodes per replica.
    (pool,) = parse_model(LLAMA_405B_2NODE, SETTINGS).pools
    assert (pool.gpus_per_pod, pool.pods_per_replica, pool.spans_nodes) == (8, 2, True)
    assert pool.gpus_per_replica == 16
    # CPU: no GPUs at all.
    (pool,) = parse_model(SMOLLM2_CPU, SETTINGS).pools
    assert (pool.gpus_per_pod, pool.pods_per_replica, pool.gpus_per_replica) == (0, 1, 0)
    # Fits on a node without filling it: 2 of 8.
    pool = Pool("serve", 1, Parallelism(tensor=2), gpus_per_node=8)
    assert (pool.gpus_per_pod, pool.pods_per_replica, pool.spans_nodes) == (2, 1, False)
    # Data parallelism counts: 4 × 1 × 4 = 16 GPUs on 4-GPU nodes = 4 nodes.
    pool = Pool("serve", 1, Parallelism(tensor=4, data=4), gpus_per_node=4)
    assert (pool.gpus_per_pod, pool.pods_per_replica) == (4, 4)


def test_prefill_decode_pools():
    model = parse_model(LLAMA_8B_PREFILL_DECODE, SETTINGS)
    assert [pool.name for pool in model.pools] == ["prefill", "decode"]
    assert model.pool("prefill").replicas == 1 and model.pool("decode").replicas == 2
    assert model.pool("prefill").parallelism == Parallelism(tensor=2)
    assert model.desired_replicas == 3
    # A pool without parallelism (the CRD defaults it to {}) gets 1 × 1 × 1.
    spec = {"replicas": 4}
    model = parse_model(with_spec(LLAMA_8B_PREFILL_DECODE, prefill=spec, decode={}), SETTINGS)
    assert model.pool("prefill") == Pool("prefill", 4, Parallelism(), 8)
    assert model.pool("decode").replicas == 1
    with pytest.raises(KeyError):
        model.pool("serve")


def test_model_sources():
    model = parse_model(LLAMA_8B_1GPU, SETTINGS)
    assert model.model.source.pvc.claim_name == "models"
    assert model.model.source.model_arg == "/models/llama-3.1-8b-instruct"
    model = parse_model(LLAMA_405B_2NODE, SETTINGS)
    assert model.model.source.model_arg == "/models"  # no subPath: the claim's root
    model = parse_model(SMOLLM2_CPU, SETTINGS)
    assert model.model.source.model_arg == "/opt/fleetlm/models/SmolLM2-135M-Instruct.Q4_1.gguf"
    model = parse_model(LLAMA_8B_PREFILL_DECODE, SETTINGS)
    assert model.model.source.model_arg == "meta-llama/Llama-3.1-8B-Instruct"


def test_parse_does_not_share_the_body():
    original = copy.deepcopy(LLAMA_8B_1GPU)
    model = parse_model(original, SETTINGS)
    model.tolerations[0]["key"] = "changed"
    model.resources["requests"]["cpu"] = "99"
    assert original == LLAMA_8B_1GPU


def test_equal_bodies_give_equal_models():
    assert parse_model(LLAMA_405B_2NODE, SETTINGS) == parse_model(
        copy.deepcopy(LLAMA_405B_2NODE), SETTINGS
    )


def _model_with(model_changes=None, **spec_changes):
    new = with_spec(LLAMA_8B_1GPU, **spec_changes)
    new["spec"]["model"].update(model_changes or {})
    return new


# (body, the field the message names, a phrase of the message)
INVALID = {
    # Rules the schema states.
    "no source": (_model_with({"source": {}}), "spec.model.source", "exactly one"),
    "two sources": (
        _model_with({"source": {"path": "/m", "hub": "org/m"}}),
        "spec.model.source",
        "got path, hub",
    ),
    "three sources": (
        _model_with({"source": {"path": "/m", "hub": "org/m", **PVC_SOURCE}}),
        "spec.model.source",
        "exactly one",
    ),
    "prefill without decode": (
        with_spec(LLAMA_8B_PREFILL_DECODE, decode=None),
        "spec.prefill, spec.decode",
        "both or neither",
    ),
    "decode without prefill": (
        with_spec(LLAMA_8B_PREFILL_DECODE, prefill=None),
        "spec.prefill, spec.decode",
        "both or neither",
    ),
    "replicas with prefill/decode": (
        with_spec(LLAMA_8B_PREFILL_DECODE, replicas=1),
        "spec.replicas",
        "not with spec.prefill",
    ),
    "expert without moe": (
        _model_with(parallelism={"tensor": 1, "expert": True}),
        "spec.parallelism.expert",
        "spec.model.moe",
    ),
    "expert without moe in decode": (
        with_spec(LLAMA_8B_PREFILL_DECODE, decode={"parallelism": {"expert": True}, "replicas": 1}),
        "spec.decode.parallelism.expert",
        "spec.model.moe",
    ),
    "12 GPUs on 8-GPU nodes": (
        _model_with(parallelism={"tensor": 4, "pipeline": 3}, gpusPerNode=8),
        "spec.parallelism",
        "tensor × pipeline × data = 12 GPUs neither fits on one node (gpusPerNode 8) "
        "nor fills whole nodes",
    ),
    "prefill of 3 GPUs on 2-GPU nodes": (
        with_spec(
            LLAMA_8B_PREFILL_DECODE,
            gpusPerNode=2,
            prefill={"parallelism": {"tensor": 3}},
        ),
        "spec.prefill.parallelism",
        "neither fits",
    ),
    "CPU with tensor 2": (
        with_spec(SMOLLM2_CPU, parallelism={"tensor": 2}),
        "spec.parallelism",
        "gpusPerNode 0",
    ),
    "CPU with a decode of data 2": (
        with_spec(
            SMOLLM2_CPU,
            replicas=None,
            prefill={"replicas": 1},
            decode={"parallelism": {"data": 2}},
        ),
        "spec.decode.parallelism",
        "gpusPerNode 0",
    ),
    "the serve parallelism with prefill/decode": (
        with_spec(LLAMA_8B_PREFILL_DECODE, parallelism={"tensor": 12}),
        "spec.parallelism",
        "neither fits",
    ),
    # The name.
    "name of 41 characters": (
        {**LLAMA_8B_1GPU, "metadata": {"name": "a" * 41, "namespace": "n", "uid": "u"}},
        "metadata.name",
        "at most 40",
    ),
    "name with a dot": (
        {**LLAMA_8B_1GPU, "metadata": {"name": "llama.8b", "namespace": "n", "uid": "u"}},
        "metadata.name",
        "DNS label",
    ),
    "name starting with a digit": (
        {**LLAMA_8B_1GPU, "metadata": {"name": "8b", "namespace": "n", "uid": "u"}},
        "metadata.name",
        "starting with a letter",
    ),
    "no name": ({"spec": LLAMA_8B_1GPU["spec"]}, "metadata.name", "DNS label"),
    "StatefulSet names too long": (
        {
            **with_spec(
                LLAMA_8B_PREFILL_DECODE,
                prefill={"replicas": 11, "parallelism": {"tensor": 16}},
            ),
            "metadata": {"name": "a" * 40, "namespace": "n", "uid": "u"},
        },
        "spec.prefill.replicas",
        "a-prefill-10-w, longer than 52",
    ),
    # Bounds, enums and types (a CRD installed by hand may not check them).
    "tensor 0": (_model_with(parallelism={"tensor": 0}), "spec.parallelism.tensor", "1 to 64"),
    "pipeline 65": (
        _model_with(parallelism={"pipeline": 65}),
        "spec.parallelism.pipeline",
        "1 to 64",
    ),
    "data as a string": (
        _model_with(parallelism={"data": "2"}),
        "spec.parallelism.data",
        "integer",
    ),
    "expert as a string": (
        _model_with(parallelism={"expert": "yes"}),
        "spec.parallelism.expert",
        "true or false",
    ),
    "gpusPerNode 17": (_model_with(gpusPerNode=17), "spec.gpusPerNode", "0 to 16"),
    "replicas -1": (_model_with(replicas=-1), "spec.replicas", "0 to 1000"),
    "replicas true": (_model_with(replicas=True), "spec.replicas", "integer"),
    "decode replicas 1001": (
        with_spec(LLAMA_8B_PREFILL_DECODE, decode={"replicas": 1001}),
        "spec.decode.replicas",
        "0 to 1000",
    ),
    "router replicas 101": (
        _model_with(router={"replicas": 101}),
        "spec.router.replicas",
        "0 to 100",
    ),
    "router strategy": (
        _model_with(router={"strategy": "random"}),
        "spec.router.strategy",
        "prefix, round_robin",
    ),
    "dtype": (_model_with({"dtype": "int8"}), "spec.model.dtype", "one of"),
    "quantization": (_model_with({"quantization": "int4"}), "spec.model.quantization", "one of"),
    "maxModelLen 8": (_model_with({"maxModelLen": 8}), "spec.model.maxModelLen", "16 to"),
    "engineArgs not strings": (
        _model_with({"engineArgs": ["--max-num-seqs", 8]}),
        "spec.model.engineArgs",
        "strings",
    ),
    "servedName with a space": (
        _model_with({"servedName": "llama 8b"}),
        "spec.model.servedName",
        "whitespace",
    ),
    "relative path": (
        _model_with({"source": {"path": "models/llama"}}),
        "spec.model.source.path",
        "absolute",
    ),
    "pvc without claimName": (
        _model_with({"source": {"pvc": {"subPath": "m"}}}),
        "spec.model.source.pvc.claimName",
        "non-empty",
    ),
    "subPath escaping the volume": (
        _model_with({"source": {"pvc": {"claimName": "models", "subPath": "../etc"}}}),
        "spec.model.source.pvc.subPath",
        "relative",
    ),
    "absolute subPath": (
        _model_with({"source": {"pvc": {"claimName": "models", "subPath": "/etc"}}}),
        "spec.model.source.pvc.subPath",
        "relative",
    ),
    "pullPolicy": (
        _model_with(image={"pullPolicy": "Sometimes"}),
        "spec.image.pullPolicy",
        "one of",
    ),
    "empty engine image": (_model_with(image={"engine": ""}), "spec.image.engine", "non-empty"),
    "nodeSelector values": (
        _model_with(nodeSelector={"gpu": 1}),
        "spec.nodeSelector",
        "strings",
    ),
    "tolerations not a list": (
        _model_with(tolerations={"key": "x"}),
        "spec.tolerations",
        "list",
    ),
    "resources not an object": (_model_with(resources=["cpu"]), "spec.resources", "object"),
    "limits not an object": (
        _model_with(resources={"limits": "lots"}),
        "spec.resources.limits",
        "object",
    ),
    "spec not an object": ({**LLAMA_8B_1GPU, "spec": []}, "spec", "object"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_spec(case):
    invalid, field, phrase = INVALID[case]
    with pytest.raises(InvalidSpec) as caught:
        parse_model(invalid, SETTINGS)
    assert caught.value.reason == "InvalidSpec"
    assert caught.value.message.startswith(f"{field}:"), caught.value.message
    assert phrase in caught.value.message
    assert str(caught.value) == caught.value.message


def test_the_message_of_the_contract():
    invalid = _model_with(parallelism={"tensor": 4, "pipeline": 3}, gpusPerNode=8)
    with pytest.raises(InvalidSpec) as caught:
        parse_model(invalid, SETTINGS)
    assert caught.value.message == (
        "spec.parallelism: tensor × pipeline × data = 12 GPUs neither fits on one node "
        "(gpusPerNode 8) nor fills whole nodes"
    )


@pytest.mark.parametrize(
    "spec_changes",
    [
        {"parallelism": {"tensor": 8, "pipeline": 2}, "gpusPerNode": 8},  # whole nodes
        {"parallelism": {"tensor": 3}, "gpusPerNode": 8},  # fits on one node
        {"parallelism": {"tensor": 1, "expert": True}},  # with moe, below
        {"replicas": 0},
        {"router": {"replicas": 0}},
    ],
)
def test_valid_edges(spec_changes):
    valid = _model_with({"moe": True}, **spec_changes)
    parse_model(valid, SETTINGS)


def test_forty_characters_fit():
    name = "a" * 40
    metadata = {"name": name, "namespace": "n", "uid": "u"}
    valid = {**with_spec(LLAMA_405B_2NODE, replicas=1000), "metadata": metadata}
    assert parse_model(valid, SETTINGS).name == name  # a…a-serve-999-w: 52 characters
    prefill = {"replicas": 10, "parallelism": {"tensor": 16}}
    valid = {**with_spec(LLAMA_8B_PREFILL_DECODE, prefill=prefill), "metadata": metadata}
    assert parse_model(valid, SETTINGS).name == name  # a…a-prefill-9-w: 52 characters
