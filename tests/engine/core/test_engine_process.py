"""The engine-core process and its asyncio client, with a real subprocess and a tiny Llama with
random weights (each engine starts in about two seconds on CPU)."""

import asyncio
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest

from fleetlm.engine.config import EngineArgs
from fleetlm.engine.core.client import EngineCoreClient, EngineDeadError, EngineStartError
from fleetlm.engine.core.protocol import EngineCoreOutput, EngineCoreRequest, EngineCoreStats
from fleetlm.engine.core.wire import (
    PROTOCOL_VERSION,
    TO_FRONT_END,
    decode_message,
    encode_message,
    pack_frame,
    recv_frame,
    send_frame,
)
from fleetlm.engine.sampling_params import SamplingParams

from .helpers import tiny_engine_args

pytestmark = pytest.mark.timeout(60)

EOS = 0
START_TIMEOUT_S = 30.0


@pytest.fixture
def engine_args(tmp_path: Path) -> EngineArgs:
    return tiny_engine_args(tmp_path, eos_token_id=EOS)


class Recorder:
    """The front end's side: what the callbacks received."""

    def __init__(self) -> None:
        self.outputs: dict[str, list[EngineCoreOutput]] = defaultdict(list)
        self.stats: EngineCoreStats | None = None
        self.dead: list[str] = []

    def on_outputs(self, outputs: list[EngineCoreOutput], stats: EngineCoreStats) -> None:
        for output in outputs:
            self.outputs[output.request_id].append(output)
        self.stats = stats

    def on_dead(self, reason: str) -> None:
        self.dead.append(reason)

    def tokens(self, request_id: str) -> list[int]:
        return [t for output in self.outputs[request_id] for t in output.new_token_ids]

    def finish_reason(self, request_id: str) -> str | None:
        outputs = self.outputs[request_id]
        return outputs[-1].finish_reason if outputs else None

    def client(self) -> EngineCoreClient:
        return EngineCoreClient(self.on_outputs, self.on_dead)


async def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for a condition"
        await asyncio.sleep(0.01)


def request(request_id: str, max_tokens: int, **params) -> EngineCoreRequest:
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, **params)
    return EngineCoreRequest(request_id, [1, 2, 3, 4, 5], params, eos_token_ids=(EOS,))


