import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fleetlm.engine.errors import ModelNotFoundError
from fleetlm.engine.model_loader.safetensors_loader import iter_safetensors_weights


def random_state_dict() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        f"model.layers.{i}.{name}": torch.randn(shape, generator=generator)
        for i in range(3)
        for name, shape in (("mlp.up_proj.weight", (6, 4)), ("input_layernorm.weight", (4,)))
    }


def write_hf_shards(model_dir: Path, state_dict: dict[str, torch.Tensor], num_shards: int) -> None:
    """Shards and index in the Hugging Face layout, written by hand."""
    names = list(state_dict)
    weight_map = {}
    for i in range(num_shards):
        file = f"model-{i + 1:05d}-of-{num_shards:05d}.safetensors"
        shard = {name: state_dict[name] for name in names[i::num_shards]}
        save_file(shard, model_dir / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, file))
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (model_dir / "model.safetensors.index.json").write_text(json.dumps(index))


def test_sharded_with_index(tmp_path: Path) -> None:
    state_dict = random_state_dict()
    write_hf_shards(tmp_path, state_dict, num_shards=3)
    (tmp_path / "stray.safetensors").write_bytes(b"not named by the index")
    loaded = dict(iter_safetensors_weights(tmp_path))
    assert loaded.keys() == state_dict.keys()
    for name, tensor in state_dict.items():
        assert torch.equal(loaded[name], tensor)


def test_single_file(tmp_path: Path) -> None:
    state_dict = random_state_dict()
    save_file(state_dict, tmp_path / "model.safetensors")
    loaded = dict(iter_safetensors_weights(tmp_path))
    assert all(torch.equal(loaded[name], tensor) for name, tensor in state_dict.items())
    assert loaded.keys() == state_dict.keys()


def test_unindexed_files(tmp_path: Path) -> None:
    state_dict = random_state_dict()
    names = list(state_dict)
    save_file({name: state_dict[name] for name in names[:2]}, tmp_path / "a.safetensors")
    save_file({name: state_dict[name] for name in names[2:]}, tmp_path / "b.safetensors")
    assert dict(iter_safetensors_weights(tmp_path)).keys() == state_dict.keys()


def test_no_safetensors(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelNotFoundError, match=r"no \.safetensors"):
        list(iter_safetensors_weights(tmp_path))


def test_index_names_missing_shard(tmp_path: Path) -> None:
    write_hf_shards(tmp_path, random_state_dict(), num_shards=2)
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ModelNotFoundError, match="model-00002-of-00002"):
        list(iter_safetensors_weights(tmp_path))
