"""Decode-only steps replayed from CUDA graphs.

NOTE: a decode step of an 8B model launches several hundred small kernels; eagerly, launching
them takes longer than running them at small batch sizes. A graph is captured once per padded
batch size (1, 2, 4, 8, 16, ...) over persistent input buffers, and a step of n decodes copies
its inputs into the first n rows, marks the padding rows (no KV write: slot -1; no context:
seq_len 0), and replays the graph of the smallest size >= n. The decode kernel divides each
sequence's blocks among its splits inside the kernel, so one graph serves every context length;
the block-table buffer is as wide as the longest sequence the model allows. Prompt chunks, and
decode batches larger than the largest graph, run eagerly.
"""

import bisect
import logging
import time
from dataclasses import dataclass

import torch

from fleetlm.engine.layers.attention import AttentionMetadata
from fleetlm.engine.models.llama import LlamaForCausalLM

logger = logging.getLogger(__name__)


@dataclass
class _DecodeBuffers:
    """Persistent inputs of every captured graph (a graph of size b reads rows [:b])."""

    input_ids: torch.Tensor  # [max_batch] int64
    positions: torch.Tensor  # [max_batch] int64
    slot_mapping: torch.Tensor  # [max_batch] int64
    block_tables: torch.Tensor  # [max_batch, max_blocks_per_seq] int64
    seq_lens: torch.Tensor  # [max_batch] int64

    def metadata(self, batch_size: int) -> AttentionMetadata:
        empty = self.seq_lens[:0]
        return AttentionMetadata(
            slot_mapping=self.slot_mapping[:batch_size],
            num_decodes=batch_size,
            decode_block_tables=self.block_tables[:batch_size],
            decode_seq_lens=self.seq_lens[:batch_size],
            chunk_query_lens=[],
            chunk_seq_lens=[],
            chunk_block_tables=self.block_tables[:0],
            chunk_query_start_loc=empty,
            chunk_seq_lens_tensor=empty,
            max_chunk_query_len=0,
        )


class CudaGraphRunner:
    def __init__(
        self,
        model: LlamaForCausalLM,
        kv_caches: list[torch.Tensor],
        batch_sizes: list[int],
        max_blocks_per_seq: int,
        device: torch.device,
    ) -> None:
        self.model = model
        self.kv_caches = kv_caches
        self.batch_sizes = sorted(batch_sizes)
        max_batch = self.batch_sizes[-1]
        int64 = {"dtype": torch.int64, "device": device}
        self.buffers = _DecodeBuffers(
            input_ids=torch.zeros(max_batch, **int64),
            positions=torch.zeros(max_batch, **int64),
            slot_mapping=torch.full((max_batch,), -1, **int64),
            block_tables=torch.zeros((max_batch, max_blocks_per_seq), **int64),
            seq_lens=torch.zeros(max_batch, **int64),
        )
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}  # batch size -> its graph's hidden states
        self.num_replays = 0

    @property
    def max_batch_size(self) -> int:
        return self.batch_sizes[-1]

    @torch.inference_mode()
    def capture(self) -> None:
        """Captures every size, largest first so the smaller graphs reuse its memory pool.

        The buffers hold padding rows only (slot -1, seq_len 0) while capturing, so the warm-up
        and captured runs write nothing into the KV cache.
        """
        torch.cuda.synchronize()
        started = time.monotonic()
        free_before, _ = torch.cuda.mem_get_info()
        pool = None
        buffers = self.buffers
        for batch_size in reversed(self.batch_sizes):
            metadata = buffers.metadata(batch_size)
            args = (buffers.input_ids[:batch_size], buffers.positions[:batch_size])
            self.model(*args, self.kv_caches, metadata)  # warm-up: Triton compiles here
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs[batch_size] = self.model(*args, self.kv_caches, metadata)
            pool = graph.pool()
            self.graphs[batch_size] = graph
        torch.cuda.synchronize()
        free_after, _ = torch.cuda.mem_get_info()
        logger.info(
            "captured %d CUDA graphs (decode batch sizes %d..%d) in %.1f s, using %.2f GiB",
            len(self.graphs),
            self.batch_sizes[0],
            self.max_batch_size,
            time.monotonic() - started,
            (free_before - free_after) / (1 << 30),
        )

    def padded_size(self, num_decodes: int) -> int | None:
        """The graph a step of `num_decodes` decodes replays; None if it is too large."""
        index = bisect.bisect_left(self.batch_sizes, num_decodes)
        return self.batch_sizes[index] if index < len(self.batch_sizes) else None

    def run(
        self,
        input_ids: torch.Tensor,  # [n]
        positions: torch.Tensor,  # [n]
        metadata: AttentionMetadata,  # decodes only
        batch_size: int,  # padded_size(n)
    ) -> torch.Tensor:  # [n, hidden_size]
        num_decodes = metadata.num_decodes
        assert batch_size in self.graphs and num_decodes <= batch_size and not metadata.num_chunks
        buffers = self.buffers
        buffers.input_ids[:num_decodes].copy_(input_ids)
        buffers.positions[:num_decodes].copy_(positions)
        buffers.slot_mapping[:num_decodes].copy_(metadata.slot_mapping)
        buffers.seq_lens[:num_decodes].copy_(metadata.decode_seq_lens)
        width = metadata.decode_block_tables.shape[1]
        buffers.block_tables[:num_decodes, :width].copy_(metadata.decode_block_tables)
        if batch_size > num_decodes:
            buffers.slot_mapping[num_decodes:batch_size].fill_(-1)
            buffers.seq_lens[num_decodes:batch_size].fill_(0)
        self.graphs[batch_size].replay()
        self.num_replays += 1
        return self.outputs[batch_size][:num_decodes]
