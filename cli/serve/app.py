"""The Starlette app of `gpt2sql serve`: JSON panels, a server-sent-events generation, static files.

Each request gets its own connection (several tabs at once work) in a transaction that is
always rolled back, so nothing a page asks for can change the database; with read_only the
connection also takes a role that may only read. The backend of a running request is known
by the request's id: a stop (or the client going away) cancels its query on the server.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
from importlib import resources

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from gpt2sql.serve import panels

READER = "gpt2sql_reader"   # the role --read-only sessions take (created with the grants of docs/operations.md)
POLL_SECONDS = 0.2          # how often a running request checks that its client is still there
RANDOM_WEIGHTS = "(m.source ILIKE 'random%%' OR m.name ~* '(random|synthetic)')"
GENERATE_START = ("SELECT gpt2.generate_start(%(prompt)s, %(model)s, %(max_tokens)s, %(temperature)s,\n"
                  "                           %(top_k)s, %(top_p)s, %(seed)s, NULL, 0) AS prompt_tokens")
GENERATE_NEXT = "SELECT step, id, text, done, logprob FROM gpt2.generate_next()"
MAX_NEW_TOKENS = 256


def ensure_reader(conn) -> None:
    """Create the read-only role (once) and grant it reading gpt2 and every model's schema."""
    from psycopg import sql

    conn.execute(f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{READER}') THEN "
                 f"CREATE ROLE {READER} NOLOGIN; END IF; END $$")
    schemas = ["gpt2"] + [r[0] for r in conn.execute("SELECT schema_name FROM gpt2.models")]
    for schema in schemas:
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {s} TO {r}; GRANT SELECT ON ALL TABLES IN SCHEMA {s} TO {r}")
                     .format(s=sql.Identifier(schema), r=sql.Identifier(READER)))
    if not conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]:
        conn.execute(sql.SQL("GRANT {} TO current_user").format(sql.Identifier(READER)))


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, (bytes, memoryview)):
        return bytes(value).hex()
    return value


def create_app(conninfo: str, *, read_only: bool = False, model: str | None = None) -> Starlette:
    import psycopg

    from gpt2sql import db

    running: dict[str, psycopg.Connection] = {}   # request id -> its connection (its backend)
    lock = threading.Lock()

    def connect():
        conn = psycopg.connect(conninfo, autocommit=True)
        try:
            db._session_settings(conn)
            db._vector_on_search_path(conn)
            if read_only:
                conn.execute(f"SET ROLE {READER}")
            conn.autocommit = False   # everything after runs in one transaction, rolled back
        except BaseException:
            conn.close()
            raise
        return conn

    def run_panel(name: str, q: dict, rid: str | None) -> dict:
        with connect() as conn:
            if rid:
                with lock:
                    running[rid] = conn
            try:
                sql_text, params = panels.PANELS[name](conn, q)
                cur = conn.execute(sql_text, params)
                columns = [c.name for c in cur.description]
                rows = [[_jsonable(v) for v in row] for row in cur.fetchall()]
                return {"sql": sql_text, "params": params, "columns": columns, "rows": rows,
                        "backend_pid": conn.info.backend_pid}
            finally:
                if rid:
                    with lock:
                        running.pop(rid, None)
                conn.rollback()

    def cancel(rid: str) -> bool:
        with lock:
            conn = running.get(rid)
        if conn is None:
            return False
        conn.cancel()   # libpq's cancel request: pg_cancel_backend of this request's backend
        return True

    async def panel(request: Request):
        name = request.path_params["name"]
        if name not in panels.PANELS:
            return JSONResponse({"error": f"no panel {name!r}"}, status_code=404)
        q = dict(request.query_params)
        rid = q.pop("rid", None) or None
        if read_only and name in WRITERS:
            return JSONResponse({"error": f"{name} is not available with --read-only"}, status_code=403)
        if model and not q.get("model"):
            q["model"] = model
        work = asyncio.get_running_loop().run_in_executor(None, run_panel, name, q, rid)
        while True:
            done, _ = await asyncio.wait({work}, timeout=POLL_SECONDS)
            if done:
                break
            if rid and await _gone(request):
                cancel(rid)
        try:
            return JSONResponse(work.result())
        except panels.BadRequest as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        except psycopg.Error as e:
            return error_response(e)

    async def stop(request: Request):
        return JSONResponse({"cancelled": cancel(request.path_params["rid"])})

    async def config(request: Request):
        def read():
            with connect() as conn:
                rows = conn.execute(f"SELECT m.name, {RANDOM_WEIGHTS} FROM gpt2.models m "
                                    "ORDER BY m.loaded_at DESC, m.name").fetchall()
                default = model or conn.execute("SELECT gpt2.default_model()").fetchone()[0]
                conn.rollback()
                return rows, default
        rows, default = await asyncio.get_running_loop().run_in_executor(None, read)
        return JSONResponse({"read_only": read_only, "model": default,
                             "models": [{"name": n, "random": r} for n, r in rows]})

    async def generate(request: Request):
        q = dict(request.query_params)
        if model and not q.get("model"):
            q["model"] = model
        loop = asyncio.get_running_loop()
        conn = await loop.run_in_executor(None, connect)
        try:
            params = await loop.run_in_executor(None, _generation_params, conn, q)
            await loop.run_in_executor(None, conn.execute, GENERATE_START, params)
        except (panels.BadRequest, psycopg.Error) as e:
            await loop.run_in_executor(None, _close, conn)
            if isinstance(e, panels.BadRequest):
                return JSONResponse({"error": str(e)}, status_code=400)
            return error_response(e)

        async def events():
            yield _event("sql", {"sql": GENERATE_START + ";\n" + GENERATE_NEXT + ";  -- once per token",
                                 "params": params})
            try:
                while True:
                    row = await loop.run_in_executor(None, lambda: conn.execute(GENERATE_NEXT).fetchone())
                    if row is None:
                        break
                    step, token, text, finished, logprob = row
                    yield _event("token", {"step": step, "id": token, "text": text, "logprob": _jsonable(logprob)})
                    if finished:
                        break
                yield _event("done", {})
            except psycopg.Error as e:
                yield _event("failure", {"error": _message(e)})
            finally:   # a closed tab or the stop button lands here too (the task is cancelled)
                conn.cancel()
                threading.Thread(target=_close, args=(conn,), daemon=True).start()

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    static = resources.files("gpt2sql.serve") / "static"

    async def index(request: Request):
        return FileResponse(str(static / "index.html"), headers={"Cache-Control": "no-store"})

    app = Starlette(routes=[
        Route("/", index),
        Route("/api/config", config),
        Route("/api/panel/{name}", panel),
        Route("/api/cancel/{rid}", stop, methods=["POST"]),
        Route("/api/generate", generate),
        Mount("/static", StaticFiles(directory=str(static)), name="static"),
    ])
    app.state.connect = connect
    app.state.running = running
    return app


