-- Stage 3: layer normalization.
--
-- NumPy twin: tests/reference.py layer_norm(x, g, b, eps).
--   layer_norm(x) = g * (x - mean(x)) / sqrt(var(x) + eps) + b      x, g, b: [n_embd]
-- gpt2.ln(tensor, layer, xs) applies the model's ln_1 / ln_2 / ln_f to every position:
-- xs [n] of [n_embd] -> [n] of [n_embd].
--
-- Everything is pgvector arithmetic on float32 vectors: a sum is an inner product with a
-- vector of ones, and a scalar becomes a constant vector (pgvector has no scalar * vector).
-- About 10 us per 768-wide position; unnest() over real[] would take 8x longer.

-- A vector of n copies of v.
CREATE OR REPLACE FUNCTION gpt2.fill(v float8, n int) RETURNS vector
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT array_fill(v::real, ARRAY[n])::vector
$$;

-- v with its entries below 2^-65 (2.7e-20) in magnitude made 0; entries up to 2^-16 may
-- move by one float32 rounding on the way (2^-24 of themselves), larger ones do not move.
--   gpt2.flush('[1e-25, 3, -1e-21, 1e-3]') = [0, 3, 0, 0.001]
-- subtle: pgvector RAISES on an element-wise product that underflows to 0 ("value out of
--   range: underflow"), as PostgreSQL's float4 does; a 0 operand never does. Numbers that
--   small mean nothing next to what they are added to, so the backward pass and AdamW flush
--   a factor that can be that small before they multiply (a training run met it at step 106,
--   in attention's backward pass). (v + t) - t with t = 2^-40: the sum rounds to t's spacing.
CREATE OR REPLACE FUNCTION gpt2.flush(v vector) RETURNS vector
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT (v + gpt2.fill(2 ^ -40, vector_dims(v))) - gpt2.fill(2 ^ -40, vector_dims(v))
$$;

-- The model's layer norm `tensor` ('ln_1', 'ln_2' or 'ln_f') of `layer`, at every position
-- (one statement for all of them). The two-pass variance of NumPy: the mean first, then the
-- centered squares.
CREATE OR REPLACE FUNCTION gpt2.ln(tensor text, layer int, xs vector[]) RETURNS vector[]
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    m gpt2.models := gpt2.current_model();
    ones vector := gpt2.fill(1, m.n_embd);
    ys vector[];
BEGIN
    SELECT array_agg(p.g * c.d * gpt2.fill(1 / sqrt(-(c.d <#> c.d) / m.n_embd + m.layer_norm_epsilon), m.n_embd) + p.b
                     ORDER BY c.t) INTO ys
    FROM (SELECT u.t, u.x - gpt2.fill(-(u.x <#> ones) / m.n_embd, m.n_embd) AS d     -- [n_seq, n_embd] centered
          FROM unnest(xs) WITH ORDINALITY AS u(x, t) OFFSET 0) AS c                  -- (OFFSET 0: d computed once)
    CROSS JOIN ln p
    WHERE p.tensor = ln.tensor AND p.layer = ln.layer;
    RETURN ys;
END
$$;

ALTER FUNCTION gpt2.ln(text, int, vector[]) SET plan_cache_mode = force_generic_plan;

-- Backward (training, stage 12): the gradients of a layer norm from those of its output.
-- NumPy twin: tests/reference.py layer_norm_backward(dy, x, g, eps).
--   xhat = (x - mean) * rstd,  rstd = 1 / sqrt(var + eps),  dxhat = dy * g
--   dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))    (mean and var depend on every x)
--   dg = sum over positions of dy * xhat,  db = sum over positions of dy
CREATE TYPE gpt2.ln_grad AS (
    dx vector[],     -- [n] of [n_embd]
    dg vector,       -- [n_embd]
    db vector        -- [n_embd]
);

CREATE OR REPLACE FUNCTION gpt2.ln_backward(tensor text, layer int, xs vector[], dys vector[]) RETURNS gpt2.ln_grad
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    m gpt2.models := gpt2.current_model();
    n int := m.n_embd;
    ones vector := gpt2.fill(1, m.n_embd);
    r gpt2.ln_grad;
BEGIN
    WITH c AS (                                        -- [n_seq] centered x and 1 / sqrt(var + eps)
        SELECT u.t, u.dy, c.d, 1 / sqrt(-(c.d <#> c.d) / n + m.layer_norm_epsilon) AS rstd
        FROM unnest(xs, dys) WITH ORDINALITY AS u(x, dy, t),
             LATERAL (SELECT u.x - gpt2.fill(-(u.x <#> ones) / n, n) AS d OFFSET 0) AS c
    ), h AS (                                          -- xhat, dxhat
        SELECT c.t, c.dy, c.rstd, c.d * gpt2.fill(c.rstd, n) AS xhat, c.dy * p.g AS dxhat
        FROM c CROSS JOIN ln p WHERE p.tensor = ln_backward.tensor AND p.layer = ln_backward.layer
        OFFSET 0
    )
    SELECT array_agg((h.dxhat - gpt2.fill(-(h.dxhat <#> ones) / n, n) - h.xhat * gpt2.fill(-(h.dxhat <#> h.xhat) / n, n))
                     * gpt2.fill(h.rstd, n) ORDER BY h.t),
           sum(h.dy * h.xhat), sum(h.dy)
    INTO r.dx, r.dg, r.db FROM h;
    RETURN r;
END
$$;

ALTER FUNCTION gpt2.ln_backward(text, int, vector[], vector[]) SET plan_cache_mode = force_generic_plan;
