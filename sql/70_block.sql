-- Stage 7: the transformer block (pre-norm, two residual branches), position by position.
--
-- NumPy twin: tests/reference.py block(x, layer, n_head, eps, kv).
--   x = x + mha(ln_1(x))        attention: c_attn -> heads over the KV cache -> c_proj
--   x = x + mlp(ln_2(x))        mlp = c_proj(gelu(c_fc(.)))
-- Only the heads (stage 5) need other positions. Everything between the heads of one block
-- and those of the next works position by position, so the layer loop (stage 8) runs it as
-- ONE step per layer boundary, gpt2.block_step, spread over both cores by stage 7b:
--
--   step(-1):  start block 0:                 qkv = c_attn(ln_1(x))
--   step(L):   finish block L:                attn_out = c_proj(heads)       x = x + attn_out
--                                             mlp_out = c_proj(gelu(c_fc(ln_2(x))))    x = x + mlp_out
--              then start block L+1           qkv = c_attn(ln_1(x))
--              (after the last block: the final norm, y = ln_f(x))
--
-- Recording (for the glass box and training) keeps the values in between, named as
-- TransformerLens names its hooks: attn_out, resid_mid (x after attention), mlp_pre (c_fc's
-- output before GELU) and mlp_out. Edits (interventions, stage 11b) replace attn_out, mlp_out
-- or the next block's input (resid_pre) at some positions: an edit array holds a vector for
-- each position, NULL where nothing changes.

-- Element-wise a + b over two arrays of vectors (the residual connections).
CREATE OR REPLACE FUNCTION gpt2.add(a vector[], b vector[]) RETURNS vector[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT array_agg(u.a + u.b ORDER BY u.t) FROM unnest(a, b) WITH ORDINALITY AS u(a, b, t)
$$;

-- xs with the non-NULL entries of edits in their place (edits NULL: xs).
CREATE OR REPLACE FUNCTION gpt2.edit(xs vector[], edits vector[]) RETURNS vector[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN edits IS NULL THEN xs
                ELSE ARRAY(SELECT coalesce(u.e, u.x) FROM unnest(xs, edits) WITH ORDINALITY AS u(x, e, t) ORDER BY u.t) END
$$;

-- What a step gives back for its positions (each [n] of vectors; the recorded ones NULL
-- unless asked for).
CREATE TYPE gpt2.step_out AS (
    x         vector[],     -- [n_embd] the residual stream after block `layer` (before block 0: the input)
    y         vector[],     -- [3*n_embd] qkv of block layer+1, or [n_embd] ln_f(x) after the last block
    attn_out  vector[],     -- [n_embd] recorded: block `layer`'s attention output (c_proj of the heads)
    resid_mid vector[],     -- [n_embd] recorded: x + attn_out
    mlp_pre   vector[],     -- [n_inner] recorded: c_fc(ln_2(resid_mid)), before GELU
    mlp_out   vector[]      -- [n_embd] recorded: the MLP's output
);

-- The step after the heads of block `layer`, for some positions: xs [n] of [n_embd] the
-- residual stream entering block `layer`, heads [n] of [n_embd] its heads' outputs side by
-- side. heads NULL: nothing to finish (xs enters block layer + 1; layer -1: the embeddings).
CREATE OR REPLACE FUNCTION gpt2.block_step(layer int, xs vector[], heads vector[], record boolean DEFAULT false,
                                           attn_edit vector[] DEFAULT NULL, mlp_edit vector[] DEFAULT NULL,
                                           resid_edit vector[] DEFAULT NULL)
RETURNS gpt2.step_out
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    n_layer int := (gpt2.current_model()).n_layer;
    r gpt2.step_out;
BEGIN
    r.x := xs;
    IF heads IS NOT NULL THEN                                      -- finish block `layer`
        r.attn_out := gpt2.edit(gpt2.linear('attn.c_proj', layer, heads), attn_edit);
        r.resid_mid := gpt2.add(xs, r.attn_out);                                     -- x + mha(ln_1(x))
        IF record THEN                                             -- GELU a pass of its own, to keep its input
            r.mlp_pre := gpt2.linear('mlp.c_fc', layer, gpt2.ln('ln_2', layer, r.resid_mid));
            r.mlp_out := gpt2.linear('mlp.c_proj', layer, gpt2.activation('gelu', r.mlp_pre));
        ELSE
            r.mlp_out := gpt2.linear('mlp.c_proj', layer, gpt2.linear('mlp.c_fc', layer, gpt2.ln('ln_2', layer, r.resid_mid), 'gelu'));
        END IF;
        r.mlp_out := gpt2.edit(r.mlp_out, mlp_edit);
        r.x := gpt2.add(r.resid_mid, r.mlp_out);                                     -- x + mlp(ln_2(x))
        IF NOT record THEN
            r.attn_out := NULL; r.resid_mid := NULL; r.mlp_out := NULL;
        END IF;
    END IF;
    r.x := gpt2.edit(r.x, resid_edit);
    r.y := CASE WHEN layer + 1 < n_layer THEN gpt2.linear('attn.c_attn', layer + 1, gpt2.ln('ln_1', layer + 1, r.x))
                ELSE gpt2.ln('ln_f', 0, r.x) END;
    RETURN r;
END
$$;
