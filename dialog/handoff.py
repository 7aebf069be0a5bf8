"""People in the loop: who answers a conversation, and the moves between them.

    bot ──(visitor asks for a person: the button or the words)──> waiting
    bot | waiting ──(a staff member takes it over, or replies)──> agent
    agent | waiting ──(hand back)──> bot
    any ──(close)──> closed ──(the visitor writes again)──> bot

While a person is asked for or has it, the bot stays quiet: the visitor's messages are guarded,
kept and audited for the staff, not answered. Every move is a `status` frame in the conversation
(stored and replayed like the rest, so a reloaded widget knows), an audit record naming who made
it, a webhook event, and an update to every console that may see the site. Mixed into
DialogService, whose hubs, store and gateway it uses."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from server.gateway import Actor, Call, CallFailed, ChatPrompt, Params, Priority

from . import frames
from .staff import StaffMember
from .store import Site

if TYPE_CHECKING:
    from .service import Client, Hub

log = logging.getLogger("tandem.dialog")

# "talk to a person" in the widget's languages; short on purpose: a question about "our staff" is not one
ASKS_FOR_PERSON = re.compile(
    r"\b(talk|speak|chat)\s+(to|with)\s+(a\s+|an\s+|some\s*one|somebody|your\s+)?(real\s+|live\s+)?"
    r"(person|human|agent|someone|somebody|representative|operator|staff|team)\b"
    r"|^\s*(a\s+)?(human|real person|live agent|agent|operator)\s*(please)?\s*[.!]*\s*$"
    r"|mit\s+einem\s+(menschen|mitarbeiter|berater)\s+sprechen"
    r"|parler\s+(à|a|avec)\s+(un|une)\s+(humain|personne|conseill\w*|agent)"
    r"|hablar\s+con\s+(una\s+persona|un\s+humano|un\s+agente|alguien)"
    r"|人工客服|转人工"
    r"|التحدث\s+(مع|إلى)\s+(شخص|موظف)",
    re.IGNORECASE,
)
SUMMARY_CHARS = 140


def asks_for_person(text: str) -> bool:
    return bool(ASKS_FOR_PERSON.search(text))


def summary(row: dict[str, Any]) -> dict[str, Any]:
    """A conversation as the console lists it."""
    last = (row.get("last") or "").replace("\n", " ")
    contact = row.get("contact")
    return {
        "id": row["id"],
        "site_key": row["site_key"],
        "status": row.get("status") or "bot",
        "agent": row.get("agent"),
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "messages": row.get("messages", 0),
        "last": last[:SUMMARY_CHARS] + ("…" if len(last) > SUMMARY_CHARS else ""),
        "last_role": row.get("last_role"),
        "rating": row.get("rating"),
        "contact": contact,
    }


class Handoff:
    """The people-in-the-loop half of DialogService."""

    if TYPE_CHECKING:  # what DialogService provides
        from server.gateway import Gateway

        from .service import DialogConfig
        from .store import Store
        from .webhooks import Webhooks

        store: Store
        gateway: Gateway
        config: DialogConfig
        hubs: dict[str, Hub]
        consoles: set[Any]
        webhooks: Webhooks
        metrics: Any

        async def _hub(self, cid: str) -> Hub: ...
        def _release(self, hub: Hub) -> None: ...

    # --- what everyone is told -------------------------------------------------------------------
    async def _status(self, hub: Hub, site: Site, status: str, agent: str | None = None) -> None:
        """Store the move and tell the visitor's widget (the caller holds the hub's lock)."""
        await self.store.set_status(hub.cid, status, agent)
        frame: dict[str, Any] = {"type": "status", "status": status}
        if agent:
            frame["agent"] = agent
        if status == "waiting":
            hours = site.widget.business_hours()
            now = datetime.now(UTC)
            if not hours.is_open(now):
                frame["next_open"] = hours.to_frame(now)["next_open"]
        await hub.emit(frame)
        await hub.flush(self.store)

    async def notify(self, cid: str) -> None:
        """Every console that may see this conversation's site gets its summary again."""
        if not self.consoles:
            return
        rows = await self.store.list_conversations(limit=1, conversation_id=cid)
        if not rows:
            return
        item = {"type": "conversation", **summary(rows[0])}
        for console in list(self.consoles):
            if console.staff.can_see(item["site_key"]):
                await console.send(item)

    async def event(self, site_key: str, name: str, data: dict[str, Any]) -> None:
        """A webhook event (written to the outbox; sent by its worker)."""
        try:
            await self.webhooks.emit(site_key, name, data)
        except Exception:  # a webhook must never cost the visitor their conversation
            log.exception("dialog: webhook event %s for %s not recorded", name, site_key)

    def _audit(self, cid: str, event: str, actor: Actor, detail: str | None = None) -> None:
        self.gateway.record_support_event(cid, event, actor, detail)

    # --- the visitor's side ----------------------------------------------------------------------
    async def request_handoff(self, hub: Hub, site: Site, visitor_id: str, reason: str) -> None:
        """The visitor asked for a person (caller holds the lock). Asked again, they are told again."""
        conv = await self.store.conversation(hub.cid)
        current = (conv or {}).get("status") or "bot"
        if current in ("waiting", "agent"):
            await self._status(hub, site, current, (conv or {}).get("agent"))
            return
        self._cancel_answer(hub)
        await self._status(hub, site, "waiting")
        self.metrics.handoffs.labels(reason=reason).inc()
        self._audit(hub.cid, "handoff_requested", Actor("widget_visitor", user=visitor_id, tenant=site.site_key), reason)
        await self.event(site.site_key, "handoff.requested", {"conversation_id": hub.cid, "reason": reason})
        await self.notify(hub.cid)

    async def rate(self, hub: Hub, site: Site, visitor_id: str, client: Client, frame: frames.Rate) -> None:
        """A rating counts once: given again unchanged, it is only acknowledged."""
        if frame.score is not None and frame.message_id is None and frame.value is None:
            kind, detail = "conversation", str(frame.score)
            data: dict[str, Any] = {"conversation_id": hub.cid, "score": frame.score}
            changed = await self.store.rate_conversation(hub.cid, frame.score) != frame.score
        elif frame.message_id is not None and frame.value is not None and frame.score is None:
            found, before = await self.store.rate_answer(hub.cid, frame.message_id, frame.value)
            if not found:
                raise frames.FrameError("unknown_message", "There is no such answer in this conversation to rate.")
            kind, detail, changed = "answer", frame.value, before != frame.value
            data = {"conversation_id": hub.cid, "message_id": frame.message_id, "value": frame.value}
        else:
            raise frames.FrameError("bad_frame", "Rate an answer (message_id and value up or down) or the conversation (score 1-5).")
        if changed:
            self.metrics.ratings.labels(kind=kind, value=detail).inc()
            async with hub.lock:
                self._audit(hub.cid, "rated", Actor("widget_visitor", user=visitor_id, tenant=site.site_key), detail)
                await self.event(site.site_key, "conversation.rated", data)
        await client.send({"type": "rated", **{k: v for k, v in data.items() if k != "conversation_id"}})
        if changed:
            await self.notify(hub.cid)

    def _cancel_answer(self, hub: Hub) -> None:
        """Stop the bot's answer in progress (a person takes over): it ends `cancelled` as soon as
        the caller lets go of the hub's lock."""
        if hub.generating and hub.task is not None and not hub.task.done():
            hub.task.cancel()

    # --- the staff's side ------------------------------------------------------------------------
    async def _staff_hub(self, staff: StaffMember, cid: str) -> tuple[Hub, Site]:
        conv = await self.store.conversation(cid)
        if conv is None or not staff.can_see(conv["site_key"]):  # another site's: as if it did not exist
            raise frames.FrameError("unknown_conversation", "There is no such conversation on your sites.")
        site = await self.store.site(conv["site_key"])
        assert site is not None
        return await self._hub(cid), site

    async def staff_action(self, staff: StaffMember, cid: str, action: str, text: str | None = None) -> None:
        """take | reply | hand_back | close, by a signed-in staff member on a conversation of their sites."""
        hub, site = await self._staff_hub(staff, cid)
        try:
            actor = Actor("staff", user=staff.id, client="tandem-console", tenant=site.site_key)
            if action == "reply":
                await self._agent_reply(hub, site, staff, actor, text or "")
                return
            async with hub.lock:
                if action == "take":
                    self._cancel_answer(hub)
                    await self._status(hub, site, "agent", staff.name)
                    name, event = "taken_over", "conversation.taken_over"
                elif action == "hand_back":
                    await self._status(hub, site, "bot")
                    name, event = "handed_back", "conversation.handed_back"
                else:
                    self._cancel_answer(hub)
                    await self._status(hub, site, "closed")
                    name, event = "closed", "conversation.closed"
                self._audit(cid, name, actor, staff.name)
                await self.event(site.site_key, event, {"conversation_id": cid, "agent": staff.name})
            await self.notify(cid)
        finally:
            hub.users -= 1
            self._release(hub)

    async def _agent_reply(self, hub: Hub, site: Site, staff: StaffMember, actor: Actor, text: str) -> None:
        """The agent's message to the visitor: guarded and audited as output like the bot's (a card
        number an agent pastes is redacted), stored with their name, and sent as `agent_message`.
        Replying takes the conversation over if no one had."""
        text = text.strip()
        if not text or len(text) > self.config.max_message_chars:
            raise frames.FrameError("bad_reply", f"A reply is 1 to {self.config.max_message_chars} characters.")
        async with hub.lock:
            conv = await self.store.conversation(hub.cid)
            took = (conv or {}).get("status") != "agent" or (conv or {}).get("agent") != staff.name
            if took:
                self._cancel_answer(hub)
                await self._status(hub, site, "agent", staff.name)
                self._audit(hub.cid, "taken_over", actor, staff.name)
                await self.event(site.site_key, "conversation.taken_over", {"conversation_id": hub.cid, "agent": staff.name})
            said = await self._screened(hub, site, actor, text)
            message = await self.store.add_message(hub.cid, "agent", said, "done", hub.seq + 1, author=staff.name)
            await hub.emit({"type": "agent_message", "message_id": message.id, "author": staff.name, "text": said})
            await hub.flush(self.store)
            item = {"id": message.id, "role": "agent", "author": staff.name, "text": said, "created_at": message.created_at}
            await self.event(site.site_key, "message.created", {"conversation_id": hub.cid, "message": item})
        await self.notify(hub.cid)

    async def _screened(self, hub: Hub, site: Site, actor: Actor, text: str) -> str:
        """The agent's words as the guard passes them, recorded in the audit log as what was said."""
        call = Call(
            "support_chat",
            actor,
            ChatPrompt((("system", "A support agent's reply to a customer."), ("user", text)), fit=True),
            Params(max_tokens=1),
            Priority.CHAT,
            request_id=f"agent-{hub.cid}-{hub.seq + 1}",
            conversation_id=hub.cid,
            echo=True,
        )
        parts: list[str] = []
        try:
            async for delta in self.gateway.stream(call):
                parts.append(delta.text)
        except CallFailed as exc:
            raise frames.FrameError("reply_blocked", f"The reply was not sent: {exc}") from None
        return "".join(parts)

    async def console_hub(self, staff: StaffMember, cid: str) -> Hub:
        """The hub a console watches (held until `unwatch`)."""
        hub, _ = await self._staff_hub(staff, cid)
        return hub

    def unwatch(self, hub: Hub, console: Any) -> None:
        hub.watchers.discard(console)
        hub.users -= 1
        self._release(hub)
