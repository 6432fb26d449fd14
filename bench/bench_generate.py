"""Benchmark: generation in SQL beside NumPy, in the same run, on GPT-2's real shapes.

    python bench/bench_generate.py                      # 124M: prefill and decode at 64-960 tokens
    python bench/bench_generate.py --sizes gpt2-medium,gpt2-large,gpt2-xl --lengths 64 --dtypes float16
    python bench/bench_generate.py --batch              # 1-64 prompts decoded together
    python bench/bench_generate.py --one-core --dtypes float16   # SQL without parallel workers

Random weights in the shapes of the GPT-2 sizes (the timings depend on shapes only), loaded
through the same loader users run. The yardstick is bench/numpy_gpt2.py: float32, a KV
cache, a batched prefill, logits for the last position only, BLAS on every core. Both
sides are warm (plans and caches: SQL runs a short generation first) and compute the same
things: a prefill ends with the last position's logits; a decode step feeds one token and
chooses the next (greedy). Decode steps alternate between the two, so that a busy moment of
this shared machine slows both. Ratios are SQL time / NumPy time.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))
import synthetic  # noqa: E402
from numpy_gpt2 import NumpyGPT2  # noqa: E402

SIZES = {  # n_layer, n_embd, n_head (context 1024, vocabulary 50257 for all)
    "gpt2": (12, 768, 12), "gpt2-medium": (24, 1024, 16), "gpt2-large": (36, 1280, 20), "gpt2-xl": (48, 1600, 25),
}


def prompt_of(conn, n: int) -> str:
    """A text of exactly n tokens: common words, each one token with its leading space."""
    words = [r[0] for r in conn.execute(
        "SELECT id FROM gpt2.vocab WHERE token ~ '^Ġ[a-z]{3,8}$' ORDER BY id LIMIT 200")]
    ids = [words[(7 * i) % len(words)] for i in range(n)]
    text = conn.execute("SELECT gpt2.detokenize(%s)", (ids,)).fetchone()[0]
    assert conn.execute("SELECT gpt2.tokenize(%s)", (text,)).fetchone()[0] == ids
    return text


def prefill_both(conn, model: str, prompt: str, steps: int, reference: NumpyGPT2, ids: list[int], repeat: int = 3):
    """(SQL prefill seconds, NumPy's best prefill seconds of `repeat`, NumPy's cache and logits).
    A SQL prefill runs as the CLI runs it and ends with its first token chosen."""
    best = float("inf")
    for _ in range(repeat):
        cache = reference.new_cache()
        start = time.perf_counter()
        logits = reference.step(cache, ids)
        best = min(best, time.perf_counter() - start)
    conn.execute("SELECT gpt2.generate_start(%s, %s, %s, 0)", (prompt, model, steps + 2))
    start = time.perf_counter()
    conn.execute("SELECT gpt2.generate_prefill()")
    conn.execute("SELECT * FROM gpt2.generate_next()").fetchall()  # the prefill's logits -> the first token
    return time.perf_counter() - start, best, cache, logits


def decode_both(conn, reference: NumpyGPT2, cache, logits, steps: int) -> tuple[float, float]:
    """(SQL, NumPy) median ms per greedy decode step. The two take turns, step by step, so
    that a busy moment of this shared machine slows both rather than one of them."""
    sql_times, np_times = [], []
    for _ in range(steps):
        token = [int(np.argmax(logits))]
        reference.step(cache, token)  # untimed: wakes BLAS's threads, asleep during the SQL step (~2 ms)
        cache["n"] -= 1               # and is taken back: the timed step writes the same position
        start = time.perf_counter()
        logits = reference.step(cache, token)
        np_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        conn.execute("SELECT * FROM gpt2.generate_next()").fetchall()
        sql_times.append(time.perf_counter() - start)
    return 1000 * statistics.median(sql_times), 1000 * statistics.median(np_times)


def load(conn, directory: Path, name: str, dtype: str) -> tuple[float, int]:
    from gpt2sql.loader.model import list_models, load_model

    start = time.perf_counter()
    load_model(conn, directory, name, dtype)
    seconds = time.perf_counter() - start
    return seconds, next(m["bytes"] for m in list_models(conn) if m["name"] == name)


def bench_lengths(conn, size: str, directory: Path, dtypes, lengths, steps) -> None:
    from gpt2sql.loader.model import drop_model

    reference = NumpyGPT2(directory)
    prompts = {n: prompt_of(conn, n) for n in lengths}
    ids = {n: conn.execute("SELECT gpt2.tokenize(%s)", (p,)).fetchone()[0] for n, p in prompts.items()}
    print(f"\n{size}: prefill and decode (greedy) at each context, beside NumPy float32 in the same run\n")
    print("| weights | load | size | tokens | prefill SQL | NumPy | x | decode SQL | NumPy | x |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for dtype in dtypes:
        name = f"bench-{size}-{dtype}"
        load_s, size_b = load(conn, directory, name, dtype)
        conn.execute("SELECT count(*) FROM gpt2.generate(%s, %s, 3, 0)", (prompt_of(conn, 40), name))  # warm: plans
        for n in lengths:
            prefill, np_prefill, cache, logits = prefill_both(conn, name, prompts[n], steps, reference, ids[n])
            decode, np_decode = decode_both(conn, reference, cache, logits, steps)
            print(f"| {dtype} | {load_s:.1f} s | {size_b / 2**20:,.0f} MB | {n} | {prefill:.2f} s | {np_prefill:.3f} s | "
                  f"{prefill / np_prefill:.1f}x | {decode:.0f} ms | {np_decode:.1f} ms | {decode / np_decode:.1f}x |", flush=True)
        drop_model(conn, name)


def bench_batch(conn, directory: Path, sizes: list[int], steps: int = 24) -> None:
    """Batches of `sizes` prompts of different lengths, `steps` new tokens each, greedy, float16.
    Past 16 prompts the (prompt, head) units of a prefill outnumber gpt2.units' rows and run in
    rounds (sql/75_parallel.sql)."""
    from gpt2sql.loader.model import drop_model

    reference = NumpyGPT2(directory)
    name = "bench-batch"
    load(conn, directory, name, "float16")
    lengths = [12, 31, 7, 24, 18, 40, 9, 27, 15, 36, 5, 21, 33, 11, 29, 16]
    prompts = [prompt_of(conn, lengths[i % len(lengths)] + i // len(lengths)) for i in range(max(sizes))]
    conn.execute("SELECT gpt2.complete_batch(%s, %s, 3, 0)", (prompts[:2], name))  # warm
    print(f"\nBatches: prompts of 5-40 tokens, {steps} new tokens each, greedy, float16, beside NumPy float32\n")
    print("| prompts | SQL | tokens/s | x one prompt | NumPy | tokens/s | x |")
    print("|---|---|---|---|---|---|---|")
    alone = None
    for b in sizes:
        start = time.perf_counter()
        rows = conn.execute("SELECT count(*) FROM gpt2.generate_batch(%s, %s, %s, 0)",
                            (prompts[:b], name, steps)).fetchone()[0]
        seconds = time.perf_counter() - start
        alone = alone or seconds
        start = time.perf_counter()
        caches = [reference.new_cache() for _ in range(b)]
        logits = reference.step_batch(caches, [conn.execute("SELECT gpt2.tokenize(%s)", (p,)).fetchone()[0]
                                               for p in prompts[:b]])
        for _ in range(steps - 1):
            logits = reference.step_batch(caches, [[int(t)] for t in np.argmax(logits, -1)])
        np_seconds = time.perf_counter() - start
        print(f"| {b} | {seconds:.2f} s | {rows / seconds:.1f} | {seconds / alone:.2f} | {np_seconds:.3f} s | "
              f"{b * steps / np_seconds:.0f} | {seconds / np_seconds:.1f}x |", flush=True)
    drop_model(conn, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", help="PostgreSQL with pgvector (default: the embedded server)")
    parser.add_argument("--sizes", default="gpt2", help=f"comma-separated, of {', '.join(SIZES)}")
    parser.add_argument("--lengths", default="64,256,512,960", help="prompt lengths in tokens")
    parser.add_argument("--dtypes", default="float16,float32")
    parser.add_argument("--steps", type=int, default=10, help="decode steps timed at each length (median)")
    parser.add_argument("--batch", action="store_true", help="the batch curve (gpt2's shapes) instead")
    parser.add_argument("--batch-sizes", default="1,2,4,8,16,32,64", help="with --batch: prompts per batch")
    parser.add_argument("--one-core", action="store_true",
                        help="no parallel workers (max_parallel_workers = 0): what both cores win")
    args = parser.parse_args()

    from gpt2sql import db

    conn = db.connect(args.dsn)
    if args.one_core:
        conn.execute("SET max_parallel_workers = 0")  # parallel maps then run their units in this process
    print(f"PostgreSQL {conn.execute('SHOW server_version').fetchone()[0]}, "
          f"pgvector {conn.execute('SELECT extversion FROM pg_extension WHERE extname = %s', ('vector',)).fetchone()[0]}, "
          f"NumPy {np.__version__}; {args.steps} decode steps per length (median)"
          f"{'; SQL on one core' if args.one_core else ''}")
    for size in (["gpt2"] if args.batch else args.sizes.split(",")):
        n_layer, n_embd, n_head = SIZES[size]
        tmp = Path(tempfile.mkdtemp(prefix="gpt2sql-bench-"))
        try:
            directory = synthetic.write_checkpoint(tmp, n_layer=n_layer, n_embd=n_embd, n_head=n_head, seed=0)
            if args.batch:
                bench_batch(conn, directory, [int(b) for b in args.batch_sizes.split(",")])
            else:
                bench_lengths(conn, size, directory, args.dtypes.split(","), [int(n) for n in args.lengths.split(",")],
                              args.steps)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
