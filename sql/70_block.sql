-- Stage 7: one transformer block (pre-norm, two residual branches).
--
-- NumPy twin: tests/reference.py block(x, layer, n_head, eps, kv).
--   x = x + mha(ln_1(x))        attention: c_attn -> heads over the KV cache -> c_proj
--   x = x + mlp(ln_2(x))
-- Input xs: vector[] [n] of [n_embd] at (seqs[i], positions[i]) (see gpt2.mha); output: the same shape.

-- Element-wise a + b over two arrays of vectors (the residual connections).
CREATE OR REPLACE FUNCTION gpt2.add(a vector[], b vector[]) RETURNS vector[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT array_agg(u.a + u.b ORDER BY u.t) FROM unnest(a, b) WITH ORDINALITY AS u(a, b, t)
$$;

DROP FUNCTION IF EXISTS gpt2.block(int, vector[], int);  -- the one-sequence form of earlier releases
CREATE OR REPLACE FUNCTION gpt2.block(layer int, seqs int[], positions int[], xs vector[]) RETURNS vector[]
LANGUAGE plpgsql AS $$
DECLARE
    attn vector[];
BEGIN
    attn := gpt2.linear('attn.c_proj', layer,            -- [n, n_embd]
            gpt2.mha(layer, seqs, positions,              -- [n, n_embd], appends to the KV cache
            gpt2.linear('attn.c_attn', layer,             -- [n, 3*n_embd]
            gpt2.ln('ln_1', layer, xs))));
    xs := gpt2.add(xs, attn);
    RETURN gpt2.add(xs, gpt2.mlp(layer, gpt2.ln('ln_2', layer, xs)));
END
$$;
