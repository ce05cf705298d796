"""The wire format between the front end and the engine-core process: round trips, and every
kind of malformed input raising `WireError` (nothing else)."""

import asyncio
import math
import pickle
import random
import socket
import struct
import subprocess
import sys

import msgpack
import pytest

from fleetlm.engine.core import wire
from fleetlm.engine.core.protocol import EngineCoreOutput, EngineCoreRequest, EngineCoreStats
from fleetlm.engine.core.scheduler_output import TokenLogprobs
from fleetlm.engine.core.wire import (
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    TO_CORE,
    TO_FRONT_END,
    ReadyInfo,
    WireError,
    decode_message,
    encode_message,
    pack_frame,
    read_frame,
    recv_frame,
    send_frame,
)
from fleetlm.engine.sampling_params import SamplingParams


def make_request() -> EngineCoreRequest:
    params = SamplingParams(
        temperature=0.7,
        top_p=0.9,
        top_k=40,
        min_p=0.05,
        seed=1234,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        repetition_penalty=1.1,
        stop=["\n\n", "END"],
        stop_token_ids=[7, 8],
        include_stop_str_in_output=True,
        ignore_eos=True,
        max_tokens=None,
        min_tokens=2,
        logprobs=5,
        prompt_logprobs=1,
        skip_special_tokens=False,
        detokenize=False,
    )
    return EngineCoreRequest(
        request_id="cmpl-42-1",
        prompt_token_ids=[1, 15043, 3186, 29991],
        sampling_params=params,
        eos_token_ids=(2, 32000),
        leader_id="cmpl-42-0",
        arrival_time=12345.678,
    )


def make_outputs() -> list[EngineCoreOutput]:
    sampled = TokenLogprobs(
        token_ids=[[42, 42, 7, 9]], logprobs=[[-0.25, -0.25, -1.5, -math.inf]], ranks=[1]
    )
    prompt = TokenLogprobs(
        token_ids=[[15043, 3], [3186, 3186]], logprobs=[[-7.5, -0.1], [-2.0, -2.0]], ranks=[12, 1]
    )
    return [
        EngineCoreOutput("a", [42], new_logprobs=sampled, new_prompt_logprobs=(1, prompt)),
        EngineCoreOutput("b", [], num_cached_tokens=16),
        EngineCoreOutput("c", [2], finish_reason="stop", stop_reason=2),
        EngineCoreOutput("d", [5, 6], finish_reason="stop", stop_reason="END"),
        EngineCoreOutput("e", [], finish_reason="abort"),
    ]


def make_stats() -> EngineCoreStats:
    return EngineCoreStats(
        num_running=3,
        num_waiting=1,
        kv_cache_usage=0.25,
        num_blocks=64,
        num_free_blocks=48,
        prefix_cache_queries=100,
        prefix_cache_hits=32,
        num_preemptions=0,
    )


def make_ready_info() -> ReadyInfo:
    return ReadyInfo(
        model="/models/smollm2",
        tokenizer=None,
        dtype="float32",
        device="cpu",
        max_model_len=8192,
        max_logprobs=20,
        block_size=16,
        num_blocks=1024,
        vocab_size=49152,
        eos_token_ids=(2,),
        enable_prefix_caching=True,
    )


def raw(payload: dict) -> bytes:
    return msgpack.packb(payload, use_bin_type=True)


def request_dict() -> dict:
    """An "add" message as a peer would send it, to be spoiled by a test."""
    return msgpack.unpackb(encode_message("add", request=make_request()))


# -- round trips -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message_type", "fields"),
    [
        ("add", {"request": make_request()}),
        ("abort", {"request_ids": ["a", "b"]}),
        ("stop", {"request_ids": []}),
        ("reset_prefix_cache", {}),
        ("shutdown", {}),
        ("outputs", {"outputs": make_outputs(), "stats": make_stats()}),
        ("outputs", {"outputs": [], "stats": make_stats()}),
        ("error", {"message": "RuntimeError: CUDA out of memory"}),
    ],
)
def test_round_trip(message_type, fields):
    message = decode_message(encode_message(message_type, **fields))
    assert message.type == message_type
    assert message.fields == fields


def test_round_trip_ready():
    info = make_ready_info()
    message = decode_message(encode_message("ready", **vars(info)), allowed=TO_FRONT_END)
    assert ReadyInfo(**message.fields) == info


