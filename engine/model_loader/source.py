"""Where a model's files are, and reading its config and weights whatever the format."""

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from fleetlm.engine.errors import ModelNotFoundError
from fleetlm.engine.model_loader.safetensors_loader import iter_safetensors_weights


@dataclass(frozen=True)
class ModelSource:
    path: Path  # the model directory for "hf", the .gguf file for "gguf"
    kind: Literal["hf", "gguf"]


def resolve_model_source(model: str | Path) -> ModelSource:
    """A directory with config.json, a .gguf file, or a directory holding exactly one .gguf."""
    path = Path(model).expanduser()
    if not path.exists():
        raise ModelNotFoundError(f"model path '{model}' does not exist")
    if path.is_file():
        if path.suffix == ".gguf":
            return ModelSource(path=path, kind="gguf")
        raise ModelNotFoundError(f"model path '{model}' is a file but not a .gguf file")
    if (path / "config.json").is_file():
        return ModelSource(path=path, kind="hf")
    gguf_files = sorted(path.glob("*.gguf"))
    if len(gguf_files) == 1:
        return ModelSource(path=gguf_files[0], kind="gguf")
    if gguf_files:
        names = ", ".join(file.name for file in gguf_files)
        raise ModelNotFoundError(
            f"model path '{model}' holds several .gguf files ({names}); pass one"
        )
    raise ModelNotFoundError(f"model path '{model}' has no config.json or .gguf file")


def load_config_dict(source: ModelSource) -> dict[str, Any]:
    if source.kind == "gguf":
        from fleetlm.engine.model_loader.gguf_loader import read_gguf_config  # needs `gguf`

        return read_gguf_config(source.path)
    return json.loads((source.path / "config.json").read_text())


def iter_weights(source: ModelSource) -> Iterator[tuple[str, torch.Tensor]]:
    if source.kind == "gguf":
        from fleetlm.engine.model_loader.gguf_loader import iter_gguf_weights  # needs `gguf`

        return iter_gguf_weights(source.path)
    return iter_safetensors_weights(source.path)


def load_generation_config(source: ModelSource) -> dict[str, Any]:
    """generation_config.json of a Hugging Face directory; {} when absent or for a GGUF file."""
    if source.kind == "gguf":
        return {}
    path = source.path / "generation_config.json"
    return json.loads(path.read_text()) if path.is_file() else {}
