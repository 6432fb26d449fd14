"""gpt2.tokenize / gpt2.detokenize against tiktoken (built offline from the bundled files).

Every comparison runs many strings through one SQL call and reports each string that
differs: where it came from, the first differing token position and both sides there.
"""

from __future__ import annotations

import functools
import json
import random
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(__file__).parent / "data" / "tokenizer_corpus"
# GPT-2's pre-tokenizer pattern, as in OpenAI's encoder.py (and tiktoken's gpt2)
PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
HELLO = "hello world!!!? (안녕하세요!) lol123 😉"


@functools.cache
def reference():
    """tiktoken's GPT-2 encoding, built from loader/data without a download."""
    import tiktoken
    import tiktoken.load

    data = ROOT / "loader" / "data"
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(data / "vocab.bpe"), encoder_json_file=str(data / "encoder.json")
    )
    return tiktoken.Encoding(name="gpt2-offline", pat_str=PATTERN, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256}, explicit_n_vocab=50257)


def sql_tokenize(conn, strings: list[str]) -> list[list[int]]:
    """gpt2.tokenize over many strings in one statement, in order."""
    rows = conn.execute(
        "SELECT gpt2.tokenize(s) FROM unnest(%s::text[]) WITH ORDINALITY AS u(s, k) ORDER BY k", (list(strings),)
    ).fetchall()
    return [r[0] for r in rows]


def difference(label: str, text: str, got: list[int], want: list[int]) -> str | None:
    """None when equal, else one line: which string, first differing token, both sides."""
    if got == want:
        return None
    enc = reference()
    k = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    at = len(enc.decode_bytes(want[:k]).decode("utf-8", errors="replace"))
    return (f"{label}: {text[:60]!r}{'...' if len(text) > 60 else ''} ({len(text)} chars): first difference at token {k}"
            f" (char ~{at}): sql {got[k:k + 4]} {[enc.decode_bytes([t]) for t in got[k:k + 4]]}"
            f" vs tiktoken {want[k:k + 4]} {[enc.decode_bytes([t]) for t in want[k:k + 4]]}; {len(got)} vs {len(want)} tokens")


def assert_like_tiktoken(conn, cases: list[tuple[str, str]]) -> None:
    """Each (label, text) tokenizes in SQL exactly as tiktoken does, and detokenizes back to text."""
    rows = conn.execute(
        "SELECT ids, gpt2.detokenize(ids) FROM (SELECT k, gpt2.tokenize(s) AS ids"
        " FROM unnest(%s::text[]) WITH ORDINALITY AS u(s, k) OFFSET 0) AS t ORDER BY k",
        ([text for _, text in cases],),
    ).fetchall()
    enc = reference()
    bad = [d for (label, text), (ids, _) in zip(cases, rows) if (d := difference(label, text, ids, enc.encode_ordinary(text)))]
    assert not bad, f"{len(bad)} of {len(cases)} strings differ from tiktoken:\n" + "\n".join(bad[:20])
    lost = [f"{label}: {text[:60]!r} came back as {back[:60]!r}" for (label, text), (_, back) in zip(cases, rows) if back != text]
    assert not lost, f"{len(lost)} strings do not survive gpt2.detokenize(gpt2.tokenize(s)):\n" + "\n".join(lost[:10])


# ---------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------

