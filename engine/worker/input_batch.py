"""Turning a `SchedulerOutput` into the tensors of one forward pass."""

from dataclasses import dataclass

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


def prepare_inputs(
    states: dict[str, CachedRequestState],
    scheduler_output: SchedulerOutput,
    block_size: int,
    device: torch.device,
) -> ModelInputs:
    num_scheduled = scheduler_output.num_scheduled_tokens
    # Decodes (one new token) first: they share one batched attention call.
    req_ids = sorted(num_scheduled, key=lambda r: num_scheduled[r] != 1)
    input_ids: list[int] = []
    positions: list[int] = []
    slots: list[int] = []
    sampling_req_ids, logits_rows, spans = [], [], []
    for req_id in req_ids:
        state = states[req_id]
        start, end = state.num_computed_tokens, state.num_computed_tokens + num_scheduled[req_id]
        first_row = len(input_ids)
        input_ids.extend(state.token_ids[start:end])
        positions.extend(range(start, end))
        slots.extend(
            state.block_ids[p // block_size] * block_size + p % block_size
            for p in range(start, end)
        )
        if end == len(state.token_ids):
            sampling_req_ids.append(req_id)
            logits_rows.append(len(input_ids) - 1)
        span = _prompt_logprobs_span(state, start, end, first_row)
        if span is not None:
            spans.append(span)

    def as_tensor(values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int64, device=device)

    return ModelInputs(
        input_ids=as_tensor(input_ids),
        positions=as_tensor(positions),
        metadata=_attention_metadata(states, req_ids, num_scheduled, as_tensor(slots), device),
        req_ids=req_ids,
        sampling_req_ids=sampling_req_ids,
        logits_indices=as_tensor(logits_rows),
        prompt_logprobs_spans=spans,
    )


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


def _attention_metadata(states, req_ids, num_scheduled, slot_mapping, device) -> AttentionMetadata:
    decode_ids = [r for r in req_ids if num_scheduled[r] == 1]
    chunk_ids = req_ids[len(decode_ids) :]

    def seq_len(req_id: str) -> int:
        return states[req_id].num_computed_tokens + num_scheduled[req_id]

    max_blocks = max((len(states[r].block_ids) for r in decode_ids), default=0)
    decode_tables = [
        states[r].block_ids + [0] * (max_blocks - len(states[r].block_ids)) for r in decode_ids
    ]
    return AttentionMetadata(
        slot_mapping=slot_mapping,
        num_decodes=len(decode_ids),
        decode_block_tables=torch.tensor(decode_tables, dtype=torch.int64, device=device),
        decode_seq_lens=torch.tensor(
            [seq_len(r) for r in decode_ids], dtype=torch.int64, device=device
        ),
        chunk_query_lens=[num_scheduled[r] for r in chunk_ids],
        chunk_seq_lens=[seq_len(r) for r in chunk_ids],
        chunk_block_tables=[
            torch.tensor(states[r].block_ids, dtype=torch.int64, device=device) for r in chunk_ids
        ],
    )
