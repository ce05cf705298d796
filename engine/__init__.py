"""The fleetlm inference engine.

Kept light on purpose: importing `fleetlm.engine` does not import torch. The public names are
resolved lazily, so torch-free code (the router, the operator) can import shared types from
submodules such as `fleetlm.engine.sampling_params`.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fleetlm.engine.errors import InvalidRequestError, ModelNotFoundError
    from fleetlm.engine.llm import LLM
    from fleetlm.engine.outputs import CompletionOutput, Logprob, RequestOutput
    from fleetlm.engine.sampling_params import SamplingParams

_LAZY_NAMES = {
    "LLM": "fleetlm.engine.llm",
    "SamplingParams": "fleetlm.engine.sampling_params",
    "RequestOutput": "fleetlm.engine.outputs",
    "CompletionOutput": "fleetlm.engine.outputs",
    "Logprob": "fleetlm.engine.outputs",
    "InvalidRequestError": "fleetlm.engine.errors",
    "ModelNotFoundError": "fleetlm.engine.errors",
}

__all__ = [
    "LLM",
    "CompletionOutput",
    "InvalidRequestError",
    "Logprob",
    "ModelNotFoundError",
    "RequestOutput",
    "SamplingParams",
]


def __getattr__(name: str) -> Any:
    module_name = _LAZY_NAMES.get(name)
    if module_name is None:
        raise AttributeError(f"module 'fleetlm.engine' has no attribute {name!r}")
    return getattr(import_module(module_name), name)
