"""The kernels one by one: what a product costs inside PostgreSQL, and the logits' passes.

    python bench/bench_kernels.py [--dsn DSN] [--dtype float16] [--reps 20]

A one-layer random model at GPT-2 124M's width (768 wide, 50,257 tokens) is loaded, and each
query is timed inside the server (best of --reps, so no client round trip and the least
disturbed run): mlp.c_fc (768 -> 3,072, GELU) through the linear kernels at 1-16 positions,
the same products with no kernel around them, the LM head, and the passes over 50,257
logits that every decode step makes for each sequence (logsumexp, argmax), beside the
unnest() forms they replaced. docs/performance.md's per-product figures come from here.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
import synthetic  # noqa: E402

TIMER = """
CREATE FUNCTION pg_temp.best_ms(q text, xs vector[], logits float8[], reps int) RETURNS float8
LANGUAGE plpgsql AS $$
DECLARE
    t0 timestamptz;
    best float8 := 'Infinity';
BEGIN
    FOR i IN 0 .. reps LOOP                                  -- the first run plans, and is not counted
        t0 := clock_timestamp();
        EXECUTE q USING xs, logits;
        IF i > 0 THEN best := least(best, extract(epoch FROM clock_timestamp() - t0) * 1000); END IF;
    END LOOP;
    RETURN best;
END
$$"""

FC = "'mlp.c_fc', 0, 0"
COLUMNS, VOCAB = 3072, 50257
CASES = [  # (what, query on $1 = xs [16 positions], $2 = logits, products it makes)
    ("linear_1, 1 position", f"SELECT gpt2.linear_1({FC}, $1[1], 'gelu')", COLUMNS),
    ("linear_2, 2 positions", f"SELECT gpt2.linear_2({FC}, $1[1:2], 'gelu')", 2 * COLUMNS),
    ("linear_4, 4 positions", f"SELECT gpt2.linear_4({FC}, $1[1:4], 'gelu')", 4 * COLUMNS),
    ("linear_8, 8 positions", f"SELECT gpt2.linear_8({FC}, $1[1:8], 'gelu')", 8 * COLUMNS),
    ("linear_16, 16 positions", f"SELECT gpt2.linear_16({FC}, $1, 'gelu')", 16 * COLUMNS),
    ("linear_16, 2 positions", f"SELECT gpt2.linear_16({FC}, $1[1:2], 'gelu')", 2 * COLUMNS),
    ("bare <#>, 1 per row", "SELECT sum(c.w <#> q.x) FROM (SELECT $1[1]::wvec AS x OFFSET 0) AS q, conv1d c "
     "WHERE c.tensor = 'mlp.c_fc' AND c.layer = 0", COLUMNS),
    ("bare <#>, 16 per row", "SELECT sum(" + " + ".join(f"(c.w <#> q.x{i})" for i in range(1, 17)) + ") FROM (SELECT "
     + ", ".join(f"$1[{i}]::wvec AS x{i}" for i in range(1, 17)) + " OFFSET 0) AS q, conv1d c "
     "WHERE c.tensor = 'mlp.c_fc' AND c.layer = 0", 16 * COLUMNS),
    ("head_products_1, 1 position", "SELECT gpt2.head_products_1($1[1])", VOCAB),
    ("head_products_16, 16 positions", "SELECT gpt2.head_products_16($1)", 16 * VOCAB),
]
PASSES = [  # over one position's logits
    ("gpt2.logsumexp (two loops)", "SELECT gpt2.logsumexp($2)"),
    ("logsumexp as unnest() + aggregates", "SELECT m.m + ln(sum(exp(greatest(l - m.m, -700)))) "
     "FROM (SELECT max(l) AS m FROM unnest($2) AS l) AS m, unnest($2) AS l GROUP BY m.m"),
    ("gpt2.argmax (a loop)", "SELECT gpt2.argmax($2)"),
    ("argmax as ORDER BY ... LIMIT 1", "SELECT (v.t - 1)::int FROM unnest($2) WITH ORDINALITY AS v(l, t) "
     "ORDER BY v.l DESC, v.t LIMIT 1"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", help="PostgreSQL with pgvector (default: the embedded server)")
    parser.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()

    from gpt2sql import db
    from gpt2sql.loader.model import drop_model, load_model

    conn = db.connect(args.dsn)
    name = f"bench-kernels-{args.dtype}"
    tmp = Path(tempfile.mkdtemp(prefix="gpt2sql-bench-"))
    try:
        load_model(conn, synthetic.write_checkpoint(tmp, n_layer=1, n_embd=768, n_head=12, seed=0), name, args.dtype)
        conn.execute("SELECT gpt2.use_model(%s)", (name,))
        conn.execute(TIMER)
        xs = conn.execute("SELECT array_agg(w::vector ORDER BY token) FROM wte WHERE token < 16").fetchone()[0]
        logits = conn.execute("SELECT gpt2.head_products_1(w::vector) FROM wte WHERE token = 50").fetchone()[0]

        def best(query: str) -> float:
            return conn.execute("SELECT pg_temp.best_ms(%s, %s::vector[], %s, %s)",
                                (query, xs, logits, args.reps)).fetchone()[0]

        print(f"PostgreSQL {conn.execute('SHOW server_version').fetchone()[0]}, {args.dtype} weights, "
              f"best of {args.reps} in the server\n")
        print("| kernel | ms | us per 768-wide product |\n|---|---|---|")
        for what, query, products in CASES:
            ms = best(query)
            print(f"| {what} | {ms:.2f} | {1000 * ms / products:.3f} |", flush=True)
        print(f"\n| pass over {VOCAB:,} logits | ms |\n|---|---|")
        for what, query in PASSES:
            print(f"| {what} | {best(query):.2f} |", flush=True)
        conn.rollback()
        drop_model(conn, name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
