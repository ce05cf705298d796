"""Refuse request bodies that are too large or too deeply nested, before any parsing."""

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleetlm.engine.entrypoints.openai.errors import error_body


def json_depth_exceeds(body: bytes, max_depth: int) -> bool:
    """True if brackets nest deeper than `max_depth` (strings and escapes are skipped)."""
    depth = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > max_depth:
                return True
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return False


class BodyGuard:
    """Pure ASGI middleware: reads the body of POST requests once (up to `max_bytes`, else
    413), checks its nesting, and replays it to the app."""

    def __init__(self, app: ASGIApp, max_bytes: int, max_depth: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_depth = max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body, disconnected = await self._read_body(receive)
        if body is None:
            await _send_error(send, 413, f"the request body is larger than {self.max_bytes} bytes")
            return
        if json_depth_exceeds(body, self.max_depth):
            await _send_error(send, 400, f"the JSON body nests deeper than {self.max_depth} levels")
            return
        await self.app(scope, _replay(body, receive, disconnected), send)

    async def _read_body(self, receive: Receive) -> tuple[bytes | None, bool]:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b"".join(chunks), True
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return None, False
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), False


def _replay(body: bytes, receive: Receive, disconnected: bool) -> Receive:
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        if disconnected:
            return {"type": "http.disconnect"}
        return await receive()

    return replayed


async def _send_error(send: Send, status: int, message: str) -> None:
    payload = json.dumps(error_body(status, message)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
