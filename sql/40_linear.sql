-- Stage 4: the linear (Conv1D) layers, y = x @ W + b.
--
-- NumPy twin: tests/reference.py linear(x, w, b).
-- Input  xs: vector[] [n_seq] of [n_in];  weights: conv1d rows of `tensor`, `layer`.
-- Output ys: vector[] [n_seq] of [n_out].
--
-- y[t][col] = x[t] . W[:, col] + b[col]: one pgvector inner product per position and output
-- column (conv1d holds one row per column), collected into a vector in column order, then
-- the bias vector added. The time goes into those products; two kernels feed them:
--   gpt2.products_1   one position (a decode step): ARRAY(SELECT w <#> x ...) over the rows,
--                     read through the primary key so they arrive in column order;
--   gpt2.products_%G  many positions (a prefill, a batch): every weight row is read once per
--                     group of %G positions and multiplied with all of them in one row of
--                     the executor (the query is unrolled %G times: gpt2.unroll, stage 0).
--                     Row overhead is shared by %G products, and the weights are converted
--                     to float32 once per call: pgvector's float32 kernel is faster than its
--                     float16 one once the rows are in memory.
-- Measured on GPT-2 124M's c_fc (768 x 3072, float16 weights), per product: 0.35 us for
-- products_1, 0.17 us for products_16 (the float32 inner product itself is ~0.09 us).
--
-- subtle: inputs wider than a row holds (mlp.c_proj with float32 weights) arrive in chunks
--   of gpt2.chunk_dims; each chunk gives partial products over all columns, summed.
-- subtle: <#> is the NEGATIVE inner product, hence b - products.

CREATE OR REPLACE FUNCTION gpt2.products_1(tensor text, layer int, chunk int, x vector) RETURNS vector
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    RETURN ARRAY(SELECT c.w <#> q.x
                 FROM (SELECT x::wvec AS x OFFSET 0) AS q,       -- cast once, not once per row
                      conv1d c
                 WHERE c.tensor = products_1.tensor AND c.layer = products_1.layer AND c.chunk = products_1.chunk
                 ORDER BY c.col)::vector;
END
$$;

DO $do$ BEGIN EXECUTE gpt2.unroll($template$
CREATE OR REPLACE FUNCTION gpt2.products_%G(tensor text, layer int, chunk int, xs vector[]) RETURNS vector[]
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    ys vector[];
BEGIN
    WITH w AS (                                     -- [n_out, n_in] this chunk's weights, in column order
        SELECT c.col, c.w FROM conv1d c
        WHERE c.tensor = products_%G.tensor AND c.layer = products_%G.layer AND c.chunk = products_%G.chunk
    ), x AS MATERIALIZED (                          -- [n_seq / %G, %G] the positions in groups (NULL past the end)
        SELECT g, {{xs[g * %G + @]::wvec AS x@}} FROM generate_series(0, (cardinality(xs) - 1) / %G) AS g
    )
    SELECT array_agg(u.y ORDER BY x.g, u.k) INTO ys
    FROM x,
    LATERAL (SELECT {{array_agg(w.w <#> x.x@ ORDER BY w.col) AS y@}} FROM w) AS p,   -- [%G, n_out] one pass over w
    LATERAL unnest(ARRAY[{{CASE WHEN x.x@ IS NOT NULL THEN p.y@::vector END}}]) WITH ORDINALITY AS u(y, k)
    WHERE u.y IS NOT NULL;
    RETURN ys;
END
$$
$template$, 16); END $do$;

ALTER FUNCTION gpt2.products_16(text, int, int, vector[]) SET enable_bitmapscan = off;
ALTER FUNCTION gpt2.products_16(text, int, int, vector[]) SET enable_sort = off;

CREATE OR REPLACE FUNCTION gpt2.linear(tensor text, layer int, xs vector[]) RETURNS vector[]
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    m gpt2.models := gpt2.current_model();
    width int := gpt2.chunk_dims(vector_dims(xs[1]), m.dtype);
    b vector := (SELECT p.b FROM bias p WHERE p.tensor = linear.tensor AND p.layer = linear.layer);
    acc vector[];
    part vector[];
BEGIN
    FOR chunk IN 0 .. (vector_dims(xs[1]) - 1) / width LOOP
        IF chunk = 0 AND width = vector_dims(xs[1]) THEN
            part := xs;
        ELSE                                       -- this chunk's slice of every input
            part := ARRAY(SELECT subvector(x, chunk * width + 1, least(width, vector_dims(x) - chunk * width))
                          FROM unnest(xs) WITH ORDINALITY AS u(x, t) ORDER BY t);
        END IF;
        IF cardinality(xs) = 1 THEN
            part := ARRAY[gpt2.products_1(tensor, layer, chunk, part[1])];
        ELSE
            part := gpt2.products_16(tensor, layer, chunk, part);
        END IF;
        acc := CASE WHEN chunk = 0 THEN part
                    ELSE ARRAY(SELECT a + p FROM unnest(acc, part) WITH ORDINALITY AS u(a, p, t) ORDER BY t) END;
    END LOOP;
    RETURN ARRAY(SELECT b - a FROM unnest(acc) WITH ORDINALITY AS u(a, t) ORDER BY t);   -- <#> is negative
END
$$;

ALTER FUNCTION gpt2.products_1(text, int, int, vector) SET enable_bitmapscan = off;
ALTER FUNCTION gpt2.products_1(text, int, int, vector) SET enable_sort = off;

-- subtle: the arguments are arrays of thousands of floats; a custom plan would inline them
-- as constants and be planned again on every call (70 ms for gpt2.attend_16): plan once.
ALTER FUNCTION gpt2.products_1(text, int, int, vector) SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION gpt2.products_16(text, int, int, vector[]) SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION gpt2.linear(text, int, vector[]) SET plan_cache_mode = force_generic_plan;

-- The LM head, x . wte[token] for every token (tied to the embeddings): the same two
-- kernels over wte, returning the logits as float8[] (n_vocab is beyond pgvector's 16000
-- dimensions). head_products_1(x) -> [n_vocab]; head_products_%G(xs) -> [n, n_vocab].
CREATE OR REPLACE FUNCTION gpt2.head_products_1(x vector) RETURNS float8[]
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    RETURN ARRAY(SELECT -(e.w <#> q.x)
                 FROM (SELECT x::wvec AS x OFFSET 0) AS q,       -- cast once, not once per row
                      wte e
                 ORDER BY e.token);
END
$$;

DO $do$ BEGIN EXECUTE gpt2.unroll($template$
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
$template$, 16); END $do$;

ALTER FUNCTION gpt2.head_products_1(vector) SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION gpt2.head_products_16(vector[]) SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION gpt2.head_products_1(vector) SET enable_bitmapscan = off;
ALTER FUNCTION gpt2.head_products_16(vector[]) SET enable_bitmapscan = off;
ALTER FUNCTION gpt2.head_products_1(vector) SET enable_sort = off;
ALTER FUNCTION gpt2.head_products_16(vector[]) SET enable_sort = off;
