-- Stage 6: the position-wise feed-forward network.
--
-- NumPy twin: tests/reference.py gelu(x) and mlp(x, c_fc, c_proj).
--   mlp(x) = gelu(x @ W_fc + b_fc) @ W_proj + b_proj     [n_seq, n_embd] -> [n_seq, n_inner] -> [n_seq, n_embd]
--   gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))   (GPT-2's tanh form, "gelu_new")

-- (applied to each number as c_fc computes it: gpt2.linear(..., 'gelu'), stage 4)
CREATE OR REPLACE FUNCTION gpt2.gelu(x float8) RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT 0.5 * x * (1 + tanh(sqrt(2 / pi()) * (x + 0.044715 * x * x * x)))
$$;

-- act(y) for a linear layer's act: NULL (none) or 'gelu'.
CREATE OR REPLACE FUNCTION gpt2.activation(act text, y float8) RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN act IS NULL THEN y ELSE gpt2.gelu(y) END
$$;

CREATE OR REPLACE FUNCTION gpt2.mlp(layer int, xs vector[]) RETURNS vector[]
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT gpt2.linear('mlp.c_proj', layer,             -- [n_seq, n_inner] -> [n_seq, n_embd]
           gpt2.linear('mlp.c_fc', layer, xs, 'gelu'))    -- [n_seq, n_embd] -> gelu([n_seq, n_inner])
$$;

DROP FUNCTION IF EXISTS gpt2.gelu(vector[]);   -- the separate pass of an earlier version
