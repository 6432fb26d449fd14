"""Benchmark: many prompts decoded together (gpt2.generate_batch) beside the same prompts one
after another (gpt2.generate) and beside NumPy's batched decode, on GPT-2 124M's shapes.

    python bench/bench_batch.py                         # 1, 2, 4, 8, 16, 32, 64 prompts
    python bench/bench_batch.py --sizes 1,8,32 --steps 24

Random float16 weights in 124M's shapes (the timings depend on shapes only), loaded through
the user's loader. Prompts of 5-40 tokens, `steps` new tokens each, greedy; each timing is
prefill and decode, as a user calls them. "one after another" runs each of the first b
prompts alone (each prompt once, for the largest batch; a batch of b sums its prompts' times)
and checks that the batch gave every prompt the same tokens. The yardstick is
bench/numpy_gpt2.py (float32, a KV cache, batched prefill and decode, BLAS on every core);
OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE are unset in this process only, before NumPy loads
OpenBLAS, so that it picks its own kernel (printed, from threadpoolctl).
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):  # (this process only: before NumPy loads BLAS)
    os.environ.pop(_var, None)

import argparse  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))
import synthetic  # noqa: E402
from bench_generate import SIZES, load, prompt_of  # noqa: E402
from numpy_gpt2 import NumpyGPT2  # noqa: E402

LENGTHS = [12, 31, 7, 24, 18, 40, 9, 27, 15, 36, 5, 21, 33, 11, 29, 16]  # prompt lengths, in turn


def blas_kernel() -> str:
    from threadpoolctl import threadpool_info

    return "; ".join(f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')} "
                     f"({i.get('num_threads')} threads)" for i in threadpool_info()) or "no BLAS found"


def numpy_batch(reference: NumpyGPT2, ids: list[list[int]], steps: int) -> float:
    """Seconds for NumPy to prefill the prompts together and decode `steps` tokens each (greedy)."""
    start = time.perf_counter()
    caches = [reference.new_cache() for _ in ids]
    logits = reference.step_batch(caches, ids)
    for _ in range(steps - 1):
        logits = reference.step_batch(caches, [[int(t)] for t in np.argmax(logits, -1)])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", help="PostgreSQL with pgvector (default: the embedded server)")
    parser.add_argument("--sizes", default="1,2,4,8,16,32,64", help="prompts per batch")
    parser.add_argument("--steps", type=int, default=24, help="new tokens per prompt")
    args = parser.parse_args()
    sizes = [int(b) for b in args.sizes.split(",")]

    from gpt2sql import db
    from gpt2sql.loader.model import drop_model

    conn = db.connect(args.dsn)
    print(f"PostgreSQL {conn.execute('SHOW server_version').fetchone()[0]}, NumPy {np.__version__}, "
          f"BLAS: {blas_kernel()}")
    n_layer, n_embd, n_head = SIZES["gpt2"]
    tmp = Path(tempfile.mkdtemp(prefix="gpt2sql-bench-"))
    name = "bench-batch"
    try:
        directory = synthetic.write_checkpoint(tmp, n_layer=n_layer, n_embd=n_embd, n_head=n_head, seed=0)
        reference = NumpyGPT2(directory)
        load(conn, directory, name, "float16")
        prompts = [prompt_of(conn, LENGTHS[i % len(LENGTHS)] + i // len(LENGTHS)) for i in range(max(sizes))]
        ids = [conn.execute("SELECT gpt2.tokenize(%s)", (p,)).fetchone()[0] for p in prompts]
        conn.execute("SELECT gpt2.complete_batch(%s, %s, 3, 0)", (prompts[:4], name))  # warm: plans, workers
        numpy_batch(reference, ids[:2], 3)

        solo_seconds, solo_tokens = [], []                 # each prompt alone, once
        for p in prompts:
            start = time.perf_counter()
            solo_tokens.append([r[0] for r in conn.execute("SELECT id FROM gpt2.generate(%s, %s, %s, 0)",
                                                           (p, name, args.steps))])
            solo_seconds.append(time.perf_counter() - start)

        print(f"\nGPT-2 124M shapes, float16; prompts of 5-40 tokens, {args.steps} new tokens each, greedy; "
              "tokens/s = new tokens / seconds (prefill included)\n")
        print("| prompts | batch SQL | tokens/s | one after another | tokens/s | batch gain | same tokens "
              "| NumPy batch | tokens/s | SQL / NumPy |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for b in sizes:
            start = time.perf_counter()
            rows = conn.execute("SELECT prompt, id FROM gpt2.generate_batch(%s, %s, %s, 0) ORDER BY prompt, step",
                                (prompts[:b], name, args.steps)).fetchall()
            seconds = time.perf_counter() - start
            together = [[t for p, t in rows if p == i + 1] for i in range(b)]
            same = sum(together[i] == solo_tokens[i] for i in range(b))
            alone = sum(solo_seconds[:b])
            tokens, alone_tokens = len(rows), sum(len(t) for t in solo_tokens[:b])
            np_seconds = numpy_batch(reference, ids[:b], args.steps)
            print(f"| {b} | {seconds:.2f} s | {tokens / seconds:.2f} | {alone:.2f} s | {alone_tokens / alone:.2f} | "
                  f"{alone / seconds:.2f}x | {same}/{b} | {np_seconds:.3f} s | {b * args.steps / np_seconds:.0f} | "
                  f"{seconds / np_seconds:.0f}x |", flush=True)
        drop_model(conn, name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
