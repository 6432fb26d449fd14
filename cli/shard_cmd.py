"""`gpt2sql shard setup | load`: a coordinator over N shard servers (docs/sharding.md)."""

from __future__ import annotations

import click

SHARD_OPTION = click.option("--shard", "shards", multiple=True, required=True, metavar="DSN",
                            help="A shard server's connection string (repeatable; the order is the partitions' order).")


@click.group("shard")
def shard_group() -> None:
    """Shard documents across servers with postgres_fdw.

    \b
    gpt2sql --dsn COORDINATOR shard setup --shard DSN1 --shard DSN2
    gpt2sql shard load gpt2 --shard DSN1 --shard DSN2
    then, on the coordinator: INSERT INTO gpt2_coord.docs ...;
    SELECT * FROM gpt2_coord.perplexity();  (docs/sharding.md)"""


@shard_group.command("setup")
@SHARD_OPTION
@click.pass_context
def setup_cmd(ctx: click.Context, shards: tuple[str, ...]) -> None:
    """Make --dsn the coordinator of the --shard servers (again: replaces the previous setup)."""
    from gpt2sql import db, shard

    for dsn in shards:
        db.check_dsn(dsn)
    # the coordinator needs postgres_fdw, not the gpt2 schema: connect without preparing it
    coordinator = ctx.with_resource(db.connect(ctx.find_root().obj["dsn"], prepare=False))
    shard.setup(coordinator, list(shards))
    click.echo(f"coordinator set up over {len(shards)} shards", err=True)


@shard_group.command("load")
@click.argument("source")
@SHARD_OPTION
@click.option("--name", help="Name to load it under. Default: the repository or directory name.")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True)
@click.pass_context
def load_cmd(ctx: click.Context, source: str, shards: tuple[str, ...], name: str | None, dtype: str) -> None:
    """Load one checkpoint onto every --shard server, one after the other (each in one transaction)."""
    from gpt2sql import db
    from gpt2sql.model_cmd import load_into

    for dsn in shards:
        db.check_dsn(dsn)
    root = ctx.find_root().obj
    coordinator = root.get("dsn")
    for i, dsn in enumerate(shards):
        # load_into uses the command's connection (and its DSN, after a Ctrl-C): the shard's, for now
        root.update(dsn=dsn, conn=db.connect(dsn))
        try:
            loaded = load_into(ctx, source, name, dtype)
        finally:
            root.pop("conn").close()
            root["dsn"] = coordinator
        click.echo(f"loaded {loaded} on shard {i} of {len(shards)}", err=True)


COMMANDS = [shard_group]
