"""The engine-core process: `EngineCore` behind a Unix socket, driven by the HTTP front end.

    python -m fleetlm.engine.core.engine_process --socket PATH --engine-args JSON

It connects to PATH (the front end listens there), builds the engine from `EngineArgs(**JSON)`,
sends "ready", then loops: apply what the front end sent, step while there is work, send
"outputs" after every step that produced some (with the current stats) and a stats-only
"outputs" about once a second otherwise. See `wire.py` for the messages. When the engine
args name a Redis for KV-cache events, the prefix-cache changes of every step are handed to a
`KVEventPublisher` (a background thread: Redis never stalls the loop).

Exit codes: 0 after "shutdown" or when the front end goes away (end of stream); 1 after an
exception while building the engine or stepping (reported first with an "error" message).
SIGINT is ignored (Ctrl-C belongs to the front end); SIGTERM ends the process at once.

A request the core refuses (an id already in use, an invalid request: a `ValueError` from
`EngineCore.add_request`) is logged and answered with a finished output, finish reason
"abort", for that id; the engine goes on. A frame that does not follow the protocol is logged
and skipped.
"""

import argparse
import contextlib
import json
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from fleetlm.engine.core.protocol import EngineCoreOutput
from fleetlm.engine.core.wire import (
    TO_CORE,
    Message,
    ReadyInfo,
    WireError,
    decode_message,
    encode_message,
    recv_frame,
    send_frame,
)

if TYPE_CHECKING:
    from fleetlm.engine.core.engine_core import EngineCore, StepInFlight
    from fleetlm.engine.core.kv_event_publisher import KVEventPublisher

logger = logging.getLogger("fleetlm.engine.core.engine_process")

STATS_INTERVAL_S = 1.0  # stats-only "outputs" while no step produced any
_END_OF_STREAM = Message("end_of_stream", {})  # queued by the reader when the front end leaves


class FrontEndGone(Exception):
    """The front end closed the connection or stopped reading."""


class EngineProcess:
    """The loop of the engine-core process, around an `EngineCore` and a connected socket."""

    def __init__(self, core: "EngineCore", sock: socket.socket) -> None:
        self.core = core
        self.sock = sock
        self.inbox: queue.Queue[Message] = queue.Queue()
        self.pending: list[EngineCoreOutput] = []  # outputs made outside a step (refused adds)
        self.last_sent = time.monotonic()
        self.has_new_stats = False  # a message changed them: send them without waiting
        self.kv_event_publisher: KVEventPublisher | None = None  # set by `run` when configured

    def run(self) -> None:
        """Until "shutdown" or end of stream (returns), or an engine failure (raises)."""
        threading.Thread(target=self._read_frames, name="frame-reader", daemon=True).start()
        self.kv_event_publisher = start_kv_event_publisher(self.core)
        try:
            self._loop()
        finally:
            if self.kv_event_publisher is not None:
                self.kv_event_publisher.close()

    def _loop(self) -> None:
        in_flight: StepInFlight | None = None
        while True:
            # Wait for messages only when there is nothing to step, and not past the next stats.
            busy = in_flight is not None or self.core.has_unfinished_requests()
            if not self._apply_inbox(None if busy else self._seconds_to_stats()):
                return
            outputs, self.pending = self.pending, []
            # The next step runs on the device while this one's outputs are encoded and sent.
            step_outputs, in_flight = self.core.advance(in_flight)
            self._publish_kv_events()
            outputs += step_outputs
            if outputs or self._seconds_to_stats() == 0.0:
                self._send_outputs(outputs)

    def _publish_kv_events(self) -> None:
        """Hand the step's prefix-cache changes (or, after a Redis outage, all) to Redis."""
        publisher = self.kv_event_publisher
        if publisher is None:
            return
        publisher.publish(self.core.take_kv_events())
        if publisher.needs_snapshot:
            publisher.publish_snapshot(self.core.cached_block_hashes())

    def _seconds_to_stats(self) -> float:
        if self.has_new_stats:
            return 0.0
        return max(0.0, self.last_sent + STATS_INTERVAL_S - time.monotonic())

    def _apply_inbox(self, timeout: float | None) -> bool:
        """Apply every queued message; wait up to `timeout` for the first one when given
        (no work to do). False when the front end asked to shut down or went away."""
        try:
            message = (
                self.inbox.get_nowait() if timeout is None else self.inbox.get(timeout=timeout)
            )
        except queue.Empty:
            return True
        while True:
            if message.type in ("shutdown", "end_of_stream"):
                logger.info("engine core exiting (%s)", message.type)
                return False
            self._apply(message)
            try:
                message = self.inbox.get_nowait()
            except queue.Empty:
                return True

    def _apply(self, message: Message) -> None:
        if message.type == "add":
            request = message.fields["request"]
            try:
                self.core.add_request(request)
            except ValueError as e:
                logger.error("refused request %r: %s", request.request_id, e)
                self.pending.append(EngineCoreOutput(request.request_id, [], finish_reason="abort"))
        elif message.type == "abort":
            self.core.abort_requests(message.fields["request_ids"])
        elif message.type == "stop":
            self.core.stop_requests(message.fields["request_ids"])
        elif message.type == "reset_prefix_cache" and not self.core.reset_prefix_cache():
            logger.warning("prefix cache not reset: requests still hold blocks")
        self.has_new_stats = True

    def _send_outputs(self, outputs: list[EngineCoreOutput]) -> None:
        _send(self.sock, encode_message("outputs", outputs=outputs, stats=self.core.stats()))
        self.last_sent = time.monotonic()
        self.has_new_stats = False

    def _read_frames(self) -> None:
        """Reader thread: frames -> messages in the inbox; bad frames are logged, skipped."""
        while True:
            try:
                payload = recv_frame(self.sock)
                if payload is None:
                    break
                self.inbox.put(decode_message(payload, allowed=TO_CORE))
            except WireError as e:
                logger.error("skipped a bad frame from the front end: %s", e)
            except OSError as e:
                logger.info("connection to the front end lost: %s", e)
                break
        self.inbox.put(_END_OF_STREAM)


