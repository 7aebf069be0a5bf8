"""How this fixture was made: an audit log written by the code at 55c775e (schema 2, before numbered
migrations), with a call a crash cut still journalled. Run against that checkout:

    git worktree add /tmp/old 55c775e && cd /tmp/old && python /path/to/make.py OUT

then copy OUT's audit.sql, hmac.key, signing.key, audit.pub and checkpoints.jsonl here.
"""

import shutil
import sqlite3
import sys
import time
import types
from pathlib import Path

sys.path.insert(0, ".")
from prometheus_client import CollectorRegistry  # noqa: E402

from server.audit import AuditConfig, AuditLog, Entry  # noqa: E402
from server.gateway import Actor, Call, ChatPrompt, Gateway, GuardMetrics, Params, _Record  # noqa: E402
from server.guard import Finding, ScanResult, Verdict  # noqa: E402

out = Path(sys.argv[1])
shutil.rmtree(out, ignore_errors=True)
log = AuditLog(AuditConfig(out / "dir", checkpoint_every=4)).start()
model = types.SimpleNamespace(name="SmolLM2-135M-Instruct", quant="q4")
stub = types.SimpleNamespace(audit=log, metrics=GuardMetrics(CollectorRegistry()))
for i in range(6):
    call = Call(
        "support_chat",
        Actor("widget_visitor", user=f"v_{i}", ip="127.0.0.1", client="tandem-widget", tenant="demo"),
        ChatPrompt((("system", "Be brief."), ("user", f"question {i}"))),
        Params(max_tokens=16),
        request_id=f"msg_{i}",
        conversation_id="conv_1",
        message_id=f"msg_{i}",
    )
    rec = _Record(call, time.monotonic())
    rec.journal = log.open_call(rec.skeleton(model, log))
    found = [Finding("aws_access_key", 3, 23, "[REDACTED:aws_access_key]", 1)] if i == 2 else []
    rec.input_results = [ScanResult("size", Verdict.PASS), ScanResult("secrets", Verdict.REDACT if found else Verdict.PASS, found)]
    joined = f"[system]\nBe brief.\n[user]\nquestion {i}"
    rec.prompt_chars, rec.prompt_hmac, rec.prompt_text = len(joined), log.seal_content(joined), joined
    rec.parts, rec.tokens, rec.chunks, rec.finish, rec.prompt_tokens = [f"answer {i}"], 3, 1, "stop", 20
    rec.scanner = types.SimpleNamespace(results=lambda: [ScanResult("secrets", Verdict.PASS)])
    log.submit(Entry(rec.envelope(model, log), rec.prompt_text, rec.output_text(), rec.journal))
Gateway.record_refusal(stub, "ide_completion", Actor("api_client", ip="10.0.0.1", client="curl/8"), "cmpl-0", "invalid_json", None)
Gateway.record_feedback(stub, "cmpl-" + "0" * 32, "accepted", "vscode/1.0 tandem")
log.open_call({"type": "llm.interaction", "surface": "ide_completion", "request_id": "cut"})  # a call a crash cuts
log.flush()
log._thread = None  # no close: the journalled call stays pending, as after a crash
log.db.dispose()
conn = sqlite3.connect(out / "dir" / "audit.db")
(out / "audit.sql").write_text("\n".join(conn.iterdump()) + "\n")
for name in ("hmac.key", "signing.key", "audit.pub", "checkpoints.jsonl"):
    shutil.copy(out / "dir" / name, out / name)
