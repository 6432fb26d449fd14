"""Tokens per second of gpt2.tokenize inside PostgreSQL, beside tiktoken on the same text.

    python bench/bench_tokenizer.py [--dsn DSN] [--runs 9] [--long-word 2000]

Texts: bench/data/english.txt (~1,000 tokens of prose), bench/data/bpe_reference.py
(~1,100 tokens of Python), and one "word" of --long-word random ASCII letters (seed 0): BPE's
worst case, since it rescans the word after every merge. Each is tokenized once in a fresh
connection (first call: the regex is compiled, plans are made), then --runs times; the
median is reported. tiktoken is built offline from loader/data, as in the tests, and must
give the same ids.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import click

HERE = Path(__file__).resolve().parent
TEXTS = [HERE / "data" / "english.txt", HERE / "data" / "bpe_reference.py"]
PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def tiktoken_gpt2():
    """tiktoken's GPT-2 encoding from loader/data (no download), as tests/test_tokenizer.py builds it."""
    import tiktoken
    import tiktoken.load

    data = HERE.parent / "loader" / "data"
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(data / "vocab.bpe"), encoder_json_file=str(data / "encoder.json")
    )
    return tiktoken.Encoding(name="gpt2-offline", pat_str=PATTERN, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256}, explicit_n_vocab=50257)


def median_seconds(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def long_word(letters: int) -> str:
    import random
    import string

    return "".join(random.Random(0).choices(string.ascii_letters, k=letters))


def bench_text(conn, enc, name: str, text: str, runs: int) -> dict:
    tokenize = lambda: conn.execute("SELECT gpt2.tokenize(%s)", (text,)).fetchone()[0]  # noqa: E731
    first = median_seconds(tokenize, 1)
    ids = tokenize()
    want = enc.encode_ordinary(text)
    sql_s = median_seconds(tokenize, runs)
    tik_s = median_seconds(lambda: enc.encode_ordinary(text), max(runs, 50))
    return {"name": name, "tokens": len(ids), "same": ids == want, "first": first, "sql": sql_s, "tiktoken": tik_s}


@click.command()
@click.option("--dsn", default=None, envvar="GPT2SQL_DSN", help="PostgreSQL with pgvector. Default: the embedded server.")
@click.option("--runs", default=9, show_default=True, type=click.IntRange(1), help="Timed runs per text (median).")
@click.option("--long-word", "letters", default=2000, show_default=True, type=click.IntRange(1),
              help="Letters in the random word (100000: docs/performance.md's long word).")
def main(dsn: str | None, runs: int, letters: int) -> None:
    """Benchmark gpt2.tokenize against tiktoken: English, Python, and one long random word."""
    from gpt2sql import db

    enc = tiktoken_gpt2()
    conn = db.connect(dsn)
    version = conn.execute("SHOW server_version").fetchone()[0]
    click.echo(f"PostgreSQL {version}; median of {runs} runs; tiktoken median of {max(runs, 50)}")
    click.echo(f"{'text':<27} {'tokens':>6} {'first call':>10} {'sql median':>10} {'sql tok/s':>10} "
               f"{'tiktoken tok/s':>14} {'tiktoken/sql':>12}  ids")
    texts = [(path.name, path.read_text(encoding="utf-8")) for path in TEXTS]
    texts.append((f"random word ({letters:,} letters)", long_word(letters)))
    for name, text in texts:
        r = bench_text(conn, enc, name, text, runs)
        click.echo(f"{r['name']:<27} {r['tokens']:>6} {r['first'] * 1e3:>7.1f} ms {r['sql'] * 1e3:>7.1f} ms "
                   f"{r['tokens'] / r['sql']:>10,.0f} {r['tokens'] / r['tiktoken']:>14,.0f} "
                   f"{r['sql'] / r['tiktoken']:>11,.0f}x  {'same as tiktoken' if r['same'] else 'DIFFERENT FROM TIKTOKEN'}")
    conn.close()


if __name__ == "__main__":
    main()