def ready_info(core: "EngineCore") -> ReadyInfo:
    model, cache = core.config.model, core.config.cache
    return ReadyInfo(
        model=model.model,
        tokenizer=model.tokenizer,
        dtype=model.dtype,
        device=core.config.device,
        max_model_len=model.max_model_len,
        max_logprobs=model.max_logprobs,
        block_size=cache.block_size,
        num_blocks=core.stats().num_blocks,
        vocab_size=model.arch.vocab_size,
        eos_token_ids=tuple(model.eos_token_ids),
        enable_prefix_caching=cache.enable_prefix_caching,
    )


def start_kv_event_publisher(core: "EngineCore") -> "KVEventPublisher | None":
    """A publisher of the core's KV-cache events when its config asks for one."""
    config = core.config.kv_events
    if config is None:
        return None
    from fleetlm.engine.core.kv_event_publisher import KVEventPublisher

    logger.info("publishing KV-cache events of %s to Redis", config.replica)
    return KVEventPublisher(config.redis_url, config.replica, config.key_prefix)


def build_engine_core(engine_args: dict[str, Any]) -> "EngineCore":
    from fleetlm.engine.config import EngineArgs
    from fleetlm.engine.core.engine_core import EngineCore

    return EngineCore(EngineArgs(**engine_args).create_engine_config())


def serve(sock: socket.socket, engine_args_json: str) -> int:
    """Build the engine, report "ready", run; the exit code of the process."""
    try:
        engine_args = json.loads(engine_args_json)
        if not isinstance(engine_args, dict):
            raise ValueError(f"--engine-args must be a JSON object, got {engine_args_json!r}")
        core = build_engine_core(engine_args)
        _send(sock, encode_message("ready", **vars(ready_info(core))))
        EngineProcess(core, sock).run()
        return 0
    except FrontEndGone as e:
        logger.info("the front end went away (%s); exiting", e)
        return 0
    except Exception as e:
        logger.exception("engine core failed")
        _report_error(sock, f"{type(e).__name__}: {e}")
        return 1


def _send(sock: socket.socket, payload: bytes) -> None:
    try:
        send_frame(sock, payload)
    except OSError as e:
        raise FrontEndGone(str(e)) from e


def _report_error(sock: socket.socket, message: str) -> None:
    with contextlib.suppress(OSError):  # the front end may be gone already
        send_frame(sock, encode_message("error", message=message))


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True, help="Unix socket the front end listens on")
    parser.add_argument("--engine-args", required=True, help="EngineArgs fields as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s engine-core[{os.getpid()}] %(name)s: %(message)s",
    )
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(args.socket)
    except OSError as e:
        logger.error("cannot connect to the front end at %s: %s", args.socket, e)
        return 1
    with sock:
        return serve(sock, args.engine_args)


if __name__ == "__main__":
    sys.exit(main())
