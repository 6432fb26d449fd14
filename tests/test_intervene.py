"""Interventions (sql/98_intervene.sql): ablation, activation patching and direct logit
attribution, against the NumPy reference (tests/reference.py intervene, patch_sweep,
logit_attribution) and against PyTorch forward hooks on Hugging Face's GPT2LMHeadModel,
float32, 1e-4 on logits. Also: the unablated run is the plain forward pass exactly, patching
a run with its own activations changes nothing, bad input is one line, and a generation in
progress on the connection goes on undisturbed."""

from __future__ import annotations

import json

import numpy as np
import psycopg
import pytest

import reference
import synthetic
from compare import assert_close

TOL = 1e-4
CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPTED = "When John and Mary went to the store, John gave a drink to"
MARY, JOHN = 5335, 1757  # " Mary", " John"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, runner):
    directory = synthetic.write_checkpoint(tmp_path_factory.mktemp("intervene"), **synthetic.CONFIGS["tiny"], seed=41)
    assert runner(["load", str(directory), "--name", "intervene-tiny"]).exit_code == 0
    return ("intervene-tiny", directory) + reference.load(directory)


def ids_of(conn, text):
    return conn.execute("SELECT gpt2.tokenize(%s)", (text,)).fetchone()[0]


def intervene(conn, name, prompt, ablate):
    return np.array(conn.execute("SELECT gpt2.intervene(%s, %s, %s)", (prompt, json.dumps(ablate), name)).fetchone()[0])


def sweep(conn, name, site, clean=CLEAN, corrupted=CORRUPTED):
    return conn.execute("SELECT layer, pos, head, logit_diff FROM gpt2.patch_sweep(%s, %s, ' Mary', ' John', %s, %s) "
                        "ORDER BY layer, pos, head", (clean, corrupted, site, name)).fetchall()


ABLATIONS = [
    [{"layer": 0, "head": 0}],                                   # the first head and the last: slices at the edges
    [{"layer": 1, "head": 3}, {"layer": 1, "head": 0}],
    [{"layer": 0, "head": 2, "pos": [3, 4]}],
    [{"layer": 1, "head": 1, "mode": "mean"}],
    [{"layer": 0, "attn": True}],
    [{"layer": 1, "mlp": True, "pos": [13]}],
    [{"layer": 0, "mlp": True, "mode": "mean", "pos": [0, 5]}, {"layer": 1, "attn": True, "mode": "mean"}],
    [{"layer": 0, "head": 1}, {"layer": 0, "attn": True, "pos": [2]}, {"layer": 1, "mlp": True}],
    [{"layer": 0, "mlp": True, "mode": "mean"}, {"layer": 0, "mlp": True}],   # given twice: the last one counts
]


def test_no_ablation_is_the_plain_forward_pass_exactly(conn, tiny):
    name = tiny[0]
    forward = conn.execute("SELECT array_agg(logit ORDER BY token) FROM gpt2.forward(%s, %s) "
                           "WHERE pos = %s", (ids_of(conn, CLEAN), name, len(ids_of(conn, CLEAN)) - 1)).fetchone()[0]
    got = intervene(conn, name, CLEAN, [])
    assert got.shape == (50257,) and np.array_equal(got, np.array(forward)), "bit for bit"
    logit_diff = conn.execute("SELECT gpt2.logit_diff(%s, ' Mary', ' John', %s)", (CLEAN, name)).fetchone()[0]
    assert logit_diff == got[MARY] - got[JOHN], "the same two products as the head's"


@pytest.mark.parametrize("ablate", ABLATIONS, ids=lambda a: json.dumps(a).replace(" ", ""))
def test_intervene_equals_reference(conn, tiny, ablate):
    name, _, hparams, params = tiny
    got = intervene(conn, name, CLEAN, ablate)
    want = reference.intervene(params, hparams, ids_of(conn, CLEAN), ablate)
    assert_close("ablated logits", got, want, TOL)
    assert np.abs(want - reference.forward(params, hparams, ids_of(conn, CLEAN))[-1]).max() > 1e-2, "the ablation shows"


