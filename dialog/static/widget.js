/*
 * Tandem support chat widget. One tag on any page:
 *   <script src="https://support.example.com/widget.js" data-site-key="KEY" defer></script>
 * Plain JavaScript, no build step, no dependencies. The page may drive it through window.Tandem
 * (open, close, toggle, identify, on/off for the ready, message and error events; also dispatched
 * on window as tandem:ready, tandem:message, tandem:error). The UI lives in a shadow root so the host
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

  // The visitor's words: English here, the site's or the browser's language from `welcome` (kept
  // for the next page view, so a returning visitor never sees English first).
  var T = /*{{locales/en.json}}*/ {};
  var EN = T;
  function t(key, vars) {
    var text = T[key] || EN[key] || "";
    for (var k in vars || {}) text = text.split("{" + k + "}").join(vars[k]);
    return text;
  }
  var BUSY_RETRIES = 3;     // a message the engine was too busy for is sent again by itself, this many times
  var FATAL = { origin_not_allowed: 1, unknown_site: 1, unsupported_version: 1 };
  var SILENT = { identity_invalid: 1 };  // the page's doing, told to the page (error event), not the visitor

  // ---- state ---------------------------------------------------------------------------------
  var saved = {};
  try { saved = JSON.parse(localStorage.getItem(storeKey) || "{}") || {}; } catch (e) { saved = {}; }
  var ws = null, lastSeq = null, generating = false, stopped = false, attempts = 0, pingTimer = null;
  var outbox = [];          // messages typed while disconnected: sent (same client_msg_id) on reconnect
  var bubbles = {};         // message_id -> {el, text}
  var pending = [];         // user messages shown but not acknowledged yet, oldest first: {id: client_msg_id, el}
  var lastSent = null;      // the newest message sent, until it is answered: {frame}
  var busyRetries = 0, retryTimer = null, retrying = false;
  var site = saved.site || null;  // the site's settings from the last welcome
  var identity = null;      // the customer the page identified: sent after every welcome
  var identifying = [];     // identify() promises waiting for the server's answer
  var hoursTimer = null, welcomed = false;

  function save() { try { localStorage.setItem(storeKey, JSON.stringify(saved)); } catch (e) { /* private mode */ } }

  // ---- the page's API and events -------------------------------------------------------------
  var listeners = { ready: [], message: [], error: [] };
  function fire(name, detail) {
    listeners[name].slice().forEach(function (fn) {
      try { fn(detail); } catch (e) { setTimeout(function () { throw e; }); }  // a page's handler never breaks the chat
    });
    try { window.dispatchEvent(new CustomEvent("tandem:" + name, { detail: detail })); } catch (e) { /* very old browsers */ }
  }

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

  var frame = el("div", "tandem");  // carries the site's colours, theme, side and text direction
  // Named by its visible text (a different aria-label fails WCAG 2.5.3); says whether the panel is open.
  var launcher = el("button", "launcher");
  launcher.setAttribute("aria-expanded", "false");
  launcher.setAttribute("aria-controls", "tandem-panel");
  var panel = el("div", "panel");
  panel.id = "tandem-panel";
  panel.hidden = true;
  panel.setAttribute("role", "dialog");
  var head = el("div", "head");
  var title = el("span");
  head.appendChild(title);
  var personBtn = el("button", "person");  // "talk to a person" (v2): queues the conversation for the staff
  personBtn.type = "button";
  head.appendChild(personBtn);
  var closeBtn = el("button", "close", "\u00d7");
  head.appendChild(closeBtn);
  var answering = { status: "bot" };  // who answers: bot | waiting | agent (with its name) | closed
  var banner = el("div", "banner");  // outside the site's hours: when a person answers
  banner.hidden = true;
  // The conversation is not itself a live region (each streamed chunk rebuilds its bubble, which a
  // screen reader would read again and again): `announcer` says "typing" once, then the whole answer.
  var log = el("div", "log");
  log.setAttribute("role", "region");
  log.tabIndex = 0;  // scrollable by keyboard
  var announcer = el("div", "sr-only");
  announcer.setAttribute("aria-live", "polite");
  var status = el("div", "status");
  status.setAttribute("role", "status");
  var compose = el("form", "compose");
  var input = el("textarea");
  var sendBtn = el("button", "send");
  sendBtn.type = "submit";
  var stopBtn = el("button", "stop");
  stopBtn.type = "button";
  stopBtn.hidden = true;
  compose.appendChild(input);
  compose.appendChild(sendBtn);
  compose.appendChild(stopBtn);
  [head, banner, log, status, announcer, compose].forEach(function (n) { panel.appendChild(n); });
  frame.appendChild(launcher);
  frame.appendChild(panel);
  root.appendChild(frame);

  function applyStrings() {
    frame.dir = T.dir === "rtl" ? "rtl" : "ltr";
    frame.lang = (site && site.locale) || "en";
    launcher.textContent = t("launcher");
    panel.setAttribute("aria-label", t("dialog"));
    title.textContent = (site && site.title) || t("title");
    closeBtn.setAttribute("aria-label", t("close"));
    personBtn.textContent = t("person");
    personBtn.hidden = answering.status === "waiting" || answering.status === "agent";
    log.setAttribute("aria-label", t("conversation"));
    input.setAttribute("placeholder", t("placeholder"));
    input.setAttribute("aria-label", t("your_message"));
    sendBtn.textContent = t("send");
    stopBtn.textContent = t("stop");
    Array.prototype.forEach.call(log.querySelectorAll(".msg.user, .msg.assistant"), function (node) { labelBubble(node, node.getAttribute("data-role")); });
  }

  // The site's look. Colours go through the CSS object model (which no Content-Security-Policy
  // blocks) onto an element inside the shadow root (which no page rule reaches).
  var ACCENT = /^#([0-9a-f]{3}|[0-9a-f]{6})$/i;
  function luminance(hex) {
    if (hex.length === 4) hex = "#" + hex[1] + hex[1] + hex[2] + hex[2] + hex[3] + hex[3];
    var c = [1, 3, 5].map(function (i) {
      var v = parseInt(hex.slice(i, i + 2), 16) / 255;
      return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4);
    });
    return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2];
  }
  function applySite() {
    if (site) {
      var accent = ACCENT.test(site.accent || "") ? site.accent : "#2457d6";
      var onAccent = (luminance(accent) + 0.05) / 0.05 >= 1.05 / (luminance(accent) + 0.05) ? "#111418" : "#ffffff";  // the better contrast
      frame.style.setProperty("--accent", accent);
      frame.style.setProperty("--on-accent", onAccent);
      frame.setAttribute("data-theme", site.theme || "light");
      frame.classList.toggle("left", site.position === "left");
      if (site.strings) T = site.strings;
    }
    applyStrings();
    greet();
    showHours();
  }

  function greet() {  // the site's greeting, first in the conversation (shown, not stored)
    var old = log.querySelector(".greeting");
    var text = site && site.greeting;
    if (!text) { if (old) old.remove(); return; }
    if (!old) {
      old = el("div", "msg assistant greeting");
      old.setAttribute("data-role", "assistant");
    }
    if (log.firstChild !== old) log.insertBefore(old, log.firstChild);
    old.replaceChildren(markdown(text));
    labelBubble(old, "assistant");
  }

  // "from Monday 09:00", in the visitor's language and time zone
  function when(iso) {
    var at = new Date(iso);
    if (isNaN(at)) return "";
    var opts = { weekday: "long", hour: "2-digit", minute: "2-digit" };
    if (at - Date.now() > 6 * 864e5) { opts.day = "numeric"; opts.month = "long"; }
    try { return new Intl.DateTimeFormat(frame.lang || undefined, opts).format(at); } catch (e) { return at.toLocaleString(); }
  }

  function awayWords(prefix) {
    var h = site && site.hours;
    var next = h && h.next_open ? when(h.next_open) : "";
    return next ? t(prefix, { when: next }) : t(prefix + "_closed");
  }

  function showHours() {
    clearTimeout(hoursTimer);
    var h = site && site.hours;
    if (!h) { banner.hidden = true; return; }
    var now = Date.now(), open = h.open;
    if (open && h.closes_at && Date.parse(h.closes_at) <= now) open = false;  // the page stayed open past closing time
    if (!open && h.next_open && Date.parse(h.next_open) <= now) open = true;
    banner.hidden = open;
    if (!open) banner.textContent = (h.away_message || awayWords("away")) + (h.bot_when_away ? " " + t("away_bot") : "");
    var change = open ? h.closes_at : h.next_open;
    if (change) hoursTimer = setTimeout(showHours, Math.min(Math.max(1000, Date.parse(change) - now + 1000), 864e5));
  }

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

  function setOpen(open, byPage) {
    var inside = root.activeElement != null;
    panel.hidden = !open;
    frame.classList.toggle("open", open);
    launcher.setAttribute("aria-expanded", open ? "true" : "false");
    if (open) input.focus();
    else if (!byPage || inside) launcher.focus();  // (the page closing it does not move the page's focus)
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
    node.dir = "auto";  // each message in its own direction (English in an Arabic chat reads left to right)
    node.setAttribute("role", "group");
    node.setAttribute("aria-label", role === "agent" ? node.getAttribute("data-author") || "" : t(role === "user" ? "you_said" : "assistant_said"));
  }

  // The documents an answer was grounded in, by title and heading (plain text: never links the model made).
  function sourceList(sources) {
    var box = el("div", "sources");
    box.appendChild(el("span", null, t("sources") + ": "));
    box.appendChild(document.createTextNode(sources.map(function (s) {
      var tail = s.heading && s.heading !== s.title ? s.heading.split(" \u203a ").slice(-1)[0] : "";
      return s.title + (tail && tail !== s.title ? " \u203a " + tail : "");
    }).join(" \u00b7 ")));
    return box;
  }

  function renderMessage(id, role, text, note, sources, author) {
    var b = bubbles[id];
    if (!b) {
      b = bubbles[id] = { el: el("div", "msg " + role), text: "" };
      b.el.setAttribute("data-message-id", id);
      b.el.setAttribute("data-role", role);
      if (author) b.el.setAttribute("data-author", author);
      labelBubble(b.el, role);
      log.appendChild(b.el);
    }
    b.text = text;
    b.el.replaceChildren(role === "assistant" ? markdown(text) : document.createTextNode(text));
    if (author) b.el.insertBefore(el("div", "who", author), b.el.firstChild);
    if (note) b.el.appendChild(el("div", "note", note));
    if (sources && sources.length) b.el.appendChild(sourceList(sources));
    scroll();
    return b;
  }

  var NOTES = { cancelled: "stopped", interrupted: "interrupted", blocked: "blocked", error: "failed" };
  function note(finish) { return NOTES[finish] ? t(NOTES[finish]) : null; }

  function systemNote(text) {
    var n = el("div", "msg system", text);
    n.setAttribute("data-role", "system");
    log.appendChild(n);
    scroll();
  }

  // Ratings (v2): thumbs on each finished answer, 1-5 for the conversation once it is closed.
  function thumbs(id, rated) {
    var b = bubbles[id];
    if (!b || b.el.querySelector(".rate")) return;
    var box = el("div", "rate");
    [["up", "", "helpful"], ["down", "rotate(180 12 12)", "not_helpful"]].forEach(function (r) {
      var btn = el("button");
      btn.appendChild(thumb(r[1]));  // drawn, not an emoji: not every system has a font with one
      btn.type = "button";
      btn.setAttribute("aria-label", t(r[2]));
      btn.setAttribute("aria-pressed", String(rated === r[0]));
      btn.setAttribute("data-rate", r[0]);
      btn.addEventListener("click", function () {
        sendFrame({ type: "rate", message_id: id, value: r[0] });
        Array.prototype.forEach.call(box.children, function (x) { x.setAttribute("aria-pressed", String(x === btn)); });
      });
      box.appendChild(btn);
    });
    b.el.appendChild(box);
  }

  var SVG = "http://www.w3.org/2000/svg";
  function thumb(turn) {
    var svg = document.createElementNS(SVG, "svg"), path = document.createElementNS(SVG, "path");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("aria-hidden", "true");
    path.setAttribute("d", "M2 21h4V9H2v12zm20-11a2 2 0 0 0-2-2h-6.3l1-4.6V3a1.5 1.5 0 0 0-.4-1L13 1 6.6 7.6A2 2 0 0 0 6 9v10a2 2 0 0 0 2 2h9a2 2 0 0 0 1.8-1.2l3-7.1c.1-.2.2-.5.2-.7v-2z");
    if (turn) path.setAttribute("transform", turn);
    svg.appendChild(path);
    return svg;
  }

  function stars() {
    var box = el("div", "msg system stars");
    box.setAttribute("role", "group");
    box.setAttribute("aria-label", t("rate_conversation"));
    box.appendChild(el("div", null, t("rate_conversation")));
    [1, 2, 3, 4, 5].forEach(function (n) {
      var btn = el("button", null, "\u2605");
      btn.type = "button";
      btn.setAttribute("aria-label", t("stars", { n: n }));
      btn.setAttribute("data-score", n);
      btn.addEventListener("click", function () {
        sendFrame({ type: "rate", score: n });
        Array.prototype.forEach.call(box.querySelectorAll("button"), function (x, i) { x.classList.toggle("on", i < n); x.disabled = true; });
      });
      box.appendChild(btn);
    });
    log.appendChild(box);
    scroll();
  }

  var STATUS_WORDS = { waiting: "waiting", agent: "joined", bot: "bot_back", closed: "closed_note" };
  function setAnswering(a, tell) {
    var was = answering.status;
    answering = { status: a.status || "bot", agent: a.agent || null };
    personBtn.hidden = answering.status === "waiting" || answering.status === "agent";
    if (answering.status !== "bot") setGenerating(false);
    if (!tell || was === answering.status && answering.status !== "agent") return;
    var words = answering.status === "waiting" && a.next_open ? t("waiting_away", { when: when(a.next_open) }) : t(STATUS_WORDS[answering.status], { name: answering.agent || "" });
    systemNote(words);
    announce(words);
    if (answering.status === "closed") stars();
  }

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
        if (f.site) { site = saved.site = f.site; save(); }
        if (f.reset) {
          log.replaceChildren();
          bubbles = {};
          setGenerating(false);
          f.history.forEach(function (m) {
            var shown = renderMessage(m.message_id, m.role, m.text, m.role === "assistant" && m.status !== "streaming" ? note(m.status) : null, m.sources, m.author);
            if (m.role === "assistant" && m.status !== "streaming") shown.el.setAttribute("data-finish", m.status);
            if (m.role === "assistant" && m.status === "streaming") setGenerating(true);
            if (m.role === "assistant" && m.status === "done") thumbs(m.message_id, m.rating);
          });
          // what the history holds is shown; of the rest, only messages still to be sent stay pending
          pending = pending.filter(function (p) { return outbox.some(function (m) { return m.client_msg_id === p.id; }); });
          pending.forEach(function (p) { log.appendChild(p.el); });
        }
        lastSeq = f.seq;
        if (f.answering) setAnswering(f.answering, false);
        applySite();
        if (identity) ws.send(JSON.stringify(identity));
        outbox.splice(0).forEach(function (m) { ws.send(JSON.stringify(m)); });
        frame.classList.remove("waiting");
        if (!welcomed) { welcomed = true; fire("ready", { conversation_id: f.conversation_id }); }
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
          fire("message", { role: "user", message_id: f.message_id, text: p.el.textContent });
        }
        setGenerating(answering.status === "bot");  // a person answers in their own time: no "typing"
        break;
      case "thinking":  // a reasoning model thinks before it answers: that it does is shown, never what
        var th = renderMessage(f.message_id, "assistant", "");
        th.el.classList.add("thinking");
        th.el.replaceChildren(el("span", "thinking-note", t("thinking")));
        announce(t("thinking"));
        setGenerating(true);
        break;
      case "delta":
        var b = bubbles[f.message_id];
        if (!b || !b.text) announce(t("typing"));
        var streamed = renderMessage(f.message_id, "assistant", (b ? b.text : "") + f.text).el;
        streamed.removeAttribute("data-finish");
        streamed.classList.remove("thinking");
        if (retrying) { retrying = false; showStatus(""); }
        setGenerating(true);
        break;
      case "done":
        var d = bubbles[f.message_id], said = d ? d.text : "";
        var ended = renderMessage(f.message_id, "assistant", said, note(f.finish_reason), f.sources).el;
        ended.setAttribute("data-finish", f.finish_reason);
        ended.classList.remove("thinking");
        if (f.finish_reason === "stop" || f.finish_reason === "length") thumbs(f.message_id);
        announce(t("assistant_said") + ": " + said + (note(f.finish_reason) ? " " + note(f.finish_reason) : ""));
        setGenerating(false);
        if (f.finish_reason !== "error") { lastSent = null; retrying = false; }  // answered or stopped: nothing to send again
        fire("message", { role: "assistant", message_id: f.message_id, text: said, finish_reason: f.finish_reason, sources: f.sources || [] });
        break;
      case "away":  // outside the site's hours, with no bot then: kept for a person
        if (site && site.hours) site.hours.next_open = f.next_open;
        systemNote(awayWords("held"));
        announce(awayWords("held"));
        setGenerating(false);
        lastSent = null;
        break;
      case "status":  // who answers now (v2)
        setAnswering(f, true);
        break;
      case "agent_message":  // a person's reply (v2)
        renderMessage(f.message_id, "agent", f.text, null, null, f.author);
        announce(f.author + ": " + f.text);
        fire("message", { role: "agent", message_id: f.message_id, text: f.text, author: f.author });
        break;
      case "rated":
        if (f.score) systemNote(t("rate_thanks"));
        break;
      case "identified":
        identifying.splice(0).forEach(function (p) { p.resolve({ name: f.name, email: f.email, id: f.id, verified: f.verified }); });
        break;
      case "error":
        fire("error", { code: f.code, message: f.message });
        if (SILENT[f.code]) {
          identity = null;  // not sent again after a reconnect
          identifying.splice(0).forEach(function (p) { p.reject(new Error(f.message)); });
          break;
        }
        if (f.code === "forbidden") { delete saved.token; delete saved.conversation_id; save(); }
        if (f.code === "overloaded" && lastSent && busyRetries < BUSY_RETRIES) { retryLater(lastSent, f.retry_after); break; }
        var words = T["e_" + f.code] || EN["e_" + f.code] || f.message || t("went_wrong");
        if (f.retry_after) words += " " + t("try_again_in", { s: f.retry_after });
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
        showStatus(t("retrying"));
        sendFrame(sent.frame);
        return;
      }
      showStatus(t("busy_retry", { s: left }));
      left -= 1;
      retryTimer = setTimeout(tick, 1000);
    })();
  }

  function sendFrame(frame) {
    if (ws && ws.readyState === 1) ws.send(JSON.stringify(frame));
    else outbox.push(frame);
  }

  // ---- connection ----------------------------------------------------------------------------
  var reconnectTimer = null;

  function connect() {
    if (stopped) return;
    clearTimeout(reconnectTimer);
    if (navigator.onLine === false) { showStatus(t("offline"), true); return; }  // the 'online' event connects
    showStatus(t(attempts ? "reconnecting" : "connecting"));
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
      var hello = { type: "hello", v: 1, site_key: siteKey, languages: languages() };
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
    if (navigator.onLine === false) words = t("offline");
    else if (wasOpen) words = t("lost");
    else words = t("unreachable", { s: Math.max(1, Math.round(delay / 1000)) });
    showStatus(words, true);
    if (attempts === 1 && !wasOpen) fire("error", { code: "unreachable", message: words });
    reconnectTimer = setTimeout(connect, delay);
  }
  window.addEventListener("online", function () {
    if (!ws || ws.readyState > 1) { attempts = 0; connect(); }
  });

  function languages() {
    var list = navigator.languages && navigator.languages.length ? navigator.languages : [navigator.language || "en"];
    return Array.prototype.slice.call(list, 0, 8).map(function (l) { return String(l).slice(0, 35); });
  }

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

  // The page's handle on the chat. Calls made before this script ran (window.Tandem as an array of
  // [name, ...args]) are played now.
  function identify(user) {
    user = user || {};
    var frameOut = { type: "identify" };
    ["name", "email", "id", "hmac"].forEach(function (k) { if (user[k] != null) frameOut[k] = String(user[k]); });
    identity = frameOut;
    return new Promise(function (resolve, reject) {
      identifying.push({ resolve: resolve, reject: reject });
      if (ws && ws.readyState === 1 && welcomed) ws.send(JSON.stringify(frameOut));
    });
  }
  var api = {
    open: function () { setOpen(true, true); },
    close: function () { setOpen(false, true); },
    toggle: function () { setOpen(panel.hidden, true); },
    isOpen: function () { return !panel.hidden; },
    identify: identify,
    on: function (name, fn) { if (listeners[name] && typeof fn === "function") listeners[name].push(fn); return api; },
    off: function (name, fn) { if (listeners[name]) listeners[name] = listeners[name].filter(function (g) { return g !== fn; }); return api; },
  };
  var early = Array.isArray(window.Tandem) ? window.Tandem : [];
  window.Tandem = api;
  early.forEach(function (call) {
    var r = api[call[0]] && api[call[0]].apply(api, call.slice(1));
    if (r && r.catch) r.catch(function () { /* told through the error event */ });
  });
  closeBtn.addEventListener("click", function () { setOpen(false); });
  personBtn.addEventListener("click", function () { sendFrame({ type: "handoff" }); });
  panel.addEventListener("keydown", function (e) {
    if (e.key === "Escape") { e.preventDefault(); setOpen(false); }
  });

  // With the on-screen keyboard open, phones shrink the visual viewport and not the layout one: the
  // panel follows the visual one, so the message box stays above the keyboard.
  function fitViewport() {
    var vv = window.visualViewport;
    if (!vv) return;
    frame.style.setProperty("--vv-height", vv.height + "px");
    frame.style.setProperty("--vv-top", vv.offsetTop + "px");
  }
  if (window.visualViewport) {
    window.visualViewport.addEventListener("resize", fitViewport);
    window.visualViewport.addEventListener("scroll", fitViewport);
  }

  applySite();
  fitViewport();
  if (!site) {  // a first visit: the launcher waits (briefly) for the site's look and the visitor's language
    frame.classList.add("waiting");
    setTimeout(function () { frame.classList.remove("waiting"); }, 2000);
  }

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
