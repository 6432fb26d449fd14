// Small DOM helpers the views share: a panel (picture left, its SQL right), tables, inputs.
import { sqlBox } from "./api.js";

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v);
  }
  el.append(...children.flat().filter((c) => c !== null && c !== undefined));
  return el;
}

export function section(title, help, content, result, sqlTitle) {
  return h("section", { class: "panel", "data-panel": title },
    h("div", {}, h("h2", {}, title), help ? h("p", { class: "help" }, help) : null, content),
    result ? sqlBox(result, sqlTitle) : h("div"));
}

export function tokenText(t) {
  return String(t ?? "").replaceAll(" ", "\u2423").replaceAll("\n", "\u21b5");
}

export function fmt(x, digits = 4) {
  if (x === null || x === undefined) return "";
  if (typeof x !== "number") return String(x);
  if (Number.isInteger(x)) return String(x);   // ids, positions, ranks, counts
  return Math.abs(x) >= 1e5 || (Math.abs(x) < 1e-3 && x !== 0) ? x.toExponential(digits - 1) : x.toFixed(digits);
}

// A table of a result's rows: columns [{key, label, num, format}] picked by name.
export function table(result, columns, { limit = 500, rowClass } = {}) {
  const index = Object.fromEntries(result.columns.map((c, i) => [c, i]));
  const head = h("tr", {}, columns.map((c) => h("th", { class: c.num ? "num" : "" }, c.label || c.key)));
  const body = result.rows.slice(0, limit).map((row, r) => h("tr", rowClass ? { class: rowClass(row, r) } : {},
    columns.map((c) => {
      const v = c.value ? c.value(row, index) : row[index[c.key]];
      return h("td", { class: (c.num ? "num" : "") + (c.mono ? " mono" : "") }, c.format ? c.format(v, row, index) : fmt(v));
    })));
  const t = h("table", {}, h("thead", {}, head), h("tbody", {}, body));
  if (result.rows.length > limit) return h("div", {}, t, h("p", { class: "help" }, `first ${limit} of ${result.rows.length} rows`));
  return t;
}

export function input(label, attrs) {
  return h("label", {}, label + " ", h("input", attrs));
}

export function col(result, name) {
  const i = result.columns.indexOf(name);
  return (row) => row[i];
}
