"""Convert a GGUF file into a Hugging Face model directory (float32 safetensors + tokenizer)."""

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from fleetlm.engine.model_loader.gguf_loader import (
    config_from_reader,
    open_gguf,
    weights_from_reader,
)
from fleetlm.engine.model_loader.safetensors_loader import (
    SAFETENSORS_INDEX_NAME,
    SAFETENSORS_SINGLE_NAME,
)

Weights = Iterable[tuple[str, torch.Tensor]]


def convert_gguf_to_hf(
    gguf_path: Path,
    out_dir: Path,
    max_shard_size_mb: int | None = None,
    *,
    write_tokenizer: bool = True,
) -> Path:
    """Write config.json, generation_config.json, safetensors and tokenizer files to `out_dir`.

    Tied embeddings stay tied: the GGUF has no `output.weight`, so no `lm_head.weight` is written.
    `write_tokenizer=False` skips the tokenizer (about 10 s through transformers).
    """
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    reader = open_gguf(gguf_path)
    config = config_from_reader(reader)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(out_dir / "config.json", config)
    _write_json(out_dir / "generation_config.json", generation_config(config))
    max_shard_bytes = None if max_shard_size_mb is None else max_shard_size_mb * 2**20
    save_safetensors(weights_from_reader(reader), out_dir, max_shard_bytes)
    if write_tokenizer:
        save_gguf_tokenizer(gguf_path, out_dir)
    return out_dir


def generation_config(config: dict[str, Any]) -> dict[str, Any]:
    return {key: config[key] for key in ("bos_token_id", "eos_token_id") if key in config}


def save_safetensors(weights: Weights, out_dir: Path, max_shard_bytes: int | None = None) -> None:
    """Write `model.safetensors`, or `model-0000i-of-0000N.safetensors` shards plus the index.

    Shards are written as they fill (only one is held in memory) and renamed at the end, once
    their number is known.
    """
    shard_files, weight_map, total_bytes = [], {}, 0
    for i, shard in enumerate(_iter_shards(weights, max_shard_bytes)):
        shard_files.append(out_dir / f"model-shard-{i}.partial")
        save_file(shard, shard_files[-1], metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, i))
        total_bytes += sum(_num_bytes(tensor) for tensor in shard.values())
    if len(shard_files) == 1:
        shard_files[0].rename(out_dir / SAFETENSORS_SINGLE_NAME)
        return
    names = [
        f"model-{i + 1:05d}-of-{len(shard_files):05d}.safetensors" for i in range(len(shard_files))
    ]
    for file, name in zip(shard_files, names, strict=True):
        file.rename(out_dir / name)
    index = {
        "metadata": {"total_size": total_bytes},
        "weight_map": {tensor: names[i] for tensor, i in weight_map.items()},
    }
    _write_json(out_dir / SAFETENSORS_INDEX_NAME, index)


def save_gguf_tokenizer(gguf_path: Path, out_dir: Path) -> None:
    """Let transformers build the tokenizer from GGUF metadata (keeps the chat template)."""
    from transformers import AutoTokenizer  # slow to import; only conversion needs it

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    tokenizer.save_pretrained(out_dir)


def _iter_shards(
    weights: Weights, max_shard_bytes: int | None
) -> Iterator[dict[str, torch.Tensor]]:
    shard: dict[str, torch.Tensor] = {}
    shard_bytes = 0
    for name, tensor in weights:
        if (
            shard
            and max_shard_bytes is not None
            and shard_bytes + _num_bytes(tensor) > max_shard_bytes
        ):
            yield shard
            shard, shard_bytes = {}, 0
        shard[name] = tensor.contiguous()
        shard_bytes += _num_bytes(tensor)
    yield shard


def _num_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
