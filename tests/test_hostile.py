"""The second hostile probe's findings on the SQL side (sql/95_generate.sql, 97_inspect.sql,
90_sampling.sql, 99_train.sql): every public function leaves a generation in progress on the
connection intact or says that it ended it; the smaller gaps; a long prompt's window."""

from __future__ import annotations

import psycopg
import pytest

import reference
import synthetic


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, runner):
    directory = synthetic.write_checkpoint(tmp_path_factory.mktemp("hostile"), **synthetic.CONFIGS["tiny"], seed=21)
    assert runner(["load", str(directory), "--name", "hostile-tiny"]).exit_code == 0
    return ("hostile-tiny",) + reference.load(directory)


def stream(conn, interrupt=None, steps=8):
    """Greedy tokens of a streaming generation, with `interrupt` (SQL) run after its 4th token."""
    conn.execute("SELECT gpt2.generate_start('The cat sat on the', 'hostile-tiny', max_tokens => %s, temperature => 0)",
                 (steps,))
    tokens = []
    for step in range(steps):
        if step == 4 and interrupt:
            conn.execute(interrupt)
        tokens.append(conn.execute("SELECT id FROM gpt2.generate_next()").fetchone()[0])
    return tokens


INTERRUPTIONS = [
    "SELECT gpt2.complete('Something else', 'hostile-tiny', max_tokens => 3, temperature => 0)",
    "SELECT count(*) FROM gpt2.generate('Something else', 'hostile-tiny', max_tokens => 3)",
    "SELECT count(*) FROM gpt2.generate_batch(ARRAY['a', 'b c'], 'hostile-tiny', max_tokens => 2)",
    "SELECT gpt2.complete_batch(ARRAY['a', 'b c'], 'hostile-tiny', max_tokens => 2)",
    "SELECT count(*) FROM gpt2.forward(gpt2.tokenize('The cat sat on the mat and'), 'hostile-tiny')",
    "SELECT cardinality(gpt2.transformer(gpt2.tokenize('The cat sat on the mat'), 0))",
    "SELECT count(*) FROM gpt2.score('The dog', 'hostile-tiny')",
    "SELECT count(*) FROM gpt2.attention('The dog', 'hostile-tiny')",
    "SELECT count(*) FROM gpt2.logit_lens('The dog', 'hostile-tiny', 2)",
    "SELECT gpt2.loss(ARRAY['The dog'], 'hostile-tiny')",
    "SELECT count(*) FROM gpt2.gradient(ARRAY['The dog'], 'ln_f.bias', 'hostile-tiny')",
]


@pytest.mark.parametrize("interrupt", INTERRUPTIONS)
def test_other_functions_leave_a_stream_intact(conn, tiny, interrupt):
    assert stream(conn, interrupt) == stream(conn)


def test_kv_reset_and_a_new_start_say_they_end_the_stream(conn, tiny):
    notices = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary))
    conn.execute("SELECT gpt2.generate_start('x', 'hostile-tiny', max_tokens => 5)")
    conn.execute("SELECT * FROM gpt2.generate_next()")
    conn.execute("SELECT gpt2.generate_start('x', 'hostile-tiny', max_tokens => 5)")
    conn.execute("SELECT * FROM gpt2.generate_next()")
    conn.execute("SELECT gpt2.kv_reset()")
    with pytest.raises(psycopg.errors.RaiseException, match="no generation in progress"):
        conn.execute("SELECT * FROM gpt2.generate_next()")
    assert "a new generation replaces the one in progress on this connection" in notices
    assert "gpt2.kv_reset ended the generation in progress on this connection" in notices


@pytest.mark.parametrize("call, message", [
    ("gpt2.complete_batch('{}')", "no prompts given"),
    ("gpt2.complete_batch(NULL)", "no prompts given"),
    ("gpt2.complete_batch('{}', 'hostile-tiny', -5, 'NaN')", "max_tokens must be >= 1"),
    ("gpt2.attention(NULL, 'hostile-tiny')", "the prompt is NULL"),
    ("gpt2.logit_lens(NULL, 'hostile-tiny')", "the prompt is NULL"),
    ("gpt2.logit_lens('hi', 'hostile-tiny', 21)", "k must be between 1 and 20"),
    ("gpt2.logit_lens('hi', 'hostile-tiny', 1000000000)", "k must be between 1 and 20"),
])
def test_smaller_gaps_raise_one_line(conn, tiny, call, message):
    with pytest.raises(psycopg.errors.RaiseException) as e:
        conn.execute(f"SELECT * FROM {call}")
    assert message in e.value.diag.message_primary


def test_a_tiny_temperature_samples_the_most_likely_token(conn, tiny):
    greedy = conn.execute("SELECT gpt2.complete('Hello', 'hostile-tiny', 5, 0)").fetchone()[0]
    assert conn.execute("SELECT gpt2.complete('Hello', 'hostile-tiny', 5, 1e-308, seed => 3)").fetchone()[0] == greedy


