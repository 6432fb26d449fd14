"""Generation: greedy equals the NumPy reference token for token (CLI and psql), sampling
is reproducible and stays inside the top-k / top-p sets, the context window slides."""

from __future__ import annotations

import json

import numpy as np
import pytest

import reference
import synthetic

N_TOKENS = 40


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, runner):
    """The tiny random model (context 64, so 40 tokens after a 30-token prompt slide the window)."""
    directory = synthetic.write_checkpoint(tmp_path_factory.mktemp("gen"), **synthetic.CONFIGS["tiny"], seed=7)
    result = runner(["load", str(directory), "--name", "gen-tiny"])
    assert result.exit_code == 0, result.output
    return ("gen-tiny",) + reference.load(directory)


def tokenize(conn, text):
    return conn.execute("SELECT gpt2.tokenize(%s)", (text,)).fetchone()[0]


@pytest.mark.parametrize("prompt", ["Happy New Year! I wish", "def fibonacci(n):\n    if n < 2:\n        return n\n" * 2])
def test_greedy_cli_equals_reference(conn, tiny, runner, prompt):
    name, hparams, params = tiny
    expected = reference.generate_greedy(params, hparams, tokenize(conn, prompt), N_TOKENS)
    result = runner(["generate", prompt, "--model", name, "--max-tokens", str(N_TOKENS), "--temperature", "0", "--json"])
    assert result.exit_code == 0, result.output
    tokens = [json.loads(line)["id"] for line in result.stdout.splitlines()]
    # generation stops early only at <|endoftext|>
    assert tokens == expected[: len(tokens)] and (len(tokens) == N_TOKENS or tokens[-1] == 50256), (
        f"first difference at step {next((i for i, (a, b) in enumerate(zip(tokens, expected)) if a != b), None)}: "
        f"sql {tokens}, numpy {expected}")


def test_greedy_psql_function_equals_reference(conn, tiny):
    name, hparams, params = tiny
    prompt = "The quick brown fox jumps over the lazy dog. " * 3   # 30 tokens: the window slides
    expected = reference.generate_greedy(params, hparams, tokenize(conn, prompt), N_TOKENS)
    rows = conn.execute("SELECT step, id, text FROM gpt2.generate(%s, model => %s, max_tokens => %s, temperature => 0)",
                        (prompt, name, N_TOKENS)).fetchall()
    assert [r[0] for r in rows] == list(range(1, len(rows) + 1))
    # all N_TOKENS, or up to the first <|endoftext|>: zero rows must not pass
    assert [r[1] for r in rows] == (expected[: expected.index(50256) + 1] if 50256 in expected else expected)
    text = conn.execute("SELECT gpt2.complete(%s, model => %s, max_tokens => %s, temperature => 0)",
                        (prompt, name, N_TOKENS)).fetchone()[0]
    assert text == conn.execute("SELECT gpt2.detokenize(%s)", ([r[1] for r in rows],)).fetchone()[0]


def test_prompt_longer_than_context(conn, tiny):
    name, hparams, params = tiny
    ids = list(range(300, 300 + hparams["n_positions"] + 10))
    prompt = conn.execute("SELECT gpt2.detokenize(%s)", (ids,)).fetchone()[0]
    ids = tokenize(conn, prompt)
    expected = reference.generate_greedy(params, hparams, ids, 5)
    rows = conn.execute("SELECT id FROM gpt2.generate(%s, model => %s, max_tokens => 5, temperature => 0)",
                        (prompt, name)).fetchall()
    assert [r[0] for r in rows] == expected


def test_seed_reproducible_across_connections(dsn, tiny):
    from gpt2sql import db

    name = tiny[0]
    query = "SELECT id FROM gpt2.generate('Once upon a time', model => %s, max_tokens => 12, temperature => 1.2, seed => %s)"
    runs = []
    for seed in (42, 42, 43):
        with db.connect(dsn) as c:
            runs.append([r[0] for r in c.execute(query, (name, seed))])
    assert runs[0] == runs[1], "the same seed gave different tokens on two connections"
    assert runs[0] != runs[2], "different seeds gave the same 12 sampled tokens"


@pytest.mark.parametrize("top_k, top_p", [(5, 1.0), (None, 0.3), (20, 0.5)])
def test_sampled_tokens_lie_in_top_k_top_p_set(conn, tiny, top_k, top_p):
    name, hparams, params = tiny
    prompt_ids = tokenize(conn, "In the beginning")
    temperature = 1.5
    rows = conn.execute(
        "SELECT id FROM gpt2.generate('In the beginning', model => %s, max_tokens => 15, temperature => %s, "
        "top_k => %s, top_p => %s, seed => 5)", (name, temperature, top_k, top_p)).fetchall()
    seq = list(prompt_ids)
    for (token,) in rows:
        logits = reference.forward(params, hparams, seq)[-1] / temperature
        order = np.argsort(-logits, kind="stable")[: top_k or len(logits)]
        probs = reference.softmax(logits[order])
        keep = order[: int(np.searchsorted(np.cumsum(probs) - probs, top_p, side="left"))]
        assert token in set(keep.tolist()), f"token {token} outside the allowed set of {len(keep)} at {len(seq)}"
        seq.append(token)


