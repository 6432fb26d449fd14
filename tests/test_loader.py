"""`gpt2sql load | models | drop`: checkpoint layouts, atomic replacement, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

import synthetic

TINY = synthetic.CONFIGS["tiny"]


def logits(conn, model, ids=(464, 2068, 7586)):
    rows = conn.execute("SELECT logit FROM gpt2.forward(%s, %s) ORDER BY pos, token", (list(ids), model)).fetchall()
    return np.array([r[0] for r in rows])


def assert_one_line_error(result, *fragments):
    assert result.exit_code == 1, result.output
    assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, result.output


def retyped(directory, convert):
    """directory, after convert(array) replaced every tensor of its model.safetensors."""
    from safetensors.numpy import load_file, save_file

    tensors = {name: convert(a) for name, a in load_file(directory / "model.safetensors").items()}
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory


@pytest.mark.parametrize("variant", [{"prefix": True}, {"mask_buffers": True}, {"lm_head": True, "prefix": True},
                                     {"dtype": "float16"}])
def test_checkpoint_variants_load_the_same_weights(conn, runner, tmp_path, variant):
    """A plain float32 file and one that differs in layout only hold the same weights."""
    plain = synthetic.write_checkpoint(tmp_path / "plain", **TINY, seed=3)
    other = synthetic.write_checkpoint(tmp_path / "other", **TINY, seed=3, **variant)
    if variant.get("dtype") == "float16":  # the plain twin: the float16 file's values, stored as float32
        retyped(plain, lambda a: a.astype(np.float16).astype(np.float32))
    assert (plain / "model.safetensors").read_bytes() != (other / "model.safetensors").read_bytes()
    assert runner(["load", str(plain), "--name", "variant-a"]).exit_code == 0
    assert runner(["load", str(other), "--name", "variant-b"]).exit_code == 0
    np.testing.assert_array_equal(logits(conn, "variant-a"), logits(conn, "variant-b"))


def test_float64_checkpoint_loads_its_float32_twins_weights(conn, runner, tmp_path):
    """float64 values are rounded to the nearest float32: each value here is its float32 twin's
    moved by 2^-30 of itself, up or down (round-to-nearest gives the twin back; truncation would not)."""
    twin = synthetic.write_checkpoint(tmp_path / "float32", **TINY, seed=16)
    signs = np.random.default_rng(16)

    def off_the_float32_grid(a):
        nudge = signs.choice([-1.0, 1.0], size=a.shape) * 2.0**-30
        wide = a.astype(np.float64) * (1 + nudge)
        assert (wide.astype(np.float32) == a).all() and (wide != a).mean() > 0.99
        return wide

    wide = retyped(synthetic.write_checkpoint(tmp_path / "float64", **TINY, seed=16), off_the_float32_grid)
    assert runner(["load", str(twin), "--name", "twin-32"]).exit_code == 0
    assert runner(["load", str(wide), "--name", "twin-64"]).exit_code == 0
    np.testing.assert_array_equal(logits(conn, "twin-64"), logits(conn, "twin-32"))
    runner(["drop", "twin-32"])
    runner(["drop", "twin-64"])


def test_reload_replaces_and_failed_load_keeps_previous(conn, runner, tmp_path):
    first = synthetic.write_checkpoint(tmp_path / "first", **TINY, seed=4)
    second = synthetic.write_checkpoint(tmp_path / "second", **TINY, seed=5)
    assert runner(["load", str(first), "--name", "swap"]).exit_code == 0
    before = logits(conn, "swap")
    assert runner(["load", str(second), "--name", "swap"]).exit_code == 0
    after = logits(conn, "swap")
    assert not np.allclose(before, after), "loading again did not replace the weights"
    assert conn.execute("SELECT count(*) FROM gpt2.models WHERE name = 'swap'").fetchone()[0] == 1
    schemas = conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'model\\_swap%'").fetchone()[0]
    assert schemas == 1, "a staging schema was left behind"

    broken = synthetic.write_checkpoint(tmp_path / "broken", **TINY, seed=6)
    cfg = json.loads((broken / "config.json").read_text())
    cfg["n_positions"] = 128  # wpe in the file is [64, 64]
    (broken / "config.json").write_text(json.dumps(cfg))
    assert_one_line_error(runner(["load", str(broken), "--name", "swap"]), "wpe.weight", "shape")
    np.testing.assert_array_equal(logits(conn, "swap"), after)


def test_interrupted_load_leaves_previous_state(conn, tmp_path, monkeypatch):
    """A failure in the middle of the COPYs rolls the whole load back."""
    from gpt2sql.loader import model as loader

    directory = synthetic.write_checkpoint(tmp_path / "ckpt", **TINY, seed=8)
    loader.load_model(conn, directory, "interrupted")
    before = logits(conn, "interrupted")
    calls = []

    def fail_on_third(nbytes):
        calls.append(nbytes)
        if len(calls) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        loader.load_model(conn, synthetic.write_checkpoint(tmp_path / "new", **TINY, seed=9), "interrupted",
                          progress=fail_on_third)
    np.testing.assert_array_equal(logits(conn, "interrupted"), before)


def test_models_lists_and_drop_removes(conn, runner, tmp_path):
    directory = synthetic.write_checkpoint(tmp_path / "ckpt", **TINY, seed=10)
    assert runner(["load", str(directory), "--name", "listed", "--dtype", "float16"]).exit_code == 0
    listing = runner(["models"]).output
    line = next(l for l in listing.splitlines() if " listed " in l)
    assert line.startswith("*") and "float16" in line and "MB" in line
    assert runner(["drop", "listed"]).exit_code == 0
    assert " listed " not in runner(["models"]).output
    assert conn.execute("SELECT to_regnamespace('model_listed')").fetchone()[0] is None
    assert_one_line_error(runner(["drop", "listed"]), "no model named")


def test_load_errors_are_one_line(runner, tmp_path):
    assert_one_line_error(runner(["load", str(tmp_path / "missing")]))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    assert_one_line_error(runner(["load", str(empty)]), "model.safetensors")

    llama = synthetic.write_checkpoint(tmp_path / "llama", **TINY)
    cfg = json.loads((llama / "config.json").read_text())
    cfg["model_type"] = "llama"
    (llama / "config.json").write_text(json.dumps(cfg))
    assert_one_line_error(runner(["load", str(llama)]), "llama", "GPT-2")

    bad_json = synthetic.write_checkpoint(tmp_path / "badjson", **TINY)
    (bad_json / "config.json").write_text("{not json")
    assert_one_line_error(runner(["load", str(bad_json)]), "config.json", "JSON")

    assert_one_line_error(runner(["load", str(bad_json), "--name", "bad name!"]))


def test_generate_without_any_model_says_how_to_load(dsn, tmp_path, monkeypatch):
    """A database with no model, and no hub: one line that says how to load one."""
    import psycopg
    from click.testing import CliRunner

    from gpt2sql.main import cli

    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS gpt2sql_empty")
        admin.execute("CREATE DATABASE gpt2sql_empty")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    empty = psycopg.conninfo.make_conninfo(dsn, dbname="gpt2sql_empty")
    result = CliRunner().invoke(cli, ["--dsn", empty, "generate", "Hello"])
    assert_one_line_error(result, "no model is loaded", "gpt2sql load")


def test_load_if_missing_skips_a_loaded_model(conn, runner, tmp_path):
    directory = synthetic.write_checkpoint(tmp_path / "ckpt", **TINY, seed=11)
    assert runner(["load", str(directory), "--name", "once"]).exit_code == 0
    loaded_at = conn.execute("SELECT loaded_at FROM gpt2.models WHERE name = 'once'").fetchone()[0]
    result = runner(["load", str(directory), "--name", "once", "--if-missing"])
    assert result.exit_code == 0 and "already loaded" in result.output
    assert conn.execute("SELECT loaded_at FROM gpt2.models WHERE name = 'once'").fetchone()[0] == loaded_at


def test_bfloat16_checkpoint_is_one_line_error(runner, tmp_path):
    """safetensors can hold bfloat16, NumPy cannot: say so instead of a traceback."""
    from safetensors.numpy import load_file

    directory = synthetic.write_checkpoint(tmp_path / "bf16", **TINY)
    header, blobs, offset = {}, [], 0
    for name, array in load_file(directory / "model.safetensors").items():
        data = (array.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16).tobytes()  # bfloat16 bits
        header[name] = {"dtype": "BF16", "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header).encode()
    (directory / "model.safetensors").write_bytes(len(raw).to_bytes(8, "little") + raw + b"".join(blobs))
    assert_one_line_error(runner(["load", str(directory), "--name", "bf16"]), "BF16", "float32, float16")


# --- model names and schemas -----------------------------------------------------------


@pytest.mark.parametrize("other", ["foo__loading", "FOO__LOADING", "foo.-loading"])
def test_loading_keeps_a_model_whose_schema_looks_like_a_staging_schema(conn, runner, tmp_path, other):
    """Loading foo used to build in model_foo__loading, dropping the model stored there."""
    assert runner(["load", str(synthetic.write_checkpoint(tmp_path / "o", **TINY, seed=12)), "--name", other]).exit_code == 0
    before = logits(conn, other)
    try:
        assert runner(["load", str(synthetic.write_checkpoint(tmp_path / "f", **TINY, seed=13)), "--name", "foo"]).exit_code == 0
        np.testing.assert_array_equal(logits(conn, other), before)
        listing = runner(["models"])
        assert listing.exit_code == 0 and f" {other} " in listing.output and " foo " in listing.output
    finally:
        runner(["drop", other])
        runner(["drop", "foo"])


def test_longest_accepted_name_loads_and_longer_is_one_line_error(conn, runner, tmp_path):
    """PostgreSQL cuts identifiers at 63 bytes: every accepted name must get a schema of its own."""
    limit = int(conn.execute("SHOW max_identifier_length").fetchone()[0]) - len("model_")
    directory = synthetic.write_checkpoint(tmp_path / "ckpt", **TINY, seed=14)
    longest = "L" + "x" * (limit - 1)
    try:
        assert runner(["load", str(directory), "--name", longest]).exit_code == 0
        assert np.isfinite(logits(conn, longest)).all()
    finally:
        runner(["drop", longest])
    assert_one_line_error(runner(["load", str(directory), "--name", longest + "y"]), f"at most {limit}")
    assert conn.execute("SELECT count(*) FROM gpt2.models WHERE name LIKE 'Lxxx%'").fetchone()[0] == 0


def test_empty_name_is_one_line_error(runner, tmp_path):
    directory = synthetic.write_checkpoint(tmp_path / "ckpt", **TINY)
    assert_one_line_error(runner(["load", str(directory), "--name", ""]), "empty")


def test_concurrent_loads_of_names_sharing_a_schema(dsn, conn, tmp_path):
    """a.b and a_b both live in model_a_b: the second load waits for the first, then says so."""
    import threading

    import psycopg

    from gpt2sql import db
    from gpt2sql.errors import Gpt2SqlError
    from gpt2sql.loader import model as loader

    directory = synthetic.write_checkpoint(tmp_path / "ckpt", **TINY, seed=15)
    first_copying, release = threading.Event(), threading.Event()
    outcome = {}

    def pause(_):  # the first load holds its transaction open until the second one waits
        first_copying.set()
        release.wait(60)

    def load(name, progress=None):
        try:
            with db.connect(dsn) as c:
                outcome[f"{name} pid"] = c.info.backend_pid
                loader.load_model(c, directory, name, progress=progress)
            outcome[name] = "loaded"
        except (Gpt2SqlError, psycopg.Error) as e:
            outcome[name] = e

    first = threading.Thread(target=load, args=("a.b", pause))
    first.start()
    assert first_copying.wait(60)
    second = threading.Thread(target=load, args=("a_b",))
    second.start()
    try:
        for _ in range(600):  # until the second load blocks (on the lock, or on the first load's schema)
            pid = outcome.get("a_b pid")
            if "a_b" in outcome or (pid and conn.execute(
                    "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()[0]):
                break
            threading.Event().wait(0.1)
    finally:
        release.set()
        first.join(60)
        second.join(60)
    try:
        assert outcome["a.b"] == "loaded"
        assert isinstance(outcome["a_b"], Gpt2SqlError) and "collides with the loaded model 'a.b'" in str(outcome["a_b"]), outcome
    finally:
        conn.execute("SELECT 1")
        loader.drop_model(conn, "a.b")


@pytest.mark.slow
def test_a_load_whose_server_process_dies_is_one_line(dsn, conn, tmp_path):
    """The backend ends in the middle of a COPY (pg_terminate_backend: what kill -9 does to the
    client's side, without a crash restart of the shared test server). psycopg's own
    'error ignored terminating <psycopg.Copy [BAD]>' used to come before our line."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    exe = Path(sys.executable).with_name("gpt2sql")
    if not exe.exists():
        pytest.skip(f"no console script at {exe}")
    directory = synthetic.write_checkpoint(tmp_path / "ckpt", **synthetic.CONFIGS["wide"], seed=17)
    load = subprocess.Popen([exe, "--dsn", dsn, "load", str(directory), "--name", "killed"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        pid = None
        while pid is None and load.poll() is None:
            row = conn.execute("SELECT pid FROM pg_stat_activity WHERE query LIKE 'COPY \"model~killed\".%%' "
                               "AND state = 'active'").fetchone()
            pid = row and row[0]
            time.sleep(0.01)
        assert pid is not None, "the load ended before one of its COPYs was seen"
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        out, err = load.communicate(timeout=120)
    finally:
        load.kill()
    assert load.returncode == 1 and out == "", err
    lines = err.splitlines()  # the progress bar's label, if the bar had begun (stderr is no terminal)
    assert lines[-1].startswith("error: ") and lines[:-1] in ([], ["loading killed (float32)"]), err
    assert conn.execute("SELECT count(*) FROM gpt2.models WHERE name = 'killed'").fetchone()[0] == 0


# --- Ctrl-C during a load: the message says whether the model was loaded ---------------------

def interrupted(runner, directory, name):
    """`gpt2sql load` interrupted: (exit status, its last line on stderr)."""
    result = runner(["load", str(directory), "--name", name])
    return result.exit_code, result.stderr.strip().splitlines()[-1]


def test_ctrl_c_after_the_commit_says_the_model_was_loaded(conn, runner, tmp_path, monkeypatch):
    """The server committed, then Ctrl-C reached the client: it used to say just 'interrupted'."""
    from gpt2sql.loader import model as loader

    real = loader.load_model

    def committed_then_interrupted(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(loader, "load_model", committed_then_interrupted)
    directory = synthetic.write_checkpoint(tmp_path / "ckpt", **TINY, seed=18)
    assert interrupted(runner, directory, "ctrl-c") == (130, "interrupted: model ctrl-c was loaded")
    assert conn.execute("SELECT count(*) FROM gpt2.models WHERE name = 'ctrl-c'").fetchone()[0] == 1
    runner(["drop", "ctrl-c"])


@pytest.mark.parametrize("previous", [False, True])
def test_ctrl_c_during_the_copies_says_nothing_was_loaded(conn, runner, tmp_path, monkeypatch, previous):
    from gpt2sql.loader import model as loader

    if previous:
        assert runner(["load", str(synthetic.write_checkpoint(tmp_path / "old", **TINY, seed=19)), "--name", "ctrl-c"]).exit_code == 0
        before = logits(conn, "ctrl-c")
    real = loader.load_model

    def interrupted_midway(*args, progress=None, **kwargs):
        def stop(done):
            raise KeyboardInterrupt

        real(*args, progress=stop, **kwargs)

    monkeypatch.setattr(loader, "load_model", interrupted_midway)
    directory = synthetic.write_checkpoint(tmp_path / "new", **TINY, seed=20)
    if previous:
        assert interrupted(runner, directory, "ctrl-c") == (130, "interrupted: nothing was loaded (the previous ctrl-c is unchanged)")
        np.testing.assert_array_equal(logits(conn, "ctrl-c"), before)
        runner(["drop", "ctrl-c"])
    else:
        assert interrupted(runner, directory, "ctrl-c") == (130, "interrupted: nothing was loaded")
        assert conn.execute("SELECT count(*) FROM gpt2.models WHERE name = 'ctrl-c'").fetchone()[0] == 0


@pytest.fixture
def slow_commit(conn):
    """A deferred trigger that makes the COMMIT of model 'ctrl-c-commit' sleep (60 s at most),
    cancellable or not: (SQL to make the cancel end the COMMIT or not)."""
    def install(cancel_aborts: bool):
        sleep = "PERFORM pg_sleep(60);" if cancel_aborts else \
                "BEGIN PERFORM pg_sleep(60); EXCEPTION WHEN query_canceled THEN NULL; END;"  # the commit goes on
        conn.execute(f"""CREATE OR REPLACE FUNCTION public.gpt2sql_test_slow_commit() RETURNS trigger
                         LANGUAGE plpgsql AS $$ BEGIN IF NEW.name = 'ctrl-c-commit' THEN {sleep} END IF;
                         RETURN NULL; END $$""")
        conn.execute("CREATE CONSTRAINT TRIGGER gpt2sql_test_slow_commit AFTER INSERT ON gpt2.models "
                     "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION public.gpt2sql_test_slow_commit()")

    yield install
    conn.execute("DROP TRIGGER IF EXISTS gpt2sql_test_slow_commit ON gpt2.models")
    conn.execute("DROP FUNCTION IF EXISTS public.gpt2sql_test_slow_commit()")
    conn.execute("DELETE FROM gpt2.models WHERE name = 'ctrl-c-commit'")


@pytest.mark.slow
@pytest.mark.parametrize("cancel_aborts", [False, True])
def test_sigint_during_the_commit_says_what_happened(dsn, conn, tmp_path, slow_commit, cancel_aborts):
    """SIGINT to a real `gpt2sql load` while its COMMIT runs (held there by a deferred trigger):
    the Ctrl-C cancels the COMMIT, or comes too late to (the trigger ignores the cancel)."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    exe = Path(sys.executable).with_name("gpt2sql")
    if not exe.exists():
        pytest.skip(f"no console script at {exe}")
    slow_commit(cancel_aborts)
    directory = synthetic.write_checkpoint(tmp_path / "ckpt", **TINY, seed=27)
    load = subprocess.Popen([exe, "--dsn", dsn, "load", str(directory), "--name", "ctrl-c-commit", "--dtype", "float16"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while load.poll() is None and not conn.execute(
                "SELECT 1 FROM pg_stat_activity WHERE query = 'COMMIT' AND wait_event = 'PgSleep'").fetchone():
            time.sleep(0.05)
        load.send_signal(signal.SIGINT)
        out, err = load.communicate(timeout=120)
    finally:
        load.kill()
    loaded = conn.execute("SELECT count(*) FROM gpt2.models WHERE name = 'ctrl-c-commit'").fetchone()[0] == 1
    assert loaded is not cancel_aborts
    assert load.returncode == 130, err
    assert err.splitlines()[-1] == ("interrupted: nothing was loaded" if cancel_aborts
                                    else "interrupted: model ctrl-c-commit was loaded"), err
