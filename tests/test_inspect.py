"""The glass box (sql/97_inspect.sql): attention weights, the logit lens, token scores and
perplexity, against the NumPy reference and against Hugging Face transformers' own outputs
(output_attentions, output_hidden_states, log_softmax of the logits), float32, 1e-4."""

from __future__ import annotations

import numpy as np
import pytest

import reference
import synthetic
from compare import assert_close

TOL = 1e-4
TEXT = "The cat sat on the mat because it was warm."


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, runner):
    """The tiny random model: context 64, so a long text takes several scoring windows."""
    directory = synthetic.write_checkpoint(tmp_path_factory.mktemp("inspect"), **synthetic.CONFIGS["tiny"], seed=21)
    assert runner(["load", str(directory), "--name", "inspect-tiny"]).exit_code == 0
    return ("inspect-tiny", directory) + reference.load(directory)


def ids_of(conn, text):
    return conn.execute("SELECT gpt2.tokenize(%s)", (text,)).fetchone()[0]


def test_attention_equals_reference(conn, tiny):
    name, _, hparams, params = tiny
    ids = ids_of(conn, TEXT)
    rows = conn.execute("SELECT layer, head, query_pos, key_pos, weight FROM gpt2.attention(%s, %s)", (TEXT, name)).fetchall()
    n = len(ids)
    assert len(rows) == hparams["n_layer"] * hparams["n_head"] * n * (n + 1) // 2, "one row per causal (query, key) pair"
    got = np.zeros((hparams["n_layer"], hparams["n_head"], n, n))
    for layer, head, q, k, w in rows:
        assert k <= q
        got[layer, head, q, k] = w
    assert_close("attention weights", got, reference.attention_weights(params, hparams, ids), TOL)


def test_logit_lens_equals_reference(conn, tiny):
    name, _, hparams, params = tiny
    ids = ids_of(conn, TEXT)
    k = 3
    rows = conn.execute("SELECT layer, pos, rank, token, text, prob FROM gpt2.logit_lens(%s, %s, %s)", (TEXT, name, k)).fetchall()
    expected = reference.logit_lens(params, hparams, ids)  # [n_layer + 1, n, n_vocab]
    assert len(rows) == (hparams["n_layer"] + 1) * len(ids) * k
    for layer, pos, rank, token, text, prob in rows:
        p = expected[layer, pos]
        assert abs(prob - p[token]) <= TOL, f"layer {layer} pos {pos}: p({token}) {prob} vs {p[token]}"
        assert abs(p[token] - np.sort(p)[::-1][rank - 1]) <= TOL, f"layer {layer} pos {pos}: token {token} is not rank {rank}"
    assert [r[1] for r in rows if r[0] == 0 and r[2] == 1] == list(range(len(ids)))


@pytest.mark.parametrize("repeat", [1, 12])  # 12: 144 tokens, three windows of the 64-token context
def test_score_equals_reference(conn, tiny, repeat):
    name, _, hparams, params = tiny
    text = TEXT * repeat
    ids = ids_of(conn, text)
    rows = conn.execute("SELECT pos, token, text, logprob, rank, alternatives FROM gpt2.score(%s, %s, 2)", (text, name)).fetchall()
    logprobs, ranks = reference.score(params, hparams, ids)
    assert [r[0] for r in rows] == list(range(len(ids))) and [r[1] for r in rows] == ids
    assert_close("logprobs", [r[3] for r in rows], logprobs, TOL)
    assert [r[4] for r in rows] == ranks.tolist()
    for r in rows:  # the alternatives: the two most likely, best first, their logprobs at most the best's
        assert len(r[5]) == 2 and r[5][0]["logprob"] >= r[5][1]["logprob"] >= r[3] - TOL or r[4] <= 2
    perplexity = conn.execute("SELECT gpt2.perplexity(%s, %s)", (text, name)).fetchone()[0]
    assert abs(perplexity - np.exp(-np.mean(logprobs))) <= 1e-4 * perplexity


