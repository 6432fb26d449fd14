"""Random GPT-2 checkpoints in exactly the Hugging Face layout, for tests and benchmarks.

A directory written here looks like a download of openai-community/gpt2: config.json,
model.safetensors, vocab.json and merges.txt (the real tokenizer, since it is the same for
every GPT-2). The weights are random: such a model must never be shown to a user as GPT-2.

    path = write_checkpoint(tmp_path, **CONFIGS["tiny"], seed=1)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1] / "loader" / "data"  # encoder.json, vocab.bpe

CONFIGS = {
    # small context so sliding-window tests are cheap; the real vocabulary all the same
    "tiny": dict(n_layer=2, n_embd=64, n_head=4, n_positions=64),
    # one layer at GPT-2 124M's width: real shapes per layer, quick to write
    "wide": dict(n_layer=1, n_embd=768, n_head=12, n_positions=1024),
    # GPT-2 124M's shapes, for benchmarks (~500 MB in float32)
    "gpt2-124M": dict(n_layer=12, n_embd=768, n_head=12, n_positions=1024),
}


def write_tokenizer_files(directory) -> Path:
    """Copy the GPT-2 tokenizer under its Hugging Face names (byte-identical files)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(DATA / "encoder.json", directory / "vocab.json")
    shutil.copyfile(DATA / "vocab.bpe", directory / "merges.txt")
    return directory


def config(*, n_layer, n_embd, n_head, n_positions=1024, vocab_size=50257, dtype="float32"):
    """config.json as transformers writes it for a GPT2LMHeadModel."""
    return {
        "activation_function": "gelu_new",
        "architectures": ["GPT2LMHeadModel"],
        "attn_pdrop": 0.1,
        "bos_token_id": 50256,
        "embd_pdrop": 0.1,
        "eos_token_id": 50256,
        "initializer_range": 0.02,
        "layer_norm_epsilon": 1e-05,
        "model_type": "gpt2",
        "n_ctx": n_positions,
        "n_embd": n_embd,
        "n_head": n_head,
        "n_inner": None,
        "n_layer": n_layer,
        "n_positions": n_positions,
        "reorder_and_upcast_attn": False,
        "resid_pdrop": 0.1,
        "scale_attn_by_inverse_layer_idx": False,
        "scale_attn_weights": True,
        "summary_activation": None,
        "summary_first_dropout": 0.1,
        "summary_proj_to_labels": True,
        "summary_type": "cls_index",
        "summary_use_proj": True,
        "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}},
        "torch_dtype": dtype,
        "use_cache": True,
        "vocab_size": vocab_size,
    }


def random_tensors(*, n_layer, n_embd, n_positions, vocab_size, seed=0, scale=1.0):
    """{name: float32 array} with HF names (no prefix), drawn in a fixed order from `seed`.

    GPT-2's own init (everything N(0, 0.02)) makes a poor test model: the tied head mostly
    predicts the input token again and greedy generation repeats at once. Instead (widths
    tried on 1, 2 and 12 layers; tests/test_reference.py checks the outcome):
    - wte ~ N(0, 1/sqrt(n_embd)) (rows of norm ~1), wpe ~ N(0, 3/sqrt(n_embd)): the last
      token's own embedding is small next to what the blocks add, so it does not win the
      tied head (subtle: its self-logit grows with |wte row| / |residual|).
    - Conv1D weights [in, out] ~ N(0, k * scale / sqrt(fan_in)) with k = 1.5 for c_attn
      (attention scores of std ~2: peaked, not uniform) and k = 2 for both c_proj (block
      outputs of std ~2 on the residual), 1 for c_fc.
    - layer-norm gains 1 + N(0, 0.1), but ln_f's 3 * (1 + N(0, 0.1)): with the tied head it
      sets the logits' spread (std ~3, top probability ~0.1, as a trained model's).
    - every bias N(0, 0.02): small, but a dropped bias still shows.
    """
    rng = np.random.default_rng(seed)

    def normal(shape, std):
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(std)

    d = n_embd
    t = {"wte.weight": normal((vocab_size, d), 1 / np.sqrt(d)),
         "wpe.weight": normal((n_positions, d), 3 / np.sqrt(d))}
    for i in range(n_layer):
        for ln in ("ln_1", "ln_2"):
            t[f"h.{i}.{ln}.weight"] = 1 + normal((d,), 0.1)
            t[f"h.{i}.{ln}.bias"] = normal((d,), 0.02)
        for name, (fan_in, fan_out), k in [("attn.c_attn", (d, 3 * d), 1.5), ("attn.c_proj", (d, d), 2),
                                           ("mlp.c_fc", (d, 4 * d), 1), ("mlp.c_proj", (4 * d, d), 2)]:
            t[f"h.{i}.{name}.weight"] = normal((fan_in, fan_out), k * scale / np.sqrt(fan_in))
            t[f"h.{i}.{name}.bias"] = normal((fan_out,), 0.02)
    t["ln_f.weight"] = 3 * (1 + normal((d,), 0.1))
    t["ln_f.bias"] = normal((d,), 0.02)
    return t


def write_checkpoint(directory, *, n_layer, n_embd, n_head, n_positions=1024, vocab_size=50257,
                     seed=0, prefix=False, mask_buffers=False, lm_head=False, dtype="float32",
                     scale=1.0) -> Path:
    """Write a random GPT-2 checkpoint into `directory` (created if missing); return it.

    prefix: every tensor name starts with "transformer." (as transformers saves a
    GPT2LMHeadModel). mask_buffers: add h.N.attn.bias [1, 1, n_positions, n_positions]
    causal masks and h.N.attn.masked_bias (-1e4), as older files carry. lm_head: add
    lm_head.weight, equal to wte.weight. dtype: "float32", "float16" or "float64" storage
    (float64: the float32 values, exactly).
    scale: multiplies the standard deviation of every Conv1D weight (1.0: see random_tensors).
    Deterministic: the same arguments give byte-identical tensors.
    """
    from safetensors.numpy import save_file

    assert n_embd % n_head == 0, "n_embd must split evenly into heads"
    assert dtype in ("float32", "float16", "float64")
    directory = write_tokenizer_files(directory)
    cfg = config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_positions=n_positions,
                 vocab_size=vocab_size, dtype=dtype)
    (directory / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    t = random_tensors(n_layer=n_layer, n_embd=n_embd, n_positions=n_positions,
                       vocab_size=vocab_size, seed=seed, scale=scale)
    if mask_buffers:
        causal = np.tril(np.ones((n_positions, n_positions), np.float32))[None, None]
        for i in range(n_layer):
            t[f"h.{i}.attn.bias"] = causal  # [1, 1, n_positions, n_positions]
            t[f"h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)  # a scalar, shape []
    t = {k: a.astype(dtype, copy=False) for k, a in t.items()}
    if prefix:
        t = {"transformer." + k: a for k, a in t.items()}
    if lm_head:
        t["lm_head.weight"] = t[("transformer." if prefix else "") + "wte.weight"].copy()
    save_file(t, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory
