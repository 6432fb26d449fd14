"""Sampling (sql/90_sampling.sql) against the NumPy reference: the distribution that
gpt2.next_token_probs returns after temperature, top-k and top-p, and the draws of
gpt2.sample, which must follow it."""

from __future__ import annotations

import math

import numpy as np
import pytest

import reference
import synthetic
from compare import assert_close

PROMPT = "Happy New Year! I wish"
LOGIT_TOL = 1e-4  # float32 activations in SQL: logits differ from float64 by ~1e-5
PROB_TOL = 1e-4  # and probabilities by ~1e-5 / T


@pytest.fixture(scope="module")
def last(dsn, runner, tmp_path_factory):
    """(connection with the model selected, x = the prompt's final hidden state as text, reference logits)."""
    from gpt2sql import db

    directory = synthetic.write_checkpoint(tmp_path_factory.mktemp("sampling"), **synthetic.CONFIGS["tiny"], seed=31)
    assert runner(["load", str(directory), "--name", "sampling"]).exit_code == 0
    hparams, params = reference.load(directory)
    with db.connect(dsn) as conn:  # its own: use_model() changes the connection's search path
        conn.execute("SELECT gpt2.use_model('sampling')")
        ids = conn.execute("SELECT gpt2.tokenize(%s)", (PROMPT,)).fetchone()[0]
        x = conn.execute("SELECT xs[array_upper(xs, 1)]::text FROM gpt2.transformer(%s, 0) AS xs", (ids,)).fetchone()[0]
        yield conn, x, reference.forward(params, hparams, ids)[-1]


def kept_set(logits, temperature, top_k, top_p) -> tuple[set[int], set[int]]:
    """The tokens Hugging Face's order keeps: logits / T, the top k (ties: lower id first),
    then the smallest prefix whose mass reaches top_p (a token stays when the mass ranked
    before it is below top_p). Also the tokens too close to a cut to call, given the
    tolerances: a logit that close to the k-th, or a mass before it that close to top_p."""
    order = np.lexsort((np.arange(len(logits)), -logits))[: top_k or len(logits)]
    probs = reference.softmax(logits[order] / temperature)
    before = np.cumsum(probs) - probs
    # subtle: top_p = 1 has a cut too: the tail's running mass rounds to the total (the SQL
    # drops tokens of probability below ~1e-16, which a draw can never reach anyway)
    unsure = set(order[np.abs(before - top_p) <= PROB_TOL].tolist())
    if top_k:
        unsure |= set(np.flatnonzero(np.abs(logits - logits[order[-1]]) <= LOGIT_TOL).tolist())
    return set(order[before < top_p].tolist()), unsure


def renormalized(logits, temperature, tokens):
    """softmax(logits / T) over the kept tokens alone: what next_token_probs returns for them."""
    return reference.softmax(logits[tokens] / temperature)


def sql_probs(conn, x, temperature, top_k, top_p):
    rows = conn.execute("SELECT rank, token, logit, prob FROM gpt2.next_token_probs(%s::vector, %s, %s, %s) ORDER BY rank",
                        (x, temperature, top_k, top_p)).fetchall()
    return np.array([r[1] for r in rows]), np.array([r[2] for r in rows]), np.array([r[3] for r in rows])


@pytest.mark.parametrize("top_k, top_p", [(None, 1.0), (50, 1.0), (10, 1.0), (1, 1.0), (None, 0.9), (50, 0.5), (10, 0.3)])
def test_next_token_probs_equal_reference(last, top_k, top_p):
    conn, x, logits = last
    for temperature in (0.5, 1.0, 2.0):
        case = f"T={temperature} top_k={top_k} top_p={top_p}"
        want, unsure = kept_set(logits, temperature, top_k, top_p)
        got_tokens, got_logits, got_probs = sql_probs(conn, x, temperature, top_k, top_p)
        differ = set(got_tokens.tolist()) ^ want
        assert differ <= unsure, f"{case}: kept {len(got_tokens)} tokens, want {len(want)}; differ on {sorted(differ - unsure)[:8]}"
        assert np.all(np.diff(got_logits) <= 0), f"{case}: not ranked most likely first"
        assert_close(f"{case} logits", got_logits, logits[got_tokens], LOGIT_TOL)
        assert_close(f"{case} probabilities", got_probs, renormalized(logits, temperature, got_tokens), PROB_TOL)


def test_temperature_matters_here(last):
    """The check above can only catch a sampler that ignores temperature if temperature
    moves these probabilities by much more than the tolerance: it does, by > 100x."""
    _, _, logits = last
    top = np.argsort(-logits)[:50]
    for temperature in (0.5, 2.0):
        assert np.abs(renormalized(logits, temperature, top) - renormalized(logits, 1.0, top)).max() > 100 * PROB_TOL


def test_temperature_zero_is_argmax(last):
    conn, x, logits = last
    token = conn.execute("SELECT gpt2.sample(%s::vector, 0, 50, 1.0, 0.5)", (x,)).fetchone()[0]
    assert token == int(np.argmax(logits))


