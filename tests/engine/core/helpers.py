"""Tiny fake requests for scheduler and KV-manager tests (no model, no torch), and a tiny
random-weight model for the engine-core tests."""

import json
from pathlib import Path

from fleetlm.engine.config import EngineArgs
from fleetlm.engine.core.request import Request
from fleetlm.engine.sampling_params import SamplingParams

EOS = 0


def make_request(
    request_id: str,
    num_prompt_tokens: int = 10,
    max_tokens: int = 4,
    first_token: int | None = None,
    **params,
) -> Request:
    """Prompts are consecutive ids; by default they start at a value derived from the id, so
    different requests do not share a prefix."""
    if first_token is None:
        first_token = 1000 * sum(map(ord, request_id))
    prompt = list(range(first_token, first_token + num_prompt_tokens))
    return Request(
        request_id, prompt, SamplingParams(max_tokens=max_tokens, **params), eos_token_ids=(EOS,)
    )


def tiny_engine_args(model_dir: Path, eos_token_id: int | None = None) -> EngineArgs:
    """A 2-layer Llama with random weights (config.json written into `model_dir`), on CPU in
    float32, with 64 KV blocks of 4 tokens and no tokenizer."""
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": 256,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 128,
        "max_position_embeddings": 256,
    }
    if eos_token_id is not None:
        config.update(bos_token_id=1, eos_token_id=eos_token_id)
    (model_dir / "config.json").write_text(json.dumps(config))
    return EngineArgs(
        model=str(model_dir),
        load_format="dummy",
        skip_tokenizer_init=True,
        dtype="float32",
        device="cpu",
        num_gpu_blocks_override=64,
        block_size=4,
    )
