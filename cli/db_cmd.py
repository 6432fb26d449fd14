"""`gpt2sql db status | url | stop`: the server behind the commands.

`db url` and `db status` only read: they connect with prepare=False, so they create no
extension or schema and load nothing, and work with a read-only role or on a standby; and
with start=False, so a stopped embedded server stays stopped.
"""

from __future__ import annotations

import click

from gpt2sql import db


@click.group("db")
def db_group() -> None:
    """The PostgreSQL server gpt2sql uses."""


def read_only_connection(ctx: click.Context):
    """A connection that writes nothing to the database and starts no server (closed when
    the command ends)."""
    root = ctx.find_root()
    return ctx.with_resource(db.connect(root.obj["dsn"], prepare=False, start=False))


@db_group.command("url")
@click.option("--show-password", is_flag=True, help="Print a password given in the DSN or PGPASSWORD instead of ***.")
@click.pass_context
def url_cmd(ctx: click.Context, show_password: bool) -> None:
    """Print a postgresql:// URL that psql accepts: psql "$(gpt2sql db url)"."""
    try:
        conn = read_only_connection(ctx)
    except db.EmbeddedNotRunning as e:
        raise db.EmbeddedNotRunning(f"{e}: db url does not start it; the next command that uses the database "
                                    "does, e.g. gpt2sql psql") from None
    click.echo(db.url(conn, show_password=show_password))


@db_group.command("status")
@click.pass_context
def status_cmd(ctx: click.Context) -> None:
    """Show the server, its versions and the loaded models (a stopped embedded server stays stopped)."""
    from gpt2sql import embedded

    try:
        conn = read_only_connection(ctx)
    except db.EmbeddedNotRunning:
        pgdata = embedded.data_dir()
        click.echo(f"server:     embedded, data in {pgdata}")
        if not (pgdata / "PG_VERSION").exists():
            click.echo("state:      not created yet (the first command that uses the database creates it)")
        elif embedded.running(pgdata):
            click.echo("state:      starting")
        else:
            click.echo("state:      stopped (db status does not start it; the next command that uses the database does)")
        return
    version, vector, schema = conn.execute(
        "SELECT current_setting('server_version'), (SELECT extversion FROM pg_extension WHERE extname = 'vector'),"
        " to_regclass('gpt2.models') IS NOT NULL"
    ).fetchone()
    embedded_server = db.uses_embedded(ctx.find_root().obj["dsn"])
    click.echo(f"server:     {'embedded, data in ' + str(embedded.data_dir()) if embedded_server else 'external'}")
    click.echo(f"url:        {db.url(conn)}")
    click.echo(f"postgresql: {version}")
    click.echo(f"pgvector:   {vector or '(not installed in this database)'}")
    if schema:
        models = [r[0] for r in conn.execute("SELECT name FROM gpt2.models ORDER BY name")]
        click.echo(f"models:     {', '.join(models) if models else '(none loaded)'}")
    else:
        click.echo("models:     (no gpt2 schema yet: the first tokenize, load or generate creates it)")


@db_group.command("stop")
def stop_cmd() -> None:
    """Stop the embedded server (external servers are left alone)."""
    from gpt2sql import embedded

    click.echo("stopped the embedded server" if embedded.stop() else "the embedded server is not running")


COMMANDS = [db_group]