def test_argmax_and_logsumexp_on_crafted_logits(last):
    """The loops behind greedy decoding and logprobs: ties go to the lowest id, a row of a
    [n, n_vocab] array (logits[i:i]) works like a flat array, and logsumexp stays exact
    when the logits span more than exp() can hold (underflow below e^-745)."""
    conn = last[0]
    rng = np.random.default_rng(5)
    flat = rng.normal(0, 3, 1000)
    flat[[17, 400, 999]] = flat.max() + 1  # a three-way tie for the maximum
    spread = np.concatenate([rng.normal(0, 3, 500), [-2000.0, 900.0, 899.5]])
    for logits in (flat, spread):
        got_id, got_lse = conn.execute("SELECT gpt2.argmax(%s), gpt2.logsumexp(%s)", (logits.tolist(),) * 2).fetchone()
        m = logits.max()
        assert got_id == int(np.argmax(logits))
        assert abs(got_lse - (m + math.log(np.exp(logits - m).sum()))) < 1e-9
    rows = np.stack([flat[::-1], flat])
    got = conn.execute("SELECT gpt2.argmax(a[2:2]), gpt2.logsumexp(a[1:1]) FROM (SELECT %s::float8[] AS a) AS t",
                       (rows.tolist(),)).fetchone()
    assert got[0] == 17 and abs(got[1] - (flat.max() + math.log(np.exp(flat - flat.max()).sum()))) < 1e-9



def test_greedy_lse_is_argmax_and_logsumexp_in_one_pass(last):
    """gpt2.greedy_lse, a batch step's one pass per sequence: the token of gpt2.argmax (ties
    to the lowest id, the maximum first, last or in the middle) and the logsumexp of
    gpt2.logsumexp, also where the running maximum grows by more than exp() can hold, and on
    a row logits[i:i]."""
    conn = last[0]
    rng = np.random.default_rng(6)
    flat = rng.normal(0, 3, 1000)
    flat[[17, 400, 999]] = flat.max() + 1                                    # a tie, lowest id 17
    rising = np.arange(1000, dtype=float) * 3.0                              # the maximum grows at every step
    spread = np.concatenate([[-2000.0], rng.normal(0, 3, 500), [900.0, 899.5]])
    for logits in (flat, rising, spread, flat[::-1].copy()):
        got_id, got_lse = conn.execute("SELECT p.id, p.lse FROM gpt2.greedy_lse(%s) AS p", (logits.tolist(),)).fetchone()
        m = logits.max()
        assert got_id == int(np.argmax(logits))
        assert abs(got_lse - (m + math.log(np.exp(logits - m).sum()))) < 1e-9 * max(1.0, abs(m))
    rows = np.stack([rising, flat])
    got = conn.execute("SELECT p.id FROM (SELECT %s::float8[] AS a) AS t, gpt2.greedy_lse(t.a[2:2]) AS p",
                       (rows.tolist(),)).fetchone()
    assert got[0] == 17

def chi2_sf(x: float, dof: int) -> float:
    """P(X >= x) for X ~ chi-square(dof), integer dof: the regularized upper gamma Q(dof/2, x/2)."""
    h = x / 2
    if dof % 2 == 0:
        return math.exp(-h) * sum(h**i / math.factorial(i) for i in range(dof // 2))
    return math.erfc(math.sqrt(h)) + math.exp(-h) * sum(h ** (i - 0.5) / math.gamma(i + 0.5) for i in range(1, (dof + 1) // 2))


@pytest.mark.parametrize("temperature, top_k, top_p", [(0.7, 6, 1.0), (1.5, 40, 0.5)])
def test_draws_follow_the_distribution(last, temperature, top_k, top_p):
    """N = 200 draws of gpt2.sample(x, T, k, p, u), u = gpt2.uniform(seed, step) over 10
    seeds x 20 steps, against next_token_probs' distribution, by Pearson's chi-square test:
    tokens expected fewer than 5 times are pooled (the test's usual validity rule), and the
    test fails when P(chi-square(bins - 1) >= statistic) < 1e-6. A correct sampler with
    truly uniform u fails it with probability 1e-6; u is md5-based, so the draws, and the
    outcome, are the same on every run. An argmax sampler, or one that ignored k or p, is
    far outside the bound; so is one that ignored T in the second case (expected
    statistic ~60 on 11 degrees of freedom, p ~ 5e-9); test_next_token_probs_equal_reference
    catches that in every case."""
    conn, x, _ = last
    n, steps = 200, 20
    tokens, _, probs = sql_probs(conn, x, temperature, top_k, top_p)
    draws = [r[0] for r in conn.execute(
        "SELECT gpt2.sample(%s::vector, %s, %s, %s, gpt2.uniform(s / %s, s %% %s + 1)) FROM generate_series(0, %s - 1) AS s",
        (x, temperature, top_k, top_p, steps, steps, n))]
    assert set(draws) <= set(tokens.tolist()), f"drawn outside the kept set: {set(draws) - set(tokens.tolist())}"
    counts = np.array([draws.count(t) for t in tokens.tolist()], dtype=float)
    big = probs * n >= 5
    observed = np.append(counts[big], counts[~big].sum())
    wanted = np.append(probs[big] * n, probs[~big].sum() * n)
    if wanted[-1] < 5:  # the pooled rest is too small to stand alone: fold it into the last bin
        observed, wanted = np.append(observed[:-2], observed[-2:].sum()), np.append(wanted[:-2], wanted[-2:].sum())
    assert len(wanted) >= 3, f"too few bins for a test: {wanted}"
    statistic = float(((observed - wanted) ** 2 / wanted).sum())
    p_value = chi2_sf(statistic, len(wanted) - 1)
    assert p_value > 1e-6, (f"draws do not follow the distribution: chi-square {statistic:.1f} on {len(wanted) - 1} "
                            f"degrees of freedom (p = {p_value:.2g})\n  observed {observed}\n  expected {wanted.round(1)}")
