"""`gpt2sql serve`: the glass box as a local web page (cli/serve/, docs/serve.md)."""

from __future__ import annotations

import click

from gpt2sql.errors import Gpt2SqlError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@click.command("serve")
@click.option("--model", "-m", help="Model the page opens with. Default: the latest loaded.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind; anything but loopback "
              "makes the page reachable from other machines.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--read-only", is_flag=True, help="Run every query as a role that may only read (created once: "
              f"docs/serve.md).")
@click.pass_context
def serve_cmd(ctx, model, host, port, read_only):
    """Show the glass box as a web page, each number with its SQL.

    Attention, logit lens, scores, what-ifs and more (docs/serve.md).

    Prints the URL and opens nothing. Every request runs in its own transaction, rolled back.
    """
    from gpt2sql import db
    from gpt2sql.main import connection
    from gpt2sql.serve import app as serve_app
    from gpt2sql.serve import panels

    conn = connection(ctx)   # creates or upgrades the schema, like every other command
    if model:
        try:
            panels.model_row(conn, model)
        except panels.BadRequest as e:
            raise Gpt2SqlError(str(e)) from None
    if read_only:
        import psycopg

        try:
            serve_app.ensure_reader(conn)
        except psycopg.Error as e:
            raise Gpt2SqlError(f"--read-only needs a role that may create the role {serve_app.READER!r} "
                               f"and grant it reading: {e.diag.message_primary}") from None
    conninfo = db.resolve_dsn(ctx.find_root().obj["dsn"])
    import uvicorn

    shown = f"[{host}]" if ":" in host else host
    click.echo(f"gpt2sql serve: http://{shown}:{port}/  (Ctrl-C stops)")
    if host not in LOOPBACK:
        click.echo(f"warning: bound to {host}: anyone who can reach this address can use the page and its database. "
                   f"From another machine, prefer a tunnel to a loopback server:\n"
                   f"  ssh -L {port}:localhost:{port} user@host", err=True)
    uvicorn.run(serve_app.create_app(conninfo, read_only=read_only, model=model), host=host, port=port,
                log_level="warning")


COMMANDS = [serve_cmd]
