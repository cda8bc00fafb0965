// NoNN live dashboard: renders the snapshots the server pushes over Server-Sent Events.
// No polling and no libraries: one EventSource, DOM built with textContent (MQTT data is
// untrusted), the image and the charts drawn on canvases.
"use strict";

const $ = (id) => document.getElementById(id);
const DASH = "\u2013";
let ended = false;

function fmt(v, digits = 1, unit = "") {
  return v === null || v === undefined ? DASH : `${Number(v).toFixed(digits)}${unit}`;
}

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function setBadge(text, cls) {
  const badge = $("badge");
  badge.textContent = text;
  badge.className = `badge ${cls}`;
}

// ---- header -----------------------------------------------------------------------------
function renderHeader(s) {
  $("deployment").textContent = s.deployment;
  $("broker").textContent = s.broker || "";
  $("elapsed").textContent = s.elapsed_s === null ? "" : `t = ${fmt(s.elapsed_s, 1, " s")}`;
  if (s.finished) setBadge(s.finished, "finished");
  else if (s.connected) setBadge("live", "live");
  else setBadge(s.broker ? "broker lost" : "waiting for broker", s.broker ? "lost" : "connecting");
}

// ---- the current frame --------------------------------------------------------------------
function drawImage(img) {
  const canvas = $("image");
  canvas.width = img.w;
  canvas.height = img.h;
  const raw = atob(img.b64);
  const ctx = canvas.getContext("2d");
  const data = ctx.createImageData(img.w, img.h);
  for (let i = 0; i < img.w * img.h; i++) {
    for (let ch = 0; ch < 3; ch++) {
      data.data[4 * i + ch] = raw.charCodeAt(img.c === 1 ? i : img.c * i + ch);
    }
    data.data[4 * i + 3] = 255;
  }
  ctx.putImageData(data, 0, 0);
}

function renderFrame(f) {
  if (!f) return;
  $("frame-seq").textContent = `#${f.seq}`;
  drawImage(f.image);
  const best = f.top3[0];
  const pred = $("prediction");
  pred.textContent = best.name;
  pred.className = "big" + (f.correct === true ? " right" : f.correct === false ? " wrong" : "");
  $("truth").textContent = f.truth_name === null ? DASH : f.truth_name;
  const list = $("top3");
  list.replaceChildren(...f.top3.map((t) => {
    const li = el("li");
    const bar = el("div", "bar");
    const fill = el("div", "fill");
    fill.style.width = `${Math.round(100 * t.p)}%`;
    bar.append(fill);
    li.append(el("span", "name", t.name), bar, el("span", "p", `${(100 * t.p).toFixed(1)}%`));
    return li;
  }));
  const lat = f.latency_ms === null ? "" : `${fmt(f.latency_ms, 1, " ms")} end to end`;
  const vec = f.partial ? ` \u00b7 partial: vectors from ${f.vectors.length ? f.vectors.join(", ") : "none"}` : "";
  $("frame-note").textContent = lat + vec;
}

// ---- key figures --------------------------------------------------------------------------
function renderKpis(s) {
  const p = s.progress;
  const acc = $("accuracy");
  acc.textContent = p.accuracy === null || p.accuracy === undefined ? DASH : `${(100 * p.accuracy).toFixed(1)}%`;
  acc.dataset.value = p.accuracy === null || p.accuracy === undefined ? "" : String(p.accuracy);
  const ref = s.reference_accuracy;
  acc.className = "huge " + (p.accuracy === null || p.accuracy === undefined || ref === null ||
    p.accuracy >= ref - 0.05 ? "good" : "warn");
  const detail = p.scored ? `${p.correct} of ${p.scored} correct` : "waiting for the source's score";
  $("accuracy-detail").textContent = detail + (ref === null ? "" : ` \u00b7 offline int8 ${(100 * ref).toFixed(1)}%`);
  const counter = $("frame-counter");
  counter.textContent = String(p.sent);
  counter.dataset.value = String(p.sent);
  $("frames-detail").textContent = (p.total ? `of ${p.total} \u00b7 ` : "") + `${p.predicted} predicted`;
  const partial = $("partial");
  partial.textContent = String(s.fusion.partial);
  partial.dataset.value = String(s.fusion.partial);
  $("partial-detail").textContent = `${s.fusion.complete} complete` +
    (s.fusion.deadline_ms ? ` \u00b7 deadline ${fmt(s.fusion.deadline_ms, 0, " ms")}` : "");
  $("p50").textContent = fmt(s.latency.p50, 1, " ms");
  $("p99").textContent = fmt(s.latency.p99, 1, " ms");
  drawCharts(s);
}

