/*
 * Tandem support chat widget. One tag on any page:
 *   <script src="https://support.example.com/widget.js" data-site-key="KEY" defer></script>
 * Plain JavaScript, no build step, no dependencies. The UI lives in a shadow root so the host
 * page's CSS cannot break it (nor it the page's). Everything the model or the server says is
 * rendered as text nodes: Markdown is turned into elements by hand, raw HTML never is, remote
 * images are never loaded, and links open with rel="noopener noreferrer".
 */
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script) return;
  var siteKey = script.getAttribute("data-site-key") || "";
  var base = new URL(script.src, location.href);
  var wsUrl = (base.protocol === "https:" ? "wss://" : "ws://") + base.host + "/v1/dialog?site_key=" + encodeURIComponent(siteKey);
  var storeKey = "tandem-chat:" + base.host + ":" + siteKey;

  var ERRORS = {
    origin_not_allowed: "The chat is not available on this website.",
    unknown_site: "The chat is not set up for this website.",
    forbidden: "Your previous chat could not be reopened; a new one has started.",
    rate_limited: "You're sending messages too quickly. Please wait a moment.",
    busy: "Please wait for the answer to finish, or press Stop.",
    message_too_large: "That message is too long. Please shorten it.",
    empty_message: "Please type a message first.",
    message_blocked: "Sorry, I can't help with that message.",
    answer_blocked: "The answer was stopped because it contained something it should not.",
    overloaded: "We're very busy right now. Please try again in a moment.",
  };
  var BUSY_RETRIES = 3;     // a message the engine was too busy for is sent again by itself, this many times
  var FATAL = { origin_not_allowed: 1, unknown_site: 1, unsupported_version: 1 };

  // ---- state ---------------------------------------------------------------------------------
  var saved = {};
  try { saved = JSON.parse(localStorage.getItem(storeKey) || "{}") || {}; } catch (e) { saved = {}; }
  var ws = null, lastSeq = null, generating = false, stopped = false, attempts = 0, pingTimer = null;
  var outbox = [];          // messages typed while disconnected: sent (same client_msg_id) on reconnect
  var bubbles = {};         // message_id -> {el, text}
  var pending = [];         // user messages shown but not acknowledged yet, oldest first: {id: client_msg_id, el}
  var lastSent = null;      // the newest message sent, until it is answered: {frame}
  var busyRetries = 0, retryTimer = null, retrying = false;

  function save() { try { localStorage.setItem(storeKey, JSON.stringify(saved)); } catch (e) { /* private mode */ } }

  // ---- UI ------------------------------------------------------------------------------------
  // The host is a custom element (no page rule for div or any class reaches it) with an open
  // shadow root; its styles are a constructed stylesheet (a Content-Security-Policy without
  // 'unsafe-inline' blocks an inline <style>, not this), or Tandem's /widget.css where constructed
  // stylesheets do not exist. Shown in the top layer (a manual popover) where the browser has one,
  // so that neither a transform on the page nor a higher z-index can displace or cover it.
  var host = document.createElement("tandem-chat");
  host.id = "tandem-chat";
  var root = host.attachShadow({ mode: "open" });
  var CSS = /*{{widget.css}}*/ "";
  if (CSS && root.adoptedStyleSheets !== undefined && window.CSSStyleSheet && "replaceSync" in CSSStyleSheet.prototype) {
    var sheet = new CSSStyleSheet();
    sheet.replaceSync(CSS);
    root.adoptedStyleSheets = [sheet];
  } else {
    var link = document.createElement("link");
    link.rel = "stylesheet";
    link.href = new URL("widget.css", base).href;
    root.appendChild(link);
  }

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text != null) node.textContent = text;
    return node;
  }

  // Named by its visible text (a different aria-label fails WCAG 2.5.3); says whether the panel is open.
  var launcher = el("button", "launcher", "Chat with us");
  launcher.setAttribute("aria-expanded", "false");
  launcher.setAttribute("aria-controls", "tandem-panel");
  var panel = el("div", "panel");
  panel.id = "tandem-panel";
  panel.hidden = true;
  panel.setAttribute("role", "dialog");
  panel.setAttribute("aria-label", "Support chat");
  var head = el("div", "head");
  head.appendChild(el("span", null, "Support"));
  var closeBtn = el("button", null, "\u00d7");
  closeBtn.setAttribute("aria-label", "Close the chat");
  head.appendChild(closeBtn);
  // The conversation is not itself a live region (each streamed chunk rebuilds its bubble, which a
  // screen reader would read again and again): `announcer` says "typing" once, then the whole answer.
  var log = el("div", "log");
  log.setAttribute("role", "region");
  log.setAttribute("aria-label", "Conversation");
  log.tabIndex = 0;  // scrollable by keyboard
  var announcer = el("div", "sr-only");
  announcer.setAttribute("aria-live", "polite");
  var status = el("div", "status");
  status.setAttribute("role", "status");
  var compose = el("form", "compose");
  var input = el("textarea");
  input.setAttribute("placeholder", "Type your message…");
  input.setAttribute("aria-label", "Your message");
  var sendBtn = el("button", "send", "Send");
  sendBtn.type = "submit";
  var stopBtn = el("button", "stop", "Stop");
  stopBtn.type = "button";
  stopBtn.hidden = true;
  compose.appendChild(input);
  compose.appendChild(sendBtn);
  compose.appendChild(stopBtn);
  panel.appendChild(head);
  panel.appendChild(log);
  panel.appendChild(status);
  panel.appendChild(announcer);
  panel.appendChild(compose);
  root.appendChild(launcher);
  root.appendChild(panel);

  function showStatus(text, isError) {
    status.textContent = text || "";
    status.className = "status" + (isError ? " error" : "");
  }

  function setGenerating(on) {
    var hadFocus = root.activeElement === sendBtn || root.activeElement === stopBtn;
    generating = on;
    stopBtn.hidden = !on;
    sendBtn.hidden = on;
    if (hadFocus) input.focus();  // a button that hides itself would drop focus to the page
  }

  function announce(text) {
    announcer.textContent = "";
    setTimeout(function () { announcer.textContent = text; }, 50);  // (a change, even when the text repeats)
  }

  function setOpen(open) {
    panel.hidden = !open;
    launcher.setAttribute("aria-expanded", open ? "true" : "false");
    if (open) input.focus(); else launcher.focus();
  }

  // ---- Markdown, safely: elements built by hand, never innerHTML ------------------------------
  var SAFE_URL = /^(https?:|mailto:)/i;

  function inline(parent, text) {
    // `code`, **bold**, *italic*, [text](url), ![alt](url) (shown as its text, never loaded)
    var re = /(`[^`]+`)|(\*\*[^*]+\*\*)|(\*[^*\s][^*]*\*)|(!?\[[^\]]*\]\([^)\s]+\))/g;
    var at = 0, m;
    while ((m = re.exec(text))) {
      if (m.index > at) parent.appendChild(document.createTextNode(text.slice(at, m.index)));
      var tok = m[0];
      if (m[1]) parent.appendChild(el("code", null, tok.slice(1, -1)));
      else if (m[2]) parent.appendChild(el("strong", null, tok.slice(2, -2)));
      else if (m[3]) parent.appendChild(el("em", null, tok.slice(1, -1)));
      else {
        var image = tok.charAt(0) === "!";
        var label = tok.slice(image ? 2 : 1, tok.indexOf("]("));
        var url = tok.slice(tok.indexOf("](") + 2, -1);
        if (image || !SAFE_URL.test(url)) {
          parent.appendChild(document.createTextNode(label || url));
        } else {
          var a = el("a", null, label || url);
          a.href = url;
          a.rel = "noopener noreferrer";
          a.target = "_blank";
          parent.appendChild(a);
        }
      }
      at = m.index + tok.length;
    }
    if (at < text.length) parent.appendChild(document.createTextNode(text.slice(at)));
  }

  function markdown(text) {
    var frag = document.createDocumentFragment();
    var parts = text.split(/```/);
    parts.forEach(function (part, i) {
      if (i % 2 === 1) {  // a fenced code block (its first line may name the language)
        var body = part.replace(/^[\w+-]*\n/, "");
        var pre = el("pre");
        pre.appendChild(el("code", null, body.replace(/\n$/, "")));
        frag.appendChild(pre);
        return;
      }
      part.split(/\n{2,}/).forEach(function (block) {
        if (!block.trim()) return;
        var lines = block.split("\n");
        var bullets = lines.every(function (l) { return /^\s*([-*]|\d+\.)\s+/.test(l) || !l.trim(); });
        if (bullets) {
          var ordered = /^\s*\d+\./.test(lines[0]);
          var list = el(ordered ? "ol" : "ul");
          lines.forEach(function (l) {
            if (!l.trim()) return;
            var li = el("li");
            inline(li, l.replace(/^\s*([-*]|\d+\.)\s+/, ""));
            list.appendChild(li);
          });
          frag.appendChild(list);
        } else {
          var p = el("p");
          lines.forEach(function (l, j) {
            if (j) p.appendChild(el("br"));
            inline(p, l);
          });
          frag.appendChild(p);
        }
      });
    });
    return frag;
  }

  // ---- messages ------------------------------------------------------------------------------
  function scroll() { log.scrollTop = log.scrollHeight; }

  function labelBubble(node, role) {
    node.setAttribute("role", "group");
    node.setAttribute("aria-label", role === "user" ? "You said" : "The assistant said");
  }

  function renderMessage(id, role, text, note) {
    var b = bubbles[id];
    if (!b) {
      b = bubbles[id] = { el: el("div", "msg " + role), text: "" };
      b.el.setAttribute("data-message-id", id);
      b.el.setAttribute("data-role", role);
      labelBubble(b.el, role);
      log.appendChild(b.el);
    }
    b.text = text;
    b.el.replaceChildren(role === "assistant" ? markdown(text) : document.createTextNode(text));
    if (note) b.el.appendChild(el("div", "note", note));
    scroll();
    return b;
  }

  var NOTES = { cancelled: "(stopped)", interrupted: "(interrupted: the answer was cut off)", blocked: "(blocked)", error: "(failed)" };

  function onFrame(f) {
    if (f.type !== "welcome" && typeof f.seq === "number") {
      if (lastSeq !== null && f.seq <= lastSeq) return;  // already shown
      lastSeq = f.seq;
    }
    switch (f.type) {
      case "welcome":
        saved.token = f.token;
        saved.conversation_id = f.conversation_id;
        save();
        attempts = 0;
        showStatus("");
        if (f.reset) {
          log.replaceChildren();
          bubbles = {};
          setGenerating(false);
          f.history.forEach(function (m) {
            var note = m.status === "streaming" ? null : NOTES[m.status];
            var shown = renderMessage(m.message_id, m.role, m.text, m.role === "assistant" ? note : null);
            if (m.role === "assistant" && m.status !== "streaming") shown.el.setAttribute("data-finish", m.status);
            if (m.role === "assistant" && m.status === "streaming") setGenerating(true);
          });
          // what the history holds is shown; of the rest, only messages still to be sent stay pending
          pending = pending.filter(function (p) { return outbox.some(function (m) { return m.client_msg_id === p.id; }); });
          pending.forEach(function (p) { log.appendChild(p.el); });
        }
        lastSeq = f.seq;
        outbox.splice(0).forEach(function (m) { ws.send(JSON.stringify(m)); });
        break;
      case "ack":
        if (bubbles[f.message_id]) break;  // acknowledged again (a retry): it is shown already
        var at = -1;
        pending.forEach(function (p, i) { if (at < 0 && p.id === f.client_msg_id) at = i; });
        // A resume replays the ack as the server stored it: with its keyed reference ("ref_…") in
        // place of the id this page chose. Messages are acknowledged in order: it is the oldest one.
        if (at < 0 && /^ref_/.test(String(f.client_msg_id)) && pending.length) at = 0;
        if (at >= 0) {
          var p = pending.splice(at, 1)[0];
          p.el.classList.remove("pending");
          p.el.setAttribute("data-message-id", f.message_id);
          bubbles[f.message_id] = { el: p.el, text: p.el.textContent };
        }
        setGenerating(true);
        break;
      case "delta":
        var b = bubbles[f.message_id];
        if (!b || !b.text) announce("The assistant is typing…");
        renderMessage(f.message_id, "assistant", (b ? b.text : "") + f.text).el.removeAttribute("data-finish");
        if (retrying) { retrying = false; showStatus(""); }
        setGenerating(true);
        break;
      case "done":
        var d = bubbles[f.message_id];
        renderMessage(f.message_id, "assistant", d ? d.text : "", NOTES[f.finish_reason]).el.setAttribute("data-finish", f.finish_reason);
        announce("The assistant said: " + (d ? d.text : "") + (NOTES[f.finish_reason] ? " " + NOTES[f.finish_reason] : ""));
        setGenerating(false);
        if (f.finish_reason !== "error") { lastSent = null; retrying = false; }  // answered or stopped: nothing to send again
        break;
      case "error":
        if (f.code === "forbidden") { delete saved.token; delete saved.conversation_id; save(); }
        if (f.code === "overloaded" && lastSent && busyRetries < BUSY_RETRIES) { retryLater(lastSent, f.retry_after); break; }
        var words = ERRORS[f.code] || f.message || "Something went wrong.";
        if (f.retry_after) words += " (try again in " + f.retry_after + " s)";
        retrying = false;
        showStatus(words, true);
        if (FATAL[f.code]) stopped = true;
        break;
    }
  }

  // The engine was too busy to answer: wait what the server asks, counting down, then send the very
  // same message again (same client_msg_id: the server answers it once, in the same answer).
  function retryLater(sent, seconds) {
    busyRetries += 1;
    var left = Math.max(1, Math.ceil(Number(seconds) || 1));
    clearTimeout(retryTimer);
    (function tick() {
      if (lastSent !== sent) return;  // the visitor sent something else meanwhile
      if (left <= 0) {
        retrying = true;
        showStatus("Retrying…");
        sendFrame(sent.frame);
        return;
      }
      showStatus("We're busy \u2014 retrying in " + left + " s");
      left -= 1;
      retryTimer = setTimeout(tick, 1000);
    })();
  }

  function sendFrame(frame) {
    if (ws && ws.readyState === 1) ws.send(JSON.stringify(frame));
    else outbox.push(frame);
  }

  // ---- connection ----------------------------------------------------------------------------
  var OFFLINE = "You're offline. Your messages will be sent when the connection is back.";
  var reconnectTimer = null;

  function connect() {
    if (stopped) return;
    clearTimeout(reconnectTimer);
    if (navigator.onLine === false) { showStatus(OFFLINE, true); return; }  // the 'online' event connects
    showStatus(attempts ? "Reconnecting…" : "Connecting…");
    var socket = null, isOpen = false, ended = false;
    try { socket = new WebSocket(wsUrl); } catch (e) { socket = null; }  // (some browsers throw for a blocked URL)
    ws = socket;
    if (!socket) { retry(false); return; }
    // A socket the page's policy blocks, or one refused, fires only `error` in some browsers; a
    // dropped one fires `close` (often after `error`): either way, once, the same retry.
    function end() {
      if (ended || ws !== socket) return;
      ended = true;
      clearInterval(pingTimer);
      retry(isOpen);
    }
    socket.onopen = function () {
      isOpen = true;
      var hello = { type: "hello", v: 1, site_key: siteKey };
      if (saved.token) hello.token = saved.token;
      if (saved.conversation_id) hello.conversation_id = saved.conversation_id;
      if (lastSeq !== null && saved.conversation_id) hello.last_seq = lastSeq;
      socket.send(JSON.stringify(hello));
      clearInterval(pingTimer);
      pingTimer = setInterval(function () { if (socket.readyState === 1) socket.send('{"type":"ping"}'); }, 25000);
    };
    socket.onmessage = function (ev) {
      var f;
      try { f = JSON.parse(ev.data); } catch (e) { return; }
      onFrame(f);
    };
    socket.onerror = end;
    socket.onclose = end;
  }

  // Backoff with jitter; what is typed meanwhile waits in the outbox and goes once, on the next welcome.
  function retry(wasOpen) {
    if (stopped) return;
    attempts += 1;
    var delay = Math.min(10000, 500 * Math.pow(2, attempts - 1)) * (0.75 + Math.random() / 2);
    var words;
    if (navigator.onLine === false) words = OFFLINE;
    else if (wasOpen) words = "Connection lost. Reconnecting…";
    else words = "Can't reach the support chat right now. Trying again in " + Math.max(1, Math.round(delay / 1000)) + " s…";
    showStatus(words, true);
    reconnectTimer = setTimeout(connect, delay);
  }
  window.addEventListener("online", function () {
    if (!ws || ws.readyState > 1) { attempts = 0; connect(); }
  });

  function newId() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    return "m" + Date.now().toString(36) + Math.random().toString(36).slice(2);
  }

  compose.addEventListener("submit", function (e) {
    e.preventDefault();
    var text = input.value.trim();
    if (!text || generating) return;
    input.value = "";
    var id = newId();
    var bubble = el("div", "msg user pending", text);
    bubble.setAttribute("data-role", "user");
    labelBubble(bubble, "user");
    log.appendChild(bubble);
    pending.push({ id: id, el: bubble });
    scroll();
    var frame = { type: "message", client_msg_id: id, text: text };
    lastSent = { frame: frame };
    busyRetries = 0;
    retrying = false;
    clearTimeout(retryTimer);
    sendFrame(frame);
    showStatus("");
    input.focus();  // keep typing: the Send button hides itself while the answer streams
  });
  input.addEventListener("keydown", function (e) {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); compose.requestSubmit(); }
  });
  stopBtn.addEventListener("click", function () {
    if (ws && ws.readyState === 1) ws.send('{"type":"cancel"}');
    input.focus();
  });
  launcher.addEventListener("click", function () { setOpen(panel.hidden); });
  closeBtn.addEventListener("click", function () { setOpen(false); });
  panel.addEventListener("keydown", function (e) {
    if (e.key === "Escape") { e.preventDefault(); setOpen(false); }
  });

  function start() {
    // under <html> rather than <body>: a page that transforms its body would otherwise become the
    // fixed-position panel's frame (where there is no top layer to escape to)
    document.documentElement.appendChild(host);
    if (typeof host.showPopover === "function") {
      host.setAttribute("popover", "manual");
      try { host.showPopover(); } catch (e) { /* shown in the page's layers instead */ }
    }
    connect();
  }
  if (document.body) start(); else document.addEventListener("DOMContentLoaded", start);
})();
