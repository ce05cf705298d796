"""Everything on the device: the model, the KV cache, input tensors and sampling."""

import logging
import time
from dataclasses import dataclass

import torch

from fleetlm.engine.config import EngineConfig
from fleetlm.engine.core.scheduler_output import ModelRunnerOutput, SchedulerOutput, TokenLogprobs
from fleetlm.engine.models.llama import LlamaForCausalLM
from fleetlm.engine.sample.logprobs import LogprobsTensors, compute_logprobs
from fleetlm.engine.sample.metadata import build_sampling_metadata
from fleetlm.engine.sample.sampler import Sampler, SamplerOutput
from fleetlm.engine.sampling_params import SamplingParams
from fleetlm.engine.worker.cuda_graphs import CudaGraphRunner
from fleetlm.engine.worker.input_batch import (
    CachedRequestState,
    ModelInputs,
    prepare_inputs,
    profile_metadata,
)
from fleetlm.engine.worker.kv_cache import allocate_kv_cache, num_blocks_for_budget
from fleetlm.engine.worker.model_loading import load_model

logger = logging.getLogger(__name__)


class ModelRunner:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.device = torch.device(config.device)
        self.dtype = getattr(torch, config.model.dtype)
        self.block_size = config.cache.block_size
        self.vocab_size = config.model.arch.vocab_size
        self.eos_token_ids = config.model.eos_token_ids
        started = time.monotonic()
        self.model: LlamaForCausalLM = load_model(config.model, self.device, self.dtype)
        logger.info(
            "loaded %s (%s) in %.1f s",
            config.model.model,
            config.model.dtype,
            time.monotonic() - started,
        )
        self.sampler = Sampler()
        self.generator = torch.Generator(self.device).manual_seed(config.model.seed)
        self.seeded_generators: dict[str, torch.Generator] = {}
        self.requests: dict[str, CachedRequestState] = {}
        # The last launched step's sampled tokens, on the device, and each request's row: a
        # step launched before they reach the host reads its input tokens from there.
        self.last_sampled: torch.Tensor | None = None
        self.last_sampled_rows: dict[str, int] = {}
        if self.device.type == "cuda" and config.cache.num_blocks_override is None:
            self._profile_run()
        self.num_blocks = num_blocks_for_budget(
            config.cache, config.model.arch, self.dtype, self.device
        )
        self.kv_caches = allocate_kv_cache(
            config.model.arch, self.num_blocks, self.block_size, self.dtype, self.device
        )
        logger.info(
            "KV cache: %d blocks of %d tokens (%d tokens)",
            self.num_blocks,
            self.block_size,
            self.num_blocks * self.block_size,
        )
        if self.device.type == "cuda":
            self.compile_prompt_kernels()
        self.cuda_graphs: CudaGraphRunner | None = None
        if config.cuda_graphs.enabled:
            self.cuda_graphs = CudaGraphRunner(
                self.model,
                self.kv_caches,
                config.cuda_graphs.batch_sizes(),
                max_blocks_per_seq=-(-config.model.max_model_len // self.block_size),
                device=self.device,
            )
            self.cuda_graphs.capture()

    def execute_model(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput:
        return self.finish(self.launch(scheduler_output))

    @torch.inference_mode()
    def launch(self, scheduler_output: SchedulerOutput) -> "StepLaunch":
        """Queue the step's forward pass, sampling and logprobs on the device, and the copies
        of their results to the host, and return without waiting for them (on CUDA);
        `finish` waits and returns the tokens.

        The previous step may still be running: a request whose input token it samples
        (async scheduling) gets that token on the device, from the previous step's output.
        """
        self._update_states(scheduler_output)
        if scheduler_output.is_empty:
            return StepLaunch.empty()
        inputs = prepare_inputs(
            self.requests, scheduler_output, self.block_size, self.device, self.last_sampled_rows
        )
        if inputs.pending_token_rows is not None:
            rows, source_rows = inputs.pending_token_rows
            inputs.input_ids[rows] = self.last_sampled[source_rows]
        hidden = self._forward(inputs)
        sampled = self._launch_sampling(hidden, inputs)
        prompt_logprobs = self._launch_prompt_logprobs(hidden, inputs)
        for state in (self.requests[r] for r in inputs.req_ids):
            state.num_computed_tokens += scheduler_output.num_scheduled_tokens[state.req_id]
        for req_id in inputs.sampling_req_ids:
            self.requests[req_id].num_pending += 1
        self.last_sampled = None if sampled is None else sampled.sampled_token_ids
        self.last_sampled_rows = {r: row for row, r in enumerate(inputs.sampling_req_ids)}
        return StepLaunch.to_host(inputs, sampled, prompt_logprobs, self.device)

    @torch.inference_mode()
    def finish(self, launch: "StepLaunch") -> ModelRunnerOutput:
        """Waits for the launched step's results (the step's one wait on the device)."""
        if launch.inputs is None:
            return ModelRunnerOutput(req_ids=[], sampled_token_ids=[])
        if launch.ready is not None:
            launch.ready.synchronize()
        inputs = launch.inputs
        tokens: dict[str, int] = {}
        logprobs: dict[str, TokenLogprobs] = {}
        token_ids = [] if launch.sampled_token_ids is None else launch.sampled_token_ids.tolist()
        for row, (req_id, token_id) in enumerate(
            zip(inputs.sampling_req_ids, token_ids, strict=True)
        ):
            state = self.requests.get(req_id)
            if state is None or not state.num_pending:  # finished while the step ran
                continue
            state.token_ids.append(token_id)
            state.num_pending -= 1
            tokens[req_id] = token_id
            k = state.sampling_params.logprobs
            if k is not None and launch.logprobs is not None:
                logprobs[req_id] = _to_lists(launch.logprobs, row, row + 1, k)
        prompt_logprobs = {
            req_id: (first_token, _to_lists(tensors, 0, tensors.ranks.shape[0], k))
            for req_id, first_token, k, tensors in launch.prompt_logprobs
        }
        return ModelRunnerOutput(
            req_ids=inputs.req_ids,
            sampled_token_ids=[[tokens[r]] if r in tokens else [] for r in inputs.req_ids],
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
        )

    def _forward(self, inputs: ModelInputs) -> torch.Tensor:
        metadata = inputs.metadata
        graphs = self.cuda_graphs
        if graphs is not None and metadata.num_chunks == 0:
            batch_size = graphs.padded_size(metadata.num_decodes)
            if batch_size is not None:
                return graphs.run(inputs.input_ids, inputs.positions, metadata, batch_size)
        return self.model(inputs.input_ids, inputs.positions, self.kv_caches, metadata)

    @torch.inference_mode()
    def compile_prompt_kernels(self) -> None:
        """One short prompt per tile size of the prompt-chunk kernel (query lengths 1, 2, 4,
        ... until a tile of (token, head) rows is full), so that no request waits for Triton
        to compile one. It writes only into blocks that no request holds yet."""
        started = time.monotonic()
        arch = self.config.model.arch
        group = arch.num_attention_heads // arch.num_key_value_heads
        longest = min(
            self.config.scheduler.max_num_batched_tokens,
            self.config.model.max_model_len,
            self.num_blocks * self.block_size,  # a tiny cache (num_gpu_blocks_override)
        )
        query_len = 1
        while query_len <= longest:
            self._run_whole_prompts([query_len], self.kv_caches)
            if query_len * group >= 128:  # the largest tile (kernels/paged_prefill_attention.py)
                break
            query_len *= 2
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        logger.info("prompt kernels ready in %.1f s", time.monotonic() - started)

    def _run_whole_prompts(
        self, seq_lens: list[int], kv_caches: list[torch.Tensor]
    ) -> torch.Tensor:
        """A forward pass over dummy prompts of these lengths, written into the first blocks."""
        metadata = profile_metadata(seq_lens, self.block_size, self.device)
        positions = torch.cat([torch.arange(n, device=self.device) for n in seq_lens])
        return self.model(torch.zeros_like(positions), positions, kv_caches, metadata)

    def _profile_run(self) -> None:
        """The largest step the scheduler can make, run once before the KV cache exists, so
        `num_blocks_for_budget` sees the activations' peak memory: a full token budget of
        prompt chunks, then logits and sampling for max_num_seqs rows."""
        torch.cuda.reset_peak_memory_stats(self.device)
        scheduler = self.config.scheduler
        num_tokens = scheduler.max_num_batched_tokens
        seq_len = min(num_tokens, self.config.model.max_model_len)
        seq_lens = [seq_len] * (num_tokens // seq_len)
        if num_tokens % seq_len:
            seq_lens.append(num_tokens % seq_len)
        blocks_per_seq = -(-seq_len // self.block_size)
        kv_caches = allocate_kv_cache(
            self.config.model.arch,
            len(seq_lens) * blocks_per_seq,
            self.block_size,
            self.dtype,
            self.device,
        )
        with torch.inference_mode():
            hidden = self._run_whole_prompts(seq_lens, kv_caches)
            num_rows = min(scheduler.max_num_seqs, num_tokens)
            logits = self.model.compute_logits(hidden[:num_rows])
            metadata = build_sampling_metadata(
                params=[SamplingParams(temperature=1.0, top_p=0.9, top_k=50)] * num_rows,
                prompt_token_ids=[[]] * num_rows,
                output_token_ids=[[]] * num_rows,
                generators={},
                default_generator=self.generator,
                eos_token_ids=self.eos_token_ids,
                vocab_size=self.vocab_size,
                device=self.device,
            )
            self.sampler(logits, metadata)
        torch.cuda.synchronize(self.device)
        del hidden, logits, kv_caches

    def _update_states(self, scheduler_output: SchedulerOutput) -> None:
        for req_id in scheduler_output.finished_req_ids:
            self.requests.pop(req_id, None)
            self.seeded_generators.pop(req_id, None)
        for new in scheduler_output.scheduled_new_reqs:
            self.requests[new.req_id] = CachedRequestState(
                req_id=new.req_id,
                token_ids=list(new.token_ids),
                num_prompt_tokens=new.num_prompt_tokens,
                sampling_params=new.sampling_params,
                block_ids=list(new.block_ids),
                num_computed_tokens=new.num_computed_tokens,
            )
        for cached in scheduler_output.scheduled_cached_reqs:
            state = self.requests[cached.req_id]
            state.block_ids.extend(cached.new_block_ids)
            state.num_computed_tokens = cached.num_computed_tokens

    def _launch_sampling(self, hidden: torch.Tensor, inputs: ModelInputs) -> SamplerOutput | None:
        if not inputs.sampling_req_ids:
            return None
        logits = self.model.compute_logits(hidden[inputs.logits_indices])
        states = [self.requests[r] for r in inputs.sampling_req_ids]
        # Copies of every row's tokens cost O(context) per step: only for rows that read them.
        readers = [s if s.sampling_params.reads_token_history else None for s in states]
        if any(s is not None and s.num_pending for s in readers):
            raise RuntimeError("a row reading its token history was scheduled ahead of them")
        metadata = build_sampling_metadata(
            params=[s.sampling_params for s in states],
            prompt_token_ids=[() if s is None else s.prompt_token_ids for s in readers],
            output_token_ids=[() if s is None else s.output_token_ids for s in readers],
            generators=self._generators(states),
            default_generator=self.generator,
            eos_token_ids=self.eos_token_ids,
            vocab_size=self.vocab_size,
            device=self.device,
        )
        return self.sampler(logits, metadata)

    def _generators(self, states: list[CachedRequestState]) -> dict[int, torch.Generator]:
        """Per-row generators for seeded requests, seeded by (seed, output position).

        Reseeding at every position makes a request's tokens independent of the batch and of
        preemption: the same draws happen whenever its i-th token is sampled.
        """
        generators = {}
        for row, state in enumerate(states):
            seed = state.sampling_params.seed
            if seed is None:
                continue
            generator = self.seeded_generators.get(state.req_id)
            if generator is None:
                generator = self.seeded_generators[state.req_id] = torch.Generator(self.device)
            position = len(state.token_ids) + state.num_pending - state.num_prompt_tokens
            generator.manual_seed(hash((seed, position)) & 0x7FFF_FFFF_FFFF_FFFF)
            generators[row] = generator
        return generators

    def _launch_prompt_logprobs(
        self, hidden: torch.Tensor, inputs: ModelInputs
    ) -> list[tuple[str, int, int, LogprobsTensors]]:
        """(req_id, first prompt token scored, k, logprobs) per request asking for them."""
        result = []
        for span in inputs.prompt_logprobs_spans:
            state = self.requests[span.req_id]
            rows = slice(span.first_row, span.first_row + span.num_tokens)
            targets = state.token_ids[span.first_token : span.first_token + span.num_tokens]
            k = state.sampling_params.prompt_logprobs
            logprobs = compute_logprobs(
                self.model.compute_logits(hidden[rows]),
                torch.tensor(targets, dtype=torch.int64).to(self.device, non_blocking=True),
                k,
            )
            result.append((span.req_id, span.first_token, k, logprobs))
        return result


@dataclass
class StepLaunch:
    """A step queued on the device, with its results on their way to host memory."""

    inputs: ModelInputs | None  # None for an empty step
    sampled_token_ids: torch.Tensor | None  # [num_sampling] host tensor, valid once `ready`
    logprobs: LogprobsTensors | None  # host tensors of the sampled tokens' logprobs
    prompt_logprobs: list[tuple[str, int, int, LogprobsTensors]]  # host tensors
    ready: torch.cuda.Event | None  # recorded after the copies (None off CUDA: already there)

    @classmethod
    def empty(cls) -> "StepLaunch":
        return cls(None, None, None, [], None)

    @classmethod
    def to_host(
        cls,
        inputs: ModelInputs,
        sampled: SamplerOutput | None,
        prompt_logprobs: list[tuple[str, int, int, LogprobsTensors]],
        device: torch.device,
    ) -> "StepLaunch":
        """Queue non-blocking copies of the results into pinned host memory.

        NOTE: `.tolist()` on a device tensor would wait for everything queued on the stream,
        the next step included when it was launched ahead; the event waits for this one only.
        """
        launch = cls(
            inputs,
            None if sampled is None else _to_host(sampled.sampled_token_ids),
            None
            if sampled is None or sampled.logprobs is None
            else _logprobs_to_host(sampled.logprobs),
            [(r, first, k, _logprobs_to_host(t)) for r, first, k, t in prompt_logprobs],
            None,
        )
        if device.type == "cuda":
            launch.ready = torch.cuda.Event()
            launch.ready.record()
        return launch


def _to_host(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to("cpu", non_blocking=True)  # pinned destination for a device source


def _logprobs_to_host(tensors: LogprobsTensors) -> LogprobsTensors:
    return LogprobsTensors(
        _to_host(tensors.token_ids), _to_host(tensors.logprobs), _to_host(tensors.ranks)
    )


def _to_lists(logprobs: LogprobsTensors, start: int, end: int, k: int) -> TokenLogprobs:
    return TokenLogprobs(
        token_ids=logprobs.token_ids[start:end, : k + 1].tolist(),
        logprobs=logprobs.logprobs[start:end, : k + 1].tolist(),
        ranks=logprobs.ranks[start:end].tolist(),
    )
