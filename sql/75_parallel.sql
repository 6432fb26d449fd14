-- Stage 7b: the work of a layer on both cores (PostgreSQL's parallel query).
--
-- NumPy twin: none (NumPy's BLAS uses both cores inside each matrix product).
-- Two kinds of work are split into units that parallel workers compute side by side:
--   gpt2.steps(layer, xs, heads, ...)   stage 7's block_step, in units of gpt2.parallel_unit()
--                                       positions; returns the units' results joined (gpt2.step_out)
--   gpt2.mha(layer, seqs, positions, qkv)   stage 5's heads: fresh prefills in units of one
--                                       (sequence, head) each (gpt2.attend_fresh_16), anything
--                                       else against the cache (gpt2.attend_cached)
-- A unit is a row of gpt2.units; a Parallel Seq Scan hands those rows to the workers one at a
-- time (one row per page), so a worker that finishes early takes the next unit:
--
--   SELECT u.g, gpt2.block_step(layer, xs[g*16+1 : g*16+16], ...) FROM gpt2.units u WHERE u.g < n_units
--
-- A job with more units than gpt2.units has rows runs in rounds of that many.
-- Measured on GPT-2 124M's shapes, 2 cores: docs/performance.md.
--
-- subtle: only RETURN QUERY runs a PL/pgSQL query in parallel (SELECT INTO asks for one row
--   and runs serially), hence the set-returning gpt2.step_units and gpt2.head_units.
-- subtle: the leader does not take units itself (parallel_leader_participation = off): a
--   unit's result is hundreds of kB, and a worker whose result waits in the 64 kB tuple
--   queue stalls until the leader, busy with a unit of its own, reads it. Two workers
--   compute; the leader collects. With no worker available (max_parallel_workers = 0, all
--   busy) the leader computes the units itself, as in a serial plan.
-- subtle: a generic plan (plan_cache_mode): a custom one would inline xs into the plan as a
--   constant, and the plan travels to the workers as text.
-- subtle: below gpt2.parallel_min() positions a worker costs more than it saves (starting one
--   and planning its statements); the work then runs in the calling process.
-- subtle: workers see no temporary table (the KV cache): the units read only their arguments
--   and the model's tables.

-- One row per page (a 1 kB row under fillfactor 10), so the scan hands out one unit at a time.
-- subtle: no index. With one (a primary key on g), the planner may price an index scan of
--   `g < count` below the Parallel Seq Scan, and that plan runs every unit in one process
--   (it did: a prefill on one core, at 1.5x the time). tests/test_parallel.py checks that
--   the workers start.
CREATE TABLE IF NOT EXISTS gpt2.units (g int NOT NULL, pad text NOT NULL) WITH (fillfactor = 10);
INSERT INTO gpt2.units SELECT g, repeat('.', 1000) FROM generate_series(0, 255) AS g
WHERE NOT EXISTS (SELECT FROM gpt2.units);

CREATE OR REPLACE FUNCTION gpt2.parallel_unit() RETURNS int LANGUAGE sql IMMUTABLE AS $$ SELECT 16 $$;
CREATE OR REPLACE FUNCTION gpt2.parallel_min() RETURNS int LANGUAGE sql IMMUTABLE AS $$ SELECT 32 $$;
-- The most units one parallel query hands out (the rows of gpt2.units).
CREATE OR REPLACE FUNCTION gpt2.parallel_round() RETURNS int LANGUAGE sql STABLE AS $$ SELECT count(*)::int FROM gpt2.units $$;

-- block_step over units u0 .. u0 + count - 1 (positions unit*g + 1 .. unit*(g + 1)).
CREATE OR REPLACE FUNCTION gpt2.step_units(layer int, xs vector[], heads vector[], record boolean,
                                           attn_edit vector[], mlp_edit vector[], resid_edit vector[],
                                           u0 int, count int)
RETURNS TABLE (g int, r gpt2.step_out)
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    unit int := gpt2.parallel_unit();
BEGIN
    RETURN QUERY
    SELECT u0 + u.g, gpt2.block_step(layer, xs[lo:hi], heads[lo:hi], record, attn_edit[lo:hi], mlp_edit[lo:hi],
                                        resid_edit[lo:hi])
    FROM gpt2.units u, LATERAL (SELECT (u0 + u.g) * unit + 1 AS lo, (u0 + u.g + 1) * unit AS hi) AS s
    WHERE u.g < count;
END
$$;

-- attend_fresh_16 over units u0 .. u0 + count - 1: unit k is head k % n_head of the
-- sequence whose rows of qkv are starts[k / n_head + 1] .. starts[k / n_head + 2] - 1.
CREATE OR REPLACE FUNCTION gpt2.head_units(qkv vector[], starts int[], u0 int, count int)
RETURNS TABLE (g int, r gpt2.head_out)
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    n_head int := (gpt2.current_model()).n_head;
BEGIN
    RETURN QUERY
    SELECT u0 + u.g, gpt2.attend_fresh_16((u0 + u.g) % n_head,
                                             qkv[starts[(u0 + u.g) / n_head + 1] : starts[(u0 + u.g) / n_head + 2] - 1])
    FROM gpt2.units u
    WHERE u.g < count;
END
$$;

-- The settings that make a unit function's query a Parallel Seq Scan of gpt2.units handed
-- to two workers (see the header); every *_units function of stages 7b, 8b and 12 takes them.
CREATE OR REPLACE FUNCTION gpt2.run_in_units(f regprocedure) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    setting text;
BEGIN
    FOREACH setting IN ARRAY ARRAY['plan_cache_mode = force_generic_plan', 'max_parallel_workers_per_gather = 2',
                                   'parallel_leader_participation = off', 'parallel_setup_cost = 0',
                                   'parallel_tuple_cost = 0', 'min_parallel_table_scan_size = 0'] LOOP
        EXECUTE format('ALTER FUNCTION %s SET %s', f, setting);
    END LOOP;
END
$$;

SELECT gpt2.run_in_units('gpt2.step_units(int, vector[], vector[], boolean, vector[], vector[], vector[], int, int)');
SELECT gpt2.run_in_units('gpt2.head_units(vector[], int[], int, int)');

-- block_step for every position of xs: in this process for a few, else in parallel units.
CREATE OR REPLACE FUNCTION gpt2.steps(layer int, xs vector[], heads vector[], record boolean DEFAULT false,
                                      attn_edit vector[] DEFAULT NULL, mlp_edit vector[] DEFAULT NULL,
                                      resid_edit vector[] DEFAULT NULL)
RETURNS gpt2.step_out
LANGUAGE plpgsql AS $$
DECLARE
    n_units int := (cardinality(xs) - 1) / gpt2.parallel_unit() + 1;
    round int := gpt2.parallel_round();
    r gpt2.step_out := ROW('{}', '{}', '{}', '{}', '{}', '{}', '{}');
BEGIN
    IF cardinality(xs) < gpt2.parallel_min() THEN
        RETURN gpt2.block_step(layer, xs, heads, record, attn_edit, mlp_edit, resid_edit);
    END IF;
    FOR u0 IN 0 .. n_units - 1 BY round LOOP                   -- (one round, but for the biggest jobs)
        WITH u AS MATERIALIZED (SELECT * FROM gpt2.step_units(layer, xs, heads, record, attn_edit, mlp_edit, resid_edit,
                                                               u0, least(round, n_units - u0)))
        SELECT r.x || ARRAY(SELECT v FROM u, unnest((u.r).x) WITH ORDINALITY AS e(v, k) ORDER BY u.g, e.k),
               r.y || ARRAY(SELECT v FROM u, unnest((u.r).y) WITH ORDINALITY AS e(v, k) ORDER BY u.g, e.k),
               r.attn_out || ARRAY(SELECT v FROM u, unnest((u.r).attn_out) WITH ORDINALITY AS e(v, k) ORDER BY u.g, e.k),
               r.resid_mid || ARRAY(SELECT v FROM u, unnest((u.r).resid_mid) WITH ORDINALITY AS e(v, k) ORDER BY u.g, e.k),
               r.mlp_pre || ARRAY(SELECT v FROM u, unnest((u.r).mlp_pre) WITH ORDINALITY AS e(v, k) ORDER BY u.g, e.k),
               r.mlp_post || ARRAY(SELECT v FROM u, unnest((u.r).mlp_post) WITH ORDINALITY AS e(v, k) ORDER BY u.g, e.k),
               r.mlp_out || ARRAY(SELECT v FROM u, unnest((u.r).mlp_out) WITH ORDINALITY AS e(v, k) ORDER BY u.g, e.k)
        INTO r.x, r.y, r.attn_out, r.resid_mid, r.mlp_pre, r.mlp_post, r.mlp_out;
    END LOOP;
    IF NOT record OR heads IS NULL THEN                            -- (nothing was recorded: NULL, not '{}')
        r.attn_out := NULL; r.resid_mid := NULL; r.mlp_pre := NULL; r.mlp_post := NULL; r.mlp_out := NULL;
    END IF;
    RETURN r;
END
$$;

-- Causal multi-head attention of layer `layer` for new positions (rows sorted by sequence,
-- then position; positions consecutive within a sequence): [n] of [n_embd], heads side by
-- side, the keys and values appended to this connection's KV cache.
CREATE OR REPLACE FUNCTION gpt2.mha(layer int, seqs int[], positions int[], qkv vector[]) RETURNS vector[]
LANGUAGE plpgsql AS $$
DECLARE
    n_head int := (gpt2.current_model()).n_head;
    starts int[];                                                  -- where each sequence's rows start (and the end)
    n_units int;
    round int := gpt2.parallel_round();
    heads gpt2.head_out[] := '{}';
BEGIN
    IF EXISTS (SELECT FROM unnest(seqs, positions) AS u(s, p) GROUP BY u.s HAVING min(u.p) > 0) THEN
        RETURN gpt2.attend_cached(layer, seqs, positions, qkv);    -- some sequence goes on from its cache
    END IF;
    -- fresh prefills: every sequence starts at 0; its heads in parallel, and the cache from their results
    starts := ARRAY(SELECT min(u.i) FROM unnest(seqs) WITH ORDINALITY AS u(s, i) GROUP BY u.s ORDER BY min(u.i))
              || (cardinality(qkv) + 1);
    n_units := (cardinality(starts) - 1) * n_head;
    IF cardinality(qkv) < gpt2.parallel_min() THEN
        heads := ARRAY(SELECT gpt2.attend_fresh_16(k % n_head, qkv[starts[k / n_head + 1] : starts[k / n_head + 2] - 1])
                       FROM generate_series(0, n_units - 1) AS k ORDER BY k);
    ELSE
        FOR u0 IN 0 .. n_units - 1 BY round LOOP
            heads := heads || ARRAY(SELECT h.r FROM gpt2.head_units(qkv, starts, u0, least(round, n_units - u0)) AS h
                                    ORDER BY h.g);
        END LOOP;
    END IF;
    RETURN gpt2.kv_store_fresh(layer, seqs, positions, qkv, starts, heads);
END
$$;

ALTER FUNCTION gpt2.steps(int, vector[], vector[], boolean, vector[], vector[], vector[]) SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION gpt2.mha(int, int[], int[], vector[]) SET plan_cache_mode = force_generic_plan;

-- Backward (training, stage 12): the heads' backward of fresh sequences (training runs every
-- text from position 0), one unit per (sequence, head) as gpt2.mha. qkv, dz (d loss / d the
-- heads' outputs): [n] rows of all sequences; starts as gpt2.mha. Returns d loss / d qkv, [n]
-- of [3*n_embd].
CREATE OR REPLACE FUNCTION gpt2.head_backward_units(qkv vector[], dz vector[], starts int[], u0 int, count int)
RETURNS TABLE (g int, r gpt2.head_grad)
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    n_head int := (gpt2.current_model()).n_head;
BEGIN
    RETURN QUERY
    SELECT u0 + u.g, gpt2.attend_backward((u0 + u.g) % n_head, qkv[s.lo:s.hi], dz[s.lo:s.hi])
    FROM gpt2.units u,
         LATERAL (SELECT starts[(u0 + u.g) / n_head + 1] AS lo, starts[(u0 + u.g) / n_head + 2] - 1 AS hi) AS s
    WHERE u.g < count;
END
$$;

SELECT gpt2.run_in_units('gpt2.head_backward_units(vector[], vector[], int[], int, int)');

CREATE OR REPLACE FUNCTION gpt2.mha_backward(seqs int[], qkv vector[], dz vector[]) RETURNS vector[]
LANGUAGE plpgsql AS $$
DECLARE
    n_head int := (gpt2.current_model()).n_head;
    starts int[] := ARRAY(SELECT min(u.i) FROM unnest(seqs) WITH ORDINALITY AS u(s, i) GROUP BY u.s ORDER BY min(u.i))
                    || (cardinality(qkv) + 1);
    n_units int := (cardinality(starts) - 1) * n_head;
    round int := gpt2.parallel_round();
    heads gpt2.head_grad[] := '{}';
BEGIN
    IF cardinality(qkv) < gpt2.parallel_min() THEN
        heads := ARRAY(SELECT gpt2.attend_backward(k % n_head, qkv[lo:hi], dz[lo:hi])
                       FROM generate_series(0, n_units - 1) AS k,
                            LATERAL (SELECT starts[k / n_head + 1] AS lo, starts[k / n_head + 2] - 1 AS hi) AS s
                       ORDER BY k);
    ELSE
        FOR u0 IN 0 .. n_units - 1 BY round LOOP
            heads := heads || ARRAY(SELECT h.r FROM gpt2.head_backward_units(qkv, dz, starts, u0, least(round, n_units - u0)) AS h
                                    ORDER BY h.g);
        END LOOP;
    END IF;
    -- row i of sequence s: the heads' dq side by side, then their dk, then their dv (qkv's layout)
    RETURN ARRAY(SELECT gpt2.vcat(x.v ORDER BY x.part, x.h)
                 FROM (SELECT s, h, 1 AS part, u.v, u.j FROM generate_series(1, cardinality(starts) - 1) AS s,
                            generate_series(0, n_head - 1) AS h, unnest((heads[(s - 1) * n_head + h + 1]).dq) WITH ORDINALITY AS u(v, j)
                       UNION ALL
                       SELECT s, h, 2, u.v, u.j FROM generate_series(1, cardinality(starts) - 1) AS s,
                            generate_series(0, n_head - 1) AS h, unnest((heads[(s - 1) * n_head + h + 1]).dk) WITH ORDINALITY AS u(v, j)
                       UNION ALL
                       SELECT s, h, 3, u.v, u.j FROM generate_series(1, cardinality(starts) - 1) AS s,
                            generate_series(0, n_head - 1) AS h, unnest((heads[(s - 1) * n_head + h + 1]).dv) WITH ORDINALITY AS u(v, j)
                      ) AS x
                 GROUP BY x.s, x.j ORDER BY x.s, x.j);
END
$$;
ALTER FUNCTION gpt2.mha_backward(int[], vector[], vector[]) SET plan_cache_mode = force_generic_plan;
