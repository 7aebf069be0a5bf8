"""OpenAI-style error responses: the one place where failures become HTTP.

Every 4xx/5xx the API returns has the body `{"error": {"message", "type", "param", "code"}}`,
which the official clients parse into their typed exceptions.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse


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
