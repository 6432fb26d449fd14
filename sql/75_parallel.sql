-- Stage 7b: the position-wise halves of a block on both cores (PostgreSQL's parallel query).
--
-- NumPy twin: none (NumPy's BLAS uses both cores inside each matrix product).
-- gpt2.parallel_map(fn, layer, xs, ys) = fn(layer, xs, ys) ('block_in' or 'block_out', stage
-- 7), computed in units of gpt2.parallel_unit() positions spread over parallel workers:
--
--   SELECT u.g, gpt2.map_unit(fn, layer, xs[unit g], ys[unit g]) FROM gpt2.units u WHERE u.g < n_units
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

CREATE OR REPLACE FUNCTION gpt2.parallel_unit() RETURNS int LANGUAGE sql IMMUTABLE AS $$ SELECT 16 $$;
CREATE OR REPLACE FUNCTION gpt2.parallel_min() RETURNS int LANGUAGE sql IMMUTABLE AS $$ SELECT 32 $$;

CREATE OR REPLACE FUNCTION gpt2.map_unit(fn text, layer int, xs vector[], ys vector[]) RETURNS vector[]
LANGUAGE plpgsql STABLE PARALLEL SAFE COST 1000000 AS $$
BEGIN
    CASE fn
        WHEN 'block_in' THEN RETURN gpt2.block_in(layer, xs);
        WHEN 'block_out' THEN RETURN gpt2.block_out(layer, xs, ys);
    END CASE;
END
$$;

CREATE OR REPLACE FUNCTION gpt2.map_units(fn text, layer int, xs vector[], ys vector[])
RETURNS TABLE (g int, result vector[])
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    unit int := gpt2.parallel_unit();
BEGIN
    RETURN QUERY
    SELECT u.g, gpt2.map_unit(fn, layer, xs[u.g * unit + 1 : u.g * unit + unit], ys[u.g * unit + 1 : u.g * unit + unit])
    FROM gpt2.units u
    WHERE u.g <= (cardinality(xs) - 1) / unit;
END
$$;
ALTER FUNCTION gpt2.map_units(text, int, vector[], vector[]) SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION gpt2.map_units(text, int, vector[], vector[]) SET max_parallel_workers_per_gather = 2;
ALTER FUNCTION gpt2.map_units(text, int, vector[], vector[]) SET parallel_leader_participation = off;
ALTER FUNCTION gpt2.map_units(text, int, vector[], vector[]) SET parallel_setup_cost = 0;
ALTER FUNCTION gpt2.map_units(text, int, vector[], vector[]) SET parallel_tuple_cost = 0;
ALTER FUNCTION gpt2.map_units(text, int, vector[], vector[]) SET min_parallel_table_scan_size = 0;

CREATE OR REPLACE FUNCTION gpt2.parallel_map(fn text, layer int, xs vector[], ys vector[]) RETURNS vector[]
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF cardinality(xs) < gpt2.parallel_min() THEN
        RETURN gpt2.map_unit(fn, layer, xs, ys);
    END IF;
    RETURN ARRAY(SELECT u.v FROM gpt2.map_units(fn, layer, xs, ys) AS m, unnest(m.result) WITH ORDINALITY AS u(v, k)
                 ORDER BY m.g, u.k);
END
$$;
