// An update waiting for the owner: what it changes, what it may do, its preview on the
// device's own twin, and the owner's answer (install now, later, never; or roll back).
import { html, useState, useEffect } from "./vendor/preact-htm.js";
import { api, useLoad, ErrorLine, Field } from "./lib.js";
import { TimeChart, dateTime } from "./charts.js";

// the offers answer, whatever its wrapping: a list of {release: {ref, version}, state, ...}
export function offerList(offers) {
  if (!offers) return [];
  const list = Array.isArray(offers) ? offers : offers.offers || [];
  return list.map((o) => {
    const r = o.release || {};
    const ref = r.ref || o.ref || r.id;
    const state = o.state || "offered";
    const stateText = {
      awaiting_owner: "it waits for your yes",
      waiting_window: "it installs in your window",
      postponed: "postponed" + (o.decision && o.decision.until ? " until " + dateTime(o.decision.until) : ""),
      declined: "you said never",
    }[state] || state.replace(/_/g, " ");
    return { ...o, ref, version: r.version || o.version, state, stateText };
  });
}

const KINDS = [
  ["reads", "reads"],
  ["drives", "drives"],
  ["publishes", "publishes"],
];

function Changes({ changes, descriptions }) {
  const f = (changes && changes.features) || {};
  const rows = [
    ...(f.added || []).map((x) => ({ name: x.name, kind: "added", cls: "new", text: x.version })),
    ...(f.changed || []).map((x) => ({ name: x.name, kind: "changed", cls: "changed", text: `${x.from} → ${x.to}` })),
    ...(f.removed || []).map((x) => ({ name: x.name, kind: "removed", cls: "gone", text: x.version })),
    ...(f.unchanged || []).map((x) => ({ name: x.name, kind: "unchanged", cls: "", text: x.version })),
  ];
  if (!rows.length) return html`<p class="muted">The features stay as they are.</p>`;
  return html`<table data-changes>
    <tr><th>feature</th><th>change</th><th>version</th><th>what it does</th></tr>
    ${rows.map(
      (r) => html`<tr data-feature=${r.name}><td>${r.name}</td><td><span class=${"pill " + r.cls}>${r.kind}</span></td>
        <td>${r.text}</td><td class="muted">${(descriptions || {})[r.name] || ""}</td></tr>`,
    )}
  </table>
  ${changes.lacks && changes.lacks.length
    ? html`<p class="error">This device lacks what the update needs: ${changes.lacks.join(", ")}</p>`
    : ""}`;
}

// "new: reads humidity; publishes comfort" and "no longer: drives relay"
export function permissionLines(perm) {
  const lines = [];
  for (const [side, word, cls] of [["new", "new", "new"], ["no_longer", "no longer", "gone"]]) {
    const parts = [];
    for (const [kind, verb] of KINDS) {
      const names = ((perm || {})[kind] || {})[side] || [];
      if (names.length) parts.push(`${verb} ${names.join(", ")}`);
    }
    if (parts.length) lines.push({ word, text: parts.join("; "), cls });
  }
  return lines;
}

function Permissions({ changes }) {
  const lines = permissionLines(changes && changes.permissions);
  const unknown = (changes && changes.unknown) || [];
  return html`<div data-permissions>
    ${lines.length
      ? html`<ul>${lines.map((l) => html`<li><span class=${"pill " + l.cls}>${l.word}</span> ${l.text}</li>`)}</ul>`
      : html`<p class="muted">It may read, drive and publish what it does today.</p>`}
    ${unknown.length ? html`<p class="muted">Not known of what runs today: ${unknown.join(", ")}.</p>` : ""}
  </div>`;
}

// how each metric of a preview is named for its owner (docs/twin.md)
const LABELS = {
  minutes_outside_band: "minutes outside the comfort band",
  heater_energy_kwh: "heater energy",
  heater_cost: "its cost at your hourly prices",
  heater_hours: "hours the heater runs",
  minutes_above_threshold: "minutes above the humidity threshold",
  vent_actuations: "vent actuations",
  vent_open_hours: "hours the vent stands open",
};

function fmt(v) {
  if (typeof v !== "number") return "–";
  return Math.abs(v) >= 100 ? v.toFixed(0) : v.toFixed(2);
}

