// The permabeta app: owners' devices and their updates, makers' releases and rollouts.
// Preact with htm (gateway/web/package.json), no build step: the modules are served as they are.
import { html, render, useState, useEffect, useCallback } from "./vendor/preact-htm.js";
import { TimeChart, BarChart, dateTime } from "./charts.js";
import { OfferPage, offerList, Rollback, rollBack } from "./offer.js";
import { Streams } from "./streams.js";
import { Footprint, Forgotten } from "./footprint.js";
import { Gains } from "./gains.js";
import { HomeAssistant } from "./homeassistant.js";
import { api, useEvents, useHash, useLoad, ErrorLine, Field, flatten, startEvents, stopEvents, setCsrf } from "./lib.js";

export function shown(v) {
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toFixed(1);
  if (typeof v === "boolean") return v ? "on" : "off";
  return String(v);
}

// what each model's page shows first, and charts
const LATEST = {
  thermostat: [["sensors.temperature", "room", "°C"], ["features.thermostat.setpoint", "setpoint", "°C"], ["actuators.relay", "heater", ""]],
  shirt: [["sensors.humidity", "skin humidity", "%RH"], ["actuators.vent", "vent", "%"], ["sensors.battery", "battery", "%"]],
};
const CHARTS = {
  thermostat: [
    { name: "temperature", title: "Room temperature and setpoint (°C)", series: [["sensors.temperature", "room"], ["features.thermostat.setpoint", "setpoint", true]] },
    { name: "heater", title: "Heater (on = 1)", series: [["actuators.relay", "heater", true]] },
  ],
  shirt: [
    { name: "humidity", title: "Skin humidity (%RH)", series: [["sensors.humidity", "skin humidity"]] },
    { name: "vent", title: "Vent opening (%)", series: [["actuators.vent", "vent", true]] },
  ],
};

function latestOf(model, values) {
  const keys = LATEST[model] || Object.keys(values).filter((k) => k.startsWith("sensors.")).map((k) => [k, k.slice(8), ""]);
  return keys.filter(([k]) => k in values).map(([k, label, unit]) => ({ key: k, label, text: shown(values[k]) + (unit ? " " + unit : "") }));
}

function Latest({ model, values }) {
  return html`<div class="values">${latestOf(model, values).map(
    (v) => html`<span data-value=${v.key}>${v.label} <b>${v.text}</b></span>`,
  )}</div>`;
}

// ---- log in ------------------------------------------------------------------------------------

function Login({ onIn }) {
  const [error, setError] = useState(null);
  const submit = async (ev) => {
    ev.preventDefault();
    const f = ev.target;
    try {
      const s = await api("POST", "/api/v1/session", { name: f.name.value, password: f.password.value });
      onIn(s);
    } catch (e) {
      setError(e);
    }
  };
  return html`<form class="login" onSubmit=${submit}>
    <h1>permabeta</h1>
    <label for="name">Account</label><input id="name" name="name" autocomplete="username" required />
    <label for="password">Password</label>
    <input id="password" name="password" type="password" autocomplete="current-password" required />
    <${ErrorLine} error=${error} />
    <button type="submit">Log in</button>
  </form>`;
}

const FEW = 50; // devices whose last values the list reads one by one

// ---- my devices --------------------------------------------------------------------------------

