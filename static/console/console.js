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

  // A folder upload: Django keeps only each file's last path component, so send the relative paths too.
  document.addEventListener("submit", function (ev) {
    var form = ev.target.closest("form[data-skill-upload]");
    var folder = form && form.querySelector("input[name=folder]");
    if (!folder) return;
    form.querySelectorAll("input[name=paths]").forEach(function (old) { old.remove(); });
    Array.prototype.forEach.call(folder.files, function (file) {
      var input = document.createElement("input");
      input.type = "hidden"; input.name = "paths"; input.value = file.webkitRelativePath || file.name;
      form.appendChild(input);
    });
  });

  // --- form errors: the summary takes the focus after a failed submit; its links focus the field ---
  function fieldFor(key) {
    var message = document.getElementById(key + "-error");
    var box = message && (message.closest(".field-error") || message.parentElement);
    var field = box && box.querySelector("input:not([type=hidden]), select, textarea");
    return field || document.getElementById(key) || document.querySelector("[name='" + key + "']");
  }

  document.addEventListener("click", function (ev) {
    var link = ev.target.closest("#error-summary a[data-field]");
    if (!link) return;
    var field = fieldFor(link.getAttribute("data-field"));
    if (!field) return;  // the link's own anchor still scrolls to the message
    ev.preventDefault();
    field.focus();
    field.scrollIntoView({block: "center"});
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

  function fmtInt(n) { return Number(n || 0).toLocaleString("en-US"); }
  function fmtMs(ms) {
    if (ms === null || ms === undefined) return "running";
    if (ms < 1000) return ms + " ms";
    if (ms < 60000) return (ms / 1000).toFixed(1) + " s";
    return Math.floor(ms / 60000) + " min " + Math.round((ms % 60000) / 1000) + " s";
  }

  // --- trace: summary, timeline (waterfall + minimap) and the turn tree -------------------------
  function startTree(view) {
    var summary = document.getElementById("trace-summary");
    var tree = document.getElementById("trace-tree");
    var wrap = document.getElementById("trace-waterfall-wrap");
    var fall = document.getElementById("trace-waterfall");
    var mini = document.getElementById("trace-minimap");
    var win = document.getElementById("trace-window");
    var zoom = 1, data = null, open = {};

    function stat(label, value, id) {
      var card = el("div", "card");
      card.appendChild(el("div", "stat-label", label));
      var v = el("div", "stat", value); if (id) v.id = id;
      card.appendChild(v);
      return card;
    }
    function renderSummary(t) {
      summary.innerHTML = "";
      summary.appendChild(stat("Duration", fmtMs(data.duration_ms)));
      summary.appendChild(stat("Model requests / tool calls", fmtInt(t.model_requests) + " / " + fmtInt(t.tool_calls)));
      summary.appendChild(stat("Tokens in / out", fmtInt(t.input_tokens) + " / " + fmtInt(t.output_tokens), "trace-total-tokens"));
      summary.appendChild(stat("Cache read / write", fmtInt(t.cache_read_input_tokens) + " / " + fmtInt(t.cache_creation_input_tokens)));
      summary.appendChild(stat("Token cost", t.cost, "trace-total-cost"));
      summary.appendChild(stat("Waiting for a person", fmtMs(t.wait_ms), "trace-total-wait"));
    }
    function bars(into, t0, span, lane, scale) {
      var row = el("div", "wf-lane");
      row.appendChild(el("div", "wf-name", lane.name));
      var track = el("div", "wf-track");
      lane.turns.forEach(function (turn) {
        turn.nodes.forEach(function (node) {
          var all = [node].concat(node.children || []);
          all.forEach(function (n) {
            var start = Date.parse(n.start) - t0;
            var dur = n.duration_ms === null ? (Date.parse(data.end) - Date.parse(n.start)) : n.duration_ms;
            var bar = el("a", "wf-bar " + n.kind + (n.is_error ? " error" : ""));
            bar.href = "#node-" + n.seq;
            bar.style.left = (100 * start / span) + "%";
            bar.style.width = Math.max(100 * dur / span, 0.25) + "%";
            bar.title = (n.kind === "model" ? "Model request" : n.name + (n.summary ? ": " + n.summary : "")) + " · " + fmtMs(n.duration_ms) + (n.wait_ms ? " (" + fmtMs(n.wait_ms) + " waiting for a person)" : "");
            if (n.wait_ms && dur) {
              var w = el("span", "wait"); w.style.width = (100 * n.wait_ms / dur) + "%"; bar.appendChild(w);
            }
            if (scale) bar.addEventListener("click", function (ev) { ev.preventDefault(); reveal(n.seq); });
            track.appendChild(bar);
          });
        });
      });
      row.appendChild(track);
      into.appendChild(row);
    }
    function renderTimeline() {
      var t0 = Date.parse(data.start), span = Math.max(Date.parse(data.end) - t0, 1);
      fall.innerHTML = ""; mini.querySelectorAll(".wf-lane").forEach(function (n) { n.remove(); });
      fall.style.width = (zoom * 100) + "%";
      data.lanes.forEach(function (lane) { bars(fall, t0, span, lane, true); bars(mini, t0, span, lane, false); });
      var axis = el("div", "wf-axis");
      for (var i = 0; i <= 4; i++) { var tick = el("span", null, fmtMs(Math.round(span * i / 4))); tick.style.left = (25 * i) + "%"; axis.appendChild(tick); }
      fall.appendChild(axis);
      syncWindow();
    }
    function syncWindow() {
      var total = wrap.scrollWidth || 1;
      win.style.left = (100 * wrap.scrollLeft / total) + "%";
      win.style.width = Math.min(100, 100 * wrap.clientWidth / total) + "%";
    }
    wrap.addEventListener("scroll", syncWindow);
    mini.addEventListener("click", function (ev) {
      var rect = mini.getBoundingClientRect();
      wrap.scrollLeft = (ev.clientX - rect.left) / rect.width * wrap.scrollWidth - wrap.clientWidth / 2;
    });
    view.addEventListener("click", function (ev) {
      var z = ev.target.closest("[data-zoom]");
      if (z) { zoom = z.dataset.zoom === "in" ? Math.min(zoom * 2, 64) : Math.max(zoom / 2, 1); renderTimeline(); }
      var act = ev.target.closest("[data-tree-act]");
      if (act) tree.querySelectorAll("details").forEach(function (d) { d.open = act.dataset.treeAct === "open"; });
    });

    function nodeLine(n) {
      if (n.kind === "model") {
        var tk = n.tokens || {};
        return "Model request · " + fmtMs(n.duration_ms) + " · " + fmtInt(tk.input_tokens) + " in / " + fmtInt(tk.output_tokens) + " out · " + (n.cost || "");
      }
      var wait = n.wait_ms ? " · waited " + fmtMs(n.wait_ms) + " for a person" : "";
      return n.name + (n.summary ? ": " + n.summary : "") + (n.is_error ? " (error)" : "") + " · ran " + fmtMs(n.run_ms) + wait;
    }
    function renderNode(n, into) {
      var box = el("details", "tnode " + n.kind + (n.is_error ? " error" : ""));
      box.id = "node-" + n.seq;
      var sum = el("summary", null, nodeLine(n));
      box.appendChild(sum);
      if (n.text) box.appendChild(el("p", "said", n.text));
      var link = el("a", "muted", "events #" + n.seq + (n.end_seq ? "–#" + n.end_seq : ""));
      link.href = "#seq-" + n.seq;
      box.appendChild(link);
      (n.children || []).forEach(function (c) { renderNode(c, box); });
      if (open[box.id]) box.open = true;
      box.addEventListener("toggle", function () { open[box.id] = box.open; });
      into.appendChild(box);
    }
    function renderTree() {
      tree.innerHTML = "";
      data.lanes.forEach(function (lane) {
        var section = el("section", "tlane");
        var t = lane.totals;
        section.appendChild(el("h3", null, lane.name + " · " + fmtInt(t.input_tokens) + " in / " + fmtInt(t.output_tokens) + " out · " + t.cost));
        lane.turns.forEach(function (turn) {
          var box = el("details", "tturn"); box.id = "turn-" + lane.id + "-" + turn.index;
          var tt = turn.totals;
          var sum = el("summary");
          sum.appendChild(el("strong", null, (turn.index ? "Turn " + turn.index + ": " : "") + turn.title));
          sum.appendChild(el("span", "muted", " · " + fmtMs(turn.duration_ms) + " · " + tt.model_requests + " model requests · " + tt.tool_calls + " tool calls · " + fmtInt(tt.input_tokens) + " in / " + fmtInt(tt.output_tokens) + " out · " + tt.cost + (tt.wait_ms ? " · waited " + fmtMs(tt.wait_ms) : "")));
          box.appendChild(sum);
          var copy = el("button", null, "Copy turn as markdown"); copy.type = "button";
          copy.addEventListener("click", function () { copyText(turn.markdown, copy); });
          box.appendChild(copy);
          turn.nodes.forEach(function (n) { renderNode(n, box); });
          if (open[box.id] !== undefined) box.open = open[box.id]; else box.open = turn === lane.turns[lane.turns.length - 1];
          box.addEventListener("toggle", function () { open[box.id] = box.open; });
          section.appendChild(box);
        });
        tree.appendChild(section);
      });
      if (!data.lanes.length) tree.appendChild(el("div", "empty", "This session has no events yet."));
    }
    function reveal(seq) {
      var node = document.getElementById("node-" + seq);
      if (!node) return;
      for (var p = node; p && p !== tree; p = p.parentElement) if (p.tagName === "DETAILS") p.open = true;
      node.scrollIntoView({ block: "center" });
      node.classList.add("flash-node"); setTimeout(function () { node.classList.remove("flash-node"); }, 1200);
    }
    document.getElementById("copy-trace-md").addEventListener("click", function (ev) {
      var button = ev.currentTarget;
      fetch(view.dataset.tree + "?format=md", { credentials: "same-origin" }).then(function (r) { return r.text(); })
        .then(function (md) { copyText(md, button); });
    });
    function load() {
      fetch(view.dataset.tree, { credentials: "same-origin" })
        .then(function (r) { if (!r.ok) throw new Error(r.status); return r.json(); })
        .then(function (tree) {
          data = tree; view.dataset.status = tree.status;
          renderSummary(tree.totals); renderTimeline(); renderTree();
          if (tree.status === "running" || tree.status === "rescheduling") setTimeout(load, 2000);  // live while it runs
        })
        .catch(function () { tree.textContent = "Could not load the trace."; });
    }
    load();
  }

  // --- trace: the event-by-event replay ---------------------------------------------------------
  function startTrace(root) {
    var lanesBox = document.getElementById("trace-lanes");
    var scrub = document.getElementById("trace-scrub");
    var pos = document.getElementById("trace-pos");
    var speed = document.getElementById("trace-speed");
    var search = document.getElementById("trace-search");
    var filter = document.getElementById("trace-filter");
    var rows = [], nodes = [], visible = [], current = 0, timer = null, lanes = {}, threads = {};
    var playButton = root.querySelector("[data-act=play]");

    function shownKinds() {
      var kinds = {};
      filter.querySelectorAll("input[name=kind]").forEach(function (b) { kinds[b.value] = b.checked; });
      return kinds;
    }
    function applyFilter() {
      var kinds = shownKinds(), q = (search.value || "").toLowerCase();
      visible = [];
      for (var k = 0; k < rows.length; k++) {
        var row = rows[k];
        var ok = kinds[row.kind] !== false && (!q || (row.summary + " " + row.type).toLowerCase().indexOf(q) >= 0);
        nodes[k].hidden = !ok;
        if (ok) visible.push(k);
      }
      scrub.max = String(Math.max(visible.length - 1, 0));
      if (!visible.length) { pos.textContent = "No event matches"; return; }
      var at = visible.indexOf(current);
      show(at >= 0 ? at : visible.length - 1, false);
    }
    function show(i, scroll) {
      if (!visible.length) return;
      i = Math.max(0, Math.min(visible.length - 1, i));
      var prev = nodes[current];
      current = visible[i];
      if (prev) prev.classList.remove("current");
      nodes[current].classList.add("current");
      for (var k = 0; k < nodes.length; k++) nodes[k].classList.toggle("future", k > current);
      scrub.value = String(i);
      pos.textContent = "Event " + (current + 1) + " of " + rows.length + " · " + rows[current].type;
      if (scroll !== false) nodes[current].scrollIntoView({ block: "nearest" });
      history.replaceState(null, "", "#seq-" + rows[current].seq);
    }
    function at() { return Math.max(visible.indexOf(current), 0); }
    function stop() { if (timer) { clearInterval(timer); timer = null; playButton.textContent = "▶ Play"; } }
    function play() {
      if (timer) { stop(); return; }
      if (at() >= visible.length - 1) show(0);
      playButton.textContent = "⏸ Pause";
      timer = setInterval(function () { if (at() >= visible.length - 1) { stop(); return; } show(at() + 1); }, parseInt(speed.value, 10));
    }
    speed.addEventListener("change", function () { if (timer) { stop(); play(); } });

    function addRow(row) {
      var laneId = row.lane;
      if (!lanes[laneId]) {
        var lane = el("section", "lane");
        var name = laneId === "main" ? "Main thread" : ("Thread " + (threads[laneId] || "") + " (" + laneId + ")");
        lane.appendChild(el("h3", null, name));
        lanes[laneId] = lane; lanesBox.appendChild(lane);
      }
      var i = rows.length;
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
      if (row.tokens) meta.push("in " + fmtInt(row.tokens.input_tokens) + " · out " + fmtInt(row.tokens.output_tokens) + " · cache read " + fmtInt(row.tokens.cache_read_input_tokens) + " · cache write " + fmtInt(row.tokens.cache_creation_input_tokens));
      if (row.cost) meta.push("cost " + row.cost);
      node.appendChild(el("div", "meta", meta.join(" · ")));
      // The event's JSON is built when it is opened: 10,000 rows stay light.
      details.addEventListener("toggle", function () {
        if (!details.open || details.dataset.built) return;
        details.dataset.built = "1";
        var pre = el("pre", null, row.event ? JSON.stringify(row.event, null, 2) : "loading…");
        details.appendChild(pre);
        if (!row.event) {
          fetch(root.dataset.src + "?after=" + (row.seq - 1) + "&limit=1", { credentials: "same-origin" })
            .then(function (r) { return r.json(); })
            .then(function (one) { row.event = one.rows[0].event; pre.textContent = JSON.stringify(row.event, null, 2); });
        }
        var bar = el("div", "actions");
        var copy = el("button", null, "Copy event"); copy.type = "button";
        copy.addEventListener("click", function () { copyText(pre.textContent, copy); });
        var link = el("a", null, "Link"); link.href = "#seq-" + row.seq;
        link.addEventListener("click", function (e) { e.preventDefault(); show(visible.indexOf(i)); });
        bar.appendChild(copy); bar.appendChild(link);
        details.appendChild(bar);
      });
      node.appendChild(details);
      node.addEventListener("focus", function () { if (!timer && visible.indexOf(i) >= 0) show(visible.indexOf(i), false); });
      lanes[laneId].appendChild(node);
      rows.push(row); nodes.push(node);
    }

    root.addEventListener("click", function (ev) {
      var b = ev.target.closest("[data-act]");
      if (!b) return;
      var act = b.dataset.act;
      if (act === "first") { stop(); show(0); }
      else if (act === "prev") { stop(); show(at() - 1); }
      else if (act === "next") { stop(); show(at() + 1); }
      else if (act === "last") { stop(); show(visible.length - 1); }
      else if (act === "play") play();
      else if (act === "expand" || act === "collapse") {
        visible.forEach(function (k) { nodes[k].querySelector("details").open = act === "expand"; });
      }
    });
    scrub.addEventListener("input", function () { stop(); show(parseInt(scrub.value, 10)); });
    filter.addEventListener("change", applyFilter);
    search.addEventListener("input", applyFilter);
    document.addEventListener("keydown", function (ev) {
      if (ev.target.closest("input, textarea, select")) return;
      if (ev.key === "ArrowRight" || ev.key === "j") { stop(); show(at() + 1); }
      else if (ev.key === "ArrowLeft" || ev.key === "k") { stop(); show(at() - 1); }
    });
    // The log comes in pages; while the session runs, new events are fetched as they are logged.
    var lastSeq = 0, first = true;
    function load(after) {
      fetch(root.dataset.src + "?lean=1&after=" + after, { credentials: "same-origin" })
        .then(function (r) { if (!r.ok) throw new Error(r.status); return r.json(); })
        .then(function (data) {
          threads = data.threads || threads;
          var wasLast = visible.length && current === visible[visible.length - 1];
          data.rows.forEach(addRow);
          if (data.rows.length) lastSeq = data.rows[data.rows.length - 1].seq;
          if (data.next_after) { pos.textContent = "Loading… " + rows.length + " events"; load(data.next_after); return; }
          if (first) {
            first = false;
            if (!rows.length) { lanesBox.appendChild(el("div", "empty", "This session has no events yet.")); }
            var m = /^#seq-(\d+)$/.exec(location.hash);  // before applyFilter moves the hash
            applyFilter();
            if (m) for (var k = 0; k < rows.length; k++) if (String(rows[k].seq) === m[1]) {
              nodes[k].hidden = false; if (visible.indexOf(k) < 0) { visible.push(k); visible.sort(function (a, b) { return a - b; }); }
              nodes[k].querySelector("details").open = true; show(visible.indexOf(k));
            }
          } else if (data.rows.length) {
            var keep = current; applyFilter();
            if (!wasLast) show(Math.max(visible.indexOf(keep), 0), false);
          }
          if (data.status === "running" || data.status === "rescheduling") setTimeout(function () { load(lastSeq); }, 2000);
        })
        .catch(function () { pos.textContent = "Could not load the trace."; });
    }
    load(0);
  }

  document.addEventListener("DOMContentLoaded", function () {
    var summary = document.getElementById("error-summary");
    if (summary) summary.focus();
    var chat = document.getElementById("chat");
    if (chat && chat.dataset.live) toBottom();  // the newest message, the composer and any approval card
    if (chat && chat.dataset.live && "WebSocket" in window) startChat(chat);
    tickWorking();
    var trace = document.getElementById("trace");
    if (trace) startTrace(trace);
    var view = document.getElementById("trace-view");
    if (view) startTree(view);
  });
})();
