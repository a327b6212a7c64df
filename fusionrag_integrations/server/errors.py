"""OpenAI-style errors: every failure is `{"error": {"message", "type", "param", "code"}}` with the
status an OpenAI client expects (400 bad request, 401 key, 404 model, 408 slow body, 413 body,
431 headers, 503 engine unavailable: retried by the clients, 500 ours), so the official clients
raise their usual BadRequestError / AuthenticationError / ... subclasses.

A client's mistake is logged as one line (status, route, code, message); only our own failures
(500) carry a traceback. A client that hangs up while sending is not an error of anyone's."""

from __future__ import annotations

import logging
from contextvars import ContextVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from ..errors import ContextLengthError, EngineUnavailableError, FusionRAGError, OutOfMemoryError

log = logging.getLogger("fusionrag_integrations.server")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    431: "invalid_request_error",
    503: "server_error",
}
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 408: "body_timeout", 413: "body_too_large"}


class APIError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


def error_body(status: int, message: str, code: str | None = None, param: str | None = None) -> dict:
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(status: int, message: str, code: str | None = None, param: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, code, param), status_code=status)


PROMPT_FIELD: ContextVar[str] = ContextVar("prompt_field", default="messages")  # set by a route: where its prompt is


def as_api_error(exc: Exception) -> APIError:
    """The engine's typed errors -> statuses (a prompt too long is the client's 400, as in OpenAI)."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ContextLengthError):
        return APIError(400, str(exc), "context_length_exceeded", PROMPT_FIELD.get())
    if isinstance(exc, OutOfMemoryError):
        return APIError(503, str(exc), "out_of_memory")
    if isinstance(exc, EngineUnavailableError):
        return APIError(503, str(exc), "engine_unavailable")
    if isinstance(exc, (FusionRAGError, ValueError)):
        return APIError(400, str(exc), "invalid_value")
    log.exception("request failed")
    return APIError(500, f"internal error: {type(exc).__name__}", "internal_error")


def client_error(request: Request, err: APIError) -> JSONResponse:
    """The response to a client's mistake, logged as one line."""
    log.info("%d %s %s %s: %s", err.status, request.method, request.url.path, err.code, err.message)
    return error_response(err.status, err.message, err.code, err.param)


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
        if first.get("type") == "json_invalid":
            return client_error(request, APIError(400, "the request body is not valid JSON", "invalid_json"))
        refused = (first.get("ctx") or {}).get("param")  # a field refused by name (schemas.py) names itself
        message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
        message = message if refused else f"{where or 'body'}: {message}"
        return client_error(request, APIError(400, message, "invalid_value", refused or where))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        err = APIError(exc.status_code, str(exc.detail), _HTTP_CODES.get(exc.status_code))
        response = client_error(request, err)
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(APIError)
    async def _api(request: Request, exc: APIError) -> JSONResponse:
        return client_error(request, exc)

    @app.exception_handler(FusionRAGError)
    async def _ours(request: Request, exc: FusionRAGError) -> JSONResponse:
        return client_error(request, as_api_error(exc))

    @app.exception_handler(ValueError)
    async def _value(request: Request, exc: ValueError) -> JSONResponse:
        return client_error(request, as_api_error(exc))

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect) -> Response:
        log.debug("client went away during %s %s", request.method, request.url.path)
        return Response(status_code=499)  # nobody reads it

    @app.exception_handler(Exception)
    async def _any(_: Request, exc: Exception) -> JSONResponse:
        err = as_api_error(exc)
        return error_response(err.status, err.message, err.code, err.param)
