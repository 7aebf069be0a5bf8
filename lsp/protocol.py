"""JSON-RPC dispatch that answers every request, whatever its params.

pygls decodes a message inside its reader (`json.loads(..., object_hook=structure_message)`):
a request whose params do not fit the method's type raises there, the reader logs it and the
request is never answered (a client waits for ever), although the error raised is InvalidParams.
Here the body is decoded plainly, cleaned (lone surrogates become U+FFFD, see `positions.scrub`),
checked as a JSON-RPC envelope and only then structured, so that:

- a request with params of the wrong shape or type is answered -32602 InvalidParams, naming the
  fields at fault; an envelope that is no request (no method, an id that is neither an integer
  nor a string, not JSON-RPC 2.0) -32600 InvalidRequest; a body that is not JSON -32700;
- a request before `initialize` is answered -32002, one after `shutdown` -32600 (as the LSP
  specification asks), where pygls answers nothing;
- a malformed notification is dropped with a warning (there is no one to answer).

The converter is strict about JSON's primitive types (`strict_converter`): cattrs would turn the
string "5" or `true` into the integer line 5 or 1, or the number 5 into the URI "5"; here they
are InvalidParams too.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
from typing import Any, cast

import cattrs
from lsprotocol import types
from lsprotocol.types import ResponseErrorMessage
from pygls.exceptions import (
    JsonRpcException,
    JsonRpcInternalError,
    JsonRpcInvalidParams,
    JsonRpcInvalidRequest,
    JsonRpcParseError,
    JsonRpcServerNotInitialized,
)
from pygls.protocol import JsonRPCNotification, JsonRPCRequestMessage, JsonRPCResponseMessage, LanguageServerProtocol, default_converter

from .positions import scrub
from .transport import FramingError

log = logging.getLogger("tandem.lsp")
_ESCAPED_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")  # only a \u escape can make a lone surrogate


def strict_converter() -> cattrs.Converter:
    """pygls's converter, refusing JSON values of the wrong primitive type instead of casting them."""
    converter = default_converter()

    def strict(accepted: tuple[type, ...], name: str):  # type: ignore[no-untyped-def]
        def structure(value: Any, cls: type) -> Any:
            if type(value) not in accepted:
                raise TypeError(f"expected {name}, got {type(value).__name__}")
            return cls(value)  # cls may be an enum over the primitive: its own check applies

        return structure

    for cls, accepted, name in (
        (int, (int,), "an integer"),
        (float, (int, float), "a number"),
        (str, (str,), "a string"),
        (bool, (bool,), "a boolean"),
    ):
        converter.register_structure_hook(cls, strict(accepted, name))
    return converter


def _valid_id(msg_id: Any) -> bool:
    return type(msg_id) in (int, str)


def _why(exc: Exception) -> str:
    if isinstance(exc, cattrs.ClassValidationError):
        problems = cattrs.transform_error(exc, path="$")
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        return "; ".join(problems[:3]) + more
    return f"{type(exc).__name__}: {exc}"[:300]


