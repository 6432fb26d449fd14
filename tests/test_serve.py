"""`gpt2sql serve` (cli/serve/): every panel answers {sql, params, columns, rows}, and its SQL run
as given gives the same rows; bad input is a 4xx with one line; a what-if changes no weight;
a stopped request frees its backend; --read-only sessions may not write."""

from __future__ import annotations

import threading
import time

import pytest
from starlette.testclient import TestClient

import synthetic
from gpt2sql import db
from gpt2sql.serve import app as serve_app
from gpt2sql.serve import panels

MODEL = "serve-random-tiny"
TEXT = "The cat sat on the mat because it was"


@pytest.fixture(scope="module")
def model(tmp_path_factory, runner):
    directory = synthetic.write_checkpoint(tmp_path_factory.mktemp("serve"), **synthetic.CONFIGS["tiny"], seed=22)
    assert runner(["load", str(directory), "--name", MODEL]).exit_code == 0
    return MODEL


@pytest.fixture(scope="module")
def client(dsn, model):
    with TestClient(serve_app.create_app(db.resolve_dsn(dsn), model=model)) as c:
        yield c


def checksum(conn, name):
    """md5 of every row of every table of the model's schema, in a fixed order."""
    schema = conn.execute("SELECT schema_name FROM gpt2.models WHERE name = %s", (name,)).fetchone()[0]
    tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY 1", (schema,))]
    out = []
    for t in tables:
        out.append(conn.execute(f'SELECT {t!r}, md5(coalesce(string_agg(x::text, \'|\' ORDER BY x::text), \'\')) '
                                f'FROM "{schema}"."{t}" AS x').fetchone())
    return out


PANEL_QUERIES = {
    "tokens": {"prompt": TEXT},
    "tokenizer": {"prompt": TEXT},
    "attention": {"prompt": TEXT},
    "attention-cell": {"prompt": TEXT, "layer": 1, "head": 2, "query": 3},
    "logit-lens": {"prompt": TEXT, "k": 2},
    "next-token": {"prompt": TEXT, "temperature": 0.7, "top_k": 40, "top_p": 0.9},
    "score": {"prompt": TEXT, "top": 3},
    "models": {},
    "ablation": {"prompt": TEXT, "ablate": "head:0.1,mlp:1"},
    "patch-sweep": {"clean": "The cat sat", "corrupted": "The dog sat", "answer": " on", "wrong": " in"},
    "attribution": {"prompt": TEXT, "token": " warm"},
    "gradients": {"prompt": TEXT},
}


def test_every_panel_is_covered():
    assert set(PANEL_QUERIES) == set(panels.PANELS)


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert len(x) == len(y)
        for u, v in zip(x, y):
            if isinstance(u, float) and isinstance(v, float):
                assert u == pytest.approx(v, rel=1e-12, abs=1e-12)
            else:
                assert u == v


@pytest.mark.parametrize("name", sorted(PANEL_QUERIES))
def test_panel_sql_gives_its_rows(client, conn, name):
    r = client.get(f"/api/panel/{name}", params=PANEL_QUERIES[name])
    assert r.status_code == 200, r.text
    body = r.json()
    assert {"sql", "params", "columns", "rows"} <= set(body)
    assert body["rows"], f"{name} gave no rows"
    assert "%(" in body["sql"] or not body["params"]
    with conn.transaction(force_rollback=True):
        cur = conn.execute(body["sql"], body["params"])
        assert [c.name for c in cur.description] == body["columns"]
        again = [[serve_app._jsonable(v) for v in row] for row in cur.fetchall()]
    _same(body["rows"], again)


def test_panels_agree_with_the_sql_functions(client, conn, model):
    """Spot checks against the functions called directly, the way the CLI calls them."""
    body = client.get("/api/panel/attention", params={"prompt": TEXT}).json()
    direct = conn.execute("SELECT count(*), sum(weight) FROM gpt2.attention(%s, %s)", (TEXT, model)).fetchone()
    assert len(body["rows"]) == direct[0]
    assert sum(r[4] for r in body["rows"]) == pytest.approx(direct[1])
    nxt = client.get("/api/panel/next-token", params={"prompt": TEXT}).json()
    assert len(nxt["rows"]) == panels.DISTRIBUTION_ROWS   # capped: never all 50,257 (here 50,257 too)
    greedy = conn.execute("SELECT token FROM gpt2.forward(gpt2.tokenize(%s), %s) ORDER BY pos DESC, logit DESC LIMIT 1",
                          (TEXT, model)).fetchone()[0]
    assert nxt["rows"][0][1] == greedy