def test_round_trip_keeps_types():
    request = decode_message(encode_message("add", request=make_request())).fields["request"]
    assert isinstance(request.sampling_params, SamplingParams)
    assert request.eos_token_ids == (2, 32000)
    output = decode_message(encode_message("outputs", outputs=make_outputs(), stats=make_stats()))
    first = output.fields["outputs"][0]
    assert isinstance(first.new_logprobs, TokenLogprobs)
    assert isinstance(first.new_prompt_logprobs, tuple)
    assert first.new_logprobs.logprobs[0][3] == -math.inf


def test_int_where_float_expected_becomes_float():
    request = make_request()
    request.sampling_params.temperature = 0  # a user's int
    decoded = decode_message(encode_message("add", request=request)).fields["request"]
    assert decoded.sampling_params.temperature == 0.0
    assert type(decoded.sampling_params.temperature) is float


def test_direction_is_checked():
    with pytest.raises(WireError, match="unexpected message type 'ready'"):
        decode_message(encode_message("ready", **vars(make_ready_info())), allowed=TO_CORE)
    with pytest.raises(WireError, match="unexpected message type 'add'"):
        decode_message(encode_message("add", request=make_request()), allowed=TO_FRONT_END)


# -- malformed messages ------------------------------------------------------------------


def test_version_mismatch():
    with pytest.raises(WireError, match="protocol version 2 is not supported"):
        decode_message(raw({"v": PROTOCOL_VERSION + 1, "type": "shutdown"}))
    with pytest.raises(WireError, match="protocol version"):
        decode_message(raw({"type": "shutdown"}))
    with pytest.raises(WireError, match="protocol version"):
        decode_message(raw({"v": True, "type": "shutdown"}))


def test_unknown_type():
    with pytest.raises(WireError, match="unexpected message type 'launch'"):
        decode_message(raw({"v": PROTOCOL_VERSION, "type": "launch"}))
    with pytest.raises(WireError, match="unexpected message type 3"):
        decode_message(raw({"v": PROTOCOL_VERSION, "type": 3}))
    with pytest.raises(WireError, match="unknown message type"):
        encode_message("launch")


def test_missing_and_unknown_fields():
    with pytest.raises(WireError, match=r"missing fields request_ids$"):
        decode_message(raw({"v": PROTOCOL_VERSION, "type": "abort"}))
    with pytest.raises(WireError, match=r"shutdown': unknown fields 'force'$"):
        decode_message(raw({"v": PROTOCOL_VERSION, "type": "shutdown", "force": True}))
    message = request_dict()
    del message["request"]["eos_token_ids"]
    with pytest.raises(WireError, match=r"add\.request: missing fields eos_token_ids$"):
        decode_message(raw(message))


def test_unknown_sampling_param_is_rejected():
    message = request_dict()
    message["request"]["sampling_params"]["best_of"] = 2
    with pytest.raises(WireError, match="best_of"):
        decode_message(raw(message))


@pytest.mark.parametrize(
    ("path", "value", "match"),
    [
        (("request", "request_id"), 42, "request_id: expected str, got int"),
        (("request", "prompt_token_ids"), [1, 2.5], "prompt_token_ids: expected a list of int"),
        (("request", "prompt_token_ids"), [1, True], "prompt_token_ids: expected a list of int"),
        (("request", "prompt_token_ids"), "1 2 3", "prompt_token_ids: expected a list of int"),
        (("request", "eos_token_ids"), {"2": 2}, "eos_token_ids: expected a list of int"),
        (("request", "leader_id"), 7, "leader_id: expected str, got int"),
        (("request", "sampling_params"), [], "sampling_params: expected a map"),
        (("request", "sampling_params", "temperature"), "hot", "temperature: expected float"),
        (("request", "sampling_params", "max_tokens"), True, "max_tokens: expected int"),
        (("request", "sampling_params", "stop"), [b"\n"], "stop: expected a list of str"),
    ],
)
def test_ill_typed_fields(path, value, match):
    message = request_dict()
    target = message
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(WireError, match=match):
        decode_message(raw(message))


def test_ill_typed_outputs():
    payload = msgpack.unpackb(encode_message("outputs", outputs=make_outputs(), stats=make_stats()))
    payload["outputs"][0]["new_prompt_logprobs"] = [1]  # not (index, logprobs)
    with pytest.raises(WireError, match=r"new_prompt_logprobs: expected a list of 2 items"):
        decode_message(raw(payload))
    payload["outputs"][0]["new_prompt_logprobs"] = None
    payload["outputs"][0]["new_logprobs"]["logprobs"] = [["-0.5"]]
    with pytest.raises(WireError, match=r"logprobs\[0\]: expected a list of float"):
        decode_message(raw(payload))
    payload["outputs"][0]["new_logprobs"] = None
    payload["stats"]["num_running"] = -1.0
    with pytest.raises(WireError, match="num_running: expected int, got float"):
        decode_message(raw(payload))


