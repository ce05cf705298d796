"""Serving the GGUF file directly equals serving its Hugging Face conversion."""

import pytest

from fleetlm.cli import main
from fleetlm.engine import LLM, SamplingParams

from .smollm2 import ENGINE_KWARGS, PROMPTS

pytestmark = pytest.mark.slow


def test_gguf_file_and_converted_directory_generate_the_same(smollm2_gguf, smollm2_dir):
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    from_gguf = LLM(str(smollm2_gguf), **ENGINE_KWARGS).generate(
        PROMPTS[:3], params, use_tqdm=False
    )
    from_dir = LLM(str(smollm2_dir), **ENGINE_KWARGS).generate(PROMPTS[:3], params, use_tqdm=False)
    assert [o.outputs[0].text for o in from_gguf] == [o.outputs[0].text for o in from_dir]
    assert [o.prompt_token_ids for o in from_gguf] == [o.prompt_token_ids for o in from_dir]


def test_cli_prints_the_default_model_directory(smollm2_dir, capsys):
    assert main(["convert-gguf"]) == 0
    assert capsys.readouterr().out.strip() == str(smollm2_dir)


def test_cli_chat_answers(smollm2_dir, capsys):
    assert main(["chat", "What is the capital of France?", "--max-tokens", "16"]) == 0
    assert "Paris" in capsys.readouterr().out
