"""Tiny fake requests for scheduler and KV-manager tests (no model, no torch)."""

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
