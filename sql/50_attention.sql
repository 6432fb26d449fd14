-- Stage 5: causal multi-head self-attention over the KV cache.
--
-- NumPy twin: tests/reference.py attention(q, k, v) and mha(x, c_attn, c_proj, n_head)
-- (the projections c_attn / c_proj are gpt2.linear, called by gpt2.block).
--   attention(q, k, v) = softmax(q k^T / sqrt(d_head) + causal mask) v     per head
-- gpt2.mha(layer, seqs, positions, qkv): qkv [n] of [3*n_embd] for NEW positions (of one or
-- several sequences: a prefill, a decode step, a batch) -> [n] of [n_embd], heads side by side.
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
-- made that step ~3x as long as the others (400 ms for 124M), a stutter in the stream.
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
-- subtle: softmax needs a shift against overflow; the usual one is the row maximum, which
--   costs a second pass. The shift here is the query's score against its OWN key (always
--   present: a position sees itself), with exp() clamped to [e^-80, e^40]; if some score
--   exceeds it by more than 33 (the sum then passes e^33, the clamp may have bitten), that
--   query is recomputed exactly with the maximum (gpt2.attend_exact). GPT-2's scores never
--   come near. PostgreSQL RAISES on exp() underflow (exp(-800)) and on float4 underflow,
--   hence the lower clamp: e^-80 is far below float32's resolution next to e^0 and still
--   a normal real.

CREATE OR REPLACE FUNCTION gpt2.kv_fold_every() RETURNS int
LANGUAGE sql IMMUTABLE AS $$ SELECT 32 $$;

-- Whether `layer` folds after the value of position pos: every kv_fold_every positions, the
-- layers' turns spread over them (GPT-2's 12 layers: one layer every 2-3 positions).
CREATE OR REPLACE FUNCTION gpt2.kv_fold_due(layer int, n_layer int, pos int) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT (pos + 1 + layer * gpt2.kv_fold_every() / n_layer) % gpt2.kv_fold_every() = 0
$$;

CREATE OR REPLACE FUNCTION gpt2.kv_reset() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF to_regclass('pg_temp.kv_k') IS NULL THEN
        CREATE TEMPORARY TABLE kv_k (seq int, layer int, head int, pos int, k vector NOT NULL,
                                     PRIMARY KEY (seq, layer, head, pos));
        CREATE TEMPORARY TABLE kv_v (seq int, layer int, head int, pos int, v vector NOT NULL,
                                     PRIMARY KEY (seq, layer, head, pos));
        CREATE TEMPORARY TABLE kv_vt (seq int, layer int, head int, d int, vt vector NOT NULL,
                                      PRIMARY KEY (seq, layer, head, d));
        ALTER TABLE kv_vt ALTER COLUMN vt SET STORAGE PLAIN;   -- up to n_positions floats: keep it in the row
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
        PERFORM gpt2.kv_reset();
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
        PERFORM gpt2.kv_reset();
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

-- One query's attention output for one head, the textbook way (two passes: the maximum,
-- then softmax-weighted values): the fallback of gpt2.attend_%G (see the header).
CREATE OR REPLACE FUNCTION gpt2.attend_exact(seq int, layer int, head int, q vector, pos int) RETURNS vector
LANGUAGE plpgsql AS $$
DECLARE
    scale float8 := 1 / sqrt(vector_dims(q));
    out vector;
