// stream-detector console: vanilla JS, inline SVG charts, no external assets.
"use strict";

const $ = (sel) => document.querySelector(sel);
const NS = "http://www.w3.org/2000/svg";
const state = { view: "live", overview: null, session: null, candidate: null, headCandidate: null, whatifSeq: 0,
                timer: null };

// ---- API ------------------------------------------------------------------------------------
async function api(path, options = {}) {
  const headers = { "Content-Type": "application/json" };
  const token = sessionStorage.getItem("sd-token");
  if (options.write && token) headers["X-Console-Token"] = token;
  const res = await fetch(path, { method: options.method || "GET", headers,
                                  body: options.body ? JSON.stringify(options.body) : undefined });
  const data = await res.json().catch(() => ({ error: res.statusText }));
  if (!res.ok) { const err = new Error(data.error || res.statusText); err.status = res.status; throw err; }
  return data;
}

// ---- formatting -----------------------------------------------------------------------------
const fmt = (v, digits = 4) => (v === null || v === undefined || Number.isNaN(v)) ? "–" : Number(v).toPrecision(digits);
const fmtRate = (v) => (v === null || v === undefined) ? "–" : (v >= 100 ? v.toFixed(0) : v.toFixed(2));
const pct = (v) => (v === null || v === undefined) ? "n/a" : (100 * v).toFixed(1) + " %";
const ago = (s) => s < 60 ? `${s.toFixed(0)} s ago` : `${(s / 60).toFixed(1)} min ago`;
function setText(sel, text) { $(sel).textContent = text; }

// ---- SVG helpers ----------------------------------------------------------------------------
function el(tag, attrs = {}, parent = null, text = null) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== null) node.textContent = text;
  if (parent) parent.appendChild(node);
  return node;
}
function clear(svg) { while (svg.firstChild) svg.removeChild(svg.firstChild); }
function empty(svg, message) {
  clear(svg);
  const [, , w, h] = svg.getAttribute("viewBox").split(" ").map(Number);
  el("text", { x: w / 2, y: h / 2, "text-anchor": "middle", class: "empty" }, svg, message);
}

// Histogram of log10 scores; `lines` = [{value, cls}] thresholds drawn on it.
function drawHistogram(svg, hist, lines) {
  clear(svg);
  if (!hist || !hist.edges || hist.edges.length < 2) { empty(svg, "no scored traffic yet"); return; }
  const W = 560, H = 240, L = 40, R = 26, T = 10, B = 30;
  const lo = hist.edges[0], hi = hist.edges[hist.edges.length - 1];
  const x = (v) => L + (W - L - R) * (v - lo) / ((hi - lo) || 1);
  const maxC = Math.max(1, ...hist.counts);
  const y = (c) => H - B - (H - T - B) * c / maxC;
  const logT = hist.log_threshold;
  el("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis" }, svg);
  hist.counts.forEach((c, i) => {
    if (c <= 0) return;
    const x0 = x(hist.edges[i]), x1 = x(hist.edges[i + 1]);
    el("rect", { x: x0, y: y(c), width: Math.max(1, x1 - x0 - 1), height: H - B - y(c),
                 class: "bar" + (logT !== null && hist.edges[i] >= logT ? " over" : "") }, svg);
  });
  const ticks = 6;
  for (let k = 0; k <= ticks; k++) {
    const v = lo + (hi - lo) * k / ticks;
    el("text", { x: x(v), y: H - 12, "text-anchor": "middle" }, svg, fmt(Math.pow(10, v), 2));
  }
  el("text", { x: L - 4, y: T + 10, "text-anchor": "end" }, svg, fmt(maxC, 3));
  for (const line of lines) {
    if (line.value === null || line.value === undefined || !(line.value > 0)) continue;
    const lx = x(Math.log10(line.value));
    el("line", { x1: lx, x2: lx, y1: T, y2: H - B, class: line.cls, "data-value": String(line.value) }, svg);
    el("text", { x: lx + 4, y: T + 12 + (line.cls === "current" ? 14 : 0) }, svg, `${line.label} ${fmt(line.value, 4)}`);
  }
}

