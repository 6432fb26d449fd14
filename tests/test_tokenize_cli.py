"""`gpt2sql tokenize` and `gpt2sql detokenize` through click's CliRunner."""

from __future__ import annotations

import json


def test_tokenize_prints_json(runner):
    result = runner(["tokenize", "Hello world"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "[15496, 995]\n"


def test_tokenize_empty_text(runner):
    assert runner(["tokenize", ""]).stdout == "[]\n"


def test_tokenize_reads_stdin_verbatim(runner):
    from test_tokenizer import reference

    text = "  def f():\r\n\treturn 1  \n\n"
    result = runner(["tokenize", "-"], input=text.encode("utf-8"))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == reference().encode_ordinary(text)


def test_tokenize_show(runner):
    """Each token as score and inspect show it (gpt2sql.tables.label)."""
    result = runner(["tokenize", "--show", "Hello world 😀\n\u00a0\\n"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        " 15496  Hello", "   995  ␣world",
        " 30325  ␣\\xf0\\x9f\\x98", "   222  \\x80",  # a byte-split emoji
        "   198  \\n", "  1849  \\u00a0", "    59  \\\\", "    77  n"]  # a newline; a backslash and an 'n'


def test_tokenize_trace_shows_tokens_as_show_does(runner):
    result = runner(["tokenize", "--trace", " Mississippilessly"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Ġ" not in out, "the byte-level alphabet is SQL's, not the reader's"
    assert out.splitlines()[0] == "piece 1: ␣Mississippilessly"
    assert "i + s" in out and "␣Miss + iss" in out
    assert out.splitlines()[-2].endswith("  ␣Mississ ipp iless ly")
    assert out.splitlines()[-1] == "ids: [12732, 3974, 30608, 306]"


def test_tokenize_trace_of_bytes_and_newlines(runner, conn):
    text = "é\n😀"
    result = runner(["tokenize", "--trace", text])
    assert result.exit_code == 0, result.output
    pieces = [line for line in result.stdout.splitlines() if line.startswith("piece ")]
    assert pieces == ["piece 1: é", "piece 2: \\n", "piece 3: 😀"]
    firsts = [line.split(None, 1)[1] for line in result.stdout.splitlines() if line.lstrip().startswith("0 ")]
    assert firsts == ["\\xc3 \\xa9", "\\n", "\\xf0 \\x9f \\x98 \\x80"], "step 0: one symbol per byte"


def test_tokenize_refuses_nul(runner):
    for args, stdin in ((["tokenize", "a\x00b"], None), (["tokenize", "-"], b"a\x00b")):
        result = runner(args, input=stdin)
        assert result.exit_code == 1
        assert result.stderr.count("\n") == 1 and "NUL" in result.stderr, result.stderr


def test_tokenize_refuses_invalid_utf8_on_stdin(runner):
    result = runner(["tokenize", "-"], input=b"ab\xff")
    assert result.exit_code == 1
    assert result.stderr == "error: standard input is not UTF-8 (byte 2: b'\\xff')\n"


def test_detokenize(runner):
    assert runner(["detokenize", "15496", "995"]).stdout == "Hello world\n"
    assert runner(["detokenize", "[12732, 3974, 30608, 306]"]).stdout == " Mississippilessly\n"


def test_detokenize_bad_ids(runner):
    for args, message in (
        (["detokenize", "15496", "abc"], "not a token id: 'abc'"),
        (["detokenize", "[15496, 9.5]"], "not a token id: 9.5"),
        (["detokenize", "[15496,"], "not a JSON array of token ids"),
        (["detokenize", "50257"], "unknown token id 50257 (token ids run from 0 to 50256)"),
        (["detokenize", "-1"], "unknown token id -1 (token ids run from 0 to 50256)"),
        (["detokenize", "[15496, -5]"], "unknown token id -5 (token ids run from 0 to 50256)"),
        (["detokenize", str(2**40)], f"unknown token id {2**40} (token ids run from 0 to 50256)"),
    ):
        result = runner(args)
        assert result.exit_code == 1, (args, result.output)
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
        assert message in result.stderr, (args, result.stderr)
