"""One function per panel: validated parameters -> (SQL with %(name)s placeholders, params).

Every number the page shows comes from one of these queries, run with bound parameters
(the client never sends SQL); the page shows the query beside the picture, and running it
as shown (gpt2sql psql) gives the same rows. No model logic here: only calls of the SQL
functions in sql/ and the checks that turn bad input into a 4xx with one line.
"""

from __future__ import annotations

import json

TOP_LIMIT = 20            # alternatives per position: gpt2.top_limit() in sql/97_inspect.sql
DISTRIBUTION_ROWS = 50    # the next-token view shows the top of the 50,257, never all of them
ATTENTION_GRID_CELLS = 400_000   # rows of the all-heads grid; larger prompts: one layer at a time
PROMPT_CHARS = 100_000    # before tokenizing: a text this long is longer than any context


class BadRequest(Exception):
    """Input the page can correct: answered as 400 {"error": message}."""


def model_row(conn, name: str | None) -> dict:
    """The model's row of gpt2.models (the default model when name is empty), or BadRequest."""
    row = conn.execute("SELECT name, n_layer, n_head, n_embd, n_positions, n_vocab, dtype, source "
                       "FROM gpt2.models WHERE name = coalesce(%s, gpt2.default_model())", (name or None,)).fetchone()
    if row is None:
        names = [r[0] for r in conn.execute("SELECT name FROM gpt2.models ORDER BY name")]
        raise BadRequest(f"unknown model {name!r}; loaded: {', '.join(names) or 'none (gpt2sql load gpt2)'}"
                         if name else "no model is loaded (gpt2sql load gpt2)")
    keys = ("name", "n_layer", "n_head", "n_embd", "n_positions", "n_vocab", "dtype", "source")
    return dict(zip(keys, row))


