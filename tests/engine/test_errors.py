"""Bad input raises a precise error and changes nothing else."""

import pytest

from fleetlm.engine import LLM, InvalidRequestError, ModelNotFoundError, SamplingParams

from .smollm2 import ENGINE_KWARGS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def llm(smollm2_dir):
    return LLM(str(smollm2_dir), **ENGINE_KWARGS)


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"min_p": 2.0}, "min_p"),
        ({"n": 0}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"min_tokens": 5, "max_tokens": 2}, "min_tokens"),
        ({"presence_penalty": 3.0}, "presence_penalty"),
        ({"frequency_penalty": -2.5}, "frequency_penalty"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"logprobs": -1}, "logprobs"),
        ({"stop": [""]}, "stop"),
    ],
)
def test_invalid_sampling_values_name_the_parameter(kwargs, param):
    with pytest.raises(InvalidRequestError) as error:
        SamplingParams(**kwargs)
    assert error.value.param == param


@pytest.mark.parametrize(
    ("prompt", "params", "match"),
    [
        ("", SamplingParams(), "empty"),
        ([], SamplingParams(), "empty"),
        ("word " * 600, SamplingParams(), "longer than the maximum model length"),
        ([1, 2, 49152], SamplingParams(), "outside the vocabulary"),
        ([1, -1], SamplingParams(), "outside the vocabulary"),
        (["a", "b"], SamplingParams(), "string or a list of token ids"),
        ("hi", SamplingParams(logprobs=21), "exceeds the maximum"),
        ("hi", SamplingParams(stop_token_ids=[10**6]), "inside the vocabulary"),
    ],
)
def test_bad_requests_raise_and_leave_the_batch_untouched(llm, prompt, params, match):
    good = "The capital of France is"
    with pytest.raises(InvalidRequestError, match=match):
        # The bad prompt comes second: the good one must not have started either.
        llm.generate([good, prompt], [SamplingParams(max_tokens=2), params], use_tqdm=False)
    assert not llm.engine.has_unfinished_requests()
    assert not llm.engine.output_processor.has_unfinished_requests()
    stats = llm.engine.get_stats()
    assert stats.num_free_blocks == stats.num_blocks
    # The engine still works.
    assert llm.generate([good], SamplingParams(max_tokens=2), use_tqdm=False)[0].finished


def test_wrong_number_of_sampling_params(llm):
    with pytest.raises(InvalidRequestError, match="2 sampling params for 1 prompts"):
        llm.generate(["a"], [SamplingParams(), SamplingParams()], use_tqdm=False)


def test_duplicate_request_id_is_refused(llm):
    llm.engine.add_request("same", "hello", SamplingParams(max_tokens=1))
    with pytest.raises(ValueError, match="already in use"):
        llm.engine.add_request("same", "hello", SamplingParams(max_tokens=1))
    while llm.engine.has_unfinished_requests():
        llm.engine.step()


def test_unknown_model_path(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        LLM(str(tmp_path / "missing"))
    with pytest.raises(ModelNotFoundError):
        LLM(str(tmp_path))  # exists, but holds no model


def test_text_prompt_without_tokenizer(smollm2_dir):
    llm = LLM(str(smollm2_dir), skip_tokenizer_init=True, **ENGINE_KWARGS)
    with pytest.raises(InvalidRequestError, match="no tokenizer"):
        llm.generate("hello", use_tqdm=False)
    out = llm.generate([[1, 2, 3]], SamplingParams(max_tokens=2, ignore_eos=True), use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 2


def test_max_model_len_larger_than_the_model_allows(smollm2_dir):
    with pytest.raises(ValueError, match="max_model_len"):
        LLM(str(smollm2_dir), max_model_len=10**6)
