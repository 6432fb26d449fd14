"""`gpt2sql train | init | export`: fine-tune a model on text in SQL, make a new one, write one out.

The work is SQL (sql/99_train.sql): gpt2.train_start cuts the text into blocks and copies the
model, then one round trip per step (gpt2.train_next), each step committed as it ends, so a
progress bar can show the loss as it comes and Ctrl-C loses at most the step in progress.
"""

from __future__ import annotations

import sys

import click

from gpt2sql.errors import Gpt2SqlError
from gpt2sql.main import connection
from gpt2sql.tokenize_cmd import checked_text, read_file

INT4_MAX = 2**31 - 1


def _finite(ctx, param, value):
    import math

    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"must be a finite number, not {value}")
    return value


def _start(ctx, conn, model, query, file, into, replace, options) -> str:
    """gpt2.train_start; returns the name of the model that trains."""
    if (query is None) == (file is None):
        raise click.UsageError("give --query SQL or --file PATH (one of them), or --resume", ctx)
    if file is not None:  # the file's text, as a one-row query on this connection
        conn.execute("CREATE TEMPORARY TABLE IF NOT EXISTS train_file (body text)")
        conn.execute("TRUNCATE train_file")
        conn.execute("INSERT INTO train_file VALUES (%s)", (checked_text(read_file(file)),))
        query = "SELECT body FROM pg_temp.train_file"
    name, blocks, tokens = conn.execute(
        """SELECT * FROM gpt2.train_start(%s, %s, %s, steps => %s, batch_size => %s, block_size => %s, lr => %s,
                                          min_lr => %s, warmup => %s, seed => %s, weight_decay => %s, clip => %s,
                                          replace => %s)""",
        (model, query, into, *options, replace)).fetchone()
    click.echo(f"{name}: {tokens} tokens in {blocks} blocks", err=True)
    return name


@click.command("train")
@click.argument("model")
@click.option("--query", help="SQL returning the text to train on, one document per row (its first column).")
@click.option("--file", "file", metavar="PATH", help="A UTF-8 text file to train on (one document).")
@click.option("--into", help="Name of the trained copy. Default: MODEL-ft (MODEL itself: train it in place).")
@click.option("--replace", is_flag=True, help="Replace a model of the --into name.")
@click.option("--resume", is_flag=True, help="Go on with the run of --into (default MODEL-ft) from its last step.")
@click.option("--steps", type=click.IntRange(1, INT4_MAX), default=100, show_default=True, help="AdamW steps.")
@click.option("--batch-size", type=click.IntRange(1, 64), default=4, show_default=True, help="Blocks per step.")
@click.option("--block-size", type=click.IntRange(2, INT4_MAX),
              help="Tokens per block, at most the model's context. Default: 128, or the context if shorter.")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=6e-4, show_default=True, callback=_finite,
              help="Peak learning rate.")
@click.option("--min-lr", type=click.FloatRange(0), callback=_finite, help="Learning rate at the end. Default: lr / 10.")
@click.option("--warmup", type=click.IntRange(0, INT4_MAX), default=10, show_default=True,
              help="Steps of linear warmup, then cosine decay to --min-lr.")
@click.option("--weight-decay", type=click.FloatRange(0), default=0.1, show_default=True, callback=_finite,
              help="AdamW's decoupled weight decay (2-D tensors only).")
@click.option("--clip", type=click.FloatRange(0, min_open=True), default=1.0, show_default=True, callback=_finite,
              help="Clip the gradient's global norm to this.")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True, help="Order of the blocks.")
