"""Benchmark: an activation-patching sweep in SQL beside NumPy doing the same sweep, same run.

    python bench/bench_intervene.py                 # GPT-2 124M's shapes, float16 and float32
    python bench/bench_intervene.py --dtypes float16 --dsn postgresql://...

gpt2.patch_sweep(clean, corrupted, ' Mary', ' John', 'resid_pre') on the indirect-object
prompts (14 tokens each): for every layer and position, the corrupted prompt with the
clean run's residual stream at that point. Random weights in 124M's shapes (the time depends
on the shapes only), loaded with `gpt2sql load DIR --name ... --dtype ...`.

Both sides reuse the two cached runs as sql/98_intervene.sql does: the clean and corrupted
prompts run once, recorded; the patched runs of one layer start at that layer from the
corrupted residual stream (the patch applied), together as a batch (a sequence each), and
end with two logits, ln_f(x) . wte[answer] and . wte[wrong]. NumPy: bench/numpy_gpt2.py's
float32 GPT-2 (its layer norm, GELU and attention), BLAS on every core, best of 3. Beside
them, SQL's plain forward pass of the prompt, times the number of patched runs: what running
each patched run from scratch, one at a time, would cost. x = SQL time / NumPy time.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
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

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPTED = "When John and Mary went to the store, John gave a drink to"
ANSWER, WRONG = " Mary", " John"


def blocks(model: NumpyGPT2, x, first: int, record: list | None = None):
    """x [runs, n, n_embd], each run a sequence from position 0, through blocks first..; record
    gets the residual stream entering each block (and after the last)."""
    runs, n, d = x.shape
    for b in model.blocks[first:]:
        if record is not None:
            record.append(x.copy())
        qkv = model._ln(x, *b["ln_1"]) @ b["attn_w"] + b["attn_b"]           # [runs, n, 3 d]
        q, k, v = np.split(qkv, 3, axis=-1)
        z = np.stack([model._attend(q[r], k[r], v[r], 0) for r in range(runs)])
        x = x + z @ b["proj_w"] + b["proj_b"]
        x = x + model._gelu(model._ln(x, *b["ln_2"]) @ b["fc_w"] + b["fc_b"]) @ b["out_w"] + b["out_b"]
    if record is not None:
        record.append(x.copy())
    return x


def numpy_sweep(model: NumpyGPT2, clean: list[int], corrupted: list[int], answer: int, wrong: int):
    """[n_layer, n] logit differences, the way gpt2.patch_sweep computes them."""
    n = len(clean)
    source, base = [], []
    blocks(model, (model.wte[clean] + model.wpe[:n])[None], 0, source)          # the two cached runs
    blocks(model, (model.wte[corrupted] + model.wpe[:n])[None], 0, base)
    direction = model.wte[answer] - model.wte[wrong]
    out = []
    for layer in range(len(model.blocks)):
        x = np.repeat(base[layer], n, axis=0)                                    # [n runs, n, d]
        x[np.arange(n), np.arange(n)] = source[layer][0]                         # run p patches position p
        y = model._ln(blocks(model, x, layer)[:, -1], *model.ln_f)               # [n runs, d]
        out.append(y @ direction)
    return np.array(out)


def load(dsn: str | None, directory: Path, name: str, dtype: str) -> None:
    args = [str(Path(sys.executable).parent / "gpt2sql")] + (["--dsn", dsn] if dsn else [])
    subprocess.run(args + ["load", str(directory), "--name", name, "--dtype", dtype], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", help="PostgreSQL with pgvector (default: the embedded server)")
    parser.add_argument("--dtypes", default="float16,float32")
    args = parser.parse_args()

    from gpt2sql import db
    from gpt2sql.loader.model import drop_model

    conn = db.connect(args.dsn)
    tokens = lambda t: conn.execute("SELECT gpt2.tokenize(%s)", (t,)).fetchone()[0]  # noqa: E731
    clean, corrupted, answer, wrong = tokens(CLEAN), tokens(CORRUPTED), tokens(ANSWER)[0], tokens(WRONG)[0]
    n_layer, n = synthetic.CONFIGS["gpt2-124M"]["n_layer"], len(clean)
    print(f"PostgreSQL {conn.execute('SHOW server_version').fetchone()[0]}, "
          f"pgvector {conn.execute('SELECT extversion FROM pg_extension WHERE extname = %s', ('vector',)).fetchone()[0]}, "
          f"NumPy {np.__version__}")
    print(f"\nGPT-2 124M's shapes, random weights: a resid_pre sweep over {n_layer} layers x {n} positions "
          f"({n_layer * n} patched runs) of {n}-token prompts\n")
    print("| weights | sweep, SQL | NumPy | x | SQL from scratch, one run at a time (estimate) | max abs diff |")
    print("|---|---|---|---|---|---|")
    tmp = Path(tempfile.mkdtemp(prefix="gpt2sql-bench-"))
    try:
        directory = synthetic.write_checkpoint(tmp, **synthetic.CONFIGS["gpt2-124M"], seed=0)
        reference = NumpyGPT2(directory)
        for dtype in args.dtypes.split(","):
            name = f"bench-intervene-{dtype}"
            load(args.dsn, directory, name, dtype)
            conn.execute("SELECT gpt2.logit_diff(%s, %s, %s, %s)", (CLEAN, ANSWER, WRONG, name))   # warm: plans
            start = time.perf_counter()
            conn.execute("SELECT gpt2.logit_diff(%s, %s, %s, %s)", (CLEAN, ANSWER, WRONG, name))
            one_run = time.perf_counter() - start
            start = time.perf_counter()
            rows = conn.execute("SELECT layer, pos, logit_diff FROM gpt2.patch_sweep(%s, %s, %s, %s, 'resid_pre', %s)",
                                (CLEAN, CORRUPTED, ANSWER, WRONG, name)).fetchall()
            sql = time.perf_counter() - start
            best = float("inf")
            for _ in range(3):
                start = time.perf_counter()
                want = numpy_sweep(reference, clean, corrupted, answer, wrong)
                best = min(best, time.perf_counter() - start)
            got = np.zeros((n_layer, n))
            for layer, pos, diff in rows:
                got[layer, pos] = diff
            print(f"| {dtype} | {sql:.1f} s | {best:.3f} s | {sql / best:.0f}x | {one_run * n_layer * n:.0f} s "
                  f"({one_run:.2f} s a run) | {np.abs(got - want).max():.2g} |", flush=True)
            drop_model(conn, name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
