"""Triton GPU kernels of the engine, each with a pure-PyTorch reference in `reference.py`.

Importing a kernel module imports triton; the engine does so only on CUDA.
"""