function Devices() {
  const [devices, error, reload] = useLoad(() => api("GET", "/api/v1/devices"), []);
  const [latest, setLatest] = useState({});
  useEffect(() => {
    // what each device last said, until its next telemetry comes (a few devices: an owner's)
    if (!devices || devices.length > FEW) return;
    for (const d of devices) {
      api("GET", "/api/v1/devices/" + encodeURIComponent(d.id)).then(
        (full) => full.last_telemetry && setLatest((l) => (d.id in l ? l : { ...l, [d.id]: flatten(full.last_telemetry) })),
        () => null,
      );
    }
  }, [devices]);
  const [online, setOnline] = useState({});
  useEvents((kind, ev) => {
    if (kind === "telemetry") setLatest((l) => ({ ...l, [ev.device]: flatten(ev.message) }));
    else if (kind === "online" || kind === "offline") setOnline((o) => ({ ...o, [ev.device]: kind === "online" }));
    else if (kind === "hello") reload();
  }, [reload]);
  const [claim, setClaim] = useState(null);
  const claimIt = async (ev) => {
    ev.preventDefault();
    try {
      const r = await api("POST", "/api/v1/claims", { code: ev.target.code.value });
      setClaim({ ok: `${r.device} is yours now` });
      ev.target.reset();
      reload();
    } catch (e) {
      setClaim({ error: e });
    }
  };
  return html`<h1>My devices</h1>
    <${ErrorLine} error=${error} />
    ${devices === undefined ? html`<p class="loading">Loading…</p>` : ""}
    ${devices && devices.length === 0 ? html`<p class="muted">No devices yet: claim one with the code on its box.</p>` : ""}
    <div class="cards">
      ${(devices || []).map((d) => {
        const on = d.id in online ? online[d.id] : d.online;
        return html`<div class="card" data-device=${d.id}>
          <a class="title" href=${"#/device/" + encodeURIComponent(d.id)}>${d.id}</a>
          <div class="muted"><span class=${"dot " + (on ? "on" : "off")}></span>${on ? "online" : "offline"} · ${d.model}</div>
          <div class="muted">${Object.entries(d.features || {}).map(([n, v]) => `${n} ${v || ""}`).join(", ")}</div>
          <${Latest} model=${d.model} values=${latest[d.id] || {}} />
        </div>`;
      })}
    </div>
    <h2>Claim a device</h2>
    <form class="inline" onSubmit=${claimIt}>
      <input name="code" placeholder="XXXX-XXXX-XXXX-XXXX" aria-label="claim code" required size="22" />
      <button type="submit">Claim</button>
    </form>
    ${claim && claim.ok ? html`<p class="ok">${claim.ok}</p>` : ""}
    <${ErrorLine} error=${claim && claim.error} />`;
}

// ---- one device --------------------------------------------------------------------------------

const KEEP_POINTS = 2000;

function seriesOf(model, rows) {
  return (CHARTS[model] || []).map((c) => ({
    ...c,
    data: c.series.map(([key, label, step]) => ({
      label,
      step,
      points: rows.filter((r) => key in r.values).map((r) => ({ x: r.t, y: Number(r.values[key]) })),
    })),
  }));
}

// fn, called a second after the first call since it last ran (the latest fn given): what
// an update's progress reloads is read once a second at most, not at every status
let later = null;
let laterFn = null;
function atMostEverySecond(fn) {
  laterFn = fn;
  if (later === null) {
    later = setTimeout(() => {
      later = null;
      laterFn();
    }, 1000);
  }
}

function Device({ id }) {
  const base = "/api/v1/devices/" + encodeURIComponent(id);
  const [device, error, reload] = useLoad(() => api("GET", base), [id]);
  const [rows, setRows] = useState(null);
  const [said, setSaid] = useState(null);
  const [updates, , reloadUpdates] = useLoad(() => api("GET", base + "/updates?limit=20"), [id]);
  const [offers, , reloadOffers] = useLoad(() => api("GET", base + "/offers").catch(() => null), [id]);
  const [forgotten, setForgotten] = useState(null);
  useEffect(() => {
    api("GET", base + "/telemetry?limit=" + KEEP_POINTS).then(
      (list) => setRows(list.map((m) => ({ t: m.ts || m.received, values: flatten(m) }))),
      () => setRows([]), // (the device's own answer says why, above)
    );
  }, [id]);
  useEvents((kind, ev) => {
    if (ev.device !== id) return;
    if (kind === "telemetry") {
      const t = ev.message.ts || ev.at;
      setRows((r) => [...(r || []), { t, values: flatten(ev.message) }].slice(-KEEP_POINTS));
    } else if (kind === "status") {
      // an update's progress: it comes often while the update downloads
      atMostEverySecond(() => {
        reloadUpdates();
        reloadOffers();
      });
    } else {
      // a hello (the set it now runs), online or offline
      reload();
      reloadUpdates();
      reloadOffers();
    }
  }, [id, reload, reloadUpdates, reloadOffers]);
  if (forgotten) return html`<${Forgotten} answer=${forgotten} />`;
  if (error && !device) return html`<${ErrorLine} error=${error} />`;
  if (!device) return html`<p class="loading">Loading…</p>`;
  const last = rows && rows.length ? rows[rows.length - 1].values : flatten(device.last_telemetry);
  const waiting = offerList(offers);
  return html`<h1 data-device=${id}>${id} <span class="muted">${device.model}</span></h1>
    <div class="muted"><span class=${"dot " + (device.online ? "on" : "off")}></span>
      ${device.online ? "online" : "offline"} since ${dateTime(device.state_changed)} · ${device.board} · runtime ${device.runtime}
      ${device.ota ? ` · feature set ${device.ota.counter} (${device.ota.state})` : ""}</div>
    <${Latest} model=${device.model} values=${last || {}} />
    ${waiting.map(
      (o) => html`<div class="banner" data-offer=${o.ref}>
        An update is waiting for you: <b>${o.ref}</b> ${o.version ? `(${o.version})` : ""} — ${o.stateText}.
        <a href=${"#/device/" + encodeURIComponent(id) + "/offer/" + encodeURIComponent(o.ref)}>Look at it</a>
      </div>`,
    )}
    <h2>Over time</h2>
    <div class="charts">
      ${rows === null ? html`<p class="loading">Loading…</p>` : seriesOf(device.model, rows).map((c) => html`<${TimeChart} name=${c.name} title=${c.title} series=${c.data} />`)}
    </div>
    <h2>Features</h2>
    <${Features} id=${id} device=${device} />
    <${Gains} id=${id} onAsked=${() => (reloadUpdates(), reloadOffers())} />
    <h2>Your data</h2>
    <${Streams} id=${id} online=${device.online} />
    <${Footprint} id=${id} onForgotten=${setForgotten} />
    <h2>Home Assistant</h2>
    <${HomeAssistant} id=${id} />
    <h2>Updates</h2>
    <${Policy} id=${id} />
    <${History} updates=${updates} />
    ${offers && offers.rollback
      ? html`<${Rollback} rollback=${offers.rollback} back=${() => rollBack(id, setSaid, () => (reloadUpdates(), reloadOffers()))} />`
      : ""}
    ${said && said.ok ? html`<p class="ok">${said.ok}</p>` : ""}
    <${ErrorLine} error=${said && said.error} />`;
}

