"""bench/numpy_gpt2.py, the benchmarks' float32 yardstick, computes what tests/reference.py
computes: a batched prefill's last logits, decode steps with its KV cache, batched steps."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import reference
import synthetic
from compare import assert_close

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


def test_numpy_yardstick_equals_reference(tmp_path):
    from numpy_gpt2 import NumpyGPT2

    directory = synthetic.write_checkpoint(tmp_path, **synthetic.CONFIGS["tiny"], seed=3)
    hparams, params = reference.load(directory)
    fast = NumpyGPT2(directory)
    ids = [464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13]
    cache = fast.new_cache()
    assert_close("prefill", fast.step(cache, ids[:6]), reference.forward(params, hparams, ids[:6])[-1], 1e-3)
    for n in range(6, len(ids)):  # decode steps
        assert_close(f"decode at {n}", fast.step(cache, [ids[n]]), reference.forward(params, hparams, ids[: n + 1])[-1], 1e-3)
    caches = [fast.new_cache(), fast.new_cache()]  # two sequences of different lengths, stepped together
    fast.step_batch(caches, [ids[:3], ids[:7]])
    both = fast.step_batch(caches, [[ids[3]], [ids[7]]])
    assert_close("batched step", both, np.stack([reference.forward(params, hparams, ids[:4])[-1],
                                                 reference.forward(params, hparams, ids[:8])[-1]]), 1e-3)
