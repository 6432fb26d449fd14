-- Stage 8: the forward pass: embeddings, then the blocks, up to the final norm. The one
-- layer loop: generation, batches, scoring, the glass box and training all run through it.
--
-- NumPy twin: tests/reference.py forward(ids) (and prefill / decode_step for the cache).
--   x = wte[ids] + wpe[positions]                       [n, n_embd]
--   x = block_0(x) ... block_{n_layer-1}(x)             [n, n_embd]
--   ln_f(x)                                             [n, n_embd]  (the logits: gpt2.head, stage 8b)
--
-- gpt2.run(seqs, ids, positions) runs NEW tokens through the model: token ids[i] of
-- sequence seqs[i] at position positions[i], appending to this connection's KV cache
-- (sorted by sequence, then position; positions consecutive within a sequence), and
-- returns their final hidden states (after ln_f). Per layer: the heads (gpt2.mha), then one
-- position-wise step that finishes the block and starts the next (gpt2.steps, stage 7b).
--
-- gpt2.run_layers is the loop itself, for callers that need more of it:
--   first_layer   start at a later block (xs: the residual stream entering it; the
--                 earlier layers' cache is not made), as activation patching does;
--   record        keep every activation in the temporary table tape(layer, site, xs), one
--                 row per site, xs aligned with seqs/positions; sites as TransformerLens
--                 names them: resid_pre, qkv, z (the heads' outputs side by side, before
--                 c_proj), attn_out, resid_mid, mlp_pre (before GELU), mlp_post, mlp_out; and
--                 resid_pre of layer n_layer, the residual stream after the last block;
--   edited        apply the temporary table run_edit(layer, site, i, head, v): v replaces
--                 site's vector at row i (for z: head `head`'s slice) in this run (stage 11b).
--
-- Sequences: generation uses 0 and up; gpt2.transformer -1; one-off runs (gpt2.forward, the
-- glass box, training) -2 and down, dropped when they are done (gpt2.scratch_seqs).

CREATE OR REPLACE FUNCTION gpt2.embed_at(ids int[], positions int[]) RETURNS vector[]
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    m gpt2.models := gpt2.current_model();   -- first: it puts the model's tables on the search path
    xs vector[];
BEGIN
    SELECT array_agg(e.w::vector + p.w::vector ORDER BY u.t) INTO xs   -- [n_seq, n_embd]
    FROM unnest(ids, positions) WITH ORDINALITY AS u(id, pos, t)
    JOIN wte e ON e.token = u.id
    JOIN wpe p ON p.pos = u.pos;
    IF coalesce(array_length(xs, 1), 0) <> coalesce(array_length(ids, 1), 0) THEN
        RAISE EXCEPTION 'token id or position out of range for model "%" (ids %, positions %)',
            m.name, ids, positions;
    END IF;
    RETURN xs;
END
$$;

CREATE OR REPLACE FUNCTION gpt2.embed(ids int[], pos0 int) RETURNS vector[]
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT gpt2.embed_at(ids, ARRAY(SELECT pos0 + i - 1 FROM generate_series(1, cardinality(ids)) AS i))
$$;

-- Sequence numbers and positions for one-off runs of several token lists, each from position
-- 0: seqs -2, -3, ... per list, as run() takes them.
--   gpt2.scratch_seqs(ARRAY[2, 3]) = (seqs {-2,-2,-3,-3,-3}, positions {0,1,0,1,2})
CREATE OR REPLACE FUNCTION gpt2.scratch_seqs(lengths int[], OUT seqs int[], OUT positions int[])
LANGUAGE sql IMMUTABLE AS $$
    SELECT array_agg(-1 - l.k ORDER BY l.k, p.j), array_agg(p.j ORDER BY l.k, p.j)
    FROM unnest(lengths) WITH ORDINALITY AS l(n, k), generate_series(0, l.n - 1) AS p(j)
$$;

-- The edit arrays of one (layer, site) for a run of n rows: [n] of vector, NULL where unedited
-- (NULL when nothing is).
CREATE OR REPLACE FUNCTION gpt2.edits_at(layer int, site text, n int) RETURNS vector[]
LANGUAGE plpgsql AS $$
BEGIN
    RETURN (SELECT CASE WHEN count(e.i) > 0 THEN array_agg(e.v ORDER BY r.i) END
            FROM generate_series(1, n) AS r(i)
            LEFT JOIN run_edit e ON e.i = r.i AND e.layer = edits_at.layer AND e.site = edits_at.site);
END
$$;

-- heads with the z edits of `layer`: head h's slice of row i replaced.
CREATE OR REPLACE FUNCTION gpt2.edit_heads(layer int, heads vector[]) RETURNS vector[]
LANGUAGE plpgsql AS $$
DECLARE
    m gpt2.models := gpt2.current_model();
    dh int := m.n_embd / m.n_head;
    e record;
