"""The synchronous engine: front end (tokenize, detokenize) around the engine core."""

import logging
import time

from fleetlm.engine.config import EngineArgs, EngineConfig
from fleetlm.engine.core.engine_core import EngineCore, StepInFlight
from fleetlm.engine.core.protocol import EngineCoreStats
from fleetlm.engine.output_processor import OutputProcessor
from fleetlm.engine.outputs import RequestOutput
from fleetlm.engine.processor import ProcessedRequest, Processor, PromptInput
from fleetlm.engine.sampling_params import SamplingParams
from fleetlm.engine.tokenizer import load_tokenizer

logger = logging.getLogger(__name__)


class LLMEngine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.tokenizer = load_tokenizer(config.model.tokenizer) if config.model.tokenizer else None
        self.processor = Processor(config.model, self.tokenizer)
        self.engine_core = EngineCore(config)
        self.output_processor = OutputProcessor(self.tokenizer)
        self.in_flight: StepInFlight | None = None  # a step queued on the device

    @classmethod
    def from_engine_args(cls, args: EngineArgs) -> "LLMEngine":
        return cls(args.create_engine_config())

    def process_request(
        self, request_id: str, prompt: PromptInput, params: SamplingParams
    ) -> ProcessedRequest:
        """Validate and tokenize without adding (so a batch can be checked as a whole first)."""
        if request_id in self.output_processor.requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        return self.processor.process(request_id, prompt, params, arrival_time=time.monotonic())

    def add_processed_request(self, request: ProcessedRequest) -> None:
        self.output_processor.add_request(request)
        for sample in request.samples:
            self.engine_core.add_request(sample)

    def add_request(self, request_id: str, prompt: PromptInput, params: SamplingParams) -> None:
        self.add_processed_request(self.process_request(request_id, prompt, params))

    def abort_request(self, request_ids: str | list[str]) -> list[RequestOutput]:
        """Stop requests now; returns their final outputs (finish reason "abort")."""
        outputs = []
        for request_id in [request_ids] if isinstance(request_ids, str) else request_ids:
            sample_ids, output = self.output_processor.abort_request(request_id)
            self.engine_core.abort_requests(sample_ids)
            if output is not None:
                outputs.append(output)
        return outputs

    def step(self) -> list[RequestOutput]:
        """Finish the step in flight, leave the next one launched, then process the finished
        step's outputs (detokenize, stop strings) while the device runs the next."""
        core_outputs, self.in_flight = self.engine_core.advance(self.in_flight)
        if self.config.kv_events is not None:  # published by `fleetlm serve`'s engine process
            self.engine_core.take_kv_events()
        processed = self.output_processor.process_outputs(core_outputs)
        if processed.sample_ids_to_stop:
            self.engine_core.stop_requests(processed.sample_ids_to_stop)
        return processed.request_outputs

    def has_unfinished_requests(self) -> bool:
        return self.in_flight is not None or self.engine_core.has_unfinished_requests()

    def get_stats(self) -> EngineCoreStats:
        return self.engine_core.stats()

    def reset_prefix_cache(self) -> bool:
        return self.engine_core.reset_prefix_cache()
