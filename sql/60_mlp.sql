-- Stage 6: the position-wise feed-forward network.
--
-- NumPy twin: tests/reference.py gelu(x) and mlp(x, c_fc, c_proj).
--   mlp(x) = gelu(x @ W_fc + b_fc) @ W_proj + b_proj     [n_seq, n_embd] -> [n_seq, n_inner] -> [n_seq, n_embd]
--   gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))   (GPT-2's tanh form, "gelu_new")

CREATE OR REPLACE FUNCTION gpt2.gelu(x float8) RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT 0.5 * x * (1 + tanh(sqrt(2 / pi()) * (x + 0.044715 * x * x * x)))
$$;

-- gelu on every element of every vector.
CREATE OR REPLACE FUNCTION gpt2.gelu(xs vector[]) RETURNS vector[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT array_agg(
        (SELECT array_agg(gpt2.gelu(e) ORDER BY i) FROM unnest(u.x::real[]) WITH ORDINALITY AS e(e, i))::vector
        ORDER BY u.t)
    FROM unnest(xs) WITH ORDINALITY AS u(x, t)
$$;

CREATE OR REPLACE FUNCTION gpt2.mlp(layer int, xs vector[]) RETURNS vector[]
LANGUAGE sql STABLE AS $$
    SELECT gpt2.linear('mlp.c_proj', layer,             -- [n_seq, n_inner] -> [n_seq, n_embd]
           gpt2.gelu(                                     -- [n_seq, n_inner]
           gpt2.linear('mlp.c_fc', layer, xs)))           -- [n_seq, n_embd] -> [n_seq, n_inner]
$$;