WRITERS: set[str] = set()   # panels that would write (training): none yet, so --read-only hides nothing


async def _gone(request: Request) -> bool:
    try:
        return await asyncio.wait_for(request.is_disconnected(), POLL_SECONDS / 2)
    except asyncio.TimeoutError:
        return False


def _generation_params(conn, q: dict) -> dict:
    m = panels.model_row(conn, q.get("model"))
    prompt, _ = panels.prompt_of(conn, q, m)
    seed = q.get("seed")
    return {"prompt": prompt, "model": m["name"],
            "max_tokens": panels.integer(q, "max_tokens", 1, MAX_NEW_TOKENS, 40),
            "temperature": panels.number(q, "temperature", 0.0, 10.0, 1.0),
            "top_k": panels.integer(q, "top_k", 0, m["n_vocab"], 50) or None,
            "top_p": panels.number(q, "top_p", 0.01, 1.0, 1.0),
            "seed": panels.integer(q, "seed", 0, 2**62, 0) if seed not in (None, "") else None}


def _close(conn) -> None:
    try:
        conn.rollback()
    except Exception:  # a cancelled or broken session: closing is all that is left
        pass
    conn.close()


def _message(e) -> str:
    diag = getattr(e, "diag", None)
    message = getattr(diag, "message_primary", None) or (str(e).strip().splitlines() or [type(e).__name__])[0]
    hint = getattr(diag, "message_hint", None)
    return message + (f" (hint: {hint})" if hint else "")


def error_response(e) -> JSONResponse:
    """A database error as one line: 400 for the checks in sql/ (RAISE EXCEPTION), 409 for a
    stopped query, 403 for a missing privilege, 500 otherwise; never a traceback."""
    import psycopg

    state = getattr(getattr(e, "diag", None), "sqlstate", None)
    if isinstance(e, psycopg.errors.QueryCanceled):
        return JSONResponse({"error": "stopped"}, status_code=409)
    status = 400 if state == "P0001" or (state or "").startswith("22") else 403 if state == "42501" else 500
    return JSONResponse({"error": _message(e)}, status_code=status)


def _event(kind: str, data: dict) -> str:
    return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"
