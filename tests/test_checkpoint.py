"""Configs and files that cannot make a working GPT-2 are refused at load, in one line.

Each case edits one thing in a tiny synthetic checkpoint (tests/synthetic.py) and loads it
through the CLI: the error names what is wrong, and nothing is left in the database.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

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
