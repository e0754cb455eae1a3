"""Errors in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, with the right status.

Nothing a client sends may end in a 500 with a traceback: every request error is
one of these, and anything else is logged and answered with a one-line 500.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from slmops.errors import CacheError, ContextTooLong, ModelNotFound, SlmopsError, UsageError

log = logging.getLogger("slmops.server")

TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}


class APIError(Exception):
    """An error answered to the client as-is."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None, headers: dict | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        kind = TYPES.get(self.status, "server_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def from_slmops(exc: SlmopsError) -> APIError:
    """The HTTP meaning of a library error."""
    if isinstance(exc, (ModelNotFound, CacheError)) or type(exc).__name__ == "InvalidModelName":
        return APIError(404, str(exc), "model", "model_not_found")
    if isinstance(exc, ContextTooLong):
        return APIError(400, str(exc), "messages", "context_length_exceeded")
    if isinstance(exc, UsageError):
        return APIError(400, str(exc), None, "invalid_parameter")
    return APIError(500, str(exc), None, "internal_error")


METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def install(app: FastAPI) -> None:
    """Answer every error raised by a route, or by FastAPI's own parsing, in OpenAI's shape."""

    @app.exception_handler(APIError)
    async def _api(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(SlmopsError)
    async def _slmops(request: Request, exc: SlmopsError):
        return from_slmops(exc).response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return validation_error(exc.errors()).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            headers["Allow"] = allowed_methods(request)
        return APIError(exc.status_code, str(exc.detail), headers=headers).response()

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return APIError(500, f"Internal error: {type(exc).__name__}; the server log has the details.").response()


def allowed_methods(request: Request) -> str:
    """Every method the request's path answers to, across all its routes.

    Starlette's own 405 names only the first route whose path matches, so a path with
    one route per method (GET and DELETE of /v1/responses/{id}) would list only GET.
    Each method is tried against the app's routing itself, so the list is what is answered.
    """
    routes = request.app.router.routes
    return ", ".join(
        method
        for method in METHODS
        if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes)
    )


def validation_error(errors: Sequence[Any]) -> APIError:
    """422 for a body that is not JSON at all, 400 naming the field for a wrong value."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
    if first.get("type") == "json_invalid":
        return APIError(422, f"The request body is not valid JSON: {first.get('msg')}.", None, "invalid_json")
    location = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")]
    param = ".".join(location) or None
    if first.get("type") == "extra_forbidden":  # an endpoint that names every parameter it takes
        why = "this endpoint does not take it (/openapi.json lists those it does)."
        return APIError(400, f"Unsupported parameter {param}: {why}", param, "unsupported_parameter")
    where = f"{param}: " if param else ""
    return APIError(400, f"Invalid request: {where}{first.get('msg')}.", param, "invalid_parameter")
