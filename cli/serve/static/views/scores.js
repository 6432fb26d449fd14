// Scores: each token coloured by its logprob given the tokens before it, its rank and the
// model's alternatives at the selected position, and the perplexity.
import { h, section, table, tokenText, fmt } from "../lib/ui.js";

export default {
  id: "scores", title: "Scores",
  async render(state, el) {
    const result = await state.get("score", { prompt: state.prompt, top: 5 });
    const lp = result.columns.indexOf("logprob");
    const text = h("div", { class: "scored" }, result.rows.map((row) => {
      const span = h("span", { "data-pos": row[0], title: `logprob ${fmt(row[lp])}, rank ${row[4]}`,
        style: `background: ${heat(row[lp])}` }, row[2]);
      if (row[0] === state.pos) span.classList.add("selected");
      span.addEventListener("click", () => state.select(row[0]));
      return span;
    }));
    const perplexity = result.rows.length ? result.rows[0][result.columns.indexOf("perplexity")] : null;
    el.append(section(`Perplexity ${fmt(perplexity, 3)}`,
      "Each token given <|endoftext|> and the tokens before it: red = unlikely (logprob -10 or less), white = certain.",
      text, result));
    const row = result.rows[state.pos];
    if (row) {
      const alternatives = { columns: ["rank", "id", "text", "logprob"],
        rows: (row[5] || []).map((a, k) => [k + 1, a.id, a.text, a.logprob]), sql: "", params: {} };
      el.append(section(`Position ${row[0]}: ${tokenText(row[2])} (rank ${row[4]}, logprob ${fmt(row[lp])})`,
        "What the model expected here instead: its top alternatives (the alternatives column of the same rows).",
        table(alternatives, [{ key: "rank", num: true }, { key: "id", num: true }, { key: "text", mono: true, format: tokenText }, { key: "logprob", num: true }]), null));
    }
  },
};

function heat(logprob) {
  const t = Math.min(1, Math.max(0, -logprob / 10));
  return `rgb(255, ${Math.round(255 - 140 * t)}, ${Math.round(255 - 150 * t)})`;
}
