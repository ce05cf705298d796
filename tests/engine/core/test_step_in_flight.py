"""Steps in flight: `launch_step` then `finish_step` equals `step`, and requests aborted or
stopped while a step is in flight lose nothing of the others and give their blocks back."""

from pathlib import Path

import pytest

from fleetlm.engine.core.engine_core import EngineCore
from fleetlm.engine.core.protocol import EngineCoreRequest
from fleetlm.engine.sampling_params import SamplingParams

from .helpers import tiny_engine_args


@pytest.fixture
def core(tmp_path: Path) -> EngineCore:
    return EngineCore(tiny_engine_args(tmp_path).create_engine_config())


def add(core: EngineCore, request_id: str, max_tokens: int) -> None:
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0.0)
    prompt = [1 + len(request_id), 2, 3, 4, 5, 6]
    core.add_request(EngineCoreRequest(request_id, prompt, params, eos_token_ids=()))


def run_pipelined(core: EngineCore, abort_at: dict[int, str]) -> dict[str, list[int]]:
    """The engine process's loop: finish N, launch N+1, then act on N's outputs."""
    tokens: dict[str, list[int]] = {}
    in_flight, step = core.launch_step(), 0
    while in_flight is not None:
        if step in abort_at:  # arrives while the step is on the device
            core.abort_requests([abort_at[step]])
        outputs = core.finish_step(in_flight)
        in_flight = core.launch_step() if core.has_unfinished_requests() else None
        for output in outputs:
            tokens.setdefault(output.request_id, []).extend(output.new_token_ids)
        step += 1
    return tokens


def test_pipelined_steps_equal_plain_steps(core, tmp_path):
    for i in range(3):
        add(core, f"r{i}", max_tokens=5 + i)
    pipelined = run_pipelined(core, {})
    for i in range(3):
        add(core, f"s{i}", max_tokens=5 + i)
    plain: dict[str, list[int]] = {}
    while core.has_unfinished_requests():
        for output in core.step():
            plain.setdefault(output.request_id, []).extend(output.new_token_ids)
    assert [pipelined[f"r{i}"] for i in range(3)] == [plain[f"s{i}"] for i in range(3)]
    assert [len(pipelined[f"r{i}"]) for i in range(3)] == [5, 6, 7]


def test_abort_while_in_flight_keeps_the_others_and_frees_blocks(core):
    add(core, "keep", max_tokens=8)
    add(core, "drop", max_tokens=8)
    tokens = run_pipelined(core, {2: "drop"})
    assert len(tokens["keep"]) == 8
    assert len(tokens["drop"]) < 8
    stats = core.stats()
    assert stats.num_free_blocks == stats.num_blocks  # every block came back
