"""Terminal tables for `gpt2sql score` and `gpt2sql inspect`, and the one way a token is shown
(label): columns aligned by display width (a CJK character takes two columns), fitted to the
terminal's width."""

from __future__ import annotations

import re
import unicodedata

import click

ESCAPES = {" ": "␣", "\n": "\\n", "\t": "\\t", "\r": "\\r", "\\": "\\\\"}
INVISIBLE = ("Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp")
WIDEST = 14  # a token column's widest label; longer labels end in '…'
# a label's units: an escape (label() writes every backslash as one) or one character
UNIT = re.compile(r"\\(?:x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8}|[ntr\\])|.", re.S)


def label(data: bytes) -> str:
    """A token's bytes as readable text, the same in every table, picture and `tokenize --show`:
    b' the' -> '␣the', b'.\\n' -> '.\\n' (backslash n), b'\\\\' -> '\\\\' (so every backslash
    starts an escape), b'\\xe2\\x80' (part of a character) -> '\\xe2\\x80', U+00A0 -> '\\u00a0'
    (invisible and control characters, a real '␣', a combining mark with nothing to combine
    with: \\uXXXX, or \\UXXXXXXXX beyond U+FFFF)."""
    out: list[str] = []
    for c in data.decode("utf-8", errors="surrogateescape"):
        code = ord(c)
        bare = not out or len(out[-1]) > 1 or out[-1] == "␣"  # nothing visible to combine with
        if c in ESCAPES:
            out.append(ESCAPES[c])
        elif 0xDC80 <= code <= 0xDCFF:  # a byte that is not UTF-8 on its own
            out.append(f"\\x{code - 0xDC00:02x}")
        elif unicodedata.category(c) in INVISIBLE or c == "␣" or (bare and unicodedata.combining(c)):
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
        else:
            out.append(c)
    return "".join(out)


def units(text: str) -> list[str]:
    """A label split where it may be cut: '\\u00a0ab' -> ['\\u00a0', 'a', 'b']."""
    return UNIT.findall(text)


def width(text: str) -> int:
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def cut(text: str, columns: int) -> str:
    """TEXT in at most COLUMNS display columns: whole units, then '…' if any were left out."""
    if width(text) <= columns:
        return text
    parts = units(text)
    while parts and width("".join(parts)) > columns - 1:
        parts.pop()
    return "".join(parts) + "…"


def fit(text: str, columns: int) -> str:
    """TEXT cut to COLUMNS display columns (see cut), padded with spaces."""
    text = cut(text, columns)
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
