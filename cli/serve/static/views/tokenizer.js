// The tokenizer: each pre-token and its byte-pair merges step by step, with their ranks.
import { h, section, table, tokenText } from "../lib/ui.js";

export default {
  id: "tokenizer", title: "Tokenizer",
  async render(state, el) {
    const [tokens, trace] = await Promise.all([
      state.get("tokens", { prompt: state.prompt }), state.get("tokenizer", { prompt: state.prompt })]);
    const selected = tokens.rows[state.pos];
    el.append(section("Tokens", "The prompt's token ids: the pieces below, merged. Hover a token to select it.",
      table(tokens, [{ key: "pos", num: true }, { key: "id", num: true }, { key: "text", mono: true, format: tokenText },
        { key: "token", label: "vocab entry", mono: true }], { rowClass: (row) => row[0] === state.pos ? "selected-row" : "" }),
      tokens));
    el.append(section("BPE merges", "Step 0 splits a pre-token into bytes; each later step merges the pair with the " +
      "lowest rank (the line of vocab.bpe). Rows of the piece holding the selected token are marked.",
      table(trace, [{ key: "piece_no", label: "piece", num: true }, { key: "piece", mono: true, format: tokenText },
        { key: "step", num: true }, { key: "pair", mono: true }, { key: "rank", num: true },
        { key: "merged_id", label: "merged id", num: true }, { key: "symbols", mono: true, format: (s) => (s || []).join(" ") }],
        { rowClass: (row) => selected && (row[6] || []).includes(selected[3]) ? "selected-row" : "" }),
      trace));
  },
};
