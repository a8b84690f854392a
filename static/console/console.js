// Galley console: copy buttons, the live chat (websocket) and the trace replay. No dependencies.
(function () {
  "use strict";

  function copyText(text, button) {
    var done = function () { if (button) { var old = button.textContent; button.textContent = "Copied"; setTimeout(function () { button.textContent = old; }, 1200); } };
    if (navigator.clipboard && window.isSecureContext) { navigator.clipboard.writeText(text).then(done, done); return; }
    var area = document.createElement("textarea");
    area.value = text; document.body.appendChild(area); area.select();
    try { document.execCommand("copy"); } catch (e) { /* nothing else to try */ }
    document.body.removeChild(area); done();
  }

  document.addEventListener("click", function (ev) {
    var button = ev.target.closest("[data-copy]");
    if (!button) return;
    var source = document.querySelector(button.getAttribute("data-copy"));
    if (source) copyText(source.textContent.trim(), button);
  });

  function addCsrf(root) {
    // Partials pushed over the socket have no request, so no token: add the page's.
    var meta = document.querySelector("meta[name=csrf-token]");
    if (!root || !meta) return;
    root.querySelectorAll("form[method=post]").forEach(function (form) {
      if (form.querySelector("input[name=csrfmiddlewaretoken]")) return;
      var input = document.createElement("input");
      input.type = "hidden"; input.name = "csrfmiddlewaretoken"; input.value = meta.content;
      form.appendChild(input);
    });
  }

  document.addEventListener("submit", function (ev) {
    var form = ev.target.closest("form[data-confirm]");
    if (form && !window.confirm(form.getAttribute("data-confirm"))) ev.preventDefault();
  });

  // --- live chat -------------------------------------------------------------------------------
  function nearBottom() { return window.innerHeight + window.scrollY >= document.documentElement.scrollHeight - 160; }
  function toBottom() { window.scrollTo(0, document.documentElement.scrollHeight); }

  function tickWorking() {
    var line = document.getElementById("working");
    if (!line || line.hidden) return;
    var since = line.dataset.since ? Date.parse(line.dataset.since) : NaN;
    var out = line.querySelector(".elapsed");
    if (!out) return;
    out.textContent = isNaN(since) ? "" : "(" + Math.max(0, Math.round((Date.now() - since) / 1000)) + " s)";
  }
  setInterval(tickWorking, 1000);

  function showWorking(working) {
    var line = document.getElementById("working");
    if (!line) return;
    if (!working) { line.hidden = true; return; }
    line.hidden = false;
    line.querySelector(".label").textContent = working.label;
    line.dataset.since = working.since || "";
    tickWorking();
  }

  // Actions post without a reload: the websocket brings what they cause.
  document.addEventListener("htmx:afterRequest", function (ev) {
    var elt = ev.detail.elt, xhr = ev.detail.xhr;
    if (!xhr || !document.getElementById("chat")) return;
    var ok = xhr.getResponseHeader("X-Galley-Result") === "ok";
    var form = elt.closest("form");
    if (ok && form && form.dataset.liveForm === "reset" && elt === form) form.reset();
    var note = document.getElementById("live-note");
    if (ok && note) setTimeout(function () { if (note.querySelector(".ok")) note.innerHTML = ""; }, 2500);
    if (!ok && note) { var err = note.querySelector(".error"); if (err) { err.tabIndex = -1; err.focus(); } }
    toBottom();
  });

  document.addEventListener("keydown", function (ev) {
    if (ev.key !== "Enter" || !(ev.ctrlKey || ev.metaKey) || ev.target.id !== "composer-text") return;
    ev.preventDefault();
    var form = ev.target.closest("form");
    if (form && form.requestSubmit) form.requestSubmit();
  });

  function startChat(chat) {
    var sessionId = chat.dataset.session;
    var lastSeq = parseInt(chat.dataset.lastSeq || "0", 10);
    var state = document.getElementById("live-state");
    var retry = 500, closed = false;
    var logged = {};  // ids of events already shown: a preview arriving late must not show them again
    function showPreview(p) {
      // The agent's text as it is written; replaced by the real message when it is logged.
      if (!p.id || logged[p.id]) return;
      var node = document.getElementById("preview-" + p.id);
      if (!node) {
        node = document.createElement("div");
        node.className = "msg agent typing"; node.id = "preview-" + p.id;
        node.innerHTML = '<span class="who">Agent (typing…)</span><div class="text"></div>';
        var empty = document.getElementById("chat-empty");
        if (empty) empty.remove();
        chat.appendChild(node);
      }
      node.querySelector(".text").textContent += p.text;
    }
    function connect() {
      var scheme = location.protocol === "https:" ? "wss://" : "ws://";
      var ws = new WebSocket(scheme + location.host + "/ws/sessions/" + sessionId + "?after=" + lastSeq);
      ws.onopen = function () { retry = 500; if (state) state.textContent = "Live"; chat.dataset.connected = "1"; };
      ws.onmessage = function (msg) {
        var data = JSON.parse(msg.data);
        if (data.gone) { closed = true; if (state) state.textContent = "This session was deleted."; return; }
        if (data.preview) { showPreview(data.preview); return; }
        if (data.seq && data.seq <= lastSeq) return;
        if (data.id) {
          logged[data.id] = true;
          var typing = document.getElementById("preview-" + data.id);
          if (typing) typing.remove();
        }
        var pinned = nearBottom();
        if (data.html) {
          var empty = document.getElementById("chat-empty");
          if (empty) empty.remove();
          chat.insertAdjacentHTML("beforeend", data.html);
        }
        if (data.decided) {
          var perm = document.querySelector("#ev-" + data.decided.tool_use_id + " .perm");
          if (perm) { perm.textContent = data.decided.label; perm.className = "perm " + (data.decided.label === "approved" ? "ok" : "no"); }
        }
        if (data.seq) { lastSeq = data.seq; chat.dataset.lastSeq = String(lastSeq); }
        if (data.status) {
          var badge = document.getElementById("session-status");
          var label = data.status_label || data.status;
          if (badge) {
            badge.textContent = label; badge.dataset.status = data.status;
            badge.className = "badge " + data.status + (label === "waiting for you" ? " waiting" : "");
          }
          if (data.working !== undefined) showWorking(data.working);
        }
        if (data.usage) {
          var usage = document.getElementById("session-usage");
          if (usage) usage.textContent = data.usage;
        }
        if (data.actions_html !== undefined) {
          var actions = document.getElementById("actions");
          if (actions) {
            actions.outerHTML = data.actions_html;
            var fresh = document.getElementById("actions");
            addCsrf(fresh);
            if (window.htmx) window.htmx.process(fresh);  // its forms post without a reload too
          }
        }
        if (pinned) toBottom();
      };
      ws.onclose = function () {
        chat.dataset.connected = "";
        if (closed) return;
        if (state) state.textContent = "Reconnecting…";
        setTimeout(connect, retry); retry = Math.min(retry * 2, 10000);
      };
    }
    connect();
  }

  // --- trace replay ----------------------------------------------------------------------------
  function el(tag, cls, text) { var n = document.createElement(tag); if (cls) n.className = cls; if (text !== undefined) n.textContent = text; return n; }

  function startTrace(root) {
    var lanesBox = document.getElementById("trace-lanes");
    var scrub = document.getElementById("trace-scrub");
    var pos = document.getElementById("trace-pos");
    var rows = [], nodes = [], current = 0, timer = null;
    var playButton = root.querySelector("[data-act=play]");

    function show(i, scroll) {
      if (!rows.length) return;
      current = Math.max(0, Math.min(rows.length - 1, i));
      for (var k = 0; k < nodes.length; k++) {
        nodes[k].classList.toggle("current", k === current);
        nodes[k].classList.toggle("future", k > current);
      }
      scrub.value = String(current);
      pos.textContent = "Event " + (current + 1) + " of " + rows.length + " · " + rows[current].type;
      if (scroll !== false) nodes[current].scrollIntoView({ block: "nearest" });
      history.replaceState(null, "", "#seq-" + rows[current].seq);
    }
    function stop() { if (timer) { clearInterval(timer); timer = null; playButton.textContent = "▶ Play"; } }
    function play() {
      if (timer) { stop(); return; }
      if (current >= rows.length - 1) show(0);
      playButton.textContent = "⏸ Pause";
      timer = setInterval(function () { if (current >= rows.length - 1) { stop(); return; } show(current + 1); }, 600);
    }

    function render(data) {
      rows = data.rows;
      var lanes = {}, order = [];
      rows.forEach(function (row, i) {
        var laneId = row.lane;
        if (!lanes[laneId]) {
          var lane = el("section", "lane");
          var name = laneId === "main" ? "Main thread" : ("Thread " + (data.threads[laneId] || "") + " (" + laneId + ")");
          lane.appendChild(el("h3", null, name));
          lanes[laneId] = lane; order.push(laneId);
        }
        var node = el("div", "tev k-" + row.kind);
        node.id = "seq-" + row.seq; node.tabIndex = 0;
        var details = el("details");
        var summary = el("summary");
        summary.appendChild(el("strong", null, "#" + row.seq + " "));
        summary.appendChild(document.createTextNode(row.summary));
        details.appendChild(summary);
        var meta = [row.type, row.at.replace("T", " ").slice(0, 23)];
        if (row.latency_ms !== undefined) meta.push("latency " + row.latency_ms + " ms");
        if (row.duration_ms !== undefined) meta.push("took " + row.duration_ms + " ms");
        if (row.tokens) meta.push("in " + row.tokens.input_tokens + " · out " + row.tokens.output_tokens + " · cache read " + row.tokens.cache_read_input_tokens + " · cache write " + row.tokens.cache_creation_input_tokens);
        if (row.cost) meta.push("cost " + row.cost);
        node.appendChild(el("div", "meta", meta.join(" · ")));
        var pre = el("pre", null, JSON.stringify(row.event, null, 2));
        details.appendChild(pre);
        var bar = el("div", "actions");
        var copy = el("button", null, "Copy event"); copy.type = "button";
        copy.addEventListener("click", function () { copyText(pre.textContent, copy); });
        var link = el("a", null, "Link"); link.href = "#seq-" + row.seq;
        link.addEventListener("click", function (e) { e.preventDefault(); show(i); });
        bar.appendChild(copy); bar.appendChild(link);
        details.appendChild(bar);
        node.appendChild(details);
        node.addEventListener("focus", function () { if (!timer) show(i, false); });
        lanes[laneId].appendChild(node);
        nodes.push(node);
      });
      lanesBox.innerHTML = "";
      if (!rows.length) { lanesBox.appendChild(el("div", "empty", "This session has no events yet.")); pos.textContent = "No events"; return; }
      order.forEach(function (id) { lanesBox.appendChild(lanes[id]); });
      scrub.max = String(rows.length - 1);
      var start = rows.length - 1;
      var m = /^#seq-(\d+)$/.exec(location.hash);
      if (m) {
        for (var k = 0; k < rows.length; k++) if (String(rows[k].seq) === m[1]) { start = k; nodes[k].querySelector("details").open = true; }
      }
      show(start);
    }

    root.addEventListener("click", function (ev) {
      var b = ev.target.closest("[data-act]");
      if (!b) return;
      var act = b.dataset.act;
      if (act === "first") { stop(); show(0); }
      else if (act === "prev") { stop(); show(current - 1); }
      else if (act === "next") { stop(); show(current + 1); }
      else if (act === "last") { stop(); show(rows.length - 1); }
      else if (act === "play") play();
      else if (act === "expand" || act === "collapse") {
        lanesBox.querySelectorAll("details").forEach(function (d) { d.open = act === "expand"; });
      }
    });
    scrub.addEventListener("input", function () { stop(); show(parseInt(scrub.value, 10)); });
    document.addEventListener("keydown", function (ev) {
      if (ev.target.closest("input, textarea, select")) return;
      if (ev.key === "ArrowRight" || ev.key === "j") { stop(); show(current + 1); }
      else if (ev.key === "ArrowLeft" || ev.key === "k") { stop(); show(current - 1); }
    });
    // The log comes in pages; render once everything is here.
    var all = null;
    function load(after) {
      fetch(root.dataset.src + "?after=" + after, { credentials: "same-origin" })
        .then(function (r) { if (!r.ok) throw new Error(r.status); return r.json(); })
        .then(function (data) {
          if (all === null) all = data; else all.rows = all.rows.concat(data.rows);
          if (data.next_after) { pos.textContent = "Loading… " + all.rows.length + " events"; load(data.next_after); }
          else render(all);
        })
        .catch(function () { pos.textContent = "Could not load the trace."; });
    }
    load(0);
  }

  document.addEventListener("DOMContentLoaded", function () {
    var chat = document.getElementById("chat");
    if (chat && chat.dataset.live) toBottom();  // the newest message, the composer and any approval card
    if (chat && chat.dataset.live && "WebSocket" in window) startChat(chat);
    tickWorking();
    var trace = document.getElementById("trace");
    if (trace) startTrace(trace);
  });
})();
