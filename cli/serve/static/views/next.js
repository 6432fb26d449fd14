// The next-token distribution after the prompt, with temperature, top-k and top-p applied
// by the SQL (re-queried as a knob moves), and a streaming generation with the same knobs.
import { h, section, table, tokenText, fmt, input } from "../lib/ui.js";
import { sqlBox } from "../lib/api.js";

const ROWS = 20;   // of the 50,257: the server sends only these
const knobs = { temperature: 1, top_k: 0, top_p: 1, seed: 1, max_tokens: 30 };

export default {
  id: "next", title: "Next token",
  async render(state, el) {
    const controls = h("div", { class: "controls" },
      input("temperature", { type: "number", step: "0.1", min: "0.01", max: "10", value: knobs.temperature, name: "temperature" }),
      input("top-k (0: all)", { type: "number", step: "1", min: "0", value: knobs.top_k, name: "top_k" }),
      input("top-p", { type: "number", step: "0.05", min: "0.01", max: "1", value: knobs.top_p, name: "top_p" }));
    const out = h("div");
    el.append(controls, out);
    const draw = async () => {
      const result = await state.get("next-token", { prompt: state.prompt, temperature: knobs.temperature, top_k: knobs.top_k, top_p: knobs.top_p, rows: ROWS });
      const most = result.rows.length ? result.rows[0][4] : 1;
      out.replaceChildren(section("After the whole prompt", `The ${ROWS} most likely tokens after sampling's filters, renormalized over the kept ones (bars: relative to the first).`,
        table(result, [{ key: "rank", num: true }, { key: "token", label: "id", num: true }, { key: "text", mono: true, format: tokenText },
          { key: "logit", num: true }, { key: "prob", num: true },
          { key: "bar", label: "", value: (row, i) => row[i.prob], format: (p) => h("div", { class: "bar-cell" }, h("span", { style: `width:${Math.round(160 * p / most)}px` })) }]),
        result));
    };
    for (const el2 of controls.querySelectorAll("input")) {
      el2.addEventListener("change", () => { knobs[el2.name] = Number(el2.value); draw().catch(showIn(out)); });
    }
    await draw();

    const genControls = h("div", { class: "controls" },
      input("seed", { type: "number", min: "0", value: knobs.seed, name: "seed" }),
      input("tokens", { type: "number", min: "1", max: "256", value: knobs.max_tokens, name: "max_tokens" }));
    for (const i of genControls.querySelectorAll("input")) i.addEventListener("change", () => { knobs[i.name] = Number(i.value); });
    const text = h("div", { class: "generated" }, state.prompt);
    const sqlSlot = h("div");
    const go = h("button", { type: "button" }, "generate");
    const stop = h("button", { type: "button", disabled: "" }, "stop");
    let source = null;
    const finish = () => { if (source) source.close(); source = null; go.disabled = false; stop.disabled = true; };
    go.addEventListener("click", () => {
      text.replaceChildren(state.prompt);
      const q = new URLSearchParams({ prompt: state.prompt, model: state.model, temperature: knobs.temperature,
        top_k: knobs.top_k, top_p: knobs.top_p, seed: knobs.seed, max_tokens: knobs.max_tokens });
      source = new EventSource(`/api/generate?${q}`);
      go.disabled = true; stop.disabled = false;
      source.addEventListener("sql", (e) => { const d = JSON.parse(e.data); sqlSlot.replaceChildren(sqlBox({ ...d, rows: [] }, "the generation")); });
      source.addEventListener("token", (e) => { const d = JSON.parse(e.data); text.append(h("span", { class: "new", title: `id ${d.id}, logprob ${fmt(d.logprob)}` }, d.text)); });
      source.addEventListener("done", finish);
      source.addEventListener("failure", (e) => { finish(); showIn(out)(new Error(JSON.parse(e.data).error)); });
      source.addEventListener("error", () => { if (source) { finish(); } });
    });
    stop.addEventListener("click", finish);   // closing the stream cancels the query on the server
    el.append(h("section", { class: "panel" },
      h("div", {}, h("h2", {}, "Generate"), h("p", { class: "help" }, "Streams one token per gpt2.generate_next() with the knobs above; stop cancels it on the server."),
        genControls, h("div", { class: "controls" }, go, stop), text), sqlSlot));
  },
};

function showIn(out) {
  return (e) => out.replaceChildren(h("p", { class: "error-inline" }, e.message));
}
