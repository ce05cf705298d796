"""Turning engine-core outputs into `RequestOutput`s: detokenizing, stop strings, n samples."""

from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from fleetlm.engine.core.protocol import EngineCoreOutput
from fleetlm.engine.core.scheduler_output import TokenLogprobs
from fleetlm.engine.detokenizer import IncrementalDetokenizer, decode_token
from fleetlm.engine.outputs import CompletionOutput, Logprob, PositionLogprobs, RequestOutput
from fleetlm.engine.processor import ProcessedRequest


@dataclass
class _SampleState:
    index: int
    detokenizer: IncrementalDetokenizer | None
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[PositionLogprobs] | None = None
    cumulative_logprob: float | None = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    num_reported_tokens: int = 0

    def to_output(self) -> CompletionOutput:
        num_delta_tokens = len(self.token_ids) - self.num_reported_tokens
        self.num_reported_tokens = len(self.token_ids)
        finished = self.finish_reason is not None
        return CompletionOutput(
            index=self.index,
            text=self.detokenizer.output_text if self.detokenizer else "",
            token_ids=list(self.token_ids),
            cumulative_logprob=self.cumulative_logprob,
            logprobs=self.logprobs,
            finish_reason=self.finish_reason,
            stop_reason=self.stop_reason,
            delta_text=self.detokenizer.take_delta(finished) if self.detokenizer else "",
            num_delta_tokens=num_delta_tokens,
        )


@dataclass
class _RequestState:
    request: ProcessedRequest
    samples: list[_SampleState]
    prompt_logprobs: list[PositionLogprobs | None] | None
    num_cached_tokens: int = 0

    @property
    def finished(self) -> bool:
        return all(s.finish_reason is not None for s in self.samples)

    def to_output(self) -> RequestOutput:
        return RequestOutput(
            request_id=self.request.request_id,
            prompt=self.request.prompt,
            prompt_token_ids=self.request.prompt_token_ids,
            outputs=[s.to_output() for s in self.samples],
            finished=self.finished,
            prompt_logprobs=self.prompt_logprobs,
            num_cached_tokens=self.num_cached_tokens,
        )


@dataclass
class ProcessedOutputs:
    request_outputs: list[RequestOutput]  # requests that changed this step
    sample_ids_to_stop: list[str]  # samples that hit a stop string: finish them in the core


class OutputProcessor:
    def __init__(self, tokenizer: PreTrainedTokenizerBase | None) -> None:
        self.tokenizer = tokenizer
        self.requests: dict[str, _RequestState] = {}
        self.sample_to_request: dict[str, tuple[str, int]] = {}  # sample id -> (request id, index)

    def add_request(self, request: ProcessedRequest) -> None:
        params = request.sampling_params
        samples = [
            _SampleState(
                index=i,
                detokenizer=self._detokenizer(request),
                logprobs=[] if params.logprobs is not None else None,
                cumulative_logprob=0.0 if params.logprobs is not None else None,
            )
            for i in range(params.n)
        ]
        prompt_logprobs = None
        if params.prompt_logprobs is not None:
            prompt_logprobs = [None] * len(request.prompt_token_ids)
        self.requests[request.request_id] = _RequestState(request, samples, prompt_logprobs)
        for index, sample in enumerate(request.samples):
            self.sample_to_request[sample.request_id] = (request.request_id, index)

    def abort_request(self, request_id: str) -> tuple[list[str], RequestOutput | None]:
        """End a request: its samples still running finish with reason "abort". Returns the
        sample ids (to abort in the core) and the request's final output (None if unknown)."""
        state = self.requests.get(request_id)
        if state is None:
            return [], None
        for sample in state.samples:
            if sample.finish_reason is None:
                sample.finish_reason = "abort"
                if sample.detokenizer is not None:
                    sample.detokenizer.finish()
        return self._remove(request_id), state.to_output()

    def _remove(self, request_id: str) -> list[str]:
        state = self.requests.pop(request_id)
        sample_ids = [s.request_id for s in state.request.samples]
        for sample_id in sample_ids:
            self.sample_to_request.pop(sample_id, None)
        return sample_ids

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def process_outputs(self, outputs: list[EngineCoreOutput]) -> ProcessedOutputs:
        changed: dict[str, _RequestState] = {}
        to_stop: list[str] = []
        for output in outputs:
            location = self.sample_to_request.get(output.request_id)
            if location is None:
                continue
            state = self.requests[location[0]]
            sample = state.samples[location[1]]
            if self._update_sample(sample, output):
                to_stop.append(output.request_id)
            if output.new_prompt_logprobs is not None and state.prompt_logprobs is not None:
                self._store_prompt_logprobs(state, *output.new_prompt_logprobs)
            state.num_cached_tokens = max(state.num_cached_tokens, output.num_cached_tokens)
            changed[state.request.request_id] = state
        for request_id, state in changed.items():
            if state.finished:
                self._remove(request_id)
        return ProcessedOutputs([s.to_output() for s in changed.values()], to_stop)

    def _detokenizer(self, request: ProcessedRequest) -> IncrementalDetokenizer | None:
        params = request.sampling_params
        if self.tokenizer is None or not params.detokenize:
            return None
        return IncrementalDetokenizer(
            self.tokenizer,
            request.prompt_token_ids,
            skip_special_tokens=params.skip_special_tokens,
            stop=params.stop,
            include_stop_str_in_output=params.include_stop_str_in_output,
        )

    def _update_sample(self, sample: _SampleState, output: EngineCoreOutput) -> bool:
        """Returns True when a stop string ended the sample (the core must stop it too)."""
        sample.token_ids.extend(output.new_token_ids)
        if output.new_logprobs is not None and sample.logprobs is not None:
            positions = self._position_logprobs(output.new_logprobs)
            sample.logprobs.extend(positions)
            sample.cumulative_logprob += sum(
                p[t].logprob for p, t in zip(positions, output.new_token_ids, strict=False)
            )
        stopped_by_string = False
        if sample.detokenizer is not None and output.new_token_ids:
            stop_string = sample.detokenizer.update(output.new_token_ids)
            if stop_string is not None:
                sample.finish_reason, sample.stop_reason = "stop", stop_string
                stopped_by_string = not output.finished
        if output.finished and sample.finish_reason is None:
            sample.finish_reason, sample.stop_reason = output.finish_reason, output.stop_reason
        if sample.finish_reason is not None and sample.detokenizer is not None:
            sample.detokenizer.finish()  # release a trailing partial character, if any
        return stopped_by_string

    def _store_prompt_logprobs(
        self, state: _RequestState, first_token: int, logprobs: TokenLogprobs
    ) -> None:
        """Stored by position: a chunk recomputed after preemption overwrites, never repeats."""
        for offset, position in enumerate(self._position_logprobs(logprobs)):
            state.prompt_logprobs[first_token + offset] = position

    def _position_logprobs(self, logprobs: TokenLogprobs) -> list[PositionLogprobs]:
        positions = []
        for token_ids, values, rank in zip(
            logprobs.token_ids, logprobs.logprobs, logprobs.ranks, strict=True
        ):
            entry: PositionLogprobs = {}
            for i, (token_id, value) in enumerate(zip(token_ids, values, strict=True)):
                if token_id in entry:
                    continue
                entry[token_id] = Logprob(
                    logprob=value,
                    rank=rank if i == 0 else i,
                    decoded_token=decode_token(self.tokenizer, token_id)
                    if self.tokenizer
                    else None,
                )
            positions.append(entry)
        return positions