BEGIN
    WITH s AS (                                                    -- [pos + 1] scores
        SELECT k.pos, -(k.k <#> q) * scale AS s FROM kv_k k
        WHERE k.seq = attend_exact.seq AND k.layer = attend_exact.layer AND k.head = attend_exact.head
          AND k.pos <= attend_exact.pos
    ), p AS (                                                      -- softmax
        SELECT s.pos, exp(greatest(s.s - max(s.s) OVER (), -80)) AS e FROM s
    ), v AS (                                                      -- every cached value of this head, as rows
        SELECT t.pos, t.v::real[] AS vr FROM kv_v t
        WHERE t.seq = attend_exact.seq AND t.layer = attend_exact.layer AND t.head = attend_exact.head
        UNION ALL
        SELECT j - 1, array_agg(x.vr[j] ORDER BY x.d)
        FROM (SELECT vt.d, vt.vt::real[] AS vr FROM kv_vt vt
              WHERE vt.seq = attend_exact.seq AND vt.layer = attend_exact.layer AND vt.head = attend_exact.head) AS x,
             generate_series(1, cardinality(x.vr)) AS j
        GROUP BY j
    )
    SELECT ARRAY(SELECT sum(p.e * v.vr[d]) / (SELECT sum(e) FROM p)
                 FROM p JOIN v USING (pos), generate_series(1, vector_dims(q)) AS d
                 GROUP BY d ORDER BY d)::vector INTO out;
    RETURN out;
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
-- Attention of new queries (one row each: qseq, qpos, qkv, sorted by seq then pos, positions
-- consecutive within a sequence) against the cache, %G queries of a sequence at a time.
CREATE OR REPLACE FUNCTION gpt2.attend_%G(layer int, qseq int[], qpos int[], qkv vector[]) RETURNS vector[]
LANGUAGE plpgsql AS $$
DECLARE
    m gpt2.models := gpt2.current_model();
    dh int := m.n_embd / m.n_head;                                 -- d_head
    scale float8 := 1 / sqrt(m.n_embd / m.n_head);
    qi int[];                                                      -- [n * n_head] query index, head, output, z
    qh int[];
    qo vector[];
    qz float8[];
    outs vector[];
BEGIN
    WITH r AS (                                                    -- [n] the queries, in groups of %G per sequence
        SELECT u.i, u.s, u.p, (row_number() OVER (PARTITION BY u.s ORDER BY u.p) - 1) / %G AS g
        FROM unnest(qseq, qpos) WITH ORDINALITY AS u(s, p, i)
    ), q AS MATERIALIZED (                                         -- [n_group, n_head] %G queries side by side
        SELECT gr.s, gr.g, h, gr.i0, gr.cnt, gr.pfirst + gr.cnt - 1 AS plast,
               coalesce((SELECT vector_dims(t.vt) FROM kv_vt t
                         WHERE t.seq = gr.s AND t.layer = attend_%G.layer AND t.head = h AND t.d = 1), 0) AS nvt,
               {{CASE WHEN @ <= gr.cnt THEN subvector(qkv[gr.i0 + @ - 1], h * dh + 1, dh) END AS q@}},
               {{CASE WHEN @ <= gr.cnt THEN gr.pfirst + @ - 1 ELSE -1 END AS p@}},
               {{CASE WHEN @ <= gr.cnt THEN -(subvector(qkv[gr.i0 + @ - 1], h * dh + 1, dh)       -- shift: the score
                    <#> subvector(qkv[gr.i0 + @ - 1], m.n_embd + h * dh + 1, dh)) * scale END AS s@}}   -- on its own key
        FROM (SELECT r.s, r.g, min(r.i)::int AS i0, min(r.p) AS pfirst, count(*)::int AS cnt FROM r GROUP BY r.s, r.g) AS gr,
             generate_series(0, m.n_head - 1) AS h
    ), e AS MATERIALIZED (                                         -- [n_group, n_head, %G] exp(score - shift) of the
        SELECT q.s, q.g, q.h, least(q.plast + 1, q.nvt) AS len,   -- positions in kv_vt, 0 where masked
               gpt2.fill(1, least(q.plast + 1, q.nvt)) AS ones, {{a.e@::vector AS e@}}
        FROM q, LATERAL (
            SELECT {{array_agg(CASE WHEN k.pos <= q.p@ THEN exp(greatest(least(-(k.k <#> q.q@) * scale - q.s@, 40), -80))
                                    ELSE 0 END ORDER BY k.pos) AS e@}}
            FROM kv_k k
            WHERE k.seq = q.s AND k.layer = attend_%G.layer AND k.head = q.h AND k.pos <= q.plast AND k.pos < q.nvt
        ) AS a
        WHERE q.nvt > 0
    ), tail AS (                                                   -- [n_group, n_head, %G] the positions in kv_v:
        SELECT q.s, q.g, q.h, {{t.o@ AS o@, t.z@ AS z@}}           -- sum exp(..) * v, and sum exp(..)
        FROM q, LATERAL (
            SELECT {{sum(v.v * gpt2.fill(exp(greatest(least(-(k.k <#> q.q@) * scale - q.s@, 40), -80)), dh))
                        FILTER (WHERE k.pos <= q.p@) AS o@,
                     sum(exp(greatest(least(-(k.k <#> q.q@) * scale - q.s@, 40), -80))) FILTER (WHERE k.pos <= q.p@) AS z@}}
            FROM kv_k k JOIN kv_v v ON (v.seq, v.layer, v.head, v.pos) = (k.seq, k.layer, k.head, k.pos)
            WHERE k.seq = q.s AND k.layer = attend_%G.layer AND k.head = q.h AND k.pos <= q.plast AND k.pos >= q.nvt
        ) AS t
        WHERE q.plast >= q.nvt
    ), z AS (                                                      -- [n_group, n_head, %G] softmax denominators
        SELECT q.s, q.g, q.h, q.i0, q.cnt,
               {{coalesce(-(e.e@ <#> e.ones), 0) + coalesce(tail.z@, 0) AS z@}}
        FROM q LEFT JOIN e USING (s, g, h) LEFT JOIN tail USING (s, g, h)
    ), o AS (                                                      -- [n, n_head] (p . vt[d] for every d / z)
        SELECT z.i0 + u.k - 1 AS i, z.h, u.o, u.z                  --   + the untransposed part
        FROM z LEFT JOIN e USING (s, g, h) LEFT JOIN tail USING (s, g, h),
        LATERAL (SELECT {{array_agg(-(e.e@ <#> t.vt) / z.z@ ORDER BY t.d) FILTER (WHERE @ <= z.cnt) AS o@}}
                 FROM (SELECT t.d, subvector(t.vt, 1, e.len) AS vt FROM kv_vt t          -- [d_head] of [len]
                       WHERE t.seq = z.s AND t.layer = attend_%G.layer AND t.head = z.h AND e.len IS NOT NULL
                       OFFSET 0) AS t) AS w,                                             -- (sliced once, not %G times)
        LATERAL unnest(ARRAY[{{CASE WHEN @ <= z.cnt THEN gpt2.attn_out(w.o@, tail.o@, z.z@, dh) END}}],
                       ARRAY[{{z.z@}}]) WITH ORDINALITY AS u(o, z, k)
        WHERE u.k <= z.cnt
    )
    SELECT array_agg(o.i), array_agg(o.h), array_agg(o.o), array_agg(o.z) INTO qi, qh, qo, qz FROM o;

    FOR j IN 1 .. cardinality(qi) LOOP                             -- where the shift may have clamped: exactly
        IF qz[j] > exp(33) THEN
            qo[j] := gpt2.attend_exact(qseq[qi[j]], layer, qh[j], subvector(qkv[qi[j]], qh[j] * dh + 1, dh), qpos[qi[j]]);
        END IF;
    END LOOP;
    SELECT array_agg(heads.o ORDER BY heads.i) INTO outs           -- [n, n_embd] heads side by side
    FROM (SELECT u.i, gpt2.vcat(u.o ORDER BY u.h) AS o FROM unnest(qi, qh, qo) AS u(i, h, o) GROUP BY u.i) AS heads;
    RETURN outs;
END
$$
$template$, g); END LOOP; END $do$;

DO $do$ BEGIN EXECUTE gpt2.unroll($template$
-- One head of a fresh prefill: the queries of one sequence at positions 0 .. n-1 against
-- their own keys and values (nothing cached before them), all from qkv [n, 3*n_embd], %G
-- queries at a time. Returns [n] outputs of the head, then [d_head] transposed values vt[d]
-- (for the cache), then one vector of the n softmax denominators z (see the header).
-- Read-only, so it runs in parallel workers: stage 7b spreads (sequence, head) pairs.
CREATE OR REPLACE FUNCTION gpt2.attend_fresh_%G(h int, qkv vector[]) RETURNS vector[]
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
    outs vector[];
    zs float8[];
BEGIN
    WITH k AS MATERIALIZED (                                       -- [n] this head's keys
        SELECT j - 1 AS pos, subvector(qkv[j], m.n_embd + h * dh + 1, dh) AS k FROM generate_series(1, n) AS j
    ), q AS MATERIALIZED (                                         -- [n / %G, %G] queries (scaled) side by side,
        SELECT g, least(n, g * %G + %G) - 1 AS plast,              --   their positions and shifts
               {{CASE WHEN g * %G + @ <= n THEN subvector(qkv[g * %G + @], h * dh + 1, dh) * gpt2.fill(scale, dh) END AS q@}},
               {{CASE WHEN g * %G + @ <= n THEN g * %G + @ - 1 ELSE -1 END AS p@}},
               {{CASE WHEN g * %G + @ <= n THEN -(subvector(qkv[g * %G + @], h * dh + 1, dh)
                    <#> subvector(qkv[g * %G + @], m.n_embd + h * dh + 1, dh)) * scale END AS s@}}
        FROM generate_series(0, (n - 1) / %G) AS g
    ), e AS MATERIALIZED (                                         -- [n / %G, %G] exp(score - shift), 0 where masked,
        SELECT q.g, q.plast, {{a.e@::vector AS e@, -(a.e@::vector <#> gpt2.fill(1, q.plast + 1)) AS z@}}   -- and z
        FROM q, LATERAL (
            SELECT {{array_agg(CASE WHEN k.pos <= q.p@ THEN exp(greatest(least(-(k.k <#> q.q@) - q.s@, 40), -80))
                                    ELSE 0 END ORDER BY k.pos) AS e@}}
            FROM k WHERE k.pos <= q.plast) AS a
    )
    SELECT array_agg(u.o ORDER BY e.g, u.k), array_agg(u.z ORDER BY e.g, u.k) INTO outs, zs
    FROM e,
    LATERAL (SELECT {{array_agg(-(e.e@ <#> t.vt) / e.z@ ORDER BY t.d) FILTER (WHERE e.g * %G + @ <= n) AS o@}}   -- p . vt[d]
             FROM (SELECT d, subvector(vt[d], 1, e.plast + 1) AS vt FROM generate_series(1, dh) AS d
                   OFFSET 0) AS t) AS w,                                                   -- (sliced once, not %G times)
    LATERAL unnest(ARRAY[{{w.o@::vector}}], ARRAY[{{e.z@}}]) WITH ORDINALITY AS u(o, z, k)
    WHERE e.g * %G + u.k <= n;
    RETURN outs || vt || ARRAY[zs::real[]::vector];
END
$$
$template$, 16); END $do$;

DROP FUNCTION IF EXISTS gpt2.mha(int, vector[], int);   -- the one-sequence form of earlier releases
-- Rows sorted by sequence, then position; positions consecutive within a sequence.
CREATE OR REPLACE FUNCTION gpt2.mha(layer int, seqs int[], positions int[], qkv vector[]) RETURNS vector[]
LANGUAGE plpgsql AS $$
DECLARE
    m gpt2.models := gpt2.current_model();
    dh int := m.n_embd / m.n_head;
    starts int[];                                                  -- where each sequence's rows start (and the end)
    units vector[];                                                -- [n_seq * n_head] of ([n] outputs, [d_head] vt, z)
BEGIN
    IF cardinality(qkv) = cardinality(ARRAY(SELECT DISTINCT unnest(seqs))) THEN   -- one query per sequence: decode steps
        PERFORM gpt2.kv_append(layer, seqs, positions, qkv);
        RETURN gpt2.attend_1(layer, seqs, positions, qkv);
    ELSIF EXISTS (SELECT FROM unnest(seqs, positions) AS u(s, p) WHERE u.p = 0 HAVING count(*) < cardinality(ARRAY(SELECT DISTINCT unnest(seqs))))
          OR NOT EXISTS (SELECT FROM unnest(positions) AS p WHERE p = 0) THEN     -- a sequence goes on from its cache
        PERFORM gpt2.kv_append(layer, seqs, positions, qkv);
        RETURN gpt2.attend_16(layer, seqs, positions, qkv);
    END IF;
    -- fresh prefills: every sequence starts at 0; its heads in parallel, and the cache from their results
    starts := ARRAY(SELECT min(u.i) FROM unnest(seqs) WITH ORDINALITY AS u(s, i) GROUP BY u.s ORDER BY min(u.i))
              || (cardinality(qkv) + 1);
    units := gpt2.parallel_map('attend_fresh', layer, qkv, NULL, starts);
    RETURN gpt2.kv_store_fresh(layer, seqs, positions, qkv, starts, units);
END
$$;

-- The cache of fresh prefills (keys from qkv, values transposed by the heads), and the heads'
-- outputs side by side; queries whose softmax shift may have clamped are recomputed exactly.
-- units: for each (sequence, head), in that order: [n] outputs, [d_head] vt, [1] z.
CREATE OR REPLACE FUNCTION gpt2.kv_store_fresh(layer int, seqs int[], positions int[], qkv vector[], starts int[],
                                               units vector[]) RETURNS vector[]
LANGUAGE plpgsql AS $$
DECLARE
    m gpt2.models := gpt2.current_model();
    dh int := m.n_embd / m.n_head;
    r record;
BEGIN
    PERFORM gpt2.kv_keys(layer, seqs, positions, qkv);
    IF to_regclass('pg_temp.fresh_unit') IS NULL THEN                -- (sequence, head) -> its block in units
        CREATE TEMPORARY TABLE fresh_unit (first int, n int, h int, base int);
    END IF;
    TRUNCATE fresh_unit;
    INSERT INTO fresh_unit
    SELECT s.first, s.n, h, (sum(s.n + dh + 1) OVER (ORDER BY s.first, h ROWS UNBOUNDED PRECEDING) - (s.n + dh + 1))::int
    FROM (SELECT starts[k] AS first, starts[k + 1] - starts[k] AS n FROM generate_series(1, cardinality(starts) - 1) AS k) AS s,
         generate_series(0, m.n_head - 1) AS h;
    INSERT INTO kv_vt (seq, layer, head, d, vt)                    -- [n_seq, n_head, d_head] transposed values
    SELECT seqs[u.first], kv_store_fresh.layer, u.h, d, units[u.base + u.n + d] FROM fresh_unit u, generate_series(1, dh) AS d;

    FOR r IN SELECT u.first + j - 1 AS i, u.h, u.base + j AS at                 -- the shift may have clamped: exactly
             FROM fresh_unit u, unnest(units[u.base + u.n + dh + 1]::real[]) WITH ORDINALITY AS z(z, j)
             WHERE z.z > exp(33) LOOP
        units[r.at] := gpt2.attend_exact(seqs[r.i], layer, r.h, subvector(qkv[r.i], r.h * dh + 1, dh), positions[r.i]);
    END LOOP;
    RETURN ARRAY(SELECT gpt2.vcat(units[u.base + j] ORDER BY u.h)  -- [n, n_embd] heads side by side
                 FROM fresh_unit u, generate_series(1, u.n) AS j
                 GROUP BY u.first + j ORDER BY u.first + j);
END
$$;

ALTER FUNCTION gpt2.kv_append(int, int[], int[], vector[]) SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION gpt2.kv_keys(int, int[], int[], vector[]) SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION gpt2.kv_store_fresh(int, int[], int[], vector[], int[], vector[]) SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION gpt2.attend_fresh_16(int, vector[]) SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION gpt2.kv_fold(int, int[]) SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION gpt2.attend_1(int, int[], int[], vector[]) SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION gpt2.attend_16(int, int[], int[], vector[]) SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION gpt2.attend_exact(int, int, int, vector, int) SET plan_cache_mode = force_generic_plan;