def test_sampling_params_are_validated_on_decode():
    message = request_dict()
    message["request"]["sampling_params"]["temperature"] = -1.0
    with pytest.raises(WireError, match="temperature must be non-negative"):
        decode_message(raw(message))
    message["request"]["sampling_params"]["temperature"] = 1.0
    message["request"]["sampling_params"]["top_k"] = -5
    with pytest.raises(WireError, match="top_k"):
        decode_message(raw(message))


def test_pickled_payload_is_rejected():
    for protocol in (0, 2, pickle.HIGHEST_PROTOCOL):
        with pytest.raises(WireError):
            decode_message(pickle.dumps({"v": PROTOCOL_VERSION, "type": "shutdown"}, protocol))


def test_random_bytes_are_rejected():
    rng = random.Random(0)
    for _ in range(500):
        payload = rng.randbytes(rng.randrange(0, 64))
        with pytest.raises(WireError):
            decode_message(payload)


def test_not_a_map_and_extension_types():
    for value in (None, 1, "shutdown", [PROTOCOL_VERSION, "shutdown"]):
        with pytest.raises(WireError, match="must be a map"):
            decode_message(raw(value))
    with pytest.raises(WireError):
        decode_message(raw({"v": PROTOCOL_VERSION, "type": msgpack.ExtType(1, b"x")}))


def test_truncated_payload():
    payload = encode_message("outputs", outputs=make_outputs(), stats=make_stats())
    for cut in (1, len(payload) // 2, len(payload) - 1):
        with pytest.raises(WireError):
            decode_message(payload[:cut])


def test_oversize_payload():
    with pytest.raises(WireError, match="exceeds"):
        decode_message(b"\x00" * (MAX_FRAME_BYTES + 1))
    with pytest.raises(WireError, match="exceeds"):
        pack_frame(b"\x00" * (MAX_FRAME_BYTES + 1))


# -- frames ------------------------------------------------------------------------------


def test_socket_frames_round_trip_and_end_of_stream():
    left, right = socket.socketpair()
    with left, right:
        payloads = [encode_message("shutdown"), b"", b"x" * 100_000]
        for payload in payloads:
            send_frame(left, payload)
        left.shutdown(socket.SHUT_WR)
        assert [recv_frame(right) for _ in payloads] == payloads
        assert recv_frame(right) is None


@pytest.mark.parametrize(
    "stream",
    [b"\x00\x00", struct.pack(">I", 10) + b"abc"],
    ids=["inside the header", "inside the payload"],
)
def test_socket_stream_ending_inside_a_frame(stream):
    left, right = socket.socketpair()
    with left, right:
        left.sendall(stream)
        left.shutdown(socket.SHUT_WR)
        with pytest.raises(WireError, match="ended inside a frame"):
            recv_frame(right)
        assert recv_frame(right) is None


def test_oversize_frame_is_skipped_and_the_stream_stays_in_step(monkeypatch):
    monkeypatch.setattr(wire, "MAX_FRAME_BYTES", 16)
    left, right = socket.socketpair()
    with left, right:
        left.sendall(struct.pack(">I", 20) + b"y" * 20 + struct.pack(">I", 2) + b"ok")
        left.shutdown(socket.SHUT_WR)
        with pytest.raises(WireError, match="frame of 20 bytes exceeds 16"):
            recv_frame(right)
        assert recv_frame(right) == b"ok"


def test_asyncio_frames():
    async def main():
        reader = asyncio.StreamReader()
        reader.feed_data(pack_frame(b"one") + struct.pack(">I", 5) + b"tw")
        reader.feed_eof()
        assert await read_frame(reader) == b"one"
        with pytest.raises(WireError, match="ended inside a frame"):
            await read_frame(reader)
        assert await read_frame(reader) is None

        reader = asyncio.StreamReader()
        reader.feed_data(struct.pack(">I", MAX_FRAME_BYTES + 1))
        reader.feed_eof()
        with pytest.raises(WireError):
            await read_frame(reader)

    asyncio.run(main())


def test_importing_the_wire_format_does_not_import_torch():
    code = (
        "import sys; from fleetlm.engine.core import wire; "
        "wire.decode_message(wire.encode_message('abort', request_ids=['a'])); "
        "assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
