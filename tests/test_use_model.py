"""Which model the stage functions read: gpt2.use_model / gpt2.current_model, in a fresh
session as a psql user has it (no gpt2.use_model call, the server's default search path)."""

from __future__ import annotations

import psycopg
import pytest

import synthetic
from test_loader import TINY


@pytest.fixture(scope="module")
def fresh(dsn, runner, tmp_path_factory):
    """A new connection of plain psycopg (not gpt2sql's), after loading a model."""
    directory = synthetic.write_checkpoint(tmp_path_factory.mktemp("use") / "ckpt", **TINY, seed=41)
    assert runner(["load", str(directory), "--name", "use-model"]).exit_code == 0

    def connect():
        return psycopg.connect(dsn, autocommit=True)

    yield connect
    runner(["drop", "use-model"])


def test_current_model_without_use_model_is_the_default(fresh):
    with fresh() as c:
        assert c.execute("SELECT (gpt2.current_model()).name = gpt2.default_model()").fetchone()[0]


def test_stage_function_in_a_fresh_session_uses_the_default_model(fresh):
    """gpt2.transformer used to fail with a raw 'relation "wte" does not exist' and its
    QUERY/CONTEXT lines: the stage functions name the model's tables without a schema."""
    with fresh() as c:
        n = c.execute("SELECT cardinality(gpt2.transformer(gpt2.tokenize('Hi there'), 0))").fetchone()[0]
        assert n == 2


def test_readme_stage_example_in_a_fresh_session(fresh):
    with fresh() as c:
        assert c.execute("SELECT gpt2.ln('ln_1', 0, gpt2.embed(gpt2.tokenize('Hi there'), 0))").fetchone()[0]


def test_use_model_then_current_model(fresh):
    with fresh() as c:
        c.execute("SELECT gpt2.use_model('use-model')")
        assert c.execute("SELECT (gpt2.current_model()).name").fetchone()[0] == "use-model"


def test_model_of_an_older_table_layout_is_refused_with_the_reload_command(fresh):
    """A model loaded by a release whose tables the stage functions no longer read."""
    with fresh() as c, pytest.raises(psycopg.errors.RaiseException) as e:
        with c.transaction():
            c.execute("UPDATE gpt2.models SET layout = 1 WHERE name = 'use-model'")
            c.execute("SELECT gpt2.use_model('use-model')")
    assert "loaded by an older gpt2sql" in str(e.value)
    assert "gpt2sql load " in e.value.diag.message_hint and "--name use-model" in e.value.diag.message_hint
