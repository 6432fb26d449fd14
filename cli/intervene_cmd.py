"""`gpt2sql patch`, `gpt2sql ablate` and `gpt2sql attribute`: the interventions of
sql/98_intervene.sql (gpt2.patch_sweep, gpt2.intervene, gpt2.logit_attribution) as tables or
heatmaps."""

from __future__ import annotations

import json

import click

from gpt2sql import tables
from gpt2sql.errors import Gpt2SqlError
from gpt2sql.inspect_cmd import QUIET_BELOW, WIDTH, _labels, _model, _progress
from gpt2sql.main import connection
from gpt2sql.tokenize_cmd import checked_text, nonempty

SITES = {"resid_pre": "the residual stream entering the layer", "attn_out": "the attention output",
         "mlp_out": "the MLP output", "head": "the head's output at every position"}
PICTURED = {"resid_pre": "residual stream at that layer and position", "attn_out": "attention output at that layer and "
            "position", "mlp_out": "MLP output at that layer and position", "head": "output of that head (every position)"}
CELL = 6  # a logit difference, '-12.34'


def _prompt(text: str, what: str) -> str:
    return nonempty(checked_text(text), what)


def _token(conn, text: str, option: str) -> tuple[int, str]:
    """(id, label) of a text of one token; a one-line error naming the option otherwise."""
    ids = conn.execute("SELECT gpt2.tokenize(%s)", (checked_text(text),)).fetchone()[0] or []
    if len(ids) != 1:
        shown = " ".join(_labels(conn, ids)[i] for i in ids)
        raise Gpt2SqlError(f"{option} must be one token: {text!r} is {len(ids)} tokens{': ' + shown if ids else ''} "
                           "(a token carries the space before it: ' Mary', not 'Mary')")
    return ids[0], _labels(conn, ids)[ids[0]]


def _fits(n: int, n_positions: int, name: str) -> None:
    """A one-line error, before any work, for a prompt longer than the model's context."""
    if n > n_positions:
        raise Gpt2SqlError(f"the prompt has {n} tokens; model {name!r} sees at most {n_positions}")


