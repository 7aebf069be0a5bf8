"""Nothing secret at rest (issue 15): a fresh corpus of secrets of every kind the guard knows, made
at test time in each service's real format, is sent through every door and field of a real
`tandem serve` on the default model: chat roles, completions, prompts refused for size and for
tokens, headers, query strings, `user`, feedback's `request_id`, the WebSocket's text,
`client_msg_id` and site key, the browser's languages, and a customer's name and signature
(`identify`). Then every byte the server wrote (its TANDEM_HOME, and its log at
debug level) is searched for each secret raw, base64- and URL-encoded: none may be there."""

from __future__ import annotations

import base64
import json
import os
import random
import subprocess
import sys
import urllib.parse
import uuid
from pathlib import Path

import httpx
from websockets.sync.client import connect

from tests.conftest import ADMIN_TOKEN, ROOT, free_port, wait_healthy
from tests.dialog_client import Chat
from tests.secrets_corpus import Secret, fresh_corpus


def chunks(items: list[Secret], n: int) -> list[list[Secret]]:
    return [items[i : i + n] for i in range(0, len(items), n)]


def widget_groups(items: list[Secret], limit: int) -> list[list[Secret]]:
    """Secrets packed into widget messages of at most `limit` characters (the widget takes 4000)."""
    groups: list[list[Secret]] = [[]]
    for s in items:
        if groups[-1] and len("\n".join(x.in_prose() for x in groups[-1] + [s])) > limit:
            groups.append([])
        groups[-1].append(s)
    return groups


def encodings(value: str) -> set[bytes]:
    raw = value.encode()
    return {
        raw,
        base64.b64encode(raw),
        base64.urlsafe_b64encode(raw),
        urllib.parse.quote(value, safe="").encode(),
        urllib.parse.quote_plus(value).encode(),
        json.dumps(value)[1:-1].encode(),
    }


def needles(secret: Secret) -> set[bytes]:
    """The secret's value, and for multi-line values (keys) each of its lines long enough to be its own."""
    out = encodings(secret.value)
    for line in secret.value.replace("\\n", "\n").splitlines():
        line = line.strip()
        if len(line) >= 24 and not line.startswith("-----"):
            out |= encodings(line)
    return out


def test_no_secret_reaches_any_file_the_server_writes(tmp_path: Path, default_model_dir: Path) -> None:
    rng = random.Random(os.urandom(16))
    corpus = fresh_corpus(rng)
    assert len({s.kind or s.type for s in corpus}) >= 60

    home, log_path = tmp_path / "home", tmp_path / "serve.log"
    home.mkdir()
    (home / "models").symlink_to(default_model_dir.parent)  # the converted model, not re-made here
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "TANDEM_HOME": str(home), "TANDEM_COMPILE": "0"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "server.cli",
                "serve",
                "--port",
                str(port),
                "--admin-token",
                ADMIN_TOKEN,
                "--log-level",
                "debug",
                "--no-compile",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=env,
        )
    try:
        wait_healthy(url, proc, log_path, 300, "tandem serve")
        with httpx.Client(base_url=url, timeout=120) as client:
            for group in chunks(corpus, 8):
                prose = "\n".join(s.in_prose() for s in group)
                code = "\n".join(s.in_code() for s in group)
                calls = [
                    (
                        "/v1/chat/completions",
                        {
                            "messages": [
                                {"role": "system", "content": code},
                                {"role": "user", "content": prose},
                                {"role": "assistant", "content": prose},
                                {"role": "user", "content": code},
                            ],
                            "max_tokens": 1,
                        },
                    ),
                    ("/v1/completions", {"prompt": code, "max_tokens": 1}),
                    ("/v1/completions", {"prompt": code + "\n" + "x = 1\n" * 100_000, "max_tokens": 1}),  # over the size cap
                    ("/v1/chat/completions", {"messages": [{"role": "user", "content": prose + " word" * 11_000}]}),  # over the context
                ]
                for path, body in calls:
                    r = client.post(path, json=body)
                    assert r.status_code in (200, 400, 413), r.text[:300]
            for secret in corpus:
                value = secret.value.replace("\n", " ")[:200]
                r = client.post(
                    "/v1/completions",
                    params={"api_key": value},
                    json={"prompt": "hello", "max_tokens": 1, "user": value[:256]},
                    headers={"User-Agent": f"acme-app/2.0 {value[:100]}", "X-Tandem-Client": f"plugin {value[:100]}"},
                )
                assert r.status_code == 200, r.text[:300]
                client.post("/v1/feedback", json={"request_id": value[:128], "event": "accepted"}, headers={"User-Agent": value[:100]})
                client.get("/healthz", params={"token": value})
        # the support widget: secrets in the text, in client_msg_id, and in the site key of the URL
        for group in widget_groups(corpus, 3800):
            with Chat(url, languages=[s.value.replace("\n", "")[:35] for s in group[:16]]) as chat:
                for s in group:  # a customer's name and a signature, as a page might pass them to Tandem.identify
                    chat.send({"type": "identify", "name": s.in_prose()[:100], "hmac": s.value[:256]})
                    assert chat.recv()["type"] in ("identified", "error")
                chat.send(
                    {
                        "type": "message",
                        "client_msg_id": group[0].value.replace("\n", "")[:64],
                        "text": "\n".join(s.in_prose() for s in group),
                    }
                )
                frame = chat.recv(timeout=120)
                assert frame["type"] == "ack", frame
                while frame["type"] not in ("delta", "done"):
                    frame = chat.recv(timeout=120)
                if frame["type"] == "delta":  # the text has been through the guard and stored: the answer itself is not needed
                    chat.send({"type": "cancel"})
                    chat.until("done", timeout=120)
            site_key = group[-1].value.replace("\n", "")[:120]
            try:
                with connect(
                    f"{url.replace('http', 'ws')}/v1/dialog?site_key={urllib.parse.quote(site_key)}",
                    additional_headers={"Origin": url},
                    open_timeout=10,
                ) as ws:
                    ws.send(json.dumps({"type": "hello", "v": 1, "site_key": site_key}))
                    ws.recv(timeout=10)
            except Exception:  # noqa: BLE001  (refused: no such site; what matters is what was written)
                pass
        with Chat(url) as chat:  # one more round trip: the store has flushed what came before
            chat.ask(f"thanks {uuid.uuid4().hex[:6]}", timeout=300)
    finally:
        proc.terminate()
        proc.wait(timeout=60)

    files = [p for p in home.rglob("*") if p.is_file() and not p.is_symlink() and "models" not in p.relative_to(home).parts]
    assert any(p.name == "audit.db" for p in files) and any(p.name == "chat.db" for p in files)
    blobs: dict[Path, bytes] = {p: p.read_bytes() for p in [*files, log_path]}
    leaks = []
    for secret in corpus:
        for written, blob in blobs.items():
            found = next((n for n in needles(secret) if n in blob), None)
            if found is not None:
                at = blob.index(found)
                leaks.append(f"{secret.kind or secret.type} in {written.name}: ...{blob[max(0, at - 80) : at + len(found) + 20]!r}")
    assert leaks == [], f"{len(leaks)} secrets at rest:\n" + "\n".join(leaks)
