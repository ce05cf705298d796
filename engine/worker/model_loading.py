"""Building the model on the device and filling its weights (checkpoint or random)."""

import torch

from fleetlm.engine.config import ModelConfig
from fleetlm.engine.layers.attention import attention_backend_for
from fleetlm.engine.model_loader.source import iter_weights
from fleetlm.engine.models.llama import LlamaForCausalLM


def load_model(config: ModelConfig, device: torch.device, dtype: torch.dtype) -> LlamaForCausalLM:
    """Weights go straight to the device, cast to `dtype` one tensor at a time."""
    with torch.device(device):
        model = LlamaForCausalLM(
            config.arch, max_position=config.max_model_len, attention=attention_backend_for(device)
        )
    model.to(dtype=dtype)
    if config.load_format == "dummy":
        _init_dummy_weights(model, config.seed)
    else:
        model.load_weights(iter_weights(config.source))
    return model.eval()


def _init_dummy_weights(model: torch.nn.Module, seed: int) -> None:
    """Random weights of a realistic scale (norm weights 1), drawn on the device, for benchmarks."""
    for index, (name, param) in enumerate(model.named_parameters()):
        if "norm" in name:
            param.data.fill_(1.0)
        else:
            generator = torch.Generator(param.device).manual_seed(seed * 100_003 + index)
            param.data.uniform_(-1e-2, 1e-2, generator=generator)
