// Learning: the gradient of the loss on the prompt, as a layers x tensors grid of norms
// ("which weights would this sentence move"). Reading only: nothing is trained.
import { colour } from "../lib/heatmap.js";
import { h, section, fmt } from "../lib/ui.js";

export default {
  id: "learning", title: "Learning",
  async render(state, el) {
    const result = await state.get("gradients", { prompt: state.prompt, top: 3 });
    const cells = new Map();
    const layers = new Set(), tensors = new Set(), other = [];
    for (const [name, norm] of result.rows) {
      const m = /^h\.(\d+)\.(.+)$/.exec(name);
      if (m) { layers.add(Number(m[1])); tensors.add(m[2]); cells.set(m[1] + ":" + m[2], norm); } else other.push([name, norm]);
    }
    const cols = [...tensors].sort();
    const max = Math.max(...result.rows.map((r) => r[1]));
    const cell = (v) => {
      const [r, g, b] = colour(v, 0, max, false);
      return h("td", { class: "num", style: `background: rgb(${r},${g},${b}); color: ${v / max > 0.45 ? "#fff" : "inherit"}` }, fmt(v, 3));
    };
    const grid = h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "layer"), cols.map((c) => h("th", { class: "num" }, c)))),
      h("tbody", {}, [...layers].sort((a, b) => a - b).map((l) => h("tr", {}, h("th", {}, l), cols.map((c) => cell(cells.get(l + ":" + c)))))),
      h("tbody", {}, other.map(([name, norm]) => h("tr", {}, h("th", {}, name), cell(norm)))));
    el.append(section("Gradient norms of the loss on the prompt",
      "Each cell: the L2 norm of the loss's gradient for one tensor. Darker: this text would move it more.", grid, result));
  },
};
