"""The documentation's commands, run as a user types them, so README and docs/ cannot rot.

Every shell line in the code blocks of README.md and docs/*.md runs through bash with
GPT2SQL_DSN pointing at the test database, in a directory holding a small random checkpoint
named my-gpt2-dir, except those that need what a test cannot have: the network (loading a
hub name), Docker, installing, or minutes of work (training runs, benchmarks). Those are
listed in NOT_RUN with the test that covers them; every gpt2sql line, run or not, must parse.
Every statement in the SQL blocks of SQL_DOCS runs too, and what it returns is checked
(SQL_CHECKS), against the NumPy reference (tests/reference.py) where there is one.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import reference
import synthetic

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
# The pages whose SQL runs. docs/training.md's changes weights and names models the tests do
# not have (tests/test_train.py makes the same calls); docs/operations.md's GRANTs run in
# tests/test_readonly.py.
SQL_DOCS = [README, ROOT / "docs" / "architecture.md", ROOT / "docs" / "glass-box.md"]
# (pattern, who covers it instead)
NOT_RUN = [
    (r"^pip install", ".ci/run"),
    (r"^python -m pytest", ".ci/run"),
    (r"^python bench/", "bench/, by hand (timings are not tests)"),
    (r"docker compose", "tests/test_compose.py (no Docker engine here)"),
    (r"^export ", "tests/test_compose.py checks the DSN against the compose file"),
    (r"^gpt2sql db stop", "tests/test_db.py (it would stop the user's own embedded server)"),
    (r"^gpt2sql load (?![./])", "tests/test_hub.py (the hub is not reachable here)"),
    (r"^gpt2sql (init|train|export) ", "tests/test_train.py (training runs of hundreds of steps)"),
    (r'^gpt2sql (--dsn (\S+|"[^"]*") )?shard ', "tests/test_shard.py (a coordinator and two shard servers)"),
]


def shell_lines(docs=DOCS) -> list[str]:
    """Lines of the indented code blocks (4 spaces, after a blank line) of docs, in order."""
    return [line for doc in docs for line in _shell_lines(doc)]


def _shell_lines(doc: Path) -> list[str]:
    lines, in_block, previous_blank, fenced = [], False, True, False
    for line in doc.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        if not fenced and line.startswith("    ") and (in_block or previous_blank):
            in_block = True
            lines.append(line.strip())
        elif line.strip():
            in_block = False
        previous_blank = not line.strip()
    return [l for l in lines if l]


def sql_statements(docs=SQL_DOCS) -> list[str]:
    blocks = [b for doc in docs for b in re.findall(r"```sql\n(.*?)```", doc.read_text(), re.S)]
    code = "\n".join(re.sub(r"--.*$", "", line) for block in blocks for line in block.splitlines())
    return [s.strip() for s in code.split(";") if s.strip()]


def skipped_by(line: str) -> str | None:
    return next((why for pattern, why in NOT_RUN if re.search(pattern, line)), None)


@pytest.fixture(scope="module")
def workdir(runner, tmp_path_factory):
    """Like the checkout (./sql), plus ./my-gpt2-dir; a random model loaded as the default."""
    root = tmp_path_factory.mktemp("readme")
    (root / "sql").symlink_to(README.parent / "sql")  # README's paths are relative to the checkout
    synthetic.write_checkpoint(root / "my-gpt2-dir", **synthetic.CONFIGS["tiny"], seed=21)
    assert runner(["load", str(root / "my-gpt2-dir"), "--name", "readme"]).exit_code == 0
    return root


def test_readme_has_commands():
    lines = shell_lines([README])
    assert any(l.startswith("gpt2sql generate") for l in lines) and any("psql" in l for l in lines)
    assert len(sql_statements([README])) >= 5


def test_every_gpt2sql_command_parses():
    """Options and subcommands in the docs exist (also for the lines that are not run)."""
    import click

    from gpt2sql.main import cli

    def parse(command, name, args, parent=None):
        ctx = command.make_context(name, args, parent=parent)
        if isinstance(command, click.Group):
            sub_name, sub, rest = command.resolve_command(ctx, [*ctx._protected_args, *ctx.args])
            parse(sub, sub_name, rest, ctx)

    for line in shell_lines():
        if line.startswith("gpt2sql "):
            parse(cli, "gpt2sql", shlex.split(line, comments=True)[1:])


def test_readme_shell_lines_run(dsn, workdir):
    env = dict(os.environ, GPT2SQL_DSN=dsn, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    ran = 0
    for line in shell_lines():
        if skipped_by(line) or not re.match(r"^(gpt2sql|psql|(echo|printf) .*\| gpt2sql)", line):
            continue
        result = subprocess.run(["bash", "-c", line], cwd=workdir, env=env, capture_output=True, text=True, timeout=600,
                                stdin=subprocess.DEVNULL)
        assert result.returncode == 0, f"documented line failed: {line}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        assert "Traceback" not in result.stderr, line
        ran += 1
    assert ran >= 15


def test_readme_tokenize_examples_print_what_readme_says(dsn, workdir):
    """Lines ending in `# [ids]`, `# {ids}` (psql's array) or `# Hello world` print exactly that."""
    env = dict(os.environ, GPT2SQL_DSN=dsn, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    checked = 0
    for line in shell_lines():
        expected = re.search(r"#\s*(\[[\d, ]+\]|\{[\d,]+\}|Hello world)$", line)
        if expected and line.startswith("gpt2sql "):
            out = subprocess.run(["bash", "-c", line], cwd=workdir, env=env, capture_output=True, text=True,
                                 stdin=subprocess.DEVNULL).stdout
            assert out.strip() == expected[1], line
            checked += 1
    assert checked >= 3


def _greedy(conn, workdir, rows):
    """gpt2.generate(..., max_tokens => 20, temperature => 0): 20 steps (fewer only at
    <|endoftext|>), the reference's greedy tokens."""
    hparams, params = reference.load(workdir / "my-gpt2-dir")
    ids = conn.execute("SELECT gpt2.tokenize('Happy New Year! I wish')").fetchone()[0]
    want = reference.generate_greedy(params, hparams, ids, 20)
    got = [r[1] for r in rows]
    assert [r[0] for r in rows] == list(range(1, len(rows) + 1))
    assert got == want[:len(got)] and (len(got) == 20 or got[-1] == 50256), (got, want)


def _trace(conn, workdir, rows):
    steps = [r[2] for r in rows]
    assert steps == list(range(len(rows))) and rows[-1][6] == ["ĠMississ", "ipp", "iless", "ly"]


def _batch(conn, workdir, rows):
    alone = [conn.execute("SELECT gpt2.complete(%s, max_tokens => 24, temperature => 0)", (body,)).fetchone()[0]
             for body in ("Dear diary,", "The weather today", "def add(a, b):")]
    assert sorted(rows) == [(1, alone[0]), (2, alone[1]), (3, alone[2])]


def _attention(conn, workdir, rows):
    n = len(conn.execute("SELECT gpt2.tokenize('The cat sat on the mat')").fetchone()[0])
    assert len(rows) == n * (n + 1) // 2, "one row per query and each key up to it"
    for q in range(n):
        assert sum(r[4] for r in rows if r[2] == q) == pytest.approx(1, abs=1e-6)


def _score(conn, workdir, rows):
    hparams, params = reference.load(workdir / "my-gpt2-dir")
    ids = conn.execute("SELECT gpt2.tokenize('The cat sat on the mat')").fetchone()[0]
    logprobs, ranks = reference.score(params, hparams, ids)
    assert np.allclose([r[2] for r in rows], logprobs, atol=1e-4) and [r[3] for r in rows] == ranks.tolist()
    assert all(len(r[4]) == 3 for r in rows)


def _perplexity(conn, workdir, rows):
    hparams, params = reference.load(workdir / "my-gpt2-dir")
    ids = conn.execute("SELECT gpt2.tokenize('The cat sat on the mat')").fetchone()[0]
    assert rows[0][0] == pytest.approx(np.exp(-np.mean(reference.score(params, hparams, ids)[0])), rel=1e-4)


# (a pattern of one README statement, what its rows must satisfy): each pattern must match
SQL_CHECKS = [
    (r"gpt2\.tokenize\('Hello world'\)", lambda conn, workdir, rows: rows == [([15496, 995],)]),
    (r"gpt2\.detokenize\('\{15496,995\}'\)", lambda conn, workdir, rows: rows == [("Hello world",)]),
    (r"gpt2\.tokenize_trace\(' Mississippilessly'\)", _trace),
    (r"gpt2\.generate\('Happy New Year! I wish', max_tokens => 20, temperature => 0\)", _greedy),
    (r"gpt2\.complete\('Happy New Year! I wish'.*seed => 42", lambda conn, workdir, rows: len(rows) == 1 and bool(rows[0][0])),
    (r"FROM gpt2\.models", lambda conn, workdir, rows: ("readme", 2, 64, "float32") in rows),
    (r"gpt2\.complete_batch\(", _batch),
    (r"gpt2\.attention\('The cat sat on the mat'\) WHERE layer = 1 AND head = 2", _attention),
    (r"gpt2\.logit_lens\('The cat sat on the mat', k => 1\) WHERE pos = 5",
     lambda conn, workdir, rows: [r[0] for r in rows] == [0, 1, 2] and all(0 < r[2] <= 1 for r in rows)),
    (r"gpt2\.score\('The cat sat on the mat', top => 3\)", _score),
    (r"^SELECT gpt2\.perplexity\('The cat sat on the mat'\)$", _perplexity),
    (r"gpt2\.perplexity\(body\)", lambda conn, workdir, rows: [r[0] for r in rows] == [1, 2] and all(r[1] > 1 for r in rows)),
]


def test_readme_sql_runs_and_returns_what_it_should(dsn, workdir):
    from gpt2sql import db

    checked = set()
    with db.connect(dsn) as conn:   # a connection of its own: README's statements may create temporary tables
        for statement in sql_statements():
            cursor = conn.execute(statement)
            rows = cursor.fetchall() if cursor.description is not None else None
            for pattern, check in SQL_CHECKS:
                if re.search(pattern, statement, re.S):
                    result = check(conn, workdir, rows)  # asserts, or says True / False
                    assert result is None or result is True, f"documented statement returned {rows!r}:\n{statement}"
                    checked.add(pattern)
    missing = [pattern for pattern, _ in SQL_CHECKS if pattern not in checked]
    assert not missing, f"no documented statement matches {missing}: the docs changed, update SQL_CHECKS"