function Features({ id, device }) {
  const [config, setConfig] = useState(null);
  const [error, setError] = useState(null);
  const [saved, setSaved] = useState(null);
  const load = useCallback(() => {
    if (!device.online) return;
    api("POST", "/api/v1/devices/" + encodeURIComponent(id) + "/commands", { op: "config.get", args: {} }).then(
      (r) => (r.reply && r.reply.ok ? setConfig(r.reply.result || r.reply) : setError(new Error((r.reply && r.reply.error) || "no answer"))),
      setError,
    );
  }, [id, device.online]);
  useEffect(load, [load]);
  const set = async (feature, key, value) => {
    setSaved(null);
    try {
      const num = Number(value);
      const v = value === "true" ? true : value === "false" ? false : value !== "" && !isNaN(num) ? num : value;
      const r = await api("POST", "/api/v1/devices/" + encodeURIComponent(id) + "/commands", {
        op: "config.set",
        args: { feature, values: { [key]: v } },
      });
      if (r.reply && r.reply.ok) {
        setSaved(`${feature}.${key} = ${shown(v)}`);
        load();
      } else setError(new Error(JSON.stringify((r.reply && r.reply.error) || r.reply)));
    } catch (e) {
      setError(e);
    }
  };
  const features = Object.entries(device.features || {});
  const values = (config && (config.config || config.features || config)) || {};
  return html`<table data-features>
      <tr><th>feature</th><th>version</th><th>settings</th></tr>
      ${features.map(
        ([name, f]) => html`<tr>
          <td>${name}</td><td>${(f && f.version) || ""}</td>
          <td>${Object.entries(values[name] || {}).map(
            ([k, v]) => html`<form class="inline" onSubmit=${(ev) => {
              ev.preventDefault();
              set(name, k, ev.target.v.value);
            }}>
              <label>${k}</label><${Field} name="v" value=${typeof v === "object" ? JSON.stringify(v) : String(v)} size="8" />
              <button class="plain" type="submit">Set</button></form>`,
          )}${device.online ? "" : html`<span class="muted">offline: settings shown when it is online</span>`}</td>
        </tr>`,
      )}
    </table>
    ${saved ? html`<p class="ok">saved: ${saved}</p>` : ""}
    <${ErrorLine} error=${error} />`;
}

