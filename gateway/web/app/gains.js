// What the device could gain with its hardware (docs/protocol.md 13): a feature an add-on
// plugged in lets run ("an outdoor temperature probe was plugged in: the weather feature can
// now run"), with a button that asks for it; features installed that wait for an add-on; and
// those an add-on its board takes would let run.
import { html, useState } from "./vendor/preact-htm.js";
import { api, ErrorLine, useLoad } from "./lib.js";

export function Gains({ id, onAsked }) {
  const path = "/api/v1/devices/" + encodeURIComponent(id) + "/gains";
  const [shown, error, reload] = useLoad(() => api("GET", path), [id]);
  const [said, setSaid] = useState(null);
  const [asked, setAsked] = useState(null);
  if (!shown) return html`<${ErrorLine} error=${error} />`;
  const ask = async (feature) => {
    setSaid(null);
    setAsked(feature);
    try {
      const r = await api("POST", path, { feature });
      setSaid({ ok: r.rollout ? `${feature} comes with ${r.ref}, through its rollout (${r.state}).` : `${feature} comes with ${r.ref}: the update is on its way.` });
      reload();
      onAsked && onAsked();
    } catch (e) {
      setSaid({ error: e });
    } finally {
      setAsked(null);
    }
  };
  const none = !shown.gains.length && !shown.waiting.length && !shown.with_addons.length;
  return html`<div data-gains>
    ${none ? html`<p class="muted">Nothing more for its hardware in the releases here.</p>` : ""}
    ${shown.gains.map(
      (g) => html`<div class="banner" data-gain=${g.feature}>
        ${g.text[0].toUpperCase() + g.text.slice(1)}. <span class="muted">${g.description}</span>
        <button disabled=${asked !== null} onClick=${() => ask(g.feature)}>Install ${g.feature} (${g.release.ref})</button>
      </div>`,
    )}
    ${shown.waiting.map((w) => html`<p data-waiting=${w.feature}>${w.text}.</p>`)}
    ${shown.with_addons.map((c) => html`<p class="muted" data-could=${c.feature}>${c.text[0].toUpperCase() + c.text.slice(1)}.</p>`)}
    ${said && said.ok ? html`<p class="ok">${said.ok}</p>` : ""}
    <${ErrorLine} error=${said && said.error} />
  </div>`;
}
