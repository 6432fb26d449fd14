-- Stage 4: the linear (Conv1D) layers, y = x @ W + b.
--
-- NumPy twin: tests/reference.py linear(x, w, b).
-- Input  xs: vector[] [n_seq] of [n_in];  weights: conv1d rows of `tensor`, `layer`.
-- Output ys: vector[] [n_seq] of [n_out].
--
-- One pgvector inner product per (position, output column, input chunk): the weight
-- table is read once for all positions, which is what makes a 64-token prefill cheap.
--
-- subtle: the inputs are cast to the weights' type (wvec: vector or halfvec) ONCE, in
--   a MATERIALIZED CTE; computed per row they would be converted 50,000 times.
-- subtle: the weights are read through the primary key (tensor, layer, chunk, col), so
--   they arrive in column order and array_agg(... ORDER BY col) sorts nothing. The
--   planner prefers a bitmap scan + sort of the 1.5 KB rows, 1.5x slower here (measured),
--   hence enable_bitmapscan/enable_sort = off on this function alone.
-- subtle: inputs wider than n_embd (mlp.c_proj) arrive as chunks of n_embd; each chunk
--   gives a partial y over all columns and the partial vectors are summed. b is 0 past
--   chunk 0.

CREATE OR REPLACE FUNCTION gpt2.linear(tensor text, layer int, xs vector[]) RETURNS vector[]
LANGUAGE plpgsql STABLE AS $$
DECLARE
    width int := (SELECT n_embd FROM gpt2.current_model());
    ys vector[];
BEGIN
    WITH x AS MATERIALIZED (                          -- [n_seq, n_chunks] pieces of the input, as wvec
        SELECT u.t, k.chunk,
               subvector(u.x, k.chunk * width + 1, least(width, vector_dims(u.x) - k.chunk * width))::wvec AS xc
        FROM unnest(xs) WITH ORDINALITY AS u(x, t),
             generate_series(0, (vector_dims(xs[1]) - 1) / width) AS k(chunk)
    ), y AS (                                          -- [n_seq, n_chunks, n_out] x_chunk @ W_chunk (+ b)
        SELECT x.t, (SELECT array_agg(c.b - (c.w <#> x.xc) ORDER BY c.col) FROM conv1d c
                     WHERE c.tensor = linear.tensor AND c.layer = linear.layer AND c.chunk = x.chunk)::vector AS y
        FROM x
    ), rows AS (                                       -- [n_seq, n_out] the chunks summed
        SELECT y.t, sum(y.y) AS y FROM y GROUP BY y.t
    )
    SELECT array_agg(rows.y ORDER BY rows.t) INTO ys FROM rows;
    RETURN ys;
END
$$;

ALTER FUNCTION gpt2.linear(text, int, vector[]) SET enable_bitmapscan = off;
ALTER FUNCTION gpt2.linear(text, int, vector[]) SET enable_sort = off;
