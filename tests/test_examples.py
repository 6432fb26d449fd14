"""The psql walk-through in sql/examples/ runs, as written, through `gpt2sql psql`, prints
what it says it does (checked against the NumPy reference, tests/reference.py, where there
is one), and fits in 100 columns with as many layers as GPT-2 124M has."""

from __future__ import annotations

import csv
import sys as _sys
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
# 12 layers, as GPT-2 124M: the logit lens is as wide as users see it; narrow, so it is quick
CONFIG = dict(synthetic.CONFIGS["tiny"], n_layer=12)
N_LAYER = CONFIG["n_layer"]
WIDEST = 100  # columns of psql's aligned output


@pytest.fixture(scope="module")
def model(runner, tmp_path_factory):
    """A small random model, loaded last so that it is the default the examples use."""
    directory = synthetic.write_checkpoint(tmp_path_factory.mktemp("examples"), **CONFIG, seed=2)
    assert runner(["load", str(directory), "--name", "examples"]).exit_code == 0
    return directory


def run_aligned(dsn, name: str) -> str:
    """sql/examples/NAME in psql's default (aligned) format, as a user sees it."""
    args = [GPT2SQL, "--dsn", dsn, "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(EXAMPLES_DIR / name)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{name} failed:\n{done.stderr}"
    return done.stdout


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
               "generate_start", "layer", "perplexity", "prompt"}
    results: dict[str, list[list[str]]] = {}
    current = None
    for row in csv.reader(io.StringIO(done.stdout)):
        if row and row[0] in headers:
            current = [row]
            results.setdefault(row[0], []).append(current)
        else:
            current.append(row)
    return {key: [run[1:] for run in runs] for key, runs in results.items()}


def test_every_example_has_its_test():
    stems = {p.stem for p in EXAMPLES}
    tested = {name.removeprefix("test_") for name in dir(_sys.modules[__name__]) if name.startswith("test_0")}
    assert stems and all(any(t.startswith(stem) for t in tested) for stem in stems), sorted(stems)
    for stage in ("tokenize", "embeddings", "attention", "next_token", "generate", "logit_lens", "score"):
        assert any(stage in stem for stem in stems)


@pytest.mark.parametrize("example", [p.name for p in EXAMPLES])
def test_every_example_fits_100_columns(dsn, model, example):
    """psql users read these in a terminal. Exempt: 05's continuation, a text in one cell
    (psql's `\\pset format wrapped` folds it)."""
    from gpt2sql.tables import width

    out = run_aligned(dsn, example)
    assert out.strip(), "prints something"
    if example.startswith("05_"):
        out = re.sub(r"^ +continuation *\n-+\n.*?\n\(1 row\)", "", out, flags=re.S | re.M)
    wide = [line for line in out.splitlines() if width(line) > WIDEST]
    assert not wide, f"{len(wide)} lines wider than {WIDEST} columns, e.g. ({width(wide[0])}):\n{wide[0]}"


def test_01_tokenize_shows_the_merges(dsn, model):
    out = run_example(dsn, "01_tokenize.sql")
    trace = out["piece_no"][0]  # piece_no, step, pair, rank, merged_id, symbols
    assert [int(r[1]) for r in trace] == list(range(len(trace))), "steps 0, 1, 2, ..."
    assert trace[0][5] == "{Ġ,M,i,s,s,i,s,s,i,p,p,i,l,e,s,s,l,y}" and trace[-1][5] == "{ĠMississ,ipp,iless,ly}"
    assert [r[2] for r in trace[1:4]] == ["i + s", "e + s", "l + y"]
    ranks = [int(r[3]) for r in trace[1:]]
    assert ranks == sorted(ranks), "BPE merges the lowest rank first"
    assert all(int(r[4]) == int(r[3]) + 256 for r in trace[1:]), "merged id = rank + 256"
    assert out["ids"][0] == [["{12732,3974,30608,306}", " Mississippilessly"]]
    assert [(int(r[1]), r[3]) for r in out["ord"][0]] == [(12732, " Mississ"), (3974, "ipp"), (30608, "iless"), (306, "ly")]


