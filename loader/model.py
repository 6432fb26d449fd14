"""Load a checkpoint into PostgreSQL, list and drop loaded models.

One transaction per load: the weights go into a fresh schema with binary COPY, then the
old model of the same name (if any) is dropped and the new schema takes its place, so a
failed or interrupted load leaves the previous state exactly as it was.
"""

from __future__ import annotations

import math
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from psycopg import sql

from gpt2sql.errors import Gpt2SqlError
from gpt2sql.loader import grants, pgcopy
from gpt2sql.loader.checkpoint import Checkpoint, Tensor, check_fits, read_config

DTYPES = {"float32": "vector", "float16": "halfvec"}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
SCHEMA_PREFIX = "model_"
# subtle: a load builds the new tables in a staging schema of its own. Its name holds '~',
# which schema_for() never produces, so no model name can map to it (foo__loading and
# FOO__LOADING are models like any other), and it is exactly as long as the schema.
STAGING_PREFIX = "model~"


def schema_for(name: str) -> str:
    """The schema that holds a model's tables: model_<name>, lower case, [a-z0-9_]."""
    return SCHEMA_PREFIX + re.sub(r"[^a-z0-9_]", "_", name.lower())


def check_name(conn, name: str) -> None:
    """A one-line error unless `name` can be loaded: its schema must fit in an identifier.

    subtle: PostgreSQL cuts identifiers longer than max_identifier_length (63 bytes) without
    an error, so a longer schema name would silently name another schema."""
    if not name:
        raise Gpt2SqlError("the model name is empty: give one with --name, or leave --name out")
    if not NAME.match(name):
        raise Gpt2SqlError(f"invalid model name {name!r}: use letters, digits, '.', '_' and '-', starting with a letter or digit")
    limit = int(conn.execute("SHOW max_identifier_length").fetchone()[0]) - len(SCHEMA_PREFIX)
    if len(name) > limit:
        raise Gpt2SqlError(f"model name {name[:20]!r}... is {len(name)} characters long: at most {limit} "
                           f"(its schema {SCHEMA_PREFIX}<name> must fit PostgreSQL's identifiers)")


