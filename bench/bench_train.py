"""A training step in SQL beside PyTorch's, on GPT-2 124M's shapes, measured in the same run.

    python bench/bench_train.py                      # blocks of 64 and 256 tokens, batch 1 and 4
    python bench/bench_train.py --configs 64x1       # one of them

SQL: gpt2.train_step (forward, backward, clipping, AdamW, the transposed weights rewritten)
on a float32 model with random weights in 124M's shapes (tests/synthetic.py, loaded by the
loader); the first configuration's step follows an untimed one (which makes the transposed weights
and AdamW's state).
PyTorch: transformers' GPT2LMHeadModel on the same checkpoint, float32 on the CPU with 2
threads, the same token-weighted loss over the same texts, backward, clip_grad_norm_ and
torch.optim.AdamW.step: best of 3. x = SQL time / PyTorch time. Also: the memory a step takes
(the server process's peak resident set, and the temporary tables it writes).
Run it on a quiet machine: nothing else running (see docs/performance.md).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

TEXT = Path(__file__).parent / "data" / "pride_and_prejudice.txt"


def texts_of(conn, block: int, batch: int) -> tuple[list[str], list[list[int]]]:
    """batch texts of `block` tokens each, cut from Pride and Prejudice (and their token ids)."""
    opening = TEXT.read_text(encoding="utf-8")[:20_000]          # ~4,500 tokens: enough for 256 x 4
    ids = conn.execute("SELECT gpt2.tokenize(%s)", (opening,)).fetchone()[0]
    texts, tokens = [], []
    for k in range(batch):
        piece = conn.execute("SELECT gpt2.detokenize(%s)", (ids[k * block:(k + 1) * block],)).fetchone()[0]
        texts.append(piece)
        tokens.append(conn.execute("SELECT gpt2.tokenize(%s)", (piece,)).fetchone()[0])
    return texts, tokens


def torch_step(directory, tokens: list[list[int]], runs: int = 3) -> float:
    import torch
    from transformers import GPT2LMHeadModel

    import torch_twin

    torch.set_num_threads(2)
    model = GPT2LMHeadModel.from_pretrained(directory, torch_dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    best = float("inf")
    for _ in range(runs + 1):  # the first wakes everything up
        t = time.perf_counter()
        opt.zero_grad()
        loss = torch_twin.lm_loss(model, tokens)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        best = min(best, time.perf_counter() - t) if _ else best
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dsn")
    p.add_argument("--configs", default="64x1,256x1,64x4,256x4", help="BLOCKxBATCH, comma-separated")
    args = p.parse_args()

    import psutil

    import synthetic
    from gpt2sql import db
    from gpt2sql.loader.model import load_model

    conn = db.connect(args.dsn)
    directory = Path(tempfile.gettempdir()) / "gpt2sql-bench-train-124M"
    if not (directory / "model.safetensors").exists():
        synthetic.write_checkpoint(directory, **synthetic.CONFIGS["gpt2-124M"], seed=0)
    if conn.execute("SELECT 1 FROM gpt2.models WHERE name = 'bench-train-124M'").fetchone() is None:
        load_model(conn, directory, "bench-train-124M", "float32")
    conn.execute("SELECT gpt2.copy_model('bench-train-124M', 'bench-train-step', true)")
    backend = psutil.Process(conn.info.backend_pid)
    print(f"{'block':>5} {'batch':>5} {'tokens':>6} {'SQL step':>9} {'PyTorch':>8} {'x':>6}  peak RSS   temp tables", flush=True)
    for config in args.configs.split(","):
        block, batch = (int(x) for x in config.split("x"))
        texts, tokens = texts_of(conn, block, batch)
        if config == args.configs.split(",")[0]:  # untimed: makes the transposed weights and AdamW's state
            conn.execute("SELECT * FROM gpt2.train_step('bench-train-step', %s, 1e-4)", (texts,))
        peak = [0]

        def sample():
            try:
                peak[0] = max(peak[0], backend.memory_info().rss)
            except psutil.Error:
                pass

        import threading

        done = threading.Event()
        sampler = threading.Thread(target=lambda: [sample() or time.sleep(0.2) for _ in iter(done.is_set, True)])
        sampler.start()
        t = time.perf_counter()
        conn.execute("SELECT * FROM gpt2.train_step('bench-train-step', %s, 1e-4)", (texts,))
        sql = time.perf_counter() - t
        done.set()
        sampler.join()
        temp = conn.execute("""SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c
                               WHERE c.relnamespace = pg_my_temp_schema() AND c.relkind = 'r'""").fetchone()[0]
        ref = torch_step(directory, tokens)
        print(f"{block:>5} {batch:>5} {sum(map(len, tokens)):>6} {sql:>8.1f}s {ref:>7.2f}s {sql / ref:>5.0f}x"
              f"  {peak[0] / 2**30:.1f} GB   {temp / 2**20:.0f} MB", flush=True)


if __name__ == "__main__":
    main()
