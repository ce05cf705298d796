"""The wire format between the HTTP front end and the engine-core process (torch-free).

A frame is a 4-byte big-endian length followed by a msgpack payload. A payload is a map
`{"v": PROTOCOL_VERSION, "type": <message type>, <fields of that type>...}`. Nothing is ever
unpickled: every field is checked against the type it must have, and dataclasses travel as
maps of their fields, rebuilt through their constructors (so `SamplingParams` re-validates).
Anything malformed raises `WireError`, never another exception.

Messages, front end -> core:
    add                 {request: EngineCoreRequest}
    abort               {request_ids: [str]}
    stop                {request_ids: [str]}  # the front end found a stop string
    reset_prefix_cache  {}
    shutdown            {}
core -> front end:
    ready               {the fields of ReadyInfo}
    outputs             {outputs: [EngineCoreOutput], stats: EngineCoreStats}
    error               {message: str}  # the core failed; it exits after sending this

Bump PROTOCOL_VERSION on any change to these messages or to the dataclasses they carry.
"""

import asyncio
import contextlib
import dataclasses
import socket
import struct
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import msgpack

from fleetlm.engine.core.protocol import EngineCoreOutput, EngineCoreRequest, EngineCoreStats

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 64 * 1024 * 1024
_HEADER = struct.Struct(">I")
_MAX_ARRAY_LEN = 16 * 1024 * 1024
_MAX_MAP_LEN = 1024 * 1024

TO_CORE = frozenset({"add", "abort", "stop", "reset_prefix_cache", "shutdown"})
TO_FRONT_END = frozenset({"ready", "outputs", "error"})


class WireError(ValueError):
    """A frame or message that does not follow the protocol."""


@dataclass(frozen=True)
class ReadyInfo:
    """What the engine core reports once it is built: the facts the front end needs."""

    model: str
    tokenizer: str | None
    dtype: str
    device: str
    max_model_len: int
    max_logprobs: int
    block_size: int
    num_blocks: int
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    enable_prefix_caching: bool


@dataclass(frozen=True)
class Message:
    type: str
    fields: dict[str, Any]  # field name -> decoded value (dataclasses rebuilt)


def _schema(message_type: str) -> dict[str, Any] | None:
    """Field name -> type of each message; None for an unknown type."""
    return _SCHEMAS.get(message_type)


_SCHEMAS: dict[str, dict[str, Any]] = {
    "add": {"request": EngineCoreRequest},
    "abort": {"request_ids": list[str]},
    "stop": {"request_ids": list[str]},
    "reset_prefix_cache": {},
    "shutdown": {},
    "ready": typing.get_type_hints(ReadyInfo),
    "error": {"message": str},
    "outputs": {"outputs": list[EngineCoreOutput], "stats": EngineCoreStats},
}


# -- messages ------------------------------------------------------------------------------


