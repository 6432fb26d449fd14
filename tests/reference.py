"""GPT-2 in NumPy, written from the math (picoGPT style): the twin of every SQL stage.

Parameters are a nested dict named after the checkpoint's modules, with picoGPT's leaf
names: Conv1D weight/bias -> w/b, LayerNorm weight/bias -> g/b:
    {"wte": [n_vocab, n_embd], "wpe": [n_ctx, n_embd], "ln_f": {"g", "b"},
     "h": [{"ln_1": {"g", "b"}, "attn": {"c_attn": {"w", "b"}, "c_proj": {...}},
            "ln_2": {...}, "mlp": {"c_fc": {...}, "c_proj": {...}}}, ...]}
hparams is config.json as a dict (n_head, n_positions, layer_norm_epsilon, ...).
Everything runs in the dtype the parameters were loaded in (float64 by default).

Training (sql/*: each stage's `_backward` beside it, sql/99_train.sql): every forward stage
here has its backward beside it, written by hand from the chain rule (micrograd style: the
local derivative times the upstream gradient), llm.c's argument names (dx beside x, dw
beside w). tests/test_reference.py checks them against PyTorch's autograd.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np


def gelu(x):  # GPT-2's "gelu_new": the tanh approximation
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))



def gelu_backward(dy, x):  # d loss / d x, given dy = d loss / d gelu(x)
    c = math.sqrt(2 / math.pi)
    t = np.tanh(c * (x + 0.044715 * x**3))
    return dy * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * 0.044715 * x**2))

def softmax(x):  # over the last axis; subtle: subtract the max so exp never overflows
    exp_x = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return exp_x / np.sum(exp_x, axis=-1, keepdims=True)


def layer_norm(x, g, b, eps=1e-5):  # [n_seq, n_embd] -> [n_seq, n_embd]
    mean = np.mean(x, axis=-1, keepdims=True)  # [n_seq, 1]
    variance = np.var(x, axis=-1, keepdims=True)  # [n_seq, 1], biased (divides by n_embd)
    return g * (x - mean) / np.sqrt(variance + eps) + b



def layer_norm_backward(dy, x, g, eps=1e-5):  # -> dx [n, d], dg [d], db [d]
    mean = np.mean(x, axis=-1, keepdims=True)
    rstd = 1 / np.sqrt(np.var(x, axis=-1, keepdims=True) + eps)  # [n, 1]
    xhat = (x - mean) * rstd  # [n, d]
    dxhat = dy * g
    # the mean and the variance depend on every x: two terms more than dxhat * rstd
    dx = rstd * (dxhat - dxhat.mean(-1, keepdims=True) - xhat * (dxhat * xhat).mean(-1, keepdims=True))
    return dx, (dy * xhat).sum(0), dy.sum(0)

def linear(x, w, b):  # Conv1D: [m, in] @ [in, out] + [out] -> [m, out]
    return x @ w + b



def linear_backward(dy, x, w):  # -> dx [m, in], dw [in, out], db [out]
    return dy @ w.T, x.T @ dy, dy.sum(0)

def attention(q, k, v):  # [n_q, d], [n_k, d], [n_k, d] -> [n_q, d]; one head, causal
    # subtle: the n_q queries are the LAST n_q positions of the n_k keys (n_q == n_k in a
    # prefill, n_q == 1 in a decode step): query i sits at position n_k - n_q + i and sees
    # keys 0..that position.
    n_q, n_k = q.shape[0], k.shape[0]
    pos_q = np.arange(n_k - n_q, n_k)[:, None]  # [n_q, 1]
    mask = np.where(np.arange(n_k)[None, :] > pos_q, -np.inf, 0.0)  # [n_q, n_k]
    return softmax(q @ k.T / math.sqrt(q.shape[-1]) + mask.astype(q.dtype)) @ v  # [n_q, d]



def attention_backward(dout, q, k, v):  # one head of a sequence from position 0 -> dq, dk, dv [n, d]
    n, scale = q.shape[0], 1 / math.sqrt(q.shape[-1])
    p = softmax(q @ k.T * scale + np.triu(np.full((n, n), -np.inf), 1))  # [n, n], 0 above the diagonal
    dp = dout @ v.T  # [n, n]
    ds = p * (dp - (dp * p).sum(-1, keepdims=True))  # through softmax: each row's weights sum to 1
    return ds @ k * scale, ds.T @ q * scale, p.T @ dout

def mha(x, c_attn, c_proj, n_head, kv=None, rec=None):  # [n_seq, n_embd] -> [n_seq, n_embd], (k, v)
    qkv = linear(x, **c_attn)  # [n_seq, n_embd] -> [n_seq, 3*n_embd]
    q, k, v = np.split(qkv, 3, axis=-1)  # 3 x [n_seq, n_embd]
    if kv is not None:  # the cache holds keys and values of the earlier positions
        k = np.concatenate([kv[0], k])  # [n_past + n_seq, n_embd]
        v = np.concatenate([kv[1], v])  # [n_past + n_seq, n_embd]
    heads = zip(*(np.split(t, n_head, axis=-1) for t in (q, k, v)))  # n_head x (q, k, v)
    z = np.hstack([attention(qh, kh, vh) for qh, kh, vh in heads])  # [n_seq, n_embd]
    out = linear(z, **c_proj)  # [n_seq, n_embd] -> [n_seq, n_embd]
    if rec is not None:
        rec.update(qkv=qkv, z=z, attn_out=out)
    return out, (k, v)


def mlp(x, c_fc, c_proj, rec=None):  # [n_seq, n_embd] -> [n_seq, n_embd]
    h = linear(x, **c_fc)  # [n_seq, n_embd] -> [n_seq, 4*n_embd]
    a = gelu(h)
    out = linear(a, **c_proj)  # [n_seq, 4*n_embd] -> [n_seq, n_embd]
    if rec is not None:
        rec.update(mlp_pre=h, mlp_post=a, mlp_out=out)
    return out


def block(x, layer, n_head, eps, kv=None, rec=None):  # [n_seq, n_embd] -> [n_seq, n_embd], (k, v)
    """rec: a dict to fill with the block's activations, named as gpt2.run_layers records them
    (sql/85_forward.sql): resid_pre, qkv, z, attn_out, resid_mid, mlp_pre, mlp_post, mlp_out."""
    if rec is not None:
        rec["resid_pre"] = x
    a, kv = mha(layer_norm(x, **layer["ln_1"], eps=eps), **layer["attn"], n_head=n_head, kv=kv, rec=rec)
    x = x + a  # residual around attention, [n_seq, n_embd]
    if rec is not None:
        rec["resid_mid"] = x
    return x + mlp(layer_norm(x, **layer["ln_2"], eps=eps), **layer["mlp"], rec=rec), kv


def heads_backward(dz, qkv, n_head):  # one sequence from position 0: d loss / d z [n, n_embd] -> d loss / d qkv [n, 3*n_embd]
    grads = [attention_backward(*t) for t in zip(*(np.split(a, n_head, axis=-1) for a in (dz, *np.split(qkv, 3, axis=-1))))]
    return np.hstack([np.hstack([g[i] for g in grads]) for i in range(3)])  # dq, dk, dv, each the heads side by side


def mha_backward(dout, x, rec, c_attn, c_proj, n_head):  # x = ln_1(resid_pre) -> dx, {name: grad}
    dz, dw_proj, db_proj = linear_backward(dout, rec["z"], c_proj["w"])
    dqkv = heads_backward(dz, rec["qkv"], n_head)  # [n, 3*n_embd]
    dx, dw_attn, db_attn = linear_backward(dqkv, x, c_attn["w"])
    return dx, {"attn.c_attn.weight": dw_attn, "attn.c_attn.bias": db_attn,
                "attn.c_proj.weight": dw_proj, "attn.c_proj.bias": db_proj}


def mlp_backward(dout, x, rec, c_fc, c_proj):  # x = ln_2(resid_mid) -> dx, {name: grad}
    da, dw_proj, db_proj = linear_backward(dout, rec["mlp_post"], c_proj["w"])
    dx, dw_fc, db_fc = linear_backward(gelu_backward(da, rec["mlp_pre"]), x, c_fc["w"])
    return dx, {"mlp.c_fc.weight": dw_fc, "mlp.c_fc.bias": db_fc, "mlp.c_proj.weight": dw_proj, "mlp.c_proj.bias": db_proj}


def block_backward(dout, rec, layer, n_head, eps):  # d loss / d block output -> d / d its input, {name: grad}
    dx2, dx = dout, dout  # the residual passes the gradient straight through
    dln, grads = mlp_backward(dx2, layer_norm(rec["resid_mid"], **layer["ln_2"], eps=eps), rec, **layer["mlp"])
    dmid, dg, db = layer_norm_backward(dln, rec["resid_mid"], layer["ln_2"]["g"], eps)
    dx = dx + dmid
    grads.update({"ln_2.weight": dg, "ln_2.bias": db})
    dln, g_attn = mha_backward(dx, layer_norm(rec["resid_pre"], **layer["ln_1"], eps=eps), rec, **layer["attn"], n_head=n_head)
    dpre, dg, db = layer_norm_backward(dln, rec["resid_pre"], layer["ln_1"]["g"], eps)
    grads.update(g_attn, **{"ln_1.weight": dg, "ln_1.bias": db})
    return dx + dpre, grads


def _run(params, hparams, ids, pos0=0, cache=None):  # ids [n_seq] -> logits [n_seq, n_vocab]
    eps = hparams.get("layer_norm_epsilon", 1e-5)
    x = params["wte"][ids] + params["wpe"][pos0 : pos0 + len(ids)]  # [n_seq, n_embd]
    cache = cache or [None] * len(params["h"])
    for i, layer in enumerate(params["h"]):
        x, cache[i] = block(x, layer, hparams["n_head"], eps, kv=cache[i])  # [n_seq, n_embd]
    x = layer_norm(x, **params["ln_f"], eps=eps)  # [n_seq, n_embd]
    return x @ params["wte"].T, cache  # tied LM head: [n_seq, n_embd] -> [n_seq, n_vocab]


def forward(params, hparams, ids):  # ids [n_seq] -> logits [n_seq, n_vocab]
    assert 0 < len(ids) <= hparams["n_positions"], "forward sees at most n_positions tokens"
    return _run(params, hparams, list(ids))[0]


def prefill(params, hparams, ids):  # ids [n_seq] -> (logits of the last token [n_vocab], cache)
    """The cache is one (k, v) pair per layer, each [n_seq, n_embd] (heads side by side)."""
    assert 0 < len(ids) <= hparams["n_positions"]
    logits, cache = _run(params, hparams, list(ids))
    return logits[-1], cache


def decode_step(params, hparams, cache, token_id, pos):  # -> (logits [n_vocab], new cache)
    """Feed one token at position `pos` (== the number of cached positions)."""
    assert pos == len(cache[0][0]) and pos < hparams["n_positions"]
    logits, cache = _run(params, hparams, [token_id], pos0=pos, cache=list(cache))
    return logits[-1], cache


def generate_greedy(params, hparams, ids, n):  # -> the n new token ids
    """Greedy decoding (argmax, ties to the lowest id) with gpt2sql's context window, the
    rule of sql/95_generate.sql: the model sees the tokens since the window start, at
    positions 0, 1, ...; when feeding the next token would pass n_positions, the window
    restarts at the last n_positions // 2 tokens (one prefill) and decoding goes on with the
    KV cache; a prompt longer than n_positions starts there too, at its last n_positions // 2.
    Equivalently: next = argmax(forward(seq[start:])[-1]) with start moved as above."""
    n_ctx, seq = hparams["n_positions"], list(ids)
    start = len(seq) - n_ctx // 2 if len(seq) > n_ctx else 0
    logits, cache = prefill(params, hparams, seq[start:])
    for step in range(n):
        seq.append(int(np.argmax(logits)))  # np.argmax returns the first maximum
        if step == n - 1:
            break
        if len(seq) - start <= n_ctx:
            logits, cache = decode_step(params, hparams, cache, seq[-1], len(seq) - 1 - start)
        else:  # subtle: every position would shift, so the cached keys are rebuilt
            start = len(seq) - n_ctx // 2
            logits, cache = prefill(params, hparams, seq[start:])
    return seq[len(ids) :]


def record(params, hparams, ids):  # every activation of a forward pass, to compare with SQL
    """[{site: [n_seq, ...]} per layer] (see block) + [{"resid_pre": the residual stream after
    the last block, "ln_f": its final norm, "logits": [n_seq, n_vocab]}]."""
    eps, n_head = hparams.get("layer_norm_epsilon", 1e-5), hparams["n_head"]
    ids = list(ids)
    x = params["wte"][ids] + params["wpe"][: len(ids)]  # [n_seq, n_embd]
    layers = []
    for p in params["h"]:
        layers.append({})
        x = block(x, p, n_head, eps, rec=layers[-1])[0]  # [n_seq, n_embd]
    final = layer_norm(x, **params["ln_f"], eps=eps)  # [n_seq, n_embd]
    return layers + [{"resid_pre": x, "ln_f": final, "logits": final @ params["wte"].T}]


def load(directory, dtype=np.float64):  # -> (hparams, params)
    """Read config.json + model.safetensors (Hugging Face layout), with or without the
    "transformer." prefix; attn.bias / attn.masked_bias buffers are skipped and a
    lm_head.weight must equal wte (GPT-2 ties them)."""
    from safetensors.numpy import load_file

    directory = Path(directory)
    hp = json.loads((directory / "config.json").read_text())
    raw = {k.removeprefix("transformer."): v for k, v in load_file(directory / "model.safetensors").items()}
    lm_head = raw.pop("lm_head.weight", None)
    raw = {k: v for k, v in raw.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    d, v, c = hp["n_embd"], hp["vocab_size"], hp["n_positions"]
    shapes = {"wte.weight": (v, d), "wpe.weight": (c, d), "ln_f.weight": (d,), "ln_f.bias": (d,)}
    for i in range(hp["n_layer"]):
        for name, shape in [("ln_1", (d,)), ("ln_2", (d,)), ("attn.c_attn", (d, 3 * d)),
                            ("attn.c_proj", (d, d)), ("mlp.c_fc", (d, 4 * d)), ("mlp.c_proj", (4 * d, d))]:
            shapes[f"h.{i}.{name}.weight"] = shape
            shapes[f"h.{i}.{name}.bias"] = shape[-1:]
    assert set(raw) == set(shapes), f"unexpected tensors: {sorted(set(raw) ^ set(shapes))[:6]}"
    for k, shape in shapes.items():
        assert raw[k].shape == shape, f"{k}: {raw[k].shape} != {shape}"
    assert lm_head is None or np.array_equal(lm_head, raw["wte.weight"]), "lm_head not tied to wte"
    t = {k: a.astype(dtype) for k, a in raw.items()}

    def ln(p):
        return {"g": t[p + ".weight"], "b": t[p + ".bias"]}

    def lin(p):
        return {"w": t[p + ".weight"], "b": t[p + ".bias"]}

    h = [{"ln_1": ln(f"h.{i}.ln_1"), "ln_2": ln(f"h.{i}.ln_2"),
          "attn": {"c_attn": lin(f"h.{i}.attn.c_attn"), "c_proj": lin(f"h.{i}.attn.c_proj")},
          "mlp": {"c_fc": lin(f"h.{i}.mlp.c_fc"), "c_proj": lin(f"h.{i}.mlp.c_proj")}}
         for i in range(hp["n_layer"])]
    return hp, {"wte": t["wte.weight"], "wpe": t["wpe.weight"], "ln_f": ln("ln_f"), "h": h}


# --- The glass box (sql/97_inspect.sql) -----------------------------------------------------

def attention_weights(params, hparams, ids):  # -> [n_layer, n_head, n_seq, n_seq], 0 above the diagonal
    """softmax(q k^T / sqrt(d_head) + causal mask) of every layer and head."""
    eps, n_head, ids = hparams.get("layer_norm_epsilon", 1e-5), hparams["n_head"], list(ids)
    x = params["wte"][ids] + params["wpe"][: len(ids)]  # [n_seq, n_embd]
    out = []
    for layer in params["h"]:
        q, k, _ = np.split(linear(layer_norm(x, **layer["ln_1"], eps=eps), **layer["attn"]["c_attn"]), 3, axis=-1)
        mask = np.triu(np.full((len(ids), len(ids)), -np.inf), 1)  # [n_seq, n_seq]
        out.append([softmax(qh @ kh.T / math.sqrt(qh.shape[-1]) + mask)
                    for qh, kh in zip(np.split(q, n_head, axis=-1), np.split(k, n_head, axis=-1))])
        x = block(x, layer, n_head, eps)[0]
    return np.array(out)


def logit_lens(params, hparams, ids):  # -> [n_layer + 1, n_seq, n_vocab] probabilities
    """softmax(ln_f(residual) @ wte^T) of the residual stream before each block (layer 0 =
    the embeddings) and after the last one (layer n_layer: the model's own prediction)."""
    eps, n_head, ids = hparams.get("layer_norm_epsilon", 1e-5), hparams["n_head"], list(ids)
    x = params["wte"][ids] + params["wpe"][: len(ids)]  # [n_seq, n_embd]
    residuals = [x]
    for layer in params["h"]:
        x = block(x, layer, n_head, eps)[0]
        residuals.append(x)
    return np.array([softmax(layer_norm(r, **params["ln_f"], eps=eps) @ params["wte"].T) for r in residuals])


def log_softmax(x):  # over the last axis
    shifted = x - np.max(x, axis=-1, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


def score(params, hparams, ids, eos=50256):  # -> (logprobs [n], ranks [n]) of each token of ids
    """Each token's log-probability given <|endoftext|> and the tokens before it, and its rank
    among all tokens (1 = the most likely), with lm-evaluation-harness's rolling windows when
    ids are longer than the context: every token predicted once, with as much context as fits."""
    n_ctx, ids = hparams["n_positions"], list(ids)
    logprobs, ranks, done = [], [], 0
    while done < len(ids):
        upto = min(len(ids), done + n_ctx)
        context = [eos] + ids[: upto - 1] if done == 0 else ids[upto - n_ctx - 1 : upto - 1]
        lp = log_softmax(forward(params, hparams, context))[-(upto - done):]  # the positions predicting done..upto-1
        for row, target in zip(lp, ids[done:upto]):
            logprobs.append(row[target])
            ranks.append(int(np.sum(row > row[target])) + 1)
        done = upto
    return np.array(logprobs), np.array(ranks)


# --- Training (sql/99_train.sql) ----------------------------------------------------------

def block_step_backward(dx_out, dy, rec, rec_next, params, layer, n_head, eps):
    """The backward of gpt2.block_step (sql/70_block.sql): the step after block `layer`'s heads,
    cut where SQL cuts it. rec, rec_next: record()'s dicts of block `layer` (None for layer -1)
    and of the next one (the last: the final, whose resid_pre ln_f reads); dx_out: d loss / d
    x_out through later residuals (None: none); dy: d loss / d y (qkv of block layer + 1, or
    ln_f's output). -> dx (d loss / d resid_mid, which the residual passes to the block's input),
    dheads (d loss / d z; None for layer -1), {Hugging Face name: grad}."""
    x_out, grads = rec_next["resid_pre"], {}
    if layer + 1 < len(params["h"]):  # y = c_attn(ln_1(x_out)) of block layer + 1
        p, name = params["h"][layer + 1], f"h.{layer + 1}."
        dln, grads[name + "attn.c_attn.weight"], grads[name + "attn.c_attn.bias"] = linear_backward(
            dy, layer_norm(x_out, **p["ln_1"], eps=eps), p["attn"]["c_attn"]["w"])
        dx, grads[name + "ln_1.weight"], grads[name + "ln_1.bias"] = layer_norm_backward(dln, x_out, p["ln_1"]["g"], eps)
    else:  # y = ln_f(x_out)
        dx, grads["ln_f.weight"], grads["ln_f.bias"] = layer_norm_backward(dy, x_out, params["ln_f"]["g"], eps)
    if dx_out is not None:
        dx = dx + dx_out  # the residual passes the gradient straight through
    if layer < 0:
        return dx, None, grads
    p, name = params["h"][layer], f"h.{layer}."  # x_out = resid_mid + c_proj(gelu(c_fc(ln_2(resid_mid))))
    da, grads[name + "mlp.c_proj.weight"], grads[name + "mlp.c_proj.bias"] = linear_backward(
        dx, rec["mlp_post"], p["mlp"]["c_proj"]["w"])
    dln, grads[name + "mlp.c_fc.weight"], grads[name + "mlp.c_fc.bias"] = linear_backward(
        gelu_backward(da, rec["mlp_pre"]), layer_norm(rec["resid_mid"], **p["ln_2"], eps=eps), p["mlp"]["c_fc"]["w"])
    dmid, grads[name + "ln_2.weight"], grads[name + "ln_2.bias"] = layer_norm_backward(dln, rec["resid_mid"], p["ln_2"]["g"], eps)
    dx = dx + dmid  # d loss / d resid_mid = resid_pre + c_proj(z)
    dheads, grads[name + "attn.c_proj.weight"], grads[name + "attn.c_proj.bias"] = linear_backward(
        dx, rec["z"], p["attn"]["c_proj"]["w"])
    return dx, dheads, grads


def run_backward(params, hparams, rec, ids, dy):  # gpt2.run_backward: one sequence from position 0
    """rec = record(params, hparams, ids); dy: d loss / d ln_f's output [n, n_embd] -> {name: grad}
    of every parameter but the LM head's share of wte (lm_backward's)."""
    eps, n_head = hparams.get("layer_norm_epsilon", 1e-5), hparams["n_head"]
    grads = {name: np.zeros_like(a) for name, a in flat(params).items()}
    dx = None
    for layer in reversed(range(-1, len(params["h"]))):  # step L: the end of block L, the start of L + 1
        dx, dheads, g = block_step_backward(dx, dy, rec[layer] if layer >= 0 else None, rec[layer + 1],
                                            params, layer, n_head, eps)
        for name, d in g.items():
            grads[name] += d
        if layer >= 0:
            dy = heads_backward(dheads, rec[layer]["qkv"], n_head)  # d loss / d qkv of block `layer`
    np.add.at(grads["wte.weight"], ids, dx)  # x = wte[ids] + wpe[positions]
    grads["wpe.weight"][: len(ids)] += dx
    return grads


def lm_backward(x, wte, targets, scale):  # gpt2.lm_backward: x [n, n_embd] (ln_f's output) -> loss, dx, dwte
    """loss: the sum over rows of -log softmax(x @ wte^T)[target] (not scaled); dx [n, n_embd],
    dwte [n_vocab, n_embd]: the gradients of scale * loss (the LM head's share of wte's)."""
    logits = x @ wte.T  # [n, n_vocab]
    rows = np.arange(len(targets))
    dlogits = softmax(logits)  # d (-log softmax[target]) / d logits = softmax - onehot(target)
    dlogits[rows, targets] -= 1
    dlogits *= scale
    return -log_softmax(logits)[rows, targets].sum(), dlogits @ wte, dlogits.T @ x


def flat(params):  # the nested parameters as {Hugging Face name: array}, Conv1D weights [in, out]
    out = {"wte.weight": params["wte"], "wpe.weight": params["wpe"],
           "ln_f.weight": params["ln_f"]["g"], "ln_f.bias": params["ln_f"]["b"]}
    for i, layer in enumerate(params["h"]):
        for ln in ("ln_1", "ln_2"):
            out[f"h.{i}.{ln}.weight"], out[f"h.{i}.{ln}.bias"] = layer[ln]["g"], layer[ln]["b"]
        for module, conv in [("attn", "c_attn"), ("attn", "c_proj"), ("mlp", "c_fc"), ("mlp", "c_proj")]:
            out[f"h.{i}.{module}.{conv}.weight"] = layer[module][conv]["w"]
            out[f"h.{i}.{module}.{conv}.bias"] = layer[module][conv]["b"]
    return out


def lm_example(ids, eos=50256):  # a text's tokens -> (inputs, targets): each token predicted from the ones before it
    """As gpt2.score predicts them: the first from <|endoftext|>, the others from their prefix."""
    return [eos] + list(ids[:-1]), list(ids)


def loss_and_grads(params, hparams, texts, eos=50256):  # texts: token lists -> (loss, {name: d loss / d param})
    """The mean of -log p(token) over every token of every text (token-weighted), and its
    gradient with respect to every parameter (flat(params)'s names and shapes). Each text is
    a sequence of its own from position 0."""
    grads = {name: np.zeros_like(a) for name, a in flat(params).items()}
    n_total, loss = sum(len(ids) for ids in texts), 0.0
    for ids in texts:
        if not ids:
            continue
        inputs, targets = lm_example(ids, eos)
        rec = record(params, hparams, inputs)
        text_loss, dx, dwte = lm_backward(rec[-1]["ln_f"], params["wte"], targets, 1 / n_total)  # the mean over all tokens
        loss += text_loss
        grads["wte.weight"] += dwte  # the tied LM head ... (and run_backward adds the embeddings': wte is used twice)
        for name, d in run_backward(params, hparams, rec, inputs, dx).items():
            grads[name] += d
    return loss / n_total, grads


def clip_grad_norm(grads, max_norm):  # torch.nn.utils.clip_grad_norm_ -> the norm before clipping
    total = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads.values()))
    coef = min(max_norm / (total + 1e-6), 1.0)
    for g in grads.values():
        g *= coef
    return total


