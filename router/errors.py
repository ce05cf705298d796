"""Errors in the OpenAI shape, built by the engine server's own `error_body` (torch-free)."""

import json

from fastapi.responses import JSONResponse

from fleetlm.engine.entrypoints.openai.errors import error_body


def error_response(
    status: int, message: str, code: str | None = None, headers: dict | None = None
) -> JSONResponse:
    return JSONResponse(error_body(status, message, code=code), status_code=status, headers=headers)


def sse_error_event(message: str) -> bytes:
    """An error event ending a stream the client already receives (no [DONE] follows)."""
    body = error_body(502, message, code="upstream_failed")
    return f"data: {json.dumps(body)}\n\n".encode()