EDGE_CASES = [
    # whitespace: runs, indentation, tabs, \r\n, leading and trailing
    "", " ", "  ", "   ", "\n", "\n\n\n", "\t", "\t\t", "\r\n", "a\r\nb", "x\r\n\r\n", "\r", " \r\n ",
    " leading", "trailing ", "  two leading", "trailing two  ", "a  b", "a   b", "a \n b", "a\n\n  b",
    "\n    return x", "def f():\n\tif x:\n\t\treturn 1\n", "    indented\n        more\n", "  \t x",
    " \t\n", "   \n\t  \n", "x\n\n\n\ny", "a\t\tb", "a \tb", "a\t b", "end\n", "end \n ", "\u3000\u3000x",
    # contractions, case-sensitive
    "it's", "It'S", "I'LL", "we'll", "they're", "THEY'RE", "I've", "I'm", "I'd", "don't", "'s", "'",
    "''", "'''s", " 's", "x 's", "rock'n'roll", "'sup", "'ll'll", "O'Neil's", "‘s curly’s", "isn't'",
    "'re'", "o's's", "'S 's 'T 't 'Re 're 'VE 've 'M 'm 'LL 'll 'D 'd", "don''t", "'\n's",
    # numbers
    "lol123", "123abc", "3.14159", "1,000,000", "2024-01-01", "١٢٣", "٣.١٤", "²³", "Ⅻ", "½", "0x1F",
    " 42", "  42", "x2", "𝟙𝟚𝟛", "12345678901234567890", "1 2  3",
    # scripts, combining marks
    "Здравствуй, мир!", "Γειά σου Κόσμε", "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया", "你好，世界",
    "こんにちは世界", "안녕하세요 세계", "สวัสดีชาวโลก", "ሰላም ዓለም", "Ողջույն", "e\u0301", "Z\u0334\u0321a",
    "\u0301abc", "க்ஷ", "a\u0308\u0308\u0308", " \u0301",
    # emoji: skin tones, ZWJ, flags, keycaps
    "😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇺🇸🇫🇷", "1️⃣", " 😀😀", "😀 a", "a😀b", HELLO,
    # fullwidth and mathematical letters
    "ＡＢＣ１２３", "𝐀𝐁𝐂 𝑥𝑦𝑧", "ｈｅｌｌｏ\u3000ｗｏｒｌｄ",
    # control and format characters; White_Space edges (U+001C..U+001F are not \s for tiktoken)
    "\x01\x02\x03", "a\x7fb", "\x1c\x1d\x1e\x1f", "a\x1fb", " \x1c", "\x0b\x0c", "\x85", "a\x85b",
    "a\u00a0b", "a\u00a0\u00a0b", "\u2028\u2029", "\u200b", "a\u200bb", "\u180e", "a\u180e b", "\ufeffBOM",
    "\u202e rtl", "a\u3000b", "\u2000\u200a x", "\u1680x", "\u205f\u202f",
    # the special token's text is plain text
    "<|endoftext|>", "a<|endoftext|>b", "<|endoftext|> <|endoftext|>",
    # punctuation, backslashes, the last code points, code points newer than tiktoken's Unicode
    "?", "!!!? (", "\\ backslash \\n", 'quote "double"', "a.b,c;d", "--->", "...", "#!/usr/bin/env",
    "\U0010ffff", "\U000e0001", "\ufffd", "\uffff", "a\u0558b", "x\U00011de0y", "\U0001f600" * 3,
    # repetition
    "a" * 300, " " * 300, "\n" * 100, "ab" * 500, "😀" * 100, " a" * 200, "\t" * 50 + "x",
]

LONG_WORDS = {
    "a*5000": "a" * 5000,
    "letters*2000": "".join(random.Random(1).choice("abcdefghijklmnopqrstuvwxyz") for _ in range(2000)),
    "digits*3000": "".join(random.Random(2).choice("0123456789") for _ in range(3000)),
    "cjk*1000": "".join(chr(random.Random(3).randrange(0x4E00, 0x9FFF)) for _ in range(1000)),
    "punct*2000": "".join(random.Random(4).choice("!@#$%^&*()-=+[]{};:,.<>/?") for _ in range(2000)),
    "spaces*3000+x": " " * 3000 + "x",
}


def chunks(label: str, text: str, rnd: random.Random, n: int) -> list[tuple[str, str]]:
    """n pieces of text of varied length at odd offsets, labelled with their slice."""
    out = []
    for _ in range(n):
        size = rnd.choice([40, 200, 700, 2000])
        start = rnd.randrange(max(1, len(text) - size))
        out.append((f"{label}[{start}:{start + size}]", text[start:start + size]))
    return out


def corpus() -> list[tuple[str, str]]:
    """(label, text): prose paragraphs and chunks, Python stdlib source, code chunks (frozen)."""
    rnd = random.Random(20240611)
    cases = []
    for path in sorted(CORPUS.glob("*.txt")):
        text = path.read_text(encoding="utf-8")
        cases.append((path.name, text))
        cases += [(f"{path.name} paragraph {i}", p) for i, p in enumerate(text.split("\n\n"))]
        cases += chunks(path.name, text, rnd, 3)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    sources = sorted(stdlib.glob("*.py")) + sorted(stdlib.glob("*/*.py"))
    for path in rnd.sample(sources, min(60, len(sources))):
        cases += chunks(f"stdlib {path.relative_to(stdlib)}", path.read_text(encoding="utf-8", errors="replace"), rnd, 3)
    # code and SQL: chunks drawn once from this repository's files, frozen so that editing the
    # project does not change the test's inputs
    cases += [(f"repo {label}", text) for label, text in json.loads((CORPUS / "code_chunks.json").read_text(encoding="utf-8"))]
    return [(label, text.replace("\x00", "")) for label, text in cases]


# ---------------------------------------------------------------------------------------
# Parity with tiktoken
# ---------------------------------------------------------------------------------------


def test_known_ids(conn):
    got = sql_tokenize(conn, ["Hello world", " Mississippilessly", ""])
    assert got == [[15496, 995], [12732, 3974, 30608, 306], []]


def test_edge_cases_like_tiktoken(conn):
    assert_like_tiktoken(conn, [(f"edge case {i}", s) for i, s in enumerate(EDGE_CASES)])


def test_corpus_like_tiktoken(conn):
    cases = corpus()
    assert len(cases) >= 300
    assert_like_tiktoken(conn, cases)


def test_corpus_does_not_change_with_this_repository(monkeypatch):
    """Its inputs are frozen files under tests/data (and the standard library): editing the
    project must not change what the parity test tokenizes."""
    read = []
    real = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: read.append(self) or real(self, *a, **k))
    corpus()
    ours = [p for p in read if ROOT in p.resolve().parents and CORPUS not in p.resolve().parents]
    assert not ours, f"the corpus reads the repository's own files: {ours[:5]}"
    assert any(CORPUS in p.resolve().parents for p in read)


def test_long_words_like_tiktoken(conn):
    assert_like_tiktoken(conn, list(LONG_WORDS.items()))


# ---------------------------------------------------------------------------------------
# Character classes: every code point, against tiktoken
# ---------------------------------------------------------------------------------------


def all_code_points() -> list[int]:
    return [c for c in range(1, 0x110000) if not 0xD800 <= c <= 0xDFFF]


@functools.cache
def tiktoken_classes() -> dict[str, set[int]]:
    """The code points tiktoken's regex puts in \\p{L}, \\p{N} and \\s.

    A pattern of one class over a byte-only vocabulary: tiktoken skips what the pattern does
    not match, so decoding the ids gives exactly the class's characters.
    """
    import tiktoken

    text = "".join(map(chr, all_code_points()))
    ranks = {bytes([b]): b for b in range(256)}
    out = {}
    for name, cls in (("L", r"\p{L}"), ("N", r"\p{N}"), ("S", r"\s")):
        enc = tiktoken.Encoding(name=f"class-{name}", pat_str=cls + "+", mergeable_ranks=ranks, special_tokens={})
        out[name] = set(map(ord, enc.decode_bytes(enc.encode_ordinary(text)).decode("utf-8")))
    return out


def ranges(points) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for c in sorted(points):
        if out and out[-1][1] == c - 1:
            out[-1][1] = c
        else:
            out.append([c, c])
    return [tuple(r) for r in out]


def sql_classes(conn) -> dict[str, set[int]]:
    out = {"L": set(), "N": set(), "S": set()}
    for cls, lo, hi in conn.execute("SELECT class, lo, hi FROM gpt2.unicode_class"):
        out[cls].update(range(lo, hi + 1))
    return out


def test_unicode_classes_are_tiktokens(conn):
    """gpt2.unicode_class holds exactly tiktoken's \\p{L}, \\p{N} and \\s, code point by code point."""
    want, got = tiktoken_classes(), sql_classes(conn)
    for cls in "LNS":
        extra, missing = sorted(got[cls] - want[cls]), sorted(want[cls] - got[cls])
        new_lines = " ".join(f"{lo:x}-{hi:x}" if lo != hi else f"{lo:x}" for lo, hi in ranges(want[cls]))
        assert not extra and not missing, (
            f"class {cls}: {len(extra)} code points too many (first {[hex(c) for c in extra[:8]]}), "
            f"{len(missing)} missing (first {[hex(c) for c in missing[:8]]}); tiktoken's ranges for the "
            f"appendix of sql/10_tokenizer.sql:\n{new_lines}"
        )


def test_regex_whitespace_is_tiktokens():
    """The `regex` package's \\s is Unicode White_Space, as tiktoken's (not str.isspace: U+001C..U+001F)."""
    import regex

    text = "".join(map(chr, all_code_points()))
    assert set(map(ord, "".join(regex.findall(r"\s+", text)))) == tiktoken_classes()["S"]
    assert "\x1c".isspace() and 0x1C not in tiktoken_classes()["S"]


def expected_pieces(text: str, classes: dict[str, set[int]]) -> list[str]:
    """GPT-2's pieces with Perl semantics under the given classes.

    Non-ASCII characters are stood in for by one old character of their class, for which
    the `regex` package and tiktoken agree, and the spans are read back from the text.
    """
    import regex

    stand_in = {}
    for cls, rep in (("L", "é"), ("N", "²"), ("S", "\x85")):
        stand_in.update(dict.fromkeys(classes[cls], rep))
    mapped = "".join(c if ord(c) < 128 else stand_in.get(ord(c), "¬") for c in text)
    return [text[m.start():m.end()] for m in regex.finditer(PATTERN, mapped)]


def test_pretokenizer_on_every_code_point(conn):
    """gpt2.pretokenize splits every code point as tiktoken's classes say.

    Two texts of all code points: in code point order (class boundaries as they come), and
    grouped by class (L, N, other, \\s): one misread code point splits its group.
    """
    classes = tiktoken_classes()
    points = all_code_points()
    in_order = "".join(map(chr, points))
    other = [c for c in points if not any(c in classes[k] for k in "LNS")]
    grouped = "".join(map(chr, [*sorted(classes["L"]), *sorted(classes["N"]), *other, *sorted(classes["S"])]))
    for label, text in (("code point order", in_order), ("grouped by class", grouped)):
        got = [r[0] for r in conn.execute("SELECT piece FROM gpt2.pretokenize(%s) ORDER BY ord", (text,))]
        want = expected_pieces(text, classes)
        k = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        assert got == want, (
            f"{label}: piece {k} differs ({len(got)} vs {len(want)} pieces): sql starts at "
            f"{[hex(ord(p[0])) for p in got[k:k + 1]]} length {[len(p) for p in got[k:k + 1]]}, "
            f"expected {[hex(ord(p[0])) for p in want[k:k + 1]]} length {[len(p) for p in want[k:k + 1]]}"
        )


def test_class_boundaries_tokenize_like_tiktoken(conn):
    """Each class range's first and last code point and their neighbours, in letter, digit,
    punctuation and space contexts, tokenize exactly as tiktoken does."""
    edges = sorted({c + d for cls in "LNS" for lo, hi in ranges(tiktoken_classes()[cls])
                    for c in (lo, hi) for d in (-1, 0, 1)})
    edges = [c for c in edges if 0 < c < 0x110000 and not 0xD800 <= c <= 0xDFFF]
    texts = ["".join(f"a{chr(c)}1{chr(c)}!{chr(c)} {chr(c)}'s{chr(c)}\n" for c in edges[i:i + 64])
             for i in range(0, len(edges), 64)]
    assert_like_tiktoken(conn, [(f"class edges from U+{edges[i * 64]:04X}", t) for i, t in enumerate(texts)])