function Preview({ id, release }) {
  const path = "/api/v1/devices/" + encodeURIComponent(id) + "/preview";
  const [p, setP] = useState(null);
  const [error, setError] = useState(null);
  const [asked, setAsked] = useState(0); // a new preview asked for: poll again
  const ask = async (ev) => {
    ev.preventDefault();
    setError(null);
    try {
      setP(await api("POST", path, { release, heater_w: Number(ev.target.watts.value), refresh: true }));
      setAsked((n) => n + 1);
    } catch (e) {
      setError(e);
    }
  };
  useEffect(() => {
    let stop = false;
    let timer = null;
    // asked for (the gateway answers the cached preview while it holds), then read until computed
    const poll = async (first) => {
      try {
        const got = first
          ? await api("POST", path, { release })
          : await api("GET", path + "/" + encodeURIComponent(release));
        if (stop) return;
        setP(got);
        if (got.state === "computing") timer = setTimeout(() => poll(false), 1000);
      } catch (e) {
        if (!stop) setError(e);
      }
    };
    poll(asked === 0);
    return () => {
      stop = true;
      clearTimeout(timer);
    };
  }, [id, release, asked]);
  if (error) return html`<${ErrorLine} error=${error} />`;
  if (!p || p.state === "computing") return html`<p class="loading" data-preview="computing">Computing the preview on your device's twin…</p>`;
  if (p.state !== "ready") {
    const reasons = p.reasons || (p.reason ? [p.reason] : [p.state]);
    return html`<div class="banner" data-preview=${p.state}>
      <b>${p.state !== "insufficient"
        ? "The preview failed:"
        : p.withheld && p.withheld.length
          ? "No preview while its twin lacks what you keep back:"
          : "Not enough of a record for a preview:"}</b>
      <ul>${reasons.map((r) => html`<li>${r}</li>`)}</ul>
      ${p.withheld && p.withheld.length
        ? html`<p data-withheld>Share ${p.withheld.map((w) => w.stream).join(" and ")} again under <a
            href=${"#/device/" + encodeURIComponent(id)}>Your data</a> for a preview.</p>`
        : ""}</div>`;
  }
  const metrics = Object.entries(p.metrics || {});
  const q = (p.fit && p.fit.quality) || {};
  return html`<div data-preview="ready">
    <table data-preview-metrics>
      <tr><th>predicted over the same ${p.record && p.record.hours ? Math.round(p.record.hours) + " hours" : "conditions"}</th>
        <th>today (${p.current ? p.current.ref : "now"})</th><th>with ${p.candidate ? p.candidate.ref : "the update"}</th><th>change</th></tr>
      ${metrics.map(([k, m]) => {
        const d = m.change;
        const good = d === null || d === 0 ? "" : (d < 0) === (m.better === "lower") ? "better" : "worse";
        return html`<tr data-metric=${k}><td>${LABELS[k] || k.replace(/_/g, " ")} <span class="muted">${m.unit || ""}</span></td>
          <td class="num">${fmt(m.current)}</td><td class="num">${fmt(m.candidate)}</td>
          <td class=${"num " + good}>${m.relative === null || m.relative === undefined ? fmt(d) : (m.relative > 0 ? "+" : "") + (m.relative * 100).toFixed(1) + " %"}</td></tr>`;
      })}
    </table>
    <p class="muted" data-fit>A twin of this device, fitted to its own record${p.record ? ` (${Math.round(p.record.hours)} h, ${p.record.rows} readings)` : ""}:
      ${typeof q.rmse_c === "number" ? ` it redoes the held-out part within ${q.rmse_c.toFixed(2)} °C (RMS)` : ""}${typeof q.r2 === "number" ? `, R² ${q.r2.toFixed(2)}` : ""}.
      ${(p.warnings || []).length ? ` ${p.warnings.length} warnings.` : ""}</p>
    ${previewCharts(p)}
    ${p.model === "thermostat"
      ? html`<form class="inline" data-heater onSubmit=${ask}>
          <label for="watts">${p.heater_w ? "Your heater's rated power (W)" : "Energy and cost need your heater's rated power (W), from its label"}</label>
          <${Field} id="watts" name="watts" type="number" min="1" max="100000" step="1" value=${p.heater_w || ""} required size="8" />
          <button class="plain" type="submit">Preview again</button>
        </form>`
      : ""}
  </div>`;
}

const SERIES_TITLES = {
  temperature: "Room temperature, predicted (°C)",
  heater_duty: "Heater duty, predicted (share of each hour)",
  humidity: "Skin humidity, predicted (%RH)",
  vent_opening: "Vent opening, predicted (%)",
  vent_actuations: "Vent actuations, predicted",
};

