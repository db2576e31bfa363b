// What every page of the app shares: the API, the live events, loading, errors.
import { html, useState, useEffect, useCallback } from "./vendor/preact-htm.js";

// ---- the API ---------------------------------------------------------------------------------

let csrf = null; // the session's CSRF token, sent with every request that changes something

export function setCsrf(token) {
  csrf = token;
}

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export async function api(method, path, body) {
  const opts = { method, headers: {}, credentials: "same-origin" };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  if (method !== "GET" && csrf) opts.headers["X-CSRF-Token"] = csrf;
  const r = await fetch(path, opts);
  const text = await r.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch (e) {
    data = null;
  }
  if (!r.ok) {
    const err = (data && data.error) || {};
    throw new ApiError(r.status, err.code || "http_" + r.status, err.message || r.statusText);
  }
  return data;
}

// ---- live events: one stream for the page, handed to whoever listens ----------------------------

const listeners = new Set();
let stream = null;

export function startEvents() {
  if (stream) return;
  stream = new EventSource("/api/v1/events");
  for (const kind of ["telemetry", "hello", "status", "online", "offline"]) {
    stream.addEventListener(kind, (ev) => {
      const data = JSON.parse(ev.data);
      for (const l of listeners) l(kind, data);
    });
  }
  // the session that opened it ended (logged out elsewhere, expired): ask again
  stream.addEventListener("ended", () => location.reload());
  stream.onopen = () => document.body.setAttribute("data-live", "yes");
  stream.onerror = () => document.body.setAttribute("data-live", "no");
}

export function stopEvents() {
  if (stream) stream.close();
  stream = null;
}

export function useEvents(fn, deps) {
  useEffect(() => {
    listeners.add(fn);
    return () => listeners.delete(fn);
  }, deps);
}

// ---- small things ------------------------------------------------------------------------------

export function useHash() {
  const [hash, setHash] = useState(location.hash || "#/");
  useEffect(() => {
    const on = () => setHash(location.hash || "#/");
    window.addEventListener("hashchange", on);
    return () => window.removeEventListener("hashchange", on);
  }, []);
  return hash;
}

// load(): a promise; gives [value, error, reload]
export function useLoad(load, deps) {
  const [state, setState] = useState({ value: undefined, error: null });
  const reload = useCallback(() => {
    load().then(
      (value) => setState({ value, error: null }),
      (error) => setState((s) => ({ value: s.value, error })),
    );
  }, deps);
  useEffect(reload, [reload]);
  return [state.value, state.error, reload];
}

// An input showing a stored value that keeps what the owner types in it until the stored value
// changes: a page renders again at every live message, and an input given its value alone would
// put the stored one back under their fingers. What is typed is kept with the stored value it was
// typed over (no effect resets it: one run after the owner's first keys would wipe them).
export function Field({ value, ...props }) {
  const [typed, setTyped] = useState(null);
  const shown = typed !== null && typed.over === value ? typed.text : value;
  return html`<input ...${props} value=${shown} onInput=${(e) => setTyped({ text: e.target.value, over: value })} />`;
}

export function ErrorLine({ error }) {
  if (!error) return null;
  return html`<p class="error" role="alert">${error.message}${error.code ? html` <span class="muted">(${error.code})</span>` : ""}</p>`;
}

// telemetry as flat "group.name" -> value: sensors.temperature, actuators.relay, features.thermostat.setpoint
export function flatten(msg) {
  const out = {};
  for (const group of ["sensors", "actuators"]) {
    for (const [k, v] of Object.entries((msg && msg[group]) || {})) out[group + "." + k] = v;
  }
  for (const [f, vals] of Object.entries((msg && msg.features) || {})) {
    for (const [k, v] of Object.entries(vals || {})) out["features." + f + "." + k] = v;
  }
  return out;
}

