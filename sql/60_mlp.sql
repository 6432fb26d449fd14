-- Stage 6: the position-wise feed-forward network.
--
-- NumPy twin: tests/reference.py gelu(x) and mlp(x, c_fc, c_proj).
--   mlp(x) = gelu(x @ W_fc + b_fc) @ W_proj + b_proj     [n_seq, n_embd] -> [n_seq, n_inner] -> [n_seq, n_embd]
--   gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))   (GPT-2's tanh form, "gelu_new")

CREATE OR REPLACE FUNCTION gpt2.gelu(x float8) RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT 0.5 * x * (1 + tanh(sqrt(2 / pi()) * (x + 0.044715 * x * x * x)))
$$;

-- gelu on every element of every vector: the polynomial with pgvector arithmetic on whole
-- vectors, tanh element by element (pgvector has no tanh; this loop is the cost, ~0.1 us
-- per element).
CREATE OR REPLACE FUNCTION gpt2.gelu(xs vector[]) RETURNS vector[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    n int := vector_dims(xs[1]);
    half vector := gpt2.fill(0.5, n);
    one vector := gpt2.fill(1, n);
    c vector := gpt2.fill(sqrt(2 / pi()), n);
    k vector := gpt2.fill(0.044715, n);
BEGIN
    RETURN ARRAY(
        SELECT half * u.x * (one + ARRAY(SELECT tanh(e) FROM unnest((c * (u.x + k * u.x * u.x * u.x))::real[]) AS e)::vector)
        FROM unnest(xs) WITH ORDINALITY AS u(x, t) ORDER BY u.t);
END
$$;

CREATE OR REPLACE FUNCTION gpt2.mlp(layer int, xs vector[]) RETURNS vector[]
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT gpt2.linear('mlp.c_proj', layer,             -- [n_seq, n_inner] -> [n_seq, n_embd]
           gpt2.gelu(                                     -- [n_seq, n_inner]
           gpt2.linear('mlp.c_fc', layer, xs)))           -- [n_seq, n_embd] -> [n_seq, n_inner]
$$;

ALTER FUNCTION gpt2.gelu(vector[]) SET plan_cache_mode = force_generic_plan;