def test_perplexity_over_a_column(conn, tiny):
    name = tiny[0]
    rows = conn.execute("SELECT id, gpt2.perplexity(body, %s) FROM (VALUES (1, 'Hello world'), (2, ''), (3, %s)) AS docs(id, body) "
                        "ORDER BY id", (name, TEXT)).fetchall()
    alone = [conn.execute("SELECT gpt2.perplexity(%s, %s)", (t, name)).fetchone()[0] for t in ("Hello world", TEXT)]
    assert [r[0] for r in rows] == [1, 2, 3]
    assert rows[0][1] == pytest.approx(alone[0]) and rows[2][1] == pytest.approx(alone[1])
    assert rows[1][1] is None, "an empty text has no tokens to score"


def test_inspecting_leaves_a_generation_alone(conn, tiny):
    name = tiny[0]
    start = "SELECT gpt2.generate_start('Once upon a time', %s, 8, 0)"
    conn.execute(start, (name,))
    alone = [conn.execute("SELECT id FROM gpt2.generate_next()").fetchone()[0] for _ in range(8)]
    conn.execute(start, (name,))
    mixed = [conn.execute("SELECT id FROM gpt2.generate_next()").fetchone()[0] for _ in range(4)]
    conn.execute("SELECT count(*) FROM gpt2.score(%s, %s)", (TEXT, name))
    conn.execute("SELECT count(*) FROM gpt2.logit_lens(%s, %s)", (TEXT, name))
    mixed += [conn.execute("SELECT id FROM gpt2.generate_next()").fetchone()[0] for _ in range(4)]
    assert mixed == alone


def test_too_long_to_inspect_is_one_line(conn, tiny):
    import psycopg

    with pytest.raises(psycopg.errors.RaiseException, match="sees at most 64"):
        conn.execute("SELECT count(*) FROM gpt2.attention(%s, %s)", (TEXT * 12, tiny[0]))


@pytest.mark.parametrize("config", ["tiny", "wide"])
def test_glass_box_equals_transformers(conn, runner, tmp_path, config):
    """The independent check: transformers' attentions, hidden states and logits."""
    pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    from transformers import GPT2LMHeadModel

    directory = synthetic.write_checkpoint(tmp_path, **synthetic.CONFIGS[config], seed=23)
    name = f"inspect-hf-{config}"
    assert runner(["load", str(directory), "--name", name]).exit_code == 0
    ids = ids_of(conn, TEXT)
    model = GPT2LMHeadModel.from_pretrained(directory, torch_dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        out = model(torch.tensor([ids]), output_attentions=True, output_hidden_states=True)
        wte, ln_f = model.transformer.wte.weight, model.transformer.ln_f
        # transformers' last hidden state is already after ln_f; the others are the raw residual stream
        lens = torch.stack([torch.softmax((ln_f(h[0]) if i < len(out.hidden_states) - 1 else h[0]) @ wte.T, -1)
                            for i, h in enumerate(out.hidden_states)]).numpy()
        attentions = torch.stack([a[0] for a in out.attentions]).numpy()       # [n_layer, n_head, n, n]
        scored = model(torch.tensor([[50256] + ids[:-1]])).logits[0]            # the scoring context: <|endoftext|> first
        logprobs = torch.log_softmax(scored, -1).numpy()                       # [n, n_vocab]

    got = np.zeros_like(attentions)
    for layer, head, q, k, w in conn.execute("SELECT * FROM gpt2.attention(%s, %s)", (TEXT, name)):
        got[layer, head, q, k] = w
    assert_close("attention vs transformers", got, attentions, TOL)
    for layer, pos, rank, token, text, prob in conn.execute("SELECT * FROM gpt2.logit_lens(%s, %s, 2)", (TEXT, name)):
        assert abs(prob - lens[layer, pos, token]) <= TOL, f"logit lens layer {layer} pos {pos}"
    scored = conn.execute("SELECT logprob FROM gpt2.score(%s, %s) ORDER BY pos", (TEXT, name)).fetchall()
    assert_close("score vs log_softmax", [r[0] for r in scored], [logprobs[t, ids[t]] for t in range(len(ids))], TOL)
