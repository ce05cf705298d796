"""Kernel tests run on the GPU when there is one, else in Triton's interpreter on the CPU
(small shapes; tests/conftest.py sets TRITON_INTERPRET before triton is imported)."""

import pytest
import torch


@pytest.fixture
def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
