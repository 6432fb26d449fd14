"""The NumPy reference and the synthetic checkpoints, checked independently of any SQL.

The strongest check compares with Hugging Face transformers' GPT2LMHeadModel; it runs
where transformers and torch are installed and is skipped otherwise.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest

import reference as R
import torch_twin
import synthetic
from compare import assert_close

PROMPT = [15496, 995, 11, 314, 716, 257, 1332, 286, 262]  # "Hello world, I am a test of the"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = synthetic.write_checkpoint(tmp_path_factory.mktemp("tiny"), **synthetic.CONFIGS["tiny"],
                                      seed=1)
    return (path, *R.load(path))


# ---- the math, against direct formulas and known values ----

def test_gelu_known_values():
    x = np.array([-3.0, -1.0, 0.0, 0.5, 1.0, 3.0])
    direct = [0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3))) for v in x]
    assert_close("gelu vs formula", R.gelu(x), direct, 1e-15)
    known = [0.8411919906082768, -0.15880800939172324]
    assert_close("gelu(1), gelu(-1)", R.gelu(np.array([1.0, -1.0])), known, 1e-15)
    erf_gelu = [0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x]  # the exact GELU: close, not equal
    assert_close("gelu vs erf form", R.gelu(x), erf_gelu, 1e-3)


def test_softmax_known_values():
    assert_close("softmax([0, ln 3])", R.softmax(np.array([0.0, math.log(3)])), [0.25, 0.75], 1e-15)
    assert_close("no overflow", R.softmax(np.array([1000.0, 1000.0])), [0.5, 0.5], 0)
    assert_close("-inf is zero", R.softmax(np.array([[0.0, -np.inf], [1.0, 1.0]])), [[1, 0], [0.5, 0.5]], 0)
    x = np.random.default_rng(0).normal(size=(3, 7))
    direct = np.exp(x) / np.exp(x).sum(-1, keepdims=True)
    assert_close("softmax vs formula", R.softmax(x), direct, 1e-15)
    assert_close("shift invariance", R.softmax(x + 42.0), direct, 1e-15)


def test_layer_norm_known_values():
    y = R.layer_norm(np.array([[1.0, 2.0, 3.0]]), g=np.ones(3), b=np.zeros(3), eps=0.0)
    assert_close("layer_norm([1, 2, 3])", y, [[-math.sqrt(1.5), 0.0, math.sqrt(1.5)]], 1e-15)
    rng = np.random.default_rng(0)
    x, g, b = rng.normal(3, 2, size=(4, 16)), rng.normal(size=16), rng.normal(size=16)
    for i, row in enumerate(x):  # one row at a time, straight from the definition
        mu = sum(row) / 16
        var = sum((v - mu) ** 2 for v in row) / 16  # biased variance, as GPT-2
        direct = g * (row - mu) / math.sqrt(var + 1e-5) + b
        assert_close(f"layer_norm row {i}", R.layer_norm(x, g, b, 1e-5)[i], direct, 1e-13)


def test_attention_is_causal_and_per_head(tiny):
    _, hp, p = tiny
    ids = PROMPT + [50256]
    changed = PROMPT[:5] + [42] + PROMPT[6:] + [50256]  # position 5 differs
    a, b = R.forward(p, hp, ids), R.forward(p, hp, changed)
    assert_close("positions before the change", a[:5], b[:5], 0)
    assert np.abs(a[5:] - b[5:]).min(axis=-1).max() > 0, "later positions must see the change"
    rng = np.random.default_rng(0)
    q, k, v = rng.normal(size=(3, 6, 8))
    scores = q @ k.T / math.sqrt(8)
    # row i sees keys 0..i
    direct = np.stack([R.softmax(scores[i, : i + 1]) @ v[: i + 1] for i in range(6)])
    assert_close("attention vs per-row formula", R.attention(q, k, v), direct, 1e-14)
    assert_close("one query = last row", R.attention(q[-1:], k, v), direct[-1:], 1e-14)


# ---- the KV cache and the sliding window agree with forward ----

def test_prefill_and_decode_match_forward(tiny):
    _, hp, p = tiny
    want = R.forward(p, hp, PROMPT)  # [n_seq, n_vocab]
    logits, cache = R.prefill(p, hp, PROMPT[:3])
    assert_close("prefill", logits, want[2], 1e-10)
    for pos in range(3, len(PROMPT)):
        logits, cache = R.decode_step(p, hp, cache, PROMPT[pos], pos)
        assert_close(f"decode_step at {pos}", logits, want[pos], 1e-10)
    assert [kv[0].shape for kv in cache] == [(len(PROMPT), hp["n_embd"])] * hp["n_layer"]


@pytest.mark.parametrize("n_prompt", [9, 60, 64, 70])  # inside, crossing, at and past n_positions = 64
def test_generate_greedy_is_the_sliding_window_definition(tiny, n_prompt):
    _, hp, p = tiny
    prompt = (PROMPT * 8)[:n_prompt]
    got = R.generate_greedy(p, hp, prompt, 8)
    n_ctx, seq = hp["n_positions"], list(prompt)
    start = len(seq) - n_ctx // 2 if len(seq) > n_ctx else 0
    for _ in range(8):  # the docstring's definition, step by step, from full forward passes
        seq.append(int(np.argmax(R.forward(p, hp, seq[start:])[-1])))
        if len(seq) - start > n_ctx:
            start = len(seq) - n_ctx // 2
    assert got == seq[n_prompt:]


def test_recorded_activations_are_consistent(tiny):
    _, hp, p = tiny
    rec = R.record(p, hp, PROMPT)
    assert_close("logits", rec[-1]["logits"], R.forward(p, hp, PROMPT), 1e-12)
    for layer, r in enumerate(rec[:-1]):
        ln_1 = R.layer_norm(r["resid_pre"], **p["h"][layer]["ln_1"])
        assert_close("ln_1 feeds attn", R.mha(ln_1, **p["h"][layer]["attn"], n_head=hp["n_head"])[0], r["attn_out"], 0)
        assert_close("resid_mid = resid_pre + attn_out", r["resid_mid"], r["resid_pre"] + r["attn_out"], 1e-12)
        assert_close("next resid_pre = resid_mid + mlp_out", rec[layer + 1]["resid_pre"], r["resid_mid"] + r["mlp_out"], 1e-12)
        assert r["qkv"].shape == (len(PROMPT), 3 * hp["n_embd"]) and r["mlp_pre"].shape == (len(PROMPT), 4 * hp["n_embd"])


def test_float32_option(tiny):
    path, hp, p = tiny
    _, p32 = R.load(path, dtype=np.float32)
    logits32 = R.forward(p32, hp, PROMPT)
    assert logits32.dtype == np.float32
    assert_close("float32 vs float64 logits", logits32, R.forward(p, hp, PROMPT), 1e-3)


# ---- the synthetic checkpoints ----

def test_checkpoint_layout(tiny):
    import json

    from safetensors import safe_open

    path, hp, _ = tiny
    names = sorted(f.name for f in path.iterdir())
    assert names == ["config.json", "merges.txt", "model.safetensors", "vocab.json"]
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["model_type"] == "gpt2" and cfg["architectures"] == ["GPT2LMHeadModel"]
    assert cfg["activation_function"] == "gelu_new" and cfg["layer_norm_epsilon"] == 1e-5
    shape = [cfg[k] for k in ("n_layer", "n_embd", "n_head", "n_positions", "n_ctx", "vocab_size")]
    assert shape == [2, 64, 4, 64, 64, 50257]
    with safe_open(path / "model.safetensors", "np") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    assert shapes["wte.weight"] == (50257, 64) and shapes["wpe.weight"] == (64, 64)
    assert shapes["h.1.attn.c_attn.weight"] == (64, 192) and shapes["h.1.mlp.c_proj.weight"] == (256, 64)
    assert len(shapes) == 2 + 2 + 12 * 2
    sha = {n: hashlib.sha256((path / n).read_bytes()).hexdigest()[:16] for n in ("vocab.json", "merges.txt")}
    assert sha == {"vocab.json": "196139668be63f3b", "merges.txt": "1ce1664773c50f3e"}  # OpenAI's files


def test_variants_load_identically(tiny, tmp_path):
    path, _, p = tiny
    args = dict(**synthetic.CONFIGS["tiny"], seed=1)
    full = synthetic.write_checkpoint(tmp_path / "full", **args, prefix=True, mask_buffers=True,
                                      lm_head=True)
    assert (full / "model.safetensors").read_bytes() != (path / "model.safetensors").read_bytes()
    _, q = R.load(full)
    assert len(_leaves(p)) == len(_leaves(q)) == 2 + 2 + 12 * 2
    for i, (a, b) in enumerate(zip(_leaves(p), _leaves(q))):
        assert_close(f"tensor {i} with prefix, buffers and lm_head", b, a, 0)
    half = synthetic.write_checkpoint(tmp_path / "half", **args, dtype="float16")
    _, h = R.load(half)
    for i, (a, b) in enumerate(zip(_leaves(p), _leaves(h))):
        assert_close(f"tensor {i} from a float16 file", b, a.astype(np.float16), 0)
    other = synthetic.write_checkpoint(tmp_path / "other", **args)
    same = (other / "model.safetensors").read_bytes() == (path / "model.safetensors").read_bytes()
    assert same, "the same seed must give the same file"


def _leaves(x):
    if isinstance(x, dict):
        return [leaf for k in sorted(x) for leaf in _leaves(x[k])]
    if isinstance(x, list):
        return [leaf for item in x for leaf in _leaves(item)]
    return [x]


def test_random_model_is_not_degenerate(tiny):
    _, hp, p = tiny
    logits = R.forward(p, hp, PROMPT)
    assert 1 < logits.std() < 10, f"logit spread {logits.std():.2f}"
    top = R.softmax(logits).max(-1)
    assert 0.01 < top.mean() < 0.9, f"mean top probability {top.mean():.3f}"
    out = R.generate_greedy(p, hp, PROMPT, 20)
    assert len(set(out)) >= 8, f"greedy output collapses: {out}"


# ---- against Hugging Face transformers (the independent implementation) ----

@pytest.mark.parametrize("name,variant", [
    ("tiny", {}), ("tiny", {"prefix": True, "mask_buffers": True}), ("wide", {"lm_head": True})])
def test_matches_transformers(tmp_path, name, variant):
    pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    from transformers import GPT2LMHeadModel

    path = synthetic.write_checkpoint(tmp_path, **synthetic.CONFIGS[name], seed=3, **variant)
    hp, p = R.load(path)
    model = GPT2LMHeadModel.from_pretrained(path, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        out = model(torch.tensor([PROMPT]), output_hidden_states=True)
    rec = R.record(p, hp, PROMPT)
    assert_close("embed", out.hidden_states[0][0].numpy(), rec[0]["resid_pre"], 1e-5)
    if hp["n_layer"] > 1:  # HF's last hidden state already went through ln_f
        assert_close("block 0", out.hidden_states[1][0].numpy(), rec[1]["resid_pre"], 1e-4)
    assert_close("logits", out.logits[0].numpy(), rec[-1]["logits"], 1e-4)
    with torch.no_grad():
        ids = model.generate(torch.tensor([PROMPT]), max_new_tokens=20, do_sample=False,
                             attention_mask=torch.ones(1, len(PROMPT), dtype=torch.long),
                             pad_token_id=50256)
    assert ids[0, len(PROMPT):].tolist() == R.generate_greedy(p, hp, PROMPT, 20)


# ---- training: the hand-written backward against PyTorch's autograd ----

TEXTS = [[464, 2068, 7586, 21831, 18045, 625, 262], [15496, 995], [40, 716, 257, 1332, 286, 262, 3303, 13, 50, 51, 52]]


def torch_loss_and_grads(path, texts, dtype="float64", model=None):
    """transformers' GPT2LMHeadModel on the same checkpoint: the token-weighted mean loss of
    predicting each text's tokens from <|endoftext|> and their prefix, and its gradients."""
    torch = pytest.importorskip("torch")
    from transformers import GPT2LMHeadModel

    model = model or GPT2LMHeadModel.from_pretrained(path, torch_dtype=getattr(torch, dtype))
    model.zero_grad()
    loss = torch_twin.lm_loss(model, texts)
    loss.backward()
    grads = {name.removeprefix("transformer."): p.grad.numpy().copy() for name, p in model.named_parameters()
             if name != "lm_head.weight"}  # tied: the same tensor as wte, its gradient holds both uses
    return float(loss.detach()), grads


