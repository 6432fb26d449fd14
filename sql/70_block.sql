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
-- output before GELU), mlp_post (after it) and mlp_out. Edits (interventions, stage 11b) replace attn_out, mlp_out
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
    mlp_post  vector[],     -- [n_inner] recorded: after GELU
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
            r.mlp_post := gpt2.activation('gelu', r.mlp_pre);
            r.mlp_out := gpt2.linear('mlp.c_proj', layer, r.mlp_post);
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

-- Backward (training, stage 12): the step above, from the gradients of its outputs to those of
-- its inputs and of the parameters it read. NumPy twin: tests/reference.py block_backward and
-- mha_backward / mlp_backward (split at the heads as the step is).
--   dx_out   d loss / d x after block `layer` through later blocks' residuals (NULL: none yet)
--   dy       d loss / d y: of qkv of block layer + 1 (its heads' backward), or of ln_f(x)
--   heads, resid_mid, mlp_pre, mlp_post   the tape's z, resid_mid, mlp_pre, mlp_post of block
--            `layer` (all NULL for layer -1); x_out the step's x (resid_pre of layer + 1)
-- Gives d loss / d x entering block `layer` through its residual (dx; the ln_1 path is the
-- previous step's), d loss / d heads (dheads, for the heads' backward) and the parameters'
-- gradients.
CREATE TYPE gpt2.step_grad AS (
    dx     vector[],            -- [n] of [n_embd]
    dheads vector[],            -- [n] of [n_embd]; NULL for layer -1
    grads  gpt2.param_grad[]
);

CREATE OR REPLACE FUNCTION gpt2.block_step_backward(layer int, heads vector[], resid_mid vector[],
                                                    mlp_pre vector[], mlp_post vector[], x_out vector[],
                                                    dx_out vector[], dy vector[])
RETURNS gpt2.step_grad
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    n_layer int := (gpt2.current_model()).n_layer;
    next text := format('h.%s.', layer + 1);                       -- the names of the next block's parameters
    this text := format('h.%s.', layer);
    lg gpt2.ln_grad;
    lin gpt2.linear_grad;
    dx vector[];
    r gpt2.step_grad;
BEGIN
    r.grads := '{}';
    IF layer + 1 < n_layer THEN                                    -- y = c_attn(ln_1(x_out)) of block layer + 1
        lin := gpt2.linear_backward('attn.c_attn', layer + 1, gpt2.ln('ln_1', layer + 1, x_out), dy);
        lg := gpt2.ln_backward('ln_1', layer + 1, x_out, lin.dx);
        r.grads := ARRAY[ROW(next || 'attn.c_attn.weight', lin.dw), ROW(next || 'attn.c_attn.bias', ARRAY[lin.db]),
                         ROW(next || 'ln_1.weight', ARRAY[lg.dg]), ROW(next || 'ln_1.bias', ARRAY[lg.db])]::gpt2.param_grad[];
    ELSE                                                           -- y = ln_f(x_out)
        lg := gpt2.ln_backward('ln_f', 0, x_out, dy);
        r.grads := ARRAY[ROW('ln_f.weight', ARRAY[lg.dg]), ROW('ln_f.bias', ARRAY[lg.db])]::gpt2.param_grad[];
    END IF;
    dx := CASE WHEN dx_out IS NULL THEN lg.dx ELSE gpt2.add(dx_out, lg.dx) END;   -- d loss / d x_out
    IF heads IS NULL THEN                                          -- layer -1: x_out is the embeddings
        r.dx := dx;
        RETURN r;
    END IF;
    -- x_out = resid_mid + c_proj(gelu(c_fc(ln_2(resid_mid))))
    lin := gpt2.linear_backward('mlp.c_proj', layer, mlp_post, dx);
    r.grads := r.grads || ARRAY[ROW(this || 'mlp.c_proj.weight', lin.dw), ROW(this || 'mlp.c_proj.bias', ARRAY[lin.db])]::gpt2.param_grad[];
    lin := gpt2.linear_backward('mlp.c_fc', layer, gpt2.ln('ln_2', layer, resid_mid), gpt2.gelu_backward(mlp_pre, lin.dx));
    r.grads := r.grads || ARRAY[ROW(this || 'mlp.c_fc.weight', lin.dw), ROW(this || 'mlp.c_fc.bias', ARRAY[lin.db])]::gpt2.param_grad[];
    lg := gpt2.ln_backward('ln_2', layer, resid_mid, lin.dx);
    r.grads := r.grads || ARRAY[ROW(this || 'ln_2.weight', ARRAY[lg.dg]), ROW(this || 'ln_2.bias', ARRAY[lg.db])]::gpt2.param_grad[];
    dx := gpt2.add(dx, lg.dx);                                     -- d loss / d resid_mid
    -- resid_mid = xs + c_proj(heads)
    lin := gpt2.linear_backward('attn.c_proj', layer, heads, dx);
    r.grads := r.grads || ARRAY[ROW(this || 'attn.c_proj.weight', lin.dw), ROW(this || 'attn.c_proj.bias', ARRAY[lin.db])]::gpt2.param_grad[];
    r.dheads := lin.dx;
    r.dx := dx;
    RETURN r;
END
$$;
