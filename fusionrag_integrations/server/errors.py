"""OpenAI-style errors: every failure is `{"error": {"message", "type", "param", "code"}}` with the
status an OpenAI client expects (400 bad request, 401 key, 404 model, 413 body, 500 ours), so the
official clients raise their usual BadRequestError / AuthenticationError / ... subclasses."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ..errors import ContextLengthError, FusionRAGError, OutOfMemoryError

log = logging.getLogger("fusionrag.server")

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          405: "invalid_request_error", 413: "invalid_request_error", 503: "server_error"}  # fmt: skip


class APIError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


def error_body(status: int, message: str, code: str | None = None, param: str | None = None) -> dict:
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(status: int, message: str, code: str | None = None, param: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, code, param), status_code=status)


def as_api_error(exc: Exception) -> APIError:
    """The engine's typed errors -> statuses (a prompt too long is the client's 400, as in OpenAI)."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ContextLengthError):
        return APIError(400, str(exc), "context_length_exceeded", "messages")
    if isinstance(exc, OutOfMemoryError):
        return APIError(503, str(exc), "out_of_memory")
    if isinstance(exc, (FusionRAGError, ValueError)):
        return APIError(400, str(exc), "invalid_value")
    log.exception("request failed")
    return APIError(500, f"internal error: {type(exc).__name__}", "internal_error")


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
        if first.get("type") == "json_invalid":
            return error_response(400, "the request body is not valid JSON", "invalid_json")
        return error_response(400, f"{where or 'body'}: {first.get('msg', 'invalid')}", "invalid_value", where)

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(APIError)
    async def _api(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.code, exc.param)

    @app.exception_handler(Exception)
    async def _any(_: Request, exc: Exception) -> JSONResponse:
        err = as_api_error(exc)
        return error_response(err.status, err.message, err.code, err.param)