function Policy({ id }) {
  const path = "/api/v1/devices/" + encodeURIComponent(id) + "/settings";
  const [settings, error, reload] = useLoad(() => api("GET", path), [id]);
  const [status, setStatus] = useState(null);
  const [policy, setPolicy] = useState(null);
  useEffect(() => settings && setPolicy(settings.policy), [settings]);
  const save = async (ev) => {
    ev.preventDefault();
    const body = { policy: ev.target.policy.value };
    if (body.policy === "window") body.window = ev.target.window.value;
    try {
      await api("PATCH", path, body);
      setStatus({ ok: "saved" });
      reload();
    } catch (e) {
      setStatus({ error: e });
    }
  };
  if (!settings) return html`<${ErrorLine} error=${error} />`;
  return html`<form class="inline" data-policy onSubmit=${save}>
      <label for="policy">Install updates</label>
      <select id="policy" name="policy" value=${policy || settings.policy} onChange=${(e) => setPolicy(e.target.value)}>
        <option value="auto">as soon as they come</option>
        <option value="ask">only when I say yes</option>
        <option value="window">only within hours I choose</option>
      </select>
      ${(policy || settings.policy) === "window"
        ? html`<${Field} name="window" placeholder="01:00-05:00" value=${settings.window || ""} size="12" aria-label="window" required />`
        : ""}
      <button type="submit">Save</button>
      ${status && status.ok ? html`<span class="ok">${status.ok}</span>` : ""}
    </form>
    <${ErrorLine} error=${status && status.error} />`;
}

function History({ updates }) {
  if (!updates) return null;
  if (!updates.length) return html`<p class="muted">No updates yet.</p>`;
  return html`<table data-history>
    <tr><th>started</th><th>release</th><th>state</th><th>ended</th></tr>
    ${updates.map(
      (u) => html`<tr data-update=${u.id} data-state=${u.state}><td>${dateTime(u.started)}</td>
        <td>${u.model}@${u.counter} <span class="muted">${u.version}</span></td>
        <td>${u.state}${u.reason ? html` <span class="muted">${u.reason}</span>` : ""}</td><td>${dateTime(u.finished)}</td></tr>`,
    )}
  </table>`;
}

// ---- makers: releases and rollouts -------------------------------------------------------------

function Releases() {
  const [releases, error] = useLoad(() => api("GET", "/api/v1/releases"), []);
  return html`<h1>Releases</h1><${ErrorLine} error=${error} />
    <table data-releases>
      <tr><th>release</th><th>version</th><th>features</th><th>stored</th></tr>
      ${(releases || []).map(
        (r) => html`<tr><td>${r.ref}</td><td>${r.version}</td>
          <td>${Object.entries(r.features || {}).map(([n, v]) => `${n} ${v}`).join(", ")}</td><td>${dateTime(r.added)}</td></tr>`,
      )}
    </table>`;
}

function Rollouts() {
  const [rollouts, error] = useLoad(() => api("GET", "/api/v1/rollouts"), []);
  return html`<h1>Rollouts</h1><${ErrorLine} error=${error} />
    ${rollouts && !rollouts.length ? html`<p class="muted">No rollouts yet.</p>` : ""}
    <table data-rollouts>
      <tr><th>rollout</th><th>release</th><th>cohort</th><th>state</th><th>stage</th><th>created</th></tr>
      ${(rollouts || []).map((s) => {
        const r = s.rollout || s;
        return html`<tr><td><a href=${"#/rollout/" + r.id}>${r.id}</a></td><td>${r.ref}</td><td>${r.cohort}</td>
          <td>${r.state}</td><td>${r.stage + 1} of ${r.stages.length}</td><td>${dateTime(r.created)}</td></tr>`;
      })}
    </table>`;
}

const FUNNEL = ["pending", "ready", "awaiting_owner", "waiting_window", "offline", "offered", "installing", "committed", "failed", "cancelled", "reverted", "left"];
// (a state's own colour: a failure is never drawn in a success's green)
const FUNNEL_COLORS = { committed: "#1f8a4c", reverted: "#16a085", failed: "#c0392b", rolled_back: "#8e44ad", cancelled: "#7f8c8d" };