BEGIN
    FOR e IN SELECT * FROM run_edit WHERE run_edit.layer = edit_heads.layer AND site = 'z' ORDER BY i, head LOOP
        -- as real[]: a slice may be empty (head 0, the last head), a vector may not (NULL || v is NULL)
        heads[e.i] := ((heads[e.i]::real[])[1:e.head * dh] || e.v::real[]
                       || (heads[e.i]::real[])[(e.head + 1) * dh + 1:m.n_embd])::vector;
    END LOOP;
    RETURN heads;
END
$$;

CREATE OR REPLACE FUNCTION gpt2.run_layers(seqs int[], positions int[], xs vector[], first_layer int DEFAULT 0,
                                           record boolean DEFAULT false, edited boolean DEFAULT false)
RETURNS vector[]
LANGUAGE plpgsql AS $$
DECLARE
    m gpt2.models := gpt2.current_model();
    n int := cardinality(xs);
    st gpt2.step_out;                                              -- x: the residual stream, y: the next qkv (or ln_f(x))
    heads vector[];                                                -- [n, n_embd] one layer's heads, side by side
BEGIN
    IF record THEN
        IF to_regclass('pg_temp.tape') IS NULL THEN
            CREATE TEMPORARY TABLE tape (layer int, site text, xs vector[]);
            ALTER TABLE tape ALTER COLUMN xs SET STORAGE EXTERNAL;   -- floats do not compress: do not try
        END IF;
        TRUNCATE tape;
    END IF;
    st := gpt2.steps(first_layer - 1, xs, NULL, false, NULL, NULL,
                     CASE WHEN edited THEN gpt2.edits_at(first_layer, 'resid_pre', n) END);
    FOR layer IN first_layer .. m.n_layer - 1 LOOP
        IF record THEN
            INSERT INTO tape VALUES (layer, 'resid_pre', st.x), (layer, 'qkv', st.y);
        END IF;
        heads := gpt2.mha(layer, seqs, positions, st.y);
        IF edited THEN
            heads := gpt2.edit_heads(layer, heads);
        END IF;
        IF record THEN
            INSERT INTO tape VALUES (layer, 'z', heads);
        END IF;
        st := CASE WHEN edited THEN gpt2.steps(layer, st.x, heads, record, gpt2.edits_at(layer, 'attn_out', n),
                                               gpt2.edits_at(layer, 'mlp_out', n), gpt2.edits_at(layer + 1, 'resid_pre', n))
                   ELSE gpt2.steps(layer, st.x, heads, record) END;
        IF record THEN
            INSERT INTO tape VALUES (layer, 'attn_out', st.attn_out), (layer, 'resid_mid', st.resid_mid),
                                    (layer, 'mlp_pre', st.mlp_pre), (layer, 'mlp_post', st.mlp_post),
                                    (layer, 'mlp_out', st.mlp_out);
        END IF;
        PERFORM gpt2.progress('layer', layer + 1, m.n_layer);
    END LOOP;
    IF record THEN
        INSERT INTO tape VALUES (m.n_layer, 'resid_pre', st.x);
    END IF;
    RETURN st.y;                                                   -- [n, n_embd] ln_f(x)
END
$$;

CREATE OR REPLACE FUNCTION gpt2.run(seqs int[], ids int[], positions int[]) RETURNS vector[]
LANGUAGE sql AS $$
    SELECT gpt2.run_layers(seqs, positions, gpt2.embed_at(ids, positions))
$$;

-- The one-sequence form, for calling the stages by hand: tokens at positions pos0, pos0+1, ...
-- of sequence -1 (the cache is emptied first when pos0 = 0): a prefill is
-- transformer(prompt, 0), a decode step transformer(ARRAY[token], n_past).
CREATE OR REPLACE FUNCTION gpt2.transformer(ids int[], pos0 int) RETURNS vector[]
LANGUAGE plpgsql AS $$
BEGIN
    IF pos0 = 0 THEN
        PERFORM gpt2.kv_drop(ARRAY[-1]);
    END IF;
    RETURN gpt2.run(array_fill(-1, ARRAY[cardinality(ids)]), ids,
                    ARRAY(SELECT pos0 + i - 1 FROM generate_series(1, cardinality(ids)) AS i));
END
$$;

-- Logits at every position of a token sequence, from scratch (a cache of its own, dropped
-- after): [n_seq, n_vocab] rows, for inspection and tests.
CREATE OR REPLACE FUNCTION gpt2.forward(ids int[], model text DEFAULT NULL)
RETURNS TABLE (pos int, token int, logit float8)
LANGUAGE plpgsql AS $$
DECLARE
    unit int := gpt2.parallel_unit();
    s record := gpt2.scratch_seqs(ARRAY[cardinality(ids)]);
    xs vector[];
    logits float8[];