class TandemProtocol(LanguageServerProtocol):
    """pygls's protocol, fed whole message bodies by lsp/transport.py rather than by pygls's reader."""

    def _send_handler_result(self, future: Any, *, msg_id: Any) -> None:
        """As pygls's, without its traceback in the log for a request refused as InvalidParams."""
        if not future.cancelled() and isinstance(exc := future.exception(), JsonRpcInvalidParams):
            self._request_futures.pop(msg_id, None)
            log.info("refused request %r: %s", msg_id, exc)
            self._send_response(msg_id, error=exc.to_response_error())
            return
        super()._send_handler_result(future, msg_id=msg_id)

    def handle_body(self, body: bytes) -> None:
        try:
            data = json.loads(body.decode("utf-8-sig", "replace"))
            if _ESCAPED_SURROGATE.search(body):
                data = scrub(data)
        except (ValueError, RecursionError) as exc:
            self.reply_error(None, JsonRpcParseError(f"the message is not JSON: {exc}"[:300]))
            return
        try:
            self.handle_data(data)
        except BrokenPipeError:
            raise
        except Exception:  # SystemExit (the exit notification) goes through
            log.exception("failed to handle a message")

    def handle_framing_error(self, error: FramingError) -> None:
        if error.refused:  # a well-framed message, too large to read: say so (its id is unknown)
            self.reply_error(None, JsonRpcInvalidRequest(error.reason))

    def reply_error(self, msg_id: int | str | None, error: JsonRpcException) -> None:
        if msg_id is not None:
            self._send_response(msg_id, error=error.to_response_error())
        else:  # by hand: lsprotocol's converter would leave out the null id, and JSON-RPC needs it
            self._send_data({"jsonrpc": "2.0", "id": None, "error": {"code": error.code, "message": error.message}})

    def handle_data(self, data: Any) -> None:
        if not isinstance(data, dict):
            what = "batches are not supported" if isinstance(data, list) else "a message must be a JSON object"
            self.reply_error(None, JsonRpcInvalidRequest(what))
            return
        has_id, msg_id, method = "id" in data, data.get("id"), data.get("method")
        if has_id and not _valid_id(msg_id):
            if "method" in data:  # a request nobody can match an answer to, but an answer all the same
                self.reply_error(None, JsonRpcInvalidRequest(f"a request id must be an integer or a string, not {type(msg_id).__name__}"))
            else:
                log.warning("dropped a response with the id %.40r", msg_id)
            return
        if data.get("jsonrpc") != "2.0":
            if has_id and "method" in data:
                self.reply_error(msg_id, JsonRpcInvalidRequest('"jsonrpc" must be "2.0"'))
            else:
                log.warning("dropped a message that is not JSON-RPC 2.0")
            return
        if "method" not in data:
            if has_id and ("result" in data or "error" in data):
                self.handle_response(cast(int | str, msg_id), data)  # (checked by _valid_id above)
            else:
                self.reply_error(msg_id if has_id else None, JsonRpcInvalidRequest("neither a request, a notification nor a response"))
            return
        if not isinstance(method, str):
            if has_id:
                self.reply_error(msg_id, JsonRpcInvalidRequest(f'"method" must be a string, not {type(method).__name__}'))
            return
        if has_id:
            self.handle_request(cast(int | str, msg_id), method, data)
        else:
            self.handle_notification(method, data)

    def _structure(self, message: dict[str, Any], fallback: type) -> Any:
        message_type = self.get_message_type(message["method"]) or fallback
        if message_type is fallback:
            message.setdefault("params", None)  # untyped (tandem/*): params may be left out
        return self._converter.structure(message, message_type).params

    def handle_request(self, msg_id: int | str, method: str, data: dict[str, Any]) -> None:
        if self._shutdown:
            self.reply_error(msg_id, JsonRpcInvalidRequest("the server is shutting down"))
            return
        if self._workspace is None and method != types.INITIALIZE:
            self.reply_error(msg_id, JsonRpcServerNotInitialized("the server is not initialized yet"))
            return
        message = {"jsonrpc": "2.0", "id": msg_id, "method": method}
        if "params" in data:
            message["params"] = data["params"]
        try:
            params = self._structure(message, JsonRPCRequestMessage)
        except Exception as exc:
            log.info("refused %s request %r: %s", method, msg_id, _why(exc))
            self.reply_error(msg_id, JsonRpcInvalidParams(f"invalid params for {method}: {_why(exc)}"))
            return
        # as pygls's handle_message: each handler in a context of its own (msg_id lives there)
        contextvars.copy_context().run(self._handle_request, msg_id, method, params)

    def handle_notification(self, method: str, data: dict[str, Any]) -> None:
        if method != types.EXIT and (self._shutdown or self._workspace is None):
            log.warning("dropped %s: the server is %s", method, "shutting down" if self._shutdown else "not initialized")
            return
        message = {"jsonrpc": "2.0", "method": method}
        if "params" in data:
            message["params"] = data["params"]
        try:
            params = self._structure(message, JsonRPCNotification)
        except Exception as exc:
            log.warning("dropped a malformed %s notification: %s", method, _why(exc))
            return
        contextvars.copy_context().run(self._handle_notification, method, params)

    def handle_response(self, msg_id: int | str, data: dict[str, Any]) -> None:
        message = {k: data[k] for k in ("jsonrpc", "id", "result", "error") if k in data}
        try:
            if "error" in data:
                error = self._converter.structure(message, ResponseErrorMessage).error
                self._result_types.pop(msg_id, None)
                result = None
            else:
                response_type = self._result_types.pop(msg_id, None) or JsonRPCResponseMessage
                result, error = self._converter.structure(message, response_type).result, None
        except Exception as exc:  # the client answered our request with nonsense: fail it, not hang it
            log.warning("malformed response to %r: %s", msg_id, _why(exc))
            future = self._request_futures.pop(msg_id, None)
            if future is not None and not future.done():
                future.set_exception(JsonRpcInternalError(f"malformed response: {_why(exc)}"))
            return
        contextvars.copy_context().run(self._handle_response, msg_id, result, error)
