// The audit review page: a filterable list, one record with its guard findings, and the chain's
// verification status. Every value is set with textContent: nothing from the log is parsed as HTML.
"use strict";

const $ = (sel) => document.querySelector(sel);
let nextBefore = null;

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text == null ? "" : String(text);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

async function getJSON(url) {
  const res = await fetch(url, { credentials: "same-origin" });
  const body = await res.json();
  if (!res.ok) throw new Error((body.error && body.error.message) || res.statusText);
  return body;
}

function query(before) {
  const params = new URLSearchParams();
  for (const [k, v] of new FormData($("#filters"))) if (v) params.set(k, v);
  if (before) params.set("before", before);
  return params;
}

async function loadRecords(append) {
  $("#list-error").textContent = "";
  let body;
  try {
    body = await getJSON("/audit/api/records?" + query(append ? nextBefore : null));
  } catch (err) {
    $("#list-error").textContent = "Could not load records: " + err.message;
    return;
  }
  const tbody = $("#records tbody");
  if (!append) tbody.replaceChildren();
  for (const r of body.records) {
    const tr = document.createElement("tr");
    tr.dataset.seq = r.seq;
    cell(tr, r.seq);
    cell(tr, r.ts);
    cell(tr, r.surface || r.type);
    cell(tr, r.action, "verdict-" + r.action);
    cell(tr, r.outcome, "outcome-" + r.outcome);
    cell(tr, r.finish_reason);
    cell(tr, Object.entries(r.findings).map(([t, n]) => (n > 1 ? `${t} ×${n}` : t)).join(", "));
    cell(tr, r.user_ref ? r.user_ref.slice(0, 17) + "…" : "");
    cell(tr, r.conversation_id);
    tr.addEventListener("click", () => showRecord(r.seq, tr));
    tbody.appendChild(tr);
  }
  if (!body.records.length && !append) {
    const tr = document.createElement("tr");
    cell(tr, "No records match these filters.").colSpan = 9;
    tbody.appendChild(tr);
  }
  nextBefore = body.next_before;
  $("#more").hidden = !nextBefore;
}

function findingRows(direction, results) {
  const rows = [];
  for (const res of results || []) {
    if (!res.findings.length) {
      rows.push([direction, res.scanner, res.verdict, "", "", res.reason || ""]);
    }
    for (const f of res.findings) {
      const where = (f.segment != null ? `message ${f.segment}, ` : "") + `chars ${f.start}–${f.end}`;
      rows.push([direction, res.scanner, res.verdict, f.type, where, f.placeholder || res.reason || ""]);
    }
  }
  return rows;
}

async function showRecord(seq, tr) {
  document.querySelectorAll("#records tr.selected").forEach((x) => x.classList.remove("selected"));
  if (tr) tr.classList.add("selected");
  let row;
  try {
    row = await getJSON("/audit/api/records/" + encodeURIComponent(seq));
  } catch (err) {
    $("#list-error").textContent = "Could not load record " + seq + ": " + err.message;
    return;
  }
  const r = row.record;
  $("#detail").hidden = false;
  $("#detail-title").textContent = `Record ${row.seq} · ${r.type}`;
  const meta = $("#detail-meta");
  meta.replaceChildren();
  const facts = {
    "Id": row.id, "Time": r.ts, "Surface": r.surface, "Verdict": r.guard && r.guard.action,
    "Outcome": r.outcome && (r.outcome.status + (r.outcome.error_code ? ` (${r.outcome.error_code})` : "")),
    "Finish": r.output && r.output.finish_reason, "Actor": r.actor && `${r.actor.kind} ${r.actor.user_ref || ""}`,
    "Conversation": r.conversation_id, "Model": r.model && `${r.model.name} (${r.model.quantization})`,
    "Tokens": r.prompt && r.output && `${r.prompt.tokens} in, ${r.output.tokens} out`,
    "Timing": r.timing && `first token ${r.timing.ttft_ms ?? "–"} ms, total ${r.timing.total_ms} ms`, "Hash": row.hash,
  };
  for (const [k, v] of Object.entries(facts)) {
    if (v == null) continue;
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = String(v);
    meta.append(dt, dd);
  }
  const tbody = $("#findings tbody");
  tbody.replaceChildren();
  for (const cells of [...findingRows("input", r.guard && r.guard.input), ...findingRows("output", r.guard && r.guard.output)]) {
    const tr2 = document.createElement("tr");
    cells.forEach((c) => cell(tr2, c));
    tbody.appendChild(tr2);
  }
  const expired = "(content expired or not kept; the record keeps its HMAC)";
  $("#detail-prompt").textContent = row.content ? (row.content.prompt ?? "") : expired;
  $("#detail-output").textContent = row.content ? (row.content.output ?? "(no output)") : expired;
  $("#detail-json").textContent = JSON.stringify(r, null, 2);
}

async function loadVerification() {
  const el = $("#chain-status");
  try {
    const v = await getJSON("/audit/api/verify");
    el.className = "status " + (v.ok ? "ok" : "bad");
    const signed = v.signed_through
      ? (v.signed_through === v.records ? "all signed" : `signed through record ${v.signed_through}`)
      : "no signed checkpoint yet";
    el.textContent = v.ok
      ? `Chain verified: ${v.records} records, ${signed}`
      : `Verification FAILED at record ${v.first_bad_seq}: ${v.problem}`;
  } catch (err) {
    el.className = "status bad";
    el.textContent = "Could not verify the chain: " + err.message;
  }
}

$("#filters").addEventListener("submit", (e) => { e.preventDefault(); loadRecords(false); });
$("#more").addEventListener("click", () => loadRecords(true));
loadVerification();
loadRecords(false);
