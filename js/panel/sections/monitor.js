// Monitor: recent generations as a chart, p50/p95 and mean wall time, cache hit rate, the slowest
// node types and the bottleneck hints of the server's report (GET /podkit/metrics/report).

import { generationChart } from "../charts.js";
import { formatBytes, formatRate, formatSeconds } from "../format.js";
import { recentSummary } from "../state.js";
import { busy, h } from "../dom.js";
import { errorText, sectionFrame, statList, statusLine } from "./common.js";

const BOTTLENECKS = {
  vram: "GPU memory",
  ram: "system memory",
  compute: "GPU compute",
  cpu: "CPU",
  io: "disk / network I/O",
  cache: "model cache misses",
  queue: "queue wait",
};

function lastLine(r) {
  if (!r) return "No generation recorded yet.";
  const bits = [`Last: ${formatSeconds(r.wall_s)}`];
  if (r.family) bits.push(r.family);
  if (r.width) bits.push(`${r.width}×${r.height}`);
  if (r.steps) bits.push(`${r.steps} steps`);
  if (r.sampler) bits.push(r.sampler);
  const vram = r.vram_peak ?? r.vram_peak_bytes;
  if (Number.isFinite(vram) && vram > 0) bits.push(`VRAM peak ${formatBytes(vram)}`);
  if (Number.isFinite(r.predicted_s)) bits.push(`predicted ${formatSeconds(r.predicted_s)}`);
  return bits.join(" · ");
}

function hintList(report) {
  const found = (report && report.bottlenecks) || [];
  const advice = (report && report.recommendations) || [];
  const out = [];
  if (found.length) {
    out.push(h("h4", {}, "Bottlenecks"));
    out.push(
      h(
        "ul",
        { class: "podkit-hints" },
        found.map((b) =>
          h("li", {}, h("strong", {}, BOTTLENECKS[b.kind] || String(b.kind)), b.detail ? `: ${b.detail}` : ""),
        ),
      ),
    );
  }
  if (advice.length) {
    out.push(h("h4", {}, "Recommendations"));
    out.push(
      h(
        "ul",
        { class: "podkit-hints" },
        advice.map((t) => h("li", {}, String(t))),
      ),
    );
  }
  return out;
}

function slowTable(report) {
  const slow = (report && report.slowest_nodes) || [];
  if (!slow.length) return [];
  return [
    h("h4", {}, "Slowest nodes"),
    h(
      "table",
      { class: "podkit-table" },
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          h("th", { scope: "col" }, "Node"),
          h("th", { scope: "col" }, "Runs"),
          h("th", { scope: "col" }, "Mean"),
        ),
      ),
      h(
        "tbody",
        {},
        slow
          .slice(0, 8)
          .map((n) =>
            h(
              "tr",
              {},
              h("td", {}, String(n.class_type)),
              h("td", {}, String(n.count ?? "")),
              h("td", {}, formatSeconds(n.mean_s)),
            ),
          ),
      ),
    ),
  ];
}

export function monitorSection(controller) {
  const frame = sectionFrame("monitor", "Monitor");
  const loadError = statusLine();
  const summary = h("div", { class: "podkit-monitor-summary" });
  const chart = h("div", { class: "podkit-chart-wrap" });
  const last = h("p", { class: "podkit-row-meta" });
  const nodes = h("div", { class: "podkit-monitor-nodes" });
  const hints = h("div", { class: "podkit-monitor-hints" });
  const refresh = h("button", { type: "button", class: "podkit-small" }, "Refresh report");
  refresh.addEventListener("click", () =>
    busy(
      refresh,
      () => controller.load("monitor"),
      (e) => loadError.fail(errorText(e)),
    ),
  );
  frame.body.append(loadError.el, summary, chart, last, hints, nodes, h("div", { class: "podkit-actions" }, refresh));
  let shownReport;
  let shownRecent;

  return {
    el: frame.el,
    update(state) {
      const { report, recent, error } = state.monitor;
      if (!frame.setAvailable(error)) return;
      if (error) loadError.fail(`Metrics: ${error}`);
      else loadError.clear();
      if (report === shownReport && recent === shownRecent) return;
      shownReport = report;
      shownRecent = recent;
      const local = recentSummary(recent);
      // the server's window is authoritative; events newer than the report add to the local view
      const s = report && report.count >= local.count ? report : local;
      summary.replaceChildren(
        statList([
          ["Generations", `${s.count ?? 0}${report ? ` in ${report.hours ?? 24} h` : ""}`],
          ["p50 / p95", `${formatSeconds(s.p50_s)} / ${formatSeconds(s.p95_s)}`],
          ["Mean", formatSeconds(s.mean_s)],
          ["Cache hit rate", formatRate(report ? report.cache_hit_rate : null)],
        ]),
      );
      chart.replaceChildren(generationChart(document, recent, { p50: s.p50_s, p95: s.p95_s }));
      last.textContent = lastLine(recent[0]);
      hints.replaceChildren(...hintList(report));
      nodes.replaceChildren(...slowTable(report));
      frame.setBadge(Number.isFinite(s.p50_s) ? `p50 ${formatSeconds(s.p50_s)}` : "");
    },
  };
}
