-- Stage 11b: interventions: what the model says when one of its parts is changed (the glass
-- box's "what if": ablation, activation patching, direct logit attribution).
--
-- NumPy twin: tests/reference.py intervene, patch_sweep and logit_attribution, on run_edited
-- (the forward pass with activations replaced: TransformerLens's run_with_hooks).
--
--   gpt2.intervene(prompt, ablate)          -> float8[] [n_vocab]: the logits at the prompt's
--       last position with components ablated. ablate: a JSON array of
--         {"layer": L, "head": H}     head H's output (its slice of z, the heads' outputs side
--                                     by side before attn.c_proj) := 0
--         {"layer": L, "attn": true}  attn_out := 0: the attention sublayer adds nothing to the
--                                     residual stream (its bias neither)
--         {"layer": L, "mlp": true}   mlp_out := 0: the MLP adds nothing
--       each with an optional "pos": [p, ...] (only at those positions, from 0) and "mode":
--       "mean" (instead of 0, the mean over the prompt's positions of that output in the
--       unablated run: mean ablation; "zero" is the default). An entry given twice: the last
--       one counts. '[]' gives the plain logits, exactly (gpt2.forward's last row).
--   gpt2.patch_sweep(clean, corrupted, answer, wrong, site)
--       -> (layer, pos, head, logit_diff): activation patching. For every layer and position
--       (site 'head': every layer and head) the corrupted prompt runs with that one
--       activation taken from the clean run; logit_diff = logit(answer) - logit(wrong) at the
--       last position. Sites:
--         resid_pre   the residual stream entering block `layer`, at pos      (head NULL)
--         attn_out    the attention sublayer's output of block `layer`, at pos (head NULL)
--         mlp_out     the MLP's output of block `layer`, at pos                (head NULL)
--         head        head `head`'s slice of z in block `layer`, every position (pos NULL)
--       answer and wrong: one token each; clean and corrupted: as many tokens.
--   gpt2.logit_diff(prompt, answer, wrong)   logit(answer) - logit(wrong) of the plain run
--   gpt2.logit_attribution(prompt, token)   -> (layer, component, head, contribution):
--       direct logit attribution at the last position, see below.
-- Each takes the model's name last (default: the default model).
--
-- Every run goes through the layer loop of generation (gpt2.run_layers, stage 8): its
-- `record` keeps the activations (the table tape), its `edited` applies the table run_edit
-- (layer, site, i, head, v): v replaces the vector of `site` at row i of the run (for z: head
-- `head`'s slice). Runs use sequences of their own (gpt2.scratch_seqs) and drop them, so a
-- generation in progress on the connection goes on undisturbed.
--
-- The sweep's speed: the clean and the corrupted prompt run once each, recorded. A patched
-- run is the corrupted run up to the patched layer, so it starts there (run_layers'
-- first_layer) from the corrupted run's residual stream, with the patch applied. The patched
-- runs of one layer go through run_layers together, a sequence each (up to
-- gpt2.patch_rows() rows at once), so each weight row is read once for 16 of their rows.
-- Only two logits are needed: ln_f(x) . wte[answer] and ln_f(x) . wte[wrong] (the head's
-- products for two tokens, not 50,257).
--
-- Direct logit attribution: the residual stream after the last block, at the last position,
-- is a sum of what each component wrote into it:
--   x = wte[id] + wpe[pos] + sum over layers (sum over heads z_h @ W_O[h] + b_O + mlp_out)
-- (W_O[h]: head h's rows of attn.c_proj, b_O its bias). The logit of a token is
-- ln_f(x) . w, w = wte[token], ln_f(x) = g * (x - mean(x)) / sigma + b. ln_f is linear but
-- for its scale 1 / sigma: frozen at this run's sigma (the usual approximation: without a
-- component, sigma would change), each component c contributes
--   (g * (c - mean(c)) / sigma) . w  =  c . u,   u = (g * w - mean(g * w)) / sigma
-- and ln_f's bias adds b . w (component 'ln_f_bias'). The rows sum to the logit (to float
-- rounding). Components: 'embed' (wte[id]), 'pos_embed' (wpe[pos]), 'head' (layer, head),
-- 'attn_bias' (layer: b_O, which belongs to no head), 'mlp' (layer), 'ln_f_bias'.
--
-- subtle: a recorded run applies GELU in a pass of its own, to c_fc's output rounded to
--   float32 (to keep mlp_pre); a plain run applies it to the float8 sum. So a recorded run
--   and a plain one differ by float32 rounding (~1e-6 of a logit), and so does a patched run
--   that starts from, or puts back, what a recorded MLP made: every patch but those of layer
--   0's resid_pre, attn_out and heads, which are plain runs. gpt2.intervene without a mean
--   is a plain run too.

-- The table of edits run_layers applies, made on first use, emptied.
CREATE OR REPLACE FUNCTION gpt2.run_edit_reset() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF to_regclass('pg_temp.run_edit') IS NULL THEN
        CREATE TEMPORARY TABLE run_edit (layer int, site text, i int, head int, v vector);
    END IF;
    TRUNCATE run_edit;
END
$$;

-- The id of a text of one token ('answer', 'wrong', 'token' name it in the error).
CREATE OR REPLACE FUNCTION gpt2.one_token(t text, what text) RETURNS int
LANGUAGE plpgsql STABLE AS $$
DECLARE
    ids int[] := coalesce(gpt2.tokenize(t), '{}');
BEGIN
    IF t IS NULL THEN
        RAISE EXCEPTION '% must be one token, not NULL', what;
    ELSIF cardinality(ids) <> 1 THEN
        RAISE EXCEPTION '% must be one token: % is % tokens %', what, to_json(t), cardinality(ids),
            (SELECT coalesce(string_agg(to_json(gpt2.decode_bytes(v.bytes))::text, ' ' ORDER BY u.k), '')
             FROM unnest(ids) WITH ORDINALITY AS u(id, k) JOIN gpt2.vocab v ON v.id = u.id)
            USING HINT = 'a token carries the space before it: '' Mary'', not ''Mary'' (gpt2sql tokenize --show shows how a text splits)';
    END IF;
    RETURN ids[1];
END
$$;

-- A JSON integer, or a one-line error naming where it was (`what`) and its range lo..hi.
CREATE OR REPLACE FUNCTION gpt2.json_int(v jsonb, what text, lo int, hi int, range_is text) RETURNS int
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF v IS NULL OR jsonb_typeof(v) <> 'number' OR v::numeric <> trunc(v::numeric) THEN
        RAISE EXCEPTION '% must be an integer, got %', what, coalesce(v::text, 'nothing');
    ELSIF v::numeric < lo OR v::numeric > hi THEN
        RAISE EXCEPTION '% is out of range: %', what || ' ' || v::text, range_is;
    END IF;
    RETURN v::int;
END
$$;

-- The rows of an ablate array (see the header) for a prompt of n tokens, checked: one row per
-- entry and position, site as run_layers names it ('z' for a head).
CREATE OR REPLACE FUNCTION gpt2.ablations(ablate jsonb, m gpt2.models, n int)
RETURNS TABLE (entry int, layer int, site text, head int, pos int, mean boolean)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    e jsonb;
    k int;
    what text;
    bad text;
    l int;
    h int;
    s text;
    ps int[];
BEGIN
    IF ablate IS NULL OR jsonb_typeof(ablate) <> 'array' THEN
        RAISE EXCEPTION 'ablate must be a JSON array of {"layer": L, "head": H}, {"layer": L, "attn": true} or {"layer": L, "mlp": true}, got %',
            coalesce(ablate::text, 'NULL') USING HINT = '''[]'' ablates nothing';
    END IF;
    FOR e, k IN SELECT x.e, x.k - 1 FROM jsonb_array_elements(ablate) WITH ORDINALITY AS x(e, k) LOOP
        what := format('ablate[%s]', k);
        IF jsonb_typeof(e) <> 'object' THEN
            RAISE EXCEPTION '%: an entry is an object such as {"layer": 0, "head": 1}, got %', what, e;
        END IF;
        bad := (SELECT min(x) FROM jsonb_object_keys(e) AS x WHERE x NOT IN ('layer', 'head', 'attn', 'mlp', 'pos', 'mode'));
        IF bad IS NOT NULL THEN
            RAISE EXCEPTION '%: unknown key %: the keys are layer, head, attn, mlp, pos, mode', what, to_json(bad);
        END IF;
        l := gpt2.json_int(e -> 'layer', what || ': layer', 0, m.n_layer - 1,
                           format('model "%s" has %s layers (0..%s)', m.name, m.n_layer, m.n_layer - 1));
        IF (e ? 'head')::int + (e ? 'attn')::int + (e ? 'mlp')::int <> 1 THEN
            RAISE EXCEPTION '%: give one of "head": H, "attn": true, "mlp": true, got %', what, e;
        ELSIF e ? 'head' THEN
            h := gpt2.json_int(e -> 'head', what || ': head', 0, m.n_head - 1,
                               format('model "%s" has %s heads (0..%s)', m.name, m.n_head, m.n_head - 1));
            s := 'z';
        ELSE
            s := CASE WHEN e ? 'attn' THEN 'attn' ELSE 'mlp' END;
            IF e -> s <> 'true'::jsonb THEN
                RAISE EXCEPTION '%: "%" must be true, got %', what, s, e -> s;
            END IF;
            s := s || '_out';
            h := NULL;
        END IF;
        IF e ? 'mode' AND (e -> 'mode') NOT IN ('"zero"'::jsonb, '"mean"'::jsonb) THEN
            RAISE EXCEPTION '%: "mode" is "zero" or "mean", got %', what, e -> 'mode';
        END IF;
        IF NOT e ? 'pos' THEN
            ps := ARRAY(SELECT generate_series(0, n - 1));
        ELSIF jsonb_typeof(e -> 'pos') <> 'array' THEN
            RAISE EXCEPTION '%: "pos" must be an array of positions, got %', what, e -> 'pos';
        ELSE
            ps := ARRAY(SELECT gpt2.json_int(p, what || ': position', 0, n - 1,
                                             format('the prompt has %s tokens (0..%s)', n, n - 1))
                        FROM jsonb_array_elements(e -> 'pos') AS p);
        END IF;
        RETURN QUERY SELECT k, l, s, h, p.p, coalesce(e ->> 'mode' = 'mean', false) FROM unnest(ps) AS p(p);
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION gpt2.intervene(prompt text, ablate jsonb, model text DEFAULT NULL) RETURNS float8[]
LANGUAGE plpgsql AS $$
DECLARE
    m gpt2.models := gpt2.use_model(model, true);
    ids int[] := gpt2.inspect_ids(prompt, m);
    n int := cardinality(ids);
    dh int := m.n_embd / m.n_head;
    xs vector[];
BEGIN
    PERFORM gpt2.run_edit_reset();
    IF EXISTS (SELECT FROM gpt2.ablations(ablate, m, n) AS a WHERE a.mean) THEN   -- (checks the entries first)
        PERFORM gpt2.trace(ids);          -- the unablated run, recorded: the means
    END IF;
    INSERT INTO run_edit (layer, site, i, head, v)
    SELECT DISTINCT ON (a.layer, a.site, a.pos, a.head) a.layer, a.site, a.pos + 1, a.head,
           CASE WHEN NOT a.mean THEN gpt2.fill(0, CASE WHEN a.site = 'z' THEN dh ELSE m.n_embd END)
                WHEN a.site = 'z' THEN (SELECT avg(subvector(x, a.head * dh + 1, dh)) FROM unnest(gpt2.tape_at(a.layer, 'z')) AS x)
                ELSE (SELECT avg(x) FROM unnest(gpt2.tape_at(a.layer, a.site)) AS x) END
    FROM gpt2.ablations(ablate, m, n) AS a
    ORDER BY a.layer, a.site, a.pos, a.head, a.entry DESC;    -- given twice: the last entry
    xs := gpt2.trace(ids, false, EXISTS (SELECT FROM run_edit));
    TRUNCATE run_edit;
    RETURN gpt2.head_products_1(xs[n]);                        -- [n_vocab], as gpt2.head computes a row
END
$$;

-- logit(answer) - logit(wrong) of a final hidden state: two of the head's products.
CREATE OR REPLACE FUNCTION gpt2.logit_gap(y vector, answer int, wrong int) RETURNS float8
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT -(a.w <#> q.x) + (w.w <#> q.x)
            FROM (SELECT y::wvec AS x OFFSET 0) AS q, wte a, wte w
            WHERE a.token = answer AND w.token = wrong);
END
$$;

CREATE OR REPLACE FUNCTION gpt2.logit_diff(prompt text, answer text, wrong text, model text DEFAULT NULL) RETURNS float8
LANGUAGE plpgsql AS $$
DECLARE
    m gpt2.models := gpt2.use_model(model, true);
    ids int[] := gpt2.inspect_ids(prompt, m);
    a int := gpt2.one_token(answer, 'answer');
    w int := gpt2.one_token(wrong, 'wrong');
BEGIN
    RETURN gpt2.logit_gap((gpt2.trace(ids, false))[cardinality(ids)], a, w);
END
$$;

-- The most rows one batch of patched runs takes through run_layers (a sequence of n rows per run).
CREATE OR REPLACE FUNCTION gpt2.patch_rows() RETURNS int LANGUAGE sql IMMUTABLE AS $$ SELECT 1024 $$;

CREATE OR REPLACE FUNCTION gpt2.patch_sweep(clean text, corrupted text, answer text, wrong text,
                                            site text DEFAULT 'resid_pre', model text DEFAULT NULL)
RETURNS TABLE (layer int, pos int, head int, logit_diff float8)
LANGUAGE plpgsql AS $$
DECLARE
    m gpt2.models := gpt2.use_model(model, true);
    dh int := m.n_embd / m.n_head;
    clean_ids int[] := gpt2.inspect_ids(clean, m);
    ids int[] := gpt2.inspect_ids(corrupted, m);
    n int := cardinality(ids);
    a int := gpt2.one_token(answer, 'answer');
    w int := gpt2.one_token(wrong, 'wrong');
    units int;                                          -- patched runs per layer: a position or a head each
    per int := greatest(1, gpt2.patch_rows() / n);      -- runs per batch
    b int;
    source vector[];                                    -- [n] the clean run's activations at the site, this layer
    base vector[];                                      -- [n] the corrupted run's residual stream entering it
    xs vector[];
    ys vector[];
    s record;
BEGIN
    IF site IS NULL OR site NOT IN ('resid_pre', 'attn_out', 'mlp_out', 'head') THEN
        RAISE EXCEPTION 'unknown site %: patch_sweep patches resid_pre, attn_out, mlp_out or head',
            coalesce(quote_literal(site), 'NULL');
    ELSIF cardinality(clean_ids) <> n THEN
        RAISE EXCEPTION 'the clean prompt has % tokens and the corrupted one %: patching needs as many in both',
            cardinality(clean_ids), n
            USING HINT = 'change words for words of as many tokens (gpt2sql tokenize --show shows them)';
    END IF;
    units := CASE WHEN site = 'head' THEN m.n_head ELSE n END;
    IF to_regclass('pg_temp.patch_runs') IS NULL THEN
        CREATE TEMPORARY TABLE patch_runs (run text, layer int, xs vector[]);
        ALTER TABLE patch_runs ALTER COLUMN xs SET STORAGE EXTERNAL;   -- floats do not compress: do not try
    END IF;
    TRUNCATE patch_runs;
    PERFORM gpt2.trace(clean_ids);                      -- the clean run: the site's activations
    INSERT INTO patch_runs SELECT 'clean', t.layer, t.xs FROM tape t
    WHERE t.site = CASE WHEN patch_sweep.site = 'head' THEN 'z' ELSE patch_sweep.site END;
    PERFORM gpt2.trace(ids);                            -- the corrupted run: its residual stream
    INSERT INTO patch_runs SELECT 'corrupted', t.layer, t.xs FROM tape t WHERE t.site = 'resid_pre';
    TRUNCATE tape;
    PERFORM gpt2.run_edit_reset();
    FOR l IN 0 .. m.n_layer - 1 LOOP
        source := (SELECT r.xs FROM patch_runs r WHERE r.run = 'clean' AND r.layer = l);
        base := (SELECT r.xs FROM patch_runs r WHERE r.run = 'corrupted' AND r.layer = l);
        FOR k0 IN 0 .. units - 1 BY per LOOP            -- runs k0 .. k0 + b - 1: run r patches unit k0 + r - 1
            b := least(per, units - k0);
            s := gpt2.scratch_seqs(array_fill(n, ARRAY[b]));
            -- [b * n] the corrupted residual stream once per run; resid_pre patched in place
            xs := ARRAY(SELECT CASE WHEN patch_sweep.site = 'resid_pre' AND c.j = k0 + r THEN c.clean ELSE c.base END
                        FROM generate_series(1, b) AS r, unnest(base, source) WITH ORDINALITY AS c(base, clean, j)
                        ORDER BY r, c.j);
            IF site = 'head' THEN                       -- run r: head k0 + r - 1 at every position
                INSERT INTO run_edit (layer, site, i, head, v)
                SELECT l, 'z', (r - 1) * n + c.j, k0 + r - 1, subvector(c.clean, (k0 + r - 1) * dh + 1, dh)
                FROM generate_series(1, b) AS r, unnest(source) WITH ORDINALITY AS c(clean, j);
            ELSIF site <> 'resid_pre' THEN              -- run r: position k0 + r - 1
                INSERT INTO run_edit (layer, site, i, head, v)
                SELECT l, patch_sweep.site, (r - 1) * n + k0 + r, NULL, source[k0 + r] FROM generate_series(1, b) AS r;
            END IF;
            PERFORM gpt2.kv_drop(ARRAY(SELECT DISTINCT unnest(s.seqs)));
            ys := gpt2.run_layers(s.seqs, s.positions, xs, l, false, site <> 'resid_pre');
            PERFORM gpt2.kv_drop(ARRAY(SELECT DISTINCT unnest(s.seqs)));
            TRUNCATE run_edit;
            RETURN QUERY
            SELECT l, CASE WHEN site = 'head' THEN NULL ELSE k0 + r - 1 END,
                   CASE WHEN site = 'head' THEN k0 + r - 1 END, gpt2.logit_gap(y.y, a, w)
            FROM generate_series(1, b) AS r, unnest(ys) WITH ORDINALITY AS y(y, i)
            WHERE y.i = r * n                           -- each run's last position
            ORDER BY r;
        END LOOP;
    END LOOP;
    TRUNCATE patch_runs;
END
$$;

CREATE OR REPLACE FUNCTION gpt2.logit_attribution(prompt text, token text, model text DEFAULT NULL)
RETURNS TABLE (layer int, component text, head int, contribution float8)
LANGUAGE plpgsql AS $$
DECLARE
    m gpt2.models := gpt2.use_model(model, true);
    ids int[] := gpt2.inspect_ids(prompt, m);
    n int := cardinality(ids);
    t int := gpt2.one_token(token, 'token');
    d int := m.n_embd;
    dh int := m.n_embd / m.n_head;
    ones vector := gpt2.fill(1, m.n_embd);
    x vector;                                           -- [n_embd] the residual stream at the end, last position
    c vector;
    sigma float8;
    gw vector;                                          -- g * wte[token]
    bf vector;                                          -- ln_f's bias
    u vector;                                           -- [n_embd] the readout: contribution(c) = c . u
    z real[];
    outs vector[];
BEGIN
    PERFORM gpt2.trace(ids);
    x := (gpt2.tape_at(m.n_layer, 'resid_pre'))[n];
    c := x - gpt2.fill(-(x <#> ones) / d, d);
    sigma := sqrt(-(c <#> c) / d + m.layer_norm_epsilon);
    SELECT p.g * e.w::vector, p.b INTO gw, bf FROM ln p, wte e WHERE p.tensor = 'ln_f' AND p.layer = 0 AND e.token = t;
    u := (gw - gpt2.fill(-(gw <#> ones) / d, d)) * gpt2.fill(1 / sigma, d);
    RETURN QUERY
    SELECT NULL::int, 'embed', NULL::int, -(e.w::vector <#> u) FROM wte e WHERE e.token = ids[n]
    UNION ALL
    SELECT NULL, 'pos_embed', NULL, -(p.w::vector <#> u) FROM wpe p WHERE p.pos = n - 1;
    FOR l IN 0 .. m.n_layer - 1 LOOP
        z := (gpt2.tape_at(l, 'z'))[n]::real[];
        -- each head's slice alone (the others 0) through attn.c_proj, then 0 alone: the bias
        outs := gpt2.linear('attn.c_proj', l,
                            ARRAY(SELECT (array_fill(0::real, ARRAY[h * dh]) || z[h * dh + 1:(h + 1) * dh]
                                          || array_fill(0::real, ARRAY[d - (h + 1) * dh]))::vector
                                  FROM generate_series(0, m.n_head - 1) AS h ORDER BY h) || gpt2.fill(0, d));
        RETURN QUERY
        SELECT l, 'head', h, -((outs[h + 1] - outs[m.n_head + 1]) <#> u) FROM generate_series(0, m.n_head - 1) AS h
        UNION ALL
        SELECT l, 'attn_bias', NULL, -(outs[m.n_head + 1] <#> u)
        UNION ALL
        SELECT l, 'mlp', NULL, -((gpt2.tape_at(l, 'mlp_out'))[n] <#> u);
    END LOOP;
    RETURN QUERY SELECT NULL::int, 'ln_f_bias', NULL::int, -(bf <#> e.w::vector) FROM wte e WHERE e.token = t;
END
$$;

DO $do$ DECLARE f text; BEGIN
    FOREACH f IN ARRAY ARRAY['gpt2.logit_gap(vector, int, int)', 'gpt2.trace(int[], boolean, boolean)'] LOOP
        -- subtle: arrays of thousands of floats as arguments; a custom plan would inline them
        EXECUTE format('ALTER FUNCTION %s SET plan_cache_mode = force_generic_plan', f);
    END LOOP;
END $do$;
