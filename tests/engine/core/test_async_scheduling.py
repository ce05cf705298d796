"""Async scheduling: step N+1 is scheduled and launched before step N's tokens reach the
host, and reads them on the device. Every request must get exactly the tokens, logprobs and
finish reasons it gets when steps run one after another."""

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from fleetlm.engine.core.engine_core import EngineCore
from fleetlm.engine.core.protocol import EngineCoreRequest
from fleetlm.engine.sampling_params import SamplingParams

from .helpers import tiny_engine_args


@dataclass
class Result:
    tokens: list[int] = field(default_factory=list)
    logprobs: list[list[float]] = field(default_factory=list)
    prompt_logprobs: list[list[float]] = field(default_factory=list)
    finish_reason: str | None = None


# On a GPU machine (scripts/gpu_check.sh) the same tests run on CUDA too, with CUDA graphs.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param


def make_core(
    tmp_path: Path, device: str, async_scheduling: bool, num_blocks: int = 64
) -> EngineCore:
    args = tiny_engine_args(tmp_path)
    args.device = device
    args.async_scheduling = async_scheduling
    args.num_gpu_blocks_override = num_blocks
    args.max_model_len = 64
    return EngineCore(args.create_engine_config())


def run(
    core: EngineCore,
    requests: dict[str, tuple[list[int], SamplingParams]],
    abort_at: dict[int, str] | None = None,
) -> dict[str, Result]:
    """Add the requests, then loop as the engine process does until all are finished."""
    for request_id, (prompt, params) in requests.items():
        core.add_request(EngineCoreRequest(request_id, prompt, params, eos_token_ids=()))
    results = {request_id: Result() for request_id in requests}
    in_flight, step = None, 0
    while True:
        if abort_at and step in abort_at:
            core.abort_requests([abort_at[step]])
        outputs, in_flight = core.advance(in_flight)
        for output in outputs:
            result = results[output.request_id]
            result.tokens += output.new_token_ids
            if output.new_logprobs is not None:
                result.logprobs += output.new_logprobs.logprobs
            if output.new_prompt_logprobs is not None:
                result.prompt_logprobs += output.new_prompt_logprobs[1].logprobs
            result.finish_reason = output.finish_reason
        step += 1
        if in_flight is None and not core.has_unfinished_requests():
            return results


def prompt(i: int, length: int = 6) -> list[int]:
    return [(7 * i + j) % 250 + 1 for j in range(length)]


def greedy(**kwargs) -> SamplingParams:
    return SamplingParams(temperature=0.0, **{"max_tokens": 12, "ignore_eos": True, **kwargs})


def both(tmp_path: Path, device: str, requests) -> tuple[dict[str, Result], dict[str, Result]]:
    sync = run(make_core(tmp_path, device, False), requests)
    ahead = run(make_core(tmp_path, device, True), requests)
    return sync, ahead


def test_greedy_tokens_and_lengths_match(tmp_path, device):
    requests = {f"r{i}": (prompt(i, 3 + 5 * i), greedy(max_tokens=4 + 3 * i)) for i in range(6)}
    sync, ahead = both(tmp_path, device, requests)
    assert ahead == sync
    assert [len(ahead[f"r{i}"].tokens) for i in range(6)] == [4 + 3 * i for i in range(6)]
    assert {r.finish_reason for r in ahead.values()} == {"length"}


def test_stop_tokens_found_a_step_late_drop_the_extra_token(tmp_path, device):
    """A stop token is only seen on the host after the next step was launched: that step's
    token for the request is computed and must be dropped."""
    requests = {f"r{i}": (prompt(i), greedy(max_tokens=16)) for i in range(4)}
    free_run = run(make_core(tmp_path, device, False), requests)
    stops = {f"r{i}": free_run[f"r{i}"].tokens[2 + i] for i in range(4)}
    requests = {
        r: (p, greedy(max_tokens=16, stop_token_ids=[stops[r]])) for r, (p, _) in requests.items()
    }
    sync, ahead = both(tmp_path, device, requests)
    assert ahead == sync
    for request_id, result in ahead.items():
        assert result.finish_reason == "stop"
        assert result.tokens[-1] == stops[request_id]
        assert stops[request_id] not in result.tokens[:-1]


def test_preemption_with_tokens_on_the_way(tmp_path, device):
    """16 blocks of 4 tokens for 6 requests of up to 30 tokens: requests are preempted while
    their last token is still being sampled, and resumed once it is in."""
    requests = {f"r{i}": (prompt(i, 8 + i), greedy(max_tokens=18)) for i in range(6)}
    core = make_core(tmp_path, device, True, num_blocks=16)
    ahead = run(core, requests)
    sync = run(make_core(tmp_path, device, False, num_blocks=16), requests)
    assert core.scheduler.num_preemptions > 0
    assert ahead == sync
    assert core.scheduler.kv_cache_manager.pool.num_free_blocks == 16


def test_seeded_sampling_logprobs_and_prompt_logprobs_match(tmp_path, device):
    requests = {
        "seeded": (prompt(1), SamplingParams(temperature=1.0, seed=3, max_tokens=10, logprobs=2)),
        "topk": (prompt(2), SamplingParams(temperature=0.8, top_k=5, seed=9, max_tokens=7)),
        "prompt_lp": (prompt(3, 9), greedy(max_tokens=5, prompt_logprobs=1, logprobs=0)),
    }
    sync, ahead = both(tmp_path, device, requests)
    assert ahead == sync
    assert len(ahead["seeded"].logprobs) == 10
    assert len(ahead["prompt_lp"].prompt_logprobs) == 8


def test_history_readers_make_steps_wait(tmp_path, device):
    """Penalties and min_tokens read the tokens so far: while such a request runs, steps are
    not scheduled ahead, and its tokens match."""
    requests = {
        "penalised": (prompt(1), greedy(max_tokens=10, repetition_penalty=1.3)),
        "plain": (prompt(2), greedy(max_tokens=14)),
    }
    core = make_core(tmp_path, device, True)
    for request_id, (tokens, params) in requests.items():
        core.add_request(EngineCoreRequest(request_id, tokens, params, eos_token_ids=()))
    assert not core.scheduler.can_schedule_ahead
    core.abort_requests(["penalised"])
    assert core.scheduler.can_schedule_ahead
    core.abort_requests(["plain"])
    sync, ahead = both(tmp_path, device, requests)
    assert ahead == sync


def test_abort_while_scheduled_ahead_keeps_the_others_and_frees_blocks(tmp_path, device):
    requests = {f"r{i}": (prompt(i), greedy(max_tokens=10)) for i in range(3)}
    core = make_core(tmp_path, device, True)
    results = run(core, requests, abort_at={3: "r1"})
    expected = run(make_core(tmp_path, device, False), {"r0": requests["r0"], "r2": requests["r2"]})
    assert results["r1"].finish_reason == "abort" or len(results["r1"].tokens) < 10
    assert results["r0"] == expected["r0"] and results["r2"] == expected["r2"]
    assert core.scheduler.kv_cache_manager.pool.num_free_blocks == 64


@pytest.mark.parametrize("max_tokens", [1, 2])
def test_requests_of_one_or_two_tokens(tmp_path, device, max_tokens):
    requests = {f"r{i}": (prompt(i), greedy(max_tokens=max_tokens)) for i in range(3)}
    sync, ahead = both(tmp_path, device, requests)
    assert ahead == sync
    assert all(len(r.tokens) == max_tokens for r in ahead.values())
