import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fleetlm.engine.errors import ModelNotFoundError
from fleetlm.engine.model_loader.source import (
    ModelSource,
    iter_weights,
    load_config_dict,
    load_generation_config,
    resolve_model_source,
)


def write_hf_dir(model_dir: Path) -> dict[str, torch.Tensor]:
    state_dict = {"model.norm.weight": torch.arange(4, dtype=torch.float32)}
    (model_dir / "config.json").write_text(json.dumps({"model_type": "llama"}))
    save_file(state_dict, model_dir / "model.safetensors")
    return state_dict


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model_source(tmp_path / "nope")


def test_empty_dir(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"has no config.json or \.gguf file"):
        resolve_model_source(tmp_path)


def test_other_file(tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"")
    with pytest.raises(ModelNotFoundError, match=r"not a \.gguf file"):
        resolve_model_source(tmp_path / "model.bin")


def test_hf_dir(tmp_path: Path) -> None:
    state_dict = write_hf_dir(tmp_path)
    (tmp_path / "extra.gguf").write_bytes(b"")  # config.json wins
    source = resolve_model_source(str(tmp_path))
    assert source == ModelSource(path=tmp_path, kind="hf")
    assert load_config_dict(source) == {"model_type": "llama"}
    assert load_generation_config(source) == {}
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": 2}))
    assert load_generation_config(source) == {"eos_token_id": 2}
    weights = dict(iter_weights(source))
    assert torch.equal(weights["model.norm.weight"], state_dict["model.norm.weight"])


def test_gguf_file_and_dir(tiny_gguf, tmp_path: Path) -> None:
    path, _ = tiny_gguf("llama")
    assert resolve_model_source(path) == ModelSource(path=path, kind="gguf")
    source = resolve_model_source(tmp_path)  # the directory holding exactly one .gguf
    assert source == ModelSource(path=path, kind="gguf")
    assert load_config_dict(source)["model_type"] == "llama"
    assert load_generation_config(source) == {}
    assert "model.embed_tokens.weight" in dict(iter_weights(source))


def test_dir_with_several_gguf(tmp_path: Path) -> None:
    (tmp_path / "a.gguf").write_bytes(b"")
    (tmp_path / "b.gguf").write_bytes(b"")
    with pytest.raises(ModelNotFoundError, match="several"):
        resolve_model_source(tmp_path)
