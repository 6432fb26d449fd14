-- Stage 7: one transformer block (pre-norm, two residual branches).
--
-- NumPy twin: tests/reference.py block(x, layer, n_head, eps, kv).
--   x = x + mha(ln_1(x))        attention: c_attn -> heads over the KV cache -> c_proj
--   x = x + mlp(ln_2(x))
-- Input xs: vector[] [n] of [n_embd] at (seqs[i], positions[i]) (see gpt2.mha); output: the same shape.
--
-- Only the heads need the other positions (through the KV cache); everything before them
-- (ln_1, c_attn) and after them (c_proj, the residuals, ln_2, the MLP) works position by
-- position. Those two halves run on both cores when there are many positions: see
-- gpt2.parallel_map in sql/75_parallel.sql.

-- Element-wise a + b over two arrays of vectors (the residual connections).
CREATE OR REPLACE FUNCTION gpt2.add(a vector[], b vector[]) RETURNS vector[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT array_agg(u.a + u.b ORDER BY u.t) FROM unnest(a, b) WITH ORDINALITY AS u(a, b, t)
$$;

-- The half before the heads: [n, n_embd] -> qkv [n, 3*n_embd].
CREATE OR REPLACE FUNCTION gpt2.block_in(layer int, xs vector[]) RETURNS vector[]
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT gpt2.linear('attn.c_attn', layer, gpt2.ln('ln_1', layer, xs))
$$;

-- The half after the heads: xs [n, n_embd] and the heads' outputs attn [n, n_embd] -> [n, n_embd].
CREATE OR REPLACE FUNCTION gpt2.block_out(layer int, xs vector[], attn vector[]) RETURNS vector[]
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    xs := gpt2.add(xs, gpt2.linear('attn.c_proj', layer, attn));               -- x + mha(ln_1(x))
    RETURN gpt2.add(xs, gpt2.mlp(layer, gpt2.ln('ln_2', layer, xs)));          -- x + mlp(ln_2(x))
END
$$;

DROP FUNCTION IF EXISTS gpt2.block(int, vector[], int);  -- the one-sequence form of earlier releases
CREATE OR REPLACE FUNCTION gpt2.block(layer int, seqs int[], positions int[], xs vector[]) RETURNS vector[]
LANGUAGE plpgsql AS $$
BEGIN
    RETURN gpt2.parallel_map('block_out', layer, xs,
           gpt2.mha(layer, seqs, positions,                                    -- appends to the KV cache
           gpt2.parallel_map('block_in', layer, xs, NULL)));
END
$$;
