"""The benchmarks' yardstick: GPT-2 in NumPy, float32, written for speed, not for reading.

    model = NumpyGPT2(directory)              # a checkpoint in the Hugging Face layout
    cache = model.new_cache()
    logits = model.step(cache, prompt_ids)    # a batched prefill: all positions in one pass
    logits = model.step(cache, [token])       # a decode step with the KV cache
    logits = model.step_batch(caches, tokens) # one decode step for several sequences

Float32 throughout (BLAS uses every core), a preallocated KV cache, one matrix product per
layer and projection for all new positions, causal attention as batched matrix products,
and logits for the last position only (what generation needs; computing them for every
prompt position would cost more than the blocks and flatter SQL). tests/reference.py is the
readable float64 twin that the tests use; this one must agree with it (bench/ checks that).
"""

from __future__ import annotations

import math

import numpy as np


class NumpyGPT2:
    def __init__(self, directory):
        import sys
        from pathlib import Path

        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        import reference

        self.hp, p = reference.load(directory, dtype=np.float32)
        self.n_head, self.eps = self.hp["n_head"], self.hp.get("layer_norm_epsilon", 1e-5)
        self.n_ctx, self.d = self.hp["n_positions"], self.hp["n_embd"]
        self.wte, self.wpe, self.ln_f = p["wte"], p["wpe"], (p["ln_f"]["g"], p["ln_f"]["b"])
        self.blocks = [dict(ln_1=(h["ln_1"]["g"], h["ln_1"]["b"]), ln_2=(h["ln_2"]["g"], h["ln_2"]["b"]),
                            attn_w=h["attn"]["c_attn"]["w"], attn_b=h["attn"]["c_attn"]["b"],
                            proj_w=h["attn"]["c_proj"]["w"], proj_b=h["attn"]["c_proj"]["b"],
                            fc_w=h["mlp"]["c_fc"]["w"], fc_b=h["mlp"]["c_fc"]["b"],
                            out_w=h["mlp"]["c_proj"]["w"], out_b=h["mlp"]["c_proj"]["b"]) for h in p["h"]]
        self.gelu_c = np.float32(math.sqrt(2 / math.pi))

    def new_cache(self):
        """[n_layer] of (keys, values) [n_ctx, n_embd] each, and the number of positions filled."""
        shape = (len(self.blocks), self.n_ctx, self.d)
        return {"k": np.zeros(shape, np.float32), "v": np.zeros(shape, np.float32), "n": 0}

    def _ln(self, x, g, b):
        mean = x.mean(-1, keepdims=True)
        var = x.var(-1, keepdims=True)
        return g * (x - mean) / np.sqrt(var + self.eps) + b

    def _gelu(self, x):
        return 0.5 * x * (1 + np.tanh(self.gelu_c * (x + np.float32(0.044715) * x * x * x)))

    def _attend(self, q, k, v, pos0):  # q [n, d] at positions pos0.., k, v [pos0 + n, d] -> [n, d]
        n, d, h = q.shape[0], self.d, self.n_head
        dh, total = d // h, k.shape[0]
        qh = q.reshape(n, h, dh).transpose(1, 0, 2)
        kh = k.reshape(total, h, dh).transpose(1, 2, 0)
        vh = v.reshape(total, h, dh).transpose(1, 0, 2)
        s = qh @ kh / np.float32(math.sqrt(dh))  # [h, n, total]
        if n > 1:
            s = np.where(np.arange(total)[None, :] > np.arange(pos0, pos0 + n)[:, None], -np.inf, s)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        return (s @ vh).transpose(1, 0, 2).reshape(n, d)

    def step(self, cache, ids):
        """Run new tokens (at positions cache["n"]..) through the model; the last one's logits."""
        return self.step_batch([cache], [list(ids)])[0]

    def step_batch(self, caches, id_lists):
        """New tokens of several sequences at once: the projections take all their positions
        in one product; attention runs per sequence. Returns each sequence's last logits."""
        spans, xs = [], []
        for cache, ids in zip(caches, id_lists):
            pos0 = cache["n"]
            spans.append((len(ids), pos0))
            xs.append(self.wte[ids] + self.wpe[pos0:pos0 + len(ids)])
        x = np.concatenate(xs)
        for i, b in enumerate(self.blocks):
            qkv = self._ln(x, *b["ln_1"]) @ b["attn_w"] + b["attn_b"]
            out, at = [], 0
            for cache, (n, pos0) in zip(caches, spans):
                q, k, v = np.split(qkv[at:at + n], 3, axis=-1)
                cache["k"][i, pos0:pos0 + n], cache["v"][i, pos0:pos0 + n] = k, v
                out.append(self._attend(q, cache["k"][i, :pos0 + n], cache["v"][i, :pos0 + n], pos0))
                at += n
            x = x + np.concatenate(out) @ b["proj_w"] + b["proj_b"]
            x = x + self._gelu(self._ln(x, *b["ln_2"]) @ b["fc_w"] + b["fc_b"]) @ b["out_w"] + b["out_b"]
        last, at = [], 0
        for cache, (n, _) in zip(caches, spans):
            cache["n"] += n
            at += n
            last.append(x[at - 1])
        return self._ln(np.stack(last), *self.ln_f) @ self.wte.T  # [n_seq, n_vocab]
