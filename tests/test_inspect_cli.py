"""`gpt2sql score` and `gpt2sql inspect`: what they print equals what gpt2.score, gpt2.attention
and gpt2.logit_lens return (sql/97_inspect.sql, tested against the reference in
tests/test_inspect.py); pictures are PNGs of a sane size; bad input is one line."""

from __future__ import annotations

import json
import math
import struct
import sys

import pytest

import synthetic
from gpt2sql.tables import label

TEXT = "The cat sat on the mat because it was warm."
CONTEXT = 128  # the test model's n_positions: room for 100 tokens


@pytest.fixture(scope="module")
def model(tmp_path_factory, runner):
    config = dict(synthetic.CONFIGS["tiny"], n_positions=CONTEXT)
    directory = synthetic.write_checkpoint(tmp_path_factory.mktemp("glass"), **config, seed=31)
    assert runner(["load", str(directory), "--name", "glass"]).exit_code == 0
    return "glass"


@pytest.fixture(autouse=True)
def terminal(monkeypatch):
    """Tables fit the terminal (shutil.get_terminal_size reads COLUMNS first): 80 columns here,
    whatever terminal runs the tests."""
    monkeypatch.setenv("COLUMNS", "80")


def words(conn, n_tokens: int) -> str:
    """A text of exactly n_tokens tokens: ' w0 w1 ...' is two tokens a word for these words."""
    text = ""
    i = 0
    while len(conn.execute("SELECT gpt2.tokenize(%s)", (text,)).fetchone()[0] or []) < n_tokens:
        text += f" cat{i % 7}"
        i += 1
    ids = conn.execute("SELECT gpt2.tokenize(%s)", (text,)).fetchone()[0]
    return conn.execute("SELECT gpt2.detokenize(%s)", (ids[:n_tokens],)).fetchone()[0]


def one_line_error(result, exit_code=1, *fragments):
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    if exit_code == 1:
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


# -- score -------------------------------------------------------------------------------

def test_score_table_equals_gpt2_score(conn, runner, model):
    result = runner(["score", TEXT, "-m", model, "--top", "2"])
    assert result.exit_code == 0, result.output
    header, *lines, summary = result.stdout.splitlines()
    assert header.split()[:4] == ["pos", "token", "logprob", "rank"]
    rows = conn.execute("SELECT s.pos, s.logprob, s.rank, s.alternatives, v.bytes FROM gpt2.score(%s, %s, 2) s "
                        "JOIN gpt2.vocab v ON v.id = s.token ORDER BY s.pos", (TEXT, model)).fetchall()
    assert len(lines) == len(rows)
    for line, (pos, logprob, rank, alternatives, data) in zip(lines, rows):
        fields = line.split()  # spaces in tokens show as '␣', so whitespace splits the columns
        assert int(fields[0]) == pos and fields[1] == label(bytes(data))
        assert float(fields[2]) == pytest.approx(logprob, abs=5e-4) and int(fields[3]) == rank
        assert [float(f) for f in fields[5::2]] == pytest.approx([a["logprob"] for a in alternatives], abs=5e-3)
    perplexity = conn.execute("SELECT gpt2.perplexity(%s, %s)", (TEXT, model)).fetchone()[0]
    assert summary.startswith("perplexity ") and float(summary.split()[1]) == pytest.approx(perplexity, rel=1e-6)
    assert f"over {len(rows)} tokens" in summary


@pytest.mark.parametrize("top", [0, 3])
def test_score_json_lines_equal_gpt2_score(conn, runner, model, top):
    result = runner(["score", TEXT, "--model", model, "--json", "--top", str(top)])
    assert result.exit_code == 0, result.output
    *tokens, summary = [json.loads(line) for line in result.stdout.splitlines()]
    rows = conn.execute("SELECT pos, token, text, logprob, rank, alternatives FROM gpt2.score(%s, %s, %s) ORDER BY pos",
                        (TEXT, model, top)).fetchall()
    for got, (pos, token, text, logprob, rank, alternatives) in zip(tokens, rows, strict=True):
        want = dict(pos=pos, id=token, text=text, logprob=pytest.approx(logprob, abs=1e-9), rank=rank)
        if top:
            want["top_logprobs"] = alternatives
        assert got == want
    mean = sum(r[3] for r in rows) / len(rows)
    assert summary == {"perplexity": pytest.approx(math.exp(-mean)), "tokens": len(rows), "mean_logprob": pytest.approx(mean)}


