"""A read-only role, set up as docs/operations.md's "Read-only users" says: it generates,
changes nothing, keeps its access when a model is reloaded, and a missing grant says so.

The roles are real (CREATE ROLE on the test server); the GRANTs are read from the docs.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql

import synthetic
from test_loader import TINY, assert_one_line_error

OPERATIONS = Path(__file__).resolve().parents[1] / "docs" / "operations.md"


def readme_grants(reader: str, owner: str, schema: str, future: bool) -> list[str]:
    """The docs' GRANT block, for these names; future: with the ALTER DEFAULT PRIVILEGES lines."""
    section = OPERATIONS.read_text().split("## Read-only users", 1)[1].split("\n## ", 1)[0]
    block = [line.strip() for line in section.splitlines() if line.startswith("    ")]
    statements = [re.sub(r"\s*--.*$", "", line) for line in block]
    statements = [s for s in statements if s and (future or "DEFAULT PRIVILEGES" not in s)]
    assert len(statements) >= 4, block
    quoted = {"reader": reader, "gpt2sql": owner, "model_gpt2": schema}
    return [re.sub(r"\b(reader|gpt2sql|model_gpt2)\b", lambda m: sql.Identifier(quoted[m[1]]).as_string(None), s)
            for s in statements]


@pytest.fixture
def reader(dsn, conn):
    """(conninfo, name) of a fresh LOGIN role with no privileges; dropped afterwards."""
    name = f"gpt2sql_reader_{os.getpid()}"
    try:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
    except psycopg.errors.InsufficientPrivilege as e:
        pytest.skip(f"cannot create a role on the test server: {e.diag.message_primary}")
    try:
        yield psycopg.conninfo.make_conninfo(dsn, user=name), name
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))  # its grants, default ones too
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def load(runner, tmp_path, name, seed):
    assert runner(["load", str(synthetic.write_checkpoint(tmp_path / name, **TINY, seed=seed)), "--name", name]).exit_code == 0


def grant(conn, reader_name, model, future=False):
    owner = conn.execute("SELECT current_user").fetchone()[0]
    schema = conn.execute("SELECT schema_name FROM gpt2.models WHERE name = %s", (model,)).fetchone()[0]
    for statement in readme_grants(reader_name, owner, schema, future):
        conn.execute(statement)


def generate(conninfo, model):
    return CliRunner().invoke(__import__("gpt2sql.main", fromlist=["cli"]).cli,
                              ["--dsn", conninfo, "generate", "Hello", "--model", model, "-n", "3", "-t", "0"])


def test_reader_generates_and_changes_nothing(conn, runner, tmp_path, reader):
    conninfo, name = reader
    load(runner, tmp_path, "ro-a", 31)
    grant(conn, name, "ro-a")
    result = generate(conninfo, "ro-a")
    assert result.exit_code == 0 and result.output.startswith("Hello"), result.output
    with psycopg.connect(conninfo, autocommit=True) as c:
        assert c.execute("SELECT gpt2.complete('Hello', model => 'ro-a', max_tokens => 3, temperature => 0)").fetchone()[0]
        assert c.execute("SELECT gpt2.tokenize(repeat('abc', 30))").fetchone()[0]  # a long piece: gpt2.merge_reach
        for statement in ["DELETE FROM gpt2.models", "UPDATE gpt2.vocab SET token = token",
                          "INSERT INTO gpt2.merges (rank, left_id, right_id, merged_id) VALUES (-1, 0, 0, 0)",
                          "UPDATE model_ro_a.wte SET w = w", "DROP SCHEMA model_ro_a CASCADE",
                          "CREATE TABLE gpt2.mine (x int)", "REFRESH MATERIALIZED VIEW gpt2.merge_reach"]:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute(statement)
    for args in (["drop", "ro-a"], ["load", str(tmp_path / "ro-a"), "--name", "ro-a"]):
        assert_one_line_error(CliRunner().invoke(__import__("gpt2sql.main", fromlist=["cli"]).cli, ["--dsn", conninfo, *args]))
    assert conn.execute("SELECT count(*) FROM gpt2.models WHERE name = 'ro-a'").fetchone()[0] == 1
    runner(["drop", "ro-a"])


def test_reload_keeps_the_readers_grants(conn, runner, tmp_path, reader):
    """The load makes a fresh schema; without copying the grants the reader lost the model."""
    conninfo, name = reader
    load(runner, tmp_path, "ro-b", 32)
    grant(conn, name, "ro-b")  # this model only: no default privileges
    load(runner, tmp_path, "ro-b", 33)
    result = generate(conninfo, "ro-b")
    assert result.exit_code == 0 and result.output.startswith("Hello"), result.output
    runner(["drop", "ro-b"])