def adamw(flat_params, grads, state, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0):
    """One step of torch.optim.AdamW, in place. state: {"step": int, "m": {name: array}, "v": ...}.
    Decoupled weight decay on the 2-D tensors only (wte, wpe, Conv1D weights), as nanoGPT's
    configure_optimizers does."""
    state["step"] = t = state.get("step", 0) + 1
    for name, p in flat_params.items():
        g = grads[name]
        m = state.setdefault("m", {}).setdefault(name, np.zeros_like(p))
        v = state.setdefault("v", {}).setdefault(name, np.zeros_like(p))
        if p.ndim >= 2:
            p *= 1 - lr * weight_decay
        m[:] = beta1 * m + (1 - beta1) * g
        v[:] = beta2 * v + (1 - beta2) * g * g
        p -= lr / (1 - beta1**t) * m / (np.sqrt(v) / math.sqrt(1 - beta2**t) + eps)


# --- Interventions (sql/98_intervene.sql) ---------------------------------------------------

def run_edited(params, hparams, ids, edits=None):  # -> logits [n_seq, n_vocab]
    """The forward pass with activations replaced, as TransformerLens's run_with_hooks does.
    edits: {(layer, site): [f, ...]}, each f(array) -> array applied in turn to the site's
    value, [n_seq, ...]; sites as gpt2.run_layers names them: resid_pre (the residual stream
    entering block `layer`; layer n_layer: after the last block), z (the heads' outputs side by
    side, before attn.c_proj), attn_out, mlp_out."""
    eps, n_head, edits, ids = hparams.get("layer_norm_epsilon", 1e-5), hparams["n_head"], edits or {}, list(ids)

    def edit(layer, site, value):
        for f in edits.get((layer, site), []):
            value = f(value.copy())
        return value

    x = params["wte"][ids] + params["wpe"][: len(ids)]  # [n_seq, n_embd]
    for i, p in enumerate(params["h"]):
        x = edit(i, "resid_pre", x)
        q, k, v = np.split(linear(layer_norm(x, **p["ln_1"], eps=eps), **p["attn"]["c_attn"]), 3, axis=-1)
        z = np.hstack([attention(qh, kh, vh) for qh, kh, vh in
                       zip(*(np.split(t, n_head, axis=-1) for t in (q, k, v)))])  # [n_seq, n_embd]
        x = x + edit(i, "attn_out", linear(edit(i, "z", z), **p["attn"]["c_proj"]))
        x = x + edit(i, "mlp_out", mlp(layer_norm(x, **p["ln_2"], eps=eps), **p["mlp"]))
    x = edit(len(params["h"]), "resid_pre", x)
    return layer_norm(x, **params["ln_f"], eps=eps) @ params["wte"].T


