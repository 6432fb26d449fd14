"""`gpt2sql load | models | drop`: checkpoints in and out of the database."""

from __future__ import annotations

import click

from gpt2sql.main import connection


def _default_name(source: str) -> str:
    """gpt2 for 'openai-community/gpt2', the directory's name for a local path."""
    from pathlib import Path

    from gpt2sql.loader.hub import looks_like_local

    if not looks_like_local(source):
        return source.rstrip("/").split("/")[-1]
    path = Path(source).expanduser()
    # resolve(): '.' and links get their directory's name; a looping link cannot be resolved
    # (resolve_checkpoint says so next)
    return (path.resolve() if path.exists() else path.absolute()).name


def load_into(ctx: click.Context, source: str, name: str | None, dtype: str) -> str:
    """Resolve SOURCE (hub name or directory), load it with a progress bar; returns the model name."""
    import contextlib
    import sys

    from gpt2sql.loader.checkpoint import nbytes, read_config
    from gpt2sql.loader.hub import resolve_checkpoint
    from gpt2sql.loader.model import load_model

    directory = resolve_checkpoint(source)
    name = _default_name(source) if name is None else name  # --name "" is an error, not a default
    bar = click.progressbar(length=nbytes(read_config(directory)), label=f"loading {name} ({dtype})",
                            file=sys.stderr, show_eta=True, show_percent=True)
    shown, xid = [], []
    conn = connection(ctx)
    try:
        with contextlib.ExitStack() as stack:

            def progress(done: int) -> None:  # the bar appears with the first tensor: checks fail before it
                if not shown:
                    shown.append(stack.enter_context(bar))
                bar.update(done)

            load_model(conn, directory, name, dtype, source=source, progress=progress, started=xid.append)
    except KeyboardInterrupt:
        # Ctrl-C may come while the COMMIT runs: the model may be loaded or not, so find out
        click.echo(f"\ninterrupted: {_interrupted_load(ctx, conn, name, xid[0] if xid else None)}", err=True)
        ctx.exit(130)
    return name


def _interrupted_load(ctx: click.Context, conn, name: str, xid: str | None) -> str:
    """What an interrupted load left behind, asked on a fresh connection."""
    import psycopg

    from gpt2sql import db
    from gpt2sql.errors import Gpt2SqlError
    from gpt2sql.loader.model import load_committed

    conn.close()  # so that the server ends the load's transaction, if it is still open
    try:
        with db.connect(ctx.find_root().obj["dsn"], prepare=False) as fresh:
            committed = load_committed(fresh, xid)
            previous = fresh.execute("SELECT 1 FROM gpt2.models WHERE name = %s", (name,)).fetchone()
    except (Gpt2SqlError, psycopg.Error) as e:
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return f"whether model {name} was loaded is unknown ({why}): gpt2sql models shows it"
    if committed is None:
        return f"the load of {name} is still ending: gpt2sql models will show whether it was loaded"
    if committed:
        return f"model {name} was loaded"
    return f"nothing was loaded (the previous {name} is unchanged)" if previous else "nothing was loaded"


@click.command("load")
@click.argument("source")
@click.option("--name", help="Name to load it under. Default: the repository or directory name.")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True,
              help="Weight storage: pgvector vector (float32) or halfvec (float16, half the size, ~1.5x faster).")
@click.option("--if-missing", is_flag=True,
              help="Do nothing when a model of that name is already loaded with this --dtype (another dtype is reloaded).")
@click.pass_context
def load_cmd(ctx: click.Context, source: str, name: str | None, dtype: str, if_missing: bool) -> None:
    """Load a GPT-2 checkpoint: a Hugging Face name or a directory.

    SOURCE: a Hugging Face name (gpt2, gpt2-medium, gpt2-large, gpt2-xl, distilgpt2,
    owner/repo) or a local directory with config.json and model.safetensors.
    Loading again under the same name replaces the model in one transaction."""
    if if_missing:
        wanted = _default_name(source) if name is None else name
        row = connection(ctx).execute("SELECT dtype FROM gpt2.models WHERE name = %s", (wanted,)).fetchone()
        if row and row[0] == dtype:
            click.echo(f"{wanted} is already loaded ({dtype})", err=True)
            return
        if row:  # e.g. docker compose with a new GPT2SQL_DTYPE: the name alone would keep the old weights
            click.echo(f"{wanted} is loaded as {row[0]}: reloading it as {dtype}", err=True)
    name = load_into(ctx, source, name, dtype)
    click.echo(f"loaded {name}", err=True)


@click.command("models")
@click.pass_context
def models_cmd(ctx: click.Context) -> None:
    """List the loaded models and their sizes.

    * marks the default model: the latest loaded."""
    from gpt2sql.loader.model import list_models

    models = list_models(connection(ctx))
    if not models:
        click.echo("no model loaded: gpt2sql load gpt2 (or a local checkpoint directory)")
        return
    click.echo(f"  {'name':<20} {'layers':>6} {'width':>6} {'heads':>5} {'context':>7} {'dtype':>8} {'size':>9}  source")
    for m in models:
        click.echo(f"{'*' if m['is_default'] else ' '} {m['name']:<20} {m['n_layer']:>6} {m['n_embd']:>6} {m['n_head']:>5} "
                   f"{m['n_positions']:>7} {m['dtype']:>8} {m['bytes'] / 2**20:>7.0f}MB  {m['source']}")


@click.command("drop")
@click.argument("name")
@click.pass_context
def drop_cmd(ctx: click.Context, name: str) -> None:
    """Remove a loaded model and its tables."""
    from gpt2sql.loader.model import drop_model

    drop_model(connection(ctx), name)
    click.echo(f"dropped {name}")


COMMANDS = [load_cmd, models_cmd, drop_cmd]
