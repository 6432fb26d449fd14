"""Every SQL stage against the NumPy reference, on random checkpoints in the Hugging Face
layout loaded through `gpt2sql load` (the path users take).

Tolerances are absolute, on activations of order 1 and logits up to ~15: float32 weights must
agree to 1e-4 (float32 arithmetic in pgvector vs float64 in NumPy); float16 weights
(halfvec; the activations are rounded to half too before each product) to 5e-2.
"""

from __future__ import annotations

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


def as_sql(array: np.ndarray) -> list[str]:
    """[n, d] floats as text vectors, for %s::vector[]."""
    return ["[" + ",".join(repr(float(v)) for v in row) + "]" for row in array]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("config", ["tiny", "wide"])
def test_each_stage_matches_reference(conn, models, config, dtype):
    name, hparams, params = models[config, dtype]
    ids = PROMPTS[1]
    ref = reference.stages(params, hparams, ids, layer=0)
    tol = TOLERANCE[dtype]
    vec = lambda expr, *p: vectors(conn, name, expr, *p)  # noqa: E731

    assert_close("embeddings", vec("gpt2.embed(%s, 0)", ids), ref["embed"], tol / 10)
    assert_close("layer norm ln_1", vec("gpt2.ln('ln_1', 0, %s::vector[])", as_sql(ref["embed"])), ref["ln_1"], tol)
    assert_close("c_attn", vec("gpt2.linear('attn.c_attn', 0, %s::vector[])", as_sql(ref["ln_1"])), ref["qkv"], tol)
    conn.execute("SELECT gpt2.kv_reset()")
    n = len(ids)
    attn = vec("gpt2.linear('attn.c_proj', 0, gpt2.mha(0, array_fill(0, ARRAY[%s]), ARRAY(SELECT generate_series(0, %s - 1)), %s::vector[]))",
               n, n, as_sql(ref["qkv"]))
    assert_close("attention (mha + c_proj)", attn, ref["attn"], tol)
    assert_close("mlp", vec("gpt2.mlp(0, %s::vector[])", as_sql(ref["ln_2"])), ref["mlp"], tol)
    conn.execute("SELECT gpt2.kv_reset()")
    assert_close("block 0", vec("gpt2.block(0, array_fill(0, ARRAY[%s]), ARRAY(SELECT generate_series(0, %s - 1)), %s::vector[])",
                                n, n, as_sql(ref["embed"])), ref["block"], tol)


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
    """A prefill then one-token decode steps give the same hidden states as one pass."""
    name, hparams, params = models["tiny", "float32"]
    ids = PROMPTS[3]
    conn.execute("SELECT gpt2.use_model(%s)", (name,))
    stepwise = [vectors(conn, name, "gpt2.transformer(%s, 0)", ids[:5])[-1]]
    for pos in range(5, len(ids)):
        stepwise.append(vectors(conn, name, "gpt2.transformer(%s, %s)", [ids[pos]], pos)[0])
    full = reference.stages(params, hparams, ids)["ln_f"][4:]
    assert_close("decode steps vs full forward", np.array(stepwise), full, TOLERANCE["float32"])
    n_cached = conn.execute("SELECT count(DISTINCT pos) FROM kv_k").fetchone()[0]
    assert n_cached == len(ids)


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


@pytest.mark.parametrize("n_prompt", [5, 40])  # a decode-sized prefill (cached kernel) and a parallel fresh one
def test_huge_attention_scores_fall_back_to_the_exact_softmax(conn, tmp_path, runner, n_prompt):
    """Scores far above a query's score on its own key: softmax's shift clamps, and those
    queries are recomputed with the row maximum (sql/50_attention.sql, gpt2.attend_exact)."""
    from safetensors.numpy import load_file, save_file

    directory = synthetic.write_checkpoint(tmp_path, **synthetic.CONFIGS["tiny"], seed=5)
    tensors = load_file(directory / "model.safetensors")
    d = synthetic.CONFIGS["tiny"]["n_embd"]
    for name, w in tensors.items():
        if name.endswith("attn.c_attn.weight"):
            w[:, : 2 * d] *= 8  # queries and keys: scores x64 (std ~130)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    assert runner(["load", str(directory), "--name", "test-huge-scores"]).exit_code == 0
    hparams, params = reference.load(directory)
    ids = list(range(2000, 2000 + n_prompt))
    expected = reference.forward(params, hparams, ids)
    rows = conn.execute("SELECT pos, token, logit FROM gpt2.forward(%s, 'test-huge-scores')", (ids,)).fetchall()
    actual = np.zeros_like(expected)
    pos, token, logit = (np.array(c) for c in zip(*rows))
    actual[pos, token] = logit
    # float32 scores 64x larger carry 64x larger rounding (1e-4 -> ~6e-3 in the worst case); a
    # clamped softmax left as it is would be off by whole units
    assert_close("logits with huge attention scores", actual, expected, 64 * TOLERANCE["float32"])
