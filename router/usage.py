"""Counting the tokens of a response as it passes through (for token rate limits)."""

import contextlib
import json

MAX_BODY_BYTES = 1 << 20  # a non-streamed answer larger than this is charged its prompt only


class UsageMeter:
    """Total tokens of one response: its `usage` when it reports one; for a stream without
    usage, the estimate given for the prompt plus one token per event carrying choices."""

    def __init__(self, streaming: bool, prompt_tokens_estimate: int) -> None:
        self.streaming = streaming
        self.prompt_tokens_estimate = prompt_tokens_estimate
        self.buffer = b""
        self.reported: int | None = None
        self.num_events = 0

    def feed(self, chunk: bytes) -> None:
        if not self.streaming:
            if len(self.buffer) + len(chunk) <= MAX_BODY_BYTES:
                self.buffer += chunk
            return
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            if line.startswith(b"data: {"):
                self._event(line[len(b"data: ") :])

    def total_tokens(self) -> int:
        if not self.streaming:
            with contextlib.suppress(ValueError):
                self.reported = _usage(json.loads(self.buffer))
        if self.reported is not None:
            return self.reported
        return self.prompt_tokens_estimate + self.num_events

    def _event(self, data: bytes) -> None:
        if b'"choices"' in data:
            self.num_events += 1
        if b'"usage"' in data:
            try:
                reported = _usage(json.loads(data))
            except ValueError:
                return
            if reported is not None:
                self.reported = reported


def _usage(body) -> int | None:
    usage = body.get("usage") if isinstance(body, dict) else None
    if isinstance(usage, dict) and isinstance(usage.get("total_tokens"), int):
        return usage["total_tokens"]
    return None
