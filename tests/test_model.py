"""Every SQL stage against the NumPy reference, on random checkpoints in the Hugging Face
layout loaded through `gpt2sql load` (the path users take).

Tolerances are absolute, on activations of order 1 and logits up to ~15: float32 weights must
agree to 1e-4 (float32 arithmetic in pgvector vs float64 in NumPy); float16 weights
(halfvec; the activations are rounded to half too before each product) to 5e-2.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

import reference
import synthetic
from compare import assert_close

TOLERANCE = {"float32": 1e-4, "float16": 5e-2}
PROMPTS = [[15496, 995], [464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13], [50256], list(range(1000, 1023))]


@pytest.fixture(scope="session")
def models(tmp_path_factory, runner):
    """{(config, dtype): (model name, hparams, params)} loaded once for the session."""
    loaded = {}
    for config in ("tiny", "wide"):
        directory = synthetic.write_checkpoint(tmp_path_factory.mktemp(config), **synthetic.CONFIGS[config], seed=1)
        hparams, params = reference.load(directory)
        for dtype in ("float32", "float16"):
            name = f"test-{config}-{dtype}"
            result = runner(["load", str(directory), "--name", name, "--dtype", dtype])
            assert result.exit_code == 0, result.output
            loaded[config, dtype] = (name, hparams, params)
    return loaded


def vectors(conn, model: str, expression: str, *params) -> np.ndarray:
    """Evaluate a vector[]-valued SQL expression for `model` as an [n, d] array."""
    conn.execute("SELECT gpt2.use_model(%s)", (model,))
    row = conn.execute(
        f"SELECT ARRAY(SELECT v::real[] FROM unnest({expression}) WITH ORDINALITY AS u(v, t) ORDER BY t)", params
    ).fetchone()
    return np.array(row[0], dtype=np.float64)


def recorded_run(conn, model: str, prompts: list[list[int]]) -> tuple[np.ndarray, dict]:
    """Run prompts through gpt2.run_layers together (one sequence each, from position 0),
    recording: (final hidden states [n, n_embd], {(layer, site): [n, d]}), rows of all prompts."""
    conn.execute("SELECT gpt2.use_model(%s)", (model,))
    ids = [t for p in prompts for t in p]
    conn.execute("SELECT gpt2.kv_reset()")
    final = conn.execute(
        """SELECT ARRAY(SELECT v::real[] FROM unnest(gpt2.run_layers(s.seqs, s.positions, gpt2.embed_at(%s, s.positions),
                                                                      0, true)) WITH ORDINALITY AS u(v, t) ORDER BY t)
           FROM gpt2.scratch_seqs(%s) AS s""", (ids, [len(p) for p in prompts])).fetchone()[0]
    tape = {(layer, site): np.array(xs, dtype=np.float64) for layer, site, xs in conn.execute(
        "SELECT layer, site, ARRAY(SELECT v::real[] FROM unnest(xs) WITH ORDINALITY AS u(v, t) ORDER BY t) FROM tape")}
    return np.array(final, dtype=np.float64), tape


SITES = ["resid_pre", "qkv", "z", "attn_out", "resid_mid", "mlp_pre", "mlp_post", "mlp_out"]
# position counts on both sides of every kernel width (2, 4, 8, 16) and of the parallel threshold (32)
LENGTHS = [1, 2, 3, 5, 9, 17, 31, 32, 33, 64]


def assert_run_matches(name, hparams, params, prompts, final, tape, tol):
    """Every recorded site of every layer, and the final states, against the reference, prompt by prompt."""
    start = 0
    for ids in prompts:
        rows = slice(start, start + len(ids))
        ref = reference.record(params, hparams, ids)
        for layer in range(hparams["n_layer"]):
            for site in SITES:
                assert_close(f"{name} {len(ids)} tokens: layer {layer} {site}", tape[layer, site][rows],
                             ref[layer][site], tol)
        assert_close(f"{name} {len(ids)} tokens: resid_post", tape[hparams["n_layer"], "resid_pre"][rows],
                     ref[-1]["resid_pre"], tol)
        assert_close(f"{name} {len(ids)} tokens: ln_f", final[rows], ref[-1]["ln_f"], tol)
        start += len(ids)


def prompt_of(n: int) -> list[int]:
    return [(7919 * i + 464) % 50257 for i in range(n)]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("n", LENGTHS)
def test_every_site_matches_reference(conn, models, n, dtype):
    """The layer loop that generation runs (gpt2.run_layers, recording), at every position count."""
    name, hparams, params = models["tiny", dtype]
    final, tape = recorded_run(conn, name, [prompt_of(n)])
    assert_run_matches(name, hparams, params, [prompt_of(n)], final, tape, TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("n", [1, 9, 33, 64])
def test_every_site_matches_reference_at_124m_width(conn, models, n, dtype):
    name, hparams, params = models["wide", dtype]
    final, tape = recorded_run(conn, name, [prompt_of(n)])
    assert_run_matches(name, hparams, params, [prompt_of(n)], final, tape, TOLERANCE[dtype])


def workers_planned(conn) -> int:
    """Parallel workers this database's queries have planned so far (pg_stat_database)."""
    conn.execute("SELECT pg_stat_clear_snapshot()")
    return conn.execute("SELECT parallel_workers_to_launch FROM pg_stat_database "
                        "WHERE datname = current_database()").fetchone()[0]