function drawSeries(svg, series) {
  clear(svg);
  if (!series || !series.length) { empty(svg, "no traffic yet"); return; }
  const W = 560, H = 240, L = 44, R = 10, T = 10, B = 30;
  const t0 = series[0].t, t1 = series[series.length - 1].t;
  const maxA = Math.max(1e-9, ...series.map((p) => p.alerts_per_s));
  const x = (t) => L + (W - L - R) * (t - t0) / ((t1 - t0) || 1);
  const y = (v) => H - B - (H - T - B) * v / maxA;
  el("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis" }, svg);
  el("polyline", { points: series.map((p) => `${x(p.t)},${y(p.alerts_per_s)}`).join(" "), class: "curve" }, svg);
  el("text", { x: L - 4, y: T + 10, "text-anchor": "end" }, svg, fmt(maxA, 2));
  el("text", { x: L - 4, y: H - B, "text-anchor": "end" }, svg, "0");
  el("text", { x: L, y: H - 12 }, svg, "-10 min");
  el("text", { x: W - R, y: H - 12, "text-anchor": "end" }, svg, "now");
}

// A unit-square curve (ROC or PR) with the operating point marked; `second`: the head's curve (dashed).
function drawCurve(svg, points, op, xLabel, yLabel, diagonal, second = null) {
  clear(svg);
  if (!points || !points.length) { empty(svg, "needs fraud and legit labels"); return; }
  const W = 260, H = 240, L = 36, R = 10, T = 10, B = 34;
  const x = (v) => L + (W - L - R) * v, y = (v) => H - B - (H - T - B) * v;
  el("rect", { x: L, y: T, width: W - L - R, height: H - T - B, fill: "none", class: "axis" }, svg);
  if (diagonal) el("line", { x1: x(0), y1: y(0), x2: x(1), y2: y(1), class: "diag" }, svg);
  el("polyline", { points: points.map(([a, b]) => `${x(a)},${y(b)}`).join(" "), class: "curve" }, svg);
  if (second && second.length) {
    el("polyline", { points: second.map(([a, b]) => `${x(a)},${y(b)}`).join(" "), class: "curve head" }, svg);
  }
  if (op && op[0] !== null && op[1] !== null) {
    el("circle", { cx: x(op[0]), cy: y(op[1]), r: 5, class: "op", "data-x": op[0], "data-y": op[1] }, svg);
  }
  el("text", { x: (L + W - R) / 2, y: H - 8, "text-anchor": "middle" }, svg, xLabel);
  el("text", { x: 12, y: (T + H - B) / 2, transform: `rotate(-90 12 ${(T + H - B) / 2})`, "text-anchor": "middle" }, svg, yLabel);
  el("text", { x: L - 3, y: T + 8, "text-anchor": "end" }, svg, "1");
  el("text", { x: L - 3, y: H - B, "text-anchor": "end" }, svg, "0");
}

function drawBars(svg, fields) {
  clear(svg);
  if (!fields || !fields.length) { empty(svg, "score an event to see its per-field errors"); return; }
  const rows = fields.slice(0, 12), W = 1100, L = 190, R = 150, rowH = 22, T = 6;
  svg.setAttribute("viewBox", `0 0 ${W} ${T * 2 + rowH * rows.length}`);
  const maxE = Math.max(1e-12, ...rows.map((f) => f.error));
  rows.forEach((f, i) => {
    const yy = T + i * rowH;
    el("text", { x: L - 8, y: yy + 15, "text-anchor": "end" }, svg, f.feature);
    el("rect", { x: L, y: yy + 3, width: Math.max(1, (W - L - R) * f.error / maxE), height: rowH - 6,
                 class: "bar" + (i < 3 ? " over" : ""), "data-feature": f.feature, "data-error": f.error }, svg);
    el("text", { x: L + (W - L - R) * f.error / maxE + 6, y: yy + 15 }, svg, `${fmt(f.error, 3)} (${(100 * f.share).toFixed(1)} %)`);
  });
}

// ---- views ----------------------------------------------------------------------------------
function show(view) {
  state.view = view;
  document.querySelectorAll(".view").forEach((s) => { s.hidden = s.id !== `view-${view}`; });
  document.querySelectorAll(".tab").forEach((b) => b.classList.toggle("active", b.dataset.view === view));
  history.replaceState(null, "", `#${view}`);
  if (view === "whatif") enterWhatIf();
  if (view === "explain") loadAlerts();
  if (view === "models") loadModels();
}

