"""GPT-2's tokenizer files -> the tables of sql/10_tokenizer.sql (bytes_to_unicode, vocab, merges).

The data half of OpenAI's encoder.py: the byte-to-unicode map, encoder.json (token string
-> id) and vocab.bpe (merges in priority order). Hugging Face checkpoints carry the same
files as vocab.json and merges.txt. Everything is validated first, then loaded with
binary COPY in one transaction, so a failed load leaves the previous tokenizer in place.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from gpt2sql.errors import Gpt2SqlError

# (vocabulary, merges) file names a checkpoint directory may hold, in order of preference
FILE_NAMES = [("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")]
BUNDLED = ("encoder.json", "vocab.bpe")  # OpenAI's, in loader/data/


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte: {33: '!', ..., 32: 'Ġ', 10: 'Ċ'}.

    Printable Latin-1 bytes stand for themselves; the other 68 map to U+0100 onwards, in
    byte order, so that no token string holds whitespace or control characters.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    moved = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + n) for n, b in enumerate(moved)}}


def tokenizer_files(directory) -> tuple[Path, Path] | None:
    """The (vocabulary, merges) files of a checkpoint directory, or None when it has none."""
    directory = Path(directory)
    for vocab, merges in FILE_NAMES:
        if (directory / vocab).is_file() and (directory / merges).is_file():
            return directory / vocab, directory / merges
    return None


def read_vocab(path: Path, data: bytes) -> dict[str, int]:
    """encoder.json / vocab.json: {token string: id}, checked to be byte-level and complete."""
    import json

    try:
        vocab = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise Gpt2SqlError(f"{path}: not a JSON vocabulary ({e})") from None
    if not isinstance(vocab, dict) or not vocab:
        raise Gpt2SqlError(f"{path}: expected a JSON object {{token: id}}")
    stand_ins = set(bytes_to_unicode().values())
    for token, i in vocab.items():
        if not isinstance(i, int) or isinstance(i, bool) or i < 0:
            raise Gpt2SqlError(f"{path}: token {token!r} has id {i!r}; ids must be integers >= 0")
        if not token or not set(token) <= stand_ins:
            raise Gpt2SqlError(f"{path}: token {token!r} is not a byte-level string (GPT-2's byte-to-unicode map)")
    if len(set(vocab.values())) != len(vocab):
        raise Gpt2SqlError(f"{path}: two tokens share an id")
    missing = stand_ins - vocab.keys()
    if missing:
        raise Gpt2SqlError(f"{path}: {len(missing)} of the 256 byte tokens are missing (e.g. {min(missing)!r})")
    return vocab


def read_merges(path: Path, data: bytes, vocab: dict[str, int]) -> list[tuple[int, int, int, int]]:
    """vocab.bpe / merges.txt: [(rank, left id, right id, merged id)], one per 'left right' line.

    The first line may be '#version: ...'; empty lines are skipped. Both halves and their
    concatenation must be tokens of the vocabulary.
    """
    try:
        lines = data.decode("utf-8").split("\n")
    except UnicodeDecodeError as e:
        raise Gpt2SqlError(f"{path}: not UTF-8 ({e})") from None
    merges, seen = [], set()
    for number, line in enumerate(lines, start=1):
        line = line.rstrip("\r")
        if not line or (number == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise Gpt2SqlError(f"{path}:{number}: expected 'left right', got {line[:60]!r}")
        left, right = parts
        for token in (left, right, left + right):
            if token not in vocab:
                raise Gpt2SqlError(f"{path}:{number}: {token!r} is not in the vocabulary")
        if (left, right) in seen:
            raise Gpt2SqlError(f"{path}:{number}: the merge {line!r} appears twice")
        seen.add((left, right))
        merges.append((len(merges), vocab[left], vocab[right], vocab[left + right]))
    if not merges:
        raise Gpt2SqlError(f"{path}: no merges")
    return merges


def load_tokenizer(conn, vocab_path, merges_path, *, force: bool = False) -> bool:
    """Load a vocabulary and its merges into gpt2.*; False when these very files are loaded.

    Accepts OpenAI's encoder.json + vocab.bpe or Hugging Face's vocab.json + merges.txt.
    One transaction: the old rows go (TRUNCATE), the new ones come in by binary COPY.
    """
    vocab_path, merges_path = Path(vocab_path), Path(merges_path)
    try:
        vocab_data, merges_data = vocab_path.read_bytes(), merges_path.read_bytes()
    except OSError as e:
        raise Gpt2SqlError(f"cannot read the tokenizer files: {e}") from None
    shas = hashlib.sha256(vocab_data).hexdigest(), hashlib.sha256(merges_data).hexdigest()
    if not force and _loaded(conn) == shas:
        return False
    vocab = read_vocab(vocab_path, vocab_data)
    merges = read_merges(merges_path, merges_data, vocab)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('gpt2sql tokenizer'))")
        if not force and _loaded(conn) == shas:  # a concurrent first use loaded them meanwhile
            return False
        _replace_tables(conn, vocab, merges)
        conn.execute(
            "INSERT INTO gpt2.tokenizer_files (vocab_file, vocab_sha256, merges_file, merges_sha256, n_vocab, n_merges)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            (str(vocab_path), shas[0], str(merges_path), shas[1], len(vocab), len(merges)),
        )
    return True


def _loaded(conn) -> tuple[str, str] | None:
    """(vocab sha256, merges sha256) of the loaded files, None when nothing is loaded."""
    row = conn.execute("SELECT vocab_sha256, merges_sha256 FROM gpt2.tokenizer_files").fetchone()
    return tuple(row) if row else None


def _replace_tables(conn, vocab: dict[str, int], merges: list[tuple[int, int, int, int]]) -> None:
    from psycopg import sql

    byte_of = {ch: b for b, ch in bytes_to_unicode().items()}
    conn.execute("TRUNCATE gpt2.bytes_to_unicode, gpt2.vocab, gpt2.merges, gpt2.tokenizer_files")
    stand_ins = [(b, ch, vocab[ch]) for b, ch in sorted(bytes_to_unicode().items())]
    _copy(conn, "bytes_to_unicode", ("b", "ch", "id"), ("int4", "text", "int4"), stand_ins)
    rows = ((i, token, bytes(byte_of[c] for c in token)) for token, i in sorted(vocab.items(), key=lambda kv: kv[1]))
    _copy(conn, "vocab", ("id", "token", "bytes"), ("int4", "text", "bytea"), rows)
    _copy(conn, "merges", ("rank", "left_id", "right_id", "merged_id"), ("int4",) * 4, merges)
    for table in ("bytes_to_unicode", "vocab", "merges"):
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier("gpt2", table)))
    conn.execute("REFRESH MATERIALIZED VIEW gpt2.merge_reach")  # derived from vocab and merges: BPE of long pieces


def _copy(conn, table: str, columns, types, rows) -> None:
    """Binary COPY into gpt2.<table>; FREEZE, since the table was truncated in this transaction."""
    from psycopg import sql

    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY, FREEZE)").format(
        sql.Identifier("gpt2", table), sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    with conn.cursor() as cur, cur.copy(statement) as copy:
        copy.set_types(list(types))
        for row in rows:
            copy.write_row(row)


def ensure_tokenizer(conn) -> None:
    """Load the bundled GPT-2 tokenizer when none is loaded; one query when one is."""
    if conn.execute("SELECT EXISTS (SELECT FROM gpt2.tokenizer_files)").fetchone()[0]:
        return
    from importlib import resources

    data = resources.files("gpt2sql.loader") / "data"
    with resources.as_file(data / BUNDLED[0]) as vocab, resources.as_file(data / BUNDLED[1]) as merges:
        load_tokenizer(conn, vocab, merges)
