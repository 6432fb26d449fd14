"""Many prompts at once (gpt2.generate_batch, complete_batch, generate --batch): each prompt
gets exactly what gpt2.generate gives it alone, greedy and seeded; they stop on their own."""

from __future__ import annotations

import json

import psycopg
import pytest

import synthetic

PROMPTS = ["Happy New Year! I wish", "Hello", "", "def fibonacci(n):\n    if n < 2:", "The quick brown fox " * 6]


@pytest.fixture(scope="module")
def model(tmp_path_factory, runner):
    directory = synthetic.write_checkpoint(tmp_path_factory.mktemp("batch"), **synthetic.CONFIGS["tiny"], seed=31)
    assert runner(["load", str(directory), "--name", "batch-tiny"]).exit_code == 0
    return "batch-tiny"


def alone(conn, model, prompt, **knobs):
    args = ", ".join(f"{k} => %s" for k in knobs)
    return [r[0] for r in conn.execute(f"SELECT id FROM gpt2.generate(%s, model => %s, {args})",
                                       (prompt, model, *knobs.values()))]


def batch(conn, model, prompts, **knobs):
    args = ", ".join(f"{k} => %s" for k in knobs)
    rows = conn.execute(f"SELECT prompt, step, id FROM gpt2.generate_batch(%s, model => %s, {args}) ORDER BY prompt, step",
                        (prompts, model, *knobs.values())).fetchall()
    out = {i: [] for i in range(1, len(prompts) + 1)}
    for prompt, step, token in rows:
        assert step == len(out[prompt]) + 1, "steps count 1, 2, ... per prompt"
        out[prompt].append(token)
    return [out[i] for i in range(1, len(prompts) + 1)]


# 40 tokens after the 30-token prompt pass the tiny model's 64-token context: its window slides
@pytest.mark.parametrize("knobs", [dict(max_tokens=40, temperature=0),
                                   dict(max_tokens=12, temperature=1.3, top_k=20, top_p=0.9, seed=7)],
                         ids=["greedy", "seeded"])
def test_each_prompt_as_alone(conn, model, knobs):
    together = batch(conn, model, PROMPTS, **knobs)
    assert together == [alone(conn, model, p, **knobs) for p in PROMPTS]
    assert all(len(t) == knobs["max_tokens"] or t[-1] == 50256 for t in together)


def test_stop_strings_end_each_prompt_on_its_own(conn, model):
    free = batch(conn, model, PROMPTS[:2], max_tokens=20, temperature=0)
    text = conn.execute("SELECT gpt2.detokenize(%s)", (free[0][:3],)).fetchone()[0]
    stop = text[-2:]   # stops the first prompt within 3 tokens; the second one may run on
    stopped = batch(conn, model, PROMPTS[:2], max_tokens=20, temperature=0, stop=[stop])
    assert stopped == [alone(conn, model, p, max_tokens=20, temperature=0, stop=[stop]) for p in PROMPTS[:2]]
    assert len(stopped[0]) <= 3


def test_complete_batch_keeps_the_order_of_prompts(conn, model):
    texts = conn.execute("SELECT gpt2.complete_batch(%s, %s, 6, 0)", (PROMPTS, model)).fetchone()[0]
    assert texts == [conn.execute("SELECT gpt2.complete(%s, %s, 6, 0)", (p, model)).fetchone()[0] for p in PROMPTS]


def test_table_idiom_from_readme(conn, model):
    """README's idiom: slices of 16 rows, one complete_batch each, joined back by id (40 rows: 3 slices)."""
    conn.execute("CREATE TEMPORARY TABLE docs AS SELECT i AS id, 'Story number ' || i AS body FROM generate_series(1, 40) AS i")
    rows = conn.execute(
        """SELECT c.id, c.completion
           FROM (SELECT array_agg(id ORDER BY id) AS ids, array_agg(body ORDER BY id) AS bodies
                 FROM (SELECT id, body, (row_number() OVER (ORDER BY id) - 1) / 16 AS slice FROM docs) AS numbered
                 GROUP BY slice) AS batch,
                unnest(batch.ids, gpt2.complete_batch(batch.bodies, %s, 3, 0)) AS c(id, completion)
           ORDER BY c.id""", (model,)).fetchall()
    assert [r[0] for r in rows] == list(range(1, 41))
    for i in (1, 17, 40):
        assert rows[i - 1][1] == conn.execute("SELECT gpt2.complete(%s, %s, 3, 0)", (f"Story number {i}", model)).fetchone()[0]
    conn.execute("DROP TABLE docs")


def test_batch_limits_and_errors(conn, model):
    limit = conn.execute("SELECT gpt2.batch_limit()").fetchone()[0]
    with pytest.raises(psycopg.errors.RaiseException, match="at most"):
        conn.execute("SELECT * FROM gpt2.generate_batch(%s, %s, 1, 0)", (["x"] * (limit + 1), model))
    for prompts, message in [([], "no prompts"), (["a", None], "NULL")]:
        with pytest.raises(psycopg.errors.RaiseException, match=message):
            conn.execute("SELECT * FROM gpt2.generate_batch(%s::text[], %s, 1, 0)", (prompts, model))


def test_two_batches_on_two_connections_do_not_mix(dsn, model):
    from gpt2sql import db

    sets = [PROMPTS[:3], PROMPTS[2:]]
    with db.connect(dsn) as c:
        expected = [batch(c, model, s, max_tokens=8, temperature=0) for s in sets]
    with db.connect(dsn) as a, db.connect(dsn) as b:
        got = [[], []]
        for c, s in zip((a, b), sets):
            c.execute("SELECT gpt2.generate_batch_start(%s, %s, 8, 0)", (s, model))
        while True:   # steps interleaved between the connections
            rows = [c.execute("SELECT prompt, id FROM gpt2.generate_batch_next()").fetchall() for c in (a, b)]
            if not any(rows):
                break
            for i, r in enumerate(rows):
                got[i].extend(r)
    for i, s in enumerate(sets):
        assert [[t for p, t in got[i] if p == k + 1] for k in range(len(s))] == expected[i]


def test_cli_batch_prints_json_lines(runner, model, conn, tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("Hello\nHappy New Year!\n")
    result = runner(["generate", "--batch", str(path), "--model", model, "-n", "4", "-t", "0"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    for i, prompt in enumerate(["Hello", "Happy New Year!"], start=1):
        assert [x["id"] for x in lines if x["prompt"] == i] == alone(conn, model, prompt, max_tokens=4, temperature=0)
    assert all({"prompt", "step", "id", "text", "logprob"} <= set(x) for x in lines)
    stdin = runner(["generate", "--batch", "-", "--model", model, "-n", "4", "-t", "0"], input="Hello\nHappy New Year!\n")
    assert stdin.exit_code == 0 and stdin.stdout == result.stdout
    both = runner(["generate", "Hi", "--batch", str(path), "--model", model])
    assert both.exit_code == 2 and "PROMPT or --batch" in both.output
