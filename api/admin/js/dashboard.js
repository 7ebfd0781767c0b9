// The live dashboard: polls `GET /api/dashboard` every 2 s (Postgres's counters, so every
// replica's work counts) and charts throughput per stage (from the counters' differences),
// end-to-end latency percentiles and queue depths per stage with uPlot (vendored); outcomes
// per partner and circuit states as tables.

import { api, h, replace, table, num, badge, report } from "./ui.js";

const POLL_MS = 2000;
const KEEP = 150; // samples: 5 minutes
const STAGES = ["ingest", "identify", "router", "deliver"];
const COLOURS = ["#1f6feb", "#8250df", "#bf8700", "#1a7f37", "#cf222e", "#57606a"];

export function mount(root) {
  const summary = h("div", { class: "tiles", id: "dash-tiles" });
  const charts = h("div", { class: "charts" });
  const throughputBox = h("figure", { class: "chart", id: "chart-throughput" }, h("figcaption", {}, "Throughput per stage (leads/s)"));
  const latencyBox = h("figure", { class: "chart", id: "chart-latency" }, h("figcaption", {}, "End-to-end latency, post → partner answer (ms)"));
  const depthBox = h("figure", { class: "chart", id: "chart-depth" }, h("figcaption", {}, "Queue depth"));
  charts.append(throughputBox, latencyBox, depthBox);
  const circuits = h("div", { id: "dash-circuits" });
  const outcomes = h("div", { id: "dash-outcomes" });
  const queues = h("div", { id: "dash-queues" });
  root.append(summary, charts,
    h("div", { class: "grid2" },
      h("div", {}, h("h2", {}, "Circuits"), circuits),
      h("div", {}, h("h2", {}, "Outcomes per partner (last hour)"), outcomes)),
    h("h2", {}, "Queues"), queues);

  const times = [];
  const rates = STAGES.map(() => []);
  const latency = [[], [], []];
  const depth = [[], [], []];
  let previous = null;
  const width = () => Math.max(280, Math.min(charts.clientWidth || 600, 1200) / (window.innerWidth < 900 ? 1 : 3) - 24);
  const make = (box, labels) => {
    if (typeof uPlot === "undefined") return null;
    const opts = {
      width: width(), height: 180,
      series: [{}, ...labels.map((label, i) => ({ label, stroke: COLOURS[i], width: 2 }))],
      axes: [{}, { size: 56 }],
      // The last five minutes, also while there are few samples.
      scales: { x: { time: true, range: (u, min, max) => [Math.min(min, max - KEEP * POLL_MS / 1000), max] } },
      legend: { live: false },
    };
    // eslint-disable-next-line no-undef
    return new uPlot(opts, [[], ...labels.map(() => [])], box);
  };
  const throughput = make(throughputBox, STAGES);
  const latencyChart = make(latencyBox, ["p50", "p90", "p99"]);
  const depthChart = make(depthBox, ["intake", "routing", "delivery"]);

  function push(series, value) {
    series.push(value);
    if (series.length > KEEP) series.shift();
  }

  async function poll() {
    const snap = await api("GET", "/api/dashboard");
    const at = new Date(snap.at).getTime() / 1000;
    if (previous && at > previous.at) {
      const dt = at - previous.at;
      push(times, at);
      STAGES.forEach((stage, i) => push(rates[i], Math.max(0, ((snap.stages[stage] ?? 0) - (previous.stages[stage] ?? 0)) / dt)));
      const l = snap.latency_ms || {};
      push(latency[0], l.p50 ?? null); push(latency[1], l.p90 ?? null); push(latency[2], l.p99 ?? null);
      const qs = snap.queues || [];
      const sum = f => qs.filter(f).reduce((n, q) => n + (q.depth || 0), 0);
      push(depth[0], sum(q => q.stage === "intake"));
      push(depth[1], sum(q => q.stage === "routing"));
      push(depth[2], sum(q => q.stage === "delivery"));
      if (throughput) throughput.setData([times, ...rates]);
      if (latencyChart) latencyChart.setData([times, ...latency]);
      if (depthChart) depthChart.setData([times, ...depth]);
      const last = i => rates[i][rates[i].length - 1];
      replace(summary,
        tile("Ingest", `${num(Math.round(last(0)))}/s`, "tile-ingest"),
        tile("Delivered", `${num(Math.round(last(3)))}/s`, "tile-deliver"),
        tile("p99 latency", l.p99 === null || l.p99 === undefined ? "–" : `${num(Math.round(l.p99))} ms`, "tile-p99"),
        tile("Open circuits", String((snap.circuits || []).filter(c => c.state !== "closed").length), "tile-open"),
        tile("Dead letters", num(sum(q => q.stage === "dead_letters")), "tile-dlq"));
    } else if (!previous) {
      replace(summary, h("p", { class: "muted" }, "Collecting the first samples…"));
    }
    previous = { at, stages: snap.stages || {} };
    replace(circuits, table([
      { label: "Partner", cell: c => c.partner },
      { label: "Circuit", cell: c => badge(c.state), class: "circuit" },
    ], snap.circuits || [], { empty: "No partners.", rowAttrs: c => ({ "data-circuit": c.partner, "data-state": c.state }) }));
    replace(outcomes, table([
      { label: "Partner", cell: o => o.partner },
      ...["accepted", "rejected", "duplicate", "failed", "pending"].map(k => ({ label: k, cell: o => num(o[k] || 0), class: "num" })),
    ], snap.outcomes || [], { empty: "No deliveries in the last hour." }));
    replace(queues, table([
      { label: "Queue", cell: q => q.queue },
      { label: "Depth", cell: q => num(q.depth), class: "num" },
      { label: "Oldest", cell: q => q.oldest_age_secs === null || q.oldest_age_secs === undefined ? "–" : `${num(q.oldest_age_secs)} s`, class: "num" },
      { label: "Sent ever", cell: q => num(q.total_messages), class: "num" },
    ], (snap.queues || []).filter(q => q.depth > 0 || q.stage !== "delivery" && q.stage !== "dead_letters"), { empty: "No queues." }));
  }

  poll().catch(report);
  const timer = setInterval(() => poll().catch(() => {}), POLL_MS);
  const resize = () => { for (const c of [throughput, latencyChart, depthChart]) if (c) c.setSize({ width: width(), height: 180 }); };
  window.addEventListener("resize", resize);
  return () => {
    clearInterval(timer);
    window.removeEventListener("resize", resize);
    for (const c of [throughput, latencyChart, depthChart]) if (c) c.destroy();
  };
}

function tile(label, value, id) {
  return h("div", { class: "tile", id }, h("span", { class: "tile-label" }, label), h("span", { class: "tile-value" }, value));
}