def test_parallel_units_go_to_workers(conn, models):
    """A 64-position run plans workers for its units (the heads and the position-wise steps):
    the numbers above would be the same in one process, only slower. Counted by PostgreSQL
    18's pg_stat_database; planned rather than launched, so that busy worker slots do not fail it."""
    if conn.info.server_version < 180000:
        pytest.skip("pg_stat_database counts parallel workers from PostgreSQL 18")
    conn.execute("VACUUM ANALYZE gpt2.units")                      # as autovacuum leaves it on a server in use
    before = workers_planned(conn)
    recorded_run(conn, models["tiny", "float32"][0], [prompt_of(64)])
    deadline = time.monotonic() + 10                               # statistics reach the view within ~1 s
    while workers_planned(conn) == before and time.monotonic() < deadline:
        time.sleep(0.2)
    planned = workers_planned(conn) - before
    # per layer: the heads (one parallel query) and the step after them; one step before the
    # first layer; 2 workers each
    n_layer = models["tiny", "float32"][1]["n_layer"]
    assert planned >= 2 * (2 * n_layer + 1), f"{planned} parallel workers planned for a 64-position run"


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_a_batch_of_different_lengths_matches_reference(conn, models, dtype):
    """Sequences of 1, 5, 17 and 33 tokens in one run (56 rows: the parallel units cut across them)."""
    name, hparams, params = models["tiny", dtype]
    prompts = [prompt_of(k)[::-1] for k in (1, 5, 17, 33)]
    final, tape = recorded_run(conn, name, prompts)
    assert_run_matches(name, hparams, params, prompts, final, tape, TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("config", ["tiny", "wide"])
def test_logits_match_reference(conn, models, config, dtype):
    name, hparams, params = models[config, dtype]
    for ids in PROMPTS:
        expected = reference.forward(params, hparams, ids)  # [n_seq, n_vocab]
        rows = conn.execute("SELECT pos, token, logit FROM gpt2.forward(%s, %s)", (ids, name)).fetchall()
        actual = np.zeros_like(expected)
        pos, token, logit = (np.array(c) for c in zip(*rows))
        actual[pos, token] = logit
        assert len(rows) == expected.size, f"{len(rows)} logits for {expected.shape}"
        assert_close(f"logits of {ids[:5]}...", actual, expected, TOLERANCE[dtype])
        if dtype == "float32":
            assert (actual.argmax(-1) == expected.argmax(-1)).all()


def test_kv_cache_decode_equals_full_forward(conn, models):
    """A prefill then one-token decode steps (attend_1) give the same hidden states as one pass."""
    name, hparams, params = models["tiny", "float32"]
    ids = PROMPTS[3]
    conn.execute("SELECT gpt2.use_model(%s)", (name,))
    stepwise = [vectors(conn, name, "gpt2.transformer(%s, 0)", ids[:5])[-1]]
    for pos in range(5, len(ids)):
        stepwise.append(vectors(conn, name, "gpt2.transformer(%s, %s)", [ids[pos]], pos)[0])
    full = reference.record(params, hparams, ids)[-1]["ln_f"][4:]
    assert_close("decode steps vs full forward", np.array(stepwise), full, TOLERANCE["float32"])
    n_cached = conn.execute("SELECT count(DISTINCT pos) FROM kv_k WHERE seq = -1").fetchone()[0]
    assert n_cached == len(ids)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_a_prompt_fed_in_pieces_equals_full_forward(conn, models, dtype):
    """Pieces of 20, 13 (attend_16 against the cache, across a group of 16) and 31 tokens."""
    name, hparams, params = models["tiny", dtype]
    ids = prompt_of(64)
    pieces = [vectors(conn, name, "gpt2.transformer(%s, %s)", ids[a:b], a) for a, b in [(0, 20), (20, 33), (33, 64)]]
    full = reference.record(params, hparams, ids)[-1]["ln_f"]
    assert_close("prefill in pieces vs full forward", np.concatenate(pieces), full, TOLERANCE[dtype])


@pytest.mark.parametrize("n_layer", [2, 12, 48])
def test_decode_folds_take_turns(conn, n_layer):
    """Each layer folds its decode values into the transposed cache once every
    kv_fold_every positions, and the layers take turns: a step that folded them all was
    three times as long as the others."""
    every = conn.execute("SELECT gpt2.kv_fold_every()").fetchone()[0]
    due = conn.execute("SELECT l, p FROM generate_series(0, %s - 1) AS l, generate_series(0, %s) AS p "
                       "WHERE gpt2.kv_fold_due(l, %s, p)", (n_layer, 3 * every - 1, n_layer)).fetchall()
    for layer in range(n_layer):
        positions = [p for l, p in due if l == layer]
        assert len(positions) == 3 and positions[1] - positions[0] == positions[2] - positions[1] == every, (layer, positions)
    busiest = max(sum(1 for _, p in due if p == q) for q in range(3 * every))
    assert busiest == -(-n_layer // every), busiest


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_widest_gpt2_width_loads_and_matches(conn, tmp_path, runner, dtype, monkeypatch):
    """gpt2-xl's width (1600, 25 heads of 64): every row must still fit a page as stored."""
    # a 2,048-token vocabulary keeps this width cheap; the loader refuses it (the tokenizer
    # has 50,257 ids, so such a model cannot generate), which the logits here do not need
    monkeypatch.setattr("gpt2sql.loader.model._check_vocabulary", lambda *args: None)
    directory = synthetic.write_checkpoint(tmp_path, n_layer=1, n_embd=1600, n_head=25, n_positions=32,
                                           vocab_size=2048, seed=4)
    name = f"test-xl-width-{dtype}"
    result = runner(["load", str(directory), "--name", name, "--dtype", dtype])
    assert result.exit_code == 0, result.output
    hparams, params = reference.load(directory)
    ids = [15, 1000, 7, 2047, 3]
    expected = reference.forward(params, hparams, ids)
    rows = conn.execute("SELECT pos, token, logit FROM gpt2.forward(%s, %s)", (ids, name)).fetchall()
    actual = np.zeros_like(expected)
    pos, token, logit = (np.array(c) for c in zip(*rows))
    actual[pos, token] = logit
    assert_close(f"logits at width 1600 ({dtype})", actual, expected, TOLERANCE[dtype])


def wide_scores_checkpoint(tmp_path, factor: float):
    """The tiny checkpoint with queries and keys scaled by sqrt(factor): attention scores x factor."""
    from safetensors.numpy import load_file, save_file

    directory = synthetic.write_checkpoint(tmp_path, **synthetic.CONFIGS["tiny"], seed=5)
    tensors = load_file(directory / "model.safetensors")
    d = synthetic.CONFIGS["tiny"]["n_embd"]
    for name, w in tensors.items():
        if name.endswith("attn.c_attn.weight"):
            w[:, : 2 * d] *= np.float32(np.sqrt(factor))
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory


def largest_score_above_own(params, hparams, ids) -> float:
    """max over layers, heads and queries of (the row's largest score - the score on its own key)."""
    worst, d_head = 0.0, hparams["n_embd"] // hparams["n_head"]
    for layer in reference.record(params, hparams, ids)[:-1]:
        q, k, _ = np.split(layer["qkv"], 3, axis=-1)
        for qh, kh in zip(np.split(q, hparams["n_head"], axis=-1), np.split(k, hparams["n_head"], axis=-1)):
            s = np.where(np.tri(len(ids), dtype=bool), qh @ kh.T / np.sqrt(d_head), -np.inf)
            worst = max(worst, float((s.max(axis=1) - np.diag(s)).max()))
    return worst


@pytest.mark.parametrize("n_prompt", [5, 40])  # a prefill in this process, and one in parallel units
def test_huge_attention_scores_get_the_exact_softmax(conn, tmp_path, runner, n_prompt):
    """Scores far above a query's score on its own key: the first pass's shift clamps, and the
    kernels compute those queries again shifted by their maxima (sql/60_attention.sql): fresh
    prefills (attend_fresh_16) and decode steps against the cache (attend_1)."""
    directory = wide_scores_checkpoint(tmp_path, 64)  # scores x64 (std ~130)
    assert runner(["load", str(directory), "--name", "test-huge-scores"]).exit_code == 0
    hparams, params = reference.load(directory)
    ids = list(range(2000, 2000 + n_prompt))
    assert largest_score_above_own(params, hparams, ids) > 70, "the clamp would not bite: the test shows nothing"
    expected = reference.forward(params, hparams, ids)
    rows = conn.execute("SELECT pos, token, logit FROM gpt2.forward(%s, 'test-huge-scores')", (ids,)).fetchall()
    actual = np.zeros_like(expected)
    pos, token, logit = (np.array(c) for c in zip(*rows))
    actual[pos, token] = logit
    # float32 scores 64x larger carry 64x larger rounding (1e-4 -> ~6e-3 in the worst case); a
    # clamped softmax left as it is would be off by whole units
    assert_close("logits with huge attention scores", actual, expected, 64 * TOLERANCE["float32"])
    stepwise = [vectors(conn, "test-huge-scores", "gpt2.transformer(%s, 0)", ids[:3])[-1]]
    for p in range(3, n_prompt):  # decode steps: attend_1 against the cache
        stepwise.append(vectors(conn, "test-huge-scores", "gpt2.transformer(%s, %s)", [ids[p]], p)[0])
    full = reference.record(params, hparams, ids)[-1]["ln_f"][2:]
    assert_close("decode steps with huge attention scores", np.array(stepwise), full, 64 * TOLERANCE["float32"])
