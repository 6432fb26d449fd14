"""Train a small GPT-2 from scratch, in SQL, on Pride and Prejudice (public domain).

    python bench/train_from_scratch.py                       # the run behind docs/train_loss.png
    python bench/train_from_scratch.py --steps 20 --eval-every 10    # a short one
    python bench/train_from_scratch.py --resume                # goes on after an interruption

A model with GPT-2's own initialization (gpt2sql init: every token about equally likely, loss
~ln 50257 = 10.8) trains on chapters 1-60 (bench/data/pride_and_prejudice.txt) through
gpt2.train_start / gpt2.train_next. Every --eval-every steps its loss on chapter 61, which it
never trains on, is measured with gpt2.loss. The bar to pass: the text's own unigram entropy,
-sum p log p over its token frequencies (what a model that ignores context can reach at
best): below it, the model has learned from context. Writes the loss curve (-o) and prints
the figures. Uses the same server as the CLI (--dsn, GPT2SQL_DSN, or the embedded one).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections import Counter
from pathlib import Path

TEXT = Path(__file__).parent / "data" / "pride_and_prejudice.txt"


def split_chapters(text: str) -> tuple[str, str]:
    """(chapters 1-60, chapter 61)."""
    starts = [m.start() for m in re.finditer(r"\nChapter \d+\n", text)]
    return text[: starts[60]], text[starts[60]:]


def held_out_loss(conn, model: str, ids: list[int], block: int) -> float:
    """The token-weighted mean loss over the held-out text, in blocks the model's context holds."""
    pieces = [conn.execute("SELECT gpt2.detokenize(%s)", (ids[i:i + block],)).fetchone()[0]
              for i in range(0, len(ids), block)]
    return conn.execute("SELECT gpt2.loss(%s, %s)", (pieces, model)).fetchone()[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dsn")
    p.add_argument("--name", default="pp-scratch")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", default="docs/train_loss.png")
    p.add_argument("--resume", action="store_true", help="go on with the run of --name (every step is committed)")
    args = p.parse_args()
    history = Path(args.output).with_suffix(".held-out.json")     # the held-out losses so far, for --resume

    from gpt2sql import db, plots
    from gpt2sql.loader.init import init_model

    conn = db.connect(args.dsn)
    train, held = split_chapters(TEXT.read_text(encoding="utf-8"))
    train_ids = conn.execute("SELECT gpt2.tokenize(%s)", (train,)).fetchone()[0]
    held_ids = conn.execute("SELECT gpt2.tokenize(%s)", (held,)).fetchone()[0]
    counts, n = Counter(train_ids), len(train_ids)
    unigram = -sum(c / n * math.log(c / n) for c in counts.values())
    print(f"training text: {n} tokens ({len(counts)} distinct), held out: {len(held_ids)} tokens; "
          f"unigram entropy of the training text: {unigram:.3f} nats", flush=True)

    if args.resume:
        held_out = [tuple(point) for point in json.loads(history.read_text())]
    else:
        init_model(conn, f"{args.name}-init", args.layers, args.heads, args.width, args.context, args.seed)
        conn.execute("CREATE TEMPORARY TABLE book (body text)")
        conn.execute("INSERT INTO book VALUES (%s)", (train,))
        conn.execute("""SELECT * FROM gpt2.train_start(%s, 'SELECT body FROM pg_temp.book', %s, steps => %s,
                        batch_size => %s, block_size => %s, lr => %s, warmup => %s, seed => %s, replace => true)""",
                     (f"{args.name}-init", args.name, args.steps, args.batch_size, args.block_size, args.lr,
                      args.warmup, args.seed))
        held_out = [(0, held_out_loss(conn, args.name, held_ids, args.context))]
        history.write_text(json.dumps(held_out))
        print(f"step 0: held-out loss {held_out[-1][1]:.3f} (ln 50257 = {math.log(50257):.3f})", flush=True)
    started = time.monotonic()
    train_seconds, steps_here = 0.0, 0
    while True:
        t = time.monotonic()
        row = conn.execute("SELECT step, loss, lr FROM gpt2.train_next(%s)", (args.name,)).fetchone()
        if row is None:
            break
        train_seconds += time.monotonic() - t
        steps_here += 1
        step, loss, lr = row
        if step % args.eval_every == 0 or step == args.steps:
            held_out.append((step, held_out_loss(conn, args.name, held_ids, args.context)))
            history.write_text(json.dumps(held_out))
            print(f"step {step}: training loss {loss:.3f}, held-out loss {held_out[-1][1]:.3f}, lr {lr:.2e}, "
                  f"{train_seconds / steps_here:.1f} s a step", flush=True)
    log = conn.execute("SELECT step, loss, lr FROM gpt2.train_log WHERE model = %s ORDER BY step", (args.name,)).fetchall()
    plots.loss_curve(args.output, log, f"{args.name} ({args.layers} layers, width {args.width}; random init)",
                     held_out=held_out, baselines={f"unigram entropy of the text ({unigram:.2f})": unigram,
                                                  f"ln 50257 ({math.log(50257):.2f})": math.log(50257)})
    total = time.monotonic() - started
    seconds = conn.execute("SELECT sum(seconds) FROM gpt2.train_log WHERE model = %s", (args.name,)).fetchone()[0]
    print(f"{args.steps} steps in {seconds / 60:.1f} min of training steps ({total / 60:.1f} min here with the "
          f"evaluations); "
          f"held-out loss {held_out[0][1]:.3f} -> {held_out[-1][1]:.3f}, unigram entropy {unigram:.3f}: "
          f"{'below' if held_out[-1][1] < unigram else 'NOT below'} it; wrote {args.output}")
    sys.exit(0 if held_out[-1][1] < unigram else 1)


if __name__ == "__main__":
    main()
