"""Concurrency under stress: sampled generations on their own connections while a load
replaces one model and a drop removes another. Every generation must equal its solo run,
or, when its model changed under it, stop with one clear line; nothing may be left behind;
the server must keep answering."""

from __future__ import annotations

import threading

import psycopg
import pytest

import synthetic

def stepwise(conn, prompt, model, seed):
    """A generation as the CLI runs it: one statement per token, so loads can commit between them."""
    conn.execute(f"SELECT gpt2.generate_start(%s, %s, {KNOBS})", (prompt, model, seed))
    tokens = []
    while (row := conn.execute("SELECT id, done FROM gpt2.generate_next()").fetchone()) is not None:
        tokens.append(row[0])
        if row[1]:
            break
    return tokens


PROMPTS = ["Once upon a time", "def main():", "Happy New Year! I wish", "The quick brown fox", "Dear diary,", "SELECT"]
KNOBS = "max_tokens => 16, temperature => 1.2, top_k => 40, top_p => 0.95, seed => %s"  # after prompt, model


@pytest.mark.slow
def test_generations_survive_concurrent_loads_and_drops(dsn, runner, tmp_path):
    from gpt2sql import db

    steady, replaced, dropped = "stress-steady", "stress-replaced", "stress-dropped"
    dirs = {name: synthetic.write_checkpoint(tmp_path / name, **synthetic.CONFIGS["tiny"], seed=40 + i)
            for i, name in enumerate((steady, replaced, dropped, "stress-new"))}
    for name in (steady, replaced, dropped):
        assert runner(["load", str(dirs[name]), "--name", name]).exit_code == 0

    jobs = [(prompt, model, seed) for seed, prompt in enumerate(PROMPTS) for model in (steady, replaced)]
    with db.connect(dsn) as c:  # what each generation gives alone, before anything changes
        solo = {job: stepwise(c, *job) for job in jobs}

    results, errors = {}, []

    def generate(job):
        try:
            with db.connect(dsn) as c:
                results[job] = stepwise(c, *job)
        except psycopg.Error as e:
            results[job] = e
        except Exception as e:  # noqa: BLE001 - anything else is a failure of the test itself
            errors.append(e)

    def churn():  # a load that replaces a model in use, a drop of another one
        from gpt2sql.loader.model import drop_model, load_model

        try:
            with db.connect(dsn) as c:
                load_model(c, dirs["stress-new"], replaced)
                drop_model(c, dropped)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=generate, args=(job,)) for job in jobs] + [threading.Thread(target=churn)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors
    assert all(not t.is_alive() for t in threads), "a generation or load hung"

    for job in jobs:
        got = results[job]
        if isinstance(got, psycopg.Error):  # only the replaced model may fail, and in one clear line
            message = got.diag.message_primary or ""
            assert job[1] == replaced and "was loaded again during the generation" in message, (job, message)
            assert "\n" not in message
        elif job[1] == steady:
            assert got == solo[job], f"{job}: {got} != {solo[job]}"
        else:  # finished on the old weights, or ran entirely on the new ones: never a mix
            with db.connect(dsn) as c:
                new = stepwise(c, *job)
            assert got in (solo[job], new), f"{job}: a mix of two models' weights"

    with db.connect(dsn) as c:  # the server answers, and nothing is left behind
        assert c.execute("SELECT 1").fetchone() == (1,)
        models = dict(c.execute("SELECT name, schema_name FROM gpt2.models WHERE name LIKE 'stress-%'").fetchall())
        assert set(models) == {steady, replaced}
        schemas = {r[0] for r in c.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE '%stress%'")}
        assert schemas == set(models.values()), f"leftover schemas: {schemas - set(models.values())}"
        leftover = c.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                             "AND pid <> pg_backend_pid() AND state = 'active' AND query LIKE '%gpt2.generate%'").fetchone()[0]
        assert leftover == 0, "a generation is still running"
    for name in (steady, replaced):
        assert runner(["drop", name]).exit_code == 0