async function refreshOverview() {
  try {
    const o = await api("/api/overview");
    state.overview = o;
    const t = o.threshold;
    const headText = o.has_head && t && t.head !== null && t.head !== undefined ? ` · head p > ${fmt(t.head)}` : "";
    setText("#hdr-model", o.active_model || "none");
    setText("#hdr-threshold", t ? `${fmt(t.value)} (v${t.version})${headText}` : "none");
    setText("#live-eps", fmtRate(o.rates.events_per_s));
    setText("#live-aps", fmtRate(o.rates.alerts_per_s));
    setText("#live-model", o.active_model || "none");
    setText("#live-threshold", t ? `${fmt(t.value)} (v${t.version})${headText}` : "none");
    setText("#live-source", o.source === "none" ? "no samples yet" :
            `${o.sampled} sampled scores from ${o.source} over ${o.span_s.toFixed(1)} s`);
    drawHistogram($("#hist"), o.histogram, [{ value: t && t.value, cls: "threshold", label: "threshold" }]);
    drawSeries($("#series"), o.series);
    const body = $("#workers tbody");
    body.replaceChildren(...o.workers.map((w) => {
      const tr = document.createElement("tr");
      for (const v of [w.worker, w.model_version, w.threshold_version ?? "–", w.events_per_s === null ? "–" : fmtRate(w.events_per_s),
                       ago(w.last_seen_s), w.source]) {
        const td = document.createElement("td"); td.textContent = String(v); tr.appendChild(td);
      }
      return tr;
    }));
    $("#view-live").dataset.loaded = "1";
  } catch (err) {
    setText("#live-source", `error: ${err.message}`);
  }
}

// ---- what-if --------------------------------------------------------------------------------
async function enterWhatIf() {
  if (!state.overview) await refreshOverview();
  const o = state.overview, slider = $("#wi-slider");
  const current = o && o.threshold ? o.threshold.value : 1;
  const edges = o && o.histogram.edges.length ? o.histogram.edges : [Math.log10(current) - 2, Math.log10(current) + 2];
  // whole hundredths, so the slider's steps land on round log values (10 ** 0.5, not 10 ** 0.5003)
  slider.min = String(Math.floor(100 * Math.min(edges[0], Math.log10(current) - 1)) / 100);
  slider.max = String(Math.ceil(100 * Math.max(edges[edges.length - 1], Math.log10(current) + 1)) / 100);
  const head = o && o.has_head && o.threshold && o.threshold.head !== null ? o.threshold.head : null;
  $("#wi-head-controls").hidden = !(o && o.has_head);
  $("#wi-head-cards").hidden = !(o && o.has_head);
  if (!(o && o.has_head)) state.headCandidate = null;
  else if (state.headCandidate === null && head !== null) setHead(String(head), true, false);
  if (state.candidate === null) setCandidate(String(current), true);
  else whatIf();
  loadAudit();
}

// The head's probability threshold (models with a supervised head only); the server checks it is in (0, 1).
function setHead(text, moveSlider, refresh = true) {
  state.headCandidate = text;
  if (moveSlider && Number(text) > 0 && Number(text) < 1) $("#wi-head-slider").value = text;
  $("#wi-head").value = text;
  if (!refresh) return;
  clearTimeout(state.debounce);
  state.debounce = setTimeout(() => whatIf(), 120);
}

function setCandidate(text, moveSlider) {
  const value = Number(text);
  if (!(value > 0)) return;
  state.candidate = text;
  if (moveSlider) $("#wi-slider").value = String(Math.log10(value));
  $("#wi-value").value = text;
  clearTimeout(state.debounce);
  state.debounce = setTimeout(() => whatIf(), 120);
}