function Rollout({ id }) {
  const [status, error, reload] = useLoad(() => api("GET", "/api/v1/rollouts/" + encodeURIComponent(id)), [id]);
  useEffect(() => {
    const t = setInterval(reload, 3000);
    return () => clearInterval(t);
  }, [reload]);
  if (!status) return html`<${ErrorLine} error=${error} />`;
  const r = status.rollout;
  const labels = status.stages.map((s) => `stage ${s.stage} (${Math.round(s.fraction * 100)}%)`);
  const states = [...new Set([...FUNNEL, ...status.stages.flatMap((s) => Object.keys(s.counts))])].filter((k) =>
    status.stages.some((s) => s.counts[k]),
  );
  const funnel = states.map((k) => ({ label: k.replace(/_/g, " "), color: FUNNEL_COLORS[k], values: status.stages.map((s) => s.counts[k] || 0) }));
  const looks = status.looks || [];
  const names = [...new Set(looks.flatMap((l) => l.metrics.map((m) => m.name)))];
  const effects = names.map((n) => ({
    label: n + " (effect)",
    points: looks.flatMap((l) => l.metrics.filter((m) => m.name === n && m.effect !== null).map((m) => ({ x: l.at, y: m.effect * 100 }))),
  }));
  const thresholds = names.map((n) => ({
    label: n + " (limit)",
    dash: [4, 4],
    step: true,
    points: looks.flatMap((l) => l.metrics.filter((m) => m.name === n).map((m) => ({ x: l.at, y: m.min_effect * 100 }))),
  }));
  const j = status.judgement;
  return html`<h1>Rollout ${r.id} <span class="muted">${r.ref}</span></h1>
    <p>${r.state}, stage ${r.stage + 1} of ${r.stages.length} · cohort <code>${r.cohort}</code>${r.reason ? html` · <b>${r.reason}</b>` : ""}</p>
    <div class="charts">
      <${BarChart} name="funnel" title="Members per stage and state" labels=${labels} series=${funnel} stacked=${true} yTitle="devices" />
      ${names.length
        ? html`<${TimeChart} name="judge" title="Judge: each metric's shift from the control (% worse) and its limit" series=${[...effects, ...thresholds]} yTitle="% worse than control" />`
        : html`<div class="chart" data-chart="judge"><h3>Judge</h3><p class="muted">${looks.length
            ? "Judged by failures only so far: a stage and its control group need 20 devices each to be compared metric by metric."
            : "The judge has not looked yet."}</p></div>`}
    </div>
    ${j
      ? html`<h2>Last look: ${j.result}</h2>
        <table data-judgement>
          <tr><th>metric</th><th>result</th><th>effect</th><th>p</th><th>treated</th><th>control</th></tr>
          ${(j.numbers.metrics || []).map(
            (m) => html`<tr><td>${m.name}</td><td>${m.result}</td>
              <td class="num">${m.effect === null ? "–" : (m.effect * 100).toFixed(1) + " %"}</td>
              <td class="num">${m.p_value === null ? "–" : m.p_value.toPrecision(2)}</td>
              <td class="num">${m.n_treatment}</td><td class="num">${m.n_control}</td></tr>`,
          )}
        </table>`
      : html`<p class="muted">The judge has not looked yet.</p>`}
    <h2>Decisions</h2>
    <table>${status.decisions.map(
      (d) => html`<tr><td>${dateTime(d.at)}</td><td>${d.kind}</td><td>${d.result || ""}</td><td>${d.reason || ""}</td></tr>`,
    )}</table>`;
}

// ---- the frame ---------------------------------------------------------------------------------

function App() {
  const [session, setSession] = useState(undefined);
  const hash = useHash();
  useEffect(() => {
    api("GET", "/api/v1/session").then(
      (s) => setSession(s),
      () => setSession(null),
    );
  }, []);
  useEffect(() => {
    setCsrf(session ? session.csrf : null);
    if (session) startEvents();
    else stopEvents();
  }, [session]);
  if (session === undefined) return html`<p class="loading">Loading…</p>`;
  if (session === null) return html`<${Login} onIn=${setSession} />`;
  const maker = session.role === "maker" || session.role === "admin";
  const logout = async () => {
    await api("DELETE", "/api/v1/session").catch(() => null);
    setSession(null);
    location.hash = "#/";
  };
  const parts = hash.slice(2).split("/").map(decodeURIComponent);
  let page;
  if (parts[0] === "device" && parts[2] === "offer") page = html`<${OfferPage} id=${parts[1]} release=${parts[3]} />`;
  else if (parts[0] === "device") page = html`<${Device} id=${parts[1]} />`;
  else if (parts[0] === "releases" && maker) page = html`<${Releases} />`;
  else if (parts[0] === "rollouts" && maker) page = html`<${Rollouts} />`;
  else if (parts[0] === "rollout" && maker) page = html`<${Rollout} id=${parts[1]} />`;
  else page = html`<${Devices} />`;
  const here = (p) => (parts[0] === p || (p === "" && !["releases", "rollouts", "rollout"].includes(parts[0])) ? "here" : "");
  return html`<header>
      <span class="brand">permabeta</span>
      <nav>
        <a class=${here("")} href="#/">My devices</a>
        ${maker ? html`<a class=${here("releases")} href="#/releases">Releases</a><a class=${here("rollouts")} href="#/rollouts">Rollouts</a>` : ""}
      </nav>
      <span class="who" data-account=${session.account}>${session.account} (${session.role})</span>
      <button class="plain" onClick=${logout}>Log out</button>
    </header>
    <main key=${hash}>${page}</main>`;
}

render(html`<${App} />`, document.getElementById("app"));
