"""Every backward stage of training ALONE against its NumPy twin (tests/reference.py), so that a
wrong gradient names its stage: ln_backward, gelu_backward, linear_backward, attend_backward,
mha_backward, block_step_backward, lm_backward, run_backward.

Each stage gets its inputs from the recorded tape of a tiny model (gpt2.run_layers(...,
record => true), as tests/test_model.py checks the forward sites) and a random upstream
gradient; the twin gets the same float32 numbers (read back from the tape), so what differs is
the stage's own arithmetic: float32 in pgvector against float64 in NumPy. Tolerance: TOL
relative to the largest entry of the twin's gradient. The twins that are not the forward's
plain chain rule (heads_backward, block_step_backward, lm_backward) are checked against
PyTorch's autograd below; run_backward's twin is reference.loss_and_grads' loop, which
tests/test_reference.py checks against PyTorch.
"""

from __future__ import annotations

import numpy as np
import pytest

import reference
import synthetic
from compare import assert_close

TOL = 1e-5                                                       # relative to the twin's largest entry (float32)
TAPES = {"serial": [5, 3], "parallel": [5, 30]}                 # rows below and above gpt2.parallel_min() (32)
RNG_SEED = 23


def lit(a) -> str:
    """An [n, d] array as a vector[] literal (float32 numbers, exactly)."""
    return "{" + ",".join('"[' + ",".join(repr(float(x)) for x in row) + ']"' for row in np.asarray(a, np.float32)) + "}"


def rows(values) -> np.ndarray:
    return np.array(values, dtype=np.float64)


def VECS(expr: str) -> str:
    """SQL: a vector[] expression as real[][] rows in order."""
    return f"ARRAY(SELECT v::real[] FROM unnest({expr}) WITH ORDINALITY AS u(v, t) ORDER BY t)"


def check(stage, got, want):
    """assert_close relative to the twin's largest entry, naming the stage."""
    want = np.asarray(want, np.float64)
    scale = np.abs(want).max()
    assert scale > 0, f"{stage}: the twin's gradient is 0, the check shows nothing"
    assert_close(stage, np.asarray(got, np.float64) / scale, want / scale, TOL)


class Tape:
    """A tiny model's recorded forward pass over some sequences (from position 0 each)."""

    def __init__(self, conn, model, directory, lengths, seed):
        self.conn, self.model = conn, model
        self.hparams, params = reference.load(directory, dtype=np.float32)
        self.params = _to64(params)
        self.eps = self.hparams.get("layer_norm_epsilon", 1e-5)
        self.n_layer, self.n_head = self.hparams["n_layer"], self.hparams["n_head"]
        self.rng = np.random.default_rng(seed)
        self.lengths = lengths
        self.ids = [int(t) for t in self.rng.integers(0, self.hparams["vocab_size"], sum(lengths))]
        conn.execute("SELECT gpt2.use_model(%s)", (model,))
        conn.execute("SELECT gpt2.prepare_backward()")
        conn.execute("SELECT gpt2.kv_reset()")
        self.seqs, self.positions = conn.execute("SELECT * FROM gpt2.scratch_seqs(%s)", (lengths,)).fetchone()
        self.final = rows(conn.execute(
            f"SELECT {VECS('gpt2.run_layers(%s, %s, gpt2.embed_at(%s, %s), 0, true)')}",
            (self.seqs, self.positions, self.ids, self.positions)).fetchone()[0])
        conn.execute("SELECT gpt2.kv_drop(%s)", (sorted(set(self.seqs)),))
        self.site = {(layer, site): rows(xs) for layer, site, xs in conn.execute(
            f"SELECT layer, site, {VECS('xs')} FROM tape")}
        starts = np.cumsum([0] + lengths)
        self.slices = [slice(a, b) for a, b in zip(starts[:-1], starts[1:])]

    def upstream(self, n, d):
        """A random upstream gradient, float32 numbers."""
        return self.rng.standard_normal((n, d)).astype(np.float32).astype(np.float64)

    def rec(self, s):
        """The twin's record() of sequence s, built from the SQL tape (the same float32 numbers)."""
        out = [{site: self.site[layer, site][s] for site in ("resid_pre", "qkv", "z", "resid_mid", "mlp_pre", "mlp_post")}
               for layer in range(self.n_layer)]
        return out + [{"resid_pre": self.site[self.n_layer, "resid_pre"][s], "ln_f": self.final[s]}]

    def layer(self, layer):
        return self.params["h"][layer]


def _to64(tree):
    if isinstance(tree, dict):
        return {k: _to64(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_to64(v) for v in tree]
    return np.asarray(tree, np.float64)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, runner):
    directory = synthetic.write_checkpoint(tmp_path_factory.mktemp("backward"), **synthetic.CONFIGS["tiny"], seed=23)
    result = runner(["load", str(directory), "--name", "backward-tiny"])
    assert result.exit_code == 0, result.output
    return directory