# ---------------------------------------------------------------------------------------
# Trace and detokenize
# ---------------------------------------------------------------------------------------


def test_trace_mississippilessly(conn):
    rows = conn.execute("SELECT step, pair, rank, merged_id, symbols FROM gpt2.tokenize_trace(' Mississippilessly')").fetchall()
    assert rows[0] == (0, None, None, None, list("ĠMississippilessly"))
    assert rows[1] == (1, "i + s", 15, 271, ["Ġ", "M", "is", "s", "is", "s", *"ippilessly"])
    assert [r[0] for r in rows] == list(range(13))
    assert all(r[3] == r[2] + 256 for r in rows[1:])  # GPT-2: merged id = 256 + rank
    assert rows[-1][4] == ["ĠMississ", "ipp", "iless", "ly"]


def test_trace_numbers_distinct_pieces_in_text_order(conn):
    rows = conn.execute("SELECT DISTINCT piece_no, piece FROM gpt2.tokenize_trace('ab cd ab') ORDER BY 1").fetchall()
    assert rows == [(1, "ab"), (2, " cd"), (3, " ab")]


def test_decode_bytes_like_python_replace(conn):
    rnd = random.Random(7)
    interesting = [0x00, 0x41, 0x7F, 0x80, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0, 0xED, 0xEF, 0xF0, 0xF4, 0xF5, 0xFF, 0x9F, 0xA0, 0x90, 0x8F]
    cases = [b"\xe2\x82A", b"\xed\xa0\x80", b"\xf0\x9f", b"\xc0\x80", b"\xf4\x90\x80\x80", b"\xe0\x80\x80", b"",
             "héllo 😀".encode(), b"abc\xff", b"\xf0\x9f\x98\x80\xf0\x9f\x98"]
    cases += [bytes(rnd.choice(interesting) if rnd.random() < 0.7 else rnd.randrange(1, 256)
                    for _ in range(rnd.randint(1, 8))) for _ in range(2000)]
    got = [r[0] for r in conn.execute(
        "SELECT gpt2.decode_bytes(b) FROM unnest(%s::bytea[]) WITH ORDINALITY AS u(b, k) ORDER BY k", (cases,))]
    # subtle: text cannot hold NUL; decode_bytes gives U+FFFD for it
    want = [b.decode("utf-8", errors="replace").replace("\x00", "\ufffd") for b in cases]
    bad = [f"{b!r}: sql {g!r}, python {w!r}" for b, g, w in zip(cases, got, want) if g != w]
    assert not bad, f"{len(bad)} of {len(cases)} byte strings decode differently:\n" + "\n".join(bad[:10])


def test_detokenize_joins_bytes_before_decoding(conn):
    ids = reference().encode_ordinary("😀 naïve 你好")
    split = [i for i in ids if not reference().decode_single_token_bytes(i).decode("utf-8", errors="ignore")]
    assert split, "expected byte-split tokens in this text"
    assert conn.execute("SELECT gpt2.detokenize(%s::int[])", (ids,)).fetchone()[0] == "😀 naïve 你好"
    assert conn.execute("SELECT gpt2.detokenize(%s::int[])", (ids[:1],)).fetchone()[0] == "\ufffd"
    assert conn.execute("SELECT gpt2.detokenize('{}'), gpt2.detokenize('{50256}')").fetchone() == ("", "<|endoftext|>")


def test_detokenize_unknown_id(conn):
    import psycopg

    with pytest.raises(psycopg.errors.RaiseException, match="unknown token id 50257"):
        conn.execute("SELECT gpt2.detokenize('{15496,50257}')")


def test_vocab_bytes(conn):
    rows = dict(conn.execute("SELECT id, bytes FROM gpt2.vocab WHERE id IN (198, 220, 15496, 50256)").fetchall())
    assert rows == {198: b"\n", 220: b" ", 15496: b"Hello", 50256: b"<|endoftext|>"}
    assert conn.execute("SELECT count(*), min(id), max(id) FROM gpt2.vocab").fetchone() == (50257, 0, 50256)


# ---------------------------------------------------------------------------------------
# Loader
# ---------------------------------------------------------------------------------------

DATA = ROOT / "loader" / "data"


def table_counts(conn) -> tuple:
    return conn.execute(
        "SELECT (SELECT count(*) FROM gpt2.bytes_to_unicode), (SELECT count(*) FROM gpt2.vocab),"
        " (SELECT count(*) FROM gpt2.merges), (SELECT count(*) FROM gpt2.tokenizer_files)"
    ).fetchone()


@pytest.fixture
def restore_bundled(conn):
    """Whatever a test loads, the bundled GPT-2 tokenizer is back afterwards."""
    yield
    from gpt2sql.loader.tokenizer import load_tokenizer

    load_tokenizer(conn, DATA / "encoder.json", DATA / "vocab.bpe")
    assert table_counts(conn) == (256, 50257, 50000, 1)


def test_bytes_to_unicode_is_openais():
    from gpt2sql.loader.tokenizer import bytes_to_unicode

    table = bytes_to_unicode()
    assert len(set(table.values())) == 256
    assert (table[ord("A")], table[32], table[10], table[0], table[255]) == ("A", "Ġ", "Ċ", "Ā", "ÿ")


def test_tokenizer_files_in_a_checkpoint_directory(tmp_path):
    from gpt2sql.loader.tokenizer import tokenizer_files

    assert tokenizer_files(tmp_path) is None
    (tmp_path / "encoder.json").write_text("{}")
    assert tokenizer_files(tmp_path) is None  # a vocabulary without its merges
    (tmp_path / "vocab.bpe").write_text("")
    assert tokenizer_files(tmp_path) == (tmp_path / "encoder.json", tmp_path / "vocab.bpe")
    (tmp_path / "vocab.json").write_text("{}")
    (tmp_path / "merges.txt").write_text("")
    assert tokenizer_files(tmp_path) == (tmp_path / "vocab.json", tmp_path / "merges.txt")


def test_same_files_are_not_reloaded(conn):
    from gpt2sql.loader.tokenizer import load_tokenizer

    before = conn.execute("SELECT loaded_at FROM gpt2.tokenizer_files").fetchone()
    assert load_tokenizer(conn, DATA / "encoder.json", DATA / "vocab.bpe") is False
    assert conn.execute("SELECT loaded_at FROM gpt2.tokenizer_files").fetchone() == before


def test_reload_replaces(conn, restore_bundled):
    from gpt2sql.loader.tokenizer import load_tokenizer

    assert load_tokenizer(conn, DATA / "encoder.json", DATA / "vocab.bpe", force=True) is True
    assert table_counts(conn) == (256, 50257, 50000, 1)
    assert sql_tokenize(conn, [HELLO]) == [reference().encode_ordinary(HELLO)]


def test_hugging_face_file_names(conn, tmp_path, restore_bundled):
    """vocab.json + merges.txt (here with CRLF line ends, so a new sha256) load like OpenAI's files."""
    from gpt2sql.loader.tokenizer import load_tokenizer, tokenizer_files

    (tmp_path / "vocab.json").write_bytes((DATA / "encoder.json").read_bytes())
    (tmp_path / "merges.txt").write_bytes((DATA / "vocab.bpe").read_bytes().replace(b"\n", b"\r\n"))
    assert load_tokenizer(conn, *tokenizer_files(tmp_path)) is True
    assert conn.execute("SELECT merges_file FROM gpt2.tokenizer_files").fetchone()[0].endswith("merges.txt")
    assert table_counts(conn) == (256, 50257, 50000, 1)
    assert sql_tokenize(conn, [HELLO]) == [reference().encode_ordinary(HELLO)]


