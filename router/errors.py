"""Errors in the OpenAI shape, as the engine's server answers them."""

import json

from fastapi.responses import JSONResponse

_TYPES = {400: "invalid_request_error", 429: "rate_limit_error"}


def error_body(status: int, message: str, code: str | None = None) -> dict:
    return {
        "error": {
            "message": message,
            "type": _TYPES.get(status, "server_error"),
            "param": None,
            "code": code,
        }
    }


def error_response(
    status: int, message: str, code: str | None = None, headers: dict | None = None
) -> JSONResponse:
    return JSONResponse(error_body(status, message, code), status_code=status, headers=headers)


def sse_error_event(message: str) -> bytes:
    """An error event ending a stream the client already receives (no [DONE] follows)."""
    return f"data: {json.dumps(error_body(502, message, 'upstream_failed'))}\n\n".encode()
