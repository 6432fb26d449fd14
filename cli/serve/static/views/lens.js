// The logit lens: what each layer's residual stream, through the final layer norm and the
// unembedding, would predict at each position (layer 0: the embeddings alone).
import { colour } from "../lib/heatmap.js";
import { h, section, tokenText, fmt } from "../lib/ui.js";

export default {
  id: "lens", title: "Logit lens",
  async render(state, el) {
    const result = await state.get("logit-lens", { prompt: state.prompt, k: 1 });
    const n = state.tokens.length;
    const top = new Map();
    let nLayer = 0;
    for (const [layer, pos, rank, token, text, prob] of result.rows) {
      if (rank === 1) top.set(layer + "." + pos, { token, text, prob });
      nLayer = Math.max(nLayer, layer + 1);
    }
    const cols = Math.min(n, 48);   // wide prompts: the 48 positions up to the selected one
    const first = Math.max(0, Math.min(state.pos - cols + 1, n - cols));
    const positions = [...Array(cols).keys()].map((i) => first + i);
    const head = h("tr", {}, h("th", {}, "layer"), positions.map((p) =>
      h("th", { class: "mono" + (p === state.pos ? " selected-col" : ""), onclick: () => state.select(p) }, tokenText(state.tokens[p][2]))));
    const body = [...Array(nLayer).keys()].reverse().map((layer) => h("tr", {}, h("th", {}, layer),
      positions.map((p) => {
        const t = top.get(layer + "." + p);
        const [r, g, b] = colour(t.prob, 0, 1, false);
        const dark = t.prob > 0.45;
        return h("td", { class: "mono lens", title: `p = ${fmt(t.prob)}`, "data-layer": layer, "data-pos": p,
          style: `background: rgb(${r},${g},${b}); color: ${dark ? "#fff" : "inherit"}` }, tokenText(t.text));
      })));
    el.append(section("Top token by layer and position",
      "Rows: the residual stream after each layer (0 = embeddings), top row the model's output. Colour: the top token's probability.",
      h("div", { style: "overflow:auto" }, h("table", { class: "lens-table" }, h("thead", {}, head), h("tbody", {}, body))), result));
  },
};
