// A device's data footprint: each stream it can send, what it tells, how much the gateway holds
// of it and for how long, and the owner's choice (share, keep on the device, off), with what
// keeping it back costs.
import { html, useState, useEffect } from "./vendor/preact-htm.js";
import { dateTime } from "./charts.js";
import { api, useLoad, ErrorLine, Field } from "./lib.js";

// what the owner typed as days: a number, "forever", or "" (the default); anything else goes to
// the gateway as typed, which says why not (Number() would make it NaN, and JSON null)
function daysOf(text, empty) {
  const v = text.trim();
  if (v === "") return empty;
  if (v === "forever") return v;
  return isNaN(Number(v)) ? v : Number(v);
}

function keptText(s, deviceDays) {
  if (s.retention_own === "forever") return "kept with no limit";
  if (s.retention_days == null) return "no limit";
  return `${s.retention_days} days` + (s.retention_own == null && deviceDays != null ? " (the device's)" : "");
}

const CHOICES = [
  ["share", "share"],
  ["local", "keep on the device"],
  ["off", "off"],
];

export function Streams({ id, online }) {
  const path = "/api/v1/devices/" + encodeURIComponent(id) + "/streams";
  const [footprint, error, reload] = useLoad(() => api("GET", path), [id]);
  const [asked, setAsked] = useState({});
  const [status, setStatus] = useState(null);
  useEffect(() => setAsked({}), [footprint]);
  if (!footprint) return html`<${ErrorLine} error=${error} />`;
  const save = async (ev) => {
    ev.preventDefault();
    setStatus(null);
    try {
      await api("PUT", path, { streams: asked });
      setStatus({ ok: "the device applied your choices" });
      reload();
    } catch (e) {
      setStatus({ error: e });
    }
  };
  const changed = Object.keys(asked).length > 0;
  const keep = async (ev) => {
    // the device's period, and each stream's own typed in its row (inputs of this form by their
    // `form` attribute): only those changed are sent
    ev.preventDefault();
    setStatus(null);
    const f = ev.target;
    const days = f.days.value.trim();
    const body = { retention_days: daysOf(days, null) };
    const own = {};
    for (const s of footprint.streams) {
      const input = f.elements.namedItem("keep:" + s.path);
      const was = s.retention_own == null ? "" : String(s.retention_own);
      if (input && input.value.trim() !== was) own[s.path] = daysOf(input.value, null);
    }
    if (Object.keys(own).length) body.retention = own;
    try {
      await api("PUT", path, body);
      const streams = Object.entries(own).map(([p, d]) => `${p}: ${d == null ? "as the device" : d === "forever" ? "no limit" : d + " days"}`);
      setStatus({ ok: (days === "" ? "kept with no limit of yours" : `kept for ${days} days`) + (streams.length ? "; " + streams.join(", ") : "") });
      reload();
    } catch (e) {
      setStatus({ error: e });
    }
  };
  return html`<form data-streams onSubmit=${save}>
      ${footprint.choices_known ? "" : html`<p class="muted">This device's runtime predates data choices: it shares every stream.</p>`}
      <table>
        <tr><th>stream</th><th>what it tells</th><th>sensitivity</th><th>stored</th><th>kept</th><th>your choice</th></tr>
        ${footprint.streams.map((s) => {
          const choice = asked[s.path] || s.choice;
          const costs = s.needed || choice === "share" ? [] : s.costs[choice] || [];
          return html`<tr data-stream=${s.path} data-choice=${s.choice}>
            <td><code>${s.path}</code></td>
            <td>${s.doc}${costs.map((c) => html`<div class="warn">${c}</div>`)}</td>
            <td class=${"sens " + s.sensitivity}>${s.sensitivity}</td>
            <td data-stored=${s.needed ? null : s.stored}>${s.needed ? "" : s.stored}${s.oldest ? html`<div class="muted">since ${dateTime(s.oldest)}</div>` : ""}</td>
            <td data-kept=${s.needed ? null : keptText(s, footprint.retention_days)}>${s.needed
              ? ""
              : html`<${Field} form="retention" name=${"keep:" + s.path} size="6" aria-label=${"days kept of " + s.path}
                  placeholder=${footprint.retention_days == null ? "no limit" : String(footprint.retention_days)}
                  title="days; forever; empty: as the device"
                  value=${s.retention_own == null ? "" : String(s.retention_own)} />
                <div class="muted">${keptText(s, footprint.retention_days)}</div>`}</td>
            <td>${s.needed
              ? html`<span class="muted">needed to operate</span>`
              : html`<select aria-label=${"choice for " + s.path} value=${choice}
                  onChange=${(e) => setAsked({ ...asked, [s.path]: e.target.value })}>
                  ${CHOICES.filter(([v]) => v !== "off" || s.kind !== "actuator").map(
                    ([v, label]) => html`<option value=${v}>${label}</option>`,
                  )}
                </select>`}</td>
          </tr>`;
        })}
      </table>
      <button type="submit" disabled=${!changed || !online}>Apply</button>
      ${online ? "" : html`<span class="muted"> the device applies your choices when it is online</span>`}
      ${status && status.ok ? html`<span class="ok">${status.ok}</span>` : ""}
    </form>
    <form class="inline" id="retention" data-retention onSubmit=${keep}>
      <label for="days">The gateway keeps what it shares for</label>
      <${Field} id="days" name="days" size="5" inputmode="decimal" placeholder="no limit"
        value=${footprint.retention_days == null ? "" : String(footprint.retention_days)} />
      <span>days, a stream for the days in its row where you give them ("forever": no limit)</span>
      <button type="submit">Keep</button>
    </form>
    <${ErrorLine} error=${status && status.error} />`;
}