function previewCharts(p) {
  const series = p.series || {};
  const t = series.t || [];
  const charts = [];
  for (const key of Object.keys(series.current || {})) {
    const line = (ys) => (ys || []).map((y, i) => ({ x: t[i], y })).filter((pt) => pt.y !== null);
    const lines = [
      { label: "today", points: line(series.current[key]) },
      { label: "with the update", points: line((series.candidate || {})[key]) },
    ];
    if (key === "humidity" && series.threshold !== undefined) {
      const th = Array.isArray(series.threshold) ? series.threshold : t.map(() => series.threshold);
      lines.push({ label: "threshold", points: line(th), dash: [4, 4], color: "#9aa5b1" });
    }
    if (key === "temperature" && series.band) {
      lines.push({ label: "comfort band", points: line(series.band.low), dash: [4, 4], step: true, color: "#9aa5b1" });
      lines.push({ label: "", points: line(series.band.high), dash: [4, 4], step: true, color: "#9aa5b1" });
    }
    charts.push(html`<${TimeChart} name=${"preview-" + key} title=${SERIES_TITLES[key] || key.replace(/_/g, " ")} series=${lines} />`);
  }
  return charts.length ? html`<div class="charts">${charts}</div>` : "";
}

// the owner's roll back: an update to the revert release the maker signed
export async function rollBack(id, setSaid, reload) {
  setSaid(null);
  try {
    const u = await api("POST", "/api/v1/devices/" + encodeURIComponent(id) + "/rollback", {});
    setSaid({ ok: `Rolling back to ${u.ref}.` });
    reload();
  } catch (e) {
    setSaid({ error: e });
  }
}

export function OfferPage({ id, release }) {
  const base = "/api/v1/devices/" + encodeURIComponent(id);
  const [offers, error, reload] = useLoad(() => api("GET", base + "/offers"), [id]);
  const [said, setSaid] = useState(null);
  const [later, setLater] = useState("");
  if (error && !offers) return html`<${ErrorLine} error=${error} />`;
  if (!offers) return html`<p class="loading">Loading…</p>`;
  const o = offerList(offers).find((x) => x.ref === release || (x.release && x.release.id === release));
  const rollback = !Array.isArray(offers) ? offers.rollback : null;
  const decide = async (decision, until) => {
    setSaid(null);
    try {
      const body = { release: o.ref, decision };
      if (until) body.until = until;
      await api("POST", base + "/decision", body);
      setSaid({ ok: { now: "It installs now.", later: "It waits until then.", never: "It will not be installed." }[decision] });
      reload();
    } catch (e) {
      setSaid({ error: e });
    }
  };
  const back = () => rollBack(id, setSaid, reload);
  const devLink = html`<a href=${"#/device/" + encodeURIComponent(id)}>${id}</a>`;
  if (!o) {
    return html`<h1>${devLink}: ${release}</h1><p class="muted">No such update is waiting for this device.</p>
      ${rollback ? html`<${Rollback} rollback=${rollback} back=${back} />` : ""}
      ${said && said.ok ? html`<p class="ok">${said.ok}</p>` : ""}<${ErrorLine} error=${said && said.error} />`;
  }
  const r = o.release || {};
  return html`<h1>${devLink}: update to ${o.ref} ${o.version ? html`<span class="muted">${o.version}</span>` : ""}</h1>
    <p data-offer-state=${o.state}>${o.stateText}${o.decision ? ` · your answer: ${o.decision.decision}${o.decision.until ? " until " + dateTime(o.decision.until) : ""}` : ""}</p>
    <h2>What changes</h2>
    <${Changes} changes=${o.changes} descriptions=${o.descriptions} />
    ${o.notes ? html`<h2>Release notes</h2><div class="notes" data-notes>${o.notes}</div>` : ""}
    <h2>What it may do</h2>
    <${Permissions} changes=${o.changes} />
    <h2>Preview on your device's twin</h2>
    <${Preview} id=${id} release=${o.ref} />
    <div class="actions">
      <button data-action="now" onClick=${() => decide("now")}>Install now</button>
      <input type="datetime-local" aria-label="later" value=${later} onInput=${(e) => setLater(e.target.value)} />
      <button class="plain" data-action="later" disabled=${!later} onClick=${() => decide("later", new Date(later).toISOString())}>Later</button>
      <button class="plain danger" data-action="never" onClick=${() => decide("never")}>Never for this release</button>
    </div>
    ${said && said.ok ? html`<p class="ok">${said.ok}</p>` : ""}
    <${ErrorLine} error=${said && said.error} />
    ${rollback ? html`<${Rollback} rollback=${rollback} back=${back} />` : ""}`;
}

export function Rollback({ rollback, back }) {
  const r = rollback.release || {};
  return html`<h2>Roll back</h2>
    <p>The maker signed ${r.ref || "a release"} to take this device back to the features it had before.</p>
    <${Changes} changes=${rollback.changes} descriptions=${rollback.descriptions} />
    <button class="plain" data-action="rollback" onClick=${back}>Roll back</button>`;
}
