"""`gpt2sql score TEXT` and `gpt2sql inspect TEXT --attention | --logit-lens`: the glass box of
sql/97_inspect.sql (gpt2.score, gpt2.attention, gpt2.logit_lens) as tables or pictures."""

from __future__ import annotations

import contextlib

import click

from gpt2sql import tables
from gpt2sql.errors import Gpt2SqlError
from gpt2sql.main import connection
from gpt2sql.tokenize_cmd import checked_text, nonempty, read_stdin

QUIET_BELOW = 33  # tokens: shorter texts are quick, and get no progress bar
WIDTH = click.option("--width", type=click.IntRange(min=0), metavar="COLUMNS",
                     help="Fit tables in this many columns (0: no limit). Default: the terminal's width, "
                     "80 when not a terminal.")


def _text(text: str) -> str:
    return nonempty(checked_text(read_stdin() if text == "-" else text))


def _model(conn, model: str | None):
    """(name, n_layer, n_head, n_positions) of MODEL or the default one; SQL's one-line error if none."""
    row = conn.execute("SELECT name, n_layer, n_head, n_positions FROM gpt2.models "
                       "WHERE name = coalesce(%s, gpt2.default_model())", (model,)).fetchone()
    if row is None:
        conn.execute("SELECT gpt2.use_model(%s)", (model,))  # raises: no model, or the names loaded
    return row


def _labels(conn, ids: list[int]) -> dict[int, str]:
    """{id: the token's bytes, readable} for every id given (see tables.label)."""
    rows = conn.execute("SELECT id, bytes FROM gpt2.vocab WHERE id = ANY(%s)", (list(set(ids)),)).fetchall()
    return {i: tables.label(bytes(data)) for i, data in rows}


@contextlib.contextmanager
def _progress(conn, ticks: int, label: str, shown: bool):
    """A bar fed by the server's per-layer notices (generate's Progress), for long texts only."""
    if not shown:
        yield
        return
    from gpt2sql.generate_cmd import Progress

    with Progress(conn, ticks).bar(label):
        yield


@click.command("score")
@click.argument("text")
@click.option("--model", "-m", help="Model to use. Default: the latest loaded (see gpt2sql models).")
@click.option("--top", type=click.IntRange(min=0, max=20), default=3, show_default=True,
              help="Also show the N most likely tokens at each position, with their logprobs (0: none).")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object per token (pos, id, text, logprob, rank, top_logprobs), then a summary.")
@WIDTH
@click.pass_context
def score_cmd(ctx, text, model, top, as_json, width):
    """Each token's logprob and rank in TEXT, and the perplexity.

    Each token is scored given <|endoftext|> and the tokens before it. A text longer than
    the context is scored in windows (docs/glass-box.md). TEXT '-' reads standard input
    verbatim. rank 1 = the model's most likely token. Tokens show as in tokenize --show
    (a space as '␣'; see its --help).
    """
    import json
    import math

    text = _text(text)
    conn = connection(ctx)
    name, n_layer, _, n_positions = _model(conn, model)
    n = conn.execute("SELECT cardinality(gpt2.tokenize(%s))", (text,)).fetchone()[0]
    windows = 1 + max(0, math.ceil((n - n_positions) / n_positions))
    with _progress(conn, windows * n_layer, f"scoring {n} tokens", n >= QUIET_BELOW):
        rows = conn.execute("SELECT pos, token, text, logprob, rank, alternatives FROM gpt2.score(%s, %s, %s) ORDER BY pos",
                            (text, name, top)).fetchall()
    mean = sum(r[3] for r in rows) / len(rows)
    summary = {"perplexity": math.exp(-mean), "tokens": len(rows), "mean_logprob": mean}
    if as_json:
        for pos, token, token_text, logprob, rank, alternatives in rows:
            out = dict(pos=pos, id=token, text=token_text, logprob=logprob, rank=rank)
            if top:
                out["top_logprobs"] = alternatives
            click.echo(json.dumps(out, ensure_ascii=False))
        click.echo(json.dumps(summary))
        return
    labels = _labels(conn, [r[1] for r in rows] + [a["id"] for r in rows for a in r[5] or []])
    tables.print_scores(rows, labels, top, tables.columns(width))
    tables.wrapped(f"perplexity {summary['perplexity']:.3f} over {len(rows)} tokens (mean logprob {mean:.3f}), "
                   f"model {name}", tables.columns(width))


def _check_options(ctx, attention: bool, logit_lens: bool, output: str | None) -> None:
    from click.core import ParameterSource

    if attention == logit_lens:
        raise click.UsageError("give --attention or --logit-lens (one of them)", ctx)
    if output and ctx.params["width"] is not None:
        raise click.UsageError("--width goes with a table, not with --output", ctx)
    only = ["layer", "head"] if logit_lens else ["top"]
    for option in only:
        if ctx.get_parameter_source(option) is not ParameterSource.DEFAULT:
            raise click.UsageError(f"--{option} goes with --{'attention' if option != 'top' else 'logit-lens'}", ctx)


