"""`POST /v1/feedback`: a client reports that a completion was accepted or dismissed.

Counted in `/metrics` (`tandem_completion_feedback_total{event}`, so acceptance rate is
accepted / (accepted + dismissed)) and recorded in the audit log beside the completion it
refers to (same `request_id`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter
from pydantic import Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .schemas import _Strict, parse_body, read_body
from .state import AppState


class FeedbackBody(_Strict):
    # the id this server gave the completion (cmpl-/chatcmpl- and 32 hex digits): nothing a client invents is recorded
    request_id: str = Field(pattern="^(?:cmpl|chatcmpl)-[0-9a-f]{32}$")
    event: str = Field(pattern="^(accepted|dismissed)$")


def feedback_counter(registry: CollectorRegistry) -> Counter:
    return Counter("tandem_completion_feedback", "Completions accepted or dismissed, as reported by clients.", ["event"], registry=registry)


async def feedback(request: Request) -> Response:
    state: AppState = request.state.tandem
    body = parse_body(await read_body(request), FeedbackBody)
    state.completion_feedback.labels(body.event).inc()
    client = request.headers.get("x-tandem-client") or request.headers.get("user-agent")
    state.gateway.record_feedback(body.request_id, body.event, client)
    return JSONResponse({"ok": True})


routes = [Route("/feedback", feedback, methods=["POST"])]  # under the /v1 mount
