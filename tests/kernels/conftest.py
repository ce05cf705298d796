"""Kernel tests run on the GPU when there is one, else in Triton's interpreter on the CPU
(small shapes). The variable must be set before triton compiles anything."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
