"""Sizing and allocating the paged KV cache: one preallocated tensor for all layers."""

import logging

import torch

from fleetlm.engine.config import CacheConfig
from fleetlm.engine.model_loader.arch_config import ArchConfig

logger = logging.getLogger(__name__)

GIB = 1 << 30


def bytes_per_block(arch: ArchConfig, block_size: int, dtype: torch.dtype) -> int:
    """K and V of `block_size` tokens in every layer."""
    elem = torch.empty((), dtype=dtype).element_size()
    return 2 * arch.num_hidden_layers * block_size * arch.num_key_value_heads * arch.head_dim * elem


def num_blocks_for_budget(
    cache: CacheConfig, arch: ArchConfig, dtype: torch.dtype, device: torch.device
) -> int:
    """Blocks fitting the budget: GiB on CPU; on CUDA a fraction of the device memory,
    minus what the weights and the activations of a profiling pass already use."""
    if cache.num_blocks_override is not None:
        return cache.num_blocks_override
    per_block = bytes_per_block(arch, cache.block_size, dtype)
    if device.type == "cpu":
        return int(cache.cpu_kv_cache_gib * GIB) // per_block
    free, total = torch.cuda.mem_get_info(device)
    # The profiling pass set the peak of torch's own allocations (weights + activations);
    # memory outside torch (CUDA context, cuBLAS workspaces, NCCL) is counted as used.
    peak = torch.cuda.max_memory_allocated(device)
    non_torch = max(0, (total - free) - torch.cuda.memory_reserved(device))
    allowed = int(total * cache.gpu_memory_utilization)
    budget = allowed - peak - non_torch
    logger.info(
        "GPU memory: %.2f GiB allowed, torch peak %.2f GiB, outside torch %.2f GiB, "
        "KV cache %.2f GiB",
        allowed / GIB,
        peak / GIB,
        non_torch / GIB,
        max(budget, 0) / GIB,
    )
    if budget <= 0:
        raise RuntimeError(
            f"no memory left for the KV cache (peak use {(peak + non_torch) / GIB:.2f} GiB of "
            f"{allowed / GIB:.2f} GiB allowed); lower max_num_batched_tokens or raise "
            "gpu_memory_utilization"
        )
    return budget // per_block


def allocate_kv_cache(
    arch: ArchConfig, num_blocks: int, block_size: int, dtype: torch.dtype, device: torch.device
) -> list[torch.Tensor]:
    """Views, one per layer, of [2, num_blocks, block_size, num_kv_heads, head_dim]."""
    shape = (
        arch.num_hidden_layers,
        2,
        num_blocks,
        block_size,
        arch.num_key_value_heads,
        arch.head_dim,
    )
    # Zeroed: masked-out slots are still multiplied by zero weights, so they must be finite.
    kv_cache = torch.zeros(shape, dtype=dtype, device=device)
    return list(kv_cache.unbind(0))
