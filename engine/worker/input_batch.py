"""Turning a `SchedulerOutput` into the tensors of one forward pass."""

from dataclasses import dataclass

import numpy as np
import torch

from fleetlm.engine.core.scheduler_output import SchedulerOutput
from fleetlm.engine.layers.attention import AttentionMetadata
from fleetlm.engine.sampling_params import SamplingParams


@dataclass
class CachedRequestState:
    """What the runner keeps about a request between steps."""

    req_id: str
    token_ids: list[int]  # prompt + generated
    num_prompt_tokens: int
    sampling_params: SamplingParams
    block_ids: list[int]
    num_computed_tokens: int
    num_pending: int = 0  # tokens sampled by launched steps, not in `token_ids` yet

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.token_ids[: self.num_prompt_tokens]

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]


@dataclass
class PromptLogprobsSpan:
    """Rows of `hidden` whose logits score prompt tokens of one request."""

    req_id: str
    first_row: int  # row in the step's hidden states
    first_token: int  # index of the first prompt token scored (>= 1)
    num_tokens: int


@dataclass
class ModelInputs:
    input_ids: torch.Tensor  # [num_tokens]
    positions: torch.Tensor  # [num_tokens]
    metadata: AttentionMetadata
    req_ids: list[str]  # [num_reqs], batch order (decodes first)
    sampling_req_ids: list[str]  # requests that get a new token this step
    logits_indices: torch.Tensor  # [num_sampling]: row of each one's last token
    prompt_logprobs_spans: list[PromptLogprobsSpan]
    # (rows of input_ids, rows of the previous step's sampled tokens): input tokens that are
    # still on the device; None when every input token is on the host
    pending_token_rows: tuple[torch.Tensor, torch.Tensor] | None = None