// One small line chart: the last 60 s, newest on the right; `lines` is [[key, colour], ...].
function drawChart(canvas, points, lines, top, label) {
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  canvas.width = Math.max(1, Math.round(w * ratio));
  canvas.height = Math.max(1, Math.round(h * ratio));
  const ctx = canvas.getContext("2d");
  ctx.scale(ratio, ratio);
  ctx.clearRect(0, 0, w, h);
  const x = (t) => 4 + (w - 8) * (1 + t / 60);
  const y = (v) => h - 14 - (h - 22) * (v / top);
  ctx.strokeStyle = "#25305a";
  ctx.fillStyle = "#8a96b8";
  ctx.font = "12px system-ui, sans-serif";
  ctx.lineWidth = 1;
  for (const frac of [0, 0.5, 1]) {
    ctx.beginPath();
    ctx.moveTo(0, y(top * frac));
    ctx.lineTo(w, y(top * frac));
    ctx.stroke();
    if (frac > 0) ctx.fillText(label(top * frac), 4, y(top * frac) + 13);
  }
  ctx.fillText("\u221260 s", 4, h - 2);
  ctx.fillText("now", w - 28, h - 2);
  for (const [key, colour] of lines) {
    ctx.strokeStyle = colour;
    ctx.lineWidth = 2.5;
    ctx.beginPath();
    points.forEach((p, i) => (i ? ctx.lineTo(x(p.t), y(p[key])) : ctx.moveTo(x(p.t), y(p[key]))));
    ctx.stroke();
  }
}

function drawCharts(s) {
  const lat = s.latency.chart;
  const top = Math.max(1, ...lat.map((p) => p.p99)) * 1.15;
  drawChart($("chart"), lat, [["p99", "#f59e0b"], ["p50", "#38bdf8"]], top,
            (v) => `${v.toFixed(v < 10 ? 1 : 0)} ms`);
  drawChart($("accuracy-chart"), s.progress.chart, [["accuracy", "#22c55e"]], 1,
            (v) => `${Math.round(100 * v)}%`);
}

// ---- devices and other nodes ----------------------------------------------------------------
function deviceTile(node) {
  const tile = el("div", "device-tile waiting");
  tile.dataset.node = node;
  const head = el("div", "tile-head");
  head.append(el("span", "name", node), el("span", "pill", "waiting"));
  const body = el("div", "body");
  const big = el("div", "tile-big");
  big.append(el("span", "v infer", DASH), el("span", "u", "ms / inference"));
  const grid = el("div", "tile-grid");
  for (const [key, cls] of [["bytes / frame", "bytes"], ["last seen", "seen"],
                            ["last frame", "seq"], ["sent after capture", "offset"]]) {
    const cell = el("div");
    cell.append(el("span", "k", key), el("span", `v ${cls}`, DASH));
    grid.append(cell);
  }
  body.append(big, grid, el("div", "vector"));
  tile.append(head, body);
  return tile;
}

function renderVector(box, values) {
  if (box.children.length !== values.length) {
    box.replaceChildren(...values.map(() => el("div")));
  }
  const top = Math.max(1e-9, ...values.map(Math.abs));
  values.forEach((v, i) => { box.children[i].style.height = `${Math.round(100 * Math.abs(v) / top)}%`; });
  box.title = `feature vector sent: ${values.length} values`;
}

function renderDevice(tile, d) {
  tile.className = `device-tile ${d.status}`;
  tile.dataset.status = d.status;
  tile.querySelector(".pill").textContent = d.status;
  const q = (cls) => tile.querySelector(`.${cls}`);
  q("infer").textContent = fmt(d.infer_ms_p50, 2);
  const bpf = d.bytes_per_frame ?? d.frame_bytes;
  q("bytes").textContent = bpf === null || bpf === undefined ? DASH : `${Math.round(bpf)} B`;
  q("seen").textContent = d.last_seen_s === null ? DASH : `${fmt(d.last_seen_s, 1)} s ago`;
  q("seq").textContent = d.last_seq === null ? DASH : `#${d.last_seq}`;
  q("offset").textContent = d.offset_ms === null ? DASH : `+${fmt(d.offset_ms, 1)} ms`;
  renderVector(q("vector"), d.vector || []);
}

function renderDevices(devices) {
  const box = $("devices");
  const tiles = new Map([...box.children].map((t) => [t.dataset.node, t]));
  for (const d of devices) {
    let tile = tiles.get(d.node);
    if (!tile) {
      tile = deviceTile(d.node);
      box.append(tile);
    }
    renderDevice(tile, d);
  }
}

function renderSide(s) {
  $("nodes").replaceChildren(...s.nodes.map((n) => {
    const chip = el("span", `node ${n.status}`, `${n.node} \u00b7 ${n.status}`);
    chip.dataset.node = n.node;
    return chip;
  }));
  $("events").replaceChildren(...s.events.slice().reverse().map((e) => {
    const status = e.split(" ").pop();
    return el("li", status, e);
  }));
}

function render(s) {
  renderHeader(s);
  renderFrame(s.frame);
  renderKpis(s);
  renderDevices(s.devices);
  renderSide(s);
  document.body.dataset.version = String(s.version);
}

// ---- the stream -----------------------------------------------------------------------------
function connect() {
  const source = new EventSource("/events");
  source.addEventListener("state", (e) => render(JSON.parse(e.data)));
  source.addEventListener("end", () => {
    ended = true;
    source.close();  // the run is over: keep the last figures on screen
    if (!$("badge").classList.contains("finished")) setBadge("ended", "finished");
  });
  source.onerror = () => { if (!ended) setBadge("reconnecting", "lost"); };
}

connect();
