// Tandem's staff console: plain JavaScript, like the widget. One WebSocket (/v1/console/socket)
// signed in with a staff token in its first frame; the token lives in sessionStorage (this tab
// only) and is sent in an Authorization header for transcripts, never in a URL. Text from
// visitors and agents is only ever set as text, never parsed as HTML.
(function () {
  "use strict";
  var $ = function (id) { return document.getElementById(id); };
  var KEY = "tandem.console.token";
  var ws = null, me = null, conversations = {}, current = null, backoff = 500, signedOut = false;

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = text;
    return e;
  }
  function show(id, on) { $(id).hidden = !on; }
  function fail(text) { $("error").textContent = text || ""; }

  var STATUS = { bot: "With the bot", waiting: "Waiting for a person", agent: "With an agent", closed: "Closed" };
  var WHO = { user: "Visitor", assistant: "Assistant", agent: "Agent" };

  // ---- signing in ---------------------------------------------------------------------------------
  function connect(token) {
    signedOut = false;
    var url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/v1/console/socket";
    ws = new WebSocket(url);
    ws.onopen = function () { ws.send(JSON.stringify({ type: "auth", token: token })); };
    ws.onmessage = function (ev) { receive(JSON.parse(ev.data), token); };
    ws.onclose = function (ev) {
      if (signedOut) return;
      if (ev.code === 4401) { signOut("That token does not sign in (or was removed)."); return; }
      fail("Connection lost. Reconnecting…");
      setTimeout(function () { connect(token); }, backoff);
      backoff = Math.min(backoff * 2, 10000);
    };
  }

  function signOut(why) {
    signedOut = true;
    sessionStorage.removeItem(KEY);
    if (ws) ws.close();
    me = null; current = null; conversations = {};
    show("app", false); show("signout", false); show("signin", true);
    $("who").textContent = "";
    $("signin-error").textContent = why || "";
  }

  // ---- frames from the server ---------------------------------------------------------------------
  function receive(f, token) {
    if (f.type === "ready") {
      backoff = 500;
      sessionStorage.setItem(KEY, token);
      me = f.staff.name;
      $("who").textContent = "Signed in as " + me;
      $("me").textContent = me;
      show("signin", false); show("app", true); show("signout", true); fail("");
      var select = $("site");
      while (select.options.length > 1) select.remove(1);
      f.sites.forEach(function (s) { select.appendChild(new Option(s, s)); });
      conversations = {};
      f.conversations.forEach(function (c) { conversations[c.id] = c; });
      renderList();
      if (current) send({ type: "open", conversation_id: current.id });
    } else if (f.type === "conversation") {
      conversations[f.id] = f;
      renderList();
      if (current && current.id === f.id) send({ type: "open", conversation_id: f.id });  // its newest messages
    } else if (f.type === "opened") {
      current = f.conversation;
      conversations[current.id] = current;
      renderList();
      renderConversation(f.transcript);
    } else if (f.type === "frame") {
      if (current && f.conversation_id === current.id) live(f.frame);
    } else if (f.type === "error") {
      if (f.code === "unauthorized") { signOut(f.message); return; }
      fail(f.message);
    }
  }

  function send(frame) {
    if (ws && ws.readyState === 1) ws.send(JSON.stringify(frame));
  }

  // ---- the list -----------------------------------------------------------------------------------
  function visible(c) {
    var site = $("site").value, status = $("status").value;
    if (site && c.site_key !== site) return false;
    if (status === "open") return c.status !== "closed";
    return !status || c.status === status;
  }

  function renderList() {
    var items = Object.keys(conversations).map(function (k) { return conversations[k]; }).filter(visible);
    items.sort(function (a, b) {  // waiting first, then the newest
      var w = (b.status === "waiting") - (a.status === "waiting");
      return w || (a.updated_at < b.updated_at ? 1 : -1);
    });
    var list = $("list");
    list.replaceChildren();
    items.forEach(function (c) {
      var li = el("li", current && current.id === c.id ? "current" : "");
      li.dataset.id = c.id;
      li.dataset.status = c.status;
      var b = el("button");
      b.type = "button";
      var top = el("span", "top");
      var who = c.contact && (c.contact.name || c.contact.email) ? (c.contact.name || c.contact.email) : "Visitor";
      top.appendChild(el("span", null, who + " · " + c.site_key));
      top.appendChild(el("span", "badge " + c.status, STATUS[c.status] + (c.agent ? " (" + c.agent + ")" : "")));
      b.appendChild(top);
      b.appendChild(el("span", "last", c.last || "(no messages yet)"));
      if (c.rating) b.appendChild(el("span", "rated", "Rated " + c.rating + "/5"));
      b.addEventListener("click", function () { send({ type: "open", conversation_id: c.id }); });
      li.appendChild(b);
      list.appendChild(li);
    });
    show("empty", items.length === 0);
  }

  // ---- one conversation ---------------------------------------------------------------------------
  function bubble(m) {
    var li = el("li", m.role);
    li.dataset.id = m.message_id;
    li.appendChild(el("span", "who", (m.role === "agent" && m.author ? m.author : WHO[m.role] || m.role) +
      (m.status && m.status !== "done" && m.status !== "streaming" ? " · " + m.status : "") +
      (m.rating ? " · rated " + (m.rating === "up" ? "👍" : "👎") : "")));
    li.appendChild(el("span", "text", m.text));
    return li;
  }

  function renderConversation(t) {
    show("pick", false); show("conv", true); fail("");
    $("title").textContent = (t.contact && (t.contact.name || t.contact.email)) || "Visitor";
    renderState();
    var ol = $("messages");
    ol.replaceChildren();
    t.messages.forEach(function (m) { if (m.text || m.status === "streaming") ol.appendChild(bubble(m)); });
  }

  function renderState() {
    var badge = $("state");
    badge.className = "badge " + current.status;
    badge.textContent = STATUS[current.status] + (current.agent ? " (" + current.agent + ")" : "");
    $("rating").textContent = current.rating ? "Rated " + current.rating + "/5" : "";
    $("take").disabled = current.status === "agent" && current.agent === me;
    $("handback").disabled = current.status === "bot";
    $("close").disabled = current.status === "closed";
  }

  function live(f) {
    var ol = $("messages");
    var existing = f.message_id ? ol.querySelector('li[data-id="' + CSS.escape(f.message_id) + '"]') : null;
    if (f.type === "delta") {
      if (!existing) { existing = bubble({ message_id: f.message_id, role: "assistant", text: "" }); ol.appendChild(existing); }
      existing.querySelector(".text").textContent += f.text;
    } else if (f.type === "agent_message" && !existing) {
      ol.appendChild(bubble({ message_id: f.message_id, role: "agent", author: f.author, text: f.text }));
    } else if (f.type === "status") {
      current.status = f.status;
      current.agent = f.agent || null;
      renderState();
    }
  }

  function download(format) {
    var token = sessionStorage.getItem(KEY);
    fetch("/v1/console/conversations/" + encodeURIComponent(current.id) + "/transcript?format=" + format, {
      headers: { Authorization: "Bearer " + token },
    }).then(function (r) {
      if (!r.ok) throw new Error("HTTP " + r.status);
      return r.blob();
    }).then(function (blob) {
      var a = el("a");
      a.href = URL.createObjectURL(blob);
      a.download = "transcript-" + current.id + (format === "text" ? ".txt" : ".json");
      document.body.appendChild(a);
      a.click();
      setTimeout(function () { URL.revokeObjectURL(a.href); a.remove(); }, 0);
    }).catch(function (e) { fail("The transcript could not be downloaded (" + e.message + ")."); });
  }

  // ---- wiring ---------------------------------------------------------------------------------------
  document.addEventListener("DOMContentLoaded", function () {
    $("signin").addEventListener("submit", function (e) {
      e.preventDefault();
      connect($("token").value.trim());
      $("token").value = "";
    });
    $("signout").addEventListener("click", function () { signOut(""); });
    $("site").addEventListener("change", renderList);
    $("status").addEventListener("change", renderList);
    $("take").addEventListener("click", function () { send({ type: "take", conversation_id: current.id }); });
    $("handback").addEventListener("click", function () { send({ type: "hand_back", conversation_id: current.id }); });
    $("close").addEventListener("click", function () { send({ type: "close", conversation_id: current.id }); });
    $("dl-text").addEventListener("click", function () { download("text"); });
    $("dl-json").addEventListener("click", function () { download("json"); });
    $("reply").addEventListener("submit", function (e) {
      e.preventDefault();
      var text = $("reply-text").value.trim();
      if (!text || !current) return;
      send({ type: "reply", conversation_id: current.id, text: text });
      $("reply-text").value = "";
    });
    var saved = sessionStorage.getItem(KEY);
    if (saved) connect(saved); else show("signin", true);
  });
})();
