// A device's data footprint: each stream it can send, what it tells, how much the gateway holds
// of it, and the owner's choice (share, keep on the device, off), with what keeping it back costs.
import { html, useState, useEffect } from "./vendor/preact-htm.js";
import { api, useLoad, ErrorLine } from "./lib.js";

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
    ev.preventDefault();
    setStatus(null);
    const days = ev.target.days.value.trim();
    try {
      await api("PUT", path, { retention_days: days === "" ? null : Number(days) });
      setStatus({ ok: days === "" ? "kept with no limit of yours" : `kept for ${days} days` });
      reload();
    } catch (e) {
      setStatus({ error: e });
    }
  };
  return html`<form data-streams onSubmit=${save}>
      ${footprint.choices_known ? "" : html`<p class="muted">This device's runtime predates data choices: it shares every stream.</p>`}
      <table>
        <tr><th>stream</th><th>what it tells</th><th>sensitivity</th><th>stored</th><th>your choice</th></tr>
        ${footprint.streams.map((s) => {
          const choice = asked[s.path] || s.choice;
          const costs = s.needed || choice === "share" ? [] : s.costs[choice] || [];
          return html`<tr data-stream=${s.path} data-choice=${s.choice}>
            <td><code>${s.path}</code></td>
            <td>${s.doc}${costs.map((c) => html`<div class="warn">${c}</div>`)}</td>
            <td class=${"sens " + s.sensitivity}>${s.sensitivity}</td>
            <td>${s.needed ? "" : s.stored}</td>
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
    <form class="inline" data-retention onSubmit=${keep}>
      <label for="days">The gateway keeps what it shares for</label>
      <input id="days" name="days" size="5" inputmode="decimal" placeholder="no limit"
        value=${footprint.retention_days == null ? "" : String(footprint.retention_days)} />
      <span>days</span> <button type="submit">Keep</button>
    </form>
    <${ErrorLine} error=${status && status.error} />`;
}
