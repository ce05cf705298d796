"""Read the weights of a Hugging Face model directory (one safetensors file or many shards)."""

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open

from fleetlm.engine.errors import ModelNotFoundError

SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
SAFETENSORS_SINGLE_NAME = "model.safetensors"


def iter_safetensors_weights(model_dir: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield `(name, tensor)` for every tensor, one file open at a time."""
    for file in safetensors_files(model_dir):
        with safe_open(file, framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                yield name, f.get_tensor(name)


def safetensors_files(model_dir: Path) -> list[Path]:
    """The files holding the weights: those the index names, else the single or all files."""
    model_dir = Path(model_dir)
    index = model_dir / SAFETENSORS_INDEX_NAME
    if index.is_file():
        return _indexed_files(model_dir, index)
    if (model_dir / SAFETENSORS_SINGLE_NAME).is_file():
        return [model_dir / SAFETENSORS_SINGLE_NAME]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ModelNotFoundError(f"model directory '{model_dir}' has no .safetensors files")
    return files


def _indexed_files(model_dir: Path, index: Path) -> list[Path]:
    weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
    files = [model_dir / name for name in sorted(set(weight_map.values()))]
    missing = [file.name for file in files if not file.is_file()]
    if missing:
        raise ModelNotFoundError(f"{index} names missing shards: {', '.join(missing)}")
    return files
