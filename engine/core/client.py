"""`EngineCoreClient`: the HTTP process's asyncio handle on the engine-core process.

The client listens on a Unix socket in a private temporary directory, starts
`python -m fleetlm.engine.core.engine_process` (its stdout and stderr are this process's, so
its logs show), and talks to it in the messages of `wire.py`.

- Requests go out through plain methods (`add_request`, `abort_requests`, ...): they write a
  frame to the socket without awaiting a drain, so they keep their order and can be called
  from sync code in the event loop's thread. The core reads continuously, so the write buffer
  does not build up. They raise `EngineDeadError` once the core is gone.
- Outputs come back through `on_outputs(outputs, stats)`, called by a background task for
  every "outputs" message (after each step that produced outputs, and about once a second
  with stats only).
- `on_dead(reason)` is called once if the core goes away without being asked to (connection
  closed, process exited, "error" received), so the front end can fail in-flight requests and
  report itself unhealthy. It is not called for a `shutdown()`.
- `shutdown()` must be called (e.g. in the server's lifespan) to reap the process; if this
  process dies instead, the core sees the end of the stream and exits on its own.
"""

import asyncio
import contextlib
import dataclasses
import json
import logging
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleetlm.engine.core.protocol import EngineCoreOutput, EngineCoreRequest
from fleetlm.engine.core.wire import (
    TO_FRONT_END,
    Message,
    ReadyInfo,
    WireError,
    decode_message,
    encode_message,
    pack_frame,
    read_frame,
)

if TYPE_CHECKING:
    from fleetlm.engine.config import EngineArgs
    from fleetlm.engine.core.protocol import EngineCoreStats

logger = logging.getLogger(__name__)

OutputsCallback = Callable[[list[EngineCoreOutput], "EngineCoreStats"], None]
DeadCallback = Callable[[str], None]

_ENGINE_MODULE = "fleetlm.engine.core.engine_process"
_ERROR_GRACE_S = 1.0  # after the process exits during start: time to read its "error"
_SIGNAL_WAIT_S = 5.0  # how long a signalled process gets to exit


class EngineStartError(RuntimeError):
    """The engine-core process did not become ready; the message says why."""


class EngineDeadError(RuntimeError):
    """The engine-core process is gone (or shut down); nothing can be sent to it."""


