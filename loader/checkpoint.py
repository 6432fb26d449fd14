"""A GPT-2 checkpoint as a table of tensors: what to read, what shape it must have, where it goes.

A checkpoint is a directory in the Hugging Face layout: config.json + model.safetensors
(+ vocab.json and merges.txt). Tensor names come with or without the `transformer.`
prefix; causal-mask buffers (`h.N.attn.bias`, `h.N.attn.masked_bias`) and a tied
`lm_head.weight` are ignored. Linear layers are Conv1D: weight [in, out], y = x @ W + b.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from gpt2sql.errors import Gpt2SqlError


@dataclass(frozen=True)
class HParams:
    n_layer: int
    n_head: int
    n_embd: int
    n_inner: int
    n_positions: int
    n_vocab: int
    layer_norm_epsilon: float
    tie_word_embeddings: bool = True  # False: the file must hold an lm_head.weight (equal to wte: Checkpoint)


@dataclass(frozen=True)
class Tensor:
    """One tensor of the checkpoint and its place in SQL."""

    name: str         # checkpoint name without the `transformer.` prefix, e.g. h.3.attn.c_attn.weight
    table: str        # wte | wpe | ln | conv1d (see sql/20_model_tables.sql)
    tensor: str       # the `tensor` column: attn.c_attn, ln_1, ... ('' for wte/wpe)
    layer: int
    shape: tuple[int, ...]
    bias: str | None  # the matching bias (conv1d) or layer-norm shift (ln)


# (checkpoint name pattern, SQL table, tensor column, shape as a function of the hparams)
# {i} is the layer; every weight below has a ".weight", and ln/conv1d also a ".bias".
MODEL_TENSORS = [
    ("wte", "wte", "", lambda h: (h.n_vocab, h.n_embd)),
    ("wpe", "wpe", "", lambda h: (h.n_positions, h.n_embd)),
    ("ln_f", "ln", "ln_f", lambda h: (h.n_embd,)),
]
BLOCK_TENSORS = [
    ("h.{i}.ln_1", "ln", "ln_1", lambda h: (h.n_embd,)),
    ("h.{i}.attn.c_attn", "conv1d", "attn.c_attn", lambda h: (h.n_embd, 3 * h.n_embd)),
    ("h.{i}.attn.c_proj", "conv1d", "attn.c_proj", lambda h: (h.n_embd, h.n_embd)),
    ("h.{i}.ln_2", "ln", "ln_2", lambda h: (h.n_embd,)),
    ("h.{i}.mlp.c_fc", "conv1d", "mlp.c_fc", lambda h: (h.n_embd, h.n_inner)),
    ("h.{i}.mlp.c_proj", "conv1d", "mlp.c_proj", lambda h: (h.n_inner, h.n_embd)),
]


def tensors(h: HParams) -> list[Tensor]:
    """Every tensor a GPT-2 with these hyperparameters must have, in loading order."""
    out = []
    for layer, patterns in [(0, MODEL_TENSORS)] + [(i, BLOCK_TENSORS) for i in range(h.n_layer)]:
        for pattern, table, tensor, shape in patterns:
            name = pattern.format(i=layer)
            bias = None if table in ("wte", "wpe") else name + ".bias"
            out.append(Tensor(name + ".weight", table, tensor, layer, shape(h), bias))
    return out


def nbytes(h: HParams) -> int:
    """float32 bytes of everything that gets loaded (for progress bars).

    Counted per kind of tensor, not by listing them: a config that claims a trillion
    layers must cost nothing here (Checkpoint refuses it against the file)."""
    per_model = sum(math.prod(shape(h)) for _, _, _, shape in MODEL_TENSORS)
    per_block = sum(math.prod(shape(h)) for _, _, _, shape in BLOCK_TENSORS)
    return 4 * (per_model + h.n_layer * per_block)


def _whole(cfg: dict, key: str, path: Path, default=None) -> int:
    """cfg[key] as a positive whole number: JSON 2.7, "12" or true are refused, not rounded."""
    value = cfg.get(key)
    if value is None:  # absent, or null as transformers writes n_inner
        value = default
    if value is None:
        raise Gpt2SqlError(f"{path}: {key} is missing: not a GPT-2 config")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise Gpt2SqlError(f"{path}: {key} must be a whole number > 0, not {value!r}")
    return value


# transformers' names for GPT-2's tanh GELU, 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))): the
# same function written differently (sql/40_gelu.sql gpt2.gelu). The exact (erf) "gelu", "quick_gelu",
# "relu" and the rest compute something else.
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_python_tanh", "gelu_fast", "gelu_accurate")

# Flags of transformers' GPT2Config that change the forward pass, and the value gpt2sql computes
# (sql/ implements standard GPT-2 only): any other value is refused, not ignored.
# reorder_and_upcast_attn is accepted: it scales the keys before the product instead of the
# product, and computes it in float32 (mixed-precision training): the same math, and gpt2sql
# computes attention in float32/float64 anyway.
MATH_FLAGS = {
    "scale_attn_weights": (True, "attention scores not divided by sqrt(d_head)"),
    "scale_attn_by_inverse_layer_idx": (False, "attention scores also divided by the layer number"),
    "add_cross_attention": (False, "cross-attention blocks over an encoder's output"),
}


def _check_math_flags(cfg: dict, path: Path) -> None:
    for key, (wanted, meaning) in MATH_FLAGS.items():
        value = cfg.get(key, wanted)
        if not isinstance(value, bool):  # "false" would be true to Python
            raise Gpt2SqlError(f"{path}: {key} must be true or false, not {value!r}")
        if value != wanted:
            raise Gpt2SqlError(f"{path}: {key} is {json.dumps(value)} ({meaning}): gpt2sql computes only "
                               f"standard GPT-2, where it is {json.dumps(wanted)}")
    if not isinstance(cfg.get("tie_word_embeddings", True), bool):
        raise Gpt2SqlError(f"{path}: tie_word_embeddings must be true or false, not {cfg['tie_word_embeddings']!r}")


def read_config(directory: Path) -> HParams:
    """The hyperparameters from config.json; a one-line error when it is not GPT-2.

    Only the config's own consistency is checked here; Checkpoint checks it against the
    tensors of the file, and the loader against the tokenizer."""
    path = directory / "config.json"
    if not path.is_file():
        raise Gpt2SqlError(f"{directory} has no config.json: not a Hugging Face checkpoint directory")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise Gpt2SqlError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise Gpt2SqlError(f"{path} is not a JSON object")
    if cfg.get("model_type") != "gpt2":
        raise Gpt2SqlError(f"{path}: model_type is {cfg.get('model_type')!r}, not 'gpt2': only GPT-2 checkpoints can be loaded")
    activation = cfg.get("activation_function", "gelu_new")
    if activation not in TANH_GELUS:
        raise Gpt2SqlError(f"{path}: activation_function {activation!r} is not GPT-2's tanh GELU (gelu_new)")
    _check_math_flags(cfg, path)
    eps = cfg.get("layer_norm_epsilon", 1e-5)
    # subtle: json reads NaN and Infinity; layer norm divides by sqrt(var + eps)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise Gpt2SqlError(f"{path}: layer_norm_epsilon must be a finite number >= 0, not {eps!r}")
    n_embd = _whole(cfg, "n_embd", path)
    h = HParams(
        n_layer=_whole(cfg, "n_layer", path), n_head=_whole(cfg, "n_head", path), n_embd=n_embd,
        n_inner=_whole(cfg, "n_inner", path, default=4 * n_embd), n_positions=_whole(cfg, "n_positions", path),
        n_vocab=_whole(cfg, "vocab_size", path), layer_norm_epsilon=float(eps),
        tie_word_embeddings=cfg.get("tie_word_embeddings", True),
    )
    if h.n_embd % h.n_head:
        raise Gpt2SqlError(f"{path}: n_embd {h.n_embd} does not split into n_head {h.n_head} heads")
    return h


# The widest vectors gpt2sql can store and compute with (found by loading and running 1-layer
# models; tests/test_checkpoint.py checks each edge):
# - a weight row (wte, wpe, a Conv1D input chunk) is STORAGE PLAIN and must fit one 8 kB page:
#   gpt2.chunk_dims cuts Conv1D inputs at 2000 float32 / 4000 float16 numbers. wte and wpe rows
#   are n_embd wide and not cut (float32: 2024 still fits the page, 2032 does not), so n_embd is
#   held to the chunk width, where every row of every table fits.
# - pgvector holds at most 16,000 dimensions: the MLP's hidden vector (n_inner), and the KV
#   cache's transposed values, one vector over all positions per head (n_positions).
ROW_FLOATS = {"float32": 2000, "float16": 4000}  # = gpt2.chunk_dims' widths (sql/20_model_tables.sql)
MAX_DIMS = 16000


def check_fits(h: HParams, dtype: str) -> None:
    """A one-line error when a model of these widths cannot be stored in `dtype` or computed."""
    if h.n_embd > ROW_FLOATS[dtype]:
        wider = [d for d, n in ROW_FLOATS.items() if n >= h.n_embd]
        way_out = f"load it with --dtype {wider[0]}" if wider else "no dtype holds it: this model cannot be loaded"
        raise Gpt2SqlError(f"n_embd {h.n_embd} is wider than a {dtype} row can hold ({ROW_FLOATS[dtype]}): {way_out}")
    if h.n_inner > MAX_DIMS:
        raise Gpt2SqlError(f"n_inner {h.n_inner} is wider than a pgvector vector can be ({MAX_DIMS} dimensions): "
                           "the MLP's hidden layer cannot be computed, this model cannot be loaded")
    if h.n_positions > MAX_DIMS:
        raise Gpt2SqlError(f"n_positions {h.n_positions} is more than the KV cache can hold ({MAX_DIMS}, pgvector's "
                           "most dimensions: one vector over all positions per head): this model cannot be loaded")


READABLE_DTYPES = ("F32", "F16", "F64")
# the largest finite magnitude of what the values become in the database: pgvector's vector and
# PostgreSQL's real are float32, halfvec is float16
LARGEST = {"float32": 3.4028234663852886e38, "float16": 65504.0}


class Checkpoint:
    """An open model.safetensors whose tensors were all checked against the declared table."""

    def __init__(self, directory: Path):
        from safetensors import safe_open

        self.directory = Path(directory)
        self.hparams = read_config(self.directory)
        path = self.directory / "model.safetensors"
        if not path.is_file():
            raise Gpt2SqlError(f"{self.directory} has no model.safetensors (only safetensors checkpoints are supported)")
        try:
            self._file = safe_open(str(path), framework="numpy")
        except Exception as e:  # safetensors raises its own error types
            raise Gpt2SqlError(f"{path} is not a readable safetensors file: {e}") from None
        names = set(self._file.keys())
        self._prefix = "transformer." if "transformer.wte.weight" in names else ""
        self._check_layers(names)  # first: everything below is built from n_layer
        self.tensors = tensors(self.hparams)
        self._check(names)
        self._check_nothing_else(names)
        self._check_lm_head(names)

    def _check_layers(self, names: set[str]) -> None:
        """config.json's n_layer against the blocks the file holds (h.0., h.1., ...)."""
        block = re.compile(re.escape(self._prefix) + r"h\.(\d+)\.")
        layers = {int(m[1]) for name in names if (m := block.match(name))}
        if self.hparams.n_layer != len(layers):
            raise Gpt2SqlError(f"config.json has n_layer {self.hparams.n_layer}, but model.safetensors holds "
                               f"{len(layers)} blocks (h.0 ... h.N): they must agree")

    def _check(self, names: set[str]) -> None:
        for t in self.tensors:
            for name, shape in [(t.name, t.shape)] + ([(t.bias, t.shape[-1:])] if t.bias else []):
                full = self._prefix + name
                if full not in names:
                    raise Gpt2SqlError(f"model.safetensors has no tensor {full!r}")
                tensor = self._file.get_slice(full)
                if tuple(tensor.get_shape()) != shape:
                    raise Gpt2SqlError(f"tensor {full!r} has shape {tensor.get_shape()}, config.json implies {list(shape)}")
                if tensor.get_dtype() not in READABLE_DTYPES:  # e.g. BF16, which NumPy cannot hold
                    raise Gpt2SqlError(f"tensor {full!r} is {tensor.get_dtype()}: only float32, float16 "
                                       "and float64 checkpoints can be read")

    def _check_nothing_else(self, names: set[str]) -> None:
        """Every tensor of the file is loaded, or is one of the known extras that carry nothing:
        causal-mask buffers, and an LM head tied to wte (same shape; GPT-2 has no other)."""
        known = {self._prefix + n for t in self.tensors for n in (t.name, t.bias) if n}
        known |= {self._prefix + f"h.{i}.attn.{b}" for i in range(self.hparams.n_layer) for b in ("bias", "masked_bias")}
        if "lm_head.weight" in names and self._file.get_slice("lm_head.weight").get_shape() == [
                self.hparams.n_vocab, self.hparams.n_embd]:
            known.add("lm_head.weight")
        extra = sorted(names - known)
        if extra:
            raise Gpt2SqlError(f"model.safetensors has {len(extra)} tensors that config.json does not account for "
                               f"({', '.join(extra[:3])}{', ...' if len(extra) > 3 else ''}): not a GPT-2 of this config")

    def _check_lm_head(self, names: set[str]) -> None:
        """gpt2sql computes the logits with wte (tied, as GPT-2's): a checkpoint's own LM head must
        equal it, or be absent with tie_word_embeddings true (transformers then ties it)."""
        import numpy as np

        if "lm_head.weight" not in names:
            if not self.hparams.tie_word_embeddings:
                raise Gpt2SqlError("config.json has tie_word_embeddings false, but model.safetensors has no "
                                   "lm_head.weight: the model's LM head is missing")
            return
        head = self._file.get_tensor("lm_head.weight")
        if not np.array_equal(head, self._file.get_tensor(self._prefix + "wte.weight")):
            raise Gpt2SqlError("lm_head.weight differs from wte.weight: gpt2sql computes the logits with wte "
                               "(GPT-2's tied LM head) and cannot use a separate one")

    def check_values(self, dtype: str) -> None:
        """A one-line error, naming the tensor, for NaN or infinity anywhere, or a value that the
        database type it goes into cannot hold (checked before anything is written)."""
        import numpy as np

        for t in self.tensors:
            # weights of wte, wpe and Conv1D go into `dtype`; layer norms and biases into float32
            for name, into in [(t.name, dtype if t.table != "ln" else "float32")] + ([(t.bias, "float32")] if t.bias else []):
                full = self._prefix + name
                a = self._file.get_tensor(full)
                top, bottom = a.max(), a.min()  # NaN wins both; one pass each, no temporary array
                if not (np.isfinite(top) and np.isfinite(bottom)):
                    what = "NaN" if np.isnan(top) or np.isnan(bottom) else "an infinite value"
                    raise Gpt2SqlError(f"tensor {full!r} holds {what}: a model with NaN or infinite weights "
                                       "cannot compute; nothing was loaded")
                big = max(float(top), -float(bottom))
                if big > LARGEST[into]:
                    way_out = ("load it with --dtype float32" if big <= LARGEST["float32"]
                               else "it cannot be loaded")
                    raise Gpt2SqlError(f"tensor {full!r} holds {big:.3g}, beyond {into}'s range "
                                       f"(+-{LARGEST[into]:.5g}): {way_out}")

    def get(self, name: str):
        """A tensor as a float32 NumPy array (check_values() has made sure it fits)."""
        import numpy as np

        return np.asarray(self._file.get_tensor(self._prefix + name), dtype=np.float32)