def encode_message(message_type: str, **fields: Any) -> bytes:
    """The payload of one message (without the frame header)."""
    schema = _schema(message_type)
    if schema is None:
        raise WireError(f"unknown message type {message_type!r}")
    if set(fields) != set(schema):
        raise WireError(
            f"message {message_type!r} takes fields {sorted(schema)}, got {sorted(fields)}"
        )
    payload = {"v": PROTOCOL_VERSION, "type": message_type}
    for name, tp in schema.items():
        payload[name] = _encoder(tp)(fields[name])
    try:
        return msgpack.packb(payload, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as e:
        raise WireError(f"cannot encode message {message_type!r}: {e}") from e


def decode_message(payload: bytes, allowed: frozenset[str] | None = None) -> Message:
    """Check and rebuild one message; `allowed` limits the types (e.g. `TO_CORE`)."""
    data = _unpack(payload)
    if not isinstance(data, dict):
        raise WireError(f"a message must be a map, got {type(data).__name__}")
    version = data.get("v")
    if version != PROTOCOL_VERSION or type(version) is not int:
        raise WireError(
            f"protocol version {_short(version)} is not supported (expected {PROTOCOL_VERSION})"
        )
    message_type = data.get("type")
    schema = _schema(message_type) if isinstance(message_type, str) else None
    if schema is None or (allowed is not None and message_type not in allowed):
        raise WireError(f"unexpected message type {_short(message_type)}")
    fields = {k: v for k, v in data.items() if k not in ("v", "type")}
    _check_keys(fields, schema, f"message {message_type!r}")
    return Message(
        message_type,
        {name: _decoder(tp)(fields[name], f"{message_type}.{name}") for name, tp in schema.items()},
    )


def _unpack(payload: bytes) -> Any:
    if len(payload) > MAX_FRAME_BYTES:
        raise WireError(f"payload of {len(payload)} bytes exceeds {MAX_FRAME_BYTES}")
    try:
        return msgpack.unpackb(
            payload,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_str_len=MAX_FRAME_BYTES,
            max_bin_len=MAX_FRAME_BYTES,
            max_array_len=_MAX_ARRAY_LEN,
            max_map_len=_MAX_MAP_LEN,
            max_ext_len=0,  # no extension types
        )
    except Exception as e:  # msgpack raises several kinds for malformed input
        raise WireError(f"not a msgpack payload: {type(e).__name__}: {e}") from e


def _check_keys(data: dict[str, Any], expected: dict[str, Any], where: str) -> None:
    if data.keys() != expected.keys():
        missing = [name for name in expected if name not in data]
        unknown = [_short(key) for key in data if key not in expected]
        problems = [f"missing fields {', '.join(missing)}"] if missing else []
        problems += [f"unknown fields {', '.join(unknown)}"] if unknown else []
        raise WireError(f"{where}: {'; '.join(problems)}")


def _short(value: Any) -> str:
    """A repr cut short: error messages quote what a peer sent."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# -- typed conversion ----------------------------------------------------------------------
#
# NOTE: converters are compiled once per type from the dataclasses' annotations, so every
# field of EngineCoreRequest, SamplingParams, EngineCoreOutput, TokenLogprobs, EngineCoreStats
# and ReadyInfo travels without a hand-written list to keep in sync. Supported annotations:
# int, float, bool, str, None, X | Y, list[X], tuple[X, ...], tuple[X, Y], and dataclasses.

Decoder = Callable[[Any, str], Any]  # (wire value, where in the message) -> Python value

_SCALARS: dict[Any, tuple[type, ...]] = {
    int: (int,),
    float: (float, int),
    bool: (bool,),
    str: (str,),
    type(None): (type(None),),
}


@cache
def _encoder(tp: Any) -> Callable[[Any], Any]:
    if dataclasses.is_dataclass(tp):
        field_encoders = [(name, _encoder(t)) for name, t in _init_fields(tp).items()]
        return lambda obj: {name: enc(getattr(obj, name)) for name, enc in field_encoders}
    if not _holds_dataclass(tp):
        return lambda value: value  # msgpack packs scalars, lists and tuples as they are
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list:
        item = _encoder(args[0])
        return lambda value: [item(v) for v in value]
    if origin is tuple:
        items = [_encoder(a) for a in args]
        return lambda value: [enc(v) for enc, v in zip(items, value, strict=True)]
    non_none = [a for a in args if a is not type(None)]
    if origin in (types.UnionType, typing.Union) and len(non_none) == 1:  # X | None
        enc = _encoder(non_none[0])
        return lambda value: None if value is None else enc(value)
    raise TypeError(f"the wire format does not support {tp!r}")


@cache
def _decoder(tp: Any) -> Decoder:
    if tp in _SCALARS:
        return _scalar_decoder(tp)
    if dataclasses.is_dataclass(tp):
        return _dataclass_decoder(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list:
        return _list_decoder(args[0])
    if origin is tuple:
        return _tuple_decoder(args)
    if origin in (types.UnionType, typing.Union):
        return _union_decoder(args)
    raise TypeError(f"the wire format does not support {tp!r}")


def _scalar_decoder(tp: type) -> Decoder:
    accepted = _SCALARS[tp]

    def decode(value: Any, where: str) -> Any:
        if type(value) not in accepted:  # `type`, not isinstance: a bool is not an int here
            raise WireError(f"{where}: expected {tp.__name__}, got {type(value).__name__}")
        return float(value) if tp is float else value

    return decode


def _list_decoder(item_tp: Any) -> Decoder:
    if item_tp in _SCALARS:
        accepted = frozenset(_SCALARS[item_tp])

        def decode_scalars(value: Any, where: str) -> list:  # fast path: token ids, logprobs
            item_types = set(map(type, value)) if type(value) is list else {None}
            if not item_types <= accepted:
                raise WireError(f"{where}: expected a list of {item_tp.__name__}")
            if item_tp is float and int in item_types:
                return [float(v) for v in value]
            return value

        return decode_scalars
    item = _decoder(item_tp)

    def decode(value: Any, where: str) -> list:
        if type(value) is not list:
            raise WireError(f"{where}: expected a list, got {type(value).__name__}")
        return [item(v, f"{where}[{i}]") for i, v in enumerate(value)]

    return decode


def _tuple_decoder(args: tuple[Any, ...]) -> Decoder:
    if len(args) == 2 and args[1] is Ellipsis:
        as_list = _list_decoder(args[0])
        return lambda value, where: tuple(as_list(value, where))
    items = [_decoder(a) for a in args]

    def decode(value: Any, where: str) -> tuple:
        if type(value) is not list or len(value) != len(items):
            raise WireError(f"{where}: expected a list of {len(items)} items")
        return tuple(
            dec(v, f"{where}[{i}]") for i, (dec, v) in enumerate(zip(items, value, strict=True))
        )

    return decode


def _union_decoder(args: tuple[Any, ...]) -> Decoder:
    is_optional = type(None) in args
    options = [_decoder(a) for a in args if a is not type(None)]
    names = " | ".join(getattr(a, "__name__", repr(a)) for a in args)

    def decode(value: Any, where: str) -> Any:
        if value is None and is_optional:
            return None
        if len(options) == 1:
            return options[0](value, where)  # X | None: X's own error says more
        for option in options:
            with contextlib.suppress(WireError):
                return option(value, where)
        raise WireError(f"{where}: expected {names}, got {type(value).__name__}")

    return decode


def _dataclass_decoder(cls: type) -> Decoder:
    fields = {name: _decoder(tp) for name, tp in _init_fields(cls).items()}

    def decode(value: Any, where: str) -> Any:
        if type(value) is not dict:
            raise WireError(f"{where}: expected a map ({cls.__name__}), got {type(value).__name__}")
        _check_keys(value, fields, where)
        kwargs = {name: dec(value[name], f"{where}.{name}") for name, dec in fields.items()}
        try:
            return cls(**kwargs)
        except (ValueError, TypeError) as e:  # e.g. InvalidRequestError from SamplingParams
            raise WireError(f"{where}: invalid {cls.__name__}: {e}") from e

    return decode


def _init_fields(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _holds_dataclass(tp: Any) -> bool:
    return dataclasses.is_dataclass(tp) or any(_holds_dataclass(a) for a in typing.get_args(tp))


# -- frames --------------------------------------------------------------------------------


def pack_frame(payload: bytes) -> bytes:
    if len(payload) > MAX_FRAME_BYTES:
        raise WireError(f"payload of {len(payload)} bytes exceeds {MAX_FRAME_BYTES}")
    return _HEADER.pack(len(payload)) + payload


def send_frame(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(pack_frame(payload))


def recv_frame(sock: socket.socket) -> bytes | None:
    """The next payload; None on end of stream. An oversize frame is read past (the stream
    stays in step) and reported as a `WireError`; so is a stream that ends inside a frame."""
    header = _recv_exactly(sock, _HEADER.size)
    if header is None:
        return None
    (length,) = _HEADER.unpack(header)
    if length > MAX_FRAME_BYTES:
        while length > 0:
            chunk = _recv_exactly(sock, min(length, 1 << 20))
            if chunk is None:
                break
            length -= len(chunk)
        raise WireError(f"frame of {_HEADER.unpack(header)[0]} bytes exceeds {MAX_FRAME_BYTES}")
    payload = _recv_exactly(sock, length)
    if payload is None:
        raise WireError("the stream ended inside a frame")
    return payload


def _recv_exactly(sock: socket.socket, size: int) -> bytes | None:
    """`size` bytes; None at end of stream before the first byte; WireError after it."""
    buf = bytearray()
    while len(buf) < size:
        chunk = sock.recv(size - len(buf))
        if not chunk:
            if not buf:
                return None
            raise WireError("the stream ended inside a frame")
        buf += chunk
    return bytes(buf)


async def read_frame(reader: asyncio.StreamReader) -> bytes | None:
    """The asyncio twin of `recv_frame`."""
    try:
        header = await reader.readexactly(_HEADER.size)
    except asyncio.IncompleteReadError as e:
        if not e.partial:
            return None
        raise WireError("the stream ended inside a frame") from e
    (length,) = _HEADER.unpack(header)
    try:
        if length > MAX_FRAME_BYTES:
            for start in range(0, length, 1 << 20):
                await reader.readexactly(min(1 << 20, length - start))
            raise WireError(f"frame of {length} bytes exceeds {MAX_FRAME_BYTES}")
        return await reader.readexactly(length)
    except asyncio.IncompleteReadError as e:
        raise WireError("the stream ended inside a frame") from e


async def write_frame(writer: asyncio.StreamWriter, payload: bytes) -> None:
    writer.write(pack_frame(payload))
    await writer.drain()
