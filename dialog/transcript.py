"""A conversation's transcript, for the people who read it afterwards (`tandem conversations show |
export`, the console's download): JSON with everything kept, or plain text to read or paste into a
ticket. Text is as the guard passed it; nothing else is added."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from .identity import Contact
from .store import Store

SPEAKERS = {"user": "Visitor", "assistant": "Assistant", "agent": "Agent"}


async def transcript(store: Store, cid: str) -> dict[str, Any] | None:
    conv = await store.conversation(cid)
    if conv is None:
        return None
    msgs = []
    for m in await store.messages(cid):
        item: dict[str, Any] = {
            "message_id": m.id,
            "role": m.role,
            "status": m.status,
            "finish_reason": m.finish_reason,
            "created_at": m.created_at,
            "text": m.text,
        }
        if m.author:
            item["author"] = m.author
        if m.rating:
            item["rating"] = m.rating
        if m.sources:
            item["sources"] = json.loads(m.sources)
        msgs.append(item)
    contact = Contact.from_json(conv.get("contact"))
    return {**conv, "contact": dataclasses.asdict(contact) if contact else None, "messages": msgs}


def as_text(dump: dict[str, Any]) -> str:
    lines = [f"conversation {dump['id']} on {dump['site_key']}, visitor {dump['visitor_id']}, started {dump['created_at']}"]
    if dump.get("contact"):
        lines.append(f"customer: {Contact(**dump['contact'])}")
    state = dump.get("status") or "bot"
    lines.append(
        f"status: {state}"
        + (f" ({dump['agent']})" if dump.get("agent") else "")
        + (f", rated {dump['rating']}/5" if dump.get("rating") else "")
    )
    for m in dump["messages"]:
        who = SPEAKERS.get(m["role"], m["role"]) + (f" {m['author']}" if m.get("author") else "")
        flags = ("" if m["status"] == "done" else f" [{m['status']}]") + (f" [rated {m['rating']}]" if m.get("rating") else "")
        lines.append(f"\n{who} ({m['created_at']}){flags}:\n{m['text']}")
        if m.get("sources"):
            lines.append("sources: " + "; ".join(s.get("heading") or s.get("title", "") for s in m["sources"]))
    return "\n".join(lines) + "\n"
