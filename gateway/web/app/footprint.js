// Everything the gateway stores about a device, in the owner's hands: downloaded (JSON, or a zip
// of CSV files, through the session's cookie like any page) or forgotten, once its id is typed.
import { html, useState } from "./vendor/preact-htm.js";
import { api, ErrorLine } from "./lib.js";

export function Footprint({ id, onForgotten }) {
  const base = "/api/v1/devices/" + encodeURIComponent(id);
  const [asking, setAsking] = useState(false);
  const [typed, setTyped] = useState("");
  const [error, setError] = useState(null);
  const forget = async (ev) => {
    ev.preventDefault();
    setError(null);
    try {
      onForgotten(await api("POST", base + "/forget", { confirm: typed }));
    } catch (e) {
      setError(e);
    }
  };
  return html`<div data-footprint>
    <p class="inline">
      <span>Everything the gateway stores about it (yours: since you claimed it):</span>
      <a class="button" data-export="json" href=${base + "/export?format=json"} download=${id + ".json"}>Export as JSON</a>
      <a class="button" data-export="csv" href=${base + "/export?format=csv"} download=${id + ".zip"}>Export as CSV (zip)</a>
    </p>
    ${asking
      ? html`<form class="inline" data-forget onSubmit=${forget}>
          <label for="forget-id">This deletes everything the gateway stores about ${id}, your claim of it too
            (the code on its box claims it again). Type <code>${id}</code> to confirm:</label>
          <input id="forget-id" autocomplete="off" value=${typed} onInput=${(e) => setTyped(e.target.value)} />
          <button type="submit" class="danger" disabled=${typed !== id}>Forget</button>
          <button type="button" class="plain" onClick=${() => (setAsking(false), setTyped(""))}>Cancel</button>
        </form>`
      : html`<button type="button" class="danger" onClick=${() => setAsking(true)}>Forget this device's data</button>`}
    <${ErrorLine} error=${error} />
  </div>`;
}

// what forgetting did: the rows it deleted, table by table, and whether the broker's retained
// messages of the device were cleared
export function Forgotten({ answer }) {
  const removed = Object.entries(answer.removed || {}).sort((a, b) => b[1] - a[1]);
  const total = removed.reduce((n, [, k]) => n + k, 0);
  return html`<h1>${answer.device} <span class="muted">forgotten</span></h1>
    <p class="ok" data-forgotten=${answer.device}>The gateway deleted everything it stored about ${answer.device}: ${total} rows${
      removed.length ? ` (${removed.map(([t, n]) => `${t} ${n}`).join(", ")})` : ""}.</p>
    <p>${answer.retained_cleared
      ? "Its messages kept at the broker were cleared too."
      : html`<span class="error">Its messages kept at the broker were not all cleared (the broker went away): an admin forgets it again.</span>`}</p>
    <p class="muted">Until someone claims it again, nothing it sends is kept. <a href="#/">My devices</a></p>`;
}
