// The page's shared state: one prompt, one model, one selected token position. Every view
// reads it; hovering or clicking a token (in the strip or in a view) selects it and the
// active view redraws from its cached results (no new query for a new selection).
import { panel, stopAll, runningCount, ApiError } from "./lib/api.js";
import tokenizer from "./views/tokenizer.js";
import attention from "./views/attention.js";
import lens from "./views/lens.js";
import next from "./views/next.js";
import scores from "./views/scores.js";
import whatif from "./views/whatif.js";
import learning from "./views/learning.js";
import models from "./views/models.js";

const VIEWS = [tokenizer, attention, lens, next, scores, whatif, learning, models];
const $ = (id) => document.getElementById(id);

const cache = new Map();
export const state = {
  prompt: "", model: "", pos: 0, tokens: [], config: null, view: VIEWS[0], readOnly: false,
  // a panel's result for these parameters, queried once per prompt and model
  async get(name, params = {}) {
    const full = { model: state.model, ...params };
    const key = name + "?" + new URLSearchParams(full);
    if (!cache.has(key)) cache.set(key, panel(name, full).catch((e) => { cache.delete(key); throw e; }));
    return cache.get(key);
  },
  select(pos) {
    if (pos === state.pos || pos < 0 || pos >= state.tokens.length) return;
    state.pos = pos;
    drawTokens();
    render();
  },
};

export function showError(e) {
  const box = $("error");
  if (!e || (e instanceof ApiError && e.status === 409)) { box.hidden = true; return; }
  box.textContent = e.message;
  box.hidden = false;
}

function drawTokens() {
  const strip = $("tokens");
  strip.replaceChildren(...state.tokens.map(([pos, , text]) => {
    const span = document.createElement("span");
    span.className = "tok" + (pos === state.pos ? " selected" : "");
    span.textContent = text.replaceAll(" ", "\u2423").replaceAll("\n", "\u21b5");
    const sub = document.createElement("sub");
    sub.textContent = pos;
    span.append(sub);
    span.dataset.pos = pos;
    span.addEventListener("mouseenter", () => state.select(pos));
    span.addEventListener("click", () => state.select(pos));
    return span;
  }));
}

let generation = 0;
async function render() {
  const mine = ++generation;
  const main = $("view");
  try {
    const el = document.createElement("div");
    await state.view.render(state, el);
    if (mine === generation) { main.replaceChildren(el); main.dataset.view = state.view.id; showError(null); }
  } catch (e) {
    if (mine === generation) showError(e);
  }
}

async function run() {
  state.prompt = $("prompt").value;
  state.model = $("model").value;
  cache.clear();
  try {
    const result = await panel("tokens", { prompt: state.prompt, model: state.model });
    state.tokens = result.rows;
    state.pos = Math.max(0, state.tokens.length - 1);
    drawTokens();
    showError(null);
    await render();
  } catch (e) {
    state.tokens = [];
    drawTokens();
    $("view").replaceChildren();
    showError(e);
  }
}

function tabs() {
  const nav = $("tabs");
  nav.replaceChildren(...VIEWS.filter((v) => !(state.readOnly && v.writes)).map((v) => {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = v.title;
    b.dataset.view = v.id;
    b.className = v === state.view ? "active" : "";
    b.addEventListener("click", () => { state.view = v; tabs(); render(); });
    return b;
  }));
}

function randomLabel() {
  const m = state.config.models.find((x) => x.name === state.model);
  $("random-label").hidden = !(m && m.random);
}

async function start() {
  const config = await (await fetch("/api/config")).json();
  state.config = config;
  state.readOnly = config.read_only;
  $("readonly-label").hidden = !config.read_only;
  const select = $("model");
  select.replaceChildren(...config.models.map((m) => new Option(m.name + (m.random ? " (random weights)" : ""), m.name)));
  select.value = config.model || "";
  state.model = select.value;
  randomLabel();
  select.addEventListener("change", () => { state.model = select.value; randomLabel(); run(); });
  $("run").addEventListener("click", run);
  $("prompt").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) run(); });
  $("stop").addEventListener("click", stopAll);
  document.addEventListener("requests", () => { $("stop").disabled = runningCount() === 0; });
  tabs();
  if (!config.models.length) { showError(new Error("no model is loaded: gpt2sql load gpt2")); return; }
  await run();
}

start();