class EngineCoreClient:
    def __init__(self, on_outputs: OutputsCallback, on_dead: DeadCallback | None = None) -> None:
        self.on_outputs = on_outputs
        self.on_dead = on_dead
        self.ready_info: ReadyInfo | None = None
        self.dead_reason: str | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._server: asyncio.Server | None = None
        self._socket_dir: str | None = None
        self._connected: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]]
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: list[asyncio.Task] = []
        self._is_closing = False
        self._shutdown_task: asyncio.Task | None = None

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self, engine_args: "EngineArgs", ready_timeout: float = 300.0) -> ReadyInfo:
        """Start the engine-core process and wait for its "ready"; `EngineStartError` (after
        cleaning up) if it reports an error, exits or stays silent for `ready_timeout` s."""
        if self._process is not None:
            raise RuntimeError("the engine core was started already")
        try:
            await self._spawn(dataclasses.asdict(engine_args))
            self.ready_info = await self._wait_ready(ready_timeout)
        except BaseException:
            await self._kill_and_clean_up()
            raise
        self._tasks = [
            asyncio.create_task(self._read_messages(), name="engine-core-reader"),
            asyncio.create_task(self._watch_process(), name="engine-core-watcher"),
        ]
        logger.info("engine core ready (pid %d): %s", self.pid, self.ready_info)
        return self.ready_info

    async def _spawn(self, engine_args: dict[str, Any]) -> None:
        self._socket_dir = tempfile.mkdtemp(prefix="fleetlm-")  # mode 0700: ours alone
        socket_path = str(Path(self._socket_dir) / "engine.sock")
        self._connected = asyncio.get_running_loop().create_future()
        self._server = await asyncio.start_unix_server(self._on_connection, socket_path)
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            _ENGINE_MODULE,
            "--socket",
            socket_path,
            "--engine-args",
            json.dumps(engine_args, default=str),  # str(): a model given as a Path
        )

    def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._connected.done():
            writer.close()  # only the engine we started may connect, once
            return
        self._connected.set_result((reader, writer))

    async def _wait_ready(self, timeout: float) -> ReadyInfo:
        assert self._process is not None
        handshake = asyncio.ensure_future(self._handshake())
        exited = asyncio.ensure_future(self._process.wait())
        try:
            done, _ = await asyncio.wait(
                {handshake, exited}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if handshake not in done and exited in done:  # its "error" may still be in flight
                done, _ = await asyncio.wait({handshake}, timeout=_ERROR_GRACE_S)
            if handshake in done:
                return handshake.result()
            if exited.done():
                raise EngineStartError(
                    f"the engine core exited with code {exited.result()} before it was ready"
                )
            raise EngineStartError(f"the engine core was not ready within {timeout:g} s")
        finally:
            for task in (handshake, exited):
                task.cancel()

    async def _handshake(self) -> ReadyInfo:
        self._reader, self._writer = await self._connected
        self._close_server()
        payload = await read_frame(self._reader)
        if payload is None:
            raise EngineStartError("the engine core closed the connection before it was ready")
        try:
            message = decode_message(payload, allowed=TO_FRONT_END)
        except WireError as e:
            raise EngineStartError(f"bad first message from the engine core: {e}") from e
        if message.type == "error":
            raise EngineStartError(f"the engine core failed to start: {message.fields['message']}")
        if message.type != "ready":
            raise EngineStartError(f"expected 'ready' from the engine core, got {message.type!r}")
        return ReadyInfo(**message.fields)

    async def shutdown(self, timeout: float = 10.0) -> None:
        """Ask the core to exit, wait up to `timeout` s, then SIGTERM, then SIGKILL. Idempotent;
        concurrent calls wait for the same shutdown."""
        if self._shutdown_task is None:
            self._shutdown_task = asyncio.ensure_future(self._shutdown(timeout))
        await asyncio.shield(self._shutdown_task)

    async def _shutdown(self, timeout: float) -> None:
        self._is_closing = True
        if self._writer is not None and self.dead_reason is None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                self._writer.write(pack_frame(encode_message("shutdown")))
        await self._kill_and_clean_up(timeout)
        logger.info("engine core stopped")

    async def _kill_and_clean_up(self, timeout: float = 0.0) -> None:
        """Give the process `timeout` s to exit, then SIGTERM it, then SIGKILL it; close the
        connection and the listener."""
        self._is_closing = True
        process = self._process
        if process is not None and not await _has_exited(process, timeout):
            with contextlib.suppress(ProcessLookupError):  # it may exit meanwhile
                process.terminate()
            if not await _has_exited(process, _SIGNAL_WAIT_S):
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await _has_exited(process, _SIGNAL_WAIT_S)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError):
                await self._writer.wait_closed()
        self._close_server()

    def _close_server(self) -> None:
        """Stop listening and remove the socket's directory (once connected, or at the end)."""
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None

    # -- state ---------------------------------------------------------------------------

    @property
    def is_alive(self) -> bool:
        return self.ready_info is not None and self.dead_reason is None and not self._is_closing

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    # -- front end -> core ---------------------------------------------------------------

    def add_request(self, request: EngineCoreRequest) -> None:
        self._send("add", request=request)

    def abort_requests(self, request_ids: list[str]) -> None:
        self._send("abort", request_ids=list(request_ids))

    def stop_requests(self, request_ids: list[str]) -> None:
        """Finish requests whose stop string the front end found (status "stopped")."""
        self._send("stop", request_ids=list(request_ids))

    def reset_prefix_cache(self) -> None:
        """Ask the core to forget its cached blocks (done only if no request holds blocks)."""
        self._send("reset_prefix_cache")

    def _send(self, message_type: str, **fields: Any) -> None:
        if not self.is_alive:
            raise EngineDeadError(self.dead_reason or "the engine core is not running")
        assert self._writer is not None
        self._writer.write(pack_frame(encode_message(message_type, **fields)))

    # -- core -> front end ---------------------------------------------------------------

    async def _read_messages(self) -> None:
        assert self._reader is not None
        try:
            while (payload := await read_frame(self._reader)) is not None:
                try:
                    message = decode_message(payload, allowed=TO_FRONT_END)
                except WireError as e:
                    logger.error("skipped a bad frame from the engine core: %s", e)
                    continue
                if message.type == "error":
                    self._mark_dead(f"the engine core failed: {message.fields['message']}")
                    return
                if message.type == "outputs":
                    self._deliver(message)
        except (OSError, WireError) as e:
            self._mark_dead(f"lost the connection to the engine core: {e}")
            return
        self._mark_dead("the engine core closed the connection")

    def _deliver(self, message: Message) -> None:
        try:
            self.on_outputs(message.fields["outputs"], message.fields["stats"])
        except Exception:
            logger.exception("on_outputs failed")

    async def _watch_process(self) -> None:
        assert self._process is not None
        code = await self._process.wait()
        self._mark_dead(f"the engine core exited with code {code}")

    def _mark_dead(self, reason: str) -> None:
        if self.dead_reason is not None:
            return
        self.dead_reason = reason
        if self._is_closing:
            return
        logger.error("engine core dead: %s", reason)
        if self.on_dead is not None:
            try:
                self.on_dead(reason)
            except Exception:
                logger.exception("on_dead failed")


async def _has_exited(process: asyncio.subprocess.Process, timeout: float) -> bool:
    if process.returncode is None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(process.wait(), timeout)
    return process.returncode is not None