BEGIN
    PERFORM gpt2.use_model(model, true);
    PERFORM gpt2.kv_drop(s.seqs[1:1]);
    xs := gpt2.run(s.seqs, ids, s.positions);
    PERFORM gpt2.kv_drop(s.seqs[1:1]);
    FOR start IN 1 .. cardinality(xs) BY unit LOOP                 -- the head, up to 16 positions a pass
        logits := gpt2.head(xs[start:start + unit - 1]);           -- (in a variable: in the query, the
        RETURN QUERY SELECT (start + r.i - 2)::int, (u.t - 1)::int, u.l   --  planner would call it per row)
                     FROM generate_series(1, array_length(logits, 1)) AS r(i),
                          unnest(logits[r.i:r.i]) WITH ORDINALITY AS u(l, t);
    END LOOP;
END
$$;

ALTER FUNCTION gpt2.embed_at(int[], int[]) SET plan_cache_mode = force_generic_plan;

-- Backward (training, stage 12): the layer loop run backwards over a recorded forward pass.
-- NumPy twin: tests/reference.py loss_and_grads (the loop over reversed blocks, then the
-- embeddings). seqs, positions, ids: the run's rows, as gpt2.run took them; the tape: what
-- gpt2.run_layers(..., record => true) kept of it; dys: d loss / d its final states (ln_f's
-- output, from gpt2.lm_backward). Each step's backward mirrors one forward step
-- (gpt2.block_step_backward), each layer's heads theirs (gpt2.mha_backward). The gradients
-- are added to the temporary table grads(name, i, g): row i of parameter `name`, in the
-- layout of gpt2.param_grad (stage 0b).
--   x = wte[ids] + wpe[positions]: wte's row of each token gets the gradient of x at its
--   positions (and wte already has the LM head's share: it is used twice), wpe's row of each
--   position likewise.

CREATE OR REPLACE FUNCTION gpt2.grads_reset() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF to_regclass('pg_temp.grads') IS NULL THEN
        CREATE TEMPORARY TABLE grads (name text, i int, g vector NOT NULL, PRIMARY KEY (name, i));
        ALTER TABLE grads ALTER COLUMN g SET STORAGE EXTERNAL;     -- floats do not compress: do not try,
        ALTER TABLE grads SET (toast_tuple_target = 8160);         -- and keep rows in the table while they fit
    END IF;
    TRUNCATE grads;
END
$$;

-- Add the rows of some parameters' gradients to grads (a parameter used twice adds up).
CREATE OR REPLACE FUNCTION gpt2.grads_add(gs gpt2.param_grad[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO grads AS o (name, i, g)
    SELECT p.name, (u.i - 1)::int, u.g FROM unnest(gs) AS p, unnest(p.rows) WITH ORDINALITY AS u(g, i)
    ON CONFLICT (name, i) DO UPDATE SET g = o.g + EXCLUDED.g;
END
$$;

-- One site of one layer of the tape.
CREATE OR REPLACE FUNCTION gpt2.tape_at(layer int, site text) RETURNS vector[]
LANGUAGE plpgsql AS $$
BEGIN
    RETURN (SELECT t.xs FROM tape t WHERE t.layer = tape_at.layer AND t.site = tape_at.site);
END
$$;

CREATE OR REPLACE FUNCTION gpt2.run_backward(seqs int[], positions int[], ids int[], dys vector[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    m gpt2.models := gpt2.current_model();
    dx vector[];                                                   -- d loss / d the residual stream
    dy vector[] := dys;                                            -- d loss / d the step's y
    sg gpt2.step_grad;
BEGIN
    FOR layer IN REVERSE m.n_layer - 1 .. -1 LOOP
        sg := gpt2.block_step_backward(layer, gpt2.tape_at(layer, 'z'), gpt2.tape_at(layer, 'resid_mid'),
                                       gpt2.tape_at(layer, 'mlp_pre'), gpt2.tape_at(layer, 'mlp_post'),
                                       gpt2.tape_at(layer + 1, 'resid_pre'), dx, dy);
        PERFORM gpt2.grads_add(sg.grads);
        dx := sg.dx;
        IF layer >= 0 THEN                                         -- d loss / d qkv of `layer`
            dy := gpt2.mha_backward(seqs, gpt2.tape_at(layer, 'qkv'), sg.dheads);
        END IF;
        PERFORM gpt2.progress('backward', m.n_layer - layer, m.n_layer + 1);
    END LOOP;
    INSERT INTO grads AS o (name, i, g)                            -- the embeddings: each token's and position's rows
    SELECT 'wte.weight', u.id, sum(u.d) FROM unnest(ids, dx) AS u(id, d) GROUP BY u.id
    UNION ALL
    SELECT 'wpe.weight', u.p, sum(u.d) FROM unnest(positions, dx) AS u(p, d) GROUP BY u.p
    ON CONFLICT (name, i) DO UPDATE SET g = o.g + EXCLUDED.g;
END
$$;