def _setter(rows, cols, value):  # an edit that writes value into a[rows, cols]
    def f(a):
        a[rows, cols] = value
        return a
    return f


def intervene(params, hparams, ids, ablate):  # -> logits at the last position [n_vocab]
    """gpt2.intervene: ablate is the JSON array as a list of dicts: {"layer": L, "head": H}
    (that head's slice of z), {"layer": L, "attn": True} (attn_out), {"layer": L, "mlp": True}
    (mlp_out); optional "pos": [positions] (default: every position) and "mode": "mean" (the
    mean over the prompt's positions of that output in the unablated run; default "zero")."""
    dh = hparams["n_embd"] // hparams["n_head"]
    clean = record(params, hparams, ids) if any(e.get("mode") == "mean" for e in ablate) else None
    edits = {}
    for e in ablate:
        site, cols = ("z", slice(e["head"] * dh, (e["head"] + 1) * dh)) if "head" in e else \
                     ("attn_out" if e.get("attn") else "mlp_out", slice(None))
        rows = list(e["pos"]) if "pos" in e else slice(None)
        value = clean[e["layer"]][site][:, cols].mean(0) if e.get("mode") == "mean" else 0.0
        edits.setdefault((e["layer"], site), []).append(_setter(rows, cols, value))
    return run_edited(params, hparams, ids, edits)[-1]