def prepare_inputs(
    states: dict[str, CachedRequestState],
    scheduler_output: SchedulerOutput,
    block_size: int,
    device: torch.device,
    last_sampled_rows: dict[str, int] | None = None,
) -> ModelInputs:
    """Builds every integer input on the host in numpy and moves them in one copy.

    A request's input token that is still being sampled (its state's `num_pending`) is left
    as 0 here; `pending_token_rows` says where the caller copies it from on the device
    (`last_sampled_rows`: request -> its row in the previous step's sampled tokens).
    """
    num_scheduled = scheduler_output.num_scheduled_tokens
    # Decodes (one new token) first: they share one batched attention call.
    req_ids = sorted(num_scheduled, key=lambda r: num_scheduled[r] != 1)
    num_decodes = sum(1 for r in req_ids if num_scheduled[r] == 1)
    input_ids: list[int] = []
    starts, counts = [], []
    sampling_req_ids, logits_rows, spans = [], [], []
    pending_rows, pending_sources = [], []
    for req_id in req_ids:
        state = states[req_id]
        start, end = state.num_computed_tokens, state.num_computed_tokens + num_scheduled[req_id]
        first_row = len(input_ids)
        input_ids.extend(state.token_ids[start:end])
        if end > len(state.token_ids):  # the last input token is the previous step's output
            if end != len(state.token_ids) + 1 or not state.num_pending:
                raise RuntimeError(f"request {req_id!r}: input tokens are not known yet")
            pending_rows.append(len(input_ids))
            pending_sources.append(last_sampled_rows[req_id])
            input_ids.append(0)
        starts.append(start)
        counts.append(end - start)
        if end == len(state.token_ids) + state.num_pending:
            sampling_req_ids.append(req_id)
            logits_rows.append(len(input_ids) - 1)
        span = _prompt_logprobs_span(state, start, end, first_row)
        if span is not None:
            spans.append(span)

    starts_np = np.array(starts, dtype=np.int64)
    counts_np = np.array(counts, dtype=np.int64)
    seq_lens = starts_np + counts_np
    # positions: each request's range [start, start + count), concatenated
    row_starts = np.cumsum(counts_np) - counts_np
    positions = np.arange(len(input_ids), dtype=np.int64) + np.repeat(
        starts_np - row_starts, counts
    )
    block_tables = _block_tables([states[r].block_ids for r in req_ids])
    row_of_token = np.repeat(np.arange(len(req_ids)), counts)
    slots = (
        block_tables[row_of_token, positions // block_size] * block_size + positions % block_size
    )
    chunk_query_start_loc = np.concatenate(([0], np.cumsum(counts_np[num_decodes:])))
    host = _HostArrays()
    input_ids_t = host.add(np.array(input_ids, dtype=np.int64))
    positions_t = host.add(positions)
    slots_t = host.add(slots)
    logits_t = host.add(np.array(logits_rows, dtype=np.int64))
    decode_tables_t = host.add(
        _trim(block_tables[:num_decodes], seq_lens[:num_decodes], block_size)
    )
    decode_seq_lens_t = host.add(seq_lens[:num_decodes])
    chunk_tables_t = host.add(_trim(block_tables[num_decodes:], seq_lens[num_decodes:], block_size))
    chunk_qsl_t = host.add(chunk_query_start_loc)
    chunk_seq_lens_t = host.add(seq_lens[num_decodes:])
    pending_t = host.add(np.array([pending_rows, pending_sources], dtype=np.int64))
    tensors = host.to(device)
    chunk_query_lens = counts[num_decodes:]
    metadata = AttentionMetadata(
        slot_mapping=tensors[slots_t],
        num_decodes=num_decodes,
        decode_block_tables=tensors[decode_tables_t],
        decode_seq_lens=tensors[decode_seq_lens_t],
        chunk_query_lens=chunk_query_lens,
        chunk_seq_lens=seq_lens[num_decodes:].tolist(),
        chunk_block_tables=tensors[chunk_tables_t],
        chunk_query_start_loc=tensors[chunk_qsl_t],
        chunk_seq_lens_tensor=tensors[chunk_seq_lens_t],
        max_chunk_query_len=max(chunk_query_lens, default=0),
    )
    return ModelInputs(
        input_ids=tensors[input_ids_t],
        positions=tensors[positions_t],
        metadata=metadata,
        req_ids=req_ids,
        sampling_req_ids=sampling_req_ids,
        logits_indices=tensors[logits_t],
        prompt_logprobs_spans=spans,
        pending_token_rows=(
            (tensors[pending_t][0], tensors[pending_t][1]) if pending_rows else None
        ),
    )


def _block_tables(block_ids: list[list[int]]) -> np.ndarray:
    """[num_reqs, max_blocks] int64, rows right-padded with block 0."""
    width = max((len(ids) for ids in block_ids), default=0)
    table = np.zeros((len(block_ids), width), dtype=np.int64)
    for row, ids in enumerate(block_ids):
        table[row, : len(ids)] = ids
    return table


def _trim(table: np.ndarray, seq_lens: np.ndarray, block_size: int) -> np.ndarray:
    """The columns these rows' contexts use (a request may hold blocks for later tokens)."""
    width = int(-(-seq_lens.max() // block_size)) if len(seq_lens) else 0
    return table[:, :width]


class _HostArrays:
    """int64 arrays packed into one host buffer so they reach the device in a single copy."""

    def __init__(self) -> None:
        self.arrays: list[np.ndarray] = []

    def add(self, array: np.ndarray) -> int:
        self.arrays.append(array)
        return len(self.arrays) - 1

    def to(self, device: torch.device) -> list[torch.Tensor]:
        flat = np.concatenate([a.reshape(-1) for a in self.arrays]) if self.arrays else None
        packed = torch.from_numpy(flat if flat is not None else np.zeros(0, np.int64))
        if device.type == "cuda":
            packed = packed.pin_memory().to(device, non_blocking=True)
        views, offset = [], 0
        for array in self.arrays:
            views.append(packed[offset : offset + array.size].view(array.shape))
            offset += array.size
        return views


def _prompt_logprobs_span(
    state: CachedRequestState, start: int, end: int, first_row: int
) -> PromptLogprobsSpan | None:
    """Position p's logits score prompt token p + 1, for p in [start, min(end, P - 1))."""
    if state.sampling_params.prompt_logprobs is None:
        return None
    last = min(end, state.num_prompt_tokens - 1)
    if last <= start:
        return None
    return PromptLogprobsSpan(state.req_id, first_row, start + 1, last - start)


def profile_metadata(
    seq_lens: list[int], block_size: int, device: torch.device
) -> AttentionMetadata:
    """Whole prompts of these lengths, each in its own run of consecutive blocks."""
    blocks_per_seq = -(-max(seq_lens) // block_size)
    tables = np.arange(len(seq_lens) * blocks_per_seq, dtype=np.int64).reshape(len(seq_lens), -1)
    slots = np.concatenate(
        [tables[i, 0] * block_size + np.arange(n) for i, n in enumerate(seq_lens)]
    )

    def as_tensor(values) -> torch.Tensor:
        return torch.as_tensor(values, dtype=torch.int64, device=device)

    return AttentionMetadata(
        slot_mapping=as_tensor(slots),
        num_decodes=0,
        decode_block_tables=as_tensor(np.zeros((0, 1))),
        decode_seq_lens=as_tensor(np.zeros(0)),
        chunk_query_lens=list(seq_lens),
        chunk_seq_lens=list(seq_lens),
        chunk_block_tables=as_tensor(tables),
        chunk_query_start_loc=as_tensor(np.concatenate(([0], np.cumsum(seq_lens)))),
        chunk_seq_lens_tensor=as_tensor(seq_lens),
        max_chunk_query_len=max(seq_lens),
    )
