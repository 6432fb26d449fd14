// What if: ablate heads, attention or MLPs and compare the next-token distribution before and
// after; activation patching's sweep heatmap; direct logit attribution. All through the SQL
// functions, which edit activations, never weights (and each request is rolled back).
import { heatmap } from "../lib/heatmap.js";
import { h, section, table, tokenText, fmt, input } from "../lib/ui.js";

const form = { ablate: "head:0.0", token: "", clean: "", corrupted: "", answer: "", wrong: "" };

export default {
  id: "whatif", title: "What if",
  async render(state, el) {
    const ablateBox = h("input", { type: "text", value: form.ablate, name: "ablate", style: "width:260px" });
    const out1 = h("div");
    const go1 = h("button", { type: "button" }, "ablate");
    go1.addEventListener("click", () => { form.ablate = ablateBox.value; ablation(state, out1).catch(inline(out1)); });
    el.append(h("h2", {}, "Ablation"), h("p", { class: "help" }, "Comma-separated: head:L.H (zero one head's output), attn:L or mlp:L (a layer's attention or MLP output)."),
      h("div", { class: "controls" }, ablateBox, go1), out1);
    await ablation(state, out1).catch(inline(out1));

    const tokenBox = h("input", { type: "text", value: form.token || nextGuess(state), name: "token" });
    const out2 = h("div");
    const go2 = h("button", { type: "button" }, "attribute");
    go2.addEventListener("click", () => { form.token = tokenBox.value; attribution(state, out2).catch(inline(out2)); });
    el.append(h("h2", {}, "Direct logit attribution"), h("p", { class: "help" }, "How much each head and MLP writes, directly, toward one next token (one token, with its leading space)."),
      h("div", { class: "controls" }, tokenBox, go2), out2);

    const boxes = ["clean", "corrupted", "answer", "wrong"].map((k) => h("input", { type: "text", name: k, placeholder: k, value: form[k] }));
    const out3 = h("div");
    const go3 = h("button", { type: "button" }, "sweep");
    go3.addEventListener("click", () => { boxes.forEach((b) => { form[b.name] = b.value; }); sweep(state, out3).catch(inline(out3)); });
    el.append(h("h2", {}, "Activation patching"), h("p", { class: "help" }, "Run the corrupted prompt with one layer's residual stream at one position taken from the clean run; the cell is logit(answer) - logit(wrong). The prompts must have the same number of tokens."),
      h("div", { class: "controls" }, boxes, go3), out3);
  },
};

function nextGuess(state) { return state.tokens.length ? state.tokens[state.tokens.length - 1][2] : ""; }
function inline(out) { return (e) => out.replaceChildren(h("p", { class: "error-inline" }, e.message)); }

async function ablation(state, out) {
  const result = await state.get("ablation", { prompt: state.prompt, ablate: form.ablate, rows: 10 });
  out.replaceChildren(section("Top next tokens, before and after", null,
    table(result, [{ key: "rank", num: true }, { key: "text", mono: true, format: tokenText },
      { key: "prob_before", label: "p before", num: true }, { key: "prob_after", label: "p after", num: true },
      { key: "logit_before", label: "logit before", num: true }, { key: "logit_after", label: "logit after", num: true }]), result));
}

async function attribution(state, out) {
  const result = await state.get("attribution", { prompt: state.prompt, token: form.token });
  out.replaceChildren(section(`Toward ${tokenText(form.token)}`, null,
    table(result, [{ key: "layer", num: true }, { key: "component" }, { key: "head", num: true }, { key: "contribution", num: true }]), result));
}

async function sweep(state, out) {
  const result = await state.get("patch-sweep", { clean: form.clean, corrupted: form.corrupted, answer: form.answer, wrong: form.wrong });
  const layers = Math.max(...result.rows.map((r) => r[0])) + 1;
  const n = Math.max(...result.rows.map((r) => r[1])) + 1;
  const m = new Map(result.rows.map((r) => [r[0] + "." + r[1], r[3]]));
  const values = result.rows.map((r) => r[3]);
  const lo = Math.min(...values), hi = Math.max(...values);
  const size = Math.max(8, Math.min(32, Math.floor(480 / n)));
  out.replaceChildren(section(`Logit difference, layer (row) x position (column): ${fmt(lo, 3)} .. ${fmt(hi, 3)}`,
    "Blue: patching restores the clean answer; red: it pushes toward the wrong one.",
    heatmap({ rows: layers, cols: n, size, cell: (i, j) => m.get(i + "." + j) ?? null, lo, hi, diverging: true }), result));
}
