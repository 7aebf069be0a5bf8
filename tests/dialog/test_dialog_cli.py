"""`tandem sites` and `tandem conversations` on a real chat store, as an operator uses them."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT
from tests.dialog_client import Chat


def tandem(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "server.cli", *args], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_sites_add_and_list(tmp_path: Path) -> None:
    d = ["--dialog-dir", str(tmp_path)]
    added = tandem(
        "sites",
        "add",
        "acme",
        "--name",
        "Acme",
        "--origin",
        "https://acme.test",
        "--origin",
        "https://www.acme.test",
        "--system-prompt",
        "You help Acme's customers.",
        *d,
    )
    assert added.returncode == 0 and 'data-site-key="acme"' in added.stdout
    assert tandem("sites", "add", "nope", *d).returncode == 2  # no origin: refused with a reason
    listed = tandem("sites", "list", *d).stdout
    assert "acme" in listed and "https://acme.test, https://www.acme.test" in listed and "You help Acme" in listed
    tandem("sites", "add", "acme", "--origin", "https://acme.test", "--system-prompt", "Changed.", *d)
    assert "Changed." in tandem("sites", "list", *d).stdout


def test_conversations_list_show_export(tiny_server, tmp_path: Path, chat_db: Path | str) -> None:
    """What the server kept, read by the operator's commands: from its SQLite file, or from PostgreSQL by URL."""
    url = {"database_url": chat_db} if isinstance(chat_db, str) else {}
    with tiny_server(dialog={"max_answer_tokens": 8, **url}) as s:
        with Chat(s.url) as chat:
            chat.ask("Where is my parcel?")
        d = ["--database-url", chat_db] if url else ["--dialog-dir", str(s.dialog_dir)]
        listed = tandem("conversations", "list", *d)
        assert chat.conversation_id in listed.stdout and "2 messages" in listed.stdout
        shown = tandem("conversations", "show", chat.conversation_id, *d)
        assert "Visitor (" in shown.stdout and "Where is my parcel?" in shown.stdout and "Assistant (" in shown.stdout
        assert "status: bot" in shown.stdout
        assert tandem("conversations", "show", "conv_missing", *d).returncode == 1
        out = tmp_path / "all.jsonl"
        assert tandem("conversations", "export", "--out", str(out), *d).returncode == 0
        (line,) = out.read_text().splitlines()
        dump = json.loads(line)
        assert dump["id"] == chat.conversation_id and [m["role"] for m in dump["messages"]] == ["user", "assistant"]
        text = tmp_path / "all.txt"  # the same transcript as text, to read or paste into a ticket
        assert tandem("conversations", "export", "--format", "text", "--out", str(text), *d).returncode == 0
        assert text.read_text() == shown.stdout + "\n"


def test_staff_add_list_remove(tmp_path: Path) -> None:
    d = ["--dialog-dir", str(tmp_path)]
    assert tandem("sites", "add", "acme", "--origin", "https://a.test", *d).returncode == 0
    unknown = tandem("staff", "add", "Dana", "--site", "nope", *d)
    assert unknown.returncode == 2 and "no site 'nope'" in unknown.stderr
    assert tandem("staff", "add", "Dana", *d).returncode == 2  # a site, or --all-sites, is required
    added = tandem("staff", "add", "Dana", "--site", "acme", *d)
    assert added.returncode == 0, added.stderr
    token = next(line.split(": ", 1)[1] for line in added.stdout.splitlines() if line.startswith("token: "))
    assert tandem("staff", "add", "Dana", "--all-sites", *d).returncode == 2  # names are unique: visitors see them
    listed = tandem("staff", "list", *d)
    assert "Dana" in listed.stdout and "acme" in listed.stdout and token not in listed.stdout
    assert token not in (tmp_path / "chat.db").read_bytes().decode("latin-1")  # only its hash is kept

    async def signed_in() -> str | None:
        from dialog.staff import StaffDirectory
        from dialog.store import Store

        store = await Store.open(tmp_path / "chat.db")
        try:
            member = await StaffDirectory(store.engine).signed_in(token)
            return member.name if member else None
        finally:
            await store.close()

    assert asyncio.run(signed_in()) == "Dana"
    assert tandem("staff", "remove", "Dana", *d).returncode == 0
    assert asyncio.run(signed_in()) is None
    assert tandem("staff", "remove", "Dana", *d).returncode == 1
