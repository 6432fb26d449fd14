-- Stage 7b: the work of a block on both cores (PostgreSQL's parallel query).
--
-- NumPy twin: none (NumPy's BLAS uses both cores inside each matrix product).
-- gpt2.parallel_map(fn, layer, xs, ys, args) computes fn in units spread over parallel workers:
--   'block_in'      stage 7's half before the heads, on units of gpt2.parallel_unit() positions
--   'block_out'     stage 7's half after the heads (ys: the heads' outputs), likewise
--   'block_out_in'  block_out of `layer`, then block_in of the next layer: one map where
--                   two would start their workers twice; [x, qkv] per position, interleaved
--   'attend_fresh'  stage 5's heads of fresh prefills, one unit per (sequence, head); args: where
--                   each sequence's rows start in xs (its qkv), and the end
-- and returns the units' results one after the other:
--
--   SELECT u.g, gpt2.map_unit(fn, layer, xs, ys, args, u.g) FROM gpt2.units u WHERE u.g < n_units
--
-- A Parallel Seq Scan hands the rows of gpt2.units (one per page, stage 0) to the workers
-- one at a time, so a worker that finishes early takes the next unit. Measured on GPT-2
-- 124M's shapes, 2 cores: see README (Speed).
--
-- subtle: only RETURN QUERY runs a PL/pgSQL query in parallel (SELECT INTO asks for one row
--   and runs serially), hence the set-returning gpt2.map_units.
-- subtle: the leader does not take units itself (parallel_leader_participation = off): a
--   unit's result is hundreds of kB, and a worker whose result waits in the 64 kB tuple
--   queue stalls until the leader, busy with a unit of its own, reads it. Two workers
--   compute; the leader collects. With no worker available (max_parallel_workers = 0, all
--   busy) the leader computes the units itself, as in a serial plan.
-- subtle: a generic plan (plan_cache_mode): a custom one would inline xs into the plan as a
--   constant, and the plan travels to the workers as text.
-- subtle: below gpt2.parallel_min() positions a worker costs more than it saves (~6-20 ms to
--   start one and plan its statements); the map then runs in the calling process.
-- subtle: workers see no temporary table (the KV cache): the units read only their arguments
--   and the model's tables.

CREATE OR REPLACE FUNCTION gpt2.parallel_unit() RETURNS int LANGUAGE sql IMMUTABLE AS $$ SELECT 16 $$;
CREATE OR REPLACE FUNCTION gpt2.parallel_min() RETURNS int LANGUAGE sql IMMUTABLE AS $$ SELECT 32 $$;

-- How many units fn takes for n = cardinality(xs) rows.
CREATE OR REPLACE FUNCTION gpt2.map_size(fn text, n int, args int[]) RETURNS int
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE fn WHEN 'attend_fresh' THEN (cardinality(args) - 1) * (gpt2.current_model()).n_head
                   ELSE (n - 1) / gpt2.parallel_unit() + 1 END
$$;

CREATE OR REPLACE FUNCTION gpt2.map_unit(fn text, layer int, xs vector[], ys vector[], args int[], g int) RETURNS vector[]
LANGUAGE plpgsql STABLE PARALLEL SAFE COST 1000000 AS $$
DECLARE
    unit int := gpt2.parallel_unit();
    n_head int := (gpt2.current_model()).n_head;
BEGIN
    CASE fn
        WHEN 'block_in' THEN RETURN gpt2.block_in(layer, xs[g * unit + 1 : g * unit + unit]);
        WHEN 'block_out' THEN RETURN gpt2.block_out(layer, xs[g * unit + 1 : g * unit + unit], ys[g * unit + 1 : g * unit + unit]);
        WHEN 'block_out_in' THEN
            xs := gpt2.block_out(layer, xs[g * unit + 1 : g * unit + unit], ys[g * unit + 1 : g * unit + unit]);
            RETURN ARRAY(SELECT v FROM unnest(xs, gpt2.block_in(layer + 1, xs)) WITH ORDINALITY AS u(x, qkv, t),
                                LATERAL (VALUES (1, u.x), (2, u.qkv)) AS p(k, v)
                         ORDER BY u.t, p.k);
        WHEN 'attend_fresh' THEN                                   -- sequence g / n_head, head g % n_head
            RETURN gpt2.attend_fresh_16(g % n_head, xs[args[g / n_head + 1] : args[g / n_head + 2] - 1]);
    END CASE;
END
$$;

CREATE OR REPLACE FUNCTION gpt2.map_units(fn text, layer int, xs vector[], ys vector[], args int[])
RETURNS TABLE (g int, result vector[])
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    RETURN QUERY
    SELECT u.g, gpt2.map_unit(fn, layer, xs, ys, args, u.g)
    FROM gpt2.units u
    WHERE u.g < gpt2.map_size(fn, cardinality(xs), args);
END
$$;
DROP FUNCTION IF EXISTS gpt2.map_units(text, int, vector[], vector[]);      -- an earlier form
DROP FUNCTION IF EXISTS gpt2.map_unit(text, int, vector[], vector[]);
DO $do$ DECLARE setting text; BEGIN
    FOREACH setting IN ARRAY ARRAY['plan_cache_mode = force_generic_plan', 'max_parallel_workers_per_gather = 2',
                                   'parallel_leader_participation = off', 'parallel_setup_cost = 0',
                                   'parallel_tuple_cost = 0', 'min_parallel_table_scan_size = 0'] LOOP
        EXECUTE 'ALTER FUNCTION gpt2.map_units(text, int, vector[], vector[], int[]) SET ' || setting;
    END LOOP;
END $do$;

CREATE OR REPLACE FUNCTION gpt2.parallel_map(fn text, layer int, xs vector[], ys vector[], args int[] DEFAULT NULL)
RETURNS vector[]
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF cardinality(xs) < gpt2.parallel_min() THEN                 -- in this process, unit after unit
        RETURN ARRAY(SELECT u.v FROM generate_series(0, gpt2.map_size(fn, cardinality(xs), args) - 1) AS g,
                                     unnest(gpt2.map_unit(fn, layer, xs, ys, args, g)) WITH ORDINALITY AS u(v, k)
                     ORDER BY g, u.k);
    END IF;
    RETURN ARRAY(SELECT u.v FROM gpt2.map_units(fn, layer, xs, ys, args) AS m, unnest(m.result) WITH ORDINALITY AS u(v, k)
                 ORDER BY m.g, u.k);
END
$$;
DROP FUNCTION IF EXISTS gpt2.parallel_map(text, int, vector[], vector[]);  -- an earlier form