def _lock_schema(conn, schema: str) -> None:
    """Serialize loads and drops per schema, not per name: two names can share one (a.b, a_b)."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtext('gpt2sql load'), hashtext(%s))", (schema,))


def load_model(conn, directory: Path, name: str, dtype: str = "float32", source: str | None = None,
               progress: Callable[[int], None] | None = None, started: Callable[[str], None] | None = None) -> None:
    """Load the checkpoint in `directory` as model `name` (replacing one of that name).

    started, when given, is called with the id of the load's transaction once it holds the
    lock: after an interruption, load_committed() tells from it whether the load took place."""
    check_name(conn, name)
    if dtype not in DTYPES:
        raise Gpt2SqlError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    check_fits(read_config(Path(directory)), dtype)  # config.json alone: before the file is opened
    ckpt = Checkpoint(directory)  # reads config.json and checks it against every tensor of the file first
    h = ckpt.hparams
    _check_vocabulary(conn, Path(directory), h.n_vocab)
    ckpt.check_values(dtype)  # NaN, infinity, overflow: refused here, not found by the COPY (or not at all)
    schema = schema_for(name)
    staging = STAGING_PREFIX + schema[len(SCHEMA_PREFIX):]
    with conn.transaction():
        _lock_schema(conn, schema)
        if started:
            # txid_*: PostgreSQL 10 and later (pg_current_xact_id and pg_xact_status: 13)
            started(conn.execute("SELECT txid_current()::text").fetchone()[0])
        # after the lock: a concurrent load of a clashing name has committed by now
        clash = conn.execute("SELECT name FROM gpt2.models WHERE schema_name = %s AND name <> %s",
                             (schema, name)).fetchone()
        if clash:
            raise Gpt2SqlError(f"model name {name!r} collides with the loaded model {clash[0]!r} "
                               f"(both are stored in schema {schema}): choose another --name")
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(staging)))
        conn.execute("SELECT gpt2.create_model_tables(%s, %s)", (staging, dtype))
        for t in ckpt.tensors:
            _copy_tensor(conn, staging, t, ckpt, dtype)
            if progress:
                progress(4 * math.prod(t.shape))
        conn.execute("SELECT gpt2.finish_model_tables(%s)", (staging,))
        grants.copy_grants(conn, schema, staging)  # a reload keeps who may read the model
        conn.execute("DELETE FROM gpt2.models WHERE name = %s", (name,))
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(sql.Identifier(staging), sql.Identifier(schema)))
        conn.execute(
            """INSERT INTO gpt2.models (name, schema_name, n_layer, n_head, n_embd, n_inner, n_positions,
                                        n_vocab, layer_norm_epsilon, dtype, source, layout)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, gpt2.layout_version())""",
            (name, schema, h.n_layer, h.n_head, h.n_embd, h.n_inner, h.n_positions, h.n_vocab,
             h.layer_norm_epsilon, dtype, source or str(directory)),
        )
        _load_tokenizer_files(conn, Path(directory))


def load_committed(conn, xid: str | None, wait: float = 30) -> bool | None:
    """Whether the load of transaction xid (load_model's `started`) committed: True, False
    (rolled back, or never began: xid None), or None while it is still in progress after
    `wait` seconds (its connection closed, the server ends it within a second or two)."""
    import time

    if xid is None:
        return False
    deadline = time.monotonic() + wait
    while True:
        status = conn.execute("SELECT txid_status(%s::bigint)", (xid,)).fetchone()[0]
        if status != "in progress":
            return status == "committed"
        if time.monotonic() > deadline:
            return None
        time.sleep(0.1)


def _check_vocabulary(conn, directory: Path, n_vocab: int) -> None:
    """Every token the tokenizer can produce (<|endoftext|> included) needs a row in wte:
    the tokenizer the checkpoint brings, else the one loaded."""
    from gpt2sql.loader import tokenizer

    files = tokenizer.tokenizer_files(directory)
    if files:
        n_ids = max(tokenizer.read_vocab(files[0], files[0].read_bytes()).values()) + 1
    else:
        n_ids = conn.execute("SELECT max(id) + 1 FROM gpt2.vocab").fetchone()[0]
    if n_ids is not None and n_vocab < n_ids:
        raise Gpt2SqlError(f"config.json has vocab_size {n_vocab}, smaller than the tokenizer's {n_ids} token ids "
                           "(up to <|endoftext|>): this model could not embed every token")


def _copy_tensor(conn, schema: str, t: Tensor, ckpt: Checkpoint, dtype: str) -> None:
    """COPY one tensor (and its bias) into its table, in the layout of sql/20_model_tables.sql.

    FREEZE: the tables were created in this transaction, so rows can be written already
    frozen, and the first generation does not have to set hint bits on 124M weights."""
    import numpy as np

    vtype = DTYPES[dtype]
    w = ckpt.get(t.name)
    if t.table in ("wte", "wpe"):  # [n, n_embd]: one row per token / position
        key = "token" if t.table == "wte" else "pos"
        batches = [("wte" if t.table == "wte" else "wpe", f"{key}, w", [("int4", np.arange(len(w))), (vtype, w)])]
    elif t.table == "ln":  # gain and shift of one layer norm
        batches = [("ln", "tensor, layer, g, b", [("text", t.tensor), ("int4", np.array([t.layer])),
                                                  ("vector", w[None, :]), ("vector", ckpt.get(t.bias)[None, :])])]
    else:  # Conv1D [in, out]: one row per output column and input chunk (the bias on chunk 0)
        b = ckpt.get(t.bias)
        n_in, n_out = w.shape
        width = conn.execute("SELECT gpt2.chunk_dims(%s, %s)", (n_in, dtype)).fetchone()[0]
        batches = []
        for chunk, start in enumerate(range(0, n_in, width)):
            batches.append(("conv1d", "tensor, layer, chunk, col, w, b", [
                ("text", t.tensor), ("int4", np.full(n_out, t.layer)), ("int4", np.full(n_out, chunk)),
                ("int4", np.arange(n_out)), (vtype, w[start:start + width].T),
                ("float4", b if chunk == 0 else np.zeros(n_out, dtype=np.float32))]))
    for table, columns, fields in batches:
        statement = sql.SQL("COPY {}.{} ({}) FROM STDIN (FORMAT BINARY, FREEZE)").format(
            sql.Identifier(schema), sql.Identifier(table), sql.SQL(columns))
        with _quiet_copy_cleanup(), conn.cursor().copy(statement) as copy:
            copy.write(pgcopy.HEADER + pgcopy.rows(fields) + pgcopy.TRAILER)


@contextmanager
def _quiet_copy_cleanup():
    """When a COPY fails (e.g. its server process died), psycopg's attempt to end it fails too,
    and it logs that second failure ('error ignored terminating <psycopg.Copy [BAD]>') above
    the first one, which propagates and is reported: a line that only repeats it."""
    import logging

    log = logging.getLogger("psycopg")

    def keep(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("error ignored terminating")

    log.addFilter(keep)
    try:
        yield
    finally:
        log.removeFilter(keep)


def _load_tokenizer_files(conn, directory: Path) -> None:
    """A checkpoint's own tokenizer files replace the tokenizer tables (same files: no-op)."""
    from gpt2sql.loader import tokenizer

    files = tokenizer.tokenizer_files(directory)
    if files:
        tokenizer.load_tokenizer(conn, *files)


def list_models(conn) -> list[dict]:
    """Loaded models with their hyperparameters and size on disk."""
    cur = conn.execute(
        """SELECT m.*, coalesce((SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c
                        WHERE c.relnamespace = to_regnamespace(m.schema_name) AND c.relkind = 'r'), 0)::bigint AS bytes,
                  m.name = gpt2.default_model() AS is_default
           FROM gpt2.models m ORDER BY m.name""")
    columns = [d.name for d in cur.description]
    return [dict(zip(columns, row)) for row in cur]


def drop_model(conn, name: str) -> None:
    """Remove a model and its tables."""
    with conn.transaction():
        schema = conn.execute("SELECT schema_name FROM gpt2.models WHERE name = %s", (name,)).fetchone()
        if schema:
            _lock_schema(conn, schema[0])  # not in the middle of a reload of the same model
        row = conn.execute("DELETE FROM gpt2.models WHERE name = %s RETURNING schema_name", (name,)).fetchone()
        if row is None:
            raise Gpt2SqlError(f"no model named {name!r} is loaded")
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(row[0])))
