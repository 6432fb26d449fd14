"""The `gpt2sql` command: parse, call SQL, print. Each command group lives in its own module."""

from __future__ import annotations

import sys

import click

from gpt2sql.errors import Gpt2SqlError


class Gpt2SqlGroup(click.Group):
    """A click group that turns expected failures into one line on stderr and exit status 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except Gpt2SqlError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except Exception as e:  # a database error we did not foresee: still one line
            import psycopg

            if isinstance(e, psycopg.Error):
                diag = getattr(e, "diag", None)
                message = getattr(diag, "message_primary", None) or str(e).strip().splitlines()[0]
                hint = getattr(diag, "message_hint", None)
                click.echo(f"error: {message}" + (f" (hint: {hint})" if hint else ""), err=True)
                sys.exit(1)
            raise


@click.group(cls=Gpt2SqlGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--dsn", envvar="GPT2SQL_DSN", default=None, metavar="DSN",
              help="PostgreSQL (with pgvector) to use. Default: libpq's PG* variables if set, else the embedded server.")
@click.pass_context
def cli(ctx: click.Context, dsn: str | None) -> None:
    """GPT-2 inside PostgreSQL: tokenize, load checkpoints and generate, all in SQL."""
    ctx.obj = {"dsn": dsn}


def connection(ctx: click.Context):
    """The command's database connection (opened once, closed when the command ends)."""
    from gpt2sql import db

    root = ctx.find_root()
    if "conn" not in root.obj:
        root.obj["conn"] = ctx.with_resource(db.connect(root.obj["dsn"]))
    return root.obj["conn"]


def _register() -> None:
    from gpt2sql import db_cmd, generate_cmd, model_cmd, tokenize_cmd

    for module in (db_cmd, tokenize_cmd, model_cmd, generate_cmd):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()