def test_failed_load_keeps_the_previous_tokenizer(conn, monkeypatch, restore_bundled):
    from gpt2sql.errors import Gpt2SqlError
    from gpt2sql.loader import tokenizer

    real_copy = tokenizer._copy

    def copy_then_fail(conn, table, *args):
        real_copy(conn, table, *args)
        if table == "merges":
            raise Gpt2SqlError("disk full (simulated)")

    monkeypatch.setattr(tokenizer, "_copy", copy_then_fail)
    before = conn.execute("SELECT vocab_sha256, loaded_at FROM gpt2.tokenizer_files").fetchone()
    with pytest.raises(Gpt2SqlError, match="simulated"):
        tokenizer.load_tokenizer(conn, DATA / "encoder.json", DATA / "vocab.bpe", force=True)
    assert table_counts(conn) == (256, 50257, 50000, 1)
    assert conn.execute("SELECT vocab_sha256, loaded_at FROM gpt2.tokenizer_files").fetchone() == before
    assert sql_tokenize(conn, ["Hello world"]) == [[15496, 995]]


MALFORMED = {
    "not json": ('{"a": 0,', None, "not a JSON vocabulary"),
    "not an object": ("[1, 2]", None, "expected a JSON object"),
    "bad id": ('{"a": "zero"}', None, "ids must be integers"),
    "not byte-level": ('{"a b": 0}', None, "not a byte-level string"),
    "missing byte tokens": ('{"a": 0}', None, "byte tokens are missing"),
    "merge line": (None, "#version: 0.2\nĠ t\nĠ\n", "vocab.bpe:3: expected 'left right'"),
    "merge of unknown tokens": (None, "#version: 0.2\nĠ t\nq qqqqqqqqqqqqq\n", "is not in the vocabulary"),
    "duplicate merge": (None, "#version: 0.2\nĠ t\nĠ t\n", "vocab.bpe:3: the merge 'Ġ t' appears twice"),
}


@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
def test_malformed_files_are_refused(conn, tmp_path, case):
    from gpt2sql.errors import Gpt2SqlError
    from gpt2sql.loader.tokenizer import load_tokenizer

    vocab, merges, message = MALFORMED[case]
    vocab = vocab or (DATA / "encoder.json").read_text(encoding="utf-8")
    (tmp_path / "encoder.json").write_text(vocab, encoding="utf-8")
    (tmp_path / "vocab.bpe").write_text(merges or "#version: 0.2\nĠ t\n", encoding="utf-8")
    with pytest.raises(Gpt2SqlError, match=message):
        load_tokenizer(conn, tmp_path / "encoder.json", tmp_path / "vocab.bpe")
    assert table_counts(conn) == (256, 50257, 50000, 1)


def test_ensure_tokenizer_costs_one_query_when_loaded(conn):
    from gpt2sql.loader.tokenizer import ensure_tokenizer

    class Counting:
        queries = 0

        def execute(self, *args, **kwargs):
            Counting.queries += 1
            return conn.execute(*args, **kwargs)

    ensure_tokenizer(Counting())
    assert Counting.queries == 1


def test_ensure_tokenizer_loads_empty_tables(conn, restore_bundled):
    from gpt2sql.loader.tokenizer import ensure_tokenizer

    conn.execute("TRUNCATE gpt2.bytes_to_unicode, gpt2.vocab, gpt2.merges, gpt2.tokenizer_files")
    ensure_tokenizer(conn)
    assert table_counts(conn) == (256, 50257, 50000, 1)
    assert conn.execute("SELECT vocab_file LIKE '%%encoder.json' FROM gpt2.tokenizer_files").fetchone()[0]
