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

  // --- trace: summary, timeline (waterfall + minimap), turn tree and replay --------------------
  // The page loads one compact response (`console.trace.trace_view`: positional arrays, times in ms
  // from the first event) and draws only what is on screen: turn bodies when opened, waterfall bars
  // inside the scrolled window (bars closer than a pixel merged), replay rows in view per lane.
  function el(tag, cls, text) { var n = document.createElement(tag); if (cls) n.className = cls; if (text !== undefined) n.textContent = text; return n; }

  function fmtInt(n) { return Number(n || 0).toLocaleString("en-US"); }
  function fmtMs(ms) {
    if (ms === null || ms === undefined) return "running";
    if (ms < 1000) return ms + " ms";
    if (ms < 60000) return (ms / 1000).toFixed(1) + " s";
    return Math.floor(ms / 60000) + " min " + Math.round((ms % 60000) / 1000) + " s";
  }
  function zip(names, values) { var o = {}; for (var i = 0; i < names.length; i++) o[names[i]] = values[i]; return o; }

  function decodeTrace(raw) {
    var f = raw.fields, t0 = Date.parse(raw.start);
    function node(a) {
      var n = zip(f.node, a);
      n.is_error = !!n.is_error;
      if (n.tokens) n.tokens = zip(f.tokens, n.tokens);
      n.children = n.children.map(node);
      n.run_ms = n.duration_ms === null ? null : Math.max(0, n.duration_ms - n.wait_ms);
      return n;
    }
    var names = {};
    var lanes = raw.lanes.map(function (lane) {
      names[lane.id] = lane.name;
      return {
        id: lane.id, name: lane.name, totals: zip(f.totals, lane.totals),
        turns: lane.turns.map(function (a) {
          var turn = zip(f.turn, a);
          turn.totals = zip(f.totals, turn.totals); turn.nodes = turn.nodes.map(node);
          turn.raw = a;  // what a live update compares to tell a changed turn
          return turn;
        }),
      };
    });
    var r = raw.replay;
    var rows = r.rows.map(function (a) {
      var row = zip(f.row, a);
      row.kind = r.kinds[row.kind]; row.lane = r.lanes[row.lane]; row.type = r.types[row.type];
      row.t0 = t0;
      if (row.tokens) row.tokens = zip(f.tokens, row.tokens);
      return row;
    });
    return { status: raw.status, duration_ms: raw.duration_ms, last_seq: raw.last_seq, totals: zip(f.totals, raw.totals), lanes: lanes, names: names, rows: rows };
  }

  function startTree(view, replay) {
    var summary = document.getElementById("trace-summary");
    var tree = document.getElementById("trace-tree");
    var wrap = document.getElementById("trace-waterfall-wrap");
    var fall = document.getElementById("trace-waterfall");
    var mini = document.getElementById("trace-minimap");
    var win = document.getElementById("trace-window");
    var NAME_PX = 140;  // the lane name column (.wf-name)
    var zoom = 1, data = null, open = {}, turnOf = {}, drawn = null, tracks = [];

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
    function nodeTitle(n) {
      return (n.kind === "model" ? "Model request" : n.name + (n.summary ? ": " + n.summary : "")) + " · " + fmtMs(n.duration_ms) + (n.wait_ms ? " (" + fmtMs(n.wait_ms) + " waiting for a person)" : "");
    }
    // A lane's bars between `from` and `to` (px of a track `px` wide). A bar that starts before the
    // previous bar of its kind ends joins it: at 10,000 events a lane has more requests than pixels.
    // Errors come after the others, so they are drawn on top.
    function drawBars(track, lane, px, from, to, clickable) {
      var span = Math.max(data.duration_ms, 1), last = {}, groups = [];
      lane.flat.forEach(function (n) {
        var dur = n.duration_ms === null ? data.duration_ms - n.at_ms : n.duration_ms;
        var x0 = n.at_ms / span * px, x1 = Math.max(x0 + dur / span * px, x0 + px * 0.0025);
        if (x1 < from || x0 > to) return;
        var key = n.kind + (n.is_error ? " error" : "");  // errors stay marks of their own
        var prev = last[key];
        if (prev && x0 <= prev.x1) { prev.x1 = Math.max(prev.x1, x1); prev.nodes.push(n); return; }
        groups.push(last[key] = { x0: x0, x1: x1, nodes: [n] });
      });
      groups.sort(function (a, b) { return (a.nodes[0].is_error ? 1 : 0) - (b.nodes[0].is_error ? 1 : 0); });
      groups.forEach(function (g) {
        var n = g.nodes[0], many = g.nodes.length > 1;
        var bar = el("a", "wf-bar " + n.kind + (n.is_error ? " error" : ""));
        bar.href = "#node-" + n.seq;
        bar.style.left = (100 * g.x0 / px) + "%";
        bar.style.width = (100 * (g.x1 - g.x0) / px) + "%";
        bar.title = many ? fmtInt(g.nodes.length) + (n.kind === "model" ? " model requests" : " tool calls") + ", the first: " + nodeTitle(n) : nodeTitle(n);
        var dur = n.duration_ms;
        if (!many && n.wait_ms && dur) {
          var w = el("span", "wait"); w.style.width = (100 * n.wait_ms / dur) + "%"; bar.appendChild(w);
        }
        if (clickable) bar.addEventListener("click", function (ev) { ev.preventDefault(); reveal(n.seq); });
        track.appendChild(bar);
      });
    }
    function laneRow(into, lane) {
      var row = el("div", "wf-lane");
      row.appendChild(el("div", "wf-name", lane.name));
      var track = el("div", "wf-track");
      row.appendChild(track);
      into.appendChild(row);
      return track;
    }
    function renderTimeline() {
      var span = Math.max(data.duration_ms, 1);
      fall.innerHTML = ""; mini.querySelectorAll(".wf-lane").forEach(function (n) { n.remove(); });
      fall.style.width = (zoom * 100) + "%";
      tracks = data.lanes.map(function (lane) { return { lane: lane, track: laneRow(fall, lane), mini: laneRow(mini, lane) }; });
      tracks.forEach(function (t) { drawBars(t.mini, t.lane, t.mini.clientWidth || 1, -Infinity, Infinity, false); });
      var axis = el("div", "wf-axis");
      for (var i = 0; i <= 4; i++) { var tick = el("span", null, fmtMs(Math.round(span * i / 4))); tick.style.left = (25 * i) + "%"; axis.appendChild(tick); }
      fall.appendChild(axis);
      drawn = null; drawWindow(); syncWindow();
    }
    function drawWindow() {
      // The waterfall's bars around what is scrolled into view (one screen either side).
      var width = wrap.clientWidth, left = wrap.scrollLeft - NAME_PX;
      if (drawn && left >= drawn.from && left + width <= drawn.to) return;
      drawn = { from: left - width, to: left + 2 * width };
      tracks.forEach(function (t) {
        t.track.querySelectorAll(".wf-bar").forEach(function (b) { b.remove(); });
        drawBars(t.track, t.lane, t.track.clientWidth || 1, drawn.from, drawn.to, true);
      });
    }
    function syncWindow() {
      var total = wrap.scrollWidth || 1;
      win.style.left = (100 * wrap.scrollLeft / total) + "%";
      win.style.width = Math.min(100, 100 * wrap.clientWidth / total) + "%";
    }
    var framed = false;
    wrap.addEventListener("scroll", function () {
      syncWindow();
      if (!framed) { framed = true; requestAnimationFrame(function () { framed = false; if (data) drawWindow(); }); }
    });
    mini.addEventListener("click", function (ev) {
      var rect = mini.getBoundingClientRect();
      wrap.scrollLeft = (ev.clientX - rect.left) / rect.width * wrap.scrollWidth - wrap.clientWidth / 2;
    });
    view.addEventListener("click", function (ev) {
      var z = ev.target.closest("[data-zoom]");
      if (z && data) { zoom = z.dataset.zoom === "in" ? Math.min(zoom * 2, 64) : Math.max(zoom / 2, 1); renderTimeline(); }
      var act = ev.target.closest("[data-tree-act]");
      if (act) {
        var opening = act.dataset.treeAct === "open";
        if (opening) { finish(); tree.querySelectorAll(".tturn").forEach(buildTurn); }
        tree.querySelectorAll("details").forEach(function (d) { d.open = opening; });
      }
      var link = ev.target.closest("a[href^='#seq-']");
      if (link && tree.contains(link)) { ev.preventDefault(); replay.go(parseInt(link.getAttribute("href").slice(5), 10)); }
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
      box.appendChild(el("summary", null, nodeLine(n)));
      if (n.text) box.appendChild(el("p", "said", n.text));
      var link = el("a", "muted", "events #" + n.seq + (n.end_seq ? "–#" + n.end_seq : ""));
      link.href = "#seq-" + n.seq;
      box.appendChild(link);
      n.children.forEach(function (c) { renderNode(c, box); });
      if (open[box.id]) box.open = true;
      box.addEventListener("toggle", function () { open[box.id] = box.open; });
      into.appendChild(box);
    }
    function buildTurn(box) {
      // A turn's requests and tool calls are drawn when it is first opened.
      if (box.dataset.built) return;
      box.dataset.built = "1";
      var lane = box._lane, turn = box._turn;
      var copy = el("button", null, "Copy turn as markdown"); copy.type = "button";
      copy.addEventListener("click", function () {
        fetch(view.dataset.tree + "?format=md&lane=" + encodeURIComponent(lane.id) + "&turn=" + turn.index, { credentials: "same-origin" })
          .then(function (r) { return r.text(); }).then(function (md) { copyText(md, copy); });
      });
      box.appendChild(copy);
      turn.nodes.forEach(function (n) { renderNode(n, box); });
    }
    function flatten() {  // each lane's requests and tool calls in one list, for the bars
      data.lanes.forEach(function (lane) {
        lane.flat = [];
        lane.turns.forEach(function (turn) {
          turn.nodes.forEach(function (n) { lane.flat.push(n); n.children.forEach(function (c) { lane.flat.push(c); }); });
        });
      });
    }
    // Turns are drawn a chunk at a time: the first ones with the page, the rest in later tasks,
    // so 1,000 turns never hold the page up. `finish()` draws what is left at once.
    var TURN_CHUNK = 100, pending = [], generation = 0;
    function turnBox(lane, turn) {
      var box = el("details", "tturn"); box.id = "turn-" + lane.id + "-" + turn.index;
      box._lane = lane; box._turn = turn;
      var tt = turn.totals;
      var sum = el("summary");
      sum.appendChild(el("strong", null, (turn.index ? "Turn " + turn.index + ": " : "") + turn.title));
      sum.appendChild(el("span", "muted", " · " + fmtMs(turn.duration_ms) + " · " + tt.model_requests + " model requests · " + tt.tool_calls + " tool calls · " + fmtInt(tt.input_tokens) + " in / " + fmtInt(tt.output_tokens) + " out · " + tt.cost + (tt.wait_ms ? " · waited " + fmtMs(tt.wait_ms) : "")));
      box.appendChild(sum);
      var isOpen = open[box.id] !== undefined ? open[box.id] : turn === lane.turns[lane.turns.length - 1];
      if (isOpen) { buildTurn(box); box.open = true; }
      box.addEventListener("toggle", function () { open[box.id] = box.open; if (box.open) buildTurn(box); });
      return box;
    }
    function drawTurns(limit) {
      while (pending.length && limit > 0) {
        var p = pending[0];
        while (p.at < p.lane.turns.length && limit-- > 0) p.section.appendChild(turnBox(p.lane, p.lane.turns[p.at++]));
        if (p.at >= p.lane.turns.length) pending.shift();
      }
      return !pending.length;
    }
    function drawLater(gen) {
      setTimeout(function () { if (gen === generation && !drawTurns(TURN_CHUNK)) drawLater(gen); }, 0);
    }
    function finish() { drawTurns(Infinity); }
    function laneTitle(lane) {
      var t = lane.totals;
      return lane.name + " · " + fmtInt(t.input_tokens) + " in / " + fmtInt(t.output_tokens) + " out · " + t.cost;
    }
    function mapTurn(lane, turn) {
      var id = "turn-" + lane.id + "-" + turn.index;
      turn.nodes.forEach(function (n) {
        turnOf[n.seq] = id;
        n.children.forEach(function (c) { turnOf[c.seq] = id; });
      });
    }
    function addLane(lane) {
      var section = lane.section = el("section", "tlane");
      section.appendChild(lane.heading = el("h3", null, laneTitle(lane)));
      lane.turns.forEach(function (turn) { mapTurn(lane, turn); });
      tree.appendChild(section);
      pending.push({ section: section, lane: lane, at: 0 });
    }
    function renderTree() {
      tree.innerHTML = ""; turnOf = {}; pending = []; generation++;
      data.lanes.forEach(addLane);
      if (!data.lanes.length) tree.appendChild(el("div", "empty", "This session has no events yet."));
      if (!drawTurns(TURN_CHUNK)) drawLater(generation);
    }
    function putTurn(lane, turn) {
      // A changed turn takes its place, drawn the way the reader left it (open or closed, its open
      // nodes); a new one goes at the end. The browser's scroll anchoring keeps what is in view
      // where it was when a turn above it changes size.
      mapTurn(lane, turn);
      for (var at = lane.turns.length - 1; at >= 0 && lane.turns[at].index !== turn.index; at--);
      if (at < 0) {
        lane.turns.push(turn);
        var drawing = pending.some(function (p) { return p.lane === lane; });
        if (!drawing) lane.section.appendChild(turnBox(lane, turn));
        return;
      }
      if (JSON.stringify(lane.turns[at].raw) === JSON.stringify(turn.raw)) return;
      lane.turns[at] = turn;
      var old = document.getElementById("turn-" + lane.id + "-" + turn.index);
      if (!old) return;  // not drawn yet: drawn from the new data when its chunk comes
      open[old.id] = old.open;
      old.replaceWith(turnBox(lane, turn));
    }
    function reveal(seq) {
      if (!turnOf[seq]) return;
      finish();
      var turn = document.getElementById(turnOf[seq]);
      buildTurn(turn);
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
    return {
      show: function (fresh) {
        data = fresh; view.dataset.status = fresh.status;
        // The timeline measures its tracks: before the tree is added, that layout is small.
        renderSummary(fresh.totals); flatten(); renderTimeline(); renderTree();
      },
      update: function (fresh) {
        // A live poll: what changed since the last one (or the whole view, compared turn by turn).
        var byId = {};
        data.lanes.forEach(function (lane) { byId[lane.id] = lane; });
        data.status = fresh.status; data.duration_ms = fresh.duration_ms; data.last_seq = fresh.last_seq;
        data.totals = fresh.totals; data.names = fresh.names; view.dataset.status = fresh.status;
        var empty = tree.querySelector(":scope > .empty");
        fresh.lanes.forEach(function (next) {
          var lane = byId[next.id];
          if (!lane) {
            if (empty) { empty.remove(); empty = null; }
            lane = { id: next.id, name: next.name, totals: next.totals, turns: [] };
            data.lanes.push(lane); addLane(lane);
          }
          lane.name = next.name; lane.totals = next.totals; lane.heading.textContent = laneTitle(lane);
          next.turns.forEach(function (turn) { putTurn(lane, turn); });
        });
        if (pending.length) drawLater(generation);
        renderSummary(data.totals); flatten(); renderTimeline();  // the time axis grows with the session
      },
      fail: function () { tree.textContent = "Could not load the trace."; },
    };
  }

  // --- trace: the event-by-event replay, one virtual list per lane --------------------------------
  function startReplay(root) {
    var lanesBox = document.getElementById("trace-lanes");
    var scrub = document.getElementById("trace-scrub");
    var pos = document.getElementById("trace-pos");
    var speed = document.getElementById("trace-speed");
    var search = document.getElementById("trace-search");
    var filter = document.getElementById("trace-filter");
    var playButton = root.querySelector("[data-act=play]");
    var EST_PX = 56, OVERSCAN = 25, PAGE = 2000;  // a row's first guess; rows drawn beyond the view; trace.json's page
    var rows = [], bySeq = {}, visible = [], current = 0, cursor = 0, timer = null;
    var lanes = {}, laneAt = [], heights = [], opened = {}, names = {}, loaded = false;

    function shownKinds() {
      var kinds = {};
      filter.querySelectorAll("input[name=kind]").forEach(function (b) { kinds[b.value] = b.checked; });
      return kinds;
    }
    function lane(id) {
      if (lanes[id]) return lanes[id];
      var section = el("section", "lane");
      section.appendChild(el("h3", null, id === "main" ? "Main thread" : "Thread " + (names[id] || "") + " (" + id + ")"));
      var box = el("div", "vlist"), top = el("div", "vpad"), bottom = el("div", "vpad");
      box.appendChild(top); box.appendChild(bottom); section.appendChild(box); lanesBox.appendChild(section);
      var l = lanes[id] = { box: box, top: top, bottom: bottom, ids: [], tops: null, shown: {}, from: -1, to: -1, framed: false };
      box.addEventListener("scroll", function () {
        if (l.framed) return;
        l.framed = true; requestAnimationFrame(function () { l.framed = false; draw(l, false); });
      });
      return l;
    }
    function tops(l) {
      if (!l.tops) {
        l.tops = new Float64Array(l.ids.length + 1);
        for (var i = 0; i < l.ids.length; i++) l.tops[i + 1] = l.tops[i] + (heights[l.ids[i]] || EST_PX);
      }
      return l.tops;
    }
    function indexAt(t, y) {  // the last row starting at or above y
      var lo = 0, hi = t.length - 2;
      while (lo < hi) { var mid = (lo + hi + 1) >> 1; if (t[mid] <= y) lo = mid; else hi = mid - 1; }
      return Math.max(lo, 0);
    }
    function draw(l, force) {
      var t = tops(l), n = l.ids.length;
      var y = l.box.scrollTop, h = l.box.clientHeight || 600;
      var a = Math.max(0, indexAt(t, y) - OVERSCAN), b = Math.min(n, indexAt(t, y + h) + 1 + OVERSCAN);
      if (!force && a === l.from && b === l.to) return;
      l.from = a; l.to = b;
      var want = {};
      for (var i = a; i < b; i++) want[l.ids[i]] = true;
      Object.keys(l.shown).forEach(function (k) { if (!want[k]) { l.shown[k].remove(); delete l.shown[k]; } });
      var ref = l.top.nextSibling;
      for (i = a; i < b; i++) {
        var k = l.ids[i], node = l.shown[k];
        if (!node) node = l.shown[k] = build(k);
        if (node === ref) ref = ref.nextSibling; else l.box.insertBefore(node, ref);
      }
      l.top.style.height = t[a] + "px";
      var changed = false;
      for (i = a; i < b; i++) {
        var px = l.shown[l.ids[i]].offsetHeight + 6;  // .tev's margin-bottom
        if (px !== heights[l.ids[i]]) { heights[l.ids[i]] = px; changed = true; }
      }
      if (changed) l.tops = null;
      t = tops(l);
      l.bottom.style.height = (t[n] - t[b]) + "px";
    }
    function drawAll(force) { Object.keys(lanes).forEach(function (id) { draw(lanes[id], force); }); }

    var wanted = {}, wantTimer = null;
    function fetchEvents() {
      // The JSON of rows opened together comes in one request (a range of seqs).
      wantTimer = null;
      var seqs = Object.keys(wanted).map(Number).sort(function (x, y) { return x - y; });
      if (!seqs.length) return;
      var lo = seqs[0], batch = {};
      seqs.forEach(function (s) { if (s - lo < PAGE) { batch[s] = wanted[s]; delete wanted[s]; } });
      var hi = Math.max.apply(null, Object.keys(batch).map(Number));
      fetch(root.dataset.src + "?after=" + (lo - 1) + "&limit=" + (hi - lo + 1), { credentials: "same-origin" })
        .then(function (r) { return r.json(); })
        .then(function (page) {
          page.rows.forEach(function (r) {
            if (bySeq[r.seq]) bySeq[r.seq].event = r.event;
            (batch[r.seq] || []).forEach(function (pre) { pre.textContent = JSON.stringify(r.event, null, 2); });
          });
          fetchEvents();
        });
    }
    function fill(row, details) {
      if (details.dataset.built) return;
      details.dataset.built = "1";
      var pre = el("pre", null, row.event ? JSON.stringify(row.event, null, 2) : "loading…");
      details.appendChild(pre);
      if (!row.event) {
        (wanted[row.seq] = wanted[row.seq] || []).push(pre);
        if (!wantTimer) wantTimer = setTimeout(fetchEvents, 0);
      }
      var bar = el("div", "actions");
      var copy = el("button", null, "Copy event"); copy.type = "button";
      copy.addEventListener("click", function () { copyText(pre.textContent, copy); });
      var link = el("a", null, "Link"); link.href = "#seq-" + row.seq;
      link.addEventListener("click", function (e) { e.preventDefault(); go(row.seq); });
      bar.appendChild(copy); bar.appendChild(link);
      details.appendChild(bar);
    }
    function build(k) {
      var row = rows[k];
      var node = el("div", "tev k-" + row.kind + (k === current ? " current" : "") + (k > current ? " future" : ""));
      node.id = "seq-" + row.seq; node.tabIndex = 0;
      var details = el("details");
      var summary = el("summary");
      summary.appendChild(el("strong", null, "#" + row.seq + " "));
      summary.appendChild(document.createTextNode(row.summary));
      details.appendChild(summary);
      var meta = [row.type, new Date(row.t0 + row.at_ms).toISOString().replace("T", " ").slice(0, 23)];
      if (row.latency_ms !== null) meta.push("latency " + row.latency_ms + " ms");
      if (row.duration_ms !== null) meta.push("took " + row.duration_ms + " ms");
      if (row.tokens) meta.push("in " + fmtInt(row.tokens.input_tokens) + " · out " + fmtInt(row.tokens.output_tokens) + " · cache read " + fmtInt(row.tokens.cache_read_input_tokens) + " · cache write " + fmtInt(row.tokens.cache_creation_input_tokens));
      if (row.cost) meta.push("cost " + row.cost);
      node.appendChild(el("div", "meta", meta.join(" · ")));
      if (opened[row.seq]) { details.open = true; fill(row, details); }
      details.addEventListener("toggle", function () {
        if (details.open) { opened[row.seq] = true; fill(row, details); } else delete opened[row.seq];
        var l = lanes[row.lane]; if (!l.framed) { l.framed = true; requestAnimationFrame(function () { l.framed = false; draw(l, true); }); }
      });
      node.appendChild(details);
      node.addEventListener("focus", function () { if (!timer && laneAt[k] >= 0) show(visible.indexOf(k), false); });
      return node;
    }

    function hay(row) {  // what the search looks in, made on the first search
      if (row.hay === undefined) row.hay = (row.summary + " " + row.type).toLowerCase();
      return row.hay;
    }
    function applyFilter() {
      var kinds = shownKinds(), q = (search.value || "").toLowerCase();
      visible = [];
      Object.keys(lanes).forEach(function (id) { lanes[id].ids = []; lanes[id].tops = null; });
      for (var k = 0; k < rows.length; k++) {
        var row = rows[k];
        if (kinds[row.kind] !== false && (!q || hay(row).indexOf(q) >= 0)) {
          var l = lanes[row.lane]; laneAt[k] = l.ids.length; l.ids.push(k); visible.push(k);
        } else laneAt[k] = -1;
      }
      drawAll(true);
      scrub.max = String(Math.max(visible.length - 1, 0));
      if (!visible.length) { pos.textContent = "No event matches"; return; }
      var at = visible.indexOf(current);
      show(at >= 0 ? at : visible.length - 1, false);
    }
    var hashTimer = null;
    function show(i, scroll) {
      if (!visible.length) return;
      i = Math.max(0, Math.min(visible.length - 1, i));
      cursor = i; current = visible[i];
      Object.keys(lanes).forEach(function (id) {
        var shown = lanes[id].shown;
        Object.keys(shown).forEach(function (key) { var k = +key; shown[key].classList.toggle("current", k === current); shown[key].classList.toggle("future", k > current); });
      });
      scrub.value = String(i);
      pos.textContent = "Event " + (current + 1) + " of " + rows.length + " · " + rows[current].type;
      bring(current, scroll !== false);
      if (!hashTimer) hashTimer = setTimeout(function () { hashTimer = null; history.replaceState(null, "", "#seq-" + rows[current].seq); }, 150);
    }
    function bring(k, page) {
      // The row drawn and in its lane's view; with `page`, the page scrolled to it too.
      var l = lanes[rows[k].lane], t = tops(l), i = laneAt[k];
      if (t[i] < l.box.scrollTop || t[i + 1] > l.box.scrollTop + l.box.clientHeight) l.box.scrollTop = t[i] - l.box.clientHeight / 2;
      draw(l, false);
      if (page && l.shown[k]) l.shown[k].scrollIntoView({ block: "nearest" });
    }
    function go(seq) {
      // Show one event, turning its kind back on if it was filtered out.
      var row = bySeq[seq];
      if (!row) return;
      var k = rows.indexOf(row);
      if (laneAt[k] < 0) {
        filter.querySelectorAll("input[name=kind]").forEach(function (b) { if (b.value === row.kind) b.checked = true; });
        if (hay(row).indexOf((search.value || "").toLowerCase()) < 0) search.value = "";
        applyFilter();
      }
      opened[seq] = true;
      if (lanes[row.lane].shown[k]) { var d = lanes[row.lane].shown[k].querySelector("details"); d.open = true; }
      show(visible.indexOf(k));
    }
    function stop() { if (timer) { clearInterval(timer); timer = null; playButton.textContent = "▶ Play"; } }
    function play() {
      if (timer) { stop(); return; }
      if (cursor >= visible.length - 1) show(0);
      playButton.textContent = "⏸ Pause";
      timer = setInterval(function () { if (cursor >= visible.length - 1) { stop(); return; } show(cursor + 1); }, parseInt(speed.value, 10));
    }
    speed.addEventListener("change", function () { if (timer) { stop(); play(); } });
    root.addEventListener("click", function (ev) {
      var b = ev.target.closest("[data-act]");
      if (!b) return;
      var act = b.dataset.act;
      if (act === "first") { stop(); show(0); }
      else if (act === "prev") { stop(); show(cursor - 1); }
      else if (act === "next") { stop(); show(cursor + 1); }
      else if (act === "last") { stop(); show(visible.length - 1); }
      else if (act === "play") play();
      else if (act === "expand" || act === "collapse") {
        if (act === "expand") visible.forEach(function (k) { opened[rows[k].seq] = true; }); else opened = {};
        Object.keys(lanes).forEach(function (id) {
          var shown = lanes[id].shown;
          Object.keys(shown).forEach(function (key) { shown[key].querySelector("details").open = act === "expand"; });
        });
      }
    });
    scrub.addEventListener("input", function () { stop(); show(parseInt(scrub.value, 10)); });
    filter.addEventListener("change", applyFilter);
    search.addEventListener("input", applyFilter);
    document.addEventListener("keydown", function (ev) {
      if (ev.target.closest("input, textarea, select")) return;
      if (ev.key === "ArrowRight" || ev.key === "j") { stop(); show(cursor + 1); }
      else if (ev.key === "ArrowLeft" || ev.key === "k") { stop(); show(cursor - 1); }
    });
    function counts() {
      var per = {};
      rows.forEach(function (row) { per[row.kind] = (per[row.kind] || 0) + 1; });
      filter.querySelectorAll("[data-kind-count]").forEach(function (n) { n.textContent = "(" + fmtInt(per[n.dataset.kindCount] || 0) + ")"; });
    }
    return {
      go: go,
      show: function (data) {
        // New rows (the log only grows) are added; the position stays unless it was on the newest.
        names = data.names;
        var wasLast = visible.length && current === visible[visible.length - 1];
        var before = rows.length, last = rows.length ? rows[rows.length - 1].seq : 0;
        data.rows.forEach(function (row) { if (row.seq > last) { lane(row.lane); bySeq[row.seq] = row; rows.push(row); } });
        counts();
        if (!loaded) {
          loaded = true;
          if (!rows.length) lanesBox.appendChild(el("div", "empty", "This session has no events yet."));
          var m = /^#seq-(\d+)$/.exec(location.hash);  // before show() moves the hash
          current = rows.length - 1;
          applyFilter();
          if (m && bySeq[m[1]]) go(parseInt(m[1], 10));
        } else if (rows.length > before) {
          var keep = current; applyFilter();
          if (!wasLast && laneAt[keep] >= 0) show(visible.indexOf(keep), false);
        }
      },
      fail: function () { pos.textContent = "Could not load the trace."; },
    };
  }

  function startTraceView(view, root) {
    // One load for the tree and the replay; again every 2 s while the session runs.
    // After the first load, a poll asks only for what is new since the last seq it has.
    var replay = startReplay(root), tree = startTree(view, replay), seen = null, last = null;
    function load() {
      fetch(view.dataset.src + (last === null ? "" : "?after=" + last), { credentials: "same-origin" })
        .then(function (r) { if (!r.ok) throw new Error(r.status); return r.json(); })
        .then(function (raw) {
          var data = decodeTrace(raw), key = data.last_seq + " " + data.status;
          if (key !== seen) {  // drawn only when the log moved
            seen = key;
            if (last === null) tree.show(data); else tree.update(data);
            replay.show(data);
          }
          last = data.last_seq;
          if (data.status === "running" || data.status === "rescheduling") setTimeout(load, 2000);
        })
        .catch(function () { tree.fail(); replay.fail(); });
    }
    load();
  }

  document.addEventListener("DOMContentLoaded", function () {
    var summary = document.getElementById("error-summary");
    if (summary) summary.focus();
    var chat = document.getElementById("chat");
    if (chat && chat.dataset.live) toBottom();  // the newest message, the composer and any approval card
    if (chat && chat.dataset.live && "WebSocket" in window) startChat(chat);
    tickWorking();
    var view = document.getElementById("trace-view"), trace = document.getElementById("trace");
    if (view && trace) startTraceView(view, trace);
  });
})();