def test_stop_string_ends_generation(conn, tiny):
    name = tiny[0]
    rows = conn.execute("SELECT id, text FROM gpt2.generate('Hello', model => %s, max_tokens => 30, temperature => 0)",
                        (name,)).fetchall()
    stop = rows[2][1].strip() or rows[2][1]
    stopped = conn.execute("SELECT id FROM gpt2.generate('Hello', model => %s, max_tokens => 30, temperature => 0, "
                           "stop => %s)", (name, [stop])).fetchall()
    first = next(i for i in range(len(rows)) if stop in "".join(r[1] for r in rows[: i + 1]))
    assert [r[0] for r in stopped] == [r[0] for r in rows[: first + 1]]


def test_cli_streams_text(dsn, conn, tiny):
    """Tokens reach the reader while the rest are being computed. Events compared, no
    clock: after the first token has been read, the CLI's connection starts another
    query (seen in pg_stat_activity) before the process ends. A CLI that computed every
    token before printing would start none."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    n, app = 60, f"gpt2sql-stream-test-{os.getpid()}"
    started = "SELECT query_start FROM pg_stat_activity WHERE application_name = %s"
    gpt2sql = str(Path(sys.executable).parent / "gpt2sql")
    with subprocess.Popen([gpt2sql, "--dsn", dsn, "generate", "Hello", "--model", tiny[0], "-n", str(n), "-t", "0", "--json"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=dict(os.environ, PGAPPNAME=app)) as proc:  # libpq names the CLI's connection
        first = proc.stdout.readline()
        at_first = conn.execute(started, (app,)).fetchone()
        queried_after_first = False
        while not queried_after_first and proc.poll() is None:
            now = conn.execute(started, (app,)).fetchone()
            queried_after_first = now is not None and now != at_first
            time.sleep(0.005)  # a polling interval, not a measurement
        out = first + proc.stdout.read()
        assert proc.wait() == 0, proc.stderr.read()
    tokens = [json.loads(line) for line in out.splitlines()]
    assert [t["step"] for t in tokens] == list(range(1, len(tokens) + 1))
    assert len(tokens) == n or tokens[-1]["id"] == 50256, f"{len(tokens)} tokens"
    assert queried_after_first, "no query ran after the first token was printed: the output was not streamed"


def test_generate_reads_prompt_from_stdin(tiny, runner):
    with_stdin = runner(["generate", "-", "--model", tiny[0], "-n", "3", "-t", "0", "--json"], input="Hello\n")
    direct = runner(["generate", "Hello\n", "--model", tiny[0], "-n", "3", "-t", "0", "--json"])
    assert with_stdin.exit_code == 0 and with_stdin.stdout == direct.stdout


@pytest.mark.parametrize("args, message", [
    (["--temperature", "-1"], "temperature"), (["--top-p", "0"], "top-p"), (["--top-p", "1.5"], "top-p"),
    (["--top-k", "0"], "top-k"), (["--max-tokens", "0"], "max-tokens"),
])
def test_invalid_sampling_options(tiny, runner, args, message):
    result = runner(["generate", "Hi", "--model", tiny[0]] + args)
    assert result.exit_code == 2 and message in result.output


def test_unknown_model_is_one_line_error(tiny, runner):
    result = runner(["generate", "Hi", "--model", "no-such-model"])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and "no model named" in result.output


def test_sql_validates_sampling_arguments(conn, tiny):
    import psycopg

    for args in ["temperature => -1", "top_p => 0", "top_k => 0", "max_tokens => 0"]:
        with pytest.raises(psycopg.errors.RaiseException):
            conn.execute(f"SELECT * FROM gpt2.generate('Hi', model => '{tiny[0]}', {args})")


@pytest.mark.parametrize("config", ["tiny", "wide"])
def test_greedy_equals_transformers_generate(conn, runner, tmp_path, config):
    """The independent check: Hugging Face transformers' own greedy generate() on the same files."""
    pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    from transformers import GPT2LMHeadModel

    directory = synthetic.write_checkpoint(tmp_path, **synthetic.CONFIGS[config], seed=12)
    assert runner(["load", str(directory), "--name", f"hf-{config}"]).exit_code == 0
    prompt = "Happy New Year! I wish you"
    ids = tokenize(conn, prompt)
    model = GPT2LMHeadModel.from_pretrained(directory, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False, pad_token_id=50256,
                             attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    expected = out[0, len(ids):].tolist()
    result = runner(["generate", prompt, "--model", f"hf-{config}", "-n", "32", "-t", "0", "--json"])
    tokens = [json.loads(line)["id"] for line in result.stdout.splitlines()]
    assert tokens == expected, (
        f"first difference at step {next((i for i, (a, b) in enumerate(zip(tokens, expected)) if a != b), None)}: "
        f"sql {tokens}, transformers {expected}")


def test_nul_in_prompt_is_one_line_error(tiny, runner):
    result = runner(["generate", "a\x00b", "--model", tiny[0]])
    assert result.exit_code == 1 and "NUL" in result.output and result.output.count("\n") == 1


def test_concurrent_generations_do_not_mix(dsn, tiny):
    """Two connections generating at once, steps interleaved: each gets what it gets alone."""
    from gpt2sql import db

    name = tiny[0]
    prompts = ["The quick brown fox", "def main():\n    return"]
    start = "SELECT gpt2.generate_start(%s, %s, 12, 0)"
    alone = []
    for prompt in prompts:
        with db.connect(dsn) as c:
            c.execute(start, (prompt, name))
            alone.append([c.execute("SELECT id FROM gpt2.generate_next()").fetchone()[0] for _ in range(12)])
    with db.connect(dsn) as a, db.connect(dsn) as b:
        a.execute(start, (prompts[0], name))
        b.execute(start, (prompts[1], name))
        together = [[], []]
        for _ in range(12):
            for i, c in enumerate((a, b)):
                together[i].append(c.execute("SELECT id FROM gpt2.generate_next()").fetchone()[0])
        assert a.execute("SELECT count(*) FROM kv_k").fetchone()[0] == 0, "the cache outlived the generation"
    assert together == alone


def test_empty_prompt_starts_from_endoftext(conn, tiny):
    """As Hugging Face does for an unconditional sample: the context is <|endoftext|>."""
    name, hparams, params = tiny
    rows = conn.execute("SELECT id FROM gpt2.generate('', model => %s, max_tokens => 5, temperature => 0)",
                        (name,)).fetchall()
    assert [r[0] for r in rows] == reference.generate_greedy(params, hparams, [50256], 5)


def test_no_generation_in_progress_is_one_line(dsn):
    import psycopg

    from gpt2sql import db

    with db.connect(dsn) as c:
        for call in ("SELECT * FROM gpt2.generate_next()", "SELECT gpt2.generate_prefill(8)",
                     "SELECT * FROM gpt2.generate_batch_next()"):
            with pytest.raises(psycopg.errors.RaiseException, match="no generation in progress"):
                c.execute(call)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-1"])
def test_temperature_must_be_a_finite_number(conn, tiny, runner, value):
    import psycopg

    with pytest.raises(psycopg.errors.RaiseException, match="temperature"):
        conn.execute("SELECT gpt2.generate_start('Hi', %s, 5, %s::float8)", (tiny[0], value))
    result = runner(["generate", "Hi", "--model", tiny[0], "--temperature", value.lower()])
    assert result.exit_code == 2 and "temperature" in result.output


@pytest.mark.parametrize("option", ["--max-tokens", "--top-k"])
def test_int_options_beyond_int4_are_usage_errors(tiny, runner, option):
    result = runner(["generate", "Hi", "--model", tiny[0], option, str(2**31)])
    assert result.exit_code == 2 and option in result.output


@pytest.mark.parametrize("change", ["reload", "drop"])
def test_model_changed_during_generation_stops_in_one_line(dsn, tmp_path, runner, change):
    """A generation never goes on with other weights than it started with."""
    import psycopg

    from gpt2sql import db

    directory = synthetic.write_checkpoint(tmp_path, **synthetic.CONFIGS["tiny"], seed=8)
    name = f"gen-{change}"
    assert runner(["load", str(directory), "--name", name]).exit_code == 0
    with db.connect(dsn) as c:
        c.execute("SELECT gpt2.generate_start('Once upon a time', %s, 10, 0)", (name,))
        c.execute("SELECT * FROM gpt2.generate_next()")
        if change == "reload":
            other = synthetic.write_checkpoint(tmp_path / "other", **synthetic.CONFIGS["tiny"], seed=9)
            assert runner(["load", str(other), "--name", name]).exit_code == 0
        else:
            assert runner(["drop", name]).exit_code == 0
        with pytest.raises(psycopg.errors.RaiseException, match="dropped" if change == "drop" else "loaded again"):
            c.execute("SELECT * FROM gpt2.generate_next()")
