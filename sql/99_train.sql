-- Stage 12: training: the loss, its gradient with respect to every parameter, AdamW.
--
-- NumPy twin: tests/reference.py loss_and_grads, clip_grad_norm and adamw (each checked
-- against PyTorch's autograd and torch.optim.AdamW in tests/test_reference.py).
--
-- The forward pass is the one generation runs (gpt2.run_layers, stage 8), recording its
-- activations; the backward pass walks it back stage by stage, each stage's backward beside
-- its forward in that stage's file:
--   gpt2.lm_backward        cross-entropy through the tied LM head          (80_head.sql)
--   gpt2.run_backward       the layer loop backwards, then the embeddings    (85_forward.sql)
--     block_step_backward   one position-wise step: ln_1/c_attn of the next block (or ln_f),
--                           mlp.c_proj, GELU, c_fc, ln_2, attn.c_proj         (70_block.sql)
--     mha_backward          the heads of each (sequence, head), on both cores (75_parallel.sql)
--     attend_backward       one head: softmax and the causal mask            (60_attention.sql)
--     linear_backward       dx, dW, db of a Conv1D                            (50_linear.sql)
--     gelu_backward, ln_backward                                              (40, 30)
--
-- A text is one sequence from position 0 whose tokens are predicted as gpt2.score predicts
-- them: the first from <|endoftext|>, each other from the tokens before it. The loss is the
-- mean of -log p over every predicted token of every text (token-weighted).
--
--   gpt2.loss(texts, model)                          the loss
--   gpt2.gradient(texts, tensor, model)              d loss / d tensor, rows in the checkpoint's layout
--   gpt2.gradient_summary(texts, model, top)         per tensor: the norm, and the rows that move most
--   gpt2.train_step(model, texts, lr, ...)           one AdamW step in place
--   gpt2.copy_model(source, target, replace)         a copy to train (the source stays as it is)
--   gpt2.train_start(source, query, target, ...)     a training run over the text a query returns,
--   gpt2.train_next(model) / CALL gpt2.train(model)  one step of it / all its steps, committing each
--
-- Training needs float32 weights and, for dx = dy @ W^T, each Conv1D weight and wte also
-- transposed: conv1d rows `tensor^T` (one per input, chunked over outputs) and `wte^T` (one per
-- embedding dimension, chunked over the vocabulary), made by gpt2.prepare_backward and kept
-- equal to the weights after every step. AdamW's moments live in the model's schema
-- (table adam), the step count in gpt2.models.step.

-- Every parameter tensor of the current model: its Hugging Face name, where it lives (kind,
-- tensor, layer: see gpt2.param_rows), its rows in the gradient layout (gpt2.param_grad)
-- and their width, and whether AdamW decays it (the 2-D ones, as nanoGPT does).
CREATE OR REPLACE FUNCTION gpt2.parameters()
RETURNS TABLE (name text, kind text, tensor text, layer int, n_rows int, width int, decay boolean)
LANGUAGE sql STABLE AS $$
    WITH m AS (SELECT * FROM gpt2.current_model()),
    norms AS (                                          -- every layer norm: (tensor, layer, its name's prefix)
        SELECT 'ln_f' AS tensor, 0 AS layer, 'ln_f.' AS prefix
        UNION ALL
        SELECT t, l, format('h.%s.%s.', l, t) FROM m, generate_series(0, m.n_layer - 1) AS l, unnest(ARRAY['ln_1', 'ln_2']) AS t
    ), convs AS (                                       -- every Conv1D: (tensor, n_in, n_out)
        SELECT * FROM m, LATERAL (VALUES ('attn.c_attn', m.n_embd, 3 * m.n_embd), ('attn.c_proj', m.n_embd, m.n_embd),
                                         ('mlp.c_fc', m.n_embd, m.n_inner), ('mlp.c_proj', m.n_inner, m.n_embd)) AS c(tensor, n_in, n_out)
    )
    SELECT 'wte.weight', 'wte', 'wte', 0, m.n_vocab, m.n_embd, true FROM m
    UNION ALL SELECT 'wpe.weight', 'wpe', 'wpe', 0, m.n_positions, m.n_embd, true FROM m
    UNION ALL SELECT n.prefix || 'weight', 'ln_g', n.tensor, n.layer, 1, m.n_embd, false FROM norms n, m
    UNION ALL SELECT n.prefix || 'bias', 'ln_b', n.tensor, n.layer, 1, m.n_embd, false FROM norms n, m
    UNION ALL SELECT format('h.%s.%s.weight', l, c.tensor), 'conv1d_w', c.tensor, l, c.n_out, c.n_in, true
              FROM convs c, generate_series(0, c.n_layer - 1) AS l
    UNION ALL SELECT format('h.%s.%s.bias', l, c.tensor), 'conv1d_b', c.tensor, l, 1, c.n_out, false
              FROM convs c, generate_series(0, c.n_layer - 1) AS l
$$;

-- A one-line error unless the current model can be trained (float32 weights).
CREATE OR REPLACE FUNCTION gpt2.require_float32(m gpt2.models) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF m.dtype <> 'float32' THEN
        RAISE EXCEPTION 'training needs float32 weights, and model "%" is %', m.name, m.dtype
            USING HINT = format('load a float32 copy: gpt2sql load %s --name %s-f32 --dtype float32', m.source, m.name);
    END IF;
END
$$;

-- The transposed rows of a Conv1D weight (tensor^T: one per input i, W[i, :] in chunks over
-- the outputs) or of wte (wte^T: one per embedding dimension, in chunks over the vocabulary):
-- how many chunks, and chunk k's rows from the current weights (cols: their col, ws: their w).
CREATE OR REPLACE FUNCTION gpt2.transposed_chunks(tensor text, layer int) RETURNS int
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    m gpt2.models := gpt2.current_model();
    n_rows int := CASE WHEN tensor = 'wte' THEN m.n_vocab                -- rows of the weight as stored
                       ELSE (SELECT count(*) FROM conv1d c WHERE c.tensor = transposed_chunks.tensor
                                                             AND c.layer = transposed_chunks.layer AND c.chunk = 0) END;
BEGIN
    RETURN (n_rows - 1) / gpt2.chunk_dims(n_rows, 'float32') + 1;
END
$$;

CREATE OR REPLACE FUNCTION gpt2.transposed_rows(tensor text, layer int, k int, OUT cols int[], OUT ws vector[])
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    m gpt2.models := gpt2.current_model();
    n_rows int := CASE WHEN tensor = 'wte' THEN m.n_vocab
                       ELSE (SELECT count(*) FROM conv1d c WHERE c.tensor = transposed_rows.tensor
                                                             AND c.layer = transposed_rows.layer AND c.chunk = 0) END;
    width int := gpt2.chunk_dims(n_rows, 'float32');
    wm real[];                                                     -- [width, n_cols] chunk k of the rows as stored
BEGIN
    IF tensor = 'wte' THEN                                         -- [n_vocab, n_embd]
        wm := ARRAY(SELECT e.w::vector::real[] FROM wte e WHERE e.token BETWEEN k * width AND (k + 1) * width - 1
                    ORDER BY e.token);
    ELSE                                                           -- W^T [n_out, n_in]: conv1d's rows by output
        wm := ARRAY(SELECT gpt2.vcat(c.w::vector ORDER BY c.chunk)::real[] FROM conv1d c
                    WHERE c.tensor = transposed_rows.tensor AND c.layer = transposed_rows.layer
                      AND c.col BETWEEN k * width AND (k + 1) * width - 1
                    GROUP BY c.col ORDER BY c.col);
    END IF;
    ws := gpt2.transpose(wm);                                      -- (a chunk at a time: arrays of a few MB)
    cols := ARRAY(SELECT generate_series(0, cardinality(ws) - 1));
END
$$;

-- Write rows of tensor^T (chunk k: cols, ws).
CREATE OR REPLACE FUNCTION gpt2.write_transposed(tensor text, layer int, k int, cols int[], ws vector[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO conv1d AS o (tensor, layer, chunk, col, w, b)
    SELECT write_transposed.tensor || '^T', write_transposed.layer, k, u.c, u.w, 0 FROM unnest(cols, ws) AS u(c, w)
    ON CONFLICT ON CONSTRAINT conv1d_pkey DO UPDATE SET w = EXCLUDED.w;
END
$$;

-- transposed_rows of units u0 .. u0 + count - 1 (unit j: tensors[j], layers[j], chunk ks[j]).
CREATE OR REPLACE FUNCTION gpt2.transposed_units(tensors text[], layers int[], ks int[], u0 int, count int)
RETURNS TABLE (g int, cols int[], ws vector[])
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    RETURN QUERY
    SELECT j.k, r.cols, r.ws
    FROM gpt2.units u, LATERAL (SELECT u0 + u.g + 1 AS k OFFSET 0) AS j,
         LATERAL gpt2.transposed_rows(tensors[j.k], layers[j.k], ks[j.k]) AS r
    WHERE u.g < count;
END
$$;

-- Every transposed weight of the current model, from its weights as they are now: the chunks
-- in parallel units, written by this process.
CREATE OR REPLACE FUNCTION gpt2.write_all_transposed() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    tensors text[];
    layers int[];
    ks int[];
    round int := gpt2.parallel_round();
    r record;
BEGIN
    SELECT array_agg(p.tensor ORDER BY p.name, k), array_agg(p.layer ORDER BY p.name, k), array_agg(k ORDER BY p.name, k)
    INTO tensors, layers, ks
    FROM gpt2.parameters() AS p, generate_series(0, gpt2.transposed_chunks(p.tensor, p.layer) - 1) AS k
    WHERE p.kind IN ('wte', 'conv1d_w');
    FOR u0 IN 0 .. cardinality(tensors) - 1 BY round LOOP
        FOR r IN SELECT * FROM gpt2.transposed_units(tensors, layers, ks, u0, least(round, cardinality(tensors) - u0)) LOOP
            PERFORM gpt2.write_transposed(tensors[r.g], layers[r.g], ks[r.g], r.cols, r.ws);
        END LOOP;
    END LOOP;
END
$$;

-- What a model needs before its gradients can be taken: float32 weights, and the transposed
-- weights (made once: docs/training.md says how long). A role that may only read the model gets a one-line error.
CREATE OR REPLACE FUNCTION gpt2.prepare_backward() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    m gpt2.models := gpt2.current_model();
BEGIN
    PERFORM gpt2.require_float32(m);
    IF EXISTS (SELECT FROM conv1d WHERE tensor = 'wte^T') THEN
        RETURN;
    END IF;
    IF NOT has_table_privilege(format('%I.conv1d', m.schema_name), 'INSERT') THEN
        RAISE EXCEPTION 'model "%" has no transposed weights yet, and this role may not add them', m.name
            USING HINT = format('its owner can run once: SELECT gpt2.use_model(%L); SELECT gpt2.prepare_backward();', m.name);
    END IF;
    PERFORM gpt2.write_all_transposed();
END
$$;

-- The training examples of some texts: each text one sequence from position 0 (-2, -3, ...),
-- its tokens predicted from <|endoftext|> and the tokens before them.
--   texts {'Hello world'} -> inputs {50256, 15496}, targets {15496, 995}
CREATE OR REPLACE FUNCTION gpt2.lm_examples(texts text[], m gpt2.models,
                                            OUT seqs int[], OUT positions int[], OUT inputs int[], OUT targets int[])
LANGUAGE plpgsql AS $$
DECLARE
    lengths int[];
    t text;
    tokens int[];
BEGIN
    IF texts IS NULL OR cardinality(texts) = 0 THEN
        RAISE EXCEPTION 'no texts given';
    END IF;
    inputs := '{}'; targets := '{}'; lengths := '{}';
    FOR k IN 1 .. cardinality(texts) LOOP
        t := texts[k];
        IF t IS NULL THEN
            RAISE EXCEPTION 'text % is NULL', k;
        END IF;
        tokens := coalesce(gpt2.tokenize(t), '{}');
        IF cardinality(tokens) > m.n_positions THEN
            RAISE EXCEPTION 'text % has % tokens; model "%" sees at most % at once', k, cardinality(tokens), m.name, m.n_positions
                USING HINT = 'cut it into pieces (gpt2.train_start cuts a query''s text into blocks)';
        END IF;
        IF cardinality(tokens) > 0 THEN
            inputs := inputs || gpt2.eos_id() || tokens[1:cardinality(tokens) - 1];
            targets := targets || tokens;
            lengths := lengths || cardinality(tokens);
        END IF;
    END LOOP;
    IF cardinality(targets) = 0 THEN
        RAISE EXCEPTION 'the texts hold no tokens to predict';
    END IF;
    SELECT s.seqs, s.positions INTO seqs, positions FROM gpt2.scratch_seqs(lengths) AS s;
END
$$;

-- The mean loss over examples (inputs at (seqs, positions), targets), and with grads => true its
-- gradient in the table grads (stage 8): the forward pass recorded, then backwards.
CREATE OR REPLACE FUNCTION gpt2.loss_and_grads(seqs int[], positions int[], inputs int[], targets int[], grads boolean)
RETURNS float8
LANGUAGE plpgsql AS $$
DECLARE
    m gpt2.models := gpt2.current_model();
    unit int := gpt2.parallel_unit();
    seq_ids int[] := ARRAY(SELECT DISTINCT unnest(seqs));
    xs vector[];
    lg gpt2.lm_grad;
    total float8 := 0;
BEGIN
    PERFORM gpt2.kv_drop(seq_ids);
    xs := gpt2.run_layers(seqs, positions, gpt2.embed_at(inputs, positions), 0, grads);
    PERFORM gpt2.kv_drop(seq_ids);                                 -- (training reads the tape, not the cache)
    IF NOT grads THEN
        RETURN gpt2.lm_loss(xs, targets) / cardinality(targets);
    END IF;
    PERFORM gpt2.grads_reset();
    PERFORM set_config('gpt2sql.grads_key', '', false);            -- (gpt2.grads_for)
    PERFORM gpt2.progress('lm head', 0, 1);
    lg := gpt2.lm_backward(xs, targets, 1.0 / cardinality(targets));
    PERFORM gpt2.progress('lm head', 1, 1);
    PERFORM gpt2.grads_add(ARRAY[ROW('wte.weight', lg.dwte)]::gpt2.param_grad[]);
    PERFORM gpt2.run_backward(seqs, positions, inputs, lg.dx);
    RETURN lg.loss / cardinality(targets);
END
$$;

CREATE OR REPLACE FUNCTION gpt2.loss(texts text[], model text DEFAULT NULL) RETURNS float8
LANGUAGE plpgsql AS $$
DECLARE
    m gpt2.models := gpt2.use_model(model, true);
    e record := gpt2.lm_examples(texts, m);
BEGIN
    RETURN gpt2.loss_and_grads(e.seqs, e.positions, e.inputs, e.targets, false);
END
$$;

-- The gradients of texts on the current model in the table grads, computed unless they are
-- there already: asking for one tensor after another (gpt2.gradient) pays for one backward
-- pass. They are the same texts, model and weights when the key says so.
CREATE OR REPLACE FUNCTION gpt2.grads_for(texts text[], m gpt2.models) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    key text := md5(concat_ws(':', m.name, m.loaded_at, m.step, texts::text));
    e record;
BEGIN
    IF current_setting('gpt2sql.grads_key', true) = key AND to_regclass('pg_temp.grads') IS NOT NULL THEN
        RETURN;
    END IF;
    PERFORM gpt2.prepare_backward();
    e := gpt2.lm_examples(texts, m);
    PERFORM gpt2.loss_and_grads(e.seqs, e.positions, e.inputs, e.targets, true);
    PERFORM set_config('gpt2sql.grads_key', key, false);
END
$$;

-- d loss / d tensor (a Hugging Face parameter name), in the checkpoint's layout: row i of a 2-D
-- tensor (Conv1D weights are [in, out]), one row i = 0 of a 1-D one.
CREATE OR REPLACE FUNCTION gpt2.gradient(texts text[], tensor text, model text DEFAULT NULL)
RETURNS TABLE (i int, g float8[])
LANGUAGE plpgsql AS $$
DECLARE
    m gpt2.models := gpt2.use_model(model, true);
    p record;
BEGIN
    SELECT * INTO p FROM gpt2.parameters() AS q WHERE q.name = gradient.tensor;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'model "%" has no parameter "%"', m.name, gradient.tensor
            USING HINT = 'names as Hugging Face names them: wte.weight, wpe.weight, ln_f.bias, h.0.attn.c_attn.weight, h.0.ln_2.weight, ...';
    END IF;
    PERFORM gpt2.grads_for(texts, m);
    IF p.kind = 'conv1d_w' THEN                                    -- grads hold dW[:, o]: transpose to [in, out]
        RETURN QUERY SELECT (r.k - 1)::int, r.v::real[]::float8[]
                     FROM unnest(gpt2.transpose(ARRAY(SELECT d.g FROM grads d WHERE d.name = gradient.tensor ORDER BY d.i)))
                          WITH ORDINALITY AS r(v, k);
    ELSE                                                           -- rows never reached are 0
        RETURN QUERY SELECT k, coalesce(d.g, gpt2.fill(0, p.width))::real[]::float8[]
                     FROM generate_series(0, p.n_rows - 1) AS k LEFT JOIN grads d ON d.name = gradient.tensor AND d.i = k
                     ORDER BY k;
    END IF;
END
$$;

-- The glass box of learning: for every parameter tensor, the norm of its gradient and the rows
-- that move most (wte and wpe: which tokens and positions; Conv1D weights: which output
-- columns), each with its largest entry. "Which weights would these texts move most?"
CREATE OR REPLACE FUNCTION gpt2.gradient_summary(texts text[], model text DEFAULT NULL, top int DEFAULT 3)
RETURNS TABLE (name text, norm float8, top_rows jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    m gpt2.models := gpt2.use_model(model, true);
BEGIN
    IF top IS NULL OR top < 0 OR top > gpt2.top_limit() THEN
        RAISE EXCEPTION 'top must be between 0 and %, got %', gpt2.top_limit(), top;
    END IF;
    PERFORM gpt2.grads_for(texts, m);
    RETURN QUERY
    WITH r AS (                                        -- every gradient row, its norm
        SELECT d.name, d.i, d.g, sqrt(-(d.g <#> d.g)) AS norm FROM grads d
    ), ranked AS (
        SELECT r.*, row_number() OVER (PARTITION BY r.name ORDER BY r.norm DESC, r.i) AS rank FROM r
    ), best AS (                                       -- the top rows, each with its largest entry
        SELECT k.name, jsonb_agg(jsonb_build_object('row', k.i, 'norm', k.norm, 'index', x.j - 1, 'value', x.v)
                                 ORDER BY k.rank) AS rows
        FROM ranked k, LATERAL (SELECT u.j, u.v FROM unnest(k.g::real[]) WITH ORDINALITY AS u(v, j)
                                ORDER BY abs(u.v) DESC, u.j LIMIT 1) AS x
        WHERE k.rank <= top
        GROUP BY k.name
    )
    SELECT p.name, coalesce(sqrt(sum(r.norm * r.norm)), 0), coalesce(b.rows, '[]')
    FROM gpt2.parameters() AS p
    LEFT JOIN r ON r.name = p.name
    LEFT JOIN best b ON b.name = p.name
    GROUP BY p.name, b.rows
    ORDER BY 2 DESC NULLS LAST, p.name;
END
$$;

-- Where a parameter lives, read and written in the gradient layout (gpt2.parameters' kind):
--   wte, wpe      rows by token / position                   (tables wte, wpe)
--   ln_g, ln_b    one row: a layer norm's gain or shift      (table ln)
--   conv1d_w      rows by output column, W[:, o]             (conv1d's chunks of it, joined)
--   conv1d_b      one row: the bias                          (conv1d's b of chunk 0, by column)
CREATE OR REPLACE FUNCTION gpt2.param_rows(kind text, tensor text, layer int, lo int DEFAULT 0, hi int DEFAULT NULL)
RETURNS TABLE (i int, w vector)
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    hi := coalesce(hi, 2147483647);                                -- rows lo .. hi
    CASE kind
        WHEN 'wte' THEN RETURN QUERY SELECT e.token, e.w::vector FROM wte e WHERE e.token BETWEEN lo AND hi;
        WHEN 'wpe' THEN RETURN QUERY SELECT e.pos, e.w::vector FROM wpe e WHERE e.pos BETWEEN lo AND hi;
        WHEN 'ln_g' THEN RETURN QUERY SELECT 0, l.g FROM ln l WHERE l.tensor = param_rows.tensor AND l.layer = param_rows.layer;
        WHEN 'ln_b' THEN RETURN QUERY SELECT 0, l.b FROM ln l WHERE l.tensor = param_rows.tensor AND l.layer = param_rows.layer;
        WHEN 'conv1d_w' THEN
            RETURN QUERY SELECT c.col, gpt2.vcat(c.w::vector ORDER BY c.chunk) FROM conv1d c
                         WHERE c.tensor = param_rows.tensor AND c.layer = param_rows.layer AND c.col BETWEEN lo AND hi
                         GROUP BY c.col;
        WHEN 'conv1d_b' THEN
            RETURN QUERY SELECT 0, array_agg(c.b ORDER BY c.col)::vector FROM conv1d c
                         WHERE c.tensor = param_rows.tensor AND c.layer = param_rows.layer AND c.chunk = 0;
    END CASE;
END
$$;

-- Write rows (i, w) of a parameter back where it lives (see gpt2.param_rows). A Conv1D's weight
-- and bias share conv1d's rows: they are written together (bias: the new bias, with the weight).
CREATE OR REPLACE FUNCTION gpt2.param_write(kind text, tensor text, layer int, rows_i int[], rows_w vector[],
                                            bias vector DEFAULT NULL) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    width int;
BEGIN
    CASE kind
        WHEN 'wte' THEN UPDATE wte e SET w = u.w FROM unnest(rows_i, rows_w) AS u(i, w) WHERE e.token = u.i;
        WHEN 'wpe' THEN UPDATE wpe e SET w = u.w FROM unnest(rows_i, rows_w) AS u(i, w) WHERE e.pos = u.i;
        WHEN 'ln_g' THEN UPDATE ln l SET g = rows_w[1] WHERE l.tensor = param_write.tensor AND l.layer = param_write.layer;
        WHEN 'ln_b' THEN UPDATE ln l SET b = rows_w[1] WHERE l.tensor = param_write.tensor AND l.layer = param_write.layer;
        WHEN 'conv1d_w' THEN
            width := gpt2.chunk_dims(vector_dims(rows_w[1]), 'float32');
            UPDATE conv1d c SET w = subvector(u.w, c.chunk * width + 1, least(width, vector_dims(u.w) - c.chunk * width)),
                                b = CASE WHEN c.chunk = 0 THEN (bias::real[])[c.col + 1] ELSE 0 END
            FROM unnest(rows_i, rows_w) AS u(i, w)
            WHERE c.tensor = param_write.tensor AND c.layer = param_write.layer AND c.col = u.i;
    END CASE;
END
$$;

-- One AdamW step, as torch.optim.AdamW takes it (NumPy twin: reference.adamw):
--   w = w (1 - lr wd);  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
--   w = w - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
-- g is the stored gradient times coef (the clipping); rows without one have a gradient of 0.
-- Everything but the last factor is pgvector arithmetic on whole rows; 1 / (sqrt(v) / .. + eps)
-- takes a pass over the numbers (pgvector has no division or square root), which is most of
-- a step's work: gpt2.adamw_rows does it in parallel units (gpt2.adamw_step).

-- The new moments of one parameter, saved in adam (they need grads, which only this process sees).
CREATE OR REPLACE FUNCTION gpt2.adamw_moments(p record, coef float8, beta1 float8, beta2 float8) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    d int := p.width;
    zeros vector := gpt2.fill(0, d);                               -- (constant vectors made once, not per row)
    scale vector := gpt2.fill(coef, d);
    b1 vector := gpt2.fill(beta1, d);
    c1 vector := gpt2.fill(1 - beta1, d);
    b2 vector := gpt2.fill(beta2, d);
    r2 vector := gpt2.fill(sqrt(1 - beta2), d);                    -- v gets (g r2)^2 = g^2 (1 - beta2)
BEGIN
    -- subtle: products that could underflow take flushed factors (gpt2.flush, stage 3): the
    --   gradient before and after clipping's scale (then (g r2)^2 >= 2.9e-39 r2^2); the moments
    --   decay by beta > 0.5 without reaching 0 (their smallest float32 times beta rounds to itself)
    INSERT INTO adam AS o (name, i, m, v)
    SELECT p.name, u.i, u.m * b1 + u.g * c1, u.v * b2 + (u.g * r2) * (u.g * r2)
    FROM (SELECT k AS i, coalesce(gpt2.flush(gpt2.flush(g.g) * scale), zeros) AS g,
                 coalesce(CASE WHEN beta1 <= 0.5 THEN gpt2.flush(a.m) ELSE a.m END, zeros) AS m,
                 coalesce(CASE WHEN beta2 <= 0.5 THEN gpt2.flush(a.v) ELSE a.v END, zeros) AS v
          FROM generate_series(0, p.n_rows - 1) AS k
          LEFT JOIN grads g ON g.name = p.name AND g.i = k
          LEFT JOIN adam a ON a.name = p.name AND a.i = k
          OFFSET 0) AS u
    ON CONFLICT (name, i) DO UPDATE SET m = EXCLUDED.m, v = EXCLUDED.v;
END
$$;

-- The new values of rows lo .. hi of one parameter, from its weights and its (new) moments.
CREATE OR REPLACE FUNCTION gpt2.adamw_rows(name text, kind text, tensor text, layer int, lo int, hi int, width int,
                                           decay float8, step_size float8, root_bc2 float8, eps float8,
                                           OUT rows_i int[], OUT rows_w vector[])
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    decay_v vector := gpt2.fill(decay, width);
    step_v vector := gpt2.fill(step_size, width);
BEGIN
    SELECT array_agg(w.i), array_agg(w.w * decay_v - gpt2.flush(gpt2.flush(a.m) * r.r) * step_v) INTO rows_i, rows_w
    FROM gpt2.param_rows(kind, tensor, layer, lo, hi) AS w
    JOIN adam a ON a.name = adamw_rows.name AND a.i = w.i,
    LATERAL (SELECT ARRAY(SELECT 1 / (sqrt(x) / root_bc2 + eps) FROM unnest(a.v::real[]) AS x)::vector AS r) AS r;
END
$$;

-- adamw_rows of units u0 .. u0 + count - 1 (unit k: the k-th entry of every array).
CREATE OR REPLACE FUNCTION gpt2.adamw_units(names text[], kinds text[], tensors text[], layers int[], los int[], his int[],
                                            widths int[], decays float8[], step_size float8, root_bc2 float8,
                                            eps float8, u0 int, count int)
RETURNS TABLE (g int, rows_i int[], rows_w vector[])
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    RETURN QUERY
    SELECT k, r.rows_i, r.rows_w
    FROM gpt2.units u, LATERAL (SELECT u0 + u.g + 1 AS k OFFSET 0) AS j,
         LATERAL gpt2.adamw_rows(names[k], kinds[k], tensors[k], layers[k], los[k], his[k], widths[k], decays[k],
                                 step_size, root_bc2, eps) AS r
    WHERE u.g < count;
END
$$;

SELECT gpt2.run_in_units('gpt2.adamw_units(text[], text[], text[], int[], int[], int[], int[], float8[], float8, float8, float8, int, int)');
SELECT gpt2.run_in_units('gpt2.transposed_units(text[], int[], int[], int, int)');

-- The optimizer's state of a model that trains: AdamW's moments by gradient row (the step
-- count is gpt2.models.step). Made on the first step.
CREATE OR REPLACE FUNCTION gpt2.prepare_training() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    m gpt2.models := gpt2.current_model();
BEGIN
    PERFORM gpt2.prepare_backward();
    IF to_regclass(format('%I.adam', m.schema_name)) IS NULL THEN
        EXECUTE format('CREATE TABLE %I.adam (name text, i int, m vector NOT NULL, v vector NOT NULL, PRIMARY KEY (name, i))',
                       m.schema_name);
        -- in the row while it fits a page (n_embd-wide rows: 6 kB), out of it, uncompressed, when not
        EXECUTE format('ALTER TABLE %I.adam ALTER COLUMN m SET STORAGE EXTERNAL, ALTER COLUMN v SET STORAGE EXTERNAL',
                       m.schema_name);
        EXECUTE format('ALTER TABLE %I.adam SET (toast_tuple_target = 8160)', m.schema_name);
    END IF;
END
$$;

-- Each step's loss, learning rate, gradient norm (before clipping) and per-tensor gradient norms.
CREATE TABLE IF NOT EXISTS gpt2.train_log (
    model      text NOT NULL REFERENCES gpt2.models (name) ON DELETE CASCADE,
    step       int  NOT NULL,
    loss       float8 NOT NULL,
    lr         float8 NOT NULL,
    grad_norm  float8 NOT NULL,
    tokens     int  NOT NULL,
    norms      jsonb NOT NULL,           -- {"wte.weight": 1.23, ...}
    seconds    float8 NOT NULL,
    at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model, step)
);

-- One AdamW step on the current model from examples (as gpt2.lm_examples makes them), after
-- clipping the global gradient norm to clip as torch.nn.utils.clip_grad_norm_ does (NULL: no
-- clipping). A loss or gradient that is not finite stops the step before anything changes.
CREATE OR REPLACE FUNCTION gpt2.adamw_step(seqs int[], positions int[], inputs int[], targets int[], lr float8,
                                           beta1 float8, beta2 float8, eps float8, weight_decay float8, clip float8,
                                           OUT step int, OUT loss float8, OUT grad_norm float8)
LANGUAGE plpgsql AS $$
DECLARE
    m gpt2.models := gpt2.current_model();
    started timestamptz := clock_timestamp();
    p record;
    r record;
    coef float8;                                                   -- the clipping
    un text[]; ukind text[]; utensor text[]; ulayer int[];         -- the units: parameter, rows lo .. hi
    ulo int[]; uhi int[]; uwidth int[]; udecay float8[];
    biases vector[] := '{}';                                       -- the Conv1D biases' new values,
    bias_of text[] := '{}';                                        --   by 'tensor:layer'
    norms jsonb;
    msg text;
BEGIN
    IF NOT (lr > 0 AND lr < 'Infinity') THEN RAISE EXCEPTION 'lr must be > 0 and finite, got %', lr; END IF;
    IF NOT (beta1 >= 0 AND beta1 < 1 AND beta2 >= 0 AND beta2 < 1) THEN
        RAISE EXCEPTION 'beta1 and beta2 must be in [0, 1), got % and %', beta1, beta2;
    END IF;
    IF NOT (eps >= 0 AND eps < 'Infinity') THEN RAISE EXCEPTION 'eps must be >= 0 and finite, got %', eps; END IF;
    IF NOT (weight_decay >= 0 AND weight_decay < 'Infinity') THEN
        RAISE EXCEPTION 'weight_decay must be >= 0 and finite, got %', weight_decay;
    END IF;
    IF clip IS NOT NULL AND NOT (clip > 0) THEN RAISE EXCEPTION 'clip must be > 0 (or NULL for no clipping), got %', clip; END IF;
    IF NOT pg_try_advisory_xact_lock(hashtext('gpt2sql train'), hashtext(m.schema_name)) THEN
        RAISE EXCEPTION 'model "%" is taking a training step on another connection', m.name;
    END IF;
    IF NOT pg_try_advisory_xact_lock(hashtext('gpt2sql generate'), hashtext(m.schema_name)) THEN
        RAISE EXCEPTION 'a generation is running on model "%" on another connection: train a copy, or wait', m.name;
    END IF;
    PERFORM gpt2.prepare_training();
    BEGIN
        loss := gpt2.loss_and_grads(seqs, positions, inputs, targets, true);
    EXCEPTION WHEN data_exception THEN                             -- overflow, NaN in a vector, ...
        GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
        RAISE EXCEPTION 'the forward or backward pass left the numbers (%): the step is not taken', msg
            USING HINT = 'a lower lr, or clip, keeps the weights finite';
    END;
    SELECT sqrt(sum(-(g.g <#> g.g))) INTO grad_norm FROM grads g;
    SELECT jsonb_object_agg(x.name, x.norm ORDER BY x.name) INTO norms
    FROM (SELECT g.name, sqrt(sum(-(g.g <#> g.g))) AS norm FROM grads g GROUP BY g.name) AS x;
    IF NOT (loss > '-Infinity' AND loss < 'Infinity' AND grad_norm < 'Infinity') THEN   -- (NaN fails both)
        RAISE EXCEPTION 'the loss is % and the gradient norm %: the step is not taken', loss, grad_norm
            USING HINT = 'a lower lr, or clip, keeps the weights finite';
    END IF;
    step := m.step + 1;
    coef := CASE WHEN clip IS NULL THEN 1 ELSE least(clip / (grad_norm + 1e-6), 1) END;
    FOR p IN SELECT * FROM gpt2.parameters() LOOP
        PERFORM gpt2.adamw_moments(p, coef, beta1, beta2);
    END LOOP;
    -- the new weights, in units of at most ~1M numbers: first everything but the Conv1D weights
    -- (their biases are written with them), then those
    FOR pass IN 1 .. 2 LOOP
        SELECT array_agg(q.name ORDER BY q.name, k), array_agg(q.kind ORDER BY q.name, k),
               array_agg(q.tensor ORDER BY q.name, k), array_agg(q.layer ORDER BY q.name, k),
               array_agg(k * rows ORDER BY q.name, k), array_agg(least((k + 1) * rows, q.n_rows) - 1 ORDER BY q.name, k),
               array_agg(q.width ORDER BY q.name, k),
               array_agg(CASE WHEN q.decay THEN 1 - lr * weight_decay ELSE 1 END ORDER BY q.name, k)
        INTO un, ukind, utensor, ulayer, ulo, uhi, uwidth, udecay
        FROM gpt2.parameters() AS q, LATERAL (SELECT greatest(1, 1048576 / q.width) AS rows) AS s,
             generate_series(0, (q.n_rows - 1) / s.rows) AS k
        WHERE (q.kind = 'conv1d_w') = (pass = 2);
        FOR u0 IN 0 .. cardinality(un) - 1 BY gpt2.parallel_round() LOOP
            FOR r IN SELECT * FROM gpt2.adamw_units(un, ukind, utensor, ulayer, ulo, uhi, uwidth, udecay,
                                                     lr / (1 - beta1 ^ step), sqrt(1 - beta2 ^ step), eps,
                                                     u0, least(gpt2.parallel_round(), cardinality(un) - u0)) LOOP
                IF ukind[r.g] = 'conv1d_b' THEN                    -- written with its weight
                    biases := biases || r.rows_w[1];
                    bias_of := bias_of || format('%s:%s', utensor[r.g], ulayer[r.g]);
                ELSE
                    PERFORM gpt2.param_write(ukind[r.g], utensor[r.g], ulayer[r.g], r.rows_i, r.rows_w,
                                             biases[array_position(bias_of, format('%s:%s', utensor[r.g], ulayer[r.g]))]);
                END IF;
            END LOOP;
        END LOOP;
    END LOOP;
    PERFORM gpt2.write_all_transposed();                           -- dx's weights follow
    UPDATE gpt2.models SET step = adamw_step.step WHERE name = m.name;
    INSERT INTO gpt2.train_log (model, step, loss, lr, grad_norm, tokens, norms, seconds)
    VALUES (m.name, step, loss, lr, grad_norm, cardinality(targets), norms,
            extract(epoch FROM clock_timestamp() - started));
END
$$;

CREATE OR REPLACE FUNCTION gpt2.train_step(model text, texts text[], lr float8, beta1 float8 DEFAULT 0.9,
                                           beta2 float8 DEFAULT 0.999, eps float8 DEFAULT 1e-8,
                                           weight_decay float8 DEFAULT 0.0, clip float8 DEFAULT 1.0)
RETURNS TABLE (step int, loss float8, grad_norm float8)
LANGUAGE plpgsql AS $$
DECLARE
    m gpt2.models;
    e record;
BEGIN
    IF model IS NULL THEN
        RAISE EXCEPTION 'name the model to train (its weights change in place; gpt2.copy_model makes a copy)';
    END IF;
    m := gpt2.use_model(model, true);
    PERFORM gpt2.require_float32(m);
    e := gpt2.lm_examples(texts, m);
    RETURN QUERY SELECT * FROM gpt2.adamw_step(e.seqs, e.positions, e.inputs, e.targets, lr, beta1, beta2, eps,
                                               weight_decay, clip);
END
$$;

-- ---------------------------------------------------------------------------------------
-- Training runs: fine-tuning on the text a query returns
-- ---------------------------------------------------------------------------------------
--   SELECT * FROM gpt2.train_start('gpt2', 'SELECT body FROM docs', target => 'gpt2-docs', steps => 200);
--   CALL gpt2.train('gpt2-docs');           -- every step, each committed (psql: not in a transaction)
--   SELECT * FROM gpt2.train_next('gpt2-docs');   -- or one step at a time (the CLI's progress bar)
-- The text is tokenized in SQL, the documents joined with <|endoftext|> and cut into blocks of
-- block_size tokens (each token predicted from the ones before it in the stream; the first
-- block's first token from <|endoftext|>); an epoch visits the blocks in an order drawn from
-- (seed, epoch), batch_size blocks a step. The learning rate warms up linearly over `warmup`
-- steps, then decays along a cosine to min_lr at the last step (nanoGPT's schedule). Every step
-- commits with the model's weights, AdamW's moments and the step count, so a run that stops
-- anywhere goes on from its last step and ends with exactly the weights of a run that never
-- stopped: the batch and the learning rate of step s are functions of s and the run's rows.

CREATE TABLE IF NOT EXISTS gpt2.train_runs (
    model        text PRIMARY KEY REFERENCES gpt2.models (name) ON DELETE CASCADE,
    source       text NOT NULL,          -- the model it started from
    query        text NOT NULL,
    steps        int NOT NULL,
    batch_size   int NOT NULL,
    block_size   int NOT NULL,
    lr           float8 NOT NULL,
    min_lr       float8 NOT NULL,
    warmup       int NOT NULL,
    seed         bigint NOT NULL,
    beta1        float8 NOT NULL,
    beta2        float8 NOT NULL,
    eps          float8 NOT NULL,
    weight_decay float8 NOT NULL,
    clip         float8,
    n_blocks     int NOT NULL,
    n_tokens     int NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS gpt2.train_blocks (
    model    text NOT NULL REFERENCES gpt2.train_runs (model) ON DELETE CASCADE,
    block    int NOT NULL,
    inputs   int[] NOT NULL,
    targets  int[] NOT NULL,
    PRIMARY KEY (model, block)
);

-- A copy of model `source` named `target`, to train while the source stays as it is (replace: a
-- model of that name is dropped first). The same weights, a step count of 0, no moments.
CREATE OR REPLACE FUNCTION gpt2.copy_model(source text, target text, replace boolean DEFAULT false) RETURNS gpt2.models
LANGUAGE plpgsql AS $$
DECLARE
    m gpt2.models := gpt2.use_model(source, true);
    schema text := 'model_' || regexp_replace(lower(target), '[^a-z0-9_]', '_', 'g');   -- (loader/model.py schema_for)
    staging text := 'model~' || substr(schema, 7);
    clash text;
    t text;
BEGIN
    IF target IS NULL OR target !~ '^[A-Za-z0-9][A-Za-z0-9._-]*$' THEN
        RAISE EXCEPTION 'invalid model name "%": use letters, digits, ''.'', ''_'' and ''-'', starting with a letter or digit', target;
    ELSIF octet_length(schema) > current_setting('max_identifier_length')::int THEN
        RAISE EXCEPTION 'model name "%" is too long for its schema name', target;
    ELSIF target = source THEN
        RAISE EXCEPTION 'a copy of "%" needs another name', source;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('gpt2sql load'), hashtext(schema));   -- (as the loader's loads)
    SELECT name INTO clash FROM gpt2.models WHERE schema_name = schema;
    IF clash IS NOT NULL AND NOT (replace AND clash = target) THEN
        RAISE EXCEPTION 'model "%" exists', clash
            USING HINT = CASE WHEN clash = target THEN 'choose another name, or replace it' ELSE 'choose another name: they share a schema' END;
    END IF;
    IF to_regnamespace(staging) IS NOT NULL THEN                 -- (IF EXISTS would say "skipping")
        EXECUTE format('DROP SCHEMA %I CASCADE', staging);
    END IF;
    PERFORM gpt2.create_model_tables(staging, m.dtype);
    FOREACH t IN ARRAY ARRAY['wte', 'wpe', 'ln', 'conv1d'] LOOP
        EXECUTE format('INSERT INTO %I.%I SELECT * FROM %I.%I', staging, t, m.schema_name, t);
    END LOOP;
    PERFORM gpt2.finish_model_tables(staging);
    DELETE FROM gpt2.models WHERE name = target;
    IF to_regnamespace(schema) IS NOT NULL THEN
        EXECUTE format('DROP SCHEMA %I CASCADE', schema);
    END IF;
    EXECUTE format('ALTER SCHEMA %I RENAME TO %I', staging, schema);
    INSERT INTO gpt2.models (name, schema_name, n_layer, n_head, n_embd, n_inner, n_positions, n_vocab,
                             layer_norm_epsilon, dtype, source, layout)
    VALUES (target, schema, m.n_layer, m.n_head, m.n_embd, m.n_inner, m.n_positions, m.n_vocab,
            m.layer_norm_epsilon, m.dtype, format('copy of %s (%s, step %s)', m.name, m.source, m.step), m.layout)
    RETURNING * INTO m;
    RETURN m;
END
$$;

-- A training run: the copy (target NULL: source || '-ft'; target = source: train the source itself),
-- and the blocks of the query's text (its first column, one document per row). block_size NULL:
-- 128 tokens, or the model's context if it is shorter.
CREATE OR REPLACE FUNCTION gpt2.train_start(
    source text, query text, target text DEFAULT NULL, steps int DEFAULT 100, batch_size int DEFAULT 4,
    block_size int DEFAULT NULL, lr float8 DEFAULT 6e-4, min_lr float8 DEFAULT NULL, warmup int DEFAULT 10,
    seed bigint DEFAULT 0, weight_decay float8 DEFAULT 0.1, clip float8 DEFAULT 1.0, beta1 float8 DEFAULT 0.9,
    beta2 float8 DEFAULT 0.95, eps float8 DEFAULT 1e-8, replace boolean DEFAULT false)
RETURNS TABLE (model text, blocks int, tokens int)
LANGUAGE plpgsql AS $$
DECLARE
    m gpt2.models := gpt2.use_model(source, true);
    docs text[];
    col_type oid;                                                  -- the type of the query's first column
    stream int[];
    msg text;
BEGIN
    target := coalesce(target, source || '-ft');
    block_size := coalesce(block_size, least(128, m.n_positions));
    IF query IS NULL OR btrim(query) = '' THEN RAISE EXCEPTION 'no query given: a query that returns text, one document per row'; END IF;
    IF steps IS NULL OR steps < 1 THEN RAISE EXCEPTION 'steps must be >= 1, got %', steps; END IF;
    IF batch_size IS NULL OR batch_size < 1 OR batch_size > gpt2.batch_limit() THEN
        RAISE EXCEPTION 'batch_size must be between 1 and %, got %', gpt2.batch_limit(), batch_size;
    END IF;
    IF block_size IS NULL OR block_size < 2 OR block_size > m.n_positions THEN
        RAISE EXCEPTION 'block_size must be between 2 and % (the context of model "%"), got %', m.n_positions, m.name, block_size;
    END IF;
    IF NOT (lr > 0 AND lr < 'Infinity') THEN RAISE EXCEPTION 'lr must be > 0 and finite, got %', lr; END IF;
    IF min_lr IS NOT NULL AND NOT (min_lr >= 0 AND min_lr <= lr) THEN RAISE EXCEPTION 'min_lr must be between 0 and lr, got %', min_lr; END IF;
    IF warmup IS NULL OR warmup < 0 THEN RAISE EXCEPTION 'warmup must be >= 0, got %', warmup; END IF;
    warmup := least(warmup, steps - 1);                            -- a short run still reaches lr
    PERFORM gpt2.require_float32(m);
    BEGIN                                                          -- the documents, by the user's query (run once)
        EXECUTE format('SELECT array_agg(q.t::text), min(pg_typeof(q.t)::oid) FROM (%s) AS q(t)', query) INTO docs, col_type;
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
        RAISE EXCEPTION 'the query failed: %', msg;
    END;
    -- The first column is the text: an integer or a json turned into text is not what was meant.
    -- A domain over text counts as text.
    IF col_type IS NOT NULL AND (SELECT coalesce(nullif(t.typbasetype, 0), t.oid) FROM pg_type t WHERE t.oid = col_type)
                                NOT IN ('text'::regtype, 'varchar'::regtype, 'bpchar'::regtype) THEN
        RAISE EXCEPTION 'the query''s first column is %, not text: cast it in the query (SELECT g::text ..., for a column g)',
            format_type(col_type, NULL) USING HINT = 'the first column is the text to train on, one document per row';
    END IF;
    stream := ARRAY(SELECT t FROM unnest(docs) WITH ORDINALITY AS d(doc, k),
                                  LATERAL unnest(gpt2.tokenize(d.doc) || gpt2.eos_id()) WITH ORDINALITY AS u(t, j)
                    WHERE d.doc IS NOT NULL AND d.doc <> '' ORDER BY d.k, u.j);
    IF cardinality(stream) = 0 THEN
        RAISE EXCEPTION 'the query returned no text to train on';
    END IF;
    IF target <> source THEN
        PERFORM gpt2.copy_model(source, target, replace);
    ELSIF EXISTS (SELECT FROM gpt2.train_runs r WHERE r.model = target) AND NOT replace THEN
        RAISE EXCEPTION 'model "%" has a training run already', target USING HINT = 'go on with gpt2.train_next, or replace it';
    END IF;
    DELETE FROM gpt2.train_runs r WHERE r.model = target;
    INSERT INTO gpt2.train_runs (model, source, query, steps, batch_size, block_size, lr, min_lr, warmup, seed, beta1, beta2,
                                 eps, weight_decay, clip, n_blocks, n_tokens)
    VALUES (target, source, query, steps, batch_size, block_size, lr, coalesce(min_lr, lr / 10), warmup, seed, beta1, beta2,
            eps, weight_decay, clip, (cardinality(stream) + block_size - 1) / block_size, cardinality(stream));
    INSERT INTO gpt2.train_blocks (model, block, inputs, targets)       -- block b: tokens b*B .. b*B+B-1 of the stream
    SELECT target, b, ARRAY[coalesce(stream[b * block_size], gpt2.eos_id())]
                      || stream[b * block_size + 1 : least((b + 1) * block_size, cardinality(stream)) - 1],
           stream[b * block_size + 1 : (b + 1) * block_size]
    FROM generate_series(0, (cardinality(stream) - 1) / block_size) AS b;
    RETURN QUERY SELECT r.model, r.n_blocks, r.n_tokens FROM gpt2.train_runs r WHERE r.model = target;
END
$$;

-- The learning rate of step s (0-based) of a run: linear warmup, then a cosine down to min_lr.
CREATE OR REPLACE FUNCTION gpt2.train_lr(r gpt2.train_runs, s int) RETURNS float8
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN s < r.warmup THEN r.lr * (s + 1) / (r.warmup + 1)
                WHEN r.steps <= r.warmup + 1 THEN r.lr
                ELSE r.min_lr + 0.5 * (1 + cos(pi() * (s - r.warmup)::float8 / (r.steps - 1 - r.warmup))) * (r.lr - r.min_lr) END
$$;

-- The blocks of step s: examples s*batch_size .. of the shuffled epochs.
CREATE OR REPLACE FUNCTION gpt2.train_batch(r gpt2.train_runs, s int) RETURNS int[]
LANGUAGE sql STABLE AS $$
    SELECT array_agg(o.block ORDER BY k.k)
    FROM generate_series(s * r.batch_size, s * r.batch_size + r.batch_size - 1) AS k(k),
         LATERAL (SELECT b.block FROM generate_series(0, r.n_blocks - 1) AS b(block)
                  ORDER BY md5(concat_ws(':', r.seed, k.k / r.n_blocks, b.block)), b.block
                  OFFSET k.k % r.n_blocks LIMIT 1) AS o
$$;

-- The next step of a run (none when it is done): (step, loss, lr, grad_norm, steps).
CREATE OR REPLACE FUNCTION gpt2.train_next(model text)
RETURNS TABLE (step int, loss float8, lr float8, grad_norm float8, steps int)
LANGUAGE plpgsql AS $$
DECLARE
    m gpt2.models := gpt2.use_model(model, true);
    r gpt2.train_runs;
    blocks int[];
    lengths int[];
    s record;
BEGIN
    SELECT * INTO r FROM gpt2.train_runs t WHERE t.model = m.name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'model "%" has no training run', m.name USING HINT = 'start one: gpt2.train_start(source, query, target)';
    END IF;
    IF m.step >= r.steps THEN
        RETURN;
    END IF;
    blocks := gpt2.train_batch(r, m.step);
    SELECT array_agg(cardinality(b.targets) ORDER BY k.k) INTO lengths
    FROM unnest(blocks) WITH ORDINALITY AS k(block, k) JOIN gpt2.train_blocks b ON b.model = m.name AND b.block = k.block;
    SELECT * INTO s FROM gpt2.scratch_seqs(lengths);
    lr := gpt2.train_lr(r, m.step);
    SELECT a.step, a.loss, a.grad_norm INTO step, loss, grad_norm
    FROM gpt2.adamw_step(s.seqs, s.positions,
                         ARRAY(SELECT x FROM unnest(blocks) WITH ORDINALITY AS k(block, k)
                               JOIN gpt2.train_blocks b ON b.model = m.name AND b.block = k.block,
                               unnest(b.inputs) WITH ORDINALITY AS u(x, j) ORDER BY k.k, u.j),
                         ARRAY(SELECT x FROM unnest(blocks) WITH ORDINALITY AS k(block, k)
                               JOIN gpt2.train_blocks b ON b.model = m.name AND b.block = k.block,
                               unnest(b.targets) WITH ORDINALITY AS u(x, j) ORDER BY k.k, u.j),
                         lr, r.beta1, r.beta2, r.eps, r.weight_decay, r.clip) AS a;
    steps := r.steps;
    RETURN NEXT;
END
$$;

-- Every remaining step of a run, each committed as it ends.
CREATE OR REPLACE PROCEDURE gpt2.train(model text)
LANGUAGE plpgsql AS $$
DECLARE
    s record;
BEGIN
    LOOP
        SELECT * INTO s FROM gpt2.train_next(model);
        EXIT WHEN NOT FOUND;
        RAISE NOTICE 'step %/%: loss %, lr %', s.step, s.steps, round(s.loss::numeric, 4), s.lr;
        COMMIT;
    END LOOP;
END
$$;
