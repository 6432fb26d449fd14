"""`gpt2sql tokenize TEXT` and `gpt2sql detokenize ID...`: thin wrappers over gpt2.tokenize,
gpt2.tokenize_trace and gpt2.detokenize (sql/10_tokenizer.sql)."""

from __future__ import annotations

import click

from gpt2sql.errors import Gpt2SqlError
from gpt2sql.main import connection
from gpt2sql.tables import fit, label, width


@click.command("tokenize")
@click.argument("text")
@click.option("--show", is_flag=True, help="Print one token per line: its id and its text.")
@click.option("--trace", is_flag=True, help="Print every BPE merge step of every piece (gpt2.tokenize_trace), then the ids.")
@click.pass_context
def tokenize_cmd(ctx: click.Context, text: str, show: bool, trace: bool) -> None:
    """Print the GPT-2 token ids of TEXT as a JSON array.

    TEXT '-' reads standard input verbatim (a final newline is part of the text).
    Tokens show as in score and inspect: a space as '␣', a newline as '\\n', a
    backslash as '\\\\', a byte that is only part of a character as '\\xNN', an
    invisible character as '\\uNNNN'."""
    import json

    text = checked_text(read_stdin() if text == "-" else text)
    conn = connection(ctx)
    if trace:
        byte_of = dict(conn.execute("SELECT ch, b FROM gpt2.bytes_to_unicode").fetchall())
        print_trace(conn.execute("SELECT * FROM gpt2.tokenize_trace(%s)", (text,)).fetchall(), byte_of)
    if show:
        rows = conn.execute(
            "SELECT t.id, v.bytes FROM unnest(gpt2.tokenize(%s)) WITH ORDINALITY AS t(id, k)"
            " JOIN gpt2.vocab AS v USING (id) ORDER BY t.k",
            (text,),
        ).fetchall()
        for token_id, data in rows:
            click.echo(f"{token_id:>6}  {label(bytes(data))}")
        return
    ids = conn.execute("SELECT gpt2.tokenize(%s)", (text,)).fetchone()[0]
    click.echo(("ids: " if trace else "") + json.dumps(ids))


@click.command("detokenize", context_settings={"ignore_unknown_options": True})  # "-1" is a (bad) id, not an option
@click.argument("ids", nargs=-1, required=True)
@click.pass_context
def detokenize_cmd(ctx: click.Context, ids: tuple[str, ...]) -> None:
    """Print the text of token IDS.

    IDS: several ids, or one JSON array such as '[15496, 995]'."""
    import psycopg

    token_ids = parse_ids(ids)
    conn = connection(ctx)
    beyond = next((i for i in token_ids if not -2**31 <= i < 2**31), None)  # int4 cannot carry them to SQL
    if beyond is not None:
        top = conn.execute("SELECT max(id) FROM gpt2.vocab").fetchone()[0]
        raise Gpt2SqlError(f"unknown token id {beyond} (token ids run from 0 to {top})")
    try:
        text = conn.execute("SELECT gpt2.detokenize(%s::int[])", (token_ids,)).fetchone()[0]
    except psycopg.errors.RaiseException as e:  # an unknown id, with the range as the hint
        raise Gpt2SqlError(f"{e.diag.message_primary} ({e.diag.message_hint})") from None
    click.echo(text)


def read_stdin() -> str:
    """Standard input as it is: bytes decoded as UTF-8, no newline translated or stripped."""
    with click.open_file("-", "rb") as stdin:
        data = stdin.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Gpt2SqlError(f"standard input is not UTF-8 (byte {e.start}: {data[e.start:e.start + 1]!r})") from None


def read_file(path: str) -> str:
    """A file's text ('-': standard input), decoded as UTF-8; a one-line error if it cannot be."""
    if path == "-":
        return read_stdin()
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise Gpt2SqlError(f"cannot read {path!r}: {e.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Gpt2SqlError(f"{path!r} is not UTF-8 (byte {e.start})") from None


def checked_text(text: str) -> str:
    """TEXT, or a one-line error for what PostgreSQL text cannot hold."""
    if "\x00" in text:
        raise Gpt2SqlError(f"the text holds a NUL character (U+0000) at position {text.index(chr(0))}; PostgreSQL text cannot store it")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise Gpt2SqlError(f"the text is not valid UTF-8 (position {e.start})") from None
    return text


def nonempty(text: str, what: str = "the text") -> str:
    """TEXT, or a one-line error if it is empty: the commands that run the model refuse ''
    alike (tokenize does not: '' has no tokens, and [] says so)."""
    if not text:
        raise Gpt2SqlError(f"{what} is empty: give at least one character")
    return text


def parse_ids(args: tuple[str, ...]) -> list[int]:
    """['15496', '995'] or ['[15496, 995]'] -> [15496, 995]; a one-line error for anything else."""
    import json

    if len(args) == 1 and args[0].lstrip().startswith("["):
        try:
            values = json.loads(args[0])
        except ValueError:
            raise Gpt2SqlError(f"not a JSON array of token ids: {args[0][:60]!r}") from None
    else:
        values = []
        for arg in args:
            try:
                values.append(int(arg))
            except ValueError:
                raise Gpt2SqlError(f"not a token id: {arg[:60]!r}") from None
    for value in values:  # the range is gpt2.detokenize's to check: it knows the vocabulary
        if not isinstance(value, int) or isinstance(value, bool):
            raise Gpt2SqlError(f"not a token id: {value!r}")
    return values


def print_trace(rows, byte_of: dict[str, int]) -> None:
    """The rows of gpt2.tokenize_trace, one block per piece: step, rank, merged pair, symbols.
    Symbols come in GPT-2's byte-level alphabet ('Ġ' for a space); BYTE_OF (gpt2.bytes_to_unicode)
    turns them back into bytes, shown as every other command shows a token (tables.label)."""

    def shown(symbol: str) -> str:
        return label(bytes(byte_of[c] for c in symbol))

    for piece_no, piece, step, pair, rank, _merged_id, symbols in rows:
        if step == 0:
            click.echo(f"piece {piece_no}: {label(piece.encode())}")
            click.echo(f"  {'step':>4}  {'rank':>5}  {'merge':<20}  symbols")
        merge = "" if pair is None else " + ".join(map(shown, pair.split(" + ")))  # (no symbol holds a space)
        click.echo(f"  {step:>4}  {'' if rank is None else rank:>5}  {fit(merge, max(20, width(merge)))}  "
                   + " ".join(map(shown, symbols)))


COMMANDS = [tokenize_cmd, detokenize_cmd]
