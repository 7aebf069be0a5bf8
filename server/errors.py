"""OpenAI-style error responses: the one place where failures become HTTP.

Every 4xx/5xx the API returns has the body `{"error": {"message", "type", "param", "code"}}`,
which the official clients parse into their typed exceptions.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from .failures import CallFailed, Code


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


# What each of the gateway's failure codes is over HTTP: (status, OpenAI error type). Written once.
HTTP: dict[Code, tuple[int, str]] = {
    Code.CONTEXT_LENGTH_EXCEEDED: (400, "invalid_request_error"),
    Code.INVALID_VALUE: (400, "invalid_request_error"),
    Code.TOOLS_NOT_SUPPORTED: (400, "invalid_request_error"),
    Code.INPUT_TOO_LARGE: (413, "invalid_request_error"),
    Code.CONTENT_BLOCKED: (400, "invalid_request_error"),
    Code.OUTPUT_BLOCKED: (422, "invalid_request_error"),
    Code.OVERLOADED: (503, "overloaded"),
    Code.AUDIT_UNAVAILABLE: (503, "server_error"),
    Code.ENGINE_UNAVAILABLE: (503, "server_error"),
    Code.ENGINE_ERROR: (500, "server_error"),
    Code.UPSTREAM_FAILED: (502, "server_error"),
}


def from_failure(exc: CallFailed) -> APIError:
    """A failed call as the HTTP error the API answers (a retry delay becomes `Retry-After`)."""
    status, type_ = HTTP[exc.code]
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    return APIError(status, exc.message, type=type_, param=exc.param, code=exc.code.value, headers=headers)


async def handle_api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return exc.response()


async def handle_not_found(request: Request, exc: Exception) -> JSONResponse:
    status = getattr(exc, "status_code", 404)
    message = f"{request.method} {request.url.path} is not a route of this server"
    if status == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
    return APIError(status, message, code="not_found" if status == 404 else "method_not_allowed").response()


async def handle_unexpected(request: Request, exc: Exception) -> JSONResponse:
    return APIError(500, "internal server error", type="server_error").response()
