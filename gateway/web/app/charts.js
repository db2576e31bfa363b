// Charts of the app: Chart.js (gateway/web/package.json), loaded by index.html as the global Chart.
import { html, useEffect, useRef } from "./vendor/preact-htm.js";

export const COLORS = ["#2f6fdb", "#e07b39", "#1f8a4c", "#8e44ad", "#c0392b", "#16a085", "#7f8c8d"];

export function clock(t, seconds) {
  const d = new Date(t * 1000);
  return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", ...(seconds ? { second: "2-digit" } : {}) });
}

// a time axis's label: with seconds when the chart spans less than an hour, the day when more than one
function tick(v) {
  const span = this.max - this.min;
  if (span > 86400) return new Date(v * 1000).toLocaleString([], { weekday: "short", hour: "2-digit", minute: "2-digit" });
  return clock(v, span < 3600);
}

export function dateTime(t) {
  if (t === null || t === undefined) return "–";
  return new Date(t * 1000).toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
}

// A chart of Chart.js, created once and given new data as props change.
// series: [{label, points: [{x, y}], step?, dash?, axis?}]
function useChart(config, update, deps) {
  const canvas = useRef(null);
  const chart = useRef(null);
  useEffect(() => {
    chart.current = new window.Chart(canvas.current, config());
    return () => chart.current.destroy();
  }, []);
  useEffect(() => {
    update(chart.current);
    chart.current.update("none");
  }, deps);
  return canvas;
}

export function TimeChart({ title, series, yTitle, y2Title, name }) {
  const canvas = useChart(
    () => ({
      type: "line",
      data: { datasets: [] },
      options: {
        animation: false,
        parsing: false,
        normalized: true,
        responsive: true,
        maintainAspectRatio: false,
        interaction: { mode: "nearest", axis: "x", intersect: false },
        elements: { point: { radius: 0 } },
        scales: {
          x: { type: "linear", ticks: { callback: tick, maxTicksLimit: 8 } },
          y: { title: { display: !!yTitle, text: yTitle } },
          ...(y2Title ? { y2: { position: "right", title: { display: true, text: y2Title }, grid: { drawOnChartArea: false } } } : {}),
        },
        plugins: {
          legend: { position: "bottom", labels: { filter: (item) => !!item.text } },
          decimation: { enabled: true, algorithm: "lttb" },
        },
      },
    }),
    (c) => {
      c.data.datasets = series.map((s, i) => ({
        label: s.label,
        data: s.points,
        borderColor: s.color || COLORS[i % COLORS.length],
        backgroundColor: s.color || COLORS[i % COLORS.length],
        borderWidth: 1.6,
        stepped: !!s.step,
        pointRadius: s.points.length <= 50 && !s.dash ? 2.5 : 0,
        borderDash: s.dash || [],
        yAxisID: s.axis || "y",
      }));
    },
    [series],
  );
  const n = series.reduce((a, s) => a + s.points.length, 0);
  const last = Math.max(0, ...series.map((s) => (s.points.length ? s.points[s.points.length - 1].x : 0)));
  return html`<div class="chart" data-chart=${name || title} data-points=${n} data-last=${last}>
    <h3>${title}</h3><canvas ref=${canvas}></canvas></div>`;
}

// Bars: labels along x, one stacked dataset per series ({label, values}).
export function BarChart({ title, labels, series, stacked, name, yTitle }) {
  const canvas = useChart(
    () => ({
      type: "bar",
      data: { labels: [], datasets: [] },
      options: {
        animation: false,
        responsive: true,
        maintainAspectRatio: false,
        scales: { x: { stacked: !!stacked }, y: { stacked: !!stacked, beginAtZero: true, title: { display: !!yTitle, text: yTitle } } },
        plugins: { legend: { position: "bottom" } },
      },
    }),
    (c) => {
      c.data.labels = labels;
      c.data.datasets = series.map((s, i) => ({
        label: s.label,
        data: s.values,
        backgroundColor: s.color || COLORS[i % COLORS.length],
      }));
    },
    [labels, series],
  );
  return html`<div class="chart" data-chart=${name || title}><h3>${title}</h3><canvas ref=${canvas}></canvas></div>`;
}
