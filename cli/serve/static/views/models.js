// Models: every loaded model (the ones trained in SQL included), its config and size.
import { h, section, table } from "../lib/ui.js";

export default {
  id: "models", title: "Models",
  async render(state, el) {
    const result = await state.get("models");
    el.append(section("Loaded models", "One row of gpt2.models per model; size: its weight tables on disk.",
      table(result, [{ key: "name" }, { key: "n_layer", label: "layers", num: true }, { key: "n_head", label: "heads", num: true },
        { key: "n_embd", label: "width", num: true }, { key: "n_positions", label: "context", num: true },
        { key: "n_vocab", label: "vocab", num: true }, { key: "dtype" }, { key: "step", label: "trained steps", num: true },
        { key: "bytes", label: "size", num: true, format: (b) => `${(b / 2 ** 20).toFixed(1)} MB` }, { key: "source" }],
        { rowClass: (row) => (row[0] === state.model ? "selected-row" : "") }), result));
  },
};