def is_running(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def test_requests_run_to_completion_and_shutdown_reaps(engine_args):
    async def main():
        recorder = Recorder()
        client = recorder.client()
        info = await client.start(engine_args, ready_timeout=START_TIMEOUT_S)
        assert (info.block_size, info.num_blocks, info.vocab_size) == (4, 64, 256)
        assert (info.max_model_len, info.eos_token_ids, info.tokenizer) == (256, (EOS,), None)
        assert client.is_alive and is_running(client.pid)

        # Bad frames are skipped, not fatal: garbage, a pickle, another version, wrong direction.
        for payload in (
            b"\xc1garbage",
            pickle.dumps({"v": PROTOCOL_VERSION, "type": "shutdown"}),
            msgpack.packb({"v": PROTOCOL_VERSION + 1, "type": "shutdown"}),
            encode_message("error", message="not for the core"),
        ):
            client._writer.write(pack_frame(payload))

        client.add_request(request("a", max_tokens=3, prompt_logprobs=1))
        client.add_request(request("b", max_tokens=7, logprobs=2))
        client.add_request(request("c", max_tokens=12, temperature=0.0))
        client.add_request(request("c", max_tokens=1))  # id in use: refused, reported as abort
        await eventually(lambda: all(recorder.finish_reason(r) == "length" for r in "abc"))

        assert [len(recorder.tokens(r)) for r in "abc"] == [3, 7, 12]
        assert all(0 <= t < 256 for r in "abc" for t in recorder.tokens(r))
        refused = [o for o in recorder.outputs["c"] if o.finish_reason == "abort"]
        assert len(refused) == 1 and refused[0].new_token_ids == []
        first_index, prompt_logprobs = recorder.outputs["a"][0].new_prompt_logprobs
        assert (first_index, len(prompt_logprobs.ranks)) == (1, 4)  # the 5-token prompt, less one
        for output in recorder.outputs["b"]:
            assert output.new_logprobs is not None
            assert len(output.new_logprobs.token_ids[0]) == 1 + 2
        assert recorder.stats.num_running == recorder.stats.num_waiting == 0

        pid = client.pid
        await client.shutdown(timeout=10)
        await client.shutdown()  # idempotent
        assert not is_running(pid)
        assert not client.is_alive
        assert recorder.dead == []  # an asked-for shutdown is not a death
        with pytest.raises(EngineDeadError):
            client.add_request(request("d", max_tokens=1))

    asyncio.run(main())


def test_abort_and_stop_free_the_blocks_and_sigterm_ends_it(engine_args):
    async def main():
        recorder = Recorder()
        client = recorder.client()
        info = await client.start(engine_args, ready_timeout=START_TIMEOUT_S)
        try:
            client.add_request(request("aborted", max_tokens=200))
            client.add_request(request("stopped", max_tokens=200))
            await eventually(
                lambda: min(map(len, map(recorder.tokens, ["aborted", "stopped"]))) >= 3
            )
            assert recorder.stats.num_free_blocks < info.num_blocks

            client.abort_requests(["aborted"])
            client.stop_requests(["stopped"])
            client.abort_requests(["never-heard-of"])
            await eventually(
                lambda: (
                    recorder.stats.num_running == 0
                    and recorder.stats.num_free_blocks == info.num_blocks
                )
            )
            assert len(recorder.tokens("aborted")) < 200
            assert len(recorder.tokens("stopped")) < 200

            client.reset_prefix_cache()
            client.add_request(request("after", max_tokens=2))
            await eventually(lambda: recorder.finish_reason("after") == "length")
            assert client.is_alive

            os.kill(client.pid, signal.SIGTERM)  # ends it at once
            assert await asyncio.wait_for(client._process.wait(), 5) == -signal.SIGTERM
            await eventually(lambda: recorder.dead != [])
        finally:
            await client.shutdown()

    asyncio.run(main())


def test_bad_model_path_fails_quickly_with_the_reason(engine_args, tmp_path):
    engine_args.model = str(tmp_path / "no-such-model")

    async def main():
        client = Recorder().client()
        started = time.monotonic()
        with pytest.raises(EngineStartError, match="no-such-model' does not exist"):
            await client.start(engine_args, ready_timeout=START_TIMEOUT_S)
        assert time.monotonic() - started < 15
        assert client.pid is not None and not is_running(client.pid)
        await client.shutdown()

    asyncio.run(main())


def test_killed_engine_triggers_on_dead(engine_args):
    async def main():
        recorder = Recorder()
        client = recorder.client()
        await client.start(engine_args, ready_timeout=START_TIMEOUT_S)
        try:
            os.kill(client.pid, signal.SIGINT)  # Ctrl-C belongs to the front end: ignored
            await asyncio.sleep(0.2)
            assert client.is_alive and recorder.dead == []

            os.kill(client.pid, signal.SIGKILL)
            await eventually(lambda: recorder.dead != [])
            assert len(recorder.dead) == 1
            assert not client.is_alive
            with pytest.raises(EngineDeadError):
                client.add_request(request("late", max_tokens=1))
        finally:
            await client.shutdown()
        assert len(recorder.dead) == 1

    asyncio.run(main())


def test_engine_process_exits_when_the_front_end_goes_away(engine_args):
    """Drive the process by hand over a plain socket, as any other front end would."""
    with tempfile.TemporaryDirectory() as socket_dir:
        path = os.path.join(socket_dir, "engine.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(1)
        listener.settimeout(START_TIMEOUT_S)
        command = [sys.executable, "-m", "fleetlm.engine.core.engine_process", "--socket", path]
        process = subprocess.Popen([*command, "--engine-args", json.dumps(vars(engine_args))])
        try:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(START_TIMEOUT_S)
                assert decode_message(recv_frame(conn), TO_FRONT_END).type == "ready"
                send_frame(conn, encode_message("add", request=request("x", max_tokens=2)))
                outputs = []
                while not (outputs and outputs[-1].finished):
                    outputs += decode_message(recv_frame(conn), TO_FRONT_END).fields["outputs"]
                assert sum(len(o.new_token_ids) for o in outputs) == 2
            assert process.wait(timeout=10) == 0
        finally:
            process.kill()
            process.wait()
            listener.close()


def test_tokens_outside_the_vocabulary_are_refused_and_the_engine_keeps_serving(engine_args):
    async def main():
        recorder = Recorder()
        client = recorder.client()
        await client.start(engine_args, ready_timeout=START_TIMEOUT_S)
        try:
            bad = EngineCoreRequest("bad", [1, 999], SamplingParams(max_tokens=1), (EOS,))
            client.add_request(bad)
            good = EngineCoreRequest(
                "good", [1, 2], SamplingParams(max_tokens=2, ignore_eos=True), (EOS,)
            )
            client.add_request(good)
            await eventually(lambda: recorder.finish_reason("good") is not None)
            assert recorder.finish_reason("bad") == "abort"
            assert recorder.tokens("good") and client.is_alive and recorder.dead == []
        finally:
            await client.shutdown()

    asyncio.run(main())