def test_default_privileges_reach_models_loaded_later(conn, runner, tmp_path, reader):
    conninfo, name = reader
    load(runner, tmp_path, "ro-c", 34)
    grant(conn, name, "ro-c", future=True)
    load(runner, tmp_path, "ro-d", 35)
    result = generate(conninfo, "ro-d")
    assert result.exit_code == 0 and result.output.startswith("Hello"), result.output
    runner(["drop", "ro-c"])
    runner(["drop", "ro-d"])


def test_missing_grant_says_permission_denied(conn, runner, tmp_path, reader):
    conninfo, name = reader
    load(runner, tmp_path, "ro-e", 36)
    load(runner, tmp_path, "ro-f", 37)
    grant(conn, name, "ro-e")  # gpt2 and ro-e, not ro-f
    assert_one_line_error(generate(conninfo, "ro-f"), 'permission denied for model "ro-f"')
    with psycopg.connect(conninfo, autocommit=True) as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match='permission denied for model "ro-f"'):
            c.execute("SELECT gpt2.use_model('ro-f')")
    runner(["drop", "ro-e"])
    runner(["drop", "ro-f"])


def test_reader_granted_before_merge_reach_existed_keeps_tokenizing(conn, reader):
    """An upgrade adds gpt2.merge_reach (long pieces); a reader of gpt2.vocab may read it."""
    from gpt2sql import db

    conninfo, name = reader
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA gpt2 TO {0}; GRANT SELECT ON gpt2.vocab, gpt2.merges, "
                         "gpt2.bytes_to_unicode, gpt2.pretokenizer TO {0}").format(sql.Identifier(name)))
    conn.execute(sql.SQL("REVOKE ALL ON gpt2.merge_reach FROM {}").format(sql.Identifier(name)))
    conn.execute(dict(db.sql_files())["10_tokenizer.sql"])  # what the upgrade applies
    with psycopg.connect(conninfo, autocommit=True) as c:
        assert len(c.execute("SELECT gpt2.tokenize(repeat('abc', 30))").fetchone()[0]) > 1


def psql(dsn, *args):
    """`gpt2sql --dsn DSN psql ARGS` in a process of its own: (exit status, stdout, stderr)."""
    import subprocess
    import sys

    exe = Path(sys.executable).with_name("gpt2sql")
    if not exe.exists():
        pytest.skip(f"no console script at {exe}")
    done = subprocess.run([exe, "--dsn", dsn, "psql", "-X", *args], capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout.strip(), done.stderr


@pytest.fixture
def other_database(dsn, conn):
    """The name of a second, empty database on the test server."""
    name = f"gpt2sql_other_{os.getpid()}"
    try:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.errors.InsufficientPrivilege as e:
        pytest.skip(f"cannot create a database on the test server: {e.diag.message_primary}")
    yield name
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_psql_connects_as_the_role_the_user_names(dsn, conn, reader):
    """-U used to lose to the user= of the -d that gpt2sql passes first: a superuser session."""
    _, name = reader
    query = "SELECT current_user, current_database()"
    database = conn.execute("SELECT current_database()").fetchone()[0]
    for args in (["-U", name], [f"-U{name}"], ["--username", name], [f"--username={name}"], [f"--user={name}"]):
        assert psql(dsn, *args, "-Atc", query) == (0, f"{name}|{database}", ""), args
    assert psql(dsn, "-Atc", query)[1] == f"{conn.execute('SELECT current_user').fetchone()[0]}|{database}"


def test_psql_connects_to_the_database_the_user_names(dsn, conn, reader, other_database):
    _, name = reader
    me = conn.execute("SELECT current_user").fetchone()[0]
    query = "SELECT current_database(), current_user"
    for args in (["-d", other_database], [f"--dbname={other_database}"], [other_database]):  # psql [DBNAME [USERNAME]]
        assert psql(dsn, "-Atc", query, *args) == (0, f"{other_database}|{me}", ""), args
    assert psql(dsn, "-Atc", query, other_database, name) == (0, f"{other_database}|{name}", "")
    assert psql(dsn, "-Atc", query, "-U", name, "--", other_database) == (0, f"{other_database}|{name}", "")


def test_psql_goes_to_the_host_and_port_the_user_names(dsn, tmp_path):
    """An empty socket directory / a closed port: psql says it cannot connect there."""
    code, _, err = psql(dsn, "-h", str(tmp_path), "-Atc", "SELECT 1")
    assert code == 2 and str(tmp_path) in err, err
    code, _, err = psql(dsn, "-p", "1", "-Atc", "SELECT 1")
    assert code == 2 and ("port 1 failed" in err or ".s.PGSQL.1" in err), err
