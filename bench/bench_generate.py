"""Benchmark: GPT-2 124M-shaped generation in SQL beside the NumPy reference, same run.

    python bench/bench_generate.py [--dsn DSN] [--steps 20] [--prompt-tokens 64]

Random weights in GPT-2 124M's shapes (12 layers, 768 wide, 12 heads, 50257 tokens):
the timings depend on shapes only. Reports, for float32 (pgvector vector) and float16
(halfvec) weights: the load time and database size, the prefill of a prompt, and the
median milliseconds per generated token (a decode step with the KV cache + greedy choice),
each beside NumPy's time for the same work as a ratio. NumPy runs tests/reference.py
with its KV cache, in float64 (the reference the tests use) and in float32.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import reference  # noqa: E402
import synthetic  # noqa: E402


def numpy_timings(directory: Path, prompt: list[int], steps: int, dtype) -> tuple[float, float]:
    """(prefill seconds, median ms per decode step) of the NumPy reference."""
    hparams, params = reference.load(directory, dtype=dtype)
    start = time.perf_counter()
    logits, cache = reference.prefill(params, hparams, prompt)
    prefill = time.perf_counter() - start
    times = []
    for pos in range(len(prompt), len(prompt) + steps):
        token = int(np.argmax(logits))
        start = time.perf_counter()
        logits, cache = reference.decode_step(params, hparams, cache, token, pos)
        token = int(np.argmax(logits))
        times.append(time.perf_counter() - start)
    return prefill, 1000 * statistics.median(times)


def sql_timings(conn, model: str, prompt_text: str, steps: int, sampling: bool) -> tuple[float, float]:
    """(prefill seconds, median ms per generated token) in SQL, as the CLI runs it."""
    knobs = (1.0, 50, 1.0) if sampling else (0.0, None, 1.0)
    start = time.perf_counter()
    conn.execute("SELECT gpt2.generate_start(%s, %s, %s, %s, %s, %s, 1)", (prompt_text, model, steps + 1) + knobs)
    conn.execute("SELECT gpt2.generate_prefill()")
    prefill = time.perf_counter() - start
    conn.execute("SELECT * FROM gpt2.generate_next()")  # the first token needs no decode step
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        conn.execute("SELECT * FROM gpt2.generate_next()").fetchone()
        times.append(time.perf_counter() - start)
    return prefill, 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", help="PostgreSQL with pgvector (default: the embedded server)")
    parser.add_argument("--steps", type=int, default=20, help="decode steps to time")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    args = parser.parse_args()

    from gpt2sql import db
    from gpt2sql.loader.model import drop_model, list_models, load_model

    conn = db.connect(args.dsn)
    directory = synthetic.write_checkpoint(Path(tempfile.mkdtemp(prefix="gpt2sql-bench-")),
                                           **synthetic.CONFIGS["gpt2-124M"], seed=0)
    prompt = [(1000 + 37 * i) % 50000 for i in range(args.prompt_tokens)]
    prompt_text = conn.execute("SELECT gpt2.detokenize(%s)", (prompt,)).fetchone()[0]
    prompt = conn.execute("SELECT gpt2.tokenize(%s)", (prompt_text,)).fetchone()[0]

    rows = []
    np64 = numpy_timings(directory, prompt, args.steps, np.float64)
    np32 = numpy_timings(directory, prompt, args.steps, np.float32)
    for dtype in ("float32", "float16"):
        name = f"bench-124m-{dtype}"
        start = time.perf_counter()
        load_model(conn, directory, name, dtype)
        load_s = time.perf_counter() - start
        size = next(m["bytes"] for m in list_models(conn) if m["name"] == name)
        sql_timings(conn, name, prompt_text, 3, False)  # warm the caches and the plans
        prefill, greedy = sql_timings(conn, name, prompt_text, args.steps, False)
        _, sampled = sql_timings(conn, name, prompt_text, args.steps, True)
        rows.append((dtype, load_s, size, prefill, greedy, sampled))
        drop_model(conn, name)

    print(f"prompt: {len(prompt)} tokens; {args.steps} decode steps; NumPy {np.__version__}")
    print(f"NumPy reference, float64: prefill {np64[0]:.3f} s, decode {np64[1]:.1f} ms/token")
    print(f"NumPy reference, float32: prefill {np32[0]:.3f} s, decode {np32[1]:.1f} ms/token\n")
    print("| weights | load | size | prefill (x NumPy f64 / f32) | decode, greedy ms/token (x f64 / f32) | decode, top-k 50 sampling |")
    print("|---|---|---|---|---|---|")
    for dtype, load_s, size, prefill, greedy, sampled in rows:
        print(f"| {dtype} | {load_s:.1f} s | {size / 2**20:.0f} MB | {prefill:.2f} s ({prefill / np64[0]:.1f}x / {prefill / np32[0]:.1f}x) "
              f"| {greedy:.0f} ({greedy / np64[1]:.1f}x / {greedy / np32[1]:.1f}x) "
              f"| {sampled:.0f} ({sampled / np64[1]:.1f}x / {sampled / np32[1]:.1f}x) |")


if __name__ == "__main__":
    main()
