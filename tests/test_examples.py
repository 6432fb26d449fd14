"""The psql walk-through in sql/examples/ runs, as written, through `gpt2sql psql`, and
prints what it says it does: checks that hold for any model (the test model is random)."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import reference
import synthetic

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "sql" / "examples"
EXAMPLES = sorted(EXAMPLES_DIR.glob("*.sql"))
GPT2SQL = str(Path(sys.executable).parent / "gpt2sql")


@pytest.fixture(scope="module")
def model(runner, tmp_path_factory):
    """A small random model, loaded last so that it is the default the examples use."""
    directory = synthetic.write_checkpoint(tmp_path_factory.mktemp("examples"), **synthetic.CONFIGS["tiny"], seed=2)
    assert runner(["load", str(directory), "--name", "examples"]).exit_code == 0
    return directory


def run_example(dsn, name: str, *variables: str) -> dict[str, list[list[str]]]:
    """Run sql/examples/NAME in psql (CSV output): {first column's name: [rows of each result]}.

    CSV, because token texts may hold newlines and separators; each result starts with its
    header row, so a header row (known from the file's SELECT lists) opens a new result.
    """
    args = [GPT2SQL, "--dsn", dsn, "psql", "-X", "-q", "--csv", "-v", "ON_ERROR_STOP=1"]
    for variable in variables:
        args += ["-v", variable]
    done = subprocess.run(args + ["-f", str(EXAMPLES_DIR / name)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{name} failed:\n{done.stderr}"
    assert "ERROR" not in done.stderr, done.stderr
    headers = {"piece_no", "ids", "ord", "name", "pos", "temperature", "tokens_in_nucleus", "step", "continuation",
               "generate_start", "layer", "perplexity"}
    results: dict[str, list[list[str]]] = {}
    current = None
    for row in csv.reader(io.StringIO(done.stdout)):
        if row and row[0] in headers:
            current = [row]
            results.setdefault(row[0], []).append(current)
        else:
            current.append(row)
    return {key: [run[1:] for run in runs] for key, runs in results.items()}


def test_examples_cover_every_stage():
    names = " ".join(p.stem for p in EXAMPLES)
    for stage in ("tokenize", "embeddings", "attention", "next_token", "generate", "logit_lens", "score"):
        assert stage in names


def test_01_tokenize_shows_the_merges(dsn, model):
    out = run_example(dsn, "01_tokenize.sql")
    trace = out["piece_no"][0]
    assert [int(r[2]) for r in trace] == list(range(len(trace))), "steps 0, 1, 2, ..."
    assert trace[-1][6] == "{ĠMississ,ipp,iless,ly}"
    ranks = [int(r[4]) for r in trace[1:]]
    assert ranks == sorted(ranks), "BPE merges the lowest rank first"
    assert all(int(r[5]) == int(r[4]) + 256 for r in trace[1:]), "merged id = rank + 256"
    assert out["ids"][0] == [["{12732,3974,30608,306}", " Mississippilessly"]]
    assert [(int(r[1]), r[3]) for r in out["ord"][0]] == [(12732, " Mississ"), (3974, "ipp"), (30608, "iless"), (306, "ly")]


def test_01_tokenize_takes_the_prompt_variable(dsn, model):
    out = run_example(dsn, "01_tokenize.sql", "prompt=Hello world")
    assert out["ids"][0] == [["{15496,995}", "Hello world"]]


def test_02_embeddings_add_token_and_position(dsn, conn, model):
    prompt = "Happy New Year! I wish"
    out = run_example(dsn, "02_embeddings.sql", f"prompt={prompt}")
    assert out["name"][0][0][0] == "examples"
    rows = out["pos"][0]
    ids = conn.execute("SELECT gpt2.tokenize(%s)", (prompt,)).fetchone()[0]
    assert [int(r[0]) for r in rows] == list(range(len(ids))) and [int(r[1]) for r in rows] == ids
    vec = lambda text: np.array(text.strip("[]").split(","), dtype=np.float64)  # noqa: E731
    for pos, _id, _token, wte, wpe, x in rows:
        assert np.allclose(vec(wte) + vec(wpe), vec(x), atol=1e-6), f"x != wte + wpe at position {pos}"


def test_03_attention_rows_are_causal_distributions(dsn, conn, model):
    prompt = "The cat sat on the mat because it"
    out = run_example(dsn, "03_attention.sql", f"prompt={prompt}", "head=1")
    rows = out["pos"][0]
    assert len(rows) == len(conn.execute("SELECT gpt2.tokenize(%s)", (prompt,)).fetchone()[0])
    for pos, _token, weights in rows:
        w = [float(v) for v in weights.split()]
        assert len(w) == int(pos) + 1, "position t attends to positions 0..t"
        assert abs(sum(w) - 1) <= 0.005 * len(w) + 1e-9, f"row {pos} sums to {sum(w)} (2 decimals each)"


def test_04_next_token_shows_the_models_probabilities(dsn, conn, model):
    """softmax(logits / T) over every token, not renormalized over the 10 shown; the nucleus
    count is the first rank whose cumulative probability reaches 0.9."""
    out = run_example(dsn, "04_next_token.sql")
    table, nucleus = out["temperature"]
    hparams, params = reference.load(model)
    ids = conn.execute("SELECT gpt2.tokenize('Happy New Year! I wish')").fetchone()[0]
    logits = reference.forward(params, hparams, ids)[-1]                  # [n_vocab]
    by_t = {}
    for t, rank, token, _text, logit, prob, cumulative in table:
        by_t.setdefault(float(t), []).append((int(rank), int(token), float(logit), float(prob), float(cumulative)))
    assert sorted(by_t) == [0.5, 1.0, 2.0]
    for t, ranked in by_t.items():
        p = reference.softmax(logits / t)                                  # all n_vocab tokens
        assert [r[0] for r in ranked] == list(range(1, 11))
        assert [r[1] for r in ranked] == np.argsort(-logits, kind="stable")[:10].tolist(), "the 10 most likely"
        shown = [r[3] for r in ranked]
        want = [p[r[1]] for r in ranked]
        assert np.allclose(shown, want, atol=2e-4), f"T={t}: shown {shown}, softmax(logits / T) {want}"
        assert np.allclose([r[4] for r in ranked], np.cumsum(want), atol=5e-4), f"T={t}: cumulative"
        in_nucleus = int(np.searchsorted(np.cumsum(np.sort(p)[::-1]), 0.9) + 1)   # first rank reaching 0.9
        counts = {float(row[0]): int(row[1]) for row in nucleus}
        assert counts[t] == in_nucleus, f"T={t}: nucleus of {counts[t]} tokens, softmax says {in_nucleus}"
        cumulative = [r[4] for r in ranked]
        if in_nucleus <= 10:  # the table shows where 0.9 is reached
            assert cumulative[in_nucleus - 1] >= 0.9 - 1e-4 and (in_nucleus == 1 or cumulative[in_nucleus - 2] < 0.9 + 1e-4)
        else:
            assert cumulative[-1] < 0.9 + 1e-4
    assert by_t[0.5][0][3] > by_t[1.0][0][3] > by_t[2.0][0][3], "a lower temperature is sharper"
    assert [c for _, c in sorted((float(r[0]), int(r[1])) for r in nucleus)] == sorted(int(r[1]) for r in nucleus), \
        "a higher temperature needs more tokens for the same mass"


def test_06_logit_lens_shows_every_layer(dsn, conn, model):
    prompt = "The cat sat on the mat because it"
    out = run_example(dsn, "06_logit_lens.sql", f"prompt={prompt}")
    assert out["name"][0] == [["examples", "2"]]
    lens = conn.execute("SELECT layer, pos, rank, token, text, prob FROM gpt2.logit_lens(%s, 'examples', 3)", (prompt,)).fetchall()
    ids = conn.execute("SELECT gpt2.tokenize(%s)", (prompt,)).fetchone()[0]
    rows = out["pos"][0]
    assert [int(r[0]) for r in rows] == list(range(len(ids)))
    for pos, token, by_layer in rows:
        assert json.loads(token) == conn.execute("SELECT gpt2.detokenize(%s)", ([ids[int(pos)]],)).fetchone()[0]
        cells = re.findall(r'(\d+): ("(?:[^"\\]|\\.)*") (\d\.\d\d)', by_layer)
        want = [(layer, text, prob) for layer, p, rank, _, text, prob in lens if p == int(pos) and rank == 1]
        assert [(int(l), json.loads(t)) for l, t, _ in cells] == [(l, t) for l, t, _ in want], by_layer
        assert np.allclose([float(p) for _, _, p in cells], [p for _, _, p in want], atol=0.006)
    last = [(layer, rank, token, text, prob) for layer, p, rank, token, text, prob in lens if p == len(ids) - 1]
    shown = [(int(l), int(r), int(i), json.loads(t), float(p)) for l, r, i, t, p in out["layer"][0]]
    assert [s[:4] for s in shown] == [w[:4] for w in last] and len(shown) == 3 * 3, "top 3 of layers 0, 1, 2"
    assert np.allclose([s[4] for s in shown], [w[4] for w in last], atol=6e-5)


def test_07_score_shows_each_token_and_the_perplexity(dsn, conn, model):
    prompt = "The cat sat on the mat because it was warm."
    out = run_example(dsn, "07_score.sql", f"prompt={prompt}")
    hparams, params = reference.load(model)
    ids = conn.execute("SELECT gpt2.tokenize(%s)", (prompt,)).fetchone()[0]
    logprobs, ranks = reference.score(params, hparams, ids)
    rows = out["pos"][0]
    assert [int(r[0]) for r in rows] == list(range(len(ids)))
    assert [json.loads(r[1]) for r in rows] == [conn.execute("SELECT gpt2.detokenize(%s)", ([i],)).fetchone()[0] for i in ids]
    assert np.allclose([float(r[2]) for r in rows], logprobs, atol=6e-4)
    assert [int(r[3]) for r in rows] == ranks.tolist()
    for row in rows:
        assert len(re.findall(r'"(?:[^"\\]|\\.)*" -?\d+\.\d\d', row[4])) == 3, row[4]
    ((perplexity, from_the_table, tokens),) = out["perplexity"][0]
    assert int(tokens) == len(ids) and float(perplexity) == pytest.approx(float(from_the_table), rel=1e-6)
    assert float(perplexity) == pytest.approx(np.exp(-np.mean(logprobs)), rel=1e-4)


def test_05_generate_streams_the_same_tokens(dsn, model):
    out = run_example(dsn, "05_generate.sql")
    greedy = out["step"][0]
    assert [int(r[0]) for r in greedy] == list(range(1, 21))
    assert out["continuation"][0][0][0].startswith("Happy New Year! I wish")
    assert int(out["generate_start"][0][0][0]) == 6, "the prompt's length in tokens"
    steps = [run[0] for run in out["step"][1:]]
    assert [(int(r[0]), r[1], r[3]) for r in steps] == [(i + 1, greedy[i][1], "f") for i in range(3)]
