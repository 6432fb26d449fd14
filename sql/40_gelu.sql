-- Stage 3b: GELU, the MLP's activation (GPT-2's tanh form, "gelu_new").
--
-- NumPy twin: tests/reference.py gelu(x).
--   gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
-- The MLP itself, gelu(x @ W_fc + b_fc) @ W_proj + b_proj, is two linear layers (stage 4)
-- inside the block (stage 7): the kernels apply GELU to each number as they make it.

CREATE OR REPLACE FUNCTION gpt2.gelu(x float8) RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT 0.5 * x * (1 + tanh(sqrt(2 / pi()) * (x + 0.044715 * x * x * x)))
$$;

-- act(y) for a linear layer's act: NULL (none) or 'gelu'.
CREATE OR REPLACE FUNCTION gpt2.activation(act text, y float8) RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN act IS NULL THEN y ELSE gpt2.gelu(y) END
$$;

-- act applied to every number of every vector: [n] of [d] -> [n] of [d] (a pass of its own,
-- for when the numbers were not made here: a linear layer whose inputs came in chunks, or
-- a run that records the MLP's input before GELU).
CREATE OR REPLACE FUNCTION gpt2.activation(act text, ys vector[]) RETURNS vector[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN act IS NULL THEN ys
                ELSE ARRAY(SELECT ARRAY(SELECT gpt2.gelu(y) FROM unnest(u.v::real[]) AS y)::vector
                           FROM unnest(ys) WITH ORDINALITY AS u(v, t) ORDER BY u.t) END
$$;
