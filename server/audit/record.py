"""The audit record's format: one typed envelope for every kind of record, written and read here.

The gateway builds an `Envelope` (a call, a refusal at the door, an IDE's feedback); the log seals
its JSON (`to_json`) and adds the chain's fields (`v`, `seq`, `id`, `ts`, `content_until`);
readers (the CLI, the review page, export, verification) parse what was sealed back with
`Envelope.read`, which accepts records of every earlier shape. The columns the review filters
index are declared on the fields (`index=`), and `INDEXED` is derived from them, so a field and
its column cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")
KINDS = ("llm.interaction", "request.refused", "completion.feedback", "support.event")


def _indexed(column: str, default: Any = None) -> Any:
    return field(default=default, metadata={"index": column})


_OMIT = {"omit_none": True}  # written only when set: the field belongs to some kinds of record, or was added later


def _optional(default: Any = None) -> Any:
    return field(default=default, metadata=_OMIT)


@dataclass(frozen=True)
class ActorRef:
    """Who called, pseudonymised: user and IP only as keyed HMACs, the client header scrubbed."""

    kind: str  # api_client | ide_user | widget_visitor | system
    user_ref: str | None = _indexed("actor_ref")
    ip_ref: str | None = None
    client: str | None = None
    tenant: str | None = None


@dataclass(frozen=True)
class ParamsRef:
    max_tokens: int | None = None
    temperature: float | str | None = None  # a non-finite value is kept as its repr (JSON has no NaN)
    top_p: float | str | None = None
    seed: int | None = None
    stop_count: int = 0
    # the logit controls, logprobs, echo and n, only where a call used them
    presence_penalty: float | None = _optional()
    frequency_penalty: float | None = _optional()
    repetition_penalty: float | None = _optional()
    logit_bias_count: int | None = _optional()
    min_tokens: int | None = _optional()
    stop_token_count: int | None = _optional()
    logprobs: int | None = _optional()
    echo: bool | None = _optional()
    n: int | None = _optional()
    grammar: str | None = _optional()  # the kind of grammar the answer was held to (json_schema, regex, …)
    tool_choice: str | None = _optional()  # where tools were offered: auto, required or function:<name>


@dataclass(frozen=True)
class ModelRef:
    name: str
    quantization: str | None = None
    params: ParamsRef | None = _optional()


@dataclass(frozen=True)
class PromptRef:
    kind: str  # text | fim | chat
    tokens: int | None = None
    chars: int | None = None
    content_hmac: str | None = None
    content_kept: bool = False  # False: refused before the secret scan, so only its length and HMAC were sealed
    context: dict[str, int] | None = None  # a fitted chat prompt's window, budget, length and turns kept and dropped
    sources: tuple[str, ...] | None = _optional()  # the knowledge passages the prompt carried (`source#passage_id`)


@dataclass(frozen=True)
class GuardRef:
    action: str | None = _indexed("action")  # the overall action: allow | flag | redact | block (None: no guarded text)
    profile: str | None = _optional()
    policy_version: str | None = _optional()
    input: tuple[dict[str, Any], ...] | None = _optional()  # one result per input scanner (ScanResult.to_json)
    output: tuple[dict[str, Any], ...] | None = _optional()

    def finding_types(self) -> dict[str, int]:
        """How many findings of each type the scanners reported, input and output together."""
        counts: dict[str, int] = {}
        for result in (*(self.input or ()), *(self.output or ())):
            for finding in result.get("findings") or ():
                counts[finding["type"]] = counts.get(finding["type"], 0) + 1
        return counts


@dataclass(frozen=True)
class ChoiceRef:
    """One of several answers to one call (n > 1)."""

    index: int
    tokens: int = 0
    chars: int | None = None
    finish_reason: str | None = None
    content_hmac: str | None = None


@dataclass(frozen=True)
class OutputRef:
    tokens: int = 0  # all choices together
    chars: int | None = None
    chunks: int = 0
    finish_reason: str | None = None  # the first choice's
    content_hmac: str | None = None
    choices: tuple[ChoiceRef, ...] | None = _optional()  # each answer, where the call asked for several
    reasoning_chars: int | None = _optional()  # a reasoning model's thinking, apart from the answer (kept with it, under its heading)
    reasoning_hmac: str | None = _optional()


@dataclass(frozen=True)
class Timing:
    started_at: str | None = None
    ttft_ms: int | None = None
    total_ms: int | None = None


@dataclass(frozen=True)
class Outcome:
    status: str | None = _indexed("outcome")  # ok | cancelled | error | blocked | refused | interrupted | accepted | dismissed
    error_code: str | None = None
    param: str | None = _optional()  # a refusal at the door: the field at fault


@dataclass(frozen=True)
class Envelope:
    type: str = field(metadata={"index": "type"})  # one of KINDS
    surface: str | None = _indexed("surface")
    request_id: str | None = _indexed("request_id")
    actor: ActorRef | None = None
    conversation_id: str | None = _indexed("conversation_id", None)
    message_id: str | None = _optional()
    session_id: str | None = _optional()
    model: ModelRef | None = _optional()
    prompt: PromptRef | None = _optional()
    guard: GuardRef = field(default_factory=GuardRef)
    output: OutputRef | None = _optional()
    timing: Timing | None = _optional()
    outcome: Outcome = field(default_factory=Outcome)
    interrupted: dict[str, str] | None = _optional()  # a call a crash cut, recorded at the next start
    audit_error: str | None = _optional()  # a body that could not be serialised, written minimal
    # sealed by the log, not by the caller
    v: int | None = _optional()
    seq: int | None = _optional()
    id: str | None = field(default=None, metadata={**_OMIT, "index": "id"})
    ts: str | None = field(default=None, metadata={**_OMIT, "index": "ts"})
    content_until: str | None = _optional()

    def to_json(self) -> dict[str, Any]:
        """The body the log seals (fields that are None and only sometimes present left out)."""
        return _to_json(self)  # type: ignore[no-any-return]

    @classmethod
    def read(cls, data: dict[str, Any]) -> Envelope:
        """A sealed record, of this shape or any earlier one (what it lacks is None; what it has
        that this version does not know is ignored)."""
        return _from_json(cls, data)

    def summary(self) -> dict[str, Any]:
        """The fields a reviewer scans a list of records by (the CLI's lines, the review page's rows)."""
        return {
            "ts": self.ts,
            "type": self.type,
            "surface": self.surface,
            "action": self.guard.action,
            "outcome": self.outcome.status,
            "finish_reason": self.output.finish_reason if self.output else None,
            "user_ref": self.actor.user_ref if self.actor else None,
            "conversation_id": self.conversation_id,
            "findings": self.guard.finding_types(),
            "tokens": {"prompt": self.prompt.tokens if self.prompt else None, "output": self.output.tokens if self.output else None},
            "timing": _to_json(self.timing) if self.timing else None,
        }


def _to_json(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if item is None and f.metadata.get("omit_none"):
                continue
            out[f.name] = _to_json(item)
        return out
    if isinstance(value, tuple | list):
        return [_to_json(v) for v in value]
    return value


def _from_json(cls: type[T], data: Any) -> T:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if not isinstance(data, dict) or f.name not in data:
            continue
        value, kind = data[f.name], _section(hints[f.name])
        if kind is not None and isinstance(value, dict):
            value = _from_json(kind, value)
        elif kind is not None:
            continue  # not a section after all (a damaged record): as if absent
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            kwargs[f.name] = "unknown"  # a required field an older or damaged record lacks
    return cls(**kwargs)


def _section(hint: Any) -> type | None:
    """The dataclass a field holds (`X | None` included), or None for a plain value."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union else (hint,)
    found = [o for o in options if dataclasses.is_dataclass(o)]
    return found[0] if found else None  # type: ignore[return-value]


def _index_paths(cls: type, prefix: tuple[str, ...] = ()) -> dict[str, tuple[str, ...]]:
    hints = typing.get_type_hints(cls)
    paths: dict[str, tuple[str, ...]] = {}
    for f in dataclasses.fields(cls):
        if "index" in f.metadata:
            paths[f.metadata["index"]] = (*prefix, f.name)
        section = _section(hints[f.name])
        if section is not None:
            paths.update(_index_paths(section, (*prefix, f.name)))
    return paths


INDEXED: dict[str, tuple[str, ...]] = _index_paths(Envelope)
"""Column name → where in the sealed JSON its value comes from (the review filters' indexes)."""


def indexed_values(envelope: dict[str, Any]) -> dict[str, Any]:
    """The indexed columns' values for a sealed record (as JSON: verification reads what was sealed)."""
    out = {}
    for column, path in INDEXED.items():
        value: Any = envelope
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        out[column] = value
    return out
