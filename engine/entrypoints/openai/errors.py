"""Errors in the OpenAI shape: {"error": {"message", "type", "param", "code"}}."""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from fleetlm.engine.errors import InvalidRequestError

logger = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


# The OpenAPI documentation of every error an API route answers (FastAPI's default 422 is
# never sent: validation errors are 400s in this shape).
ERROR_RESPONSES: dict[int | str, dict] = {
    "4XX": {"model": ErrorResponse, "description": "A bad request, in the OpenAI error shape"},
    "5XX": {"model": ErrorResponse, "description": "A server error, in the OpenAI error shape"},
}


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers


def error_body(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> dict:
    return {
        "error": {
            "message": message,
            "type": _TYPES.get(status, "server_error"),
            "param": param,
            "code": code,
        }
    }


def error_response(
    status: int,
    message: str,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        error_body(status, message, param, code), status_code=status, headers=headers
    )


def validation_error_response(errors: list[dict]) -> JSONResponse:
    """The first pydantic error, named by its field path (the "body" prefix dropped)."""
    first = errors[0] if errors else {"msg": "invalid request", "loc": ()}
    param = ".".join(_field_path(first.get("loc", ()))) or None
    message = first.get("msg", "invalid request")
    if first.get("type") == "json_invalid":
        message, param = "the request body is not valid JSON", None
    elif param:
        message = f"{param}: {message}"
    return error_response(400, message, param)


def _field_path(loc) -> list[str]:
    """The field names and list indexes of a pydantic error location, without the "body"
    prefix and the union-member tags pydantic adds ("str", "list[int]", "function-after[...]")."""
    return [
        str(part)
        for part in loc
        if isinstance(part, int)
        or (part != "body" and part.isidentifier() and part not in _TYPE_TAGS)
    ]


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "tuple"}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.param, exc.code, exc.headers)

    @app.exception_handler(InvalidRequestError)
    async def _invalid_request(request: Request, exc: InvalidRequestError) -> JSONResponse:
        return error_response(400, str(exc), exc.param)

    @app.exception_handler(RequestValidationError)
    async def _request_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error_response(list(exc.errors()))

    @app.exception_handler(ValidationError)
    async def _validation(request: Request, exc: ValidationError) -> JSONResponse:
        return validation_error_response(list(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(
            exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error on %s", request.url.path)
        return error_response(500, "internal server error")
