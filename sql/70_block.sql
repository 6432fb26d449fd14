-- Stage 7: one transformer block (pre-norm, two residual branches).
--
-- NumPy twin: tests/reference.py block(x, mlp, attn, ln_1, ln_2, n_head).
--   x = x + mha(ln_1(x))        attention: c_attn -> heads over the KV cache -> c_proj
--   x = x + mlp(ln_2(x))
-- Input xs: vector[] [n_seq] of [n_embd] for positions pos0 ..; output: the same shape.

-- Element-wise a + b over two arrays of vectors (the residual connections).
CREATE OR REPLACE FUNCTION gpt2.add(a vector[], b vector[]) RETURNS vector[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT array_agg(u.a + u.b ORDER BY u.t) FROM unnest(a, b) WITH ORDINALITY AS u(a, b, t)
$$;

CREATE OR REPLACE FUNCTION gpt2.block(layer int, xs vector[], pos0 int) RETURNS vector[]
LANGUAGE plpgsql AS $$
DECLARE
    attn vector[];
BEGIN
    attn := gpt2.linear('attn.c_proj', layer,            -- [n_seq, n_embd]
            gpt2.mha(layer,                               -- [n_seq, n_embd], appends to the KV cache
            gpt2.linear('attn.c_attn', layer,             -- [n_seq, 3*n_embd]
            gpt2.ln('ln_1', layer, xs)), pos0));
    xs := gpt2.add(xs, attn);
    RETURN gpt2.add(xs, gpt2.mlp(layer, gpt2.ln('ln_2', layer, xs)));
END
$$;
