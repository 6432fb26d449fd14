"""`gpt2sql db status | url | stop`: the server behind the commands."""

from __future__ import annotations

import click

from gpt2sql import db
from gpt2sql.main import connection


@click.group("db")
def db_group() -> None:
    """The PostgreSQL server gpt2sql uses."""


@db_group.command("url")
@click.option("--show-password", is_flag=True, help="Print a password given in the DSN or PGPASSWORD instead of ***.")
@click.pass_context
def url_cmd(ctx: click.Context, show_password: bool) -> None:
    """Print a postgresql:// URL that psql accepts: psql "$(gpt2sql db url)"."""
    click.echo(db.url(connection(ctx), show_password=show_password))


@db_group.command("status")
@click.pass_context
def status_cmd(ctx: click.Context) -> None:
    """Show the server, its versions and the loaded models."""
    conn = connection(ctx)
    version, vector = conn.execute(
        "SELECT current_setting('server_version'), (SELECT extversion FROM pg_extension WHERE extname = 'vector')"
    ).fetchone()
    embedded = db.uses_embedded(ctx.find_root().obj["dsn"])
    click.echo(f"server:     {'embedded, data in ' + str(db.data_dir()) if embedded else 'external'}")
    click.echo(f"url:        {db.url(conn)}")
    click.echo(f"postgresql: {version}")
    click.echo(f"pgvector:   {vector}")
    models = [r[0] for r in conn.execute("SELECT name FROM gpt2.models ORDER BY name")]
    click.echo(f"models:     {', '.join(models) if models else '(none loaded)'}")


@db_group.command("stop")
def stop_cmd() -> None:
    """Stop the embedded server (external servers are left alone)."""
    click.echo("stopped the embedded server" if db.stop_embedded() else "the embedded server is not running")


COMMANDS = [db_group]