def test_score_reads_stdin_verbatim(conn, runner, model):
    result = runner(["score", "-", "-m", model, "--json", "--top", "0"], input="Hi\n")
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["text"] for line in result.stdout.splitlines()[:-1]] == ["Hi", "\n"]


def test_score_past_the_context(conn, runner, model):
    text = words(conn, CONTEXT + 40)  # two windows
    result = runner(["score", text, "-m", model, "--json", "--top", "0"])
    assert result.exit_code == 0, result.output
    got = [json.loads(line)["logprob"] for line in result.stdout.splitlines()[:-1]]
    want = [r[0] for r in conn.execute("SELECT logprob FROM gpt2.score(%s, %s) ORDER BY pos", (text, model))]
    assert got == pytest.approx(want, abs=1e-9) and len(got) == CONTEXT + 40


@pytest.mark.parametrize("data, shown", [
    (b" the", "␣the"), (b"  ", "␣␣"), (b".\n\n", ".\\n\\n"), (b"\t", "\\t"), (b"\xe2\x80", "\\xe2\\x80"),
    (" caf\u00e9".encode(), "␣caf\u00e9"), ("\u00a0".encode(), "\\u00a0"), ("\u4e16".encode(), "\u4e16"),
    (b"\\n", "\\\\n"), (b"\\", "\\\\"),                       # a backslash is doubled: '\\n' is never a newline
    ("\U000e0001".encode(), "\\U000e0001"), ("\u200b".encode(), "\\u200b"), (b"\x1b[", "\\u001b["),
    ("\u0301".encode(), "\\u0301"), ("e\u0301".encode(), "e\u0301"),  # a mark with nothing to combine with
    ("\u2423".encode(), "\\u2423"),                                   # a real '␣' is not a space
])
def test_tokens_are_shown_with_spaces_and_newlines_visible(data, shown):
    assert label(data) == shown


@pytest.mark.parametrize("text, columns, cut", [
    ("\\u00a0\\u00a0", 8, "\\u00a0…"), ("ab\\xe2\\x80", 5, "ab…"), ("\\\\\\n", 3, "\\\\…"),
    ("␣the", 4, "␣the"), ("世界世界", 5, "世界…"),
])
def test_a_cut_label_keeps_its_escapes_whole(text, columns, cut):
    from gpt2sql.tables import fit, width

    assert fit(text, columns).rstrip() == cut and width(fit(text, columns)) == columns


def test_pictures_show_tokens_as_tables_do_and_never_cut_an_escape():
    pytest.importorskip("matplotlib")
    from gpt2sql.plots import _drawable

    assert _drawable("␣the") == "␣the"
    assert _drawable("\\u00a0" * 3, 10) == "\\u00a0…", "a whole escape, then '…'"
    assert _drawable("世界", 20) == "\\u4e16\\u754c", "characters the font lacks as escapes"
    assert _drawable("a" * 12 + "世", 12) == "a" * 11 + "…"


# -- inspect: tables ----------------------------------------------------------------------

def attention(conn, model, text=TEXT):
    return {(l, h, q, k): w for l, h, q, k, w in conn.execute("SELECT * FROM gpt2.attention(%s, %s)", (text, model))}


def test_inspect_attention_one_head_is_its_matrix(conn, runner, model):
    result = runner(["inspect", TEXT, "-m", model, "--attention", "--layer", "1", "--head", "2"])
    assert result.exit_code == 0, result.output
    ((title, header, lines),) = blocks(result.stdout.splitlines())
    assert "layer 1, head 2, keys 0-10" in title and header.split()[:2] == ["pos", "token"]
    weights = attention(conn, model)
    n = len(lines)
    assert n == len(conn.execute("SELECT gpt2.tokenize(%s)", (TEXT,)).fetchone()[0])
    for q, line in enumerate(lines):
        fields = line.split()
        assert int(fields[0]) == q and len(fields) == 2 + q + 1, "causal: keys 0..q"
        assert [float(f) for f in fields[2:]] == pytest.approx([weights[1, 2, q, k] for k in range(q + 1)], abs=0.006)


