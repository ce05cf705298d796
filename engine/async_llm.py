"""The asyncio front end of the engine, for the HTTP server: it validates, tokenizes and
detokenizes in this process while the engine core steps in its own process."""

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fleetlm.engine.config import EngineArgs, EngineConfig
from fleetlm.engine.core.client import EngineCoreClient, EngineDeadError
from fleetlm.engine.core.protocol import EngineCoreOutput, EngineCoreStats
from fleetlm.engine.output_processor import OutputProcessor
from fleetlm.engine.outputs import RequestOutput
from fleetlm.engine.processor import ProcessedRequest, Processor, PromptInput
from fleetlm.engine.sampling_params import SamplingParams
from fleetlm.engine.tokenizer import load_tokenizer

logger = logging.getLogger(__name__)


@dataclass
class _Stream:
    """Outputs of one request on their way to its caller."""

    queue: asyncio.Queue
    arrival_time: float


class AsyncLLM:
    def __init__(self, engine_args: EngineArgs, ready_timeout: float = 600.0) -> None:
        self.engine_args = engine_args
        self.ready_timeout = ready_timeout
        self.config: EngineConfig = engine_args.create_engine_config()
        model = self.config.model
        self.tokenizer = load_tokenizer(model.tokenizer) if model.tokenizer else None
        self.processor = Processor(model, self.tokenizer)
        self.output_processor = OutputProcessor(self.tokenizer)
        self.client = EngineCoreClient(on_outputs=self._on_outputs, on_dead=self._on_dead)
        self.streams: dict[str, _Stream] = {}
        self.stats: EngineCoreStats | None = None
        self.dead_reason: str | None = None
        self.num_blocks = 0

    @property
    def is_dead(self) -> bool:
        return self.dead_reason is not None

    async def start(self) -> None:
        ready = await self.client.start(self.engine_args, self.ready_timeout)
        self.num_blocks = ready.num_blocks

    async def shutdown(self) -> None:
        await self.client.shutdown(timeout=10.0)

    def process(
        self, request_id: str, prompt: PromptInput, params: SamplingParams
    ) -> ProcessedRequest:
        """Validate and tokenize (raises InvalidRequestError) without submitting."""
        return self.processor.process(request_id, prompt, params, arrival_time=time.monotonic())

    async def generate(self, request: ProcessedRequest) -> AsyncIterator[RequestOutput]:
        """Submit a processed request and yield its outputs until it finishes.

        Cancelling the consumer (a client that went away) aborts the request in the engine.
        """
        if self.is_dead:
            raise EngineDeadError(self.dead_reason)
        if request.request_id in self.streams:
            raise ValueError(f"request id {request.request_id!r} is already in use")
        stream = _Stream(asyncio.Queue(), time.monotonic())
        self.streams[request.request_id] = stream
        self.output_processor.add_request(request)
        for sample in request.samples:
            self.client.add_request(sample)
        finished = False
        try:
            while not finished:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
        finally:
            self.streams.pop(request.request_id, None)
            if not finished:
                self.abort(request.request_id)

    def abort(self, request_id: str) -> None:
        sample_ids, _ = self.output_processor.abort_request(request_id)
        if sample_ids and not self.is_dead:
            self.client.abort_requests(sample_ids)

    def _on_outputs(self, outputs: list[EngineCoreOutput], stats: EngineCoreStats) -> None:
        self.stats = stats
        if not outputs:
            return
        processed = self.output_processor.process_outputs(outputs)
        if processed.sample_ids_to_stop:
            self.client.stop_requests(processed.sample_ids_to_stop)
        for output in processed.request_outputs:
            stream = self.streams.get(output.request_id)
            if stream is not None:
                stream.queue.put_nowait(output)

    def _on_dead(self, reason: str) -> None:
        logger.error("the engine process died: %s", reason)
        self.dead_reason = reason
        for stream in self.streams.values():
            stream.queue.put_nowait(EngineDeadError(reason))