async function whatIf() {
  const seq = ++state.whatifSeq;
  const text = state.candidate, headText = state.headCandidate;
  try {
    const headQuery = headText === null ? "" : `&head=${encodeURIComponent(headText)}`;
    const r = await api(`/api/whatif?threshold=${encodeURIComponent(text)}${headQuery}`);
    if (seq !== state.whatifSeq) return; // a newer request is on its way
    const box = $("#wi-alerts-hour");
    box.textContent = fmtRate(r.alerts_per_hour);
    box.dataset.value = String(r.alerts_per_hour);
    setText("#wi-current-alerts-hour", fmtRate(r.current_alerts_per_hour));
    $("#wi-head-cards").hidden = !r.has_head;
    $("#wi-head-controls").hidden = !r.has_head;
    const parts = r.parts || null; // only with a head threshold: alerts/hour by the part that fires them
    for (const [sel, key] of [["#wi-ae-only", "autoencoder_only"], ["#wi-head-only", "head_only"], ["#wi-both", "both"]]) {
      setText(sel, parts ? fmtRate(parts[key]) : "–");
      $(sel).dataset.value = parts ? String(parts[key]) : "";
    }
    const c = r.confusion;
    setText("#wi-precision", c ? pct(c.precision) : "no labels");
    setText("#wi-recall", c ? pct(c.recall) : "no labels");
    $("#wi-precision").dataset.value = c && c.precision !== null ? String(c.precision) : "";
    $("#wi-recall").dataset.value = c && c.recall !== null ? String(c.recall) : "";
    setText("#wi-basis", `${r.sampled} sampled scores standing for ${Math.round(r.events_per_hour * r.span_s / 3600)} events ` +
            `over ${r.span_s.toFixed(1)} s · ${r.labelled} labelled events (${r.labelled_fraud} fraud) ` +
            `from topic ${r.feedback_topic}` + (c ? ` · at the candidate: ${c.tp} TP, ${c.fp} FP, ${c.fn} FN` : "") +
            (parts ? ` · rule: score above ${fmt(r.threshold)} or p(fraud) above ${fmt(r.head_threshold)} ` +
                     `(${r.head_sampled} of the sampled scores carry a probability)` : ""));
    const o = state.overview;
    drawHistogram($("#wi-hist"), o && o.histogram, [
      { value: r.current_threshold, cls: "current", label: "current" },
      { value: r.threshold, cls: "threshold", label: "candidate" }]);
    const curves = r.curves || { roc: [], pr: [] };
    const headCurves = r.curves_head || { roc: [], pr: [] };
    drawCurve($("#roc"), curves.roc, c ? [c.fpr, c.recall] : null, "false positive rate", "recall", true, headCurves.roc);
    drawCurve($("#pr"), curves.pr, c ? [c.recall, c.precision] : null, "recall", "precision", false, headCurves.pr);
    box.dataset.head = r.head_threshold === undefined || r.head_threshold === null ? "" : String(headText ?? r.head_threshold);
    box.dataset.threshold = text; // last: tests wait on this attribute
  } catch (err) {
    setText("#wi-basis", `error: ${err.message}`);
  }
}

function confirmDialog(text) {
  return new Promise((resolve) => {
    const dlg = $("#confirm");
    setText("#confirm-text", text);
    const done = (ok) => { dlg.close(); $("#confirm-yes").onclick = null; $("#confirm-no").onclick = null; resolve(ok); };
    $("#confirm-yes").onclick = () => done(true);
    $("#confirm-no").onclick = () => done(false);
    dlg.showModal();
  });
}

function result(sel, ok, text) {
  const node = $(sel);
  node.className = `result ${ok ? "ok" : "error"}`;
  node.textContent = text;
  node.dataset.status = ok ? "ok" : "error";
}

async function applyThreshold() {
  const value = Number(state.candidate);
  const o = state.overview;
  const old = o && o.threshold ? o.threshold.value : null;
  const head = o && o.has_head && state.headCandidate !== null ? Number(state.headCandidate) : null;
  const oldHead = o && o.threshold ? o.threshold.head : null;
  const headChange = head === null ? "" : ` and its head threshold from ${fmt(oldHead, 6)} to ${fmt(head, 6)}`;
  const ok = await confirmDialog(`Set the threshold of model ${o ? o.active_model : "?"} ` +
                                 `from ${fmt(old, 6)} to ${fmt(value, 6)}${headChange}? Workers pick it up within a second.`);
  if (!ok) return;
  try {
    const body = { value, note: $("#wi-note").value, operator: $("#wi-operator").value };
    if (head !== null) body.head = head;
    const r = await api("/api/threshold", { method: "POST", write: true, body });
    result("#wi-result", true, `threshold version ${r.version}: ${fmt(r.old, 6)} → ${fmt(r.new, 6)}` +
           (head === null ? "" : `, head ${fmt(r.old_head, 6)} → ${fmt(r.head, 6)}`));
    $("#wi-result").dataset.version = String(r.version);
    await refreshOverview();
    loadAudit();
  } catch (err) {
    result("#wi-result", false, `refused (${err.status || "?"}): ${err.message}`);
  }
}

