import pytest

from fleetlm.engine.core.kv_cache_manager import KVCacheManager
from fleetlm.engine.core.request import RequestStatus
from fleetlm.engine.core.scheduler import Scheduler, SchedulerConfig
from fleetlm.engine.core.scheduler_output import ModelRunnerOutput

from .helpers import EOS, make_request


def make_scheduler(num_blocks=64, block_size=4, caching=True, **config) -> Scheduler:
    config = {"max_num_batched_tokens": 16, "max_model_len": 64, **config}
    return Scheduler(SchedulerConfig(**config), KVCacheManager(num_blocks, block_size, caching))


def fake_step(scheduler: Scheduler, token_id: int = 7):
    """Schedule, then 'sample' `token_id` for every request that caught up with its tokens."""
    output = scheduler.schedule()
    req_ids = list(output.num_scheduled_tokens)
    sampled = []
    for req_id in req_ids:
        request = scheduler.requests[req_id]
        sampled.append([token_id] if request.num_computed_tokens == request.num_tokens else [])
    core_outputs = scheduler.update_from_output(output, ModelRunnerOutput(req_ids, sampled))
    return output, core_outputs


def run_until_done(scheduler: Scheduler, max_steps: int = 200):
    outputs = []
    for _ in range(max_steps):
        if not scheduler.has_unfinished_requests():
            return outputs
        outputs.append(fake_step(scheduler))
    raise AssertionError("requests did not finish")


def test_budget_is_spent_on_running_requests_first_then_waiting_ones():
    scheduler = make_scheduler()
    for name in "abc":
        scheduler.add_request(make_request(name, num_prompt_tokens=10))
    first, _ = fake_step(scheduler)
    assert first.num_scheduled_tokens == {"a": 10, "b": 6}  # b's prompt is chunked
    assert first.total_num_scheduled_tokens == 16
    second, _ = fake_step(scheduler)
    # a decodes (1), b finishes its prompt (4), c gets what is left (11 > 10 needed).
    assert second.num_scheduled_tokens == {"a": 1, "b": 4, "c": 10}
    assert [r.req_id for r in second.scheduled_new_reqs] == ["c"]
    assert [r.req_id for r in second.scheduled_cached_reqs] == ["a", "b"]


def test_long_prompt_is_chunked_to_the_budget():
    scheduler = make_scheduler()
    scheduler.add_request(make_request("a", num_prompt_tokens=40, max_tokens=2))
    steps = run_until_done(scheduler)
    assert [s.num_scheduled_tokens["a"] for s, _ in steps] == [16, 16, 8, 1]
    assert [o.new_token_ids for _, outs in steps for o in outs] == [[7], [7]]


def test_without_chunked_prefill_a_prompt_waits_for_a_whole_budget():
    scheduler = make_scheduler(enable_chunked_prefill=False, max_num_batched_tokens=64)
    scheduler.add_request(make_request("a", num_prompt_tokens=40))
    scheduler.add_request(make_request("b", num_prompt_tokens=30))
    first, _ = fake_step(scheduler)
    assert first.num_scheduled_tokens == {"a": 40}


def test_max_num_seqs_limits_the_running_set():
    scheduler = make_scheduler(max_num_seqs=2, max_num_batched_tokens=100)
    for name in "abc":
        scheduler.add_request(make_request(name, num_prompt_tokens=4))
    first, _ = fake_step(scheduler)
    assert set(first.num_scheduled_tokens) == {"a", "b"}
    assert scheduler.num_waiting == 1


@pytest.mark.parametrize(
    ("params", "tokens", "reason", "stop_reason"),
    [
        ({}, [EOS], "stop", None),
        ({"ignore_eos": True, "max_tokens": 2}, [EOS, EOS], "length", None),
        ({"stop_token_ids": [9]}, [5, 9], "stop", 9),
        ({"max_tokens": 3}, [5, 5, 5], "length", None),
    ],
)
def test_stop_conditions(params, tokens, reason, stop_reason):
    scheduler = make_scheduler()
    scheduler.add_request(make_request("a", num_prompt_tokens=4, **{"max_tokens": 10, **params}))
    outputs = []
    for token in tokens:
        output = scheduler.schedule()
        outputs += scheduler.update_from_output(output, ModelRunnerOutput(["a"], [[token]]))
    assert outputs[-1].finish_reason == reason
    assert outputs[-1].stop_reason == stop_reason
    assert [o.new_token_ids[0] for o in outputs] == tokens
    assert not scheduler.has_unfinished_requests()
    assert scheduler.kv_cache_manager.pool.num_free_blocks == 64


def test_max_model_len_caps_generation():
    scheduler = make_scheduler(max_model_len=12)
    scheduler.add_request(make_request("a", num_prompt_tokens=10, max_tokens=100))
    steps = run_until_done(scheduler)
    finals = [o for _, outs in steps for o in outs if o.finished]
    assert finals[0].finish_reason == "length"
    assert sum(len(o.new_token_ids) for _, outs in steps for o in outs) == 2


