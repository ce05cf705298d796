"""Continuous batching: which requests run in the next step, and how many tokens each."""

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from fleetlm.engine.core.block_pool import KVCacheBlock
from fleetlm.engine.core.kv_cache_manager import KVCacheManager
from fleetlm.engine.core.protocol import EngineCoreOutput
from fleetlm.engine.core.request import Request, RequestStatus
from fleetlm.engine.core.scheduler_output import (
    CachedRequestData,
    ModelRunnerOutput,
    NewRequestData,
    SchedulerOutput,
)


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    max_model_len: int = 2048
    enable_chunked_prefill: bool = True
    # Schedule step N+1 before step N's tokens reach the host (they are read on the device).
    async_scheduling: bool = False

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1 or self.max_num_batched_tokens < 1 or self.max_model_len < 1:
            raise ValueError(f"scheduler limits must be positive: {self}")
        if not self.enable_chunked_prefill and self.max_num_batched_tokens < self.max_model_len:
            raise ValueError(
                "without chunked prefill, max_num_batched_tokens "
                f"({self.max_num_batched_tokens}) must be >= max_model_len ({self.max_model_len})"
            )


class Scheduler:
    def __init__(self, config: SchedulerConfig, kv_cache_manager: KVCacheManager) -> None:
        self.config = config
        self.kv_cache_manager = kv_cache_manager
        self.requests: dict[str, Request] = {}
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # admission order: the last one is preempted first
        self.finished_req_ids: set[str] = set()  # to tell the runner at the next step
        self.num_preemptions = 0
        # requests whose sampling reads their token history (penalties, min_tokens): while
        # any is unfinished, a step cannot be scheduled before the previous one's tokens are in
        self.num_history_readers = 0

    # -- requests in and out -------------------------------------------------------------

    def add_request(self, request: Request) -> None:
        if request.request_id in self.requests:
            raise ValueError(f"request id {request.request_id!r} is already in use")
        self.requests[request.request_id] = request
        self.waiting.append(request)
        self.num_history_readers += request.sampling_params.reads_token_history

    def finish_requests(self, request_ids: Iterable[str], status: RequestStatus) -> None:
        """End requests from outside a step (abort, or a stop string found by the front end)."""
        for request_id in request_ids:
            request = self.requests.get(request_id)
            if request is None or request.is_finished:
                continue
            if request.status == RequestStatus.RUNNING:
                self.running.remove(request)
            else:
                self.waiting.remove(request)
            request.status = status
            self._free_request(request)

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def can_schedule_ahead(self) -> bool:
        """Whether the next step may be scheduled while the last one's tokens are on the way."""
        return self.config.async_scheduling and self.num_history_readers == 0

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    # -- one step ------------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        """Pick this step's work.

        NOTE: there is no prefill phase and no decode phase. Every request has
        `num_computed_tokens` catching up with `num_tokens`; a step spends the token budget
        on running requests first (a decode costs 1 token, an unfinished prompt a chunk), then
        admits waiting requests in order, chunking long prompts to what is left. When blocks
        run out, the most recently admitted running request is preempted: its blocks are
        freed and it is recomputed later from its tokens.

        Scheduled ahead (async scheduling), a request whose last token is still being sampled
        decodes that placeholder (the runner reads it on the device), unless the placeholder
        may be its last token (max_tokens or max_model_len): then it waits for the result.
        """
        budget = self.config.max_num_batched_tokens
        num_scheduled: dict[str, int] = {}
        new_reqs: list[NewRequestData] = []
        cached_reqs: list[CachedRequestData] = []
        num_preemptions_before = self.num_preemptions

        index = 0
        while index < len(self.running) and budget > 0:
            request = self.running[index]
            if request.num_output_placeholders and self._may_be_finished(request):
                index += 1
                continue
            num_new = min(
                request.num_tokens_with_placeholders - request.num_computed_tokens, budget
            )
            new_blocks = self._allocate_or_preempt(request, num_new)
            if new_blocks is None:  # the request itself was preempted
                break
            cached_reqs.append(
                CachedRequestData(
                    request.request_id,
                    [b.block_id for b in new_blocks],
                    request.num_computed_tokens,
                )
            )
            budget -= self._mark_scheduled(request, num_new, num_scheduled)
            index += 1
        if self.num_preemptions == num_preemptions_before:  # no admissions under memory pressure
            budget = self._admit_waiting(budget, num_scheduled, new_reqs)

        output = SchedulerOutput(
            scheduled_new_reqs=new_reqs,
            scheduled_cached_reqs=cached_reqs,
            num_scheduled_tokens=num_scheduled,
            total_num_scheduled_tokens=sum(num_scheduled.values()),
            finished_req_ids=self.finished_req_ids,
        )
        self.finished_req_ids = set()
        return output

    def update_from_output(
        self, scheduler_output: SchedulerOutput, runner_output: ModelRunnerOutput
    ) -> list[EngineCoreOutput]:
        """Append the sampled tokens, stop finished requests, and report what changed."""
        outputs = []
        for request_id, token_ids in zip(
            runner_output.req_ids, runner_output.sampled_token_ids, strict=True
        ):
            request = self.requests.get(request_id)
            if request is None or request.is_finished:
                continue
            was_running = request.status == RequestStatus.RUNNING
            new_token_ids = []
            for token_id in token_ids:
                request.num_output_placeholders -= 1
                request.append_output_token_id(token_id)
                new_token_ids.append(token_id)
                if self._check_stop(request):
                    break
            prompt_logprobs = runner_output.prompt_logprobs.get(request_id)
            if new_token_ids or prompt_logprobs or request.is_finished:
                outputs.append(
                    EngineCoreOutput(
                        request_id=request_id,
                        new_token_ids=new_token_ids,
                        new_logprobs=runner_output.logprobs.get(request_id),
                        new_prompt_logprobs=prompt_logprobs,
                        finish_reason=request.status.finish_reason,
                        stop_reason=request.stop_reason,
                        num_cached_tokens=request.num_cached_tokens,
                    )
                )
            if request.is_finished:
                # preempted while its token was on the way: it waits to be resumed
                (self.running if was_running else self.waiting).remove(request)
                self._free_request(request)
        return outputs

    # -- helpers -------------------------------------------------------------------------

    @staticmethod
    def _mark_scheduled(request: Request, num_new: int, num_scheduled: dict[str, int]) -> int:
        """Count the tokens as computed now: later requests of the same step may share them
        (their KV is written before any attention reads it). A step that reaches the end of
        the request's tokens samples one more: a placeholder until its result is in."""
        num_scheduled[request.request_id] = num_new
        request.num_computed_tokens += num_new
        if request.num_computed_tokens == request.num_tokens_with_placeholders:
            request.num_output_placeholders += 1
        return num_new

    def _may_be_finished(self, request: Request) -> bool:
        """Whether the tokens on the way may end the request by length."""
        max_tokens = request.sampling_params.max_tokens
        num_outputs = request.num_output_tokens + request.num_output_placeholders
        return request.num_tokens_with_placeholders >= self.config.max_model_len or (
            max_tokens is not None and num_outputs >= max_tokens
        )

    def _allocate_or_preempt(self, request: Request, num_new: int) -> list[KVCacheBlock] | None:
        """Allocate blocks for a running request, preempting the newest requests as needed."""
        while True:
            new_blocks = self.kv_cache_manager.allocate_slots(request, num_new)
            if new_blocks is not None:
                return new_blocks
            victim = self.running.pop()
            self._preempt(victim)
            if victim is request:
                return None

    def _preempt(self, request: Request) -> None:
        self.kv_cache_manager.free(request)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(request)

    def _admit_waiting(
        self, budget: int, num_scheduled: dict[str, int], new_reqs: list[NewRequestData]
    ) -> int:
        """Admit waiting requests in order while budget, sequence slots and blocks last."""
        deferred: list[Request] = []  # n > 1 samples waiting for their leader's prompt
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            request = self.waiting[0]
            # preempted while its last token was on the way: resumed once the token is in
            if request.num_output_placeholders or self._must_wait_for_leader(request):
                deferred.append(self.waiting.popleft())
                continue
            computed_blocks = self._find_computed_blocks(request)
            num_computed = len(computed_blocks) * self.kv_cache_manager.block_size
            num_new = request.num_tokens - num_computed
            if num_new > budget and not self.config.enable_chunked_prefill:
                break
            num_new = min(num_new, budget)
            new_blocks = self.kv_cache_manager.allocate_slots(request, num_new, computed_blocks)
            if new_blocks is None:
                break
            self.waiting.popleft()
            self.running.append(request)
            request.status = RequestStatus.RUNNING
            request.num_computed_tokens = num_computed
            if request.num_cached_tokens < 0:
                request.num_cached_tokens = num_computed
            new_reqs.append(
                NewRequestData(
                    req_id=request.request_id,
                    token_ids=list(request.all_token_ids),
                    num_prompt_tokens=request.num_prompt_tokens,
                    sampling_params=request.sampling_params,
                    block_ids=self.kv_cache_manager.get_block_ids(request.request_id),
                    num_computed_tokens=num_computed,
                )
            )
            budget -= self._mark_scheduled(request, num_new, num_scheduled)
        self.waiting.extendleft(reversed(deferred))
        return budget

    def _must_wait_for_leader(self, request: Request) -> bool:
        """Sample i > 0 waits until sample 0 has scheduled the prompt blocks it can share."""
        leader = request.leader
        if leader is None or request.num_computed_tokens or request.num_preemptions:
            return False
        if leader.status not in (RequestStatus.WAITING, RequestStatus.RUNNING):
            return False
        num_shareable = (request.num_prompt_tokens - 1) // self.kv_cache_manager.block_size
        return leader.num_computed_tokens // self.kv_cache_manager.block_size < num_shareable

    def _find_computed_blocks(self, request: Request) -> list[KVCacheBlock]:
        """Prefix-cache hits, or the leader's prompt blocks for sample i > 0, the longer one."""
        hits = self.kv_cache_manager.get_computed_blocks(request)
        leader = request.leader
        if leader is not None and leader.status == RequestStatus.RUNNING:
            shared = self.kv_cache_manager.get_shared_prompt_blocks(request, leader)
            if len(shared) > len(hits):
                return shared
        return hits

    def _check_stop(self, request: Request) -> bool:
        params = request.sampling_params
        last_token_id = request.output_token_ids[-1]
        if not params.ignore_eos and last_token_id in request.eos_token_ids:
            request.status = RequestStatus.FINISHED_STOPPED
        elif last_token_id in params.stop_token_ids:
            request.status = RequestStatus.FINISHED_STOPPED
            request.stop_reason = last_token_id
        elif request.num_tokens >= self.config.max_model_len or (
            params.max_tokens is not None and request.num_output_tokens >= params.max_tokens
        ):
            request.status = RequestStatus.FINISHED_LENGTH_CAPPED
        return request.is_finished

    def _free_request(self, request: Request) -> None:
        self.kv_cache_manager.free(request)
        self.finished_req_ids.add(request.request_id)
        del self.requests[request.request_id]
        self.num_history_readers -= request.sampling_params.reads_token_history
