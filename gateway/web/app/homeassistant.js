// A device in Home Assistant (docs/protocol.md 14): its owner shows it there, or takes it out.
// The gateway publishes the entities of the streams the owner shares, and removes them at an unlink.
import { html, useState } from "./vendor/preact-htm.js";
import { api, useLoad, ErrorLine } from "./lib.js";

export function HomeAssistant({ id }) {
  const path = "/api/v1/devices/" + encodeURIComponent(id) + "/homeassistant";
  const [link, error, reload] = useLoad(() => api("GET", path), [id]);
  const [status, setStatus] = useState(null);
  if (!link) return html`<${ErrorLine} error=${error} />`;
  const change = async (linked) => {
    setStatus(null);
    try {
      await api("PUT", path, { linked });
      setStatus({ ok: linked ? "shown in Home Assistant" : "taken out of Home Assistant" });
      reload();
    } catch (e) {
      setStatus({ error: e });
    }
  };
  const names = link.entities.map((e) => e.name).join(", ");
  return html`<div data-homeassistant data-linked=${String(link.linked)}>
      <p>${link.linked
        ? html`Shown in Home Assistant: ${names}.`
        : html`<span class="muted">Not in Home Assistant. Showing it there shares with it: ${names || "nothing"} (only what you share).</span>`}</p>
      <button type="button" onClick=${() => change(!link.linked)}>
        ${link.linked ? "Remove from Home Assistant" : "Show in Home Assistant"}</button>
      ${status && status.ok ? html` <span class="ok">${status.ok}</span>` : ""}
      <${ErrorLine} error=${status && status.error} />
    </div>`;
}