def patch_sweep(params, hparams, clean, corrupted, answer, wrong, site="resid_pre"):
    """gpt2.patch_sweep: [(layer, pos, head, logit_diff)]: the corrupted prompt run with one
    activation of the clean run in place (a position's resid_pre, attn_out or mlp_out, or for
    site 'head' one head's slice of z at every position), logit_diff = logit(answer) -
    logit(wrong) at the last position. Every run from scratch: the readable way (SQL starts
    each at the patched layer, from the corrupted run's residual stream)."""
    assert len(clean) == len(corrupted)
    dh = hparams["n_embd"] // hparams["n_head"]
    rec = record(params, hparams, clean)
    out = []
    for layer in range(hparams["n_layer"]):
        if site == "head":
            cases = [(None, h, "z", slice(None), slice(h * dh, (h + 1) * dh)) for h in range(hparams["n_head"])]
        else:
            cases = [(p, None, site, [p], slice(None)) for p in range(len(clean))]
        for pos, head, name, rows, cols in cases:
            edit = _setter(rows, cols, rec[layer][name][rows, cols])
            logits = run_edited(params, hparams, corrupted, {(layer, name): [edit]})[-1]
            out.append((layer, pos, head, logits[answer] - logits[wrong]))
    return out


def logit_attribution(params, hparams, ids, token):  # -> {component: contribution}
    """Direct logit attribution at the last position: how much each component's output, read
    out through ln_f and the unembedding, adds to the logit of `token`. ln_f's scale is frozen
    at the run's own value sigma (so it is linear): contribution(c) = (g * (c - mean(c)) /
    sigma) . wte[token]. Components: ("embed",), ("pos_embed",), ("head", L, H) (z's slice of
    head H through its rows of attn.c_proj), ("attn_bias", L) (attn.c_proj's bias),
    ("mlp", L) (mlp_out), ("ln_f_bias",) (b . wte[token]); they sum to the logit."""
    eps, d, ids = hparams.get("layer_norm_epsilon", 1e-5), hparams["n_embd"], list(ids)
    dh = d // hparams["n_head"]
    rec = record(params, hparams, ids)
    x = rec[-1]["resid_pre"][-1]
    sigma = np.sqrt(np.var(x) + eps)
    g, w = params["ln_f"]["g"], params["wte"][token]

    def dla(c):
        return float((g * (c - c.mean()) / sigma) @ w)

    out = {("embed",): dla(params["wte"][ids[-1]]), ("pos_embed",): dla(params["wpe"][len(ids) - 1])}
    for layer, (p, r) in enumerate(zip(params["h"], rec)):
        proj = p["attn"]["c_proj"]
        for h in range(hparams["n_head"]):
            out[("head", layer, h)] = dla(r["z"][-1, h * dh:(h + 1) * dh] @ proj["w"][h * dh:(h + 1) * dh])
        out[("attn_bias", layer)] = dla(proj["b"])
        out[("mlp", layer)] = dla(r["mlp_out"][-1])
    out[("ln_f_bias",)] = float(params["ln_f"]["b"] @ w)
    return out
