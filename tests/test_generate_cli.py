"""`gpt2sql generate` as a user meets it: empty prompts, options that would do nothing, a
prompt longer than the context, and --no-echo. (What the tokens are: tests/test_generate.py.)"""

from __future__ import annotations

import json

import pytest

import synthetic

CONTEXT = 64  # the tiny model's n_positions


@pytest.fixture(scope="module")
def model(runner, tmp_path_factory):
    directory = synthetic.write_checkpoint(tmp_path_factory.mktemp("gencli"), **synthetic.CONFIGS["tiny"], seed=11)
    assert runner(["load", str(directory), "--name", "gencli"]).exit_code == 0
    return "gencli"


def one_line_error(result, fragment: str) -> None:
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert fragment in result.stderr, result.stderr
    assert result.stdout == "", "nothing generated"


# -- one rule for an empty text ------------------------------------------------------------

@pytest.mark.parametrize("args, stdin", [
    (["generate", ""], None),
    (["generate", "-"], ""),
    (["generate", "", "--json"], None),
])
def test_generate_refuses_an_empty_prompt(runner, model, args, stdin):
    one_line_error(runner([*args, "-m", model, "-n", "3"], input=stdin), "the prompt is empty")


@pytest.mark.parametrize("command", [["score"], ["inspect", "--attention"], ["inspect", "--logit-lens"]])
def test_score_and_inspect_refuse_an_empty_text_from_stdin_too(runner, model, command):
    one_line_error(runner([command[0], "-", *command[1:], "-m", model], input=""), "the text is empty")


@pytest.mark.parametrize("content, line", [("Hello\n\nWorld\n", 2), ("\n", 1), ("Hello\nWorld\n\n", 3), ("a\r\n\r\nb", 2)])
def test_batch_refuses_a_blank_line_by_its_number(runner, model, tmp_path, content, line):
    path = tmp_path / "prompts.txt"
    path.write_bytes(content.encode())
    one_line_error(runner(["generate", "--batch", str(path), "-m", model, "-n", "2"]), f"line {line} of {str(path)!r} is empty")
    from_stdin = runner(["generate", "--batch", "-", "-m", model, "-n", "2"], input=content)
    one_line_error(from_stdin, f"line {line} of standard input is empty")


def test_a_prompt_of_spaces_is_not_empty(runner, model):
    result = runner(["generate", " ", "-m", model, "-n", "2", "-t", "0", "--json"])
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) >= 1


# -- options that would do nothing ---------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["Hi", "--top-logprobs", "2"], "--top-logprobs goes with --json or --batch"),
    (["Hi", "--top-logprobs", "0"], "--top-logprobs goes with --json or --batch"),
    (["Hi", "--json", "--no-echo"], "--no-echo goes with the text output"),
])
def test_an_option_without_effect_is_a_usage_error(runner, model, args, message):
    result = runner(["generate", *args, "-m", model, "-n", "2"])
    assert result.exit_code == 2 and message in result.stderr, result.output


def test_top_logprobs_with_json(runner, model):
    result = runner(["generate", "Hi", "-m", model, "-n", "2", "--json", "--top-logprobs", "2"])
    assert result.exit_code == 0, result.output
    assert all(len(json.loads(line)["top_logprobs"]) == 2 for line in result.stdout.splitlines())


# -- a prompt longer than the context, and --no-echo ----------------------------------------

def words(conn, n_tokens: int) -> str:
    """' cat0 cat1 ...' cut to exactly n_tokens tokens."""
    text = "".join(f" cat{i % 7}" for i in range(n_tokens))
    ids = conn.execute("SELECT gpt2.tokenize(%s)", (text,)).fetchone()[0]
    assert len(ids) >= n_tokens
    return conn.execute("SELECT gpt2.detokenize(%s)", (ids[:n_tokens],)).fetchone()[0]


def notes(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("note: ")]


def test_a_prompt_longer_than_the_context_is_noted(conn, runner, model):
    prompt = words(conn, CONTEXT + 30)
    result = runner(["generate", prompt, "-m", model, "-n", "3", "-t", "0"])
    assert result.exit_code == 0, result.output
    assert notes(result) == [f"note: the prompt has {CONTEXT + 30} tokens and model 'gencli' sees at most {CONTEXT}: "
                             "the continuation follows from its end"], result.stderr


def test_a_prompt_that_fits_gets_no_note(conn, runner, model):
    result = runner(["generate", words(conn, CONTEXT), "-m", model, "-n", "2", "-t", "0"])
    assert result.exit_code == 0 and notes(result) == [], result.stderr


def test_batch_notes_each_prompt_that_is_cut(conn, runner, model, tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(["Hello", words(conn, CONTEXT + 1), "World", words(conn, CONTEXT + 5)]) + "\n")
    result = runner(["generate", "--batch", str(path), "-m", model, "-n", "2", "-t", "0"])
    assert result.exit_code == 0, result.output
    assert notes(result) == [
        f"note: prompt 2 has {CONTEXT + 1} tokens and model 'gencli' sees at most {CONTEXT}: the continuation follows from its end",
        f"note: prompt 4 has {CONTEXT + 5} tokens and model 'gencli' sees at most {CONTEXT}: the continuation follows from its end",
    ], result.stderr


@pytest.mark.parametrize("prompt", ["Once upon a time", "x" * 300])
def test_no_echo_prints_only_the_continuation(conn, runner, model, prompt):
    args = ["generate", prompt, "-m", model, "-n", "5", "-t", "0"]
    echoed, bare = runner(args), runner([*args, "--no-echo"])
    assert echoed.exit_code == 0 and bare.exit_code == 0, bare.output
    assert echoed.stdout == prompt + bare.stdout
    generated = [json.loads(line)["id"] for line in runner([*args, "--json"]).stdout.splitlines()]
    want = conn.execute("SELECT gpt2.detokenize(%s)", ([t for t in generated if t != 50256],)).fetchone()[0]
    assert bare.stdout == want + "\n"


def test_batch_lines_end_only_at_newlines(runner, model, tmp_path):
    """A form feed or U+2028 inside a line is part of its prompt (str.splitlines would cut there)."""
    path = tmp_path / "prompts.txt"
    path.write_text("page\x0cbreak\r\nline\u2028separator\n", encoding="utf-8")
    result = runner(["generate", "--batch", str(path), "-m", model, "-n", "1", "-t", "0"])
    assert result.exit_code == 0, result.output
    assert {json.loads(line)["prompt"] for line in result.stdout.splitlines()} == {1, 2}
