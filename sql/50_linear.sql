-- Stage 4: the linear (Conv1D) layers, y = x @ W + b (and the LM head, x @ wte^T).
--
-- NumPy twin: tests/reference.py linear(x, w, b) (and gelu(linear(...)) for mlp.c_fc).
-- Input  xs: vector[] [n_seq] of [n_in];  weights: conv1d rows of `tensor`, `layer`.
-- Output ys: vector[] [n_seq] of [n_out].
--
-- y[t][col] = act(b[col] + x[t] . W[:, col]): one pgvector inner product per position and
-- output column (conv1d holds one row per column), collected into a vector in column
-- order. The time goes into those products; two kernels feed them:
--   gpt2.linear_1     one position (a decode step): ARRAY(SELECT ...) over the rows, read
--                     through the primary key so they arrive in column order;
--   gpt2.linear_%G    many positions (a prefill, a batch): every weight row is read once per
--                     group of %G positions and multiplied with all of them in one row of the
--                     executor (the query is unrolled %G times: gpt2.unroll, stage 0), so the
--                     row overhead is shared by %G products. %G is 2, 4, 8 or 16, the smallest
--                     that holds the positions (gpt2.kernel_width): an unrolled product costs
--                     time even when its position is empty (NULL).
-- act is 'gelu' for mlp.c_fc (gpt2.activation, stage 3b), applied to each number as it is made: a pass of
-- its own over the vectors would cost twice as much (unnest, then rebuild).
-- What a product costs in each kernel: docs/performance.md (bench/bench_kernels.py).
--
-- subtle: the products are computed in a subquery fenced with OFFSET 0 and used from
--   above: an expression like gelu(b - (w <#> x)) would inline gelu's body, which names
--   its argument three times, and compute the product three times.
-- subtle: inputs wider than a row holds (mlp.c_proj with float32 weights) arrive in chunks
--   of gpt2.chunk_dims; each chunk gives partial sums over all columns (b on chunk 0, 0 on
--   the others), added up, and only then does act apply (GELU of a partial sum is wrong).
-- subtle: <#> is the NEGATIVE inner product, hence b - (w <#> x).

CREATE OR REPLACE FUNCTION gpt2.linear_1(tensor text, layer int, chunk int, x vector, act text) RETURNS vector
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    RETURN ARRAY(SELECT gpt2.activation(act, p.b - p.p)
                 FROM (SELECT c.col, c.b, c.w <#> q.x AS p
                       FROM (SELECT x::wvec AS x OFFSET 0) AS q,             -- cast once, not once per row
                            conv1d c
                       WHERE c.tensor = linear_1.tensor AND c.layer = linear_1.layer AND c.chunk = linear_1.chunk
                       ORDER BY c.col OFFSET 0) AS p                         -- [n_out] products, in column order
                 ORDER BY p.col)::vector;
END
$$;

CREATE OR REPLACE FUNCTION gpt2.kernel_width(n int) RETURNS int LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN n <= 2 THEN 2 WHEN n <= 4 THEN 4 WHEN n <= 8 THEN 8 ELSE 16 END
$$;

DO $do$ DECLARE g int; BEGIN FOREACH g IN ARRAY ARRAY[2, 4, 8, 16] LOOP EXECUTE gpt2.unroll($template$
CREATE OR REPLACE FUNCTION gpt2.linear_%G(tensor text, layer int, chunk int, xs vector[], act text) RETURNS vector[]
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    ys vector[];
BEGIN
    WITH x AS MATERIALIZED (                        -- [n_seq / %G, %G] the positions in groups (NULL past the end)
        SELECT g, {{xs[g * %G + @]::wvec AS x@}} FROM generate_series(0, (cardinality(xs) - 1) / %G) AS g
    )
    SELECT array_agg(u.y ORDER BY x.g, u.k) INTO ys
    FROM x,
    LATERAL (SELECT {{array_agg(gpt2.activation(act, p.b - p.p@) ORDER BY p.col) AS y@}}   -- [%G, n_out]
             FROM (SELECT c.col, c.b, {{c.w <#> x.x@ AS p@}}                               -- one pass over the rows
                   FROM conv1d c
                   WHERE c.tensor = linear_%G.tensor AND c.layer = linear_%G.layer AND c.chunk = linear_%G.chunk
                   ORDER BY c.col OFFSET 0) AS p) AS a,
    LATERAL unnest(ARRAY[{{CASE WHEN x.x@ IS NOT NULL THEN a.y@::vector END}}]) WITH ORDINALITY AS u(y, k)
    WHERE u.y IS NOT NULL;
    RETURN ys;
END
$$
$template$, g); END LOOP; END $do$;

-- One input chunk of every position through the kernel that fits their number.
CREATE OR REPLACE FUNCTION gpt2.linear_chunk(tensor text, layer int, chunk int, xs vector[], act text) RETURNS vector[]
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    RETURN CASE gpt2.kernel_width(cardinality(xs))
               WHEN 2 THEN CASE WHEN cardinality(xs) = 1 THEN ARRAY[gpt2.linear_1(tensor, layer, chunk, xs[1], act)]
                                ELSE gpt2.linear_2(tensor, layer, chunk, xs, act) END
               WHEN 4 THEN gpt2.linear_4(tensor, layer, chunk, xs, act)
               WHEN 8 THEN gpt2.linear_8(tensor, layer, chunk, xs, act)
               ELSE gpt2.linear_16(tensor, layer, chunk, xs, act) END;
END
$$;

CREATE OR REPLACE FUNCTION gpt2.linear(tensor text, layer int, xs vector[], act text DEFAULT NULL) RETURNS vector[]
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    n_in int := vector_dims(xs[1]);
    width int := gpt2.chunk_dims(n_in, (gpt2.current_model()).dtype);
    chunk_act text := CASE WHEN width = n_in THEN act END;       -- several chunks: act after their sum
    acc vector[];
    part vector[];
BEGIN
    FOR chunk IN 0 .. (n_in - 1) / width LOOP
        IF width = n_in THEN
            part := xs;
        ELSE                                       -- this chunk's slice of every input
            part := ARRAY(SELECT subvector(x, chunk * width + 1, least(width, n_in - chunk * width))
                          FROM unnest(xs) WITH ORDINALITY AS u(x, t) ORDER BY t);
        END IF;
        part := gpt2.linear_chunk(tensor, layer, chunk, part, chunk_act);
        acc := CASE WHEN chunk = 0 THEN part
                    ELSE ARRAY(SELECT a + p FROM unnest(acc, part) WITH ORDINALITY AS u(a, p, t) ORDER BY t) END;
    END LOOP;
    RETURN CASE WHEN width = n_in THEN acc ELSE gpt2.activation(act, acc) END;
END
$$;

-- The LM head, x . wte[token] for every token (tied to the embeddings): the same two
-- kernels over wte, returning the logits as float8[] (n_vocab is beyond pgvector's 16000
-- dimensions). head_products_1(x) -> [n_vocab]; head_products_%G(xs) -> [n, n_vocab], %G as above.
CREATE OR REPLACE FUNCTION gpt2.head_products_1(x vector) RETURNS float8[]
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    RETURN ARRAY(SELECT -(e.w <#> q.x)
                 FROM (SELECT x::wvec AS x OFFSET 0) AS q,       -- cast once, not once per row
                      wte e
                 ORDER BY e.token);
END
$$;

DO $do$ DECLARE g int; BEGIN FOREACH g IN ARRAY ARRAY[2, 4, 8, 16] LOOP EXECUTE gpt2.unroll($template$
CREATE OR REPLACE FUNCTION gpt2.head_products_%G(xs vector[]) RETURNS float8[]
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    ys float8[];
BEGIN
    WITH x AS MATERIALIZED (                        -- [n / %G, %G] the positions in groups (NULL past the end)
        SELECT g, {{xs[g * %G + @]::wvec AS x@}} FROM generate_series(0, (cardinality(xs) - 1) / %G) AS g
    )
    SELECT array_agg(u.y ORDER BY x.g, u.k) INTO ys
    FROM x,
    LATERAL (SELECT {{array_agg(-(e.w <#> x.x@) ORDER BY e.token) AS y@}} FROM wte e) AS p,   -- one pass over wte
    LATERAL (VALUES {{(@, p.y@)}}) AS u(k, y)
    WHERE x.g * %G + u.k <= cardinality(xs);
    RETURN ys;
END
$$
$template$, g); END LOOP; END $do$;

-- subtle: the arguments are arrays of thousands of floats; a custom plan would inline them
--   as constants and be planned again on every call (70 ms for gpt2.attend_16): plan once.
-- subtle: the rows must come through the primary key in column order (the aggregates keep
--   that order); the planner would rather sort 1.5 kB rows after a bitmap scan.
DO $do$ DECLARE f text; BEGIN
    FOREACH f IN ARRAY ARRAY['gpt2.linear_1(text, int, int, vector, text)', 'gpt2.linear(text, int, vector[], text)',
                             'gpt2.head_products_1(vector)']
                       || ARRAY(SELECT format('gpt2.linear_%s(text, int, int, vector[], text)', g)
                                FROM unnest(ARRAY[2, 4, 8, 16]) AS g)
                       || ARRAY(SELECT format('gpt2.head_products_%s(vector[])', g) FROM unnest(ARRAY[2, 4, 8, 16]) AS g) LOOP
        EXECUTE format('ALTER FUNCTION %s SET plan_cache_mode = force_generic_plan', f);
        EXECUTE format('ALTER FUNCTION %s SET enable_bitmapscan = off', f);
        EXECUTE format('ALTER FUNCTION %s SET enable_sort = off', f);
    END LOOP;
END $do$;

-- Backward (training, stage 12). NumPy twin: tests/reference.py linear_backward(dy, x, w).
--   dx = dy @ W^T       [n, n_out] -> [n, n_in]: the kernels above, on W's transpose: rows
--                       `tensor^T` of conv1d, one per INPUT i (W[i, :], chunked over outputs),
--                       made by gpt2.prepare_backward (stage 12) for a model that trains
--   dW = x^T @ dy       [n_in, n_out]: dW[i][o] = sum over positions t of x[t][i] dy[t][o],
--                       one inner product of two vectors over positions, x and dy transposed
--                       (gpt2.transpose), for every (i, o) pair (gpt2.products)
--   db = sum over positions of dy
-- dW comes back by OUTPUT column, dW[:, o] (the layout of conv1d's rows).

-- [n, d] -> [d] of [n]: the columns of a 2-D real[] as vectors (rows wider than a vector can
-- be, like a row of logits, included).
CREATE OR REPLACE FUNCTION gpt2.transpose(a real[]) RETURNS vector[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    -- subtle: subscripts of a 2-D real[] (fixed-size elements, no NULLs) cost the same wherever
    --   they land; unnest + array_agg would sort every number (about 4x slower)
    SELECT ARRAY(SELECT ARRAY(SELECT a[t][j] FROM generate_series(1, array_length(a, 1)) AS t)::vector
                 FROM generate_series(1, array_length(a, 2)) AS j)
$$;

-- [n] of [d] -> [d] of [n].
--   gpt2.transpose(ARRAY['[1,2,3]', '[4,5,6]']::vector[]) = {'[1,4]', '[2,5]', '[3,6]'}
CREATE OR REPLACE FUNCTION gpt2.transpose(xs vector[]) RETURNS vector[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT gpt2.transpose(ARRAY(SELECT u.x::real[] FROM unnest(xs) WITH ORDINALITY AS u(x, t) ORDER BY u.t))
$$;

DO $do$ BEGIN EXECUTE gpt2.unroll($template$
-- [|b|] of [|a|]: row j holds a[i] . b[j] for every i (b @ a^T), %G rows of b per pass over a.
CREATE OR REPLACE FUNCTION gpt2.products(a vector[], b vector[]) RETURNS vector[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    ys vector[];
BEGIN
    WITH x AS MATERIALIZED (                        -- [|b| / %G, %G] b in groups (NULL past the end)
        SELECT g, {{b[g * %G + @] AS b@}} FROM generate_series(0, (cardinality(b) - 1) / %G) AS g
    )
    SELECT array_agg(u.y ORDER BY x.g, u.k) INTO ys
    FROM x,
    LATERAL (SELECT {{array_agg(-p.p@ ORDER BY p.i) AS y@}}
             FROM (SELECT r.i, {{r.a <#> x.b@ AS p@}} FROM unnest(a) WITH ORDINALITY AS r(a, i) OFFSET 0) AS p) AS p,
    LATERAL unnest(ARRAY[{{CASE WHEN x.b@ IS NOT NULL THEN p.y@::vector END}}]) WITH ORDINALITY AS u(y, k)
    WHERE u.y IS NOT NULL;
    RETURN ys;
END
$$
$template$, 16); END $do$;

CREATE TYPE gpt2.linear_grad AS (
    dx vector[],     -- [n] of [n_in]
    dw vector[],     -- [n_out] of [n_in]: dW[:, o]
    db vector        -- [n_out]
);

CREATE OR REPLACE FUNCTION gpt2.linear_backward(tensor text, layer int, xs vector[], dys vector[]) RETURNS gpt2.linear_grad
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    r gpt2.linear_grad;
BEGIN
    r.dx := gpt2.linear(tensor || '^T', layer, dys);
    r.dw := gpt2.products(gpt2.transpose(xs), gpt2.transpose(dys));
    r.db := (SELECT sum(d) FROM unnest(dys) AS d);
    RETURN r;
END
$$;

ALTER FUNCTION gpt2.products(vector[], vector[]) SET plan_cache_mode = force_generic_plan;
