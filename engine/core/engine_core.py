"""The engine core: one step is schedule -> execute -> update."""

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fleetlm.engine.config import EngineConfig
from fleetlm.engine.core.kv_cache_manager import KVCacheManager
from fleetlm.engine.core.kv_events import KVEvent
from fleetlm.engine.core.protocol import EngineCoreOutput, EngineCoreRequest, EngineCoreStats
from fleetlm.engine.core.request import Request, RequestStatus
from fleetlm.engine.core.scheduler import Scheduler
from fleetlm.engine.core.scheduler_output import SchedulerOutput

if TYPE_CHECKING:
    from fleetlm.engine.worker.model_runner import StepLaunch


@dataclass
class StepInFlight:
    scheduler_output: SchedulerOutput
    launch: "StepLaunch"


class EngineCore:
    def __init__(self, config: EngineConfig) -> None:
        from fleetlm.engine.worker.model_runner import ModelRunner

        self.config = config
        self.model_runner = ModelRunner(config)
        num_blocks = self.model_runner.num_blocks
        if num_blocks * config.cache.block_size < config.scheduler.max_model_len:
            raise ValueError(
                f"the KV cache holds {num_blocks * config.cache.block_size} tokens, fewer than "
                f"max_model_len ({config.scheduler.max_model_len}): give it more memory or "
                "lower max_model_len"
            )
        kv_cache_manager = KVCacheManager(
            num_blocks,
            config.cache.block_size,
            config.cache.enable_prefix_caching,
            record_kv_events=config.kv_events is not None,
        )
        self.scheduler = Scheduler(config.scheduler, kv_cache_manager)

    def add_request(self, request: EngineCoreRequest) -> None:
        """Raises ValueError (and adds nothing) for an id in use or a token outside the vocab."""
        vocab_size = self.config.model.arch.vocab_size
        if not request.prompt_token_ids or not all(
            0 <= t < vocab_size for t in request.prompt_token_ids
        ):
            raise ValueError(
                f"request {request.request_id!r}: empty prompt or token outside the vocabulary"
            )
        leader = self.scheduler.requests.get(request.leader_id) if request.leader_id else None
        self.scheduler.add_request(
            Request(
                request_id=request.request_id,
                prompt_token_ids=request.prompt_token_ids,
                sampling_params=request.sampling_params,
                eos_token_ids=request.eos_token_ids,
                leader=leader,
                arrival_time=request.arrival_time,
            )
        )

    def abort_requests(self, request_ids: list[str]) -> None:
        self.scheduler.finish_requests(request_ids, RequestStatus.FINISHED_ABORTED)

    def stop_requests(self, request_ids: list[str]) -> None:
        """Finish requests whose stop string the front end found."""
        self.scheduler.finish_requests(request_ids, RequestStatus.FINISHED_STOPPED)

    def step(self) -> list[EngineCoreOutput]:
        return self.finish_step(self.launch_step())

    def advance(
        self, in_flight: "StepInFlight | None"
    ) -> tuple[list[EngineCoreOutput], "StepInFlight | None"]:
        """Finish the step in flight and leave the next one queued on the device.

        With async scheduling the next step is launched before this one is finished, so the
        device goes from one to the next without waiting for the host; otherwise (or while a
        request reads its token history) right after. Either way the caller hands the
        outputs on while the device runs the next step.
        """
        if in_flight is None:
            if not self.has_unfinished_requests():
                return [], None
            in_flight = self.launch_step()
        ahead = None
        if self.scheduler.can_schedule_ahead and self.has_unfinished_requests():
            ahead = self.launch_step()
        outputs = self.finish_step(in_flight)
        if ahead is None and self.has_unfinished_requests():
            ahead = self.launch_step()
        return outputs, ahead

    def launch_step(self) -> "StepInFlight":
        """Schedule a step and queue it on the device without waiting for it.

        NOTE: callers overlap their own host work with the device (see `advance`). Requests
        may be aborted, stopped or finished while a step is in flight: their blocks go back
        to the pool, which is safe because later steps run after this one on the device, and
        `finish_step` drops their results.
        """
        scheduler_output = self.scheduler.schedule()
        return StepInFlight(scheduler_output, self.model_runner.launch(scheduler_output))

    def finish_step(self, step: "StepInFlight") -> list[EngineCoreOutput]:
        runner_output = self.model_runner.finish(step.launch)
        return self.scheduler.update_from_output(step.scheduler_output, runner_output)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished_requests()

    def reset_prefix_cache(self) -> bool:
        return self.scheduler.kv_cache_manager.reset_prefix_cache()

    def take_kv_events(self) -> list[KVEvent]:
        """Prefix-cache changes since the last call, in order.

        Recorded only when `config.kv_events` is set, and then the caller must take them
        regularly (the engine process does, after every step, and publishes them); nothing
        else takes them, so `LLMEngine` should not be given a `kv_events` config.
        """
        return self.scheduler.kv_cache_manager.pool.take_events()

    def cached_block_hashes(self) -> list[bytes]:
        """The hashes of every block in the prefix cache now (for a full resync)."""
        return self.scheduler.kv_cache_manager.pool.cached_hashes()

    def stats(self) -> EngineCoreStats:
        kv = self.scheduler.kv_cache_manager
        return EngineCoreStats(
            num_running=self.scheduler.num_running,
            num_waiting=self.scheduler.num_waiting,
            kv_cache_usage=kv.usage,
            num_blocks=kv.pool.num_blocks,
            num_free_blocks=kv.pool.num_free_blocks,
            prefix_cache_queries=kv.prefix_cache_stats.queries,
            prefix_cache_hits=kv.prefix_cache_stats.hits,
            num_preemptions=self.scheduler.num_preemptions,
        )
