"""Attention with wide scores: a prefill on checkpoints whose attention scores are 10x and 100x
wider than the ordinary one's, beside it, in the same run.

    python bench/bench_attention.py                     # 4 layers of 124M's width, 300 tokens
    python bench/bench_attention.py --layers 12 --tokens 960

The checkpoints are one random checkpoint in 124M's per-layer shapes (tests/synthetic.py),
with the query and key columns of every c_attn multiplied by sqrt(10) and sqrt(100): every
score is 10x or 100x the ordinary one's. softmax's first pass is shifted by each query's
score on its own key; where the row maximum lies more than 33 above it, the kernel makes a
second pass shifted by the maximum (sql/60_attention.sql). Before that second pass existed,
such queries fell back to a row-by-row path: a 300-token prefill took 33.7 s instead of 0.99 s.
Times: the median of 3 prefills of the same prompt (gpt2.transformer), float16 weights.
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


def checkpoint(directory: Path, layers: int, factor: float) -> Path:
    from safetensors.numpy import load_file, save_file

    import synthetic

    if not (directory / "model.safetensors").exists():
        synthetic.write_checkpoint(directory, n_layer=layers, n_embd=768, n_head=12, n_positions=1024, seed=3)
        tensors = load_file(directory / "model.safetensors")
        for name, w in tensors.items():
            if name.endswith("attn.c_attn.weight"):
                w[:, : 2 * 768] *= np.float32(np.sqrt(factor))
        save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dsn")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--tokens", type=int, default=300)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()

    from gpt2sql import db
    from gpt2sql.loader.model import load_model

    conn = db.connect(args.dsn)
    ids = [(7919 * i + 464) % 50257 for i in range(args.tokens)]
    root = Path(tempfile.gettempdir()) / "gpt2sql-bench-attention"
    times = {}
    for factor in (1, 10, 100):
        name = f"bench-scores-x{factor}-{args.layers}"
        if conn.execute("SELECT 1 FROM gpt2.models WHERE name = %s", (name,)).fetchone() is None:
            load_model(conn, checkpoint(root / f"x{factor}-{args.layers}", args.layers, factor), name, "float16")
        conn.execute("SELECT gpt2.use_model(%s)", (name,))
        conn.execute("SELECT cardinality(gpt2.transformer(%s, 0))", (ids[:20],))  # warm
        runs = []
        for _ in range(args.runs):
            start = time.perf_counter()
            conn.execute("SELECT cardinality(gpt2.transformer(%s, 0))", (ids,))
            runs.append(time.perf_counter() - start)
        times[factor] = statistics.median(runs)
    print(f"{args.tokens}-token prefill, {args.layers} layers of 124M's width, float16, median of {args.runs}:")
    for factor, seconds in times.items():
        print(f"  scores x{factor:<3}  {seconds:6.2f} s   {seconds / times[1]:.2f}x the ordinary checkpoint")


if __name__ == "__main__":
    main()
