"""Configs and files that cannot make a working GPT-2 are refused at load, in one line.

Each case edits one thing in a tiny synthetic checkpoint (tests/synthetic.py) and loads it
through the CLI: the error names what is wrong, and nothing is left in the database.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import synthetic
from test_loader import TINY, assert_one_line_error


def edited(directory, **changes):
    """directory, after setting `changes` in its config.json (json writes NaN as NaN)."""
    cfg = json.loads((directory / "config.json").read_text())
    cfg.update(changes)
    (directory / "config.json").write_text(json.dumps(cfg))
    return directory


@pytest.mark.parametrize("changes, fragments", [
    ({"layer_norm_epsilon": float("nan")}, ["layer_norm_epsilon", "nan"]),
    ({"layer_norm_epsilon": -1e-5}, ["layer_norm_epsilon", "-1e-05"]),
    ({"layer_norm_epsilon": "1e-5"}, ["layer_norm_epsilon"]),
    ({"n_layer": 2.7}, ["n_layer", "whole number", "2.7"]),
    ({"n_head": True}, ["n_head", "whole number"]),
    ({"n_embd": "64"}, ["n_embd", "whole number"]),
    ({"n_layer": 0}, ["n_layer", "whole number"]),
    ({"n_layer": 1}, ["n_layer 1", "2 blocks"]),   # the file holds h.0 and h.1
    ({"n_head": 5}, ["n_embd 64", "n_head 5"]),
])
def test_bad_config_is_one_line_error(conn, runner, tmp_path, changes, fragments):
    directory = edited(synthetic.write_checkpoint(tmp_path / "ckpt", **TINY), **changes)
    assert_one_line_error(runner(["load", str(directory), "--name", "bad-config"]), *fragments)
    assert conn.execute("SELECT count(*) FROM gpt2.models WHERE name = 'bad-config'").fetchone()[0] == 0


def test_more_blocks_than_the_config_is_refused(conn, runner, tmp_path):
    """A file with h.2 under a config of 2 layers: the third block would be dropped silently."""
    directory = edited(synthetic.write_checkpoint(tmp_path / "ckpt", **{**TINY, "n_layer": 3}), n_layer=2)
    assert_one_line_error(runner(["load", str(directory), "--name", "bad-config"]), "n_layer 2", "3 blocks")


def test_tensors_the_config_does_not_account_for_are_refused(conn, runner, tmp_path):
    from safetensors.numpy import load_file, save_file

    directory = synthetic.write_checkpoint(tmp_path / "ckpt", **TINY)
    tensors = load_file(directory / "model.safetensors")
    tensors["h.0.attn.c_attn.extra"] = tensors["h.0.attn.c_attn.bias"]
    save_file(tensors, str(directory / "model.safetensors"))
    assert_one_line_error(runner(["load", str(directory), "--name", "bad-config"]), "h.0.attn.c_attn.extra",
                          "does not account for")


def test_vocab_smaller_than_the_tokenizer_is_refused(conn, runner, tmp_path):
    """wte [100, n_embd] agrees with vocab_size 100, but <|endoftext|> (50256) has no row."""
    directory = synthetic.write_checkpoint(tmp_path / "ckpt", **TINY, vocab_size=100)
    assert_one_line_error(runner(["load", str(directory), "--name", "bad-config"]), "vocab_size 100", "50257")
    assert conn.execute("SELECT count(*) FROM gpt2.models WHERE name = 'bad-config'").fetchone()[0] == 0


def test_a_trillion_layers_fail_at_once(dsn, tmp_path):
    """n_layer 10^12 used to make the loader list 6 * 10^12 tensors until the kernel killed it.

    Run in a child process whose address space is capped (2 GB), so that a regression ends
    in a MemoryError there instead of exhausting this machine."""
    directory = edited(synthetic.write_checkpoint(tmp_path / "ckpt", **TINY), n_layer=10**12)
    cap = 2 * 2**30
    child = (f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({cap}, {cap}))\n"
             "from gpt2sql.main import cli; cli()")
    result = subprocess.run([sys.executable, "-c", child, "--dsn", dsn, "load", str(directory), "--name", "huge"],
                            capture_output=True, text=True, timeout=600, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr[-2000:]
    assert "n_layer 1000000000000" in result.stderr and "2 blocks" in result.stderr


# --- flags of GPT2Config that change the math: supported, or refused in one line ------------

def rewritten(directory, edit):
    """directory, after edit(tensors) changed the {name: array} of its model.safetensors."""
    from safetensors.numpy import load_file, save_file

    tensors = load_file(directory / "model.safetensors")
    edit(tensors)
    save_file(tensors, str(directory / "model.safetensors"))
    return directory


@pytest.mark.parametrize("changes, fragments", [
    ({"scale_attn_weights": False}, ["scale_attn_weights is false", "sqrt(d_head)"]),
    ({"scale_attn_weights": "false"}, ["scale_attn_weights must be true or false"]),
    ({"scale_attn_by_inverse_layer_idx": True}, ["scale_attn_by_inverse_layer_idx is true"]),
    ({"add_cross_attention": True}, ["add_cross_attention is true"]),
    ({"activation_function": "gelu"}, ["activation_function 'gelu'"]),          # the exact (erf) GELU
    ({"activation_function": "quick_gelu"}, ["activation_function 'quick_gelu'"]),
    ({"activation_function": "relu"}, ["activation_function 'relu'"]),
    ({"tie_word_embeddings": False}, ["tie_word_embeddings false", "no lm_head.weight"]),
    ({"tie_word_embeddings": 0}, ["tie_word_embeddings must be true or false"]),
])
def test_flags_that_change_the_math_are_refused(conn, runner, tmp_path, changes, fragments):
    """transformers computes something else with these; they used to load and be ignored."""
    directory = edited(synthetic.write_checkpoint(tmp_path / "ckpt", **TINY), **changes)
    assert_one_line_error(runner(["load", str(directory), "--name", "bad-config"]), *fragments)
    assert conn.execute("SELECT count(*) FROM gpt2.models WHERE name = 'bad-config'").fetchone()[0] == 0


@pytest.mark.parametrize("tied", [False, True])
def test_an_lm_head_that_differs_from_wte_is_refused(conn, runner, tmp_path, tied):
    """It used to be dropped silently: the logits came from wte instead."""
    def untie(t):
        t["lm_head.weight"] = t["lm_head.weight"] * np.float32(1.5)

    directory = rewritten(synthetic.write_checkpoint(tmp_path / "ckpt", **TINY, lm_head=True), untie)
    edited(directory, tie_word_embeddings=tied)
    assert_one_line_error(runner(["load", str(directory), "--name", "bad-config"]), "lm_head.weight differs from wte.weight")
    assert conn.execute("SELECT count(*) FROM gpt2.models WHERE name = 'bad-config'").fetchone()[0] == 0


@pytest.mark.parametrize("changes, lm_head", [
    ({"reorder_and_upcast_attn": True}, False),        # the same math in another order and precision
    ({"tie_word_embeddings": False}, True),             # untied, but equal to wte
    ({"activation_function": "gelu_pytorch_tanh"}, False),
    ({"activation_function": "gelu_python_tanh"}, False),
    ({"activation_function": "gelu_fast"}, False),
    ({"activation_function": "gelu_accurate"}, False),
])
def test_accepted_flags_compute_what_transformers_computes(conn, runner, tmp_path, changes, lm_head):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers import GPT2LMHeadModel

    from test_loader import logits

    directory = edited(synthetic.write_checkpoint(tmp_path / "ckpt", **TINY, seed=21, lm_head=lm_head), **changes)
    assert runner(["load", str(directory), "--name", "flags"]).exit_code == 0
    ids = [464, 2068, 7586]
    model = GPT2LMHeadModel.from_pretrained(directory, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits[0].numpy()
    got = logits(conn, "flags", ids).reshape(want.shape)
    from compare import assert_close

    assert_close("logits", got, want, 1e-4)
    runner(["drop", "flags"])


# --- values: NaN, infinity, and what the database type cannot hold -------------------------

@pytest.fixture
def previous(conn, runner, tmp_path):
    """A working model 'values', loaded; its logits, which a refused load must leave as they are."""
    from test_loader import logits

    assert runner(["load", str(synthetic.write_checkpoint(tmp_path / "good", **TINY, seed=22)), "--name", "values"]).exit_code == 0
    yield logits(conn, "values")
    runner(["drop", "values"])


@pytest.mark.parametrize("tensor, value", [
    ("h.0.attn.c_attn.bias", np.nan),      # biases are `real`, which took NaN and Inf
    ("h.1.mlp.c_proj.bias", np.inf),
    ("h.0.attn.c_attn.weight", np.nan),
    ("h.1.mlp.c_fc.weight", -np.inf),
    ("wte.weight", np.nan),
    ("wpe.weight", np.inf),
    ("h.0.ln_1.bias", np.nan),
    ("ln_f.weight", -np.inf),
])
def test_non_finite_values_are_refused_and_the_previous_model_stays(conn, runner, tmp_path, previous, tensor, value):
    from test_loader import logits

    def poison(t):
        t[tensor].reshape(-1)[7] = value

    directory = rewritten(synthetic.write_checkpoint(tmp_path / "bad", **TINY, seed=23), poison)
    what = "NaN" if np.isnan(value) else "an infinite value"
    assert_one_line_error(runner(["load", str(directory), "--name", "values"]), f"tensor '{tensor}' holds {what}")
    np.testing.assert_array_equal(logits(conn, "values"), previous)


def gpt2sql(dsn, *args):
    """The console script in a process of its own: what a user sees on stderr (NumPy's warnings too)."""
    from pathlib import Path

    exe = Path(sys.executable).with_name("gpt2sql")
    if not exe.exists():
        pytest.skip(f"no console script at {exe}")
    return subprocess.run([exe, "--dsn", dsn, *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("stored, value, dtype, fragments", [
    ("float64", 1e300, "float32", ["beyond float32's range", "it cannot be loaded"]),
    ("float64", 1e300, "float16", ["beyond float16's range", "it cannot be loaded"]),
    ("float32", 1e20, "float16", ["beyond float16's range", "load it with --dtype float32"]),
    ("float16", np.inf, "float16", ["holds an infinite value"]),
])
def test_values_the_database_cannot_hold_are_one_line_without_warnings(dsn, conn, tmp_path, previous,
                                                                       stored, value, dtype, fragments):
    """NumPy's 'RuntimeWarning: overflow encountered in cast' (2 lines) used to come first."""
    from test_loader import logits

    def huge(t):
        t["h.0.mlp.c_fc.weight"][0, 0] = value

    directory = rewritten(synthetic.write_checkpoint(tmp_path / "big", **TINY, seed=24, dtype=stored), huge)
    done = gpt2sql(dsn, "load", str(directory), "--name", "values", "--dtype", dtype)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: tensor 'h.0.mlp.c_fc.weight' holds "), done.stderr
    assert all(f in done.stderr for f in fragments), done.stderr
    np.testing.assert_array_equal(logits(conn, "values"), previous)


# --- widths: each loads and computes right, or is refused before anything is written ---------

def one_layer(tmp_path, n_embd, n_head, n_positions=16, dtype="float32"):
    """A 1-layer checkpoint of the real vocabulary (the loader checks it against the tokenizer)."""
    return synthetic.write_checkpoint(tmp_path / f"w{n_embd}", n_layer=1, n_embd=n_embd, n_head=n_head,
                                      n_positions=n_positions, dtype=dtype, seed=25)


def assert_computes_right(conn, directory, name, tol):
    """gpt2.forward's logits against tests/reference.py's float64 NumPy on the file's weights."""
    import reference as R
    from compare import assert_close
    from test_loader import logits

    hp, params = R.load(directory)
    ids = [464, 2068, 7586]
    got = logits(conn, name, ids)
    assert_close(f"{name} logits", got.reshape(len(ids), -1), R.forward(params, hp, ids), tol)


@pytest.mark.slow
@pytest.mark.parametrize("n_embd, n_head", [(2000, 1), (2048, 16)])
def test_the_widest_float32_rows_load_and_wider_ones_say_use_float16(conn, runner, tmp_path, n_embd, n_head):
    """wte rows of 2032 float32 did not fit a page ('row is too big'); 2024 loaded but c_fc's GELU
    then went per chunk: wrong logits. n_head 1: one head as wide as the model."""
    directory = one_layer(tmp_path, n_embd, n_head, dtype="float16")  # float16 values: exact in both dtypes
    try:
        if n_embd <= 2000:
            assert runner(["load", str(directory), "--name", "wide"]).exit_code == 0
            assert_computes_right(conn, directory, "wide", 1e-3)
        else:
            assert_one_line_error(runner(["load", str(directory), "--name", "wide"]),
                                  f"n_embd {n_embd} is wider than a float32 row can hold (2000): load it with --dtype float16")
            assert conn.execute("SELECT count(*) FROM gpt2.models WHERE name = 'wide'").fetchone()[0] == 0
            assert runner(["load", str(directory), "--name", "wide", "--dtype", "float16"]).exit_code == 0
            assert_computes_right(conn, directory, "wide", 5e-2)  # activations are rounded to float16
    finally:
        runner(["drop", "wide"])


@pytest.mark.slow
@pytest.mark.parametrize("n_embd", [4000, 4032])
def test_the_widest_float16_rows_load_and_wider_ones_are_refused(conn, runner, tmp_path, n_embd):
    """4032 loaded, then failed at generation (its MLP's 16,128 dimensions); 4064 failed in the COPY."""
    directory = one_layer(tmp_path, n_embd, 16, dtype="float16")
    try:
        if n_embd <= 4000:
            assert runner(["load", str(directory), "--name", "wide", "--dtype", "float16"]).exit_code == 0
            assert_computes_right(conn, directory, "wide", 5e-2)
        else:
            for dtype in ("float16", "float32"):
                assert_one_line_error(runner(["load", str(directory), "--name", "wide", "--dtype", dtype]),
                                      f"n_embd {n_embd} is wider than a {dtype} row can hold", "no dtype holds it")
            assert conn.execute("SELECT count(*) FROM gpt2.models WHERE name = 'wide'").fetchone()[0] == 0
    finally:
        runner(["drop", "wide"])


@pytest.mark.parametrize("n_inner", [16000, 16001])
def test_an_mlp_wider_than_a_vector_is_refused(conn, runner, tmp_path, n_inner):
    """n_inner 16001 loaded, then every generation failed: pgvector holds 16,000 dimensions."""
    rng = np.random.default_rng(26)

    def widen(t):
        t["h.0.mlp.c_fc.weight"] = rng.standard_normal((64, n_inner), dtype=np.float32) / np.float32(8)
        t["h.0.mlp.c_fc.bias"] = np.zeros(n_inner, np.float32)
        t["h.0.mlp.c_proj.weight"] = rng.standard_normal((n_inner, 64), dtype=np.float32) / np.float32(64)

    directory = edited(rewritten(synthetic.write_checkpoint(tmp_path / "ckpt", n_layer=1, n_embd=64, n_head=4,
                                                            n_positions=16, seed=26), widen), n_inner=n_inner)
    try:
        if n_inner <= 16000:
            from test_loader import logits

            assert runner(["load", str(directory), "--name", "wide"]).exit_code == 0
            assert np.isfinite(logits(conn, "wide")).all()
        else:
            assert_one_line_error(runner(["load", str(directory), "--name", "wide"]), f"n_inner {n_inner}", "16000")
    finally:
        runner(["drop", "wide"])


@pytest.mark.parametrize("n_positions", [16000, 16001])
def test_a_context_longer_than_a_vector_is_refused(conn, runner, tmp_path, n_positions):
    """The KV cache keeps one vector over all positions per head: at most 16,000."""
    directory = one_layer(tmp_path, 64, 4, n_positions=n_positions)
    try:
        if n_positions <= 16000:
            assert runner(["load", str(directory), "--name", "long"]).exit_code == 0
            assert_computes_right(conn, directory, "long", 1e-4)
        else:
            assert_one_line_error(runner(["load", str(directory), "--name", "long"]), "n_positions 16001", "16000")
            assert conn.execute("SELECT count(*) FROM gpt2.models WHERE name = 'long'").fetchone()[0] == 0
    finally:
        runner(["drop", "long"])


def test_row_widths_agree_with_the_sql_chunks(conn):
    """The loader's limits are gpt2.chunk_dims' widths: a change to one must change the other."""
    from gpt2sql.loader.checkpoint import ROW_FLOATS

    for dtype, width in ROW_FLOATS.items():
        assert conn.execute("SELECT gpt2.chunk_dims(%s, %s), gpt2.chunk_dims(%s, %s)",
                            (width, dtype, width + 1, dtype)).fetchone() == (width, (width + 2) // 2)