def _grid(title: str, corner: str, row_labels: list[str], col_labels: list[str], values, room: int) -> None:
    """values [rows][columns] as a table fitted to ROOM columns: a block per run of columns that fits."""
    natural = max(tables.width(corner), *(tables.width(r) for r in row_labels))
    lw = max(min(natural, room - len(col_labels) * (CELL + 1)), min(natural, 10))   # cut labels to fit every column
    per = max(1, (room - lw) // (CELL + 1))
    for bi, run in enumerate(tables._chunks(list(range(len(col_labels))), per)):
        if bi:
            click.echo()
        tables.wrapped(title if bi == 0 else f"(continued: {col_labels[run[0]]} to {col_labels[run[-1]]})", room)
        heads = (tables.cut(col_labels[c], CELL) for c in run)
        click.echo(tables.fit(corner, lw) + "".join(" " * (1 + CELL - tables.width(h)) + h for h in heads))
        for r, label in enumerate(row_labels):
            click.echo(tables.fit(label, lw) + "".join(f" {values[r][c]:{CELL}.2f}" for c in run))


@click.command("patch")
@click.argument("clean")
@click.argument("corrupted")
@click.option("--answer", required=True, metavar="TOKEN", help="The token CLEAN should predict, e.g. ' Mary' (one token).")
@click.option("--wrong", required=True, metavar="TOKEN", help="The token it competes with, e.g. ' John' (one token).")
@click.option("--site", type=click.Choice(list(SITES)), default="resid_pre", show_default=True,
              help="What to patch: the residual stream entering a layer, a sublayer's output (each at one position), "
              "or one head's output (at every position).")
@click.option("--relative", is_flag=True, help="Show each difference minus the corrupted run's: what the patch "
              "changes (0: nothing).")
@click.option("--output", "-o", metavar="FILE", help="Draw a heatmap into FILE (.png, .svg, .pdf) instead of printing "
              "a table; needs matplotlib (the 'plot' extra).")
@click.option("--model", "-m", help="Model to use. Default: the latest loaded (see gpt2sql models).")
@WIDTH
@click.pass_context
def patch_cmd(ctx, clean, corrupted, answer, wrong, site, relative, output, model, width):
    """Activation patching: where does the model carry the answer?

    \b
    Runs CORRUPTED again and again, each time with one activation put back from
    the run of CLEAN, and shows logit(ANSWER) - logit(WRONG) at the last position:
      --site resid_pre, attn_out, mlp_out   a table of layer x position
      --site head                            a table of layer x head
    A cell near the clean run's difference marks an activation that carries the
    answer. CLEAN and CORRUPTED need as many tokens (gpt2sql tokenize --show), e.g.

    \b
      gpt2sql patch "When Mary and John went to the store, John gave a drink to" \\
                    "When John and Mary went to the store, John gave a drink to" \\
                    --answer " Mary" --wrong " John" -o patching.png
    """
    if output:
        from gpt2sql import plots

        plots.check_output(output)  # before the work
        if width is not None:
            raise click.UsageError("--width goes with a table, not with --output", ctx)
    clean, corrupted = _prompt(clean, "CLEAN"), _prompt(corrupted, "CORRUPTED")
    conn = connection(ctx)
    name, n_layer, n_head, n_positions = _model(conn, model)
    (_, answer_label), (_, wrong_label) = _token(conn, answer, "--answer"), _token(conn, wrong, "--wrong")
    ids = conn.execute("SELECT gpt2.tokenize(%s)", (corrupted,)).fetchone()[0]
    n_clean = len(conn.execute("SELECT gpt2.tokenize(%s)", (clean,)).fetchone()[0])
    if n_clean != len(ids):
        raise Gpt2SqlError(f"CLEAN has {n_clean} tokens and CORRUPTED {len(ids)}: patching needs as many in both "
                           "(gpt2sql tokenize --show shows them)")
    _fits(len(ids), n_positions, name)
    units = n_head if site == "head" else len(ids)
    per = max(1, conn.execute("SELECT gpt2.patch_rows()").fetchone()[0] // len(ids))
    ticks = 2 * n_layer + sum(-(-units // per) * (n_layer - layer) for layer in range(n_layer))  # run_layers' layers
    with _progress(conn, ticks, f"patching {n_layer} layers x {units} {'heads' if site == 'head' else 'positions'}",
                   n_layer * len(ids) >= QUIET_BELOW):
        rows = conn.execute("SELECT layer, pos, head, logit_diff FROM gpt2.patch_sweep(%s, %s, %s, %s, %s, %s) "
                            "ORDER BY layer, pos, head", (clean, corrupted, answer, wrong, site, name)).fetchall()
    gaps = [conn.execute("SELECT gpt2.logit_diff(%s, %s, %s, %s)", (p, answer, wrong, name)).fetchone()[0]
            for p in (clean, corrupted)]
    values = [[0.0] * units for _ in range(n_layer)]
    for layer, pos, head, diff in rows:
        values[layer][head if site == "head" else pos] = diff - (gaps[1] if relative else 0)
    token_labels = _labels(conn, ids)
    columns = [str(h) for h in range(n_head)] if site == "head" else [token_labels[i] for i in ids]
    what = f"logit({answer_label}) - logit({wrong_label})" + (" minus the corrupted run's" if relative else "")
    baselines = f"clean run {gaps[0]:.2f}, corrupted run {gaps[1]:.2f}" + (
        f"; clean - corrupted {gaps[0] - gaps[1]:+.2f}" if relative else "")
    if output:
        from gpt2sql import plots

        plots.diverging(output, values, columns, [str(layer) for layer in range(n_layer)],
                        f"Activation patching, {site}: model {name}\neach cell: the corrupted run with the clean "
                        f"run's {PICTURED[site]}\n{what} at the last position\n({baselines})",
                        "head" if site == "head" else "position (the corrupted prompt's tokens)", "layer",
                        "logit difference" + (", patched - corrupted" if relative else ""))
        click.echo(f"wrote {output}", err=True)
        return
    room = tables.columns(width)
    tables.wrapped(f"model {name}: logit({answer_label}) - logit({wrong_label}) at the last position: {baselines}", room)
    if site == "head":
        _grid(f"{what}: the corrupted run with one head's output (every position) from the clean run; a row per "
              "layer, a column per head", "layer", [str(layer) for layer in range(n_layer)], columns, values, room)
    else:
        transposed = [[values[layer][p] for layer in range(n_layer)] for p in range(len(ids))]
        _grid(f"{what}: the corrupted run with {SITES[site]} ({site}) at one layer and position from the clean "
              "run; a row per position, a column per layer", "pos token", [f"{p:>3} {columns[p]}" for p in range(len(ids))],
              [str(layer) for layer in range(n_layer)], transposed, room)


def _head(value: str) -> tuple[int, int]:
    layer, dot, head = value.partition(".")
    if not (dot and layer.isdigit() and head.isdigit()):
        raise click.BadParameter(f"{value!r} is not LAYER.HEAD, e.g. 9.6 (head 6 of layer 9)", param_hint="--head")
    return int(layer), int(head)


def _check_range(option: str, value: int, count: int, what: str, owner: str) -> None:
    if not 0 <= value < count:
        raise Gpt2SqlError(f"{option}: {what} {value} is out of range: {owner} has {count} {what}s (0..{count - 1})")


@click.command("ablate")
@click.argument("prompt")
@click.option("--head", "heads", multiple=True, metavar="L.H", help="Ablate head H of layer L (repeatable).")
@click.option("--attn", multiple=True, type=int, metavar="L", help="Ablate layer L's attention: it adds nothing (repeatable).")
@click.option("--mlp", multiple=True, type=int, metavar="L", help="Ablate layer L's MLP: it adds nothing (repeatable).")
@click.option("--mean", is_flag=True, help="Replace each output by its mean over the prompt's positions (in the "
              "unablated run) instead of 0.")
@click.option("--pos", multiple=True, type=int, metavar="P", help="Only at position P (from 0; repeatable). "
              "Default: every position.")
@click.option("--top", type=click.IntRange(min=1, max=20), default=10, show_default=True,
              help="Show the K most likely next tokens, with and without the ablation.")
@click.option("--model", "-m", help="Model to use. Default: the latest loaded (see gpt2sql models).")
@WIDTH
@click.pass_context
def ablate_cmd(ctx, prompt, heads, attn, mlp, mean, pos, top, model, width):
    """Knock heads, attention or MLPs out; see what changes.

    \b
    Ablating sets an output to 0 (--mean: to its mean over the positions):
      --head L.H   head H of layer L (its output, before attn.c_proj)
      --attn L     layer L's attention sublayer
      --mlp L      layer L's MLP
    Shows the top next tokens with and without the ablation, and how their
    logits change, e.g.
      gpt2sql ablate "When Mary and John went to the store, John gave a drink to" \\
                     --head 9.6 --head 9.9
    """
    if not (heads or attn or mlp):
        raise click.UsageError("give something to ablate: --head L.H, --attn L or --mlp L", ctx)
    parsed = [_head(h) for h in heads]
    prompt = _prompt(prompt, "PROMPT")
    conn = connection(ctx)
    name, n_layer, n_head, n_positions = _model(conn, model)
    for layer, head in parsed:
        _check_range(f"--head {layer}.{head}", layer, n_layer, "layer", f"model {name!r}")
        _check_range(f"--head {layer}.{head}", head, n_head, "head", f"model {name!r}")
    for option, layers in (("--attn", attn), ("--mlp", mlp)):
        for layer in layers:
            _check_range(f"{option} {layer}", layer, n_layer, "layer", f"model {name!r}")
    ids = conn.execute("SELECT gpt2.tokenize(%s)", (prompt,)).fetchone()[0]
    _fits(len(ids), n_positions, name)
    for p in pos:
        _check_range(f"--pos {p}", p, len(ids), "position", "the prompt")
    extra = {**({"pos": sorted(set(pos))} if pos else {}), **({"mode": "mean"} if mean else {})}
    ablate = ([{"layer": layer, "head": head, **extra} for layer, head in parsed]
              + [{"layer": layer, "attn": True, **extra} for layer in attn]
              + [{"layer": layer, "mlp": True, **extra} for layer in mlp])
    with _progress(conn, 2 * n_layer + (n_layer if mean else 0), f"ablating over {len(ids)} tokens",
                   len(ids) >= QUIET_BELOW):
        before = conn.execute("SELECT gpt2.intervene(%s, '[]', %s)", (prompt, name)).fetchone()[0]
        after = conn.execute("SELECT gpt2.intervene(%s, %s, %s)", (prompt, json.dumps(ablate), name)).fetchone()[0]
    parts = ([f"head {layer}.{head}" for layer, head in parsed] + [f"layer {layer}'s attention" for layer in attn]
             + [f"layer {layer}'s MLP" for layer in mlp])
    where = f"at position{'s' if len(set(pos)) > 1 else ''} {', '.join(map(str, sorted(set(pos))))}" if pos else "at every position"
    _print_ablation(conn, before, after, top, f"model {name}: ablating {', '.join(parts)} ({'mean' if mean else 'zero'}, "
                    f"{where}): the top {top} next tokens with and without it", tables.columns(width))


def _print_ablation(conn, before: list[float], after: list[float], top: int, title: str, room: int) -> None:
    import numpy as np

    b, a = np.array(before), np.array(after)
    probs = [np.exp(x - x.max()) / np.exp(x - x.max()).sum() for x in (b, a)]
    order = list(np.argsort(-b, kind="stable")[:top])
    order += [int(t) for t in np.argsort(-a, kind="stable")[:top] if t not in order]   # new in the top: after them
    rank = lambda x, t: int((x > x[t]).sum()) + 1  # noqa: E731
    labels = _labels(conn, [int(t) for t in order])
    tw = max(6, min(tables.WIDEST, max(tables.width(labels[int(t)]) for t in order), room - 62))
    tables.wrapped(title, room)
    click.echo(f"{tables.fit('token', tw)}  {'logit':>7} {'prob':>6} {'rank':>6}   {'ablated':>7} {'prob':>6} {'rank':>6}"
               f"   {'change':>7}")
    for t in order:
        t = int(t)
        click.echo(f"{tables.fit(labels[t], tw)}  {b[t]:7.3f} {probs[0][t]:6.3f} {rank(b, t):>6}   "
                   f"{a[t]:7.3f} {probs[1][t]:6.3f} {rank(a, t):>6}   {a[t] - b[t]:+7.3f}")


@click.command("attribute")
@click.argument("prompt")
@click.option("--token", "token", required=True, metavar="TOKEN", help="The next token whose logit to explain, e.g. ' Mary'.")
@click.option("--wrong", metavar="TOKEN", help="Explain logit(TOKEN) - logit(WRONG) instead, e.g. ' John'.")
@click.option("--output", "-o", metavar="FILE", help="Draw a heatmap (layer x head, and each MLP) into FILE (.png, "
              ".svg, .pdf) instead of printing a table; needs matplotlib (the 'plot' extra).")
@click.option("--model", "-m", help="Model to use. Default: the latest loaded (see gpt2sql models).")
@WIDTH
@click.pass_context
def attribute_cmd(ctx, prompt, token, wrong, output, model, width):
    """Direct logit attribution: each head's and MLP's share.

    \b
    The residual stream at PROMPT's last position is a sum of what the embeddings,
    every head and every MLP wrote into it; read out through ln_f (its scale frozen
    at this run's value) and the unembedding, each part adds its share to the
    logit of TOKEN, and the shares sum to the logit (README: "Interventions"), e.g.
      gpt2sql attribute "When Mary and John went to the store, John gave a drink to" \\
                        --token " Mary" --wrong " John"
    """
    if output:
        from gpt2sql import plots

        plots.check_output(output)
        if width is not None:
            raise click.UsageError("--width goes with a table, not with --output", ctx)
    prompt = _prompt(prompt, "PROMPT")
    conn = connection(ctx)
    name, n_layer, n_head, n_positions = _model(conn, model)
    # `is not None`: an empty --wrong is refused as a token of 0 tokens, never read as no --wrong
    texts = [token] + ([wrong] if wrong is not None else [])
    tokens = [_token(conn, text, option) for text, option in zip(texts, ("--token", "--wrong"))]
    n = len(conn.execute("SELECT gpt2.tokenize(%s)", (prompt,)).fetchone()[0])
    _fits(n, n_positions, name)
    shares: dict[tuple, float] = {}
    with _progress(conn, len(tokens) * n_layer, f"attributing over {n} tokens", n >= QUIET_BELOW):
        for sign, text in zip((1, -1), texts):
            for layer, component, head, value in conn.execute(
                    "SELECT layer, component, head, contribution FROM gpt2.logit_attribution(%s, %s, %s)", (prompt, text, name)):
                key = (component, layer, head)
                shares[key] = shares.get(key, 0.0) + sign * value
    what = f"logit({tokens[0][1]})" + (f" - logit({tokens[1][1]})" if len(tokens) > 1 else "")
    columns = ["MLP", "bias"] + [f"h{h}" for h in range(n_head)]
    values = [[shares[("mlp", layer, None)], shares[("attn_bias", layer, None)]]
              + [shares[("head", layer, h)] for h in range(n_head)] for layer in range(n_layer)]
    rest = {"embeddings": shares[("embed", None, None)] + shares[("pos_embed", None, None)],
            "ln_f bias": shares[("ln_f_bias", None, None)]}
    total = sum(shares.values())
    if output:
        from gpt2sql import plots

        plots.diverging(output, [[row[0]] + row[2:] for row in values], ["MLP"] + [str(h) for h in range(n_head)],
                        [str(layer) for layer in range(n_layer)],
                        f"Direct logit attribution: model {name}\neach head's and MLP's share of {what} at the last "
                        f"position = {total:.2f}\n(embeddings {rest['embeddings']:.2f}, attention biases "
                        f"{sum(r[1] for r in values):.2f}, ln_f bias {rest['ln_f bias']:.2f}; ln_f's scale frozen)",
                        "the layer's MLP, then its heads", "layer", "contribution to the logit", split=1)
        click.echo(f"wrote {output}", err=True)
        return
    room = tables.columns(width)
    tables.wrapped(f"model {name}: {what} at the last position = {total:.3f}, the sum of these shares "
                   f"(ln_f's scale frozen at this run's value)", room)
    _grid("a row per layer: its MLP, its attention's output bias (bias) and its heads (h0, h1, ...)", "layer", [str(layer) for layer in range(n_layer)], columns, values, room)
    click.echo()
    for label, value in rest.items():
        click.echo(f"{label:<12} {value:{CELL + 1}.2f}")


COMMANDS = [patch_cmd, ablate_cmd, attribute_cmd]
