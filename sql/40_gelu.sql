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

-- Backward (training, stage 12): dh = dy * gelu'(h), every number of every vector.
-- NumPy twin: tests/reference.py gelu_backward(dy, x).
--   t = tanh(c (h + a h^3)), c = sqrt(2/pi), a = 0.044715
--   gelu'(h) = 0.5 (1 + t) + 0.5 h (1 - t^2) c (1 + 3 a h^2)
-- Only tanh needs a pass over the numbers; the rest is pgvector arithmetic on whole vectors.
CREATE OR REPLACE FUNCTION gpt2.gelu_backward(hs vector[], dys vector[]) RETURNS vector[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    c float8 := sqrt(2 / pi());
    d int := vector_dims(hs[1]);
    ones vector := gpt2.fill(1, d);
    half vector := gpt2.fill(0.5, d);
    half_c vector := gpt2.fill(0.5 * c, d);
    three_a vector := gpt2.fill(3 * 0.044715, d);
BEGIN
    RETURN ARRAY(
        SELECT u.dy * (half * (ones + t.t) + u.h * (ones - t.t * t.t) * half_c * (ones + u.h * u.h * three_a))
        FROM unnest(hs, dys) WITH ORDINALITY AS u(h, dy, k),
             LATERAL (SELECT ARRAY(SELECT tanh(c * (x + 0.044715 * x * x * x)) FROM unnest(u.h::real[]) AS x)::vector AS t) AS t
        ORDER BY u.k);
END
$$;