@pytest.mark.parametrize("site", ["resid_pre", "attn_out", "mlp_out", "head"])
def test_patch_sweep_equals_reference(conn, tiny, site):
    name, _, hparams, params = tiny
    rows = sweep(conn, name, site)
    want = reference.patch_sweep(params, hparams, ids_of(conn, CLEAN), ids_of(conn, CORRUPTED), MARY, JOHN, site)
    assert len(ids_of(conn, CLEAN)) == 14
    assert len(rows) == hparams["n_layer"] * (hparams["n_head"] if site == "head" else 14)
    assert [r[:3] for r in rows] == [w[:3] for w in want], "a row per layer and position (or head), in order"
    assert_close(f"{site} sweep", [r[3] for r in rows], [w[3] for w in want], TOL)
    assert len({round(r[3], 3) for r in rows}) > 3, "the patches make a difference"


@pytest.mark.parametrize("site", ["resid_pre", "attn_out", "mlp_out", "head"])
def test_patching_a_run_with_its_own_activations_changes_nothing(conn, tiny, site):
    """Layer 0's patched runs start from the embeddings and, but for mlp_out, put back values
    computed before any MLP: plain runs, equal bit for bit. The others start from (or put back)
    a recorded MLP's output, which differs from a plain run's by float32 rounding
    (sql/98_intervene.sql, 'subtle')."""
    name = tiny[0]
    plain = conn.execute("SELECT gpt2.logit_diff(%s, ' Mary', ' John', %s)", (CLEAN, name)).fetchone()[0]
    rows = sweep(conn, name, site, CLEAN, CLEAN)
    if site != "mlp_out":
        assert [r[3] for r in rows if r[0] == 0] == [plain] * (len(rows) // 2)
    assert_close("self-patched", [r[3] for r in rows], [plain] * len(rows), 1e-5)


def test_logit_attribution_equals_reference_and_sums_to_the_logit(conn, tiny):
    name, _, hparams, params = tiny
    ids = ids_of(conn, CLEAN)
    rows = conn.execute("SELECT layer, component, head, contribution FROM gpt2.logit_attribution(%s, ' Mary', %s)",
                        (CLEAN, name)).fetchall()
    want = reference.logit_attribution(params, hparams, ids, MARY)
    got = {(c,) if layer is None else (c, layer) if head is None else (c, layer, head): v for layer, c, head, v in rows}
    assert len(rows) == len(got) == len(want) == 3 + hparams["n_layer"] * (hparams["n_head"] + 2)
    assert set(got) == set(want)
    assert_close("contributions", [got[k] for k in want], list(want.values()), TOL)
    logit = reference.forward(params, hparams, ids)[-1, MARY]
    assert abs(sum(got.values()) - logit) <= TOL, "the rows sum to the logit"
    assert abs(sum(v for k, v in got.items() if k != ("ln_f_bias",)) - (logit - got[("ln_f_bias",)])) <= TOL


BAD = [
    ("intervene", (CLEAN, None), "ablate must be a JSON array of"),
    ("intervene", (CLEAN, {"layer": 0, "head": 1}), "ablate must be a JSON array of"),
    ("intervene", (CLEAN, [1]), "ablate[0]: an entry is an object"),
    ("intervene", (CLEAN, [{"layer": 0, "mlp": True}, {"layer": 0, "heads": 1}]), 'ablate[1]: unknown key "heads"'),
    ("intervene", (CLEAN, [{"layer": 2, "head": 0}]), 'ablate[0]: layer 2 is out of range: model "intervene-tiny" has 2 layers (0..1)'),
    ("intervene", (CLEAN, [{"layer": -1, "mlp": True}]), "ablate[0]: layer -1 is out of range"),
    ("intervene", (CLEAN, [{"layer": 0, "head": 4}]), 'ablate[0]: head 4 is out of range: model "intervene-tiny" has 4 heads (0..3)'),
    ("intervene", (CLEAN, [{"layer": 0.5, "mlp": True}]), "ablate[0]: layer must be an integer, got 0.5"),
    ("intervene", (CLEAN, [{"head": 1}]), "ablate[0]: layer must be an integer, got nothing"),
    ("intervene", (CLEAN, [{"layer": 0}]), 'ablate[0]: give one of "head": H, "attn": true, "mlp": true'),
    ("intervene", (CLEAN, [{"layer": 0, "head": 1, "mlp": True}]), "ablate[0]: give one of"),
    ("intervene", (CLEAN, [{"layer": 0, "attn": False}]), 'ablate[0]: "attn" must be true, got false'),
    ("intervene", (CLEAN, [{"layer": 0, "mlp": True, "pos": [14]}]), "ablate[0]: position 14 is out of range: the prompt has 14 tokens (0..13)"),
    ("intervene", (CLEAN, [{"layer": 0, "mlp": True, "pos": 3}]), 'ablate[0]: "pos" must be an array of positions'),
    ("intervene", (CLEAN, [{"layer": 0, "mlp": True, "mode": "max"}]), 'ablate[0]: "mode" is "zero" or "mean", got "max"'),
    ("intervene", (CLEAN * 6, []), "the prompt has 84 tokens; model \"intervene-tiny\" sees at most 64"),
    ("patch_sweep", (CLEAN, CORRUPTED, " Mary Jane", " John"), 'answer must be one token: " Mary Jane" is 2 tokens " Mary" " Jane"'),
    ("patch_sweep", (CLEAN, CORRUPTED, " Mary", ""), 'wrong must be one token: "" is 0 tokens'),
    ("patch_sweep", (CLEAN, CORRUPTED, " Mary", None), "wrong must be one token, not NULL"),
    ("patch_sweep", (CLEAN, "When John went to the store, John gave a drink to", " Mary", " John"),
     "the clean prompt has 14 tokens and the corrupted one 12: patching needs as many in both"),
    ("patch_sweep", (CLEAN, CORRUPTED, " Mary", " John", "resid_post"), "unknown site 'resid_post': patch_sweep patches"),
    ("patch_sweep", (CLEAN, CORRUPTED, " Mary", " John", None), "unknown site NULL"),
    ("logit_attribution", (CLEAN, " Mary and"), "token must be one token"),
    ("logit_attribution", (CLEAN, ""), 'token must be one token: "" is 0 tokens'),
    ("logit_attribution", (CLEAN, None), "token must be one token, not NULL"),
    ("logit_diff", (CLEAN, " Mary", ""), 'wrong must be one token: "" is 0 tokens'),
    ("logit_diff", (CLEAN, None, " John"), "answer must be one token, not NULL"),
    ("logit_diff", (CLEAN, "Maryland Johnson", " John"), "answer must be one token"),
]


@pytest.mark.parametrize("function, args, message", BAD, ids=[b[2][:40] for b in BAD])
def test_bad_input_is_one_line(conn, tiny, function, args, message):
    if function == "intervene":
        args = (args[0], None if args[1] is None else json.dumps(args[1]))
    call = {"intervene": "SELECT gpt2.intervene(%s, %s, %s)", "logit_diff": "SELECT gpt2.logit_diff(%s, %s, %s, %s)",
            "logit_attribution": "SELECT count(*) FROM gpt2.logit_attribution(%s, %s, %s)"}.get(function)
    if function == "patch_sweep":
        args = args + ("resid_pre",) * (5 - len(args))
        call = "SELECT count(*) FROM gpt2.patch_sweep(%s, %s, %s, %s, %s, %s)"
    with pytest.raises(psycopg.errors.RaiseException) as e:
        conn.execute(call, (*args, tiny[0]))
    assert e.value.diag.message_primary.startswith(message), e.value.diag.message_primary
    assert "\n" not in e.value.diag.message_primary


def test_interventions_leave_a_generation_alone(conn, tiny):
    name = tiny[0]
    start = "SELECT gpt2.generate_start('Once upon a time', %s, 8, 0)"
    conn.execute(start, (name,))
    alone = [conn.execute("SELECT id FROM gpt2.generate_next()").fetchone()[0] for _ in range(8)]
    conn.execute(start, (name,))
    mixed = [conn.execute("SELECT id FROM gpt2.generate_next()").fetchone()[0] for _ in range(3)]
    intervene(conn, name, CLEAN, [{"layer": 0, "head": 1, "mode": "mean"}, {"layer": 1, "mlp": True}])
    mixed += [conn.execute("SELECT id FROM gpt2.generate_next()").fetchone()[0] for _ in range(2)]
    assert len(sweep(conn, name, "head")) == 8
    conn.execute("SELECT count(*) FROM gpt2.logit_attribution(%s, ' Mary', %s)", (CLEAN, name))
    mixed += [conn.execute("SELECT id FROM gpt2.generate_next()").fetchone()[0] for _ in range(3)]
    assert mixed == alone


# -- PyTorch forward hooks on the Hugging Face model ------------------------------------------

def hf_run(model, ids, edits=None, record=None):
    """Logits [n, n_vocab] of transformers' GPT-2 with forward hooks: edits {(layer, site): [f,
    ...]} replace an activation (each f takes and returns [n, ...], in turn); record, a dict,
    gets every layer's activations {(layer, site): [n, ...]}. Sites: resid_pre (a pre-hook on
    the block), z (a pre-hook on attn.c_proj: its input), attn_out (the attention module's
    output[0]), mlp_out (the MLP's output)."""
    import torch

    edits, handles = edits or {}, []

    def hooked(layer, site, value):
        if record is not None:
            record[(layer, site)] = value[0].detach().clone().numpy()
        value = value.clone()
        for f in edits.get((layer, site), []):
            value[0] = f(value[0])
        return value

    for i, block in enumerate(model.transformer.h):
        handles += [
            block.register_forward_pre_hook(lambda m, args, i=i: (hooked(i, "resid_pre", args[0]), *args[1:])),
            block.attn.c_proj.register_forward_pre_hook(lambda m, args, i=i: (hooked(i, "z", args[0]), *args[1:])),
            block.attn.register_forward_hook(lambda m, args, out, i=i: (hooked(i, "attn_out", out[0]), *out[1:])),
            block.mlp.register_forward_hook(lambda m, args, out, i=i: hooked(i, "mlp_out", out)),
        ]
    try:
        with torch.no_grad():
            return model(torch.tensor([list(ids)])).logits[0].numpy().astype(np.float64)
    finally:
        for h in handles:
            h.remove()


def hf_setter(rows, cols, value):
    import torch

    def f(a):
        a[rows, cols] = torch.as_tensor(value, dtype=a.dtype)
        return a
    return f


@pytest.mark.parametrize("config", ["tiny", "wide"])
def test_interventions_equal_transformers_hooks(conn, runner, tmp_path, config):
    pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    from transformers import GPT2LMHeadModel

    directory = synthetic.write_checkpoint(tmp_path, **synthetic.CONFIGS[config], seed=43)
    name = f"intervene-hf-{config}"
    assert runner(["load", str(directory), "--name", name]).exit_code == 0
    model = GPT2LMHeadModel.from_pretrained(directory, torch_dtype=torch.float32, attn_implementation="eager").eval()
    n_layer, n_head, d = model.config.n_layer, model.config.n_head, model.config.n_embd
    dh, last = d // n_head, n_layer - 1
    clean, corrupted = ids_of(conn, CLEAN), ids_of(conn, CORRUPTED)
    clean_acts = {}
    plain = hf_run(model, clean, record=clean_acts)
    assert_close("hooks that edit nothing", plain, reference.forward(*reversed(reference.load(directory)), clean), TOL)

    # ablation: every kind, at the edges of z
    ablate = [{"layer": 0, "head": 0}, {"layer": last, "head": n_head - 1, "mode": "mean"},
              {"layer": last, "attn": True, "pos": [2, 5]}, {"layer": 0, "mlp": True, "mode": "mean", "pos": [13]}]
    edits = {}
    for (layer, site), f in [((0, "z"), hf_setter(slice(None), slice(0, dh), 0.0)),
                             ((last, "z"), hf_setter(slice(None), slice(d - dh, d), clean_acts[(last, "z")][:, d - dh:].mean(0))),
                             ((last, "attn_out"), hf_setter([2, 5], slice(None), 0.0)),
                             ((0, "mlp_out"), hf_setter([13], slice(None), clean_acts[(0, "mlp_out")].mean(0)))]:
        edits.setdefault((layer, site), []).append(f)
    assert_close("intervene vs hooks", intervene(conn, name, CLEAN, ablate), hf_run(model, clean, edits)[-1], TOL)
    assert_close("intervene [] vs transformers", intervene(conn, name, CLEAN, []), plain[-1], TOL)

    # activation patching, every site
    for site in ["resid_pre", "attn_out", "mlp_out", "head"]:
        want = []
        for layer in range(n_layer):
            if site == "head":
                cases = [(None, h, "z", slice(None), slice(h * dh, (h + 1) * dh)) for h in range(n_head)]
            else:
                cases = [(p, None, site, [p], slice(None)) for p in range(len(clean))]
            for pos, head, where, rows, cols in cases:
                patch = hf_setter(rows, cols, clean_acts[(layer, where)][rows, cols])
                logits = hf_run(model, corrupted, {(layer, where): [patch]})
                want.append(logits[-1, MARY] - logits[-1, JOHN])
        assert_close(f"patch_sweep {site} vs hooks", [r[3] for r in sweep(conn, name, site)], want, TOL)

    # direct logit attribution: the hooks' z and mlp_out at the last position, the final residual's scale
    final = {}
    handle = model.transformer.ln_f.register_forward_pre_hook(lambda m, args: final.update(x=args[0][0, -1].clone()))
    try:
        hf_run(model, clean)
    finally:
        handle.remove()
    with torch.no_grad():
        x, ln_f = final["x"].double(), model.transformer.ln_f
        w, g = model.transformer.wte.weight[MARY].double(), ln_f.weight.double()
        sigma = torch.sqrt(x.var(unbiased=False) + ln_f.eps)

        def dla(c):
            c = torch.as_tensor(c, dtype=torch.float64)
            return float((g * (c - c.mean()) / sigma) @ w)

        want = {("embed",): dla(model.transformer.wte.weight[clean[-1]]), ("pos_embed",): dla(model.transformer.wpe.weight[len(clean) - 1]),
                ("ln_f_bias",): float(ln_f.bias.double() @ w)}
        for layer, block in enumerate(model.transformer.h):
            proj_w, proj_b = block.attn.c_proj.weight.double(), block.attn.c_proj.bias.double()
            z = torch.as_tensor(clean_acts[(layer, "z")][-1], dtype=torch.float64)
            for h in range(n_head):
                want[("head", layer, h)] = dla(z[h * dh:(h + 1) * dh] @ proj_w[h * dh:(h + 1) * dh])
            want[("attn_bias", layer)] = dla(proj_b)
            want[("mlp", layer)] = dla(clean_acts[(layer, "mlp_out")][-1])
    rows = conn.execute("SELECT layer, component, head, contribution FROM gpt2.logit_attribution(%s, ' Mary', %s)",
                        (CLEAN, name)).fetchall()
    got = {(c,) if layer is None else (c, layer) if head is None else (c, layer, head): v for layer, c, head, v in rows}
    assert set(got) == set(want)
    assert_close("logit attribution vs transformers", [got[k] for k in want], list(want.values()), TOL)
    assert abs(sum(got.values()) - plain[-1, MARY]) <= TOL


# -- The CLI: gpt2sql patch, ablate, attribute ----------------------------------------------

IOI = [CLEAN, CORRUPTED, "--answer", " Mary", "--wrong", " John"]


@pytest.fixture
def terminal(monkeypatch):
    """Tables fit the terminal (COLUMNS): 80 columns, whatever terminal runs the tests."""
    monkeypatch.setenv("COLUMNS", "80")


@pytest.fixture(scope="module")
def deep(tmp_path_factory, runner):
    """12 layers and 12 heads, as GPT-2 124M: tables as wide as users see them; narrow, so quick."""
    config = dict(synthetic.CONFIGS["tiny"], n_layer=12, n_head=12, n_embd=96)
    directory = synthetic.write_checkpoint(tmp_path_factory.mktemp("intervene-deep"), **config, seed=45)
    assert runner(["load", str(directory), "--name", "intervene-deep"]).exit_code == 0
    return "intervene-deep"


def numbers(line: str) -> list[float]:
    return [float(f) for f in line.split() if f.lstrip("+-").replace(".", "", 1).isdigit() and "." in f]


def test_patch_table_equals_patch_sweep(conn, runner, tiny, terminal):
    name = tiny[0]
    result = runner(["patch", *IOI, "-m", name])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    gaps = [conn.execute("SELECT gpt2.logit_diff(%s, ' Mary', ' John', %s)", (p, name)).fetchone()[0] for p in (CLEAN, CORRUPTED)]
    assert f"clean run {gaps[0]:.2f}, corrupted run {gaps[1]:.2f}" in " ".join(lines[:2])
    header = next(i for i, line in enumerate(lines) if line.startswith("pos token"))
    assert lines[header].split() == ["pos", "token", "0", "1"], "a column per layer"
    body = lines[header + 1:]
    assert [line.split()[1] for line in body] == ["When", "␣John", "␣and", "␣Mary", "␣went", "␣to", "␣the", "␣store", ",",
                                                   "␣John", "␣gave", "␣a", "␣drink", "␣to"], "the corrupted prompt's tokens"
    want = {(layer, pos): diff for layer, pos, _, diff in sweep(conn, name, "resid_pre")}
    for pos, line in enumerate(body):
        assert int(line.split()[0]) == pos
        assert numbers(line)[-2:] == pytest.approx([want[(0, pos)], want[(1, pos)]], abs=5e-3)
    relative = runner(["patch", *IOI, "-m", name, "--relative"])
    assert relative.exit_code == 0, relative.output
    last = relative.stdout.splitlines()[-1]
    assert numbers(last)[-2:] == pytest.approx([want[(0, 13)] - gaps[1], want[(1, 13)] - gaps[1]], abs=5e-3)


def test_patch_heads_table_equals_patch_sweep(conn, runner, tiny, terminal):
    name = tiny[0]
    result = runner(["patch", *IOI, "-m", name, "--site", "head"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("layer"))
    assert lines[header].split() == ["layer", "0", "1", "2", "3"]
    want = {(layer, head): diff for layer, _, head, diff in sweep(conn, name, "head")}
    for layer, line in enumerate(lines[header + 1:]):
        assert numbers(line) == pytest.approx([want[(layer, h)] for h in range(4)], abs=5e-3)


def test_ablate_shows_the_top_tokens_before_and_after(conn, runner, tiny, terminal):
    name = tiny[0]
    result = runner(["ablate", CLEAN, "--head", "1.2", "--mlp", "0", "--pos", "13", "--pos", "3", "--mean", "-m", name,
                     "--top", "4"])
    assert result.exit_code == 0, result.output
    title, *lines = result.stdout.splitlines()
    while not lines[0].startswith("token"):
        title, lines = title + " " + lines[0], lines[1:]
    assert "head 1.2, layer 0's MLP (mean, at positions 3, 13)" in title
    before = intervene(conn, name, CLEAN, [])
    after = intervene(conn, name, CLEAN, [{"layer": 1, "head": 2, "pos": [3, 13], "mode": "mean"},
                                          {"layer": 0, "mlp": True, "pos": [3, 13], "mode": "mean"}])
    top = list(np.argsort(-before, kind="stable")[:4])
    top += [t for t in np.argsort(-after, kind="stable")[:4] if t not in top]
    labels = {i: label for i, label in conn.execute("SELECT id, bytes FROM gpt2.vocab WHERE id = ANY(%s)", (
        [int(t) for t in top],)).fetchall()}
    from gpt2sql.tables import label

    assert len(lines) - 1 == len(top)
    for line, t in zip(lines[1:], top):
        fields = line.split()
        assert fields[0] == label(bytes(labels[int(t)]))
        logit, prob, rank, ablated, prob2, rank2, change = map(float, fields[1:])
        assert (logit, ablated) == pytest.approx((before[t], after[t]), abs=5e-4)
        assert rank == 1 + (before > before[t]).sum() and rank2 == 1 + (after > after[t]).sum()
        assert change == pytest.approx(after[t] - before[t], abs=1e-3)
        assert (prob, prob2) == pytest.approx((np.exp(reference.log_softmax(before)[t]),
                                               np.exp(reference.log_softmax(after)[t])), abs=5e-4)


def test_attribute_table_sums_to_the_logit_difference(conn, runner, tiny, terminal):
    name = tiny[0]
    result = runner(["attribute", CLEAN, "--token", " Mary", "--wrong", " John", "-m", name])
    assert result.exit_code == 0, result.output
    gap = conn.execute("SELECT gpt2.logit_diff(%s, ' Mary', ' John', %s)", (CLEAN, name)).fetchone()[0]
    out = result.stdout
    assert f"= {gap:.3f}" in out.replace("\n", " ")
    rows = {}
    for token, sign in ((" Mary", 1), (" John", -1)):
        for layer, component, head, value in conn.execute("SELECT * FROM gpt2.logit_attribution(%s, %s, %s)", (CLEAN, token, name)):
            rows[(layer, component, head)] = rows.get((layer, component, head), 0) + sign * value
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("layer"))
    assert lines[header].split() == ["layer", "MLP", "bias", "h0", "h1", "h2", "h3"]
    for layer in (0, 1):
        want = [rows[(layer, "mlp", None)], rows[(layer, "attn_bias", None)]] + [rows[(layer, "head", h)] for h in range(4)]
        assert numbers(lines[header + 1 + layer]) == pytest.approx(want, abs=5e-3)
    shown = sum(numbers(line)[-1] for line in lines if line.startswith(("embeddings", "ln_f bias")))
    assert shown == pytest.approx(rows[(None, "embed", None)] + rows[(None, "pos_embed", None)]
                                  + rows[(None, "ln_f_bias", None)], abs=1e-2)


@pytest.mark.parametrize("args", [["patch", *IOI], ["patch", *IOI, "--site", "head", "--relative"],
                                  ["attribute", CLEAN, "--token", " Mary", "--wrong", " John"],
                                  ["ablate", CLEAN, "--head", "11.11", "--attn", "0"]])
def test_output_fits_the_terminal_with_124m_layers(runner, deep, monkeypatch, args):
    from gpt2sql.tables import width

    for columns in (80, 100):
        monkeypatch.setenv("COLUMNS", str(columns))
        result = runner([*args, "-m", deep])
        assert result.exit_code == 0, result.output
        wide = [line for line in result.stdout.splitlines() if width(line) > columns]
        assert not wide, f"{len(wide)} lines wider than {columns}, e.g. {wide[0]!r}"
    if args[0] == "patch" and "head" not in args:
        header = next(line for line in result.stdout.splitlines() if line.startswith("pos token"))
        assert header.split()[2:] == [str(layer) for layer in range(12)], "all 12 layers in one block at 100 columns"


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@pytest.mark.parametrize("args", [["patch", *IOI], ["patch", *IOI, "--site", "head"],
                                  ["attribute", CLEAN, "--token", " Mary"]])
def test_pictures_are_pngs_of_a_sane_size(runner, tiny, tmp_path, args):
    out = tmp_path / "picture.png"
    result = runner([*args, "-m", tiny[0], "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout == "" and result.stderr == f"wrote {out}\n"
    w, h = png_size(out)
    assert 500 <= w <= 2500 and 200 <= h <= 1500, (w, h)


def one_line_error(result, exit_code, fragment):
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    if exit_code == 1:
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert fragment in result.stderr, result.stderr


@pytest.mark.parametrize("args, exit_code, fragment", [
    (["patch", CLEAN, CORRUPTED, "--answer", " Mary Jane", "--wrong", " John"], 1,
     "--answer must be one token: ' Mary Jane' is 2 tokens: ␣Mary ␣Jane"),
    (["patch", CLEAN, CORRUPTED, "--answer", " Mary", "--wrong", ""], 1, "--wrong must be one token: '' is 0 tokens"),
    (["patch", CLEAN, "When John went to the store, John gave a drink to", "--answer", " Mary", "--wrong", " John"], 1,
     "CLEAN has 14 tokens and CORRUPTED 12: patching needs as many in both"),
    (["patch", "", CORRUPTED, "--answer", " Mary", "--wrong", " John"], 1, "CLEAN is empty"),
    (["patch", *IOI, "--site", "resid_post"], 2, "Invalid value for '--site'"),
    (["patch", CLEAN, CORRUPTED, "--answer", " Mary"], 2, "Missing option '--wrong'"),
    (["patch", *IOI, "-o", "picture.bmpx"], 1, "end it in .png, .svg or .pdf"),
    (["patch", *IOI, "-o", "a.png", "--width", "80"], 2, "--width goes with a table"),
    (["patch", CLEAN * 6, CORRUPTED * 6, "--answer", " Mary", "--wrong", " John"], 1, "sees at most 64"),
    (["ablate", CLEAN], 2, "give something to ablate: --head L.H, --attn L or --mlp L"),
    (["ablate", CLEAN, "--head", "9"], 2, "'9' is not LAYER.HEAD, e.g. 9.6"),
    (["ablate", CLEAN, "--head", "1.4"], 1, "--head 1.4: head 4 is out of range: model 'intervene-tiny' has 4 heads (0..3)"),
    (["ablate", CLEAN, "--mlp", "2"], 1, "--mlp 2: layer 2 is out of range: model 'intervene-tiny' has 2 layers (0..1)"),
    (["ablate", CLEAN, "--attn", "-1"], 1, "--attn -1: layer -1 is out of range"),
    (["ablate", CLEAN, "--mlp", "0", "--pos", "14"], 1, "--pos 14: position 14 is out of range: the prompt has 14 positions (0..13)"),
    (["ablate", CLEAN, "--mlp", "0", "--top", "21"], 2, "Invalid value for '--top'"),
    (["attribute", CLEAN, "--token", "Maryland Johnson"], 1, "--token must be one token"),
    (["attribute", CLEAN, "--token", " Mary", "--wrong", ""], 1, "--wrong must be one token: '' is 0 tokens"),
    (["attribute", CLEAN, "--token", ""], 1, "--token must be one token: '' is 0 tokens"),
    (["attribute", CLEAN], 2, "Missing option '--token'"),
])
def test_cli_bad_input_is_one_line(runner, tiny, args, exit_code, fragment):
    one_line_error(runner([*args, "-m", tiny[0]]), exit_code, fragment)


@pytest.mark.parametrize("command", ["patch", "ablate", "attribute"])
def test_cli_help(runner, command):
    result = runner([command, "--help"])
    assert result.exit_code == 0 and "Usage: " in result.stdout
    assert all(len(line) <= 100 for line in result.stdout.splitlines())