def _in_range(option: str, value: int | None, count: int, what: str, name: str) -> None:
    if value is not None and value >= count:
        raise Gpt2SqlError(f"{option} {value} is out of range: model {name!r} has {count} {what} (0..{count - 1})")


@click.command("inspect")
@click.argument("text")
@click.option("--attention", is_flag=True, help="Show the attention weights (gpt2.attention).")
@click.option("--logit-lens", is_flag=True, help="Show what every layer would predict (gpt2.logit_lens).")
@click.option("--layer", type=click.IntRange(min=0), help="Attention: only this layer. Default: every layer "
              "in the terminal, layer 0 in a picture.")
@click.option("--head", type=click.IntRange(min=0), help="Attention: only this head, as a whole query x key matrix. "
              "Default: every head (a summary in the terminal, a grid of heatmaps in a picture).")
@click.option("--top", type=click.IntRange(min=1, max=20), default=3, show_default=True,
              help="Logit lens: the K most likely tokens per layer and position, in the terminal.")
@click.option("--output", "-o", metavar="FILE", help="Draw a picture into FILE (.png, .svg, .pdf) instead of "
              "printing a table; needs matplotlib (the 'plot' extra).")
@click.option("--model", "-m", help="Model to use. Default: the latest loaded (see gpt2sql models).")
@WIDTH
@click.pass_context
def inspect_cmd(ctx, text, attention, logit_lens, layer, head, top, output, model, width):
    """Look inside: attention weights or the logit lens over TEXT.

    TEXT '-' reads standard input verbatim; at most the model's context (1024 tokens for
    GPT-2). Tokens show as in tokenize --show (a space as '␣'; see its --help).
    """
    _check_options(ctx, attention, logit_lens, output)
    if output:
        from gpt2sql import plots

        plots.check_output(output)  # before the work: matplotlib, the file's format
    text = _text(text)
    conn = connection(ctx)
    name, n_layer, n_head, n_positions = _model(conn, model)
    _in_range("--layer", layer, n_layer, "layers", name)
    _in_range("--head", head, n_head, "heads", name)
    ids = conn.execute("SELECT gpt2.tokenize(%s)", (text,)).fetchone()[0]
    if len(ids) > n_positions:  # (before any work, or an array of n^2 weights)
        raise Gpt2SqlError(f"the text has {len(ids)} tokens; model {name!r} sees at most {n_positions} "
                           "(gpt2sql score takes any length)")
    token_labels = _labels(conn, ids)
    labels = [token_labels[i] for i in ids]
    shown = len(ids) >= QUIET_BELOW
    if attention:
        layers = [layer] if layer is not None else [0] if output else list(range(n_layer))
        heads = [head] if head is not None else list(range(n_head))
        with _progress(conn, n_layer, f"attention over {len(ids)} tokens", shown):
            weights = _attention(conn, text, name, layers, heads, len(ids), strongest=not output and head is None)
        if output:
            plots.attention(output, weights[0], labels, layers[0], heads, name)
        elif head is None:
            tables.print_attention_summary(*weights, labels, layers, heads, name, tables.columns(width))
        else:
            tables.print_attention_matrix(weights[:, 0], labels, layers, head, name, tables.columns(width))
    else:
        with _progress(conn, n_layer, f"logit lens over {len(ids)} tokens", shown):
            rows = conn.execute("SELECT layer, pos, rank, token, prob FROM gpt2.logit_lens(%s, %s, %s) "
                                "ORDER BY pos, layer, rank", (text, name, 1 if output else top)).fetchall()
        token_labels.update(_labels(conn, [r[3] for r in rows]))
        if output:
            plots.logit_lens(output, rows, token_labels, labels, n_layer, name)
        else:
            tables.print_logit_lens(rows, token_labels, labels, top, n_layer, name, tables.columns(width))
    if output:
        click.echo(f"wrote {output}", err=True)


def _attention(conn, text, name, layers: list[int], heads: list[int], n: int, strongest: bool):
    """The weights of these layers and heads, [layers, heads, query, key] (0 above the diagonal);
    or, if strongest, (the key each query attends to most, its weight), each [layers, heads, query]."""
    import numpy as np

    sql = "SELECT layer, head, query_pos, key_pos, weight FROM gpt2.attention(%s, %s) WHERE layer = ANY(%s) AND head = ANY(%s)"
    if strongest:  # n rows per head, not n^2 (ties: the lowest key)
        sql = f"SELECT DISTINCT ON (layer, head, query_pos) * FROM ({sql}) a ORDER BY layer, head, query_pos, weight DESC, key_pos"
    shape = (len(layers), len(heads), n) if strongest else (len(layers), len(heads), n, n)
    keys, weights = np.zeros(shape, dtype=int), np.zeros(shape)
    for l, h, q, k, w in conn.execute(sql, (text, name, layers, heads)):
        if strongest:
            keys[l - layers[0], h - heads[0], q], weights[l - layers[0], h - heads[0], q] = k, w
        else:
            weights[l - layers[0], h - heads[0], q, k] = w
    return (keys, weights) if strongest else weights


COMMANDS = [score_cmd, inspect_cmd]
