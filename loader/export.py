"""A loaded (or trained) model out of the database, in the Hugging Face layout.

The inverse of loader/model.py: config.json, model.safetensors (names without the
`transformer.` prefix, Conv1D weights [in, out], lm_head tied to wte and left out, as in
openai-community/gpt2) and the tokenizer (vocab.json, merges.txt), so that
`GPT2LMHeadModel.from_pretrained(directory)` and `gpt2sql load directory` both take it.

Weights leave by binary COPY of pgvector rows (int16 dim, int16 unused, float4[dim]), one
NumPy array per tensor.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from psycopg import sql

from gpt2sql.errors import Gpt2SqlError

COPY_HEADER = 19  # PGCOPY\n\377\r\n\0, flags, header extension length


def read_vectors(conn, query: sql.Composable, params=(), dim: int | None = None) -> np.ndarray:
    """The single vector column of query's rows as a float32 array [n, dim]."""
    with conn.cursor() as cur, cur.copy(sql.SQL("COPY ({}) TO STDOUT (FORMAT BINARY)").format(query), params) as copy:
        data = b"".join(bytes(block) for block in copy)
    body = data[COPY_HEADER:-2]  # without the header and the -1 trailer
    if not body:
        return np.zeros((0, dim or 0), np.float32)
    dim = int.from_bytes(body[6:8], "big")  # after nfields (2) and length (4): the first row's dim
    row = np.dtype([("nfields", ">i2"), ("len", ">i4"), ("dim", ">i2"), ("unused", ">i2"), ("x", ">f4", (dim,))])
    rows = np.frombuffer(body, dtype=row)
    if (rows["dim"] != dim).any():
        raise Gpt2SqlError("rows of different lengths in one tensor: the model's tables are damaged")
    return rows["x"].astype(np.float32)


def tensors(conn, name: str) -> tuple[dict, dict[str, np.ndarray]]:
    """(the model's row of gpt2.models, {Hugging Face name: array}) of a loaded model."""
    cur = conn.execute("SELECT * FROM gpt2.models WHERE name = %s", (name,))
    row = cur.fetchone()
    if row is None:
        loaded = [r[0] for r in conn.execute("SELECT name FROM gpt2.models ORDER BY name")]
        raise Gpt2SqlError(f"no model named {name!r} is loaded (loaded: {', '.join(loaded) or 'none'})")
    m = dict(zip([d.name for d in cur.description], row))
    conn.execute("SELECT gpt2.use_model(%s)", (name,))  # its schema first on the search path
    out = {"wte.weight": read_vectors(conn, sql.SQL("SELECT w::vector FROM wte ORDER BY token")),
           "wpe.weight": read_vectors(conn, sql.SQL("SELECT w::vector FROM wpe ORDER BY pos"))}
    for tensor, layer, g, b in conn.execute("SELECT tensor, layer, g::real[], b::real[] FROM ln"):
        prefix = "ln_f." if tensor == "ln_f" else f"h.{layer}.{tensor}."
        out[prefix + "weight"], out[prefix + "bias"] = np.array(g, np.float32), np.array(b, np.float32)
    for layer in range(m["n_layer"]):
        for tensor in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            by_column = read_vectors(conn, sql.SQL(  # [n_out, n_in]: conv1d's rows by output column
                "SELECT gpt2.vcat(w::vector ORDER BY chunk) FROM conv1d WHERE tensor = %s AND layer = %s "
                "GROUP BY col ORDER BY col"), (tensor, layer))
            out[f"h.{layer}.{tensor}.weight"] = np.ascontiguousarray(by_column.T)
            bias = conn.execute("SELECT array_agg(b ORDER BY col) FROM conv1d WHERE tensor = %s AND layer = %s AND chunk = 0",
                                (tensor, layer)).fetchone()[0]
            out[f"h.{layer}.{tensor}.bias"] = np.array(bias, np.float32)
    return m, out


def config(m: dict) -> dict:
    """config.json as transformers writes it for a GPT2LMHeadModel of these hyperparameters."""
    return {
        "activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "bos_token_id": 50256, "eos_token_id": 50256, "layer_norm_epsilon": m["layer_norm_epsilon"],
        "n_ctx": m["n_positions"], "n_embd": m["n_embd"], "n_head": m["n_head"], "n_inner": m["n_inner"],
        "n_layer": m["n_layer"], "n_positions": m["n_positions"], "vocab_size": m["n_vocab"],
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True, "torch_dtype": "float32", "use_cache": True,
    }


def write_tokenizer(conn, directory: Path) -> None:
    """vocab.json and merges.txt of the database's tokenizer: the bundled files when they are
    the ones loaded (byte for byte), else written from its tables."""
    import hashlib
    import shutil
    from importlib import resources

    data = resources.files("gpt2sql.loader.data")
    loaded = conn.execute("SELECT vocab_sha256, merges_sha256 FROM gpt2.tokenizer_files").fetchone()
    bundled = tuple(hashlib.sha256(data.joinpath(f).read_bytes()).hexdigest() for f in ("encoder.json", "vocab.bpe"))
    if loaded is not None and tuple(loaded) == bundled:
        with resources.as_file(data.joinpath("encoder.json")) as vocab, resources.as_file(data.joinpath("vocab.bpe")) as merges:
            shutil.copyfile(vocab, directory / "vocab.json")
            shutil.copyfile(merges, directory / "merges.txt")
        return
    vocab = {token: i for i, token in conn.execute("SELECT id, token FROM gpt2.vocab ORDER BY id")}
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    pairs = conn.execute("""SELECT l.token, r.token FROM gpt2.merges m JOIN gpt2.vocab l ON l.id = m.left_id
                            JOIN gpt2.vocab r ON r.id = m.right_id ORDER BY m.rank""").fetchall()
    (directory / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in pairs), encoding="utf-8")


EXPORT_FILES = ("config.json", "model.safetensors", "vocab.json", "merges.txt")


def export_model(conn, name: str, directory: Path, replace: bool = False) -> Path:
    """Write model `name` to directory, which must be new or empty (or, with replace, a previous export).

    subtle: the files are written into a sibling directory first and renamed into place, so a
    failure half-way (a full disk, a database error) leaves `directory` as it was, never a mix
    of two models.
    """
    import shutil
    import tempfile

    from safetensors.numpy import save_file

    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise Gpt2SqlError(f"{directory} exists and is not a directory")
    present = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
    others = [f for f in present if f not in EXPORT_FILES]
    if present and not replace:
        raise Gpt2SqlError(f"{directory} is not empty ({len(present)} entries, e.g. {present[0]}): "
                           "choose a new directory, or --replace to overwrite a previous export")
    if others:
        raise Gpt2SqlError(f"{directory} holds files that are not an export ({others[0]}): --replace overwrites "
                           "only a directory holding nothing but config.json, model.safetensors, vocab.json, merges.txt")
    m, weights = tensors(conn, name)
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    except OSError as e:
        raise Gpt2SqlError(f"cannot create {directory}: {e.strerror}") from None
    try:
        save_file(weights, str(staging / "model.safetensors"), metadata={"format": "pt"})
        (staging / "config.json").write_text(json.dumps(config(m), indent=2) + "\n")
        write_tokenizer(conn, staging)
        staging.chmod(0o777 & ~_umask())
        if directory.is_dir():
            shutil.rmtree(directory)
        staging.rename(directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask
