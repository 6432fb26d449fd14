"""Connection conventions: --dsn / GPT2SQL_DSN, libpq's PG* variables, `db url` for psql,
masked passwords, read-only commands that write nothing, one-line errors (bad DSN, a
server without pgvector), and tests that never reach the user's own database."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from gpt2sql import db
from gpt2sql.main import cli

SECRET = "s3:cr@t/pw"  # characters that need quoting in a URL


def invoke(args, **kwargs):
    return CliRunner().invoke(cli, args, catch_exceptions=False, **kwargs)


def assert_one_line_error(result, contains: str):
    assert result.exit_code == 1, f"exit {result.exit_code}: {result.output}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), f"not one error line: {result.stderr!r}"
    assert contains in lines[0], lines[0]
    assert "Traceback" not in result.output


# --- db status / db url ------------------------------------------------------------------

def test_db_status(runner, conn):
    result = runner(["db", "status"])
    assert result.exit_code == 0, result.output
    fields = dict(line.split(":", 1) for line in result.stdout.splitlines())
    assert fields["server"].strip() == "external"  # the runner passes --dsn
    assert fields["postgresql"].strip() == conn.execute("SHOW server_version").fetchone()[0]
    assert fields["pgvector"].strip() == conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()[0]
    assert "models" in fields


def test_db_url_works_in_psql(runner):
    result = runner(["db", "url", "--show-password"])
    assert result.exit_code == 0, result.output
    url = result.stdout.strip()
    assert url.startswith("postgresql://") and "\n" not in url
    psql = shutil.which("psql")
    if psql is None:
        pytest.skip("no psql client on this machine")
    done = subprocess.run([psql, url, "-XAtc", "select 1"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stdout.strip() == "1", done.stderr


@pytest.fixture
def empty_database(dsn, conn):
    """A new database with nothing in it (no pgvector, no gpt2 schema); its DSN."""
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    name = f"gpt2sql_empty_{os.getpid()}"
    try:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.errors.InsufficientPrivilege as e:
        pytest.skip(f"cannot create a database on the test server: {e.diag.message_primary}")
    try:
        yield make_conninfo(dsn, dbname=name)
    finally:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_read_only_commands_write_nothing(empty_database):
    """db url and db status on a database gpt2sql never used: they work in a read-only
    session, and afterwards there is still no extension, schema or tokenizer."""
    import psycopg
    from psycopg.conninfo import make_conninfo

    read_only = make_conninfo(empty_database, options="-c default_transaction_read_only=on")
    url = invoke(["--dsn", read_only, "db", "url"])
    status = invoke(["--dsn", read_only, "db", "status"])
    assert url.exit_code == status.exit_code == 0, url.output + status.output
    assert "pgvector:   (not installed in this database)" in status.stdout
    assert "models:     (no gpt2 schema yet" in status.stdout
    with psycopg.connect(empty_database) as c:
        assert c.execute("SELECT count(*) FROM pg_extension WHERE extname = 'vector'").fetchone()[0] == 0
        assert c.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'gpt2'").fetchone()[0] == 0


def test_first_uses_at_once_on_a_fresh_database(empty_database):
    """Six first connections at once each create pgvector, the schema and the tokenizer if
    missing; the losers wait for the winner instead of failing (duplicate key)."""
    from concurrent.futures import ThreadPoolExecutor

    def first_use(_):
        with db.connect(empty_database) as c:
            return c.execute("SELECT gpt2.tokenize('hello')").fetchone()[0]

    with ThreadPoolExecutor(6) as pool:
        assert list(pool.map(first_use, range(6))) == [[31373]] * 6


# --- passwords ---------------------------------------------------------------------------

@pytest.mark.parametrize("conninfo, masked", [
    ("postgresql://u:secret@h:5432/d", "postgresql://u:***@h:5432/d"),
    ("postgres://u:p%40ss@h/d?sslmode=require", "postgres://u:***@h/d?sslmode=require"),
    ("postgresql://u@h/d", "postgresql://u@h/d"),
    ("postgresql://u:@h/d", "postgresql://u:@h/d"),
    ("host=h user=u password=secret dbname=d", "host=h user=u password=*** dbname=d"),
    ("host=h password = 'a b\\' c' dbname=d", "host=h password = *** dbname=d"),
    ("host=h dbname=d", "host=h dbname=d"),
    ("", ""),
])
def test_mask_password(conninfo, masked):
    assert db.mask_password(conninfo) == masked
    assert db.mask_password(conninfo, show=True) == conninfo


@pytest.fixture(scope="module")
def password_dsn(dsn, conn):
    """A DSN for a throwaway role with a password. The embedded server trusts its Unix
    socket, so the password is accepted unchecked there: enough to test masking."""
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    role = f"gpt2sql_pw_{os.getpid()}"
    me = conn.execute("SELECT current_user").fetchone()[0]
    try:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(SECRET)))
        conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(me), sql.Identifier(role)))  # sees the gpt2 schema
    except psycopg.errors.InsufficientPrivilege as e:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
        pytest.skip(f"cannot create a role on the test server: {e.diag.message_primary}")
    try:
        yield make_conninfo(dsn, user=role, password=SECRET)
    finally:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def test_url_masks_a_password(password_dsn):
    from urllib.parse import unquote, urlsplit

    with db.connect(password_dsn) as c:
        assert c.info.password == SECRET
        masked, shown = db.url(c), db.url(c, show_password=True)
    assert SECRET not in masked and ":***@" in masked
    assert unquote(urlsplit(shown).password) == SECRET
    assert masked == shown.replace(urlsplit(shown).password, "***")


def test_cli_masks_a_password_unless_asked(password_dsn):
    masked = invoke(["--dsn", password_dsn, "db", "url"])
    shown = invoke(["--dsn", password_dsn, "db", "url", "--show-password"])
    status = invoke(["--dsn", password_dsn, "db", "status"])
    assert masked.exit_code == shown.exit_code == status.exit_code == 0, masked.output + shown.output + status.output
    assert "***" in masked.stdout and "s3" not in masked.stdout and "s3" not in status.stdout
    psql = shutil.which("psql")
    if psql:  # the shown URL carries the password in a form psql takes
        done = subprocess.run([psql, shown.stdout.strip(), "-XAtc", "select current_user"], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0 and done.stdout.strip().startswith("gpt2sql_pw_"), done.stderr


# --- libpq environment -------------------------------------------------------------------

def test_libpq_variables_are_honoured(dsn, conn, monkeypatch, tmp_path):
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(dsn)
    for var in db.LIBPQ_VARS + ("GPT2SQL_DSN",):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GPT2SQL_DATA", str(tmp_path / "must-not-be-used"))  # no embedded server
    names = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "dbname": "PGDATABASE", "password": "PGPASSWORD"}
    for key, var in names.items():
        if params.get(key):
            monkeypatch.setenv(var, str(params[key]))
    result = invoke(["db", "status"])
    assert result.exit_code == 0, result.output
    assert "server:     external" in result.stdout
    assert f"url:        {db.url(conn)}" in result.stdout  # the same server and database
    assert not (tmp_path / "must-not-be-used").exists()


# --- errors ------------------------------------------------------------------------------

@pytest.mark.parametrize("bad, contains", [
    ("postgresql://nobody:pw@127.0.0.1:1/none?connect_timeout=3", "cannot connect to PostgreSQL (postgresql://nobody:***@"),
    # it used to be libpq's words alone, not saying which setting they were about
    ("this is not a dsn", 'error: --dsn / GPT2SQL_DSN is not a connection string libpq takes: missing "=" after "this"'),
])
def test_bad_dsn_is_one_line(bad, contains):
    result = invoke(["--dsn", bad, "db", "status"])
    assert_one_line_error(result, contains)


def test_bad_dsn_in_a_real_process():
    """The installed console script: exit status 1, one line on stderr, no traceback."""
    exe = Path(sys.executable).with_name("gpt2sql")
    if not exe.exists():
        pytest.skip(f"no console script at {exe}")
    env = {k: v for k, v in os.environ.items() if k not in db.LIBPQ_VARS}
    env["GPT2SQL_DSN"] = "postgresql://nobody:pw@127.0.0.1:1/none?connect_timeout=3"
    done = subprocess.run([exe, "db", "status"], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 1
    assert done.stdout == "" and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith("error: cannot connect to PostgreSQL") and "pw@" not in done.stderr


@pytest.mark.parametrize("bad", ["host=\udcff", "postgresql://u\udcfe@h/d", "host=h\x00"])
def test_dsn_that_is_not_utf8_is_one_line(bad):
    """Bytes that are not UTF-8 reach click as lone surrogates; a NUL cannot reach libpq."""
    result = invoke(["--dsn", bad, "db", "url"])
    assert_one_line_error(result, "--dsn / GPT2SQL_DSN")


def test_dsn_that_is_not_utf8_in_a_real_process():
    exe = Path(sys.executable).with_name("gpt2sql")
    if not exe.exists():
        pytest.skip(f"no console script at {exe}")
    for args, env in [([b"--dsn", b"host=\xff"], {}), ([], {b"GPT2SQL_DSN": b"host=\xfe"})]:
        done = subprocess.run([exe, *args, "db", "url"], capture_output=True, timeout=60,
                              env={**os.environb, **env})
        assert done.returncode == 1 and done.stdout == b"", done.stderr
        assert done.stderr == b"error: --dsn / GPT2SQL_DSN is not valid UTF-8\n", done.stderr


@pytest.fixture(scope="module")
def server_without_pgvector():
    """A throwaway system PostgreSQL (Debian's, no pgvector) on a Unix socket in a temp dir."""
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not bins:
        pytest.skip("no system PostgreSQL (/usr/lib/postgresql/*/bin/initdb)")
    bindir = bins[-1].parent
    as_user: list[str] = []
    owner = None
    if os.geteuid() == 0:  # initdb refuses root: run it as an existing unprivileged user
        import pwd

        for name in ("postgres", "pgserver", "nobody"):
            try:
                owner = pwd.getpwnam(name)
            except KeyError:
                continue
            if shutil.which("runuser"):
                as_user = ["runuser", "-u", name, "--"]
                break
        if not as_user:
            pytest.skip("running as root without runuser or an unprivileged user for initdb")
    tmp = Path(tempfile.mkdtemp(prefix="gpt2sql-pg-"))
    os.chmod(tmp, 0o755)
    if owner is not None:
        os.chown(tmp, owner.pw_uid, owner.pw_gid)
    data, port = tmp / "data", 54329

    def run(*args):
        return subprocess.run([*as_user, str(bindir / args[0]), *args[1:]], capture_output=True, text=True, timeout=60, cwd=tmp)

    done = run("initdb", "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync")
    if done.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        pytest.skip(f"initdb failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    options = f"-k {tmp} -p {port} -c listen_addresses='' -c fsync=off -c shared_buffers=16MB"
    done = run("pg_ctl", "-D", str(data), "-o", options, "-l", str(tmp / "log"), "-w", "-t", "30", "start")
    if done.returncode != 0:
        log = (tmp / "log").read_text() if (tmp / "log").exists() else done.stderr
        shutil.rmtree(tmp, ignore_errors=True)
        pytest.skip(f"the system PostgreSQL did not start: {(log.strip().splitlines() or ['?'])[-1]}")
    try:
        yield f"host={tmp} port={port} user=postgres dbname=postgres"
    finally:
        run("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(tmp, ignore_errors=True)


def test_server_without_pgvector_is_one_line(server_without_pgvector):
    import psycopg

    with psycopg.connect(server_without_pgvector) as c:
        if c.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'").fetchone():
            pytest.skip("this system PostgreSQL has pgvector installed")
        major = c.execute("SHOW server_version_num").fetchone()[0][:2]
    result = invoke(["--dsn", server_without_pgvector, "tokenize", "hello"])
    assert_one_line_error(result, "this PostgreSQL server has no pgvector extension")
    assert f"apt install postgresql-{major}-pgvector" in result.stderr
    status = invoke(["--dsn", server_without_pgvector, "db", "status"])  # only reads: says so, and works
    assert status.exit_code == 0 and "pgvector:   (not installed in this database)" in status.stdout, status.output


# --- the tests never reach the user's database -----------------------------------------

def test_only_gpt2sql_test_dsn_names_a_test_database():
    from conftest import dsn_from_environment

    assert dsn_from_environment({"GPT2SQL_DSN": "postgresql://me@localhost/mine", "PGHOST": "localhost"}) is None
    assert dsn_from_environment({"GPT2SQL_TEST_DSN": "dbname=scratch", "GPT2SQL_DSN": "dbname=mine"}) == "dbname=scratch"


def test_the_session_environment_names_no_user_server():
    """Every CLI run, subprocess and README command in this session inherits this environment."""
    from conftest import scrubbed

    assert scrubbed("GPT2SQL_DSN") and scrubbed("PGHOST") and scrubbed("PGSERVICEFILE") and not scrubbed("PGSERVER_X")
    left = [name for name in os.environ if scrubbed(name) and name != "GPT2SQL_DATA"]
    assert not left, f"still in the environment: {left}"
    for name in ("GPT2SQL_DATA", "TIKTOKEN_CACHE_DIR", "HF_HOME"):
        assert Path(os.environ[name]).parent.name.startswith("gpt2sql-tests-"), (name, os.environ[name])


@pytest.mark.slow
def test_a_pytest_run_never_uses_gpt2sql_dsn(tmp_path):
    """A user's shell with GPT2SQL_DSN and PG* set (README's compose setup), and an embedded
    data directory: a test run reaches none of them. A listener stands in for the server."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    reached = []

    def accept():
        while True:
            try:
                reached.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / "conftest.py").write_text((Path(__file__).with_name("conftest.py")).read_text())
    (inner / "test_inner.py").write_text(
        "def test_cli_and_connection(runner, conn):\n"
        "    assert runner(['tokenize', 'hello']).stdout.strip() == '[31373]'\n"
        "    assert conn.execute('SELECT gpt2.tokenize(%s)', ('hello',)).fetchone()[0] == [31373]\n"
    )
    user_data = tmp_path / "users-embedded-pgdata"
    env = {k: v for k, v in os.environ.items() if k != "GPT2SQL_TEST_DSN"}
    env.update(GPT2SQL_DSN=f"postgresql://me:pw@127.0.0.1:{port}/mine?connect_timeout=3", PGHOST="127.0.0.1",
               PGPORT=str(port), PGDATABASE="mine", GPT2SQL_DATA=str(user_data))
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               f"--basetemp={tmp_path / 'basetemp'}", str(inner)],
                              cwd=inner, env=env, capture_output=True, text=True, timeout=600)
    finally:
        listener.close()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "gpt2sql test database: embedded server" in done.stdout
    assert not reached, "the test run connected to the server in GPT2SQL_DSN / PGHOST"
    assert not user_data.exists(), "the test run used the embedded server in GPT2SQL_DATA"


# --- gpt2sql psql: what ARGS say about the connection wins ---------------------------------

@pytest.mark.parametrize("args, given", [
    (("-XAtc", "SELECT 1"), {}),
    (("-U", "bob", "-c", "x"), {"user": "bob"}),
    (("-Ubob",), {"user": "bob"}),
    (("--user=bob", "--ho", "h2"), {"user": "bob", "host": "h2"}),
    (("-qp5433", "--port=6"), {"port": "6"}),                       # the last one wins
    (("-c", "-U x"), {}),                                          # a value, not an option
    (("-v", "x=1", "db2", "bob"), {"dbname": "db2", "user": "bob"}),
    (("-d", "db2", "bob", "extra"), {"dbname": "db2", "user": "bob"}),
    (("--", "-weird-db"), {"dbname": "-weird-db"}),
    (("-d", "postgresql://carl@h3/db3",), {"dbname": "postgresql://carl@h3/db3", "user": "carl", "host": "h3"}),
])
def test_psql_connection_args(args, given):
    from gpt2sql.psql_cmd import connection_args

    assert connection_args(args) == given


def test_psql_args_override_the_dsn(monkeypatch):
    from gpt2sql import psql_cmd

    monkeypatch.setattr(psql_cmd, "psql_path", lambda embedded: "psql")
    dsn = "postgresql://ann:s3cret@db.example:5433/g?sslmode=require"
    argv, env = psql_cmd.psql_command(dsn, False, ("-U", "bob"))
    assert argv[:2] == ["psql", "-d"] and "user=" not in argv[2] and "host=db.example" in argv[2]
    assert "PGPASSWORD" not in env or env["PGPASSWORD"] != "s3cret", "ann's password must not go to bob's login"
    argv, env = psql_cmd.psql_command(dsn, False, ("-U", "ann", "-p", "5434"))
    assert "port=" not in argv[2] and env["PGPASSWORD"] == "s3cret"
    argv, env = psql_cmd.psql_command(dsn, False, ("-Atc", "SELECT 1", "db2"))  # psql's DBNAME: no -d of ours
    assert argv == ["psql", "-Atc", "SELECT 1", "db2"]
    assert (env["PGHOST"], env["PGPORT"], env["PGUSER"], env["PGSSLMODE"], env["PGPASSWORD"]) == (
        "db.example", "5433", "ann", "require", "s3cret")
    assert env.get("PGDATABASE") != "g"