def integer(q: dict, key: str, lo: int, hi: int, default: int | None = None) -> int:
    """q[key] as an int in lo..hi (inclusive), or BadRequest naming the range."""
    raw = q.get(key)
    if raw in (None, ""):
        if default is None:
            raise BadRequest(f"{key} is required")
        return default
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise BadRequest(f"{key} must be an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise BadRequest(f"{key} {value} is out of range ({lo}..{hi})")
    return value


def number(q: dict, key: str, lo: float, hi: float, default: float) -> float:
    raw = q.get(key)
    if raw in (None, ""):
        return default
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise BadRequest(f"{key} must be a number, got {raw!r}") from None
    if not lo <= value <= hi:  # (also refuses nan)
        raise BadRequest(f"{key} {value} is out of range ({lo}..{hi})")
    return value


def prompt_of(conn, q: dict, m: dict, key: str = "prompt") -> tuple[str, int]:
    """(the prompt, its length in tokens), non-empty and within the model's context."""
    text = q.get(key)
    if not isinstance(text, str) or not text:
        raise BadRequest(f"{key} is empty: type some text")
    if len(text) > PROMPT_CHARS or "\0" in text:
        raise BadRequest(f"{key} is longer than {PROMPT_CHARS} characters or contains NUL")
    n = conn.execute("SELECT cardinality(gpt2.tokenize(%s))", (text,)).fetchone()[0]
    if n > m["n_positions"]:
        raise BadRequest(f"{key} has {n} tokens; model {m['name']!r} sees at most {m['n_positions']}")
    return text, n


def one_token(conn, text: str | None, what: str) -> str:
    if not text:
        raise BadRequest(f"{what} is empty")
    n = conn.execute("SELECT cardinality(gpt2.tokenize(%s))", (text,)).fetchone()[0]
    if n != 1:
        raise BadRequest(f"{what} {text!r} is {n} tokens; it must be exactly one (e.g. ' Paris' with its space)")
    return text


# ---- the panels: each (conn, query parameters) -> (sql, params) ----------------------------

def tokens(conn, q):
    m = model_row(conn, q.get("model"))
    prompt, _ = prompt_of(conn, q, m)
    return ("SELECT t.pos::int - 1 AS pos, t.id, gpt2.decode_bytes(v.bytes) AS text, v.token\n"
            "FROM unnest(gpt2.tokenize(%(prompt)s)) WITH ORDINALITY AS t(id, pos)\n"
            "JOIN gpt2.vocab v ON v.id = t.id\nORDER BY t.pos", {"prompt": prompt})


def tokenizer(conn, q):
    m = model_row(conn, q.get("model"))
    prompt, _ = prompt_of(conn, q, m)
    return ("SELECT piece_no, piece, step, pair, rank, merged_id, symbols\n"
            "FROM gpt2.tokenize_trace(%(prompt)s)\nORDER BY piece_no, step", {"prompt": prompt})


def attention(conn, q):
    """Every head's weights (the grid), or one layer's when the grid would be too large."""
    m = model_row(conn, q.get("model"))
    prompt, n = prompt_of(conn, q, m)
    cells = m["n_layer"] * m["n_head"] * n * (n + 1) // 2
    params = {"prompt": prompt, "model": m["name"]}
    if q.get("layer") not in (None, ""):
        params["layer"] = integer(q, "layer", 0, m["n_layer"] - 1)
    elif cells > ATTENTION_GRID_CELLS:
        params["layer"] = 0  # e.g. a 1,024-token prompt on 12 x 12 heads: one layer at a time
    where = "\nWHERE layer = %(layer)s" if "layer" in params else ""
    return ("SELECT layer, head, query_pos, key_pos, weight\n"
            f"FROM gpt2.attention(%(prompt)s, %(model)s){where}\nORDER BY layer, head, query_pos, key_pos", params)


def attention_cell(conn, q):
    """The drill-down: the one weight clicked, and the softmax row it belongs to."""
    m = model_row(conn, q.get("model"))
    prompt, n = prompt_of(conn, q, m)
    params = {"prompt": prompt, "model": m["name"], "layer": integer(q, "layer", 0, m["n_layer"] - 1),
              "head": integer(q, "head", 0, m["n_head"] - 1), "query": integer(q, "query", 0, n - 1)}
    return ("SELECT key_pos, weight, key_pos <= %(query)s AS unmasked\n"
            "FROM gpt2.attention(%(prompt)s, %(model)s)\n"
            "WHERE layer = %(layer)s AND head = %(head)s AND query_pos = %(query)s\nORDER BY key_pos", params)


def logit_lens(conn, q):
    m = model_row(conn, q.get("model"))
    prompt, _ = prompt_of(conn, q, m)
    return ("SELECT layer, pos, rank, token, text, prob\n"
            "FROM gpt2.logit_lens(%(prompt)s, %(model)s, %(k)s)\nORDER BY layer, pos, rank",
            {"prompt": prompt, "model": m["name"], "k": integer(q, "k", 1, TOP_LIMIT, 1)})


def next_token(conn, q):
    """The distribution after the prompt, with temperature, top-k and top-p applied in SQL."""
    m = model_row(conn, q.get("model"))
    prompt, _ = prompt_of(conn, q, m)
    top_k = integer(q, "top_k", 0, m["n_vocab"], 0)
    return ("SELECT d.rank, d.token, gpt2.decode_bytes(v.bytes) AS text, d.logit, d.prob\n"
            "FROM gpt2.distribution(gpt2.intervene(%(prompt)s, '[]', %(model)s),\n"
            "                       %(temperature)s, %(top_k)s, %(top_p)s) AS d\n"
            "JOIN gpt2.vocab v ON v.id = d.token\nORDER BY d.rank\nLIMIT %(rows)s",
            {"prompt": prompt, "model": m["name"], "temperature": number(q, "temperature", 0.01, 10.0, 1.0),
             "top_k": top_k or None, "top_p": number(q, "top_p", 0.01, 1.0, 1.0),
             "rows": integer(q, "rows", 1, 1000, DISTRIBUTION_ROWS)})


def score(conn, q):
    m = model_row(conn, q.get("model"))
    prompt, _ = prompt_of(conn, q, m)
    return ("SELECT pos, token, text, logprob, rank, alternatives,\n"
            "       exp(-avg(logprob) OVER ()) AS perplexity\n"
            "FROM gpt2.score(%(prompt)s, %(model)s, %(top)s)\nORDER BY pos",
            {"prompt": prompt, "model": m["name"], "top": integer(q, "top", 0, TOP_LIMIT, 5)})


def models(conn, q):
    return ("SELECT m.name, m.n_layer, m.n_head, m.n_embd, m.n_inner, m.n_positions, m.n_vocab, m.dtype,\n"
            "       m.source, m.step, m.loaded_at::text AS loaded_at,\n"
            "       (SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c\n"
            "        WHERE c.relnamespace = m.schema_name::regnamespace AND c.relkind = 'r') AS bytes\n"
            "FROM gpt2.models m\nORDER BY m.loaded_at DESC, m.name", {})


def ablation(conn, q):
    """Before/after logits of an ablation (gpt2.intervene edits activations, never weights)."""
    m = model_row(conn, q.get("model"))
    prompt, n = prompt_of(conn, q, m)
    entries = []
    for spec in str(q.get("ablate") or "").split(","):
        spec = spec.strip()
        if not spec:
            continue
        kind, _, where = spec.partition(":")
        try:
            if kind == "head":
                layer, head = (int(x) for x in where.split("."))
                entries.append({"layer": layer, "head": head})
            elif kind in ("attn", "mlp"):
                entries.append({"layer": int(where), kind: True})
            else:
                raise ValueError
        except ValueError:
            raise BadRequest(f"ablate entry {spec!r}: write head:L.H, attn:L or mlp:L") from None
    if not entries:
        raise BadRequest("choose something to ablate: click a head, or an attention or MLP layer")
    for e in entries:
        integer(e, "layer", 0, m["n_layer"] - 1)
        if "head" in e:
            integer(e, "head", 0, m["n_head"] - 1)
    return ("WITH before AS (SELECT gpt2.intervene(%(prompt)s, '[]', %(model)s) AS logits),\n"
            "     after AS (SELECT gpt2.intervene(%(prompt)s, %(ablate)s::jsonb, %(model)s) AS logits)\n"
            "SELECT b.rank, b.token, gpt2.decode_bytes(v.bytes) AS text, b.prob AS prob_before,\n"
            "       a.prob AS prob_after, b.logit AS logit_before, a.logit AS logit_after\n"
            "FROM before, after,\n"
            "     gpt2.distribution(before.logits) AS b\n"
            "JOIN gpt2.distribution(after.logits) AS a USING (token)\n"
            "JOIN gpt2.vocab v ON v.id = b.token\nWHERE b.rank <= %(rows)s\nORDER BY b.rank",
            {"prompt": prompt, "model": m["name"], "ablate": json.dumps(entries),
             "rows": integer(q, "rows", 1, 100, 10)})


def patch_sweep(conn, q):
    m = model_row(conn, q.get("model"))
    clean, n_clean = prompt_of(conn, q, m, "clean")
    corrupted, n = prompt_of(conn, q, m, "corrupted")
    if n != n_clean:
        raise BadRequest(f"clean has {n_clean} tokens and corrupted {n}: patching needs the same length")
    site = q.get("site") or "resid_pre"
    if site not in ("resid_pre", "attn_out", "mlp_out", "z"):
        raise BadRequest(f"site {site!r}: one of resid_pre, attn_out, mlp_out, z")
    return ("SELECT layer, pos, head, logit_diff\n"
            "FROM gpt2.patch_sweep(%(clean)s, %(corrupted)s, %(answer)s, %(wrong)s, %(site)s, %(model)s)\n"
            "ORDER BY layer, pos, head",
            {"clean": clean, "corrupted": corrupted, "answer": one_token(conn, q.get("answer"), "answer"),
             "wrong": one_token(conn, q.get("wrong"), "wrong"), "site": site, "model": m["name"]})


def attribution(conn, q):
    m = model_row(conn, q.get("model"))
    prompt, _ = prompt_of(conn, q, m)
    return ("SELECT layer, component, head, contribution\n"
            "FROM gpt2.logit_attribution(%(prompt)s, %(token)s, %(model)s)\nORDER BY layer, component, head",
            {"prompt": prompt, "token": one_token(conn, q.get("token"), "token"), "model": m["name"]})


def gradients(conn, q):
    m = model_row(conn, q.get("model"))
    prompt, n = prompt_of(conn, q, m)
    if n < 2:
        raise BadRequest("the loss needs at least 2 tokens of text")
    if m["dtype"] != "float32":
        raise BadRequest(f"model {m['name']!r} is {m['dtype']}: gradients need a float32 model")
    return ("SELECT name, norm, top_rows\n"
            "FROM gpt2.gradient_summary(ARRAY[%(prompt)s], %(model)s, %(top)s)\nORDER BY name",
            {"prompt": prompt, "model": m["name"], "top": integer(q, "top", 0, TOP_LIMIT, 3)})


PANELS = {f.__name__.replace("_", "-"): f for f in (
    tokens, tokenizer, attention, attention_cell, logit_lens, next_token, score, models,
    ablation, patch_sweep, attribution, gradients)}
