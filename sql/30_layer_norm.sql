-- Stage 3: layer normalization.
--
-- NumPy twin: tests/reference.py layer_norm(x, g, b, eps).
--   layer_norm(x) = g * (x - mean(x)) / sqrt(var(x) + eps) + b      x, g, b: [n_embd]
-- gpt2.ln(tensor, layer, xs) applies the model's ln_1 / ln_2 / ln_f to every position.
--
-- Everything is pgvector arithmetic on float32 vectors: sums are inner products with
-- a vector of ones, scalars become constant vectors. DESIGN.md measured this at
-- 0.38 ms per 768-wide vector, 8x faster than unnest() over real[].

-- A vector of n copies of v (pgvector has no scalar * vector).
CREATE OR REPLACE FUNCTION gpt2.fill(v float8, n int) RETURNS vector
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT array_fill(v::real, ARRAY[n])::vector
$$;

CREATE OR REPLACE FUNCTION gpt2.layer_norm(x vector, g vector, b vector, eps float8) RETURNS vector
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    WITH centered AS (             -- [n_embd]  x - mean(x); <#> is the NEGATIVE inner product
        SELECT x - gpt2.fill(-(x <#> gpt2.fill(1, vector_dims(x))) / vector_dims(x), vector_dims(x)) AS d
    )
    SELECT d * g * gpt2.fill(1 / sqrt(-(d <#> d) / vector_dims(x) + eps), vector_dims(x)) + b
    FROM centered
$$;

-- The model's layer norm `tensor` ('ln_1', 'ln_2' or 'ln_f') of `layer`, at every position.
CREATE OR REPLACE FUNCTION gpt2.ln(tensor text, layer int, xs vector[]) RETURNS vector[]
LANGUAGE plpgsql STABLE AS $$
DECLARE
    ys vector[];
BEGIN
    SELECT array_agg(gpt2.layer_norm(u.x, p.g, p.b, m.layer_norm_epsilon) ORDER BY u.t) INTO ys
    FROM unnest(xs) WITH ORDINALITY AS u(x, t)                    -- [n_seq, n_embd]
    CROSS JOIN ln p CROSS JOIN gpt2.current_model() m
    WHERE p.tensor = ln.tensor AND p.layer = ln.layer;
    RETURN ys;
END
$$;