def test_inspect_attention_summary_has_every_layer_and_head(conn, runner, model):
    result = runner(["inspect", TEXT, "-m", model, "--attention"])
    assert result.exit_code == 0, result.output
    shown = list(blocks(result.stdout.splitlines()))
    assert len(shown) == 2, "one block per layer when --layer is not given (4 heads fit in 80 columns)"
    weights = attention(conn, model)
    for layer, (title, header, lines) in enumerate(shown):
        assert f"layer {layer}, heads 0-3:" in title and header.split()[2:] == ["head", "0", "head", "1", "head", "2", "head", "3"]
        for q, line in enumerate(lines):
            cells = line.split()[2:]
            for head in range(4):
                row = [weights[layer, head, q, k] for k in range(q + 1)]
                assert int(cells[2 * head]) == row.index(max(row)) and float(cells[2 * head + 1]) == pytest.approx(max(row), abs=0.006)


def test_inspect_logit_lens_table_equals_gpt2_logit_lens(conn, runner, model):
    result = runner(["inspect", TEXT, "-m", model, "--logit-lens", "--top", "2"])
    assert result.exit_code == 0, result.output
    title, header, *lines = result.stdout.splitlines()
    assert "the top 2 next tokens" in title and header.split()[:3] == ["pos", "token", "layer"]
    rows = conn.execute("SELECT l.layer, l.pos, l.prob, v.bytes FROM gpt2.logit_lens(%s, %s, 2) l "
                        "JOIN gpt2.vocab v ON v.id = l.token ORDER BY l.pos, l.layer, l.rank", (TEXT, model)).fetchall()
    assert len(lines) == len(rows) // 2 == 3 * 11, "one line per position and layer (0, 1, 2)"
    for line, pair in zip(lines, zip(rows[::2], rows[1::2])):
        fields = line.split()
        cells = fields[-4:]
        assert int(fields[-5]) == pair[0][0], "the layer"
        for (layer, pos, prob, data), (shown, p) in zip(pair, zip(cells[::2], cells[1::2])):
            want = label(bytes(data))
            assert shown == want or shown.endswith("…") and want.startswith(shown[:-1]), (shown, want)
            assert float(p) == pytest.approx(prob, abs=0.006)


# -- inspect: pictures ---------------------------------------------------------------------

def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize("n_tokens", [5, 100])
@pytest.mark.parametrize("view", [["--attention"], ["--attention", "--layer", "1", "--head", "3"], ["--logit-lens"]])
def test_inspect_draws_a_png(conn, runner, model, tmp_path, n_tokens, view):
    text = words(conn, n_tokens)
    out = tmp_path / "picture.png"
    result = runner(["inspect", text, "-m", model, *view, "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout == "" and f"wrote {out}" in result.stderr
    width, height = png_size(out)
    assert 400 <= width <= 4000 and 300 <= height <= 5000, (width, height)
    assert 5_000 < out.stat().st_size < 2_000_000
    if n_tokens == 100:  # more tokens, a bigger picture (not a squeezed one)
        small = tmp_path / "small.png"
        assert runner(["inspect", words(conn, 5), "-m", model, *view, "-o", str(small)]).exit_code == 0
        assert width * height > 2 * math.prod(png_size(small))


def test_missing_matplotlib_is_one_line(runner, model, tmp_path, monkeypatch):
    for name in ["matplotlib", *(m for m in sys.modules if m.startswith("matplotlib."))]:
        monkeypatch.setitem(sys.modules, name, None)  # import matplotlib... now fails, as if not installed
    result = runner(["inspect", TEXT, "-m", model, "--attention", "-o", str(tmp_path / "a.png")])
    one_line_error(result, 1, "pip install -e '.[plot]'")
    assert not (tmp_path / "a.png").exists()


# -- bad input -----------------------------------------------------------------------------

@pytest.mark.parametrize("args, code, fragment", [
    (["score", ""], 1, "the text is empty"),
    (["inspect", "", "--attention"], 1, "the text is empty"),
    (["inspect", TEXT, "--attention", "--head", "4"], 1, "--head 4 is out of range: model 'glass' has 4 heads (0..3)"),
    (["inspect", TEXT, "--attention", "--layer", "2"], 1, "--layer 2 is out of range"),
    (["inspect", TEXT, "--attention", "-o", "picture.bmpx"], 1, "end it in .png, .svg or .pdf"),
    (["inspect", TEXT, "--attention", "-o", "no/such/dir/a.png"], 1, "no directory"),
    (["score", TEXT, "--model", "no-such-model"], 1, "no-such-model"),
    (["inspect", TEXT], 2, "give --attention or --logit-lens"),
    (["inspect", TEXT, "--attention", "--logit-lens"], 2, "give --attention or --logit-lens"),
    (["inspect", TEXT, "--logit-lens", "--head", "1"], 2, "--head goes with --attention"),
    (["inspect", TEXT, "--attention", "--top", "2"], 2, "--top goes with --logit-lens"),
    (["inspect", TEXT, "--attention", "--head", "-1"], 2, "--head"),
    (["score", TEXT, "--top", "21"], 2, "--top"),
    (["inspect", TEXT, "--attention", "-o", "a.png", "--width", "80"], 2, "--width goes with a table"),
    (["score", TEXT, "--width", "-1"], 2, "--width"),
])
def test_bad_input(runner, model, args, code, fragment):
    one_line_error(runner([*args, *(["-m", model] if "--model" not in args else [])]), code, fragment)


@pytest.mark.parametrize("view", ["--attention", "--logit-lens"])
def test_inspect_text_longer_than_the_context_is_one_line(conn, runner, model, view):
    result = runner(["inspect", words(conn, CONTEXT + 1), "-m", model, view])
    one_line_error(result, 1, f"has {CONTEXT + 1} tokens; model 'glass' sees at most {CONTEXT}")
    assert " over " not in result.stderr, "no progress bar before the error"


# -- tables fit the terminal ---------------------------------------------------------------

@pytest.fixture(scope="module")
def heads12(tmp_path_factory, runner):
    """GPT-2's 12 heads (at a tiny width): the summary that printed 149 columns."""
    config = dict(n_layer=2, n_embd=48, n_head=12, n_positions=CONTEXT)
    directory = synthetic.write_checkpoint(tmp_path_factory.mktemp("glass12"), **config, seed=32)
    assert runner(["load", str(directory), "--name", "glass12"]).exit_code == 0
    return "glass12"


VIEWS = {
    "score": ["score", TEXT], "score-top-20": ["score", TEXT, "--top", "20"],
    "summary": ["inspect", TEXT, "--attention"], "matrix": ["inspect", 40, "--attention", "--head", "3"],
    "lens": ["inspect", TEXT, "--logit-lens"], "lens-top-12": ["inspect", TEXT, "--logit-lens", "--top", "12"],
}


def table(conn, runner, model, view: str, columns: int | None, terminal: int = 80):
    """The view's output at --width COLUMNS (None: not given, in a terminal TERMINAL wide)."""
    args = [conn and words(conn, a) if isinstance(a, int) else a for a in VIEWS[view]]
    args += ["-m", model] + ([] if columns is None else ["--width", str(columns)])
    result = runner(args, env={"COLUMNS": str(terminal)})  # (shutil.get_terminal_size reads COLUMNS first)
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines()


@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize("columns", [None, 60, 100])
def test_tables_fit_the_width(conn, runner, heads12, view, columns):
    from gpt2sql.tables import width

    lines = table(conn, runner, heads12, view, columns)
    widest = max(width(line) for line in lines)
    assert widest <= (columns or 80), "\n".join(line for line in lines if width(line) > (columns or 80))


def test_width_follows_the_terminal_and_zero_is_no_limit(conn, runner, heads12):
    from gpt2sql.tables import width

    wide, narrow = (table(conn, runner, heads12, "summary", None, terminal=t) for t in (120, 80))
    assert 80 < max(map(width, wide)) <= 120
    assert len(list(blocks(wide))) == 4 and len(list(blocks(narrow))) == 6, "12 heads: 2 blocks of 6 a layer, or 3 of 4"
    unlimited = table(conn, runner, heads12, "summary", 0)
    assert max(map(width, unlimited)) > 140 and len([l for l in unlimited if l.startswith("model ")]) == 2, \
        "one block per layer, every head on one line"


def blocks(lines: list[str]):
    """(title, header, rows) of each block; blocks are separated by blank lines, a title may
    take more than one line."""
    text = "\n".join(lines).strip()
    for block in text.split("\n\n"):
        block = block.splitlines()
        h = next(i for i, line in enumerate(block) if line.split()[:2] == ["pos", "token"])
        yield " ".join(block[:h]), block[h], block[h + 1:]


@pytest.mark.parametrize("columns", [60, 80])
def test_a_wrapped_summary_has_each_head_once(conn, runner, heads12, columns):
    weights = attention(conn, heads12)
    seen = {}
    for title, header, rows in blocks(table(conn, runner, heads12, "summary", columns)):
        layer = int(title.split("layer ")[1].split(",")[0])
        heads = [int(h) for h in header.split()[2:][1::2]]
        assert f"heads {heads[0]}-{heads[-1]}:" in title and header.split()[2::2] == ["head"] * len(heads)
        for q, row in enumerate(rows):
            cells = row.split()[2:]
            assert int(row.split()[0]) == q and len(cells) == 2 * len(heads)
            for h, key, weight in zip(heads, cells[::2], cells[1::2]):
                assert (layer, h, q) not in seen
                seen[layer, h, q] = int(key), float(weight)
    n = len(rows)
    assert set(seen) == {(l, h, q) for l in range(2) for h in range(12) for q in range(n)}
    for (l, h, q), (key, weight) in seen.items():
        row = [weights[l, h, q, k] for k in range(q + 1)]
        assert key == row.index(max(row)) and weight == pytest.approx(max(row), abs=0.006)


def test_a_wrapped_matrix_has_each_weight_once(conn, runner, heads12):
    weights = attention(conn, heads12, words(conn, 40))
    seen = {}
    for title, header, rows in blocks(table(conn, runner, heads12, "matrix", 80)):
        keys = [int(k) for k in header.split()[2:]]
        assert "layer" in title and "head 3" in title and f"keys {keys[0]}-{keys[-1]}" in title
        assert keys == list(range(keys[0], keys[-1] + 1))
        for row in rows:
            q, cells = int(row.split()[0]), row.split()[2:]
            assert len(cells) == min(q, keys[-1]) - keys[0] + 1, "causal: keys up to the query"
            for k, w in zip(keys, cells):
                layer = int(title.split("layer ")[1].split(",")[0])
                assert (layer, q, k) not in seen
                seen[layer, q, k] = float(w)
    assert set(seen) == {(l, q, k) for l in range(2) for q in range(40) for k in range(q + 1)}
    for (l, q, k), w in seen.items():
        assert w == pytest.approx(weights[l, 3, q, k], abs=0.006)


def wrapped_cells(lines: list[str], first: str) -> list[tuple[str, list[str]]]:
    """(the columns before the cells, the cells) of each table row, continuation lines joined;
    the cells start where FIRST starts in the header."""
    header = next(i for i, line in enumerate(lines) if first in line and line.lstrip().startswith("pos"))
    start = lines[header].index(first)
    rows = []
    for line in lines[header + 1:]:
        if line[:start].strip():
            rows.append((line[:start], line[start:].split()))
        else:
            rows[-1][1].extend(line[start:].split())
    return rows


def test_a_wrapped_logit_lens_has_every_rank(conn, runner, heads12):
    from gpt2sql.tables import cut

    lines = table(conn, runner, heads12, "lens-top-12", 80)
    got = wrapped_cells(lines, "top 12")
    want = conn.execute("SELECT l.pos, l.layer, l.prob, v.bytes FROM gpt2.logit_lens(%s, %s, 12) l "
                        "JOIN gpt2.vocab v ON v.id = l.token ORDER BY l.pos, l.layer, l.rank", (TEXT, heads12)).fetchall()
    assert len(got) == len(want) // 12
    for (before, cells), ranked in zip(got, [want[i:i + 12] for i in range(0, len(want), 12)]):
        assert int(before.split()[-1]) == ranked[0][1], "the layer"
        assert len(cells) == 24
        for (shown, p), (_pos, _layer, prob, data) in zip(zip(cells[::2], cells[1::2]), ranked):
            assert shown == cut(label(bytes(data)), len(shown) if shown.endswith("…") else 99)
            assert float(p) == pytest.approx(prob, abs=0.006)


def test_a_wrapped_score_has_every_alternative(conn, runner, heads12):
    lines = table(conn, runner, heads12, "score-top-20", 80)
    got = wrapped_cells(lines[:-1], "top 20")
    want = conn.execute("SELECT alternatives FROM gpt2.score(%s, %s, 20) ORDER BY pos", (TEXT, heads12)).fetchall()
    assert len(got) == len(want)
    for (_before, cells), (alternatives,) in zip(got, want):
        assert [float(c) for c in cells[1::2]] == pytest.approx([a["logprob"] for a in alternatives], abs=0.006)