async function loadAudit() {
  try {
    const lines = await api("/api/history?limit=15");
    $("#audit tbody").replaceChildren(...lines.map((a) => {
      const tr = document.createElement("tr");
      for (const v of [a.version, a.set_at, a.set_by, a.old_value == null || a.old_value === "" ? "–" : fmt(Number(a.old_value), 6),
                       fmt(a.value, 6), a.head === undefined ? "–" : fmt(a.head, 6), a.model_version, a.note]) {
        const td = document.createElement("td"); td.textContent = String(v ?? "–"); tr.appendChild(td);
      }
      return tr;
    }));
  } catch (err) { /* the audit table is secondary; the what-if numbers say if Redis is gone */ }
}

// ---- explain --------------------------------------------------------------------------------
async function loadAlerts() {
  try {
    const alerts = await api("/api/alerts?limit=30");
    const list = $("#ex-alerts");
    list.replaceChildren(...alerts.map((a) => {
      const li = document.createElement("li"), b = document.createElement("button");
      b.className = "alert-pick"; b.type = "button"; b.dataset.eventId = a.event_id;
      const head = a.probability === null || a.probability === undefined ? "" : ` · p(fraud) ${fmt(a.probability)}`;
      b.textContent = `${a.event_id} · score ${fmt(a.score)}${head} · ${(a.fired || ["autoencoder"]).join(" + ")} ` +
                      `· threshold v${a.threshold_version}`;
      b.onclick = async () => {
        $("#ex-event").value = JSON.stringify(a.event, null, 2);
        await explain();
        const redacted = Object.values(a.event || {}).includes("[redacted]");
        if (redacted) setText("#ex-error", `fields of this alert are redacted (SD_ALERT_REDACT_FIELDS); put the real values ` +
                                           `back to reproduce the worker's score ${fmt(a.score, 6)}`);
      };
      li.appendChild(b); return li;
    }));
    if (!alerts.length) { const li = document.createElement("li"); li.textContent = "no alerts yet"; list.appendChild(li); }
    list.dataset.loaded = String(alerts.length);
    if (!$("#ex-event").value && alerts.length) $("#ex-event").value = JSON.stringify(alerts[0].event, null, 2);
  } catch (err) { setText("#ex-error", err.message); }
}

async function explain() {
  setText("#ex-error", "");
  let event;
  try { event = JSON.parse($("#ex-event").value); } catch (err) { setText("#ex-error", `not JSON: ${err.message}`); return; }
  try {
    const r = await api("/api/explain", { method: "POST", body: { event } });
    setText("#ex-model", r.model_version);
    setText("#ex-threshold", r.threshold === null ? "none" : `${fmt(r.threshold)} (v${r.threshold_version})`);
    const verdict = $("#ex-verdict"), score = $("#ex-score");
    if (r.rejected) {
      score.textContent = "–"; score.dataset.score = "";
      verdict.textContent = `rejected: ${r.rejected}`; verdict.className = "value error";
      drawBars($("#ex-bars"), []);
      setText("#ex-why", "–");
    } else {
      score.textContent = fmt(r.score, 6);
      verdict.textContent = r.alert ? "ALERT" : "normal";
      verdict.className = "value " + (r.alert ? "alert-verdict" : "normal-verdict");
      drawBars($("#ex-bars"), r.fields);
      setText("#ex-why", r.why && r.why.length
        ? r.why.map((w) => {  // a unit's own fields where it has others than itself (a key's history, its frauds)
          const inner = (w.fields || []).filter((f) => f !== w.feature);
          return `${w.feature}${inner.length ? ` [${inner.join(", ")}]` : ""} (→ ${fmt(w.score_after, 4)})`;
        }).join(", ") : "–");
      score.dataset.score = String(r.score);
    }
    score.dataset.eventId = String(r.event_id); // last: tests wait on it
  } catch (err) { setText("#ex-error", err.message); }
}