@pytest.fixture(scope="module", params=list(TAPES))
def tape(request, conn, checkpoint):
    return Tape(conn, "backward-tiny", checkpoint, TAPES[request.param], RNG_SEED)


def test_ln_backward(conn, tape):
    for tensor, layer, site in [("ln_1", 0, (0, "resid_pre")), ("ln_2", 1, (1, "resid_mid")),
                                ("ln_f", 0, (tape.n_layer, "resid_pre"))]:
        x = tape.site[site]
        dy = tape.upstream(*x.shape)
        dx, dg, db = conn.execute(
            f"SELECT {VECS('r.dx')}, r.dg::real[], r.db::real[] FROM gpt2.ln_backward(%s, %s, %s::vector[], %s::vector[]) AS r",
            (tensor, layer, lit(x), lit(dy))).fetchone()
        g = tape.params["ln_f"]["g"] if tensor == "ln_f" else tape.layer(layer)[tensor]["g"]
        want = reference.layer_norm_backward(dy, x, g, tape.eps)
        for name, got, w in zip(("dx", "dg", "db"), (dx, dg, db), want):
            check(f"ln_backward {tensor}.{layer} {name}", got, w)


def test_gelu_backward(conn, tape):
    h = tape.site[0, "mlp_pre"]
    dy = tape.upstream(*h.shape)
    got = conn.execute(f"SELECT {VECS('gpt2.gelu_backward(%s::vector[], %s::vector[])')}", (lit(h), lit(dy))).fetchone()[0]
    check("gelu_backward dh", got, reference.gelu_backward(dy, h))


@pytest.mark.parametrize("tensor, layer, site", [("attn.c_attn", 1, None), ("attn.c_proj", 0, "z"),
                                                  ("mlp.c_fc", 1, None), ("mlp.c_proj", 0, "mlp_post")])
def test_linear_backward(conn, tape, tensor, layer, site):
    p = tape.layer(layer)
    if site is None:                                             # the input is a layer norm's output
        ln, src = ("ln_1", "resid_pre") if tensor == "attn.c_attn" else ("ln_2", "resid_mid")
        x = rows(conn.execute(f"SELECT {VECS('gpt2.ln(%s, %s, %s::vector[])')}",
                              (ln, layer, lit(tape.site[layer, src]))).fetchone()[0])
    else:
        x = tape.site[layer, site]
    w = p[tensor.split(".")[0]][tensor.split(".")[1]]["w"]
    dy = tape.upstream(x.shape[0], w.shape[1])
    dx, dw, db = conn.execute(
        f"SELECT {VECS('r.dx')}, {VECS('r.dw')}, r.db::real[] "
        "FROM gpt2.linear_backward(%s, %s, %s::vector[], %s::vector[]) AS r",
        (tensor, layer, lit(x), lit(dy))).fetchone()
    want_dx, want_dw, want_db = reference.linear_backward(dy, x, w)
    check(f"linear_backward {tensor}.{layer} dx", dx, want_dx)
    check(f"linear_backward {tensor}.{layer} dW (by output column)", dw, want_dw.T)
    check(f"linear_backward {tensor}.{layer} db", db, want_db)