@click.option("-o", "--output", metavar="FILE", help="Draw the loss curve (.png, .svg or .pdf; needs matplotlib).")
@click.pass_context
def train_cmd(ctx, model, query, file, into, replace, resume, steps, batch_size, block_size, lr, min_lr, warmup,
              weight_decay, clip, seed, output):
    """Train MODEL on text, in SQL: backpropagation and AdamW.

    The text (--query or --file) is tokenized, its documents joined with <|endoftext|> and cut
    into blocks; each step takes --batch-size blocks in an order drawn from --seed. A copy
    trains (--into), the source stays as it is. Every step is committed: after Ctrl-C,
    --resume goes on from the last one and ends with the weights an uninterrupted run gives.
    """
    import time

    if output:
        from gpt2sql import plots

        plots.check_output(output)  # before any work
    conn = connection(ctx)
    if resume:
        if query is not None or file is not None:
            raise click.UsageError("--resume goes on with the run's own text: no --query or --file", ctx)
        name = into or f"{model}-ft"
        if conn.execute("SELECT 1 FROM gpt2.train_runs WHERE model = %s", (name,)).fetchone() is None:
            raise Gpt2SqlError(f"model {name!r} has no training run to resume")
    else:
        name = _start(ctx, conn, model, query, file, into, replace,
                      (steps, batch_size, block_size, lr, min_lr, warmup, seed, weight_decay, clip))
    done, total = conn.execute("SELECT m.step, r.steps FROM gpt2.models m JOIN gpt2.train_runs r ON r.model = m.name "
                               "WHERE m.name = %s", (name,)).fetchone()
    started, last = time.monotonic(), None
    try:
        with click.progressbar(length=total, label=f"training {name}", file=sys.stderr, show_eta=True,
                               item_show_func=lambda s: s) as bar:
            bar.update(done)
            while True:
                row = conn.execute("SELECT step, loss, lr, grad_norm FROM gpt2.train_next(%s)", (name,)).fetchone()
                if row is None:
                    break
                last = row
                bar.update(1, f"loss {row[1]:.4f}")
    except KeyboardInterrupt:
        step = conn.execute("SELECT step FROM gpt2.models WHERE name = %s", (name,)).fetchone()[0] if not conn.closed else "?"
        click.echo(f"\ninterrupted after step {step}: gpt2sql train {model} --into {name} --resume goes on", err=True)
        ctx.exit(130)
    if last is not None:
        click.echo(f"{name}: step {last[0]}/{total}, loss {last[1]:.4f} ({time.monotonic() - started:.0f} s)")
    else:
        click.echo(f"{name}: all {total} steps are done")
    if output:
        from gpt2sql import plots

        log = conn.execute("SELECT step, loss, lr FROM gpt2.train_log WHERE model = %s ORDER BY step", (name,)).fetchall()
        plots.loss_curve(output, log, name)
        click.echo(f"wrote {output}", err=True)


@click.command("init")
@click.argument("name")
@click.option("--layers", type=click.IntRange(1, 96), default=2, show_default=True, help="n_layer.")
@click.option("--heads", type=click.IntRange(1, 128), default=4, show_default=True, help="n_head.")
@click.option("--width", type=click.IntRange(1, 2000), default=128, show_default=True, help="n_embd.")
@click.option("--context", type=click.IntRange(2, 16000), default=256, show_default=True, help="n_positions.")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True)
@click.pass_context
def init_cmd(ctx, name, layers, heads, width, context, seed):
    """Make NAME, a new GPT-2 with random weights, to train.

    A GPT-2 of these shapes with GPT-2's own initialization: it predicts every token about
    equally (loss ~10.8) until it is trained (gpt2sql train NAME --into NAME ...)."""
    from gpt2sql.loader.init import init_model

    init_model(connection(ctx), name, layers, heads, width, context, seed)
    click.echo(f"made {name}: {layers} layers, {heads} heads, width {width}, context {context} (random weights)", err=True)


@click.command("export")
@click.argument("name")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--replace", is_flag=True, help="Overwrite DIRECTORY if it holds a previous export (and nothing else).")
@click.pass_context
def export_cmd(ctx, name, directory, replace):
    """Write model NAME to DIRECTORY in the Hugging Face layout.

    config.json, model.safetensors, vocab.json and merges.txt: what
    GPT2LMHeadModel.from_pretrained(DIRECTORY) and gpt2sql load DIRECTORY read.
    DIRECTORY must be new or empty (--replace: a previous export); the files are
    written beside it and renamed into place, so a failure leaves it as it was."""
    from gpt2sql.loader.export import export_model

    export_model(connection(ctx), name, directory, replace=replace)
    click.echo(f"wrote {name} to {directory}", err=True)


COMMANDS = [train_cmd, init_cmd, export_cmd]
