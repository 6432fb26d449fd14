// The one way the page asks the server for numbers: a panel's parameters in, its
// {sql, params, columns, rows} out. The SQL is shown beside the picture with a copy button.
// The client never sends SQL; every request has an id, so `stop` cancels it on the server.

const running = new Map();   // request id -> AbortController
let counter = 0;

export function runningCount() { return running.size; }

export async function panel(name, params) {
  const rid = `${Date.now().toString(36)}-${(++counter).toString(36)}`;
  const controller = new AbortController();
  running.set(rid, controller);
  document.dispatchEvent(new Event("requests"));
  const query = new URLSearchParams({ ...params, rid });
  try {
    const response = await fetch(`/api/panel/${name}?${query}`, { signal: controller.signal });
    const body = await response.json();
    if (!response.ok) throw new ApiError(body.error || `HTTP ${response.status}`, response.status);
    return body;
  } catch (e) {
    if (e.name === "AbortError") throw new ApiError("stopped", 409);
    throw e;
  } finally {
    running.delete(rid);
    document.dispatchEvent(new Event("requests"));
  }
}

export function stopAll() {
  for (const [rid, controller] of running) {
    fetch(`/api/cancel/${rid}`, { method: "POST" }).catch(() => {});
    controller.abort();
  }
}

export class ApiError extends Error {
  constructor(message, status) { super(message); this.status = status; }
}

// psql's syntax for the bound parameters: \set name value, then :'name' in the query,
// so the text shown runs as it is in `gpt2sql psql` and gives the same rows.
export function psqlText(sql, params) {
  const lines = Object.entries(params).map(([k, v]) =>
    `\\set ${k} '${v === null ? "" : String(v).replaceAll("\\", "\\\\").replaceAll("'", "''").replaceAll("\n", "\\n")}'`);
  const body = sql.replace(/%\((\w+)\)s/g, (_, k) => (params[k] === null ? "NULL" : `:'${k}'`));
  return (lines.length ? lines.join("\n") + "\n" : "") + body + ";";
}

export function sqlBox(result, title = "the query") {
  const box = document.createElement("div");
  box.className = "sql";
  const bar = document.createElement("div");
  bar.className = "bar";
  const label = document.createElement("span");
  label.textContent = `${title}: ${result.rows.length} row${result.rows.length === 1 ? "" : "s"}`;
  const copy = document.createElement("button");
  copy.type = "button";
  copy.textContent = "copy";
  const text = psqlText(result.sql, result.params);
  copy.addEventListener("click", async () => {
    try { await navigator.clipboard.writeText(text); copy.textContent = "copied"; }
    catch { copy.textContent = "select and copy"; }
    setTimeout(() => { copy.textContent = "copy"; }, 1500);
  });
  bar.append(label, copy);
  const pre = document.createElement("pre");
  pre.textContent = text;
  box.append(bar, pre);
  return box;
}