@pytest.mark.parametrize("name, query, status, words", [
    ("score", {"prompt": ""}, 400, "empty"),
    ("score", {"prompt": TEXT, "model": "no-such-model"}, 400, "unknown model"),
    ("attention", {"prompt": TEXT, "layer": 2}, 400, "out of range"),
    ("attention-cell", {"prompt": TEXT, "layer": 0, "head": 4, "query": 0}, 400, "out of range"),
    ("attention-cell", {"prompt": TEXT, "layer": 0, "head": 0, "query": 99}, 400, "out of range"),
    ("attention-cell", {"prompt": TEXT, "layer": "x", "head": 0, "query": 0}, 400, "integer"),
    ("score", {"prompt": "word " * 80}, 400, "at most 64"),
    ("attribution", {"prompt": TEXT, "token": " warm and dry"}, 400, "exactly one"),
    ("patch-sweep", {"clean": "The cat", "corrupted": "The big dog", "answer": " on", "wrong": " in"}, 400, "same length"),
    ("ablation", {"prompt": TEXT, "ablate": "head:9.0"}, 400, "out of range"),
    ("ablation", {"prompt": TEXT, "ablate": "drop everything"}, 400, "head:L.H"),
    ("next-token", {"prompt": TEXT, "temperature": "nan"}, 400, "out of range"),
    ("no-such-panel", {}, 404, "no panel"),
])
def test_bad_input_is_a_4xx_with_one_line(client, name, query, status, words):
    r = client.get(f"/api/panel/{name}", params=query)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert words in error and "Traceback" not in error and "\n" not in error


def test_what_if_leaves_the_weights_unchanged(client, conn, model):
    before = checksum(conn, model)
    for name in ("ablation", "patch-sweep", "attribution", "gradients"):
        assert client.get(f"/api/panel/{name}", params=PANEL_QUERIES[name]).status_code == 200
    assert checksum(conn, model) == before
    assert conn.execute("SELECT step FROM gpt2.models WHERE name = %s", (model,)).fetchone()[0] == 0


def test_stop_cancels_the_backend_and_the_next_request_works(client, conn, monkeypatch):
    """A request that would run 60 s is stopped by its id: its backend is idle again at once."""
    monkeypatch.setitem(panels.PANELS, "slow", lambda c, q: ("SELECT pg_sleep(%(s)s) AS slept", {"s": 60}))
    answer = {}
    worker = threading.Thread(target=lambda: answer.update(r=client.get("/api/panel/slow", params={"rid": "r1"})))
    worker.start()
    running = client.app.state.running
    deadline = time.monotonic() + 20
    while "r1" not in running and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = running["r1"].info.backend_pid
    started = time.monotonic()
    assert client.post("/api/cancel/r1").json() == {"cancelled": True}
    worker.join(20)
    assert time.monotonic() - started < 10
    assert answer["r"].status_code == 409 and answer["r"].json() == {"error": "stopped"}
    state = conn.execute("SELECT state, query FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
    assert state is None or "pg_sleep" not in state[1] or state[0] != "active"
    assert client.post("/api/cancel/r1").json() == {"cancelled": False}
    assert client.get("/api/panel/models").status_code == 200


def test_generation_streams_tokens_over_sse(client, conn, model):
    params = {"prompt": TEXT, "max_tokens": 5, "temperature": 0, "top_k": 0}
    with client.stream("GET", "/api/generate", params=params) as r:
        assert r.status_code == 200
        text = "".join(r.iter_text())
    events = [block.split("\n") for block in text.strip().split("\n\n")]
    kinds = [e[0].removeprefix("event: ") for e in events]
    assert kinds == ["sql"] + ["token"] * 5 + ["done"]
    import json

    ids = [json.loads(e[1].removeprefix("data: "))["id"] for e in events[1:6]]
    greedy = [r[0] for r in conn.execute("SELECT id FROM gpt2.generate(%s, %s, 5, 0) ORDER BY step", (TEXT, model))]
    assert ids == greedy


def test_generation_bad_input_is_a_4xx(client):
    r = client.get("/api/generate", params={"prompt": "", "max_tokens": 5})
    assert r.status_code == 400 and "empty" in r.json()["error"]


def test_read_only_sessions_may_not_write(dsn, conn, model):
    serve_app.ensure_reader(conn)
    app = serve_app.create_app(db.resolve_dsn(dsn), read_only=True, model=model)
    with app.state.connect() as c:
        assert c.execute("SELECT current_user").fetchone()[0] == serve_app.READER
        assert not c.execute("SELECT has_table_privilege('gpt2.models', 'INSERT')").fetchone()[0]
    with TestClient(app) as client:
        assert client.get("/api/config").json()["read_only"] is True
        for name in ("score", "attention", "ablation", "models"):
            r = client.get(f"/api/panel/{name}", params=PANEL_QUERIES[name])
            assert r.status_code == 200, r.text


def test_the_page_and_its_modules_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and 'type="module"' in page.text
    for path in ("/static/app.js", "/static/lib/api.js", "/static/lib/heatmap.js", "/static/views/attention.js"):
        assert client.get(path).status_code == 200
    assert "http://" not in page.text and "https://" not in page.text   # nothing from a CDN