def test_backward_matches_torch_autograd(tiny):
    pytest.importorskip("transformers")
    path, hp, p = tiny
    loss, grads = R.loss_and_grads(p, hp, TEXTS)
    torch_loss, torch_grads = torch_loss_and_grads(path, TEXTS)
    assert abs(loss - torch_loss) < 1e-10, (loss, torch_loss)
    assert set(grads) == set(torch_grads)
    for name, g in torch_grads.items():
        assert_close(f"d loss / d {name}", grads[name], g, 1e-10 * max(1.0, np.abs(g).max()))


def test_adamw_matches_torch(tiny):
    """Three steps of the NumPy twin of AdamW (weight decay, clipping) against torch.optim.AdamW."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers import GPT2LMHeadModel

    path, hp, p = tiny
    model = GPT2LMHeadModel.from_pretrained(path, torch_dtype=torch.float64)
    decay = [q for n, q in model.named_parameters() if q.dim() >= 2 and n != "lm_head.weight"]
    other = [q for n, q in model.named_parameters() if q.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    params, state = R.flat(p), {}
    for step in range(3):
        loss, grads = R.loss_and_grads(p, hp, TEXTS)
        norm = R.clip_grad_norm(grads, 1.0)
        R.adamw(params, grads, state, lr=1e-2, beta1=0.9, beta2=0.95, weight_decay=0.1)
        torch_loss, _ = torch_loss_and_grads(path, TEXTS, model=model)
        torch_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
        opt.step()
        assert abs(loss - torch_loss) < 1e-10 and abs(norm - torch_norm) < 1e-10, (step, loss, torch_loss, norm, torch_norm)
    for name, q in model.named_parameters():
        if name != "lm_head.weight":
            assert_close(f"{name} after 3 steps", params[name.removeprefix("transformer.")], q.detach().numpy(), 1e-10)