def test_a_prompt_longer_than_the_context_starts_where_the_window_would_slide(conn, tiny):
    """No prefill thrown away at once: the first step neither slides nor re-reads a window, and
    the tokens are the reference's (its window rule: the last n_positions // 2 tokens)."""
    name, hparams, params = tiny
    ids = [(911 * i + 300) % 50000 for i in range(hparams["n_positions"] + 20)]
    prompt = conn.execute("SELECT gpt2.detokenize(%s)", (ids,)).fetchone()[0]
    ids = conn.execute("SELECT gpt2.tokenize(%s)", (prompt,)).fetchone()[0]
    notices = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary))
    conn.execute("SET gpt2sql.progress = on")
    try:
        conn.execute("SELECT gpt2.generate_start(%s, %s, max_tokens => 5, temperature => 0)", (prompt, name))
        first = conn.execute("SELECT id FROM gpt2.generate_next()").fetchone()[0]
        second = conn.execute("SELECT id FROM gpt2.generate_next()").fetchone()[0]
    finally:
        conn.execute("SET gpt2sql.progress = off")
    assert not any("slide" in n for n in notices), notices
    assert [first, second] == reference.generate_greedy(params, hparams, ids, 2)
    assert len([n for n in notices if n.endswith(f"layer 1/{hparams['n_layer']}")]) == 2  # a prefill, a decode step


def test_training_refuses_a_model_a_generation_of_another_connection_is_using(dsn, conn, tiny):
    from gpt2sql import db

    conn.execute("SELECT gpt2.copy_model('hostile-tiny', 'hostile-copy', true)")
    with db.connect(dsn) as other:
        other.execute("SELECT gpt2.generate_start('Hello', 'hostile-copy', max_tokens => 3)")
        other.execute("SELECT * FROM gpt2.generate_next()")
        with pytest.raises(psycopg.errors.RaiseException, match="a generation is running on model"):
            conn.execute("SELECT * FROM gpt2.train_step('hostile-copy', ARRAY['hi'], 1e-3)")
        while other.execute("SELECT * FROM gpt2.generate_next()").fetchone():
            pass  # the generation finishes: its hold on the model ends
    conn.execute("SELECT * FROM gpt2.train_step('hostile-copy', ARRAY['hi'], 1e-3)")


@pytest.mark.slow
def test_a_batch_of_more_work_units_than_gpt2_units_equals_its_prompts_alone(conn, runner, tmp_path):
    """40 prompts of 60 tokens on an 8-head model: 320 (prompt, head) units of fresh attention,
    more than gpt2.units' rows, run in rounds; each prompt's greedy tokens are its tokens alone."""
    directory = synthetic.write_checkpoint(tmp_path, n_layer=1, n_embd=64, n_head=8, n_positions=64, seed=22)
    assert runner(["load", str(directory), "--name", "hostile-heads"]).exit_code == 0
    assert conn.execute("SELECT gpt2.parallel_round()").fetchone()[0] < 40 * 8
    prompts = [conn.execute("SELECT gpt2.detokenize(%s)", ([(37 * k + 11 * i) % 50000 + 100 for i in range(60)],)).fetchone()[0]
               for k in range(40)]
    together = conn.execute("SELECT gpt2.complete_batch(%s, 'hostile-heads', 2, 0)", (prompts,)).fetchone()[0]
    _, hparams, params = ("",) + reference.load(directory)
    for prompt, text in zip(prompts, together):
        ids = conn.execute("SELECT gpt2.tokenize(%s)", (prompt,)).fetchone()[0]
        expected = conn.execute("SELECT gpt2.detokenize(%s)", (reference.generate_greedy(params, hparams, ids, 2),)).fetchone()[0]
        assert text == expected


@pytest.mark.slow
def test_a_context_longer_than_a_page_holds_works(conn, runner, tmp_path):
    """A model whose context passes 2,028 positions: the transposed values of a head (one
    float32 per position) outgrow a page and move out of the row; prompts of 2,040 tokens
    prefill and decode as the reference does."""
    directory = synthetic.write_checkpoint(tmp_path, n_layer=1, n_embd=32, n_head=2, n_positions=2200, seed=23)
    assert runner(["load", str(directory), "--name", "hostile-long"]).exit_code == 0
    hparams, params = reference.load(directory)
    ids = [(131 * i + 7) % 50000 + 200 for i in range(2000)]
    prompt = conn.execute("SELECT gpt2.detokenize(%s)", (ids,)).fetchone()[0]
    ids = conn.execute("SELECT gpt2.tokenize(%s)", (prompt,)).fetchone()[0]
    assert 2028 < len(ids) <= 2200 - 3
    got = conn.execute("SELECT array_agg(id ORDER BY step) FROM gpt2.generate(%s, 'hostile-long', max_tokens => 3, "
                       "temperature => 0)", (prompt,)).fetchone()[0]
    assert got == reference.generate_greedy(params, hparams, ids, 3)