def test_01_tokenize_takes_the_prompt_variable(dsn, model):
    out = run_example(dsn, "01_tokenize.sql", "prompt=Hello world")
    assert out["ids"][0] == [["{15496,995}", "Hello world"]]


def test_02_embeddings_add_token_and_position(dsn, conn, model):
    prompt = "Happy New Year! I wish"
    out = run_example(dsn, "02_embeddings.sql", f"prompt={prompt}")
    assert out["name"][0][0][0] == "examples"
    rows = out["pos"][0]  # pos, id, token, dim, wte, wpe, x: a row per number
    ids = conn.execute("SELECT gpt2.tokenize(%s)", (prompt,)).fetchone()[0]
    _, params = reference.load(model)
    assert [(int(r[0]), int(r[1]), int(r[3])) for r in rows] == [(t, i, d) for t, i in enumerate(ids) for d in (1, 2, 3)]
    assert [r[2] for r in rows[::3]] == ["Happy", " New", " Year", "!", " I", " wish"]
    for pos, token, _text, dim, wte, wpe, x in rows:
        want = params["wte"][int(token), int(dim) - 1], params["wpe"][int(pos), int(dim) - 1]
        assert np.allclose([float(wte), float(wpe)], want, atol=1e-6), f"position {pos}, number {dim}"
        assert float(x) == pytest.approx(float(wte) + float(wpe), abs=1e-6), f"x != wte + wpe at position {pos}"


def test_03_attention_rows_are_causal_distributions(dsn, conn, model):
    prompt = "The cat sat on the mat because it"
    out = run_example(dsn, "03_attention.sql", f"prompt={prompt}", "head=1")
    rows = out["pos"][0]
    ids = conn.execute("SELECT gpt2.tokenize(%s)", (prompt,)).fetchone()[0]
    hparams, params = reference.load(model)
    want = reference.attention_weights(params, hparams, ids)[0, 1]  # layer 0, head 1: [n, n]
    assert len(rows) == len(ids)
    for pos, _token, weights in rows:
        w = [float(v) for v in weights.split()]
        assert len(w) == int(pos) + 1, "position t attends to positions 0..t"
        assert np.allclose(w, want[int(pos), : int(pos) + 1], atol=0.0051), f"row {pos}: {w}"


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
    assert out["name"][0] == [["examples", str(N_LAYER)]]
    ids = conn.execute("SELECT gpt2.tokenize(%s)", (prompt,)).fetchone()[0]
    hparams, params = reference.load(model)
    probs = reference.logit_lens(params, hparams, ids)  # [n_layer + 1, n, n_vocab]
    text = lambda i: conn.execute("SELECT gpt2.detokenize(%s)", ([int(i)],)).fetchone()[0]  # noqa: E731
    rows = out["pos"][0]  # pos, token, layers, top_token: a row per position and run of 3 layers
    groups = [(a, min(a + 2, N_LAYER)) for a in range(0, N_LAYER + 1, 3)]
    assert [(int(r[0]), r[2]) for r in rows] == [(p, f"{a}-{b}" if a < b else str(a)) for p in range(len(ids)) for a, b in groups]
    for pos, token, layers, by_layer in rows:
        assert json.loads(token) == text(ids[int(pos)])
        cells = re.findall(r'(\d+): ("(?:[^"\\]|\\.)*") (\d\.\d\d)', by_layer)
        first, _, last = layers.partition("-")
        want = [(layer, text(probs[layer, int(pos)].argmax()), probs[layer, int(pos)].max())
                for layer in range(int(first), int(last or first) + 1)]
        assert [(int(l), json.loads(t)) for l, t, _ in cells] == [(l, t) for l, t, _ in want], by_layer
        assert np.allclose([float(p) for _, _, p in cells], [p for _, _, p in want], atol=0.0051)
    shown = [(int(l), int(r), int(i), json.loads(t), float(p)) for l, r, i, t, p in out["layer"][0]]
    top3 = [(layer, rank + 1, int(i)) for layer in range(N_LAYER + 1)
            for rank, i in enumerate(np.argsort(-probs[layer, -1], kind="stable")[:3])]
    assert [s[:3] for s in shown] == top3, f"the top 3 of layers 0..{N_LAYER} at the last position"
    assert [s[3] for s in shown] == [text(i) for _, _, i in top3]
    assert np.allclose([s[4] for s in shown], [probs[l, -1, i] for l, _, i in top3], atol=6e-5)


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


def test_05_generate_streams_the_same_tokens(dsn, conn, model):
    out = run_example(dsn, "05_generate.sql")
    greedy = out["step"][0]
    assert [int(r[0]) for r in greedy] == list(range(1, 21))
    hparams, params = reference.load(model)
    ids = conn.execute("SELECT gpt2.tokenize('Happy New Year! I wish')").fetchone()[0]
    assert [int(r[1]) for r in greedy] == reference.generate_greedy(params, hparams, ids, 20)
    assert out["continuation"][0][0][0].startswith("Happy New Year! I wish")
    assert int(out["generate_start"][0][0][0]) == 6, "the prompt's length in tokens"
    steps = [run[0] for run in out["step"][1:]]
    assert [(int(r[0]), r[1], r[3]) for r in steps] == [(i + 1, greedy[i][1], "f") for i in range(3)]


def test_08_patching_sweeps_the_indirect_object_example(dsn, conn, model):
    clean = "When Mary and John went to the store, John gave a drink to"
    corrupted = "When John and Mary went to the store, John gave a drink to"
    out = run_example(dsn, "08_patching.sql")
    assert out["name"][0] == [["examples", str(N_LAYER), str(CONFIG["n_head"])]]
    hparams, params = reference.load(model)
    ids = {p: conn.execute("SELECT gpt2.tokenize(%s)", (p,)).fetchone()[0] for p in (clean, corrupted)}
    mary, john = 5335, 1757
    diff = lambda logits: logits[mary] - logits[john]  # noqa: E731
    base = diff(reference.forward(params, hparams, ids[corrupted])[-1])
    assert [(r[0], float(r[1])) for r in out["prompt"][0]] == [
        ("clean", pytest.approx(diff(reference.forward(params, hparams, ids[clean])[-1]), abs=6e-4)),
        ("corrupted", pytest.approx(base, abs=6e-4))]
    rows = out["pos"][0]  # pos, token, the change at each layer
    resid = reference.patch_sweep(params, hparams, ids[clean], ids[corrupted], mary, john, "resid_pre")
    assert [int(r[0]) for r in rows] == list(range(14))
    assert [json.loads(r[1]) for r in rows] == [conn.execute("SELECT gpt2.detokenize(%s)", ([i],)).fetchone()[0]
                                               for i in ids[corrupted]]
    for pos, _token, cells in rows:
        want = [d - base for layer, p, _, d in resid if p == int(pos)]
        assert np.allclose([float(c) for c in cells.split()], want, atol=6e-3), f"position {pos}: {cells}"
    heads, ablated = out["layer"]
    sweep = reference.patch_sweep(params, hparams, ids[clean], ids[corrupted], mary, john, "head")
    for layer, cells in heads:
        want = [d - base for l, _, h, d in sweep if l == int(layer)]
        assert np.allclose([float(c) for c in cells.split()], want, atol=6e-3), f"layer {layer}: {cells}"
    top = max(sweep, key=lambda r: (abs(r[3] - base), -r[0], -r[2]))
    assert [(int(r[0]), int(r[1]), r[2]) for r in ablated] == [(top[0], top[2], m) for m in ("none", "zero", "mean")]
    for mode, extra in zip(("none", "zero", "mean"), (None, {}, {"mode": "mean"})):
        ablate = [] if extra is None else [{"layer": top[0], "head": top[2], **extra}]
        want = diff(reference.intervene(params, hparams, ids[clean], ablate))
        assert float(next(r[3] for r in ablated if r[2] == mode)) == pytest.approx(want, abs=6e-4), mode