def test_preemption_takes_the_newest_request_and_recomputes_it():
    # 6 blocks of 4 tokens; three requests of 8 prompt tokens fill them at once.
    scheduler = make_scheduler(num_blocks=6, max_num_batched_tokens=32, caching=False)
    for name in "abc":
        scheduler.add_request(
            make_request(name, num_prompt_tokens=8, max_tokens=6, first_token=10 * ord(name))
        )
    fake_step(scheduler)
    output, _ = fake_step(scheduler)  # a needs a 3rd block: c (the newest) is preempted
    assert "c" not in output.num_scheduled_tokens
    assert scheduler.waiting[0].request_id == "c"
    preempted = scheduler.waiting[0]
    assert preempted.status == RequestStatus.PREEMPTED
    assert preempted.num_computed_tokens == 0 and preempted.num_preemptions == 1
    assert preempted.num_output_tokens == 1  # its sampled token is kept and recomputed
    steps = run_until_done(scheduler)
    resumed = next(s for s, _ in steps if any(r.req_id == "c" for r in s.scheduled_new_reqs))
    new_c = next(r for r in resumed.scheduled_new_reqs if r.req_id == "c")
    assert len(new_c.token_ids) == 9  # prompt + the kept token
    assert scheduler.num_preemptions >= 1
    assert scheduler.kv_cache_manager.pool.num_free_blocks == 6


def test_no_admissions_in_a_step_that_preempted():
    scheduler = make_scheduler(num_blocks=4, max_num_batched_tokens=32, caching=False)
    scheduler.add_request(make_request("a", num_prompt_tokens=8, max_tokens=8))
    scheduler.add_request(make_request("b", num_prompt_tokens=8, max_tokens=8, first_token=50))
    fake_step(scheduler)
    scheduler.add_request(make_request("c", num_prompt_tokens=2, first_token=90))
    output, _ = fake_step(scheduler)
    assert output.scheduled_new_reqs == []


def test_abort_frees_blocks_and_tells_the_runner():
    scheduler = make_scheduler()
    scheduler.add_request(make_request("a"))
    scheduler.add_request(make_request("b"))
    fake_step(scheduler)
    scheduler.add_request(make_request("c"))
    scheduler.finish_requests(["a", "c", "unknown"], RequestStatus.FINISHED_ABORTED)
    assert [r.request_id for r in scheduler.running] == ["b"]
    assert scheduler.num_waiting == 0
    output, _ = fake_step(scheduler)
    assert output.finished_req_ids == {"a", "c"}
    assert set(output.num_scheduled_tokens) == {"b"}


def test_duplicate_request_id_is_refused():
    scheduler = make_scheduler()
    scheduler.add_request(make_request("a"))
    with pytest.raises(ValueError, match="already in use"):
        scheduler.add_request(make_request("a"))


def test_prefix_hit_is_recorded_on_the_request():
    scheduler = make_scheduler()
    scheduler.add_request(make_request("a", num_prompt_tokens=10, max_tokens=1, first_token=5))
    run_until_done(scheduler)
    scheduler.add_request(make_request("b", num_prompt_tokens=10, max_tokens=1, first_token=5))
    output, outputs = fake_step(scheduler)
    assert output.num_scheduled_tokens == {"b": 2}
    assert outputs[0].num_cached_tokens == 8


def test_samples_share_their_leaders_prompt_blocks_without_prefix_caching():
    scheduler = make_scheduler(caching=False)
    leader = make_request("r#0", num_prompt_tokens=10)
    follower = make_request("r#1", num_prompt_tokens=10)
    follower.leader = leader
    scheduler.add_request(leader)
    scheduler.add_request(follower)
    output, _ = fake_step(scheduler)
    # The leader's 10 prompt tokens are scheduled; the follower takes its 2 full blocks
    # and computes only the last 2 tokens, in the same step.
    assert output.num_scheduled_tokens == {"r#0": 10, "r#1": 2}
    manager = scheduler.kv_cache_manager
    assert manager.get_block_ids("r#1")[:2] == manager.get_block_ids("r#0")[:2]
    assert [b.ref_cnt for b in manager.req_to_blocks["r#0"]] == [2, 2, 1]


def test_a_sample_waits_while_its_leader_prompt_is_chunked():
    scheduler = make_scheduler(caching=False, max_num_batched_tokens=8)
    leader = make_request("r#0", num_prompt_tokens=12)
    follower = make_request("r#1", num_prompt_tokens=12)
    follower.leader = leader
    scheduler.add_request(leader)
    scheduler.add_request(follower)
    first, _ = fake_step(scheduler)
    assert first.num_scheduled_tokens == {"r#0": 8}
    second, _ = fake_step(scheduler)
    assert second.num_scheduled_tokens == {"r#0": 4, "r#1": 4}
