"""A new GPT-2 with random weights, to train from scratch (`gpt2sql init`).

GPT-2's own initialization, as transformers' GPT2PreTrainedModel._init_weights does it:
every weight ~ N(0, 0.02), the projections into the residual stream (attn.c_proj, mlp.c_proj)
~ N(0, 0.02 / sqrt(2 n_layer)), biases 0, layer norms gain 1 and shift 0. Its predictions
start near uniform: a loss of about ln(n_vocab), 10.8 for GPT-2's vocabulary. The weights go
through the loader as a checkpoint in the Hugging Face layout would.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np

from gpt2sql.errors import Gpt2SqlError
from gpt2sql.loader.checkpoint import BLOCK_TENSORS, MODEL_TENSORS, HParams


def random_weights(h: HParams, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for layer, patterns in [(0, MODEL_TENSORS)] + [(i, BLOCK_TENSORS) for i in range(h.n_layer)]:
        for pattern, table, _, shape in patterns:
            name = pattern.format(i=layer)
            if table == "ln":
                out[name + ".weight"], out[name + ".bias"] = np.ones(shape(h), np.float32), np.zeros(shape(h), np.float32)
                continue
            std = 0.02 / math.sqrt(2 * h.n_layer) if name.endswith("c_proj") else 0.02
            out[name + ".weight"] = (rng.standard_normal(shape(h), dtype=np.float32) * np.float32(std))
            if table == "conv1d":
                out[name + ".bias"] = np.zeros(shape(h)[-1:], np.float32)
    return out


def init_model(conn, name: str, n_layer: int, n_head: int, n_embd: int, n_positions: int, seed: int = 0,
               progress=None) -> None:
    """Create model `name`: a GPT-2 of these shapes with random weights (float32)."""
    from importlib import resources

    from safetensors.numpy import save_file

    from gpt2sql.loader.export import config
    from gpt2sql.loader.model import load_model

    if n_embd % n_head:
        raise Gpt2SqlError(f"n_embd {n_embd} does not split into {n_head} heads")
    n_vocab = conn.execute("SELECT max(id) + 1 FROM gpt2.vocab").fetchone()[0]
    h = HParams(n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_inner=4 * n_embd, n_positions=n_positions,
                n_vocab=n_vocab, layer_norm_epsilon=1e-5)
    directory = Path(tempfile.mkdtemp(prefix="gpt2sql-init-"))
    try:
        save_file(random_weights(h, seed), str(directory / "model.safetensors"), metadata={"format": "pt"})
        (directory / "config.json").write_text(json.dumps(config({**h.__dict__, "layer_norm_epsilon": 1e-5})))
        data = resources.files("gpt2sql.loader.data")
        for source, target in (("encoder.json", "vocab.json"), ("vocab.bpe", "merges.txt")):
            with resources.as_file(data.joinpath(source)) as path:
                shutil.copyfile(path, directory / target)
        load_model(conn, directory, name, "float32", source=f"random init (seed {seed})", progress=progress)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