// ---- models ---------------------------------------------------------------------------------
function metricsText(m) {
  if (!m) return "–";
  return Object.entries(m).filter(([, v]) => typeof v === "number").slice(0, 4)
    .map(([k, v]) => `${k} ${fmt(v, 3)}`).join(", ");
}

async function loadModels() {
  try {
    const r = await api("/api/models");
    $("#models tbody").replaceChildren(...r.versions.map((v) => {
      const tr = document.createElement("tr");
      if (v.active) tr.className = "active";
      tr.dataset.version = v.version;
      const reasons = v.gate ? [].concat(v.gate.reasons || []) : [];
      // a shadow period that was stopped leaves a gate record with no verdict
      const verdict = !v.gate ? null : v.gate.passed === true ? "passed" : v.gate.passed === false ? "refused" : "no verdict";
      const gate = verdict ? verdict + (reasons.length ? `: ${reasons.join("; ")}` : "") : "–";
      const threshold = v.threshold !== null && v.threshold !== undefined ? fmt(v.threshold)
        : v.calibrated_threshold !== null && v.calibrated_threshold !== undefined ? `${fmt(v.calibrated_threshold)} (calibrated; never active)` : "–";
      for (const cell of [v.active ? "● active" : v.previous ? "previous" : v.version === r.shadow.challenger ? "◐ shadow" : "", v.version, v.created_at || "–",
                          threshold, metricsText(v.metrics), gate]) {
        const td = document.createElement("td"); td.textContent = cell; tr.appendChild(td);
      }
      return tr;
    }));
    $("#refused tbody").replaceChildren(...(r.refused.length ? r.refused : [null]).map((g) => {
      const tr = document.createElement("tr");
      for (const cell of g ? [g.version || "–", [].concat(g.reasons || g.reason || []).join("; ") || "–"] : ["none recorded", ""]) {
        const td = document.createElement("td"); td.textContent = cell; tr.appendChild(td);
      }
      return tr;
    }));
    renderShadow(r.shadow, r.active);
    $("#rollback").disabled = !r.can_roll_back;
    $("#view-models").dataset.loaded = "1";
  } catch (err) { result("#models-result", false, err.message); }
}

// Champion and challenger side by side: the workers' shadow figures and the retrainer's last judgement.
function renderShadow(shadow, active) {
  const f = shadow && shadow.figures;
  const table = $("#shadow");
  table.dataset.challenger = (shadow && shadow.challenger) || "";
  if (!f) {
    setText("#shadow-head", "no challenger in shadow");
    $("#shadow tbody").replaceChildren();
    empty($("#shadow-bins"), "no challenger in shadow");
  } else {
    const age = f.age_s < 3600 ? `${(f.age_s / 60).toFixed(1)} min` : `${(f.age_s / 3600).toFixed(1)} h`;
    setText("#shadow-head", `challenger ${f.version} in shadow beside ${active} for ${age}: ${f.events} of ` +
            `${f.min_events} events scored; agreement ${pct(f.agreement)}, alert overlap ${pct(f.alert_overlap)}`);
    const j = f.judgement && f.judgement.numbers;
    const side = (name) => j && j[name] ? j[name] : null;
    const rows = [
      ["would-be alerts", f.champion_alerts, f.challenger_alerts],
      ["alert rate", pct(f.champion_alert_rate), pct(f.challenger_alert_rate)],
      ["labelled frauds among its alerts", side("champion") ? side("champion").frauds : "–",
       side("challenger") ? side("challenger").frauds : "–"],
      ["precision on labels arrived", side("champion") ? pct(side("champion").precision) : "–",
       side("challenger") ? pct(side("challenger").precision) : "–"],
      ["threshold", "live (Redis)", fmt(f.threshold) + (f.head_threshold ? ` / head ${fmt(f.head_threshold, 3)}` : "")],
      ["last judgement", "", f.judgement ? `${f.judgement.outcome}: ${[].concat(f.judgement.reasons || []).join("; ")}` : "not judged yet"],
    ];
    $("#shadow tbody").replaceChildren(...rows.map((cells) => {
      const tr = document.createElement("tr");
      for (const cell of cells) { const td = document.createElement("td"); td.textContent = String(cell); tr.appendChild(td); }
      return tr;
    }));
    drawShadowBins($("#shadow-bins"), shadow.bin_edges, f.bins);
  }
  const decisions = (shadow && shadow.decisions) || [];
  $("#shadow-decisions tbody").replaceChildren(...(decisions.length ? decisions : [null]).map((d) => {
    const tr = document.createElement("tr");
    const cells = d ? [d.version, d.outcome, d.figures ? d.figures.events : "–", [].concat(d.reasons || []).join("; ") || "every rule passed"]
                    : ["none recorded", "", "", ""];
    for (const cell of cells) { const td = document.createElement("td"); td.textContent = String(cell); tr.appendChild(td); }
    return tr;
  }));
}

// Two mirrored histograms over bins of log10(score / own threshold); bin 0 and the last are open-ended.
function drawShadowBins(svg, edges, bins) {
  clear(svg);
  const W = 560, H = 220, L = 40, R = 20, mid = H / 2, span = mid - 18;
  const n = edges.length + 1, w = (W - L - R) / n;
  const maxC = Math.max(1, ...bins.champion, ...bins.challenger);
  el("line", { x1: L, x2: W - R, y1: mid, y2: mid, class: "axis" }, svg);
  for (const [name, sign, cls] of [["champion", -1, "bar"], ["challenger", 1, "bar over"]]) {
    bins[name].forEach((c, i) => {
      if (c <= 0) return;
      const h = span * c / maxC;
      el("rect", { x: L + i * w, y: sign < 0 ? mid - h : mid, width: Math.max(1, w - 1), height: h, class: cls }, svg);
    });
  }
  const at = (v) => L + w * (1 + edges.indexOf(v));  // left edge of the bin starting at v
  el("line", { x1: at(0), x2: at(0), y1: 4, y2: H - 14, class: "threshold" }, svg);
  for (const v of [-2, -1, 0, 1, 2]) {
    el("text", { x: at(v), y: H - 2, "text-anchor": "middle", class: "tick" }, svg, v === 0 ? "1×" : `10^${v}`);
  }
  el("text", { x: L, y: 12, class: "tick" }, svg, "champion");
  el("text", { x: L, y: H - 16, class: "tick" }, svg, "challenger");
}

async function rollback() {
  const models = await api("/api/models");
  if (!(await confirmDialog(`Roll back from ${models.active} to ${models.previous} (with its own threshold)?`))) return;
  try {
    const r = await api("/api/rollback", { method: "POST", write: true, body: { operator: $("#rb-operator").value } });
    result("#models-result", true, `rolled back ${r.from} → ${r.to}`);
    loadModels(); refreshOverview();
  } catch (err) { result("#models-result", false, `refused (${err.status || "?"}): ${err.message}`); }
}

// ---- start ----------------------------------------------------------------------------------
async function start() {
  document.querySelectorAll(".tab").forEach((b) => { b.onclick = () => show(b.dataset.view); });
  $("#token").value = sessionStorage.getItem("sd-token") || "";
  $("#token").onchange = (e) => sessionStorage.setItem("sd-token", e.target.value);
  $("#wi-slider").oninput = (e) => setCandidate(Math.pow(10, Number(e.target.value)).toPrecision(6), false);
  $("#wi-value").onchange = (e) => setCandidate(e.target.value, true);
  $("#wi-head-slider").oninput = (e) => setHead(Number(e.target.value).toPrecision(6), false);
  $("#wi-head").onchange = (e) => setHead(e.target.value, true);
  $("#wi-reset").onclick = () => {
    const t = state.overview && state.overview.threshold;
    if (!t) return;
    if (state.overview.has_head && t.head !== null) setHead(String(t.head), true, false);
    setCandidate(String(t.value), true);
  };
  $("#wi-apply").onclick = applyThreshold;
  $("#ex-score-btn").onclick = explain;
  $("#rollback").onclick = rollback;
  try {
    state.session = await api("/api/session");
    const mode = $("#mode");
    mode.textContent = state.session.writable ? "changes need the token" : "read-only";
    mode.classList.toggle("writable", state.session.writable);
  } catch (err) { /* shown by the views */ }
  await refreshOverview();
  state.timer = setInterval(() => { if (state.view === "live") refreshOverview(); }, 2000);
  const initial = location.hash.slice(1);
  show(["live", "whatif", "explain", "models"].includes(initial) ? initial : "live");
}

document.addEventListener("DOMContentLoaded", start);
