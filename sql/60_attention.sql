-- Stage 5: causal multi-head self-attention over the KV cache.
--
-- NumPy twin: tests/reference.py attention(q, k, v) and mha(x, c_attn, c_proj, n_head)
-- (the projections c_attn / c_proj are gpt2.linear, called by the block, stage 7).
--   attention(q, k, v) = softmax(q k^T / sqrt(d_head) + causal mask) v     per head
-- Input: qkv [n] of [3*n_embd] (c_attn's output) for NEW positions of one or several
-- sequences (a prefill, a decode step, a batch), rows sorted by sequence, then position,
-- positions consecutive within a sequence. Output: [n] of [n_embd], the heads side by side.
-- This file holds the cache and the kernels; gpt2.mha (stage 7b) picks one: a sequence that
-- starts at position 0 is computed by gpt2.attend_fresh_16 per (sequence, head) on both
-- cores, one that goes on from its cache by gpt2.attend_cached.
--
-- The KV cache is three temporary tables, so it belongs to this connection alone:
-- concurrent generations never see each other's, and it disappears with the connection.
--   kv_k(seq, layer, head, pos, k)    every cached key, a row each            [d_head]
--   kv_vt(seq, layer, head, d, vt)    the cached values TRANSPOSED: element j of vt is
--                                     value[j][d], for positions 0 .. dims(vt)-1  [n_vt]
--   kv_v(seq, layer, head, pos, v)    values not transposed yet (the last few of a decode)
-- Why transposed: the output of a head is sum_j p_j v_j, and pgvector has no scalar *
-- vector; with values stored by dimension it is d_head inner products p . vt[d], each over
-- all positions at once. A decode step appends one position to kv_v; every
-- gpt2.kv_fold_every positions kv_v is folded into kv_vt (a prefill folds at once), each
-- layer at a position of its own (gpt2.kv_fold_due): folding every layer in the same step
-- made that step ~3x as long as the others, a stutter in the stream.
-- Sequences: generation uses 0, 1, ... (one per prompt); the glass box and training use
-- negative numbers, so they never touch a generation in progress.
--
-- Three kernels, by what the new positions are:
--   attend_1         one query per sequence (decode steps, a batch's step) against its cache;
--   attend_16        several queries of a sequence that goes on from its cache (a prompt fed
--                    in pieces), 16 at a time in one pass over the key rows (unrolled, as
--                    gpt2.linear_16 in stage 4);
--   attend_fresh_16  one head of a sequence that starts at position 0 (a prompt, a slid
--                    window): everything from qkv, no table, so it runs in parallel workers;
--                    gpt2.kv_store_fresh then fills the cache from its results.
--
-- subtle: causal mask = the key's position <= the query's; masked keys get weight 0.
-- subtle: softmax needs a shift against overflow, exp(s - shift). The exact one, the row
--   maximum, is known only after a pass over the scores, and a second pass would cost as
--   much as the first. So each pass shifts by the query's score on its OWN key (always
--   present: a position sees itself) with exp() clamped to [e^-80, e^70], and takes the
--   row maximum as it goes. Where the maximum is more than 60 above the shift (the clamp
--   may have bitten), the queries are computed again in the same kernel, shifted by the
--   maximum they now know: exact for any spread of scores, at twice the cost of a pass
--   only where it is needed (GPT-2's own scores never need it). The upper clamp keeps every
--   number float32 can hold: e^70 (2.5e30) times a value, summed over 1,024 positions, stays
--   below float32's 3.4e38 for values up to 1e4. PostgreSQL RAISES on exp() underflow
--   (exp(-800)) and on float4 underflow, hence the lower clamp: e^-80 is far below float32's
--   resolution next to the e^0 of the shift's own key. Where a weight multiplies a vector
--   element by element (the cached keys' tail, the backward pass), weights below e^-40 are
--   0 instead: pgvector RAISES on a product that underflows to 0 (gpt2.flush, stage 3).
--   Worked example: scores [2, 90, 1] for the query at position 2 (own key: 1): the first
--   pass takes exp(min(s - 1, 70)) = [e^1, e^70, e^0] (e^89 clamped) and max 90; 90 - 1 > 60,
--   so the second pass takes exp(s - 90) = [e^-88, 1, e^-89] (e^-80 where clamped): the
--   weights of softmax.

CREATE OR REPLACE FUNCTION gpt2.kv_fold_every() RETURNS int
LANGUAGE sql IMMUTABLE AS $$ SELECT 32 $$;

-- Whether `layer` folds after the value of position pos: every kv_fold_every positions, the
-- layers' turns spread over them (GPT-2's 12 layers: one layer every 2-3 positions).
CREATE OR REPLACE FUNCTION gpt2.kv_fold_due(layer int, n_layer int, pos int) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT (pos + 1 + layer * gpt2.kv_fold_every() / n_layer) % gpt2.kv_fold_every() = 0
$$;

-- An empty cache (made on first use). gpt2.kv_reset (stage 10) is the public form.
CREATE OR REPLACE FUNCTION gpt2.kv_clear() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF to_regclass('pg_temp.kv_k') IS NULL THEN
        CREATE TEMPORARY TABLE kv_k (seq int, layer int, head int, pos int, k vector NOT NULL,
                                     PRIMARY KEY (seq, layer, head, pos));
        CREATE TEMPORARY TABLE kv_v (seq int, layer int, head int, pos int, v vector NOT NULL,
                                     PRIMARY KEY (seq, layer, head, pos));
        CREATE TEMPORARY TABLE kv_vt (seq int, layer int, head int, d int, vt vector NOT NULL,
                                      PRIMARY KEY (seq, layer, head, d));
        -- vt holds n_positions floats: in the row (not compressed, not moved out) while it fits a
        -- page, as a row that is read once per query group should be; longer contexts move it out
        ALTER TABLE kv_vt ALTER COLUMN vt SET STORAGE EXTERNAL;
        ALTER TABLE kv_vt SET (toast_tuple_target = 8160);
    ELSE
        TRUNCATE kv_k, kv_v, kv_vt;
    END IF;
END
$$;

-- Forget the cached positions of some sequences (all layers).
CREATE OR REPLACE FUNCTION gpt2.kv_drop(seqs int[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF to_regclass('pg_temp.kv_k') IS NULL THEN
        PERFORM gpt2.kv_clear();
    END IF;
    DELETE FROM kv_k WHERE seq = ANY(seqs);
    DELETE FROM kv_v WHERE seq = ANY(seqs);
    DELETE FROM kv_vt WHERE seq = ANY(seqs);
END
$$;

-- Append the keys of new positions of `layer` (the cache is made on first use).
CREATE OR REPLACE FUNCTION gpt2.kv_keys(layer int, seqs int[], positions int[], qkv vector[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    m gpt2.models := gpt2.current_model();
    dh int := m.n_embd / m.n_head;                                 -- d_head
BEGIN
    IF to_regclass('pg_temp.kv_k') IS NULL THEN
        PERFORM gpt2.kv_clear();
    END IF;
    INSERT INTO kv_k (seq, layer, head, pos, k)                    -- [n, n_head] keys
    SELECT u.s, kv_keys.layer, h, u.p, subvector(u.x, m.n_embd + h * dh + 1, dh)
    FROM unnest(seqs, positions, qkv) AS u(s, p, x), generate_series(0, m.n_head - 1) AS h;
END
$$;

-- Append the keys and values of new positions of `layer` (rows sorted by sequence, then
-- position). One new position per sequence (decode steps): its values go to kv_v, folded
-- into kv_vt at the layer's turn (gpt2.kv_fold_due, every kv_fold_every positions).
-- Several (a prefill): they are transposed straight into kv_vt.
CREATE OR REPLACE FUNCTION gpt2.kv_append(layer int, seqs int[], positions int[], qkv vector[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    m gpt2.models := gpt2.current_model();
    dh int := m.n_embd / m.n_head;                                 -- d_head
    qkvr real[];                                                   -- [n, 3*n_embd] the same numbers, for subscripts
BEGIN
    PERFORM gpt2.kv_keys(layer, seqs, positions, qkv);

    IF cardinality(qkv) = cardinality(ARRAY(SELECT DISTINCT unnest(seqs))) THEN    -- decode steps
        INSERT INTO kv_v (seq, layer, head, pos, v)                -- [n, n_head] values, as they come
        SELECT u.s, kv_append.layer, h, u.p, subvector(u.x, 2 * m.n_embd + h * dh + 1, dh)
        FROM unnest(seqs, positions, qkv) AS u(s, p, x), generate_series(0, m.n_head - 1) AS h;
        seqs := ARRAY(SELECT u.s FROM unnest(seqs, positions) AS u(s, p) WHERE gpt2.kv_fold_due(layer, m.n_layer, u.p));
        IF cardinality(seqs) > 0 THEN
            PERFORM gpt2.kv_fold(layer, seqs);
        END IF;
        RETURN;
    END IF;

    PERFORM gpt2.kv_fold(layer, seqs);                             -- (earlier untransposed values first)
    qkvr := ARRAY(SELECT x::real[] FROM unnest(qkv) WITH ORDINALITY AS u(x, t) ORDER BY t);
    INSERT INTO kv_vt AS o (seq, layer, head, d, vt)               -- [seq, n_head, d_head] of [n] values
    SELECT r.s, kv_append.layer, h, d,
           ARRAY(SELECT qkvr[i][2 * m.n_embd + h * dh + d] FROM generate_series(r.first, r.last) AS i ORDER BY i)::vector
    FROM (SELECT u.s, min(u.i)::int AS first, max(u.i)::int AS last
          FROM unnest(seqs) WITH ORDINALITY AS u(s, i) GROUP BY u.s) AS r,
         generate_series(0, m.n_head - 1) AS h, generate_series(1, dh) AS d
    ON CONFLICT ON CONSTRAINT kv_vt_pkey DO UPDATE SET vt = o.vt || EXCLUDED.vt;
END
$$;

-- Fold the untransposed values (kv_v) of these sequences' `layer` into kv_vt.
CREATE OR REPLACE FUNCTION gpt2.kv_fold(layer int, seqs int[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    WITH v AS (
        DELETE FROM kv_v WHERE kv_v.layer = kv_fold.layer AND kv_v.seq = ANY(seqs)
        RETURNING kv_v.seq, kv_v.head, kv_v.pos, kv_v.v::real[] AS vr
    )
    INSERT INTO kv_vt AS o (seq, layer, head, d, vt)
    SELECT v.seq, kv_fold.layer, v.head, dim.d, array_agg(v.vr[dim.d] ORDER BY v.pos)::vector
    FROM v, generate_series(1, (SELECT max(cardinality(v.vr)) FROM v)) AS dim(d)
    GROUP BY v.seq, v.head, dim.d
    ON CONFLICT ON CONSTRAINT kv_vt_pkey DO UPDATE SET vt = o.vt || EXCLUDED.vt;
END
$$;


-- Heads side by side: the concatenation of vectors, in the aggregate's order.
CREATE OR REPLACE AGGREGATE gpt2.vcat(vector) (SFUNC = vector_concat, STYPE = vector);

-- A head's output for one query: the transposed part (already divided by z) plus the
-- untransposed one (a sum of exp-weighted values, divided here).
CREATE OR REPLACE FUNCTION gpt2.attn_out(transposed float8[], untransposed vector, z float8, d int) RETURNS vector
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN untransposed IS NULL THEN coalesce(transposed::vector, gpt2.fill(0, d))
                ELSE coalesce(transposed::vector, gpt2.fill(0, d)) + untransposed * gpt2.fill(1 / z, d) END
$$;

DO $do$ DECLARE g int; BEGIN FOREACH g IN ARRAY ARRAY[1, 16] LOOP EXECUTE gpt2.unroll($template$
-- One pass of attention of new queries (qseq, qpos, qkv: sorted by seq then pos, positions
-- consecutive within a sequence) against the cache, %G queries of a sequence at a time.
-- shifts[i][h + 1]: the softmax shift of query i in head h (NULL: its score on its own key).
-- One row per (query i, head h): the head's output o, the row maximum mx and the shift sh.
CREATE OR REPLACE FUNCTION gpt2.attend_%G(layer int, qseq int[], qpos int[], qkv vector[], shifts float8[])
RETURNS TABLE (i int, h int, o vector, mx float8, sh float8)
LANGUAGE plpgsql AS $$
DECLARE
    m gpt2.models := gpt2.current_model();
    dh int := m.n_embd / m.n_head;                                 -- d_head
    scale float8 := 1 / sqrt(m.n_embd / m.n_head);
BEGIN
    RETURN QUERY
    WITH r AS (                                                    -- [n] the queries, in groups of %G per sequence
        SELECT u.i, u.s, u.p, (row_number() OVER (PARTITION BY u.s ORDER BY u.p) - 1) / %G AS g
        FROM unnest(qseq, qpos) WITH ORDINALITY AS u(s, p, i)
    ), q AS MATERIALIZED (                                         -- [n_group, n_head] %G queries side by side
        SELECT gr.s, gr.g, hh.h, gr.i0, gr.cnt, gr.pfirst + gr.cnt - 1 AS plast,
               coalesce((SELECT vector_dims(t.vt) FROM kv_vt t
                         WHERE t.seq = gr.s AND t.layer = attend_%G.layer AND t.head = hh.h AND t.d = 1), 0) AS nvt,
               {{CASE WHEN @ <= gr.cnt THEN subvector(qkv[gr.i0 + @ - 1], hh.h * dh + 1, dh) END AS q@}},
               {{CASE WHEN @ <= gr.cnt THEN gr.pfirst + @ - 1 ELSE -1 END AS p@}},
               {{CASE WHEN @ <= gr.cnt THEN coalesce(shifts[gr.i0 + @ - 1][hh.h + 1],        -- the shift (see the
                    -(subvector(qkv[gr.i0 + @ - 1], hh.h * dh + 1, dh)                      -- header): the score on
                      <#> subvector(qkv[gr.i0 + @ - 1], m.n_embd + hh.h * dh + 1, dh)) * scale) END AS s@}}   -- its own key
        FROM (SELECT r.s, r.g, min(r.i)::int AS i0, min(r.p) AS pfirst, count(*)::int AS cnt FROM r GROUP BY r.s, r.g) AS gr,
             generate_series(0, m.n_head - 1) AS hh(h)
    ), e AS MATERIALIZED (                                         -- [n_group, n_head, %G] exp(score - shift) of the
        SELECT q.s, q.g, q.h, least(q.plast + 1, q.nvt) AS len,   -- positions in kv_vt, 0 where masked; their max
               gpt2.fill(1, least(q.plast + 1, q.nvt)) AS ones, {{a.e@::vector AS e@, a.m@ AS m@}}
        FROM q, LATERAL (
            SELECT {{array_agg(CASE WHEN k.pos <= q.p@ THEN exp(greatest(least(k.s@ - q.s@, 70), -80)) ELSE 0 END
                               ORDER BY k.pos) AS e@,
                     max(k.s@) FILTER (WHERE k.pos <= q.p@) AS m@}}
            FROM (SELECT k.pos, {{-(k.k <#> q.q@) * scale AS s@}} FROM kv_k k      -- (scores made once: OFFSET 0)
                  WHERE k.seq = q.s AND k.layer = attend_%G.layer AND k.head = q.h AND k.pos <= q.plast AND k.pos < q.nvt
                  OFFSET 0) AS k
        ) AS a
        WHERE q.nvt > 0
    ), tail AS (                                                   -- [n_group, n_head, %G] the positions in kv_v:
        SELECT q.s, q.g, q.h, {{t.o@ AS o@, t.z@ AS z@, t.m@ AS m@}}    -- sum exp(..) * v, sum exp(..), max
        FROM q, LATERAL (
            SELECT {{sum(k.v * gpt2.fill(CASE WHEN k.s@ - q.s@ < -40 THEN 0 ELSE exp(least(k.s@ - q.s@, 70)) END, dh))
                         FILTER (WHERE k.pos <= q.p@) AS o@,
                     sum(CASE WHEN k.s@ - q.s@ < -40 THEN 0 ELSE exp(least(k.s@ - q.s@, 70)) END) FILTER (WHERE k.pos <= q.p@) AS z@,
                     max(k.s@) FILTER (WHERE k.pos <= q.p@) AS m@}}
            FROM (SELECT k.pos, v.v, {{-(k.k <#> q.q@) * scale AS s@}}
                  FROM kv_k k JOIN kv_v v ON (v.seq, v.layer, v.head, v.pos) = (k.seq, k.layer, k.head, k.pos)
                  WHERE k.seq = q.s AND k.layer = attend_%G.layer AND k.head = q.h AND k.pos <= q.plast AND k.pos >= q.nvt
                  OFFSET 0) AS k
        ) AS t
        WHERE q.plast >= q.nvt
    ), z AS (                                                      -- [n_group, n_head, %G] softmax denominators
        SELECT q.s, q.g, q.h, q.i0, q.cnt, {{q.s@ AS s@}},
               {{coalesce(-(e.e@ <#> e.ones), 0) + coalesce(tail.z@, 0) AS z@, greatest(e.m@, tail.m@) AS m@}}
        FROM q LEFT JOIN e USING (s, g, h) LEFT JOIN tail USING (s, g, h)
    )                                                              -- [n, n_head] (p . vt[d] for every d / z)
    SELECT (z.i0 + u.k - 1)::int, z.h, u.o, u.m, u.s               --   + the untransposed part
    FROM z LEFT JOIN e USING (s, g, h) LEFT JOIN tail USING (s, g, h),
    LATERAL (SELECT {{array_agg(-(e.e@ <#> t.vt) / z.z@ ORDER BY t.d) FILTER (WHERE @ <= z.cnt) AS o@}}
             FROM (SELECT t.d, subvector(t.vt, 1, e.len) AS vt FROM kv_vt t          -- [d_head] of [len]
                   WHERE t.seq = z.s AND t.layer = attend_%G.layer AND t.head = z.h AND e.len IS NOT NULL
                   OFFSET 0) AS t) AS w,                                             -- (sliced once, not %G times)
    LATERAL unnest(ARRAY[{{CASE WHEN @ <= z.cnt THEN gpt2.attn_out(w.o@, tail.o@, z.z@, dh) END}}],
                   ARRAY[{{z.m@}}], ARRAY[{{z.s@}}]) WITH ORDINALITY AS u(o, m, s, k)
    WHERE u.k <= z.cnt;
END
$$
$template$, g); END LOOP; END $do$;

-- One pass of attend_1 (decode: one query per sequence) or attend_16.
CREATE OR REPLACE FUNCTION gpt2.attend_pass(layer int, seqs int[], positions int[], qkv vector[], shifts float8[])
RETURNS TABLE (i int, h int, o vector, mx float8, sh float8)
LANGUAGE plpgsql AS $$
BEGIN
    IF cardinality(qkv) = cardinality(ARRAY(SELECT DISTINCT unnest(seqs))) THEN
        RETURN QUERY SELECT * FROM gpt2.attend_1(layer, seqs, positions, qkv, shifts);
    ELSE
        RETURN QUERY SELECT * FROM gpt2.attend_16(layer, seqs, positions, qkv, shifts);
    END IF;
END
$$;

-- The heads of new queries against the cache, their keys and values appended to it first:
-- [n] of [n_embd], heads side by side. Where a query's maximum score is far above its shift,
-- the pass is made again with the maxima as shifts (see the header).
CREATE OR REPLACE FUNCTION gpt2.attend_cached(layer int, seqs int[], positions int[], qkv vector[]) RETURNS vector[]
LANGUAGE plpgsql AS $$
DECLARE
    shifts float8[];                                               -- [n, n_head]
    outs vector[];
BEGIN
    PERFORM gpt2.kv_append(layer, seqs, positions, qkv);
    FOR pass IN 1 .. 2 LOOP
        WITH a AS MATERIALIZED (SELECT * FROM gpt2.attend_pass(layer, seqs, positions, qkv, shifts))
        SELECT (SELECT array_agg(heads.o ORDER BY heads.i)         -- [n, n_embd] heads side by side
                FROM (SELECT a.i, gpt2.vcat(a.o ORDER BY a.h) AS o FROM a GROUP BY a.i) AS heads),
               CASE WHEN (SELECT bool_or(a.mx - a.sh > 60) FROM a) THEN
                   (SELECT array_agg(r.mx ORDER BY r.i)            -- the maxima, for the second pass
                    FROM (SELECT a.i, array_agg(a.mx ORDER BY a.h) AS mx FROM a GROUP BY a.i) AS r) END
        INTO outs, shifts;
        EXIT WHEN shifts IS NULL OR pass = 2;
    END LOOP;
    RETURN outs;
END
$$;

-- What a fresh prefill's head gives back (gpt2.attend_fresh_16): its outputs at every
-- position, and the values transposed for the cache.
CREATE TYPE gpt2.head_out AS (
    o  vector[],     -- [n] of [d_head] the head's output at positions 0 .. n-1
    vt vector[]      -- [d_head] of [n] the head's values, transposed (kv_vt's rows)
);

DO $do$ BEGIN EXECUTE gpt2.unroll($template$
-- One pass of one head of a fresh prefill, %G queries at a time, from qkv [n] of
-- [3*n_embd] and vt (this head's values, transposed), shifted by shifts [n] (see the header),
-- for the groups of %G positions in `groups` (NULL: all). One row per query position
-- i (1-based): the head's output o and the row maximum mx.
CREATE OR REPLACE FUNCTION gpt2.attend_fresh_pass_%G(h int, qkv vector[], vt vector[], shifts float8[], groups int[])
RETURNS TABLE (i int, o vector, mx float8)
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    m gpt2.models := gpt2.current_model();
    dh int := m.n_embd / m.n_head;                                 -- d_head
    scale float8 := 1 / sqrt(m.n_embd / m.n_head);
    n int := cardinality(qkv);
BEGIN
    RETURN QUERY
    WITH k AS MATERIALIZED (                                       -- [n] this head's keys
        SELECT j - 1 AS pos, subvector(qkv[j], m.n_embd + h * dh + 1, dh) AS k FROM generate_series(1, n) AS j
    ), q AS MATERIALIZED (                                         -- [n / %G, %G] queries (scaled) side by side,
        SELECT g, least(n, g * %G + %G) - 1 AS plast,              --   their positions and shifts
               {{CASE WHEN g * %G + @ <= n THEN subvector(qkv[g * %G + @], h * dh + 1, dh) * gpt2.fill(scale, dh) END AS q@}},
               {{CASE WHEN g * %G + @ <= n THEN g * %G + @ - 1 ELSE -1 END AS p@}},
               {{shifts[g * %G + @] AS s@}}
        FROM generate_series(0, (n - 1) / %G) AS g
        WHERE groups IS NULL OR g = ANY(groups)
    ), e AS MATERIALIZED (                                         -- [n / %G, %G] exp(score - shift), 0 where masked,
        SELECT q.g, q.plast, {{a.e@::vector AS e@, -(a.e@::vector <#> gpt2.fill(1, q.plast + 1)) AS z@, a.m@ AS m@}}
        FROM q, LATERAL (                                          --   z, and the row maxima
            SELECT {{array_agg(CASE WHEN k.pos <= q.p@ THEN exp(greatest(least(k.s@ - q.s@, 70), -80)) ELSE 0 END
                               ORDER BY k.pos) AS e@,
                     max(k.s@) FILTER (WHERE k.pos <= q.p@) AS m@}}
            FROM (SELECT k.pos, {{-(k.k <#> q.q@) AS s@}} FROM k WHERE k.pos <= q.plast OFFSET 0) AS k   -- (scores once)
        ) AS a
    )
    SELECT (e.g * %G + u.k)::int, u.o, u.m
    FROM e,
    LATERAL (SELECT {{array_agg(-(e.e@ <#> t.vt) / e.z@ ORDER BY t.d) FILTER (WHERE e.g * %G + @ <= n) AS o@}}   -- p . vt[d]
             FROM (SELECT d, subvector(vt[d], 1, e.plast + 1) AS vt FROM generate_series(1, dh) AS d
                   OFFSET 0) AS t) AS w,                                                   -- (sliced once, not %G times)
    LATERAL unnest(ARRAY[{{w.o@::vector}}], ARRAY[{{e.m@}}]) WITH ORDINALITY AS u(o, m, k)
    WHERE e.g * %G + u.k <= n;
END
$$
$template$, 16); END $do$;

-- One head of a fresh prefill: the queries of one sequence at positions 0 .. n-1 against
-- their own keys and values (nothing cached before them), all from qkv [n, 3*n_embd].
-- Read-only, so it runs in parallel workers (stage 7b spreads (sequence, head) pairs).
CREATE OR REPLACE FUNCTION gpt2.attend_fresh_16(h int, qkv vector[]) RETURNS gpt2.head_out
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    m gpt2.models := gpt2.current_model();
    dh int := m.n_embd / m.n_head;                                 -- d_head
    scale float8 := 1 / sqrt(m.n_embd / m.n_head);
    n int := cardinality(qkv);
    vr real[] := ARRAY(SELECT subvector(x, 2 * m.n_embd + h * dh + 1, dh)::real[]   -- [n, d_head] this head's values
                       FROM unnest(qkv) WITH ORDINALITY AS u(x, t) ORDER BY t);
    vt vector[] := ARRAY(SELECT ARRAY(SELECT vr[j][d] FROM generate_series(1, n) AS j ORDER BY j)::vector
                         FROM generate_series(1, dh) AS d ORDER BY d);             -- [d_head, n] transposed
    shifts float8[] := ARRAY(SELECT -(subvector(qkv[j], h * dh + 1, dh)             -- [n] each query's score
                                      <#> subvector(qkv[j], m.n_embd + h * dh + 1, dh)) * scale   -- on its own key
                             FROM generate_series(1, n) AS j ORDER BY j);
    outs vector[];
    maxima float8[];
    redo int[];                                                    -- groups of 16 whose shift was too far off
BEGIN
    SELECT array_agg(p.o ORDER BY p.i), array_agg(p.mx ORDER BY p.i) INTO outs, maxima
    FROM gpt2.attend_fresh_pass_16(h, qkv, vt, shifts, NULL) AS p;
    redo := ARRAY(SELECT DISTINCT (j - 1) / 16 FROM generate_series(1, n) AS j WHERE maxima[j] - shifts[j] > 60);
    IF cardinality(redo) > 0 THEN                                  -- again, shifted by the maxima
        SELECT array_agg(CASE WHEN p.i IS NULL THEN outs[j] ELSE p.o END ORDER BY j) INTO outs
        FROM generate_series(1, n) AS j LEFT JOIN gpt2.attend_fresh_pass_16(h, qkv, vt, maxima, redo) AS p ON p.i = j;
    END IF;
    RETURN ROW(outs, vt)::gpt2.head_out;
END
$$;

-- The cache of fresh prefills (keys from qkv, values transposed by the heads), and the heads'
-- outputs side by side [n] of [n_embd]. starts: where each sequence's rows start in qkv (and
-- the end); heads: for each (sequence, head), in that order, attend_fresh_16's result.
CREATE OR REPLACE FUNCTION gpt2.kv_store_fresh(layer int, seqs int[], positions int[], qkv vector[], starts int[],
                                               heads gpt2.head_out[]) RETURNS vector[]
LANGUAGE plpgsql AS $$
DECLARE
    m gpt2.models := gpt2.current_model();
    dh int := m.n_embd / m.n_head;
BEGIN
    PERFORM gpt2.kv_keys(layer, seqs, positions, qkv);
    INSERT INTO kv_vt (seq, layer, head, d, vt)                    -- [n_seq, n_head, d_head] transposed values
    SELECT seqs[starts[s]], kv_store_fresh.layer, h, v.d, v.vt
    FROM generate_series(1, cardinality(starts) - 1) AS s, generate_series(0, m.n_head - 1) AS h,
         unnest((heads[(s - 1) * m.n_head + h + 1]).vt) WITH ORDINALITY AS v(vt, d);
    -- subtle: unnest, not o[j] per position: a field of a composite is a flat array, whose
    --   element j of a variable-length type is found by walking the j before it
    RETURN ARRAY(SELECT gpt2.vcat(u.o ORDER BY h)                  -- [n, n_embd] heads side by side
                 FROM generate_series(1, cardinality(starts) - 1) AS s, generate_series(0, m.n_head - 1) AS h,
                      unnest((heads[(s - 1) * m.n_head + h + 1]).o) WITH ORDINALITY AS u(o, j)
                 GROUP BY s, u.j ORDER BY s, u.j);
END
$$;

-- Backward (training, stage 12): one head of one sequence from position 0, the gradients of
-- its queries, keys and values from those of its outputs. NumPy twin: tests/reference.py
-- attention_backward(dout, q, k, v). With P = softmax(q k^T * scale + causal mask), per row i:
--   dP[i][j] = dz[i] . v[j]                       (j <= i)
--   dS[i] = P[i] * (dP[i] - D[i]),  D[i] = P[i] . dP[i]  (softmax's backward: each row of dS sums
--                                   to 0, as it must; dz[i] . z[i] is the same sum, rounded otherwise)
--   dq[i] = scale * sum_j dS[i][j] k[j]           dq[i][d] = dS[i] . kT[d]
--   dk[j] = scale * sum_i dS[i][j] q[i]           dk[j][d] = dS^T[j] . qT[d]    (i >= j)
--   dv[j] = sum_i P[i][j] dz[i]                   dv[j][d] = P^T[j] . dzT[d]    (i >= j)
-- The rows of P and dS are vectors over keys; their columns (P^T, dS^T) come from 2-D arrays.
-- softmax is recomputed from q and k, with its row maximum (the forward pass keeps no P).
CREATE TYPE gpt2.head_grad AS (
    dq vector[],     -- [n] of [d_head]
    dk vector[],
    dv vector[]
);

CREATE OR REPLACE FUNCTION gpt2.attend_backward(h int, qkv vector[], dz vector[]) RETURNS gpt2.head_grad
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    m gpt2.models := gpt2.current_model();
    dh int := m.n_embd / m.n_head;                                 -- d_head
    scale float8 := 1 / sqrt(m.n_embd / m.n_head);
    n int := cardinality(qkv);
    q vector[] := ARRAY(SELECT subvector(qkv[i], h * dh + 1, dh) FROM generate_series(1, n) AS i);
    k vector[] := ARRAY(SELECT subvector(qkv[i], m.n_embd + h * dh + 1, dh) FROM generate_series(1, n) AS i);
    v vector[] := ARRAY(SELECT subvector(qkv[i], 2 * m.n_embd + h * dh + 1, dh) FROM generate_series(1, n) AS i);
    dzh vector[] := ARRAY(SELECT subvector(dz[i], h * dh + 1, dh) FROM generate_series(1, n) AS i);
    p vector[];                                                    -- [n] of [i] rows of P (keys 0 .. i-1)
    ds vector[];                                                   -- [n] of [i] rows of dS
    pm real[];                                                     -- the same, [n, n], 0 above the diagonal
    dsm real[];
    kt vector[] := gpt2.transpose(k);                              -- [d_head] of [n]
    qt vector[] := gpt2.transpose(q);
    dzt vector[] := gpt2.transpose(dzh);
    r gpt2.head_grad;
BEGIN
    WITH sc AS (                                                   -- [n] scores and dP of each row, over its keys
        SELECT i, array_agg(-(k[j] <#> q[i]) * scale ORDER BY j) AS s, array_agg(-(v[j] <#> dzh[i]) ORDER BY j) AS dp
        FROM generate_series(1, n) AS i, generate_series(1, i) AS j
        GROUP BY i
    ), e AS (                                                      -- exp(s - max), softmax's denominator
        SELECT sc.i, sc.dp, x.e, -(x.e <#> gpt2.fill(1, sc.i)) AS sum_e
        FROM sc, LATERAL (SELECT ARRAY(SELECT CASE WHEN y - mx.m < -40 THEN 0 ELSE exp(y - mx.m) END
                                       FROM unnest(sc.s) AS y, (SELECT max(w) AS m FROM unnest(sc.s) AS w) AS mx)::vector AS e) AS x
    ), pr AS (
        SELECT e.i, e.dp::vector AS dp, e.e * gpt2.fill(1 / e.sum_e, e.i) AS p FROM e
    )
    SELECT array_agg(pr.p ORDER BY pr.i),
           array_agg(pr.p * gpt2.flush(pr.dp - gpt2.fill(-(pr.p <#> pr.dp), pr.i)) ORDER BY pr.i)
    INTO p, ds FROM pr;
    pm := ARRAY(SELECT p[i]::real[] || array_fill(0::real, ARRAY[n - i]) FROM generate_series(1, n) AS i);
    dsm := ARRAY(SELECT ds[i]::real[] || array_fill(0::real, ARRAY[n - i]) FROM generate_series(1, n) AS i);
    r.dq := ARRAY(SELECT ARRAY(SELECT -(ds[i] <#> subvector(kt[d], 1, i)) * scale FROM generate_series(1, dh) AS d)::vector
                  FROM generate_series(1, n) AS i);
    SELECT array_agg(c.dk ORDER BY j), array_agg(c.dv ORDER BY j) INTO r.dk, r.dv
    FROM generate_series(1, n) AS j,
         LATERAL (SELECT ARRAY(SELECT pm[i][j] FROM generate_series(j, n) AS i)::vector AS pt,      -- column j of P
                         ARRAY(SELECT dsm[i][j] FROM generate_series(j, n) AS i)::vector AS dst     -- and of dS
                  OFFSET 0) AS col,
         LATERAL (SELECT ARRAY(SELECT -(col.dst <#> subvector(qt[d], j, n - j + 1)) * scale FROM generate_series(1, dh) AS d)::vector AS dk,
                         ARRAY(SELECT -(col.pt <#> subvector(dzt[d], j, n - j + 1)) FROM generate_series(1, dh) AS d)::vector AS dv
                  ) AS c;
    RETURN r;
END
$$;

DO $do$ DECLARE f text; BEGIN
    FOREACH f IN ARRAY ARRAY['gpt2.kv_append(int, int[], int[], vector[])', 'gpt2.kv_keys(int, int[], int[], vector[])',
                             'gpt2.kv_store_fresh(int, int[], int[], vector[], int[], gpt2.head_out[])',
                             'gpt2.attend_fresh_16(int, vector[])',
                             'gpt2.attend_fresh_pass_16(int, vector[], vector[], float8[], int[])',
                             'gpt2.kv_fold(int, int[])', 'gpt2.attend_1(int, int[], int[], vector[], float8[])',
                             'gpt2.attend_16(int, int[], int[], vector[], float8[])',
                             'gpt2.attend_backward(int, vector[], vector[])'] LOOP
        -- subtle: the arguments are arrays of thousands of floats; a custom plan would inline
        --   them as constants and be planned again on every call: plan once
        EXECUTE format('ALTER FUNCTION %s SET plan_cache_mode = force_generic_plan', f);
    END LOOP;
END $do$;
