// Attention: a layers x heads grid of small heatmaps (query rows, key columns), one head
// enlarged with the selected query's row, and a drill-down for one clicked cell.
import { heatmap } from "../lib/heatmap.js";
import { h, section, table, tokenText, fmt } from "../lib/ui.js";

let chosen = { layer: 0, head: 0 };
let cell = null;

export default {
  id: "attention", title: "Attention",
  async render(state, el) {
    const result = await state.get("attention", { prompt: state.prompt });
    const n = state.tokens.length;
    const w = new Map();   // "layer.head" -> Float64Array n*n
    let nLayer = 0, nHead = 0;
    for (const [l, hd, q, k, weight] of result.rows) {
      const key = l + "." + hd;
      if (!w.has(key)) w.set(key, new Float64Array(n * n).fill(NaN));
      w.get(key)[q * n + k] = weight;
      nLayer = Math.max(nLayer, l + 1); nHead = Math.max(nHead, hd + 1);
    }
    const layers = [...new Set(result.rows.map((r) => r[0]))];
    if (!w.has(chosen.layer + "." + chosen.head)) chosen = { layer: layers[0], head: 0 };
    const at = (m) => (i, j) => (j > i ? null : m[i * n + j]);
    const small = Math.max(1, Math.min(8, Math.floor(96 / n)));
    const grid = h("div", { class: "grid", style: `grid-template-columns: 40px repeat(${nHead}, auto)` });
    grid.append(h("span"), ...[...Array(nHead).keys()].map((hd) => h("span", { class: "axis" }, `head ${hd}`)));
    for (const l of layers) {
      grid.append(h("span", { class: "axis" }, `layer ${l}`));
      for (let hd = 0; hd < nHead; hd++) {
        const c = heatmap({ rows: n, cols: n, cell: at(w.get(l + "." + hd)), size: small,
          onPick: () => { chosen = { layer: l, head: hd }; cell = null; state.view.render(state, clear(el)); } });
        c.title = `layer ${l} head ${hd}`;
        c.dataset.layer = l; c.dataset.head = hd;
        if (l === chosen.layer && hd === chosen.head) c.classList.add("chosen");
        grid.append(c);
      }
    }
    const note = result.params.layer !== undefined && result.params.model
      ? `The prompt is long: layer ${result.params.layer} only.` : "";
    el.append(section("Every head", `Each square: one head's weights, query (row) by key (column); masked cells grey. ${note} Click a head to enlarge it.`, grid, result));

    const m = w.get(chosen.layer + "." + chosen.head);
    const big = Math.max(2, Math.min(24, Math.floor(480 / n)));
    const enlarged = heatmap({ rows: n, cols: n, cell: at(m), size: big,
      onPick: (i, j) => { cell = { query: i, key: j }; state.select(i); } });
    const q = state.pos;
    const g = enlarged.getContext("2d");   // the selected query's row, outlined
    g.strokeStyle = "#d4a800"; g.lineWidth = 2;
    g.strokeRect(1, q * big + 1, n * big - 2, big - 2);
    const rowTable = h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "key"), h("th", {}, "token"), h("th", { class: "num" }, "weight"), h("th", {}, ""))),
      h("tbody", {}, [...Array(q + 1).keys()].map((k) => h("tr", {},
        h("td", { class: "num" }, k), h("td", { class: "mono" }, tokenText(state.tokens[k][2])),
        h("td", { class: "num", "data-weight": k }, fmt(m[q * n + k])),
        h("td", { class: "bar-cell" }, h("span", { style: `width:${Math.round(160 * m[q * n + k])}px` }))))));
    el.append(section(`Layer ${chosen.layer}, head ${chosen.head}`,
      `The query row of the selected token (${q}: ${tokenText(state.tokens[q][2])}) is below the matrix. Click a cell to see its query.`,
      h("div", {}, enlarged, rowTable), null));
    if (cell) {
      const one = await state.get("attention-cell", { prompt: state.prompt, layer: chosen.layer, head: chosen.head, query: cell.query });
      el.append(section(`Drill-down: layer ${chosen.layer}, head ${chosen.head}, query ${cell.query}`,
        "The softmax row of this query (keys after it are masked by the causal mask). The SQL functions give the " +
        "weights, not q and k separately, so this is the narrower query for the cell.",
        table(one, [{ key: "key_pos", num: true }, { key: "weight", num: true }, { key: "unmasked", format: (v) => (v ? "yes" : "masked") }],
          { rowClass: (row) => (row[0] === cell.key ? "selected-row" : "") }), one, "the cell's query"));
    }
  },
};

function clear(el) { el.replaceChildren(); return el; }