def test_attend_backward(conn, tape):
    s = tape.slices[-1]
    qkv = tape.site[1, "qkv"][s]
    dz = tape.upstream(qkv.shape[0], qkv.shape[1] // 3)
    want = np.split(reference.heads_backward(dz, qkv, tape.n_head), 3, axis=-1)    # dq, dk, dv, heads side by side
    dh = dz.shape[1] // tape.n_head
    for h in range(tape.n_head):
        got = conn.execute(f"SELECT {VECS('r.dq')}, {VECS('r.dk')}, {VECS('r.dv')} "
                           "FROM gpt2.attend_backward(%s, %s::vector[], %s::vector[]) AS r",
                           (h, lit(qkv), lit(dz))).fetchone()
        for name, g, w in zip(("dq", "dk", "dv"), got, want):
            check(f"attend_backward head {h} {name}", g, w[:, h * dh:(h + 1) * dh])


def test_mha_backward(conn, tape):
    for layer in range(tape.n_layer):
        qkv = tape.site[layer, "qkv"]
        dz = tape.upstream(qkv.shape[0], qkv.shape[1] // 3)
        got = conn.execute(f"SELECT {VECS('gpt2.mha_backward(%s, %s::vector[], %s::vector[])')}",
                           (tape.seqs, lit(qkv), lit(dz))).fetchone()[0]
        want = np.vstack([reference.heads_backward(dz[s], qkv[s], tape.n_head) for s in tape.slices])
        check(f"mha_backward layer {layer} dqkv ({len(tape.slices)} sequences)", got, want)


def sql_grads(conn, query, params):
    """{name: [rows] array} of a gpt2.param_grad[] column."""
    return {name: rows(g) for name, g in conn.execute(
        f"SELECT (g).name, {VECS('(g).rows')} FROM ({query}) AS q(gs), unnest(q.gs) AS g", params)}


def grad_rows(name, g):
    """A twin's gradient in gpt2.param_grad's layout: Conv1D weights by output column, 1-D as one row."""
    return g.T if name.endswith("weight") and g.ndim == 2 and ".c_" in name else np.atleast_2d(g)


@pytest.mark.parametrize("layer", [1, 0, -1])
def test_block_step_backward(conn, tape, layer):
    x_out = tape.site[layer + 1, "resid_pre"]
    n, d = x_out.shape
    dy = tape.upstream(n, 3 * d if layer + 1 < tape.n_layer else d)
    dx_out = None if layer + 1 == tape.n_layer else tape.upstream(n, d)
    at = lambda site: lit(tape.site[layer, site]) if layer >= 0 else None
    args = (layer, at("z"), at("resid_mid"), at("mlp_pre"), at("mlp_post"), lit(x_out),
            None if dx_out is None else lit(dx_out), lit(dy))
    call = ("gpt2.block_step_backward(%s, %s::vector[], %s::vector[], %s::vector[], %s::vector[], %s::vector[], "
            "%s::vector[], %s::vector[])")
    dx, dheads = conn.execute(f"SELECT {VECS('r.dx')}, {VECS('r.dheads')} FROM {call} AS r", args).fetchone()
    got = sql_grads(conn, f"SELECT r.grads FROM {call} AS r", args)
    rec = {site: tape.site[layer, site] for site in ("z", "resid_mid", "mlp_pre", "mlp_post")} if layer >= 0 else None
    want_dx, want_dheads, want = reference.block_step_backward(dx_out, dy, rec, {"resid_pre": x_out}, tape.params,
                                                              layer, tape.n_head, tape.eps)
    check(f"block_step_backward {layer} dx", dx, want_dx)
    if layer >= 0:
        check(f"block_step_backward {layer} dheads", dheads, want_dheads)
    else:
        assert dheads == [], "block_step_backward -1: dheads must be NULL"
    assert sorted(got) == sorted(want), f"block_step_backward {layer}: parameters {sorted(got)} != {sorted(want)}"
    for name, g in want.items():
        check(f"block_step_backward {layer} d {name}", got[name], grad_rows(name, g))


def test_lm_backward(conn, tape):
    n = len(tape.final)
    targets = [int(t) for t in tape.rng.integers(0, tape.hparams["vocab_size"], n)]
    scale = 1.0 / n
    wte = tape.params["wte"]
    want_loss, want_dx, want_dwte = reference.lm_backward(tape.final, wte, targets, scale)
    some = sorted(set(targets) | {int(t) for t in tape.rng.integers(0, len(wte), 16)})   # dwte: rows of these tokens
    loss, dx, n_rows, dwte = conn.execute(
        f"""WITH r AS MATERIALIZED (SELECT * FROM gpt2.lm_backward(%s::vector[], %s, %s))
            SELECT r.loss, {VECS('r.dx')}, cardinality(r.dwte), ARRAY(SELECT r.dwte[k + 1]::real[] FROM unnest(%s::int[]) AS k)
            FROM r""", (lit(tape.final), targets, scale, some)).fetchone()
    assert abs(loss - want_loss) <= TOL * abs(want_loss), f"lm_backward loss: {loss} != {want_loss}"
    check("lm_backward dx", dx, want_dx)
    assert n_rows == len(wte), f"lm_backward dwte: {n_rows} rows, not n_vocab = {len(wte)}"
    check("lm_backward dwte (some tokens' rows)", dwte, want_dwte[some])


def test_run_backward(conn, tape):
    dys = tape.upstream(*tape.final.shape)
    conn.execute("SELECT gpt2.grads_reset()")
    conn.execute("SELECT gpt2.run_backward(%s, %s, %s, %s::vector[])", (tape.seqs, tape.positions, tape.ids, lit(dys)))
    got = {}
    for name, i, g in conn.execute("SELECT name, i, g::real[] FROM grads ORDER BY name, i"):
        got.setdefault(name, {})[i] = g
    want = {name: np.zeros_like(a) for name, a in reference.flat(tape.params).items()}
    for s in tape.slices:
        for name, d in reference.run_backward(tape.params, tape.hparams, tape.rec(s), tape.ids[s], dys[s]).items():
            want[name] += d
    assert sorted(got["wte.weight"]) == sorted(set(tape.ids)), "run_backward: wte rows are not the tokens' rows"
    assert sorted(got["wpe.weight"]) == list(range(max(tape.lengths))), "run_backward: wpe rows are not the positions'"
    assert sorted(got) == sorted(want), f"run_backward: parameters {sorted(got)} != {sorted(want)}"
    for name, w in want.items():
        w = grad_rows(name, w)
        keys = sorted(got[name])
        check(f"run_backward d {name}", [got[name][k] for k in keys], w[keys])


# The new twins against PyTorch's autograd (float64): each is d (output . upstream) / d inputs.

def test_twins_match_torch_autograd(checkpoint):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    hparams, params = reference.load(checkpoint)
    eps, n_head, n_layer = hparams.get("layer_norm_epsilon", 1e-5), hparams["n_head"], hparams["n_layer"]
    rng = np.random.default_rng(RNG_SEED)
    rec = reference.record(params, hparams, [int(t) for t in rng.integers(0, hparams["vocab_size"], 7)])
    T = lambda a: torch.tensor(a, dtype=torch.float64, requires_grad=True)

    # heads_backward: z = the heads of qkv
    qkv = T(rec[0]["qkv"])
    n, d = qkv.shape[0], qkv.shape[1] // 3
    q, k, v = (t.reshape(n, n_head, -1).transpose(0, 1) for t in qkv.split(d, dim=-1))
    mask = torch.triu(torch.full((n, n), float("-inf"), dtype=torch.float64), 1)
    z = (torch.softmax(q @ k.transpose(1, 2) / (d // n_head) ** 0.5 + mask, -1) @ v).transpose(0, 1).reshape(n, d)
    dz = rng.standard_normal((n, d))
    (z * torch.tensor(dz)).sum().backward()
    assert_close("heads_backward vs torch", reference.heads_backward(dz, rec[0]["qkv"], n_head), qkv.grad.numpy(), 1e-10)

    # block_step_backward of step 0: x_out = resid_mid + mlp(ln_2(resid_mid)), resid_mid = resid_pre + c_proj(z);
    # y = c_attn(ln_1(x_out)) of block 1
    assert n_layer == 2                                          # the tiny config: step 0 reads blocks 0 and 1
    xs, heads = T(rec[0]["resid_pre"]), T(rec[0]["z"])
    w = {name: T(a) for name, a in reference.flat(params).items()}
    mid = xs + heads @ w["h.0.attn.c_proj.weight"] + w["h.0.attn.c_proj.bias"]
    h = F.layer_norm(mid, (d,), w["h.0.ln_2.weight"], w["h.0.ln_2.bias"], eps) @ w["h.0.mlp.c_fc.weight"] + w["h.0.mlp.c_fc.bias"]
    x_out = mid + F.gelu(h, approximate="tanh") @ w["h.0.mlp.c_proj.weight"] + w["h.0.mlp.c_proj.bias"]
    y = F.layer_norm(x_out, (d,), w["h.1.ln_1.weight"], w["h.1.ln_1.bias"], eps) @ w["h.1.attn.c_attn.weight"] + w["h.1.attn.c_attn.bias"]
    dx_out, dy = rng.standard_normal((n, d)), rng.standard_normal((n, 3 * d))
    ((x_out * torch.tensor(dx_out)).sum() + (y * torch.tensor(dy)).sum()).backward()
    dx, dheads, grads = reference.block_step_backward(dx_out, dy, rec[0], rec[1], params, 0, n_head, eps)
    assert_close("block_step_backward dx vs torch (d / d resid_pre)", dx, xs.grad.numpy(), 1e-10)
    assert_close("block_step_backward dheads vs torch", dheads, heads.grad.numpy(), 1e-10)
    for name, g in grads.items():
        assert_close(f"block_step_backward d {name} vs torch", g, w[name].grad.numpy(), 1e-10)

    # lm_backward: scale * cross entropy summed over rows
    x, wte = T(rec[-1]["ln_f"]), T(params["wte"])
    targets = [int(t) for t in rng.integers(0, hparams["vocab_size"], n)]
    loss = F.cross_entropy(x @ wte.T, torch.tensor(targets), reduction="sum")
    (loss / n).backward()
    want_loss, want_dx, want_dwte = reference.lm_backward(rec[-1]["ln_f"], params["wte"], targets, 1 / n)
    assert abs(want_loss - loss.item()) <= 1e-10 * abs(loss.item())
    assert_close("lm_backward dx vs torch", want_dx, x.grad.numpy(), 1e-10)
    assert_close("lm_backward dwte vs torch", want_dwte, wte.grad.numpy(), 1e-10)
