"""Terminal tables for `gpt2sql score` and `gpt2sql inspect`: tokens shown readably, columns
aligned by display width (a CJK character takes two columns)."""

from __future__ import annotations

import unicodedata

import click

ESCAPES = {" ": "␣", "\n": "\\n", "\t": "\\t", "\r": "\\r"}
WIDEST = 14  # a token column's widest label; longer labels end in '…'


def label(data: bytes) -> str:
    """A token's bytes as readable text: b' the' -> '␣the', b'.\\n\\n' -> '.\\n\\n' (backslash n),
    b'\\xe2\\x80' (part of a character) -> '\\xe2\\x80', U+00A0 -> '\\u00a0'."""
    out = []
    for c in data.decode("utf-8", errors="surrogateescape"):
        if c in ESCAPES:
            out.append(ESCAPES[c])
        elif 0xDC80 <= ord(c) <= 0xDCFF:  # a byte that is not UTF-8 on its own
            out.append(f"\\x{ord(c) - 0xDC00:02x}")
        elif unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"):  # invisible
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return "".join(out)


def width(text: str) -> int:
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def fit(text: str, columns: int) -> str:
    """TEXT cut to COLUMNS display columns (ending in '…' if cut), padded with spaces."""
    if width(text) > columns:
        while width(text) > columns - 1:
            text = text[:-1]
        text += "…"
    return text + " " * (columns - width(text))


def _column(texts) -> int:
    return min(max([5, *(width(t) for t in texts)]), WIDEST)


def _weight(w: float) -> str:
    """0.4 -> '.40', 1 -> '1.00': four columns."""
    return f"{w:.2f}".removeprefix("0").rjust(4)


def print_scores(rows, labels: dict[int, str], top: int) -> None:
    """score's table: one line per token, with its top alternatives."""
    tw = _column(labels[r[1]] for r in rows)
    aw = _column(labels[a["id"]] for r in rows for a in r[5] or [])
    click.echo(f"{'pos':>5}  {fit('token', tw)}  {'logprob':>8}  {'rank':>6}" + (f"  top {top} (logprob)" if top else ""))
    for pos, token, _text, logprob, rank, alternatives in rows:
        others = "  ".join(f"{fit(labels[a['id']], aw)} {a['logprob']:6.2f}" for a in alternatives or [])
        click.echo(f"{pos:>5}  {fit(labels[token], tw)}  {logprob:8.3f}  {rank:>6}  {others}".rstrip())


def print_attention_matrix(weights, labels: list[str], layers: list[int], head: int, model: str) -> None:
    """One head's query x key weights [layers, n, n], a block per layer."""
    tw = _column(labels)
    for li, layer in enumerate(layers):
        click.echo(("\n" if li else "") + f"model {model}, layer {layer}, head {head}: row = query (the token "
                   "attending), column = key position; each row sums to 1")
        click.echo(f"{'pos':>5}  {fit('token', tw)}" + "".join(f" {k:>4}" for k in range(len(labels))))
        for q, row in enumerate(weights[li]):
            click.echo(f"{q:>5}  {fit(labels[q], tw)}" + "".join(f" {_weight(w)}" for w in row[:q + 1]))


def print_attention_summary(keys, weights, labels: list[str], layers: list[int], heads: list[int], model: str) -> None:
    """Per layer, per query, each head's strongest key position and its weight ([layers, heads, n] each)."""
    tw = _column(labels)
    for li, layer in enumerate(layers):
        click.echo(("\n" if li else "") + f"model {model}, layer {layer}: the key position each head attends to "
                   "most from each query, and its weight (--head H: the whole matrix)")
        click.echo(f"{'pos':>5}  {fit('token', tw)}" + "".join(f"  {'head ' + str(h):>9}" for h in heads))
        for q in range(len(labels)):
            cells = (f"  {keys[li, hi, q]:>4} {_weight(weights[li, hi, q])}" for hi in range(len(heads)))
            click.echo(f"{q:>5}  {fit(labels[q], tw)}" + "".join(cells))


def print_logit_lens(rows, token_labels: dict[int, str], labels: list[str], top: int, n_layer: int, model: str) -> None:
    """The logit lens: per position, per layer, the top tokens and their probabilities.
    rows: (layer, pos, rank, token, prob) ordered by pos, layer, rank."""
    from itertools import groupby

    tw = _column(labels)
    cw = _column(token_labels[r[3]] for r in rows)
    what = f"the {top} most likely next tokens" if top > 1 else "the most likely next token"
    click.echo(f"model {model}: {what} by layer (0: the embeddings, {n_layer}: the output)")
    click.echo(f"{'pos':>5}  {fit('token', tw)}  {'layer':>5}  top {top} (probability)")
    for (pos, layer), ranked in groupby(rows, key=lambda r: (r[1], r[0])):
        where = f"{pos:>5}  {fit(labels[pos], tw)}" if layer == 0 else " " * (7 + tw)
        cells = "  ".join(f"{fit(token_labels[r[3]], cw)} {_weight(r[4])}" for r in ranked)
        click.echo(f"{where}  {layer:>5}  {cells}")
