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
