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
    a space -> '␣'; a newline, tab, carriage return -> backslash n, t, r; a backslash -> two
    (so that every backslash starts an escape); a byte that is only part of a character ->
    backslash x and two hex digits (b'\\xe2\\x80' -> the 8 characters \\xe2\\x80); an invisible or
    control character, a real '␣', or a combining mark with nothing to combine with ->
    \\u and 4 hex digits (\\U and 8 beyond U+FFFF), e.g. U+00A0 -> \\u00a0; anything else as itself."""
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


def columns(given: int | None) -> int:
    """--width: None is the terminal's width (COLUMNS, else the terminal's, else 80), 0 no limit."""
    import shutil
    import sys

    return shutil.get_terminal_size().columns if given is None else given or sys.maxsize


def _narrow(widths: list[int], counts: list[int], room: int, least: int = 6) -> list[int]:
    """Label column widths, the widest cut first (down to LEAST), until the COUNTS[i] columns
    of width WIDTHS[i] take at most ROOM display columns in all."""
    widths = list(widths)
    while sum(c * w for c, w in zip(counts, widths)) > room:
        i = max(range(len(widths)), key=lambda i: (widths[i], counts[i]))
        if widths[i] <= least:
            break
        widths[i] -= 1
    return widths


def _chunks(items: list, most: int) -> list[list]:
    """ITEMS in as few runs of at most MOST as possible, of even sizes: 12 by 5 -> 4, 4, 4."""
    n = -(-len(items) // max(1, most))
    size = -(-len(items) // max(1, n))
    return [items[i:i + size] for i in range(0, len(items), size)]


def wrapped(text: str, room: int) -> None:
    """TEXT, a title or a summary, in lines of at most ROOM columns."""
    import textwrap

    click.echo("\n".join(textwrap.wrap(text, min(room, 10_000), break_on_hyphens=False)))


def _cells(before: str, cells: list[str], cell: int, room: int) -> None:
    """BEFORE, then CELLS (each CELL columns wide, 2 apart); cells that do not fit in ROOM
    go on to the next lines, under the first cell."""
    per = max(1, (room - width(before)) // (cell + 2))
    for i in range(0, max(1, len(cells)), per):
        click.echo(((before if i == 0 else " " * width(before)) + "".join("  " + c for c in cells[i:i + per])).rstrip())


def print_scores(rows, labels: dict[int, str], top: int, room: int) -> None:
    """score's table: one line per token, with its top alternatives (wrapped to ROOM columns)."""
    tw = _column(labels[r[1]] for r in rows)
    aw = _column(labels[a["id"]] for r in rows for a in r[5] or [])
    tw, aw = _narrow([tw, aw], [1, top], room - 25 - 9 * top)  # 25: pos, logprob, rank; 9: a logprob, spaces
    click.echo(f"{'pos':>5}  {fit('token', tw)}  {'logprob':>8}  {'rank':>6}" + (f"  top {top} (logprob)" if top else ""))
    for pos, token, _text, logprob, rank, alternatives in rows:
        cells = [f"{fit(labels[a['id']], aw)} {a['logprob']:6.2f}" for a in alternatives or []]
        _cells(f"{pos:>5}  {fit(labels[token], tw)}  {logprob:8.3f}  {rank:>6}", cells, aw + 7, room)


def print_attention_matrix(weights, labels: list[str], layers: list[int], head: int, model: str, room: int) -> None:
    """One head's query x key weights [layers, n, n]: per layer, a block per run of key
    positions that fits in ROOM columns."""
    tw = max(6, min(_column(labels), room - 12))
    for li, layer in enumerate(layers):
        for bi, keys in enumerate(_chunks(list(range(len(labels))), (room - 7 - tw) // 5)):
            if li or bi:
                click.echo()
            wrapped(f"model {model}, layer {layer}, head {head}, keys {keys[0]}-{keys[-1]}: a row per query "
                   "(its weights sum to 1)", room)
            click.echo(f"{'pos':>5}  {fit('token', tw)}" + "".join(f" {k:>4}" for k in keys))
            for q in range(keys[0], len(labels)):
                row = weights[li][q]
                click.echo(f"{q:>5}  {fit(labels[q], tw)}" + "".join(f" {_weight(row[k])}" for k in keys if k <= q))


def print_attention_summary(keys, weights, labels: list[str], layers: list[int], heads: list[int], model: str,
                            room: int) -> None:
    """Per layer, per query, each head's strongest key position and its weight ([layers, heads, n]
    each): per layer, a block per run of heads that fits in ROOM columns."""
    tw = max(6, min(_column(labels), room - 18))
    for li, layer in enumerate(layers):
        for bi, run in enumerate(_chunks(list(range(len(heads))), (room - 7 - tw) // 11)):
            if li or bi:
                click.echo()
            which = f"heads {heads[run[0]]}-{heads[run[-1]]}" if len(run) > 1 else f"head {heads[run[0]]}"
            wrapped(f"model {model}, layer {layer}, {which}: each query's strongest key, and its weight", room)
            click.echo(f"{'pos':>5}  {fit('token', tw)}" + "".join(f"  {'head ' + str(heads[h]):>9}" for h in run))
            for q in range(len(labels)):
                cells = (f"  {keys[li, h, q]:>4} {_weight(weights[li, h, q])}" for h in run)
                click.echo(f"{q:>5}  {fit(labels[q], tw)}" + "".join(cells))


def print_logit_lens(rows, token_labels: dict[int, str], labels: list[str], top: int, n_layer: int, model: str,
                     room: int) -> None:
    """The logit lens: per position, per layer, the top tokens and their probabilities, wrapped
    to ROOM columns. rows: (layer, pos, rank, token, prob) ordered by pos, layer, rank."""
    from itertools import groupby

    tw = _column(labels)
    cw = _column(token_labels[r[3]] for r in rows)
    tw, cw = _narrow([tw, cw], [1, top], room - 14 - 7 * top)  # 14: pos, layer; 7: a probability, spaces
    what = f"the top {top} next tokens" if top > 1 else "the most likely next token"
    wrapped(f"model {model}: {what} at each layer (0: embeddings, {n_layer}: output)", room)
    click.echo(f"{'pos':>5}  {fit('token', tw)}  {'layer':>5}  top {top} (probability)")
    for (pos, layer), ranked in groupby(rows, key=lambda r: (r[1], r[0])):
        where = f"{pos:>5}  {fit(labels[pos], tw)}" if layer == 0 else " " * (7 + tw)
        _cells(f"{where}  {layer:>5}", [f"{fit(token_labels[r[3]], cw)} {_weight(r[4])}" for r in ranked], cw + 5, room)
