/* mlsm web UI: the overview and the experiment page. Plain JS, no build step; uPlot draws. */
"use strict";
(() => {
  performance.mark("mlsm-script");
  const meta = (name) => document.querySelector(`meta[name="${name}"]`).content;
  const CSRF = meta("mlsm-csrf");
  const HAS_ROOTS = meta("mlsm-roots") === "1";
  const ORDER = ["training", "planning", "coding", "analyzing", "reporting", "idle", "stopped",
                 "failed", "done", "unreadable"];
  const WORKING = new Set(["planning", "coding", "training", "analyzing", "reporting"]);
  const RESUMABLE = new Set(["idle", ...WORKING]);
  const PALETTE = ["#4c6ef5", "#f76707", "#2f9e44", "#e03131", "#7048e8", "#0c8599", "#d6336c",
                   "#5c940d", "#1098ad", "#ae3ec9", "#e8590c", "#364fc7", "#087f5b", "#c2255c"];
  const main = document.getElementById("main");
  const crumbs = document.getElementById("crumbs");
  const live = document.getElementById("live");

  // ----- small helpers ------------------------------------------------------------------
  const esc = (v) => String(v ?? "").replace(/[&<>"']/g,
    (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"})[c]);
  const num = (v, d = 4) => (typeof v === "number" && isFinite(v))
    ? (Math.abs(v) >= 1e5 || (v !== 0 && Math.abs(v) < 1e-3) ? v.toExponential(2)
       : Number(v.toPrecision(d)).toString()) : "–";
  function dur(s) {
    if (s == null || !isFinite(s)) return "–";
    s = Math.max(0, Math.round(s));
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
    if (s < 86400) return `${Math.floor(s / 3600)}h ${String(Math.floor(s % 3600 / 60)).padStart(2, "0")}m`;
    return `${Math.floor(s / 86400)}d ${Math.floor(s % 86400 / 3600)}h`;
  }
  const clock = (t) => t ? new Date(t * 1000).toLocaleTimeString([], {hour: "2-digit",
    minute: "2-digit", second: "2-digit"}) : "–";
  const day = (t) => t ? new Date(t * 1000).toLocaleString([], {month: "short", day: "numeric",
    hour: "2-digit", minute: "2-digit"}) : "–";
  const pill = (state, big) => `<span class="pill ${esc(state)}${big ? " big" : ""}">${esc(state)}</span>`;
  function toast(text, bad) {
    const el = document.getElementById("toast");
    el.textContent = text;
    el.className = "toast" + (bad ? " bad" : "");
    el.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { el.hidden = true; }, 4000);
  }
  async function post(url, body) {
    const res = await fetch(url, {method: "POST", credentials: "same-origin",
      headers: {"content-type": "application/json", "x-csrf-token": CSRF},
      body: JSON.stringify(body || {})});
    let doc;
    try { doc = await res.json(); } catch (e) { doc = {ok: false, message: await res.text()}; }
    toast(doc.message || res.statusText, !res.ok);
    return doc;
  }
  const act = (key, action) => post(`/api/exp/${encodeURIComponent(key)}/${action}`);
  function stream(url, handlers) {
    const es = new EventSource(url);
    es.onopen = () => live.classList.remove("off");
    es.onerror = () => live.classList.add("off");
    for (const [name, fn] of Object.entries(handlers)) {
      es.addEventListener(name, (e) => fn(JSON.parse(e.data)));
    }
    return es;
  }
  // an age the server measured at row.at, carried forward on this page's own clock
  const ago = (row, field) => row[field] == null ? null
    : row[field] + (row._now - row.at) + (performance.now() - row._recv) / 1000;
  function progress(row) {
    const step = row.step, total = row.total_steps;
    if (row.state !== "training") return `<span class="muted">–</span>`;
    if (step == null) return `<span class="muted">starting…</span>`;
    if (!total) return `<span class="progress"><span class="txt">step ${esc(step)}</span></span>`;
    const pct = Math.max(0, Math.min(100, 100 * step / total));
    const eta = row.eta_s != null ? ` · ETA ${dur(row.eta_s)}` : "";
    return `<span class="progress"><span class="track"><span class="fill" style="width:${pct.toFixed(1)}%"></span></span>` +
      `<span class="txt">${esc(step)}/${esc(total)}${eta}</span></span>`;
  }
  function latest(row) {
    const m = row.latest_metrics;
    if (row.state !== "training" || !m) return "";
    const keys = Object.keys(m).filter((k) => k !== "step").slice(0, 3);
    return keys.length ? `<span class="metrics">${keys.map((k) => `${esc(k)} ${num(m[k])}`).join(" · ")}</span>` : "";
  }
  function best(row) {
    const b = row.best;
    if (!b) return `<span class="muted">–</span>`;
    return `<span title="${esc(b.goal)}">${esc(b.metric)} <b>${num(b.value)}</b></span>` +
      ` <span class="muted">@${esc(b.iteration)}</span>`;
  }
  function buttons(row) {
    const k = esc(row.key), out = [];
    if (row.stop_file || row.state === "stopped") {
      out.push(`<button class="small" data-act="resume" data-key="${k}">Resume</button>`);
    } else if (RESUMABLE.has(row.state)) {
      out.push(`<button class="small danger" data-act="stop" data-key="${k}">Stop</button>`);
    }
    if (row.state === "failed") {
      out.push(`<button class="small" data-act="retry" data-key="${k}">Retry</button>`);
    }
    return out.join(" ");
  }
  document.addEventListener("click", async (e) => {
    const b = e.target.closest("button[data-act]");
    if (!b) return;
    b.disabled = true;
    try { await act(b.dataset.key, b.dataset.act); } finally { b.disabled = false; }
  });

  // ----- the overview -------------------------------------------------------------------
  function overview() {
    crumbs.textContent = "";
    const params = new URLSearchParams(location.search);
    let filter = params.get("state") || "all";
    let query = "";
    main.innerHTML = `
      <div class="bar"><h1>Experiments</h1><span id="chips" class="bar" style="margin:0"></span>
        <input class="search" id="q" placeholder="Filter by name…" autocomplete="off">
        <div class="spacer"></div>
        ${HAS_ROOTS ? `<button class="primary" id="new">New experiment</button>` : ""}</div>
      <div class="panel"><div class="body flush"><table class="grid" id="rows"><thead><tr>
        <th>Experiment</th><th>State</th><th class="num">Iteration</th><th class="num">In state</th>
        <th>Training</th><th>Best</th><th class="num">Cost</th><th class="num">Heartbeat</th>
        <th>Daemon</th><th>Last error / note</th><th></th></tr></thead><tbody></tbody></table>
        <div id="none" class="empty" hidden>No experiments here yet.</div></div></div>
      <dialog id="dlg"><form method="dialog" id="newform"><h3>New experiment</h3>
        <label>Name <input name="name" required maxlength="100" pattern="[A-Za-z0-9][A-Za-z0-9._ \\-]*"
          placeholder="charlm-small"></label>
        <label>IDEA.md <textarea name="idea" required
          placeholder="Train a tiny char-level LM on the harbour text; minimize val_loss."></textarea></label>
        <div class="row"><button value="cancel" formnovalidate>Cancel</button>
          <button class="primary" value="ok">Create</button></div></form></dialog>`;
    const tbody = main.querySelector("tbody");
    const rows = new Map(), trs = new Map();
    // a finished flash must not replay when a filter shows the row again
    tbody.addEventListener("animationend", (e) => e.target.classList.remove("flash"));

    function cells(r) {
      const note = r.error ? `<span>${esc(r.error)}</span>`
        : `<span class="muted">${esc(r.waiting_for || r.stop_reason || "")}</span>`;
      const hb = r.state === "training" ? ago(r, "heartbeat_age_s") : null;
      const daemon = r.daemon_running ? `<span class="dot on"></span>running`
        : `<span class="dot ${WORKING.has(r.state) ? "off" : ""}"></span><span class="muted">none</span>`;
      const from = r.state === "stopped" && r.previous_state
        ? `<span class="sub">from ${esc(r.previous_state)}</span>` : "";
      return `<td class="name"><a href="/exp/${encodeURIComponent(r.key)}">${esc(r.name)}</a>` +
        `<span class="dir" title="${esc(r.dir)}">${esc(r.dir)}</span></td>` +
        `<td>${pill(r.state)}${from}</td>` +
        `<td class="num">${esc(r.iteration ?? "–")}<span class="muted">/${esc(r.max_iterations ?? "–")}</span></td>` +
        `<td class="num" data-age="time_in_state_s">${dur(ago(r, "time_in_state_s"))}</td>` +
        `<td>${progress(r)}${latest(r)}</td><td class="nowrap">${best(r)}</td>` +
        `<td class="num">${r.cost_usd ? "$" + r.cost_usd.toFixed(2) : "–"}</td>` +
        `<td class="num${hb > 120 ? " stale" : ""}"${hb == null ? "" : ` data-age="heartbeat_age_s"`}>${hb == null ? "–" : dur(hb)}</td>` +
        `<td class="nowrap">${daemon}</td><td class="err">${note}</td><td>${buttons(r)}</td>`;
    }
    function visible(r) {
      return (filter === "all" || r.state === filter) &&
        (!query || r.name.toLowerCase().includes(query));
    }
    const stamp = (r, now) => { r._recv = performance.now(); r._now = now ?? r.at; };
    function renderAll(list, now) {  // one innerHTML for the whole table: fast for hundreds
      rows.clear(); trs.clear();
      list.sort((a, b) => a.name < b.name ? -1 : a.name > b.name ? 1 : 0);
      for (const r of list) { stamp(r, now); rows.set(r.key, r); }
      tbody.innerHTML = list.map((r) => `<tr data-key="${esc(r.key)}" data-state="${esc(r.state)}"` +
        `${visible(r) ? "" : ` class="hidden"`}>${cells(r)}</tr>`).join("");
      for (const tr of tbody.children) trs.set(tr.dataset.key, tr);
    }
    function upsert(r, now) {
      stamp(r, now);
      const old = rows.get(r.key);
      rows.set(r.key, r);
      let tr = trs.get(r.key);
      if (!tr) {
        tr = document.createElement("tr");
        tr.dataset.key = r.key;
        trs.set(r.key, tr);
        let after = null;  // the first row whose name sorts after this one
        for (const [k, other] of trs) {
          if (k !== r.key && rows.get(k).name > r.name &&
              (!after || rows.get(k).name < rows.get(after.dataset.key).name)) after = other;
        }
        tbody.insertBefore(tr, after);
      }
      tr.innerHTML = cells(r);
      tr.dataset.state = r.state;
      tr.classList.toggle("hidden", !visible(r));
      if (old && old.state !== r.state) {
        tr.classList.remove("flash"); void tr.offsetWidth; tr.classList.add("flash");
      }
    }
    function painted() {
      requestAnimationFrame(() => {
        performance.mark("mlsm-overview-painted");
        window.mlsmPainted = performance.now();
      });
    }
    function chips() {
      const counts = {};
      for (const r of rows.values()) counts[r.state] = (counts[r.state] || 0) + 1;
      const states = ORDER.filter((s) => counts[s]);
      const chip = (s, n) => `<span class="chip${filter === s ? " on" : ""}" data-state="${s}">${s}<span class="n">${n}</span></span>`;
      document.getElementById("chips").innerHTML = chip("all", rows.size) +
        states.map((s) => chip(s, counts[s])).join("");
      document.getElementById("none").hidden = rows.size > 0;
    }
    function refilter() {
      for (const [k, tr] of trs) tr.classList.toggle("hidden", !visible(rows.get(k)));
      chips();
    }
    document.getElementById("chips").addEventListener("click", (e) => {
      const c = e.target.closest(".chip");
      if (!c) return;
      filter = c.dataset.state;
      history.replaceState(null, "", filter === "all" ? "/" : `/?state=${filter}`);
      refilter();
    });
    document.getElementById("q").addEventListener("input", (e) => {
      query = e.target.value.trim().toLowerCase();
      refilter();
    });
    if (HAS_ROOTS) {
      const dlg = document.getElementById("dlg");
      document.getElementById("new").onclick = () => dlg.showModal();
      dlg.addEventListener("close", async () => {
        if (dlg.returnValue !== "ok") return;
        const f = document.getElementById("newform");
        const doc = await post("/api/new", {name: f.name.value.trim(), idea: f.idea.value});
        if (doc.ok) f.reset();
      });
    }
    const initial = JSON.parse(document.getElementById("mlsm-initial").textContent);
    if (initial) { renderAll(initial.rows, initial.now); chips(); painted(); }
    stream(`/api/stream?since=${initial ? initial.version : ""}`, {rows(m) {
      if (m.full) renderAll(m.rows, m.now);
      else for (const r of m.rows) upsert(r, m.now);
      for (const k of m.removed || []) { trs.get(k)?.remove(); trs.delete(k); rows.delete(k); }
      chips();
      if (!initial && !window.mlsmPainted) painted();
      window.mlsmUpdates = (window.mlsmUpdates || 0) + 1;
    }});
    setInterval(() => {
      for (const [k, tr] of trs) {
        const r = rows.get(k);
        for (const td of tr.querySelectorAll("td[data-age]")) {
          const v = ago(r, td.dataset.age);
          td.textContent = v == null ? "–" : dur(v);
        }
      }
    }, 1000);
  }

  // ----- the experiment page ------------------------------------------------------------
  function experiment(key) {
    const K = encodeURIComponent(key);
    crumbs.innerHTML = `/ <a href="/">experiments</a> / <b>${esc(key)}</b>`;
    main.innerHTML = `
      <div class="bar" id="head"></div><div id="notes"></div>
      <div class="stats" id="stats"></div>
      <div class="panel"><h2>Timeline<span class="spacer"></span><span id="tlrange" class="muted"></span></h2>
        <div class="body"><div class="timeline" id="timeline"></div><div class="axis" id="tlaxis"></div>
        <div class="legend" id="tllegend"></div></div></div>
      <div class="panel"><h2>Metrics<span class="spacer"></span>
        <label class="muted" style="text-transform:none;letter-spacing:0"><input type="checkbox" id="logy"> log y</label></h2>
        <div class="body"><div class="charts" id="charts"><div class="empty">No metrics logged yet.</div></div></div></div>
      <div class="cols">
        <div class="panel"><h2>Iterations</h2><div class="body flush" id="iters"></div></div>
        <div class="panel"><h2>Processes</h2><div class="body flush" id="procs"></div></div>
      </div>
      <div class="panel"><div class="tabs" id="tabs">
          <button data-tab="report">REPORT.md</button><button data-tab="plan">PLAN.md</button>
          <button data-tab="idea">IDEA.md</button><button data-tab="logs" class="on">Logs</button>
          <button data-tab="diff">Diff train.py</button></div>
        <div id="tabbody"></div></div>`;
    const series = {};  // iteration -> metric -> [xs, ys]
    let doc = null, charts = {}, tab = "logs", logES = null, drawQueued = false, logSel = "runner";
    let logIter = "";

    function head(d) {
      const canStop = RESUMABLE.has(d.state) && !d.stop_file;
      const canResume = d.stop_file || d.state === "stopped";
      document.getElementById("head").innerHTML =
        `<h1>${esc(d.name)}</h1>${pill(d.state, true)}` +
        (d.state === "stopped" && d.previous_state ? `<span class="muted">from ${esc(d.previous_state)}</span>` : "") +
        `<span class="muted mono" title="${esc(d.dir)}">${esc(d.dir)}</span><div class="spacer"></div>` +
        `<button class="danger" data-act="stop" data-key="${esc(key)}" ${canStop ? "" : "disabled"}>Stop</button>` +
        `<button data-act="resume" data-key="${esc(key)}" ${canResume ? "" : "disabled"}>Resume</button>` +
        `<button data-act="retry" data-key="${esc(key)}" ${d.state === "failed" ? "" : "disabled"}>Retry</button>`;
      const notes = [];
      if (d.error) notes.push(`<div class="notice error"><b>Error</b>${esc(d.error)}</div>`);
      if (d.stop_file && d.state !== "stopped") notes.push(`<div class="notice info"><b>STOP</b>requested; the run is halting</div>`);
      if (d.waiting_for) notes.push(`<div class="notice info"><b>Waiting</b>for ${esc(d.waiting_for)}</div>`);
      if (d.stop_reason) notes.push(`<div class="notice info"><b>Why it ended</b>${esc(d.stop_reason)}</div>`);
      if (!d.daemon_running && WORKING.has(d.state)) notes.push(`<div class="notice error"><b>No daemon</b>is driving this experiment: start <span class="mono">mlsm watch ${esc(d.dir)}</span></div>`);
      document.getElementById("notes").innerHTML = notes.join("");
    }
    function stats(d) {
      const hb = ago(d, "heartbeat_age_s");
      const obj = d.objective ? `${esc(d.objective.name)} <small title="${esc(d.objective.goal)}">${d.objective.goal === "maximize" ? "↑ max" : "↓ min"}</small>` : "–";
      const s = [
        ["Iteration", `${esc(d.iteration)}<small> / ${esc(d.max_iterations ?? "–")}</small>`],
        ["In state", `<span data-age="time_in_state_s">${dur(ago(d, "time_in_state_s"))}</span>`],
        ["Objective", obj],
        ["Best", d.best ? `${num(d.best.value)} <small>@ ${esc(d.best.iteration)}</small>` : "–"],
        ["Training", d.state === "training" ? progress(d) : "–", "wide"],
        ["Heartbeat", d.state === "training" && hb != null ? `<span data-age="heartbeat_age_s">${dur(hb)} ago</span>` : "–"],
        ["Cost", d.cost_usd ? "$" + d.cost_usd.toFixed(4) : "–"],
        ["Daemon", d.daemon_running ? `<span class="dot on"></span>running` : `<span class="dot"></span>none`],
      ];
      document.getElementById("stats").innerHTML = s.map(([k, v, cls]) =>
        `<div class="stat ${cls || ""}"><div class="k">${k}</div><div class="v">${v}</div></div>`).join("");
    }
    function timeline(d) {
      const segs = d.timeline || [];
      const el = document.getElementById("timeline");
      if (!segs.length) { el.innerHTML = ""; document.getElementById("tlaxis").innerHTML = ""; return; }
      const nowS = d.at + (performance.now() - d._recv) / 1000;
      const last = segs[segs.length - 1];
      const ended = last.state === "done" || last.state === "failed";
      const t0 = segs[0].start, t1 = ended ? last.start : Math.max(nowS, ...segs.map((s) => s.end || nowS));
      const span = Math.max(1e-3, t1 - t0);
      el.innerHTML = segs.map((s) => {
        const end = s.end ?? nowS, w = Math.max(0.4, 100 * (end - s.start) / span);
        const tip = `${s.state} · iteration ${s.iteration} · ${clock(s.start)} for ${dur(end - s.start)} (${s.trigger})`;
        return `<div class="seg ${esc(s.state)}" style="flex:0 0 ${w.toFixed(3)}%" title="${esc(tip)}">${w > 6 ? esc(s.state) : ""}</div>`;
      }).join("");
      document.getElementById("tlaxis").innerHTML = `<span>${day(t0)}</span><span>${dur(span)}</span><span>${clock(t1)}</span>`;
      const seen = [...new Set(segs.map((s) => s.state))];
      document.getElementById("tllegend").innerHTML = seen.map((s) => `<span class="${esc(s)}"><i></i>${esc(s)}</span>`).join("");
      document.getElementById("tlrange").textContent = `${segs.length} transitions`;
    }
    function iterations(d) {
      const rows = d.history || [];
      if (!rows.length) { document.getElementById("iters").innerHTML = `<div class="empty">No finished iteration yet.</div>`; return; }
      document.getElementById("iters").innerHTML = `<table class="grid"><thead><tr><th class="num">#</th>
        <th>Outcome</th><th class="num">Value</th><th>Source</th><th>Exit</th><th class="num">Duration</th>
        <th>Commit</th><th>Decision</th></tr></thead><tbody>` + rows.map((r) =>
        `<tr class="${r.best ? "best" : ""}"><td class="num">${esc(r.iteration)}${r.best ? " ★" : ""}</td>` +
        `<td><span class="pill ${r.outcome === "ok" ? "done" : r.outcome === "failed" ? "failed" : "idle"}">${esc(r.outcome)}</span></td>` +
        `<td class="num">${r.metric ? `<span class="muted">${esc(r.metric)}</span> ` : ""}<b>${num(r.value)}</b></td>` +
        `<td class="muted">${esc(r.source || "–")}</td>` +
        `<td>${esc(r.reason || "")}${r.returncode != null && r.returncode !== 0 ? ` (${esc(r.returncode)})` : ""}</td>` +
        `<td class="num">${dur(r.duration_s)}</td><td class="mono">${esc(r.commit || "–")}</td>` +
        `<td>${r.decision ? `<b>${esc(r.decision)}</b> ` : ""}<span class="muted">${esc(r.decision_reason || (r.outcome === "failed" ? r.detail || "" : ""))}</span></td></tr>`
      ).join("") + `</tbody></table>`;
    }
    function gpus(p) {  // `gpus 0,1 (37% 1200/81559 MB, …)` where the run was handed GPUs
      if (!p.devices) return "";
      const used = (p.gpus || []).filter((g) => g.util_pct != null)
        .map((g) => `${g.util_pct}% ${g.mem_used_mb}/${g.mem_total_mb} MB`);
      return ` · gpus ${esc(p.devices)}${used.length ? ` (${esc(used.join(", "))})` : ""}`;
    }
    function procs(d) {
      const list = [["agent", d.agent], ["training", d.training]].filter(([, p]) => p);
      document.getElementById("procs").innerHTML = !list.length
        ? `<div class="empty">Nothing running.</div>`
        : `<table class="grid"><thead><tr><th>Kind</th><th class="num">PID / job</th><th>Alive</th><th>Since</th></tr></thead><tbody>` +
          list.map(([kind, p]) => `<tr><td>${esc(kind)}${p.role ? ` <span class="muted">(${esc(p.role)})</span>` : ""}</td>` +
            `<td class="num mono">${esc(p.pid ?? p.job_id ?? "–")}</td>` +
            `<td>${p.alive ? `<span class="dot on"></span>alive` : `<span class="dot off"></span>gone`}</td>` +
            `<td>${esc((p.started_at || "").replace("T", " ").slice(0, 19))}</td></tr>` +
            `<tr><td colspan="4" class="mono muted" style="font-size:11.5px">${esc(p.launcher)} · ${esc((p.cmd || []).join(" "))}${gpus(p)}</td></tr>`).join("") +
          `</tbody></table>`;
    }

    // curves: one chart per metric, one line per iteration
    function queueDraw() {
      if (drawQueued) return;
      drawQueued = true;
      requestAnimationFrame(() => { drawQueued = false; draw(); });
    }
    function clean(xs, ys) {
      let sorted = true;
      for (let i = 1; i < xs.length; i++) if (xs[i] <= xs[i - 1]) { sorted = false; break; }
      if (sorted) return [xs, ys];
      const m = new Map();
      xs.forEach((x, i) => m.set(x, ys[i]));
      const kx = [...m.keys()].sort((a, b) => a - b);
      return [kx, kx.map((x) => m.get(x))];
    }
    function draw() {
      const box = document.getElementById("charts");
      const metrics = [...new Set(Object.values(series).flatMap((s) => Object.keys(s)))].sort();
      if (!metrics.length) return;
      if (box.querySelector(".empty")) box.textContent = "";
      const its = Object.keys(series).map(Number).sort((a, b) => a - b);
      const bestIt = doc && doc.best ? doc.best.iteration : null;
      const liveIt = doc && doc.state === "training" ? doc.iteration : null;
      const logy = document.getElementById("logy").checked;
      for (const m of metrics) {
        const has = its.filter((it) => series[it][m] && series[it][m][0].length);
        const sig = has.join(",") + "|" + bestIt + "|" + liveIt + "|" + logy;
        const tables = has.map((it) => clean(series[it][m][0], series[it][m][1]));
        const dataArr = tables.length === 1 ? [tables[0][0], tables[0][1]] : uPlot.join(tables);
        let c = charts[m];
        if (c && c.sig === sig) { c.u.setData(dataArr); continue; }
        if (c) c.u.destroy();
        let el = box.querySelector(`.chart[data-metric="${CSS.escape(m)}"]`);
        if (!el) {
          el = document.createElement("div");
          el.className = "chart";
          el.dataset.metric = m;
          el.innerHTML = `<div class="title">${esc(m)}</div>`;
          box.appendChild(el);
        }
        const opts = {
          width: Math.max(300, el.clientWidth - 16), height: 230,
          scales: {x: {time: false}, y: logy ? {distr: 3} : {}},
          series: [{label: "step"}, ...has.map((it) => ({
            label: `iter ${it}${it === bestIt ? " ★" : ""}${it === liveIt ? " (live)" : ""}`,
            stroke: PALETTE[(it - 1 + PALETTE.length) % PALETTE.length],
            width: it === bestIt || it === liveIt ? 2.4 : 1.3, spanGaps: true,
            points: {show: false}, value: (u, v) => v == null ? "–" : num(v)}))],
          axes: [{stroke: "#8a94a6", grid: {stroke: "#8a94a622"}},
                 {stroke: "#8a94a6", grid: {stroke: "#8a94a622"}, size: 60}],
          cursor: {drag: {x: true, y: false}}, legend: {live: true},
        };
        charts[m] = {u: new uPlot(opts, dataArr, el), sig};
      }
    }
    window.addEventListener("resize", () => {
      for (const m in charts) {
        const el = charts[m].u.root.parentElement;
        charts[m].u.setSize({width: Math.max(300, el.clientWidth - 16), height: 230});
      }
    });
    document.getElementById("logy").addEventListener("change", queueDraw);

    // tabs: documents, logs, diff
    async function showTab(name) {
      tab = name;
      for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("on", b.dataset.tab === name);
      const body = document.getElementById("tabbody");
      if (logES && name !== "logs") { logES.close(); logES = null; }
      if (name === "logs") return showLogs(body);
      if (name === "diff") return showDiff(body);
      const file = {report: "REPORT.md", plan: "PLAN.md", idea: "IDEA.md"}[name];
      if (doc && !doc.files[file]) { body.innerHTML = `<div class="empty">No ${file} yet.</div>`; return; }
      const res = await fetch(`/api/exp/${K}/markdown?path=${encodeURIComponent(file)}`);
      body.innerHTML = `<div class="md">${res.ok ? await res.text() : `<p class="muted">${esc(await res.text())}</p>`}</div>`;
    }
    function showLogs(body) {
      const its = (doc && doc.iterations) || [];
      body.innerHTML = `<div class="toolbar"><select id="logsel">
          <option value="runner">runner.log</option><option value="stdout">training stdout</option>
          <option value="stderr">training stderr</option><option value="hooks">hooks.log</option></select>
        <select id="logit"><option value="">current iteration</option>${its.map((i) => `<option value="${i}">iteration ${i}</option>`).join("")}</select>
        <label class="muted"><input type="checkbox" id="follow" checked> follow</label>
        <span class="spacer" style="flex:1"></span><span id="logname" class="muted mono"></span></div>
        <pre class="log" id="log"></pre>`;
      const sel = document.getElementById("logsel"), itSel = document.getElementById("logit");
      sel.value = logSel;
      itSel.value = logIter;
      const pre = document.getElementById("log");
      const open = () => {
        if (logES) logES.close();
        pre.textContent = "";
        logES = stream(`/api/exp/${K}/logstream?log=${logSel}&iteration=${logIter}`, {log(m) {
          if (m.reset) pre.textContent = "";
          document.getElementById("logname").textContent = m.name;
          if (m.text) {
            pre.append(m.text);
            if (pre.textContent.length > 400000) pre.textContent = pre.textContent.slice(-300000);
          }
          if (document.getElementById("follow").checked) pre.scrollTop = pre.scrollHeight;
        }});
      };
      sel.onchange = () => { logSel = sel.value; open(); };
      itSel.onchange = () => { logIter = itSel.value; open(); };
      open();
    }
    function showDiff(body) {
      const its = (doc && doc.iterations) || [];
      if (its.length < 2) { body.innerHTML = `<div class="empty">A diff needs two iterations.</div>`; return; }
      const opts = (sel) => its.map((i) => `<option value="${i}" ${i === sel ? "selected" : ""}>iteration ${i}</option>`).join("");
      body.innerHTML = `<div class="toolbar">train.py of <select id="da">${opts(its[its.length - 2])}</select>
        → <select id="db">${opts(its[its.length - 1])}</select></div><pre class="diff" id="diff"></pre>`;
      const load = async () => {
        const a = document.getElementById("da").value, b = document.getElementById("db").value;
        const res = await fetch(`/api/exp/${K}/diff?a=${a}&b=${b}`);
        const text = await res.text();
        document.getElementById("diff").innerHTML = text.split("\n").map((l) => {
          const cls = l.startsWith("@@") ? "hunk" : l.startsWith("+") && !l.startsWith("+++") ? "add"
            : l.startsWith("-") && !l.startsWith("---") ? "del" : "";
          return cls ? `<span class="${cls}">${esc(l)}</span>` : esc(l) + "\n";
        }).join("");
      };
      document.getElementById("da").onchange = load;
      document.getElementById("db").onchange = load;
      load();
    }
    document.getElementById("tabs").addEventListener("click", (e) => {
      const b = e.target.closest("button[data-tab]");
      if (b) showTab(b.dataset.tab);
    });

    stream(`/api/exp/${K}/stream`, {
      doc(d) {
        const first = !doc;
        const reportCame = doc && !doc.files["REPORT.md"] && d.files["REPORT.md"];
        d._recv = performance.now();
        d._now = d.at;
        doc = d;
        document.title = `${d.name} · ${d.state} · mlsm`;
        head(d); stats(d); timeline(d); iterations(d); procs(d);
        if (first) showTab(d.files["REPORT.md"] ? "report" : "logs");
        else if (reportCame && tab === "report") showTab("report");
        queueDraw();
      },
      points(p) {
        const s = series[p.iteration] = series[p.iteration] || {};
        for (const [m, [xs, ys]] of Object.entries(p.series)) {
          if (p.reset || !s[m]) s[m] = [xs, ys];
          else { s[m][0] = s[m][0].concat(xs); s[m][1] = s[m][1].concat(ys); }
        }
        queueDraw();
      },
    });
    setInterval(() => {
      if (!doc) return;
      for (const el of document.querySelectorAll("[data-age]")) {
        const v = ago(doc, el.dataset.age);
        el.textContent = v == null ? "–" : dur(v) + (el.dataset.age === "heartbeat_age_s" ? " ago" : "");
      }
    }, 1000);
  }

  function withCharts(then) {  // uPlot only where charts are drawn
    const css = document.createElement("link");
    css.rel = "stylesheet";
    css.href = "/static/uPlot.min.css";
    document.head.prepend(css);
    const js = document.createElement("script");
    js.src = "/static/uPlot.iife.min.js";
    js.onload = then;
    document.body.appendChild(js);
  }
  const m = location.pathname.match(/^\/exp\/([^/]+)$/);
  if (m) withCharts(() => experiment(decodeURIComponent(m[1]))); else overview();
})();
