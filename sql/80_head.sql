-- Stage 8b: the LM head: from final hidden states to logits (tied to the embeddings).
--
-- NumPy twin: tests/reference.py forward(...) (its last line) and log_softmax(x).
--   logits = ln_f(x) @ wte^T      [n, n_embd] -> [n, n_vocab]
-- gpt2.head(xs) computes every logit of each final hidden state with the kernels of stage 4
-- (one pass over wte for up to 16 positions), as float8[] [n, n_vocab]: n_vocab (50,257) is
-- beyond pgvector's 16,000 dimensions. Sampling (stage 9), scoring (stage 11) and training
-- (stage 12) all take their logits from here.

-- All next-token logits of one or several final hidden states: [n, n_vocab] (one pass over
-- the LM head for all of them: gpt2.head_products_%G, stage 4). logits[i:i] is row i.
CREATE OR REPLACE FUNCTION gpt2.head(xs vector[]) RETURNS float8[]
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN CASE gpt2.kernel_width(cardinality(xs))
               WHEN 2 THEN CASE WHEN cardinality(xs) = 1 THEN ARRAY[gpt2.head_products_1(xs[1])]
                                ELSE gpt2.head_products_2(xs) END
               WHEN 4 THEN gpt2.head_products_4(xs)
               WHEN 8 THEN gpt2.head_products_8(xs)
               ELSE gpt2.head_products_16(xs) END;
END
$$;

-- A decode step pays the next two for every sequence, over all n_vocab logits: they walk the
-- array in PL/pgSQL loops, which cost half as much as unnest() and aggregates, or argmax by
-- ORDER BY ... LIMIT 1 (docs/performance.md, bench/bench_kernels.py).

-- log sum exp of the logits (the log of softmax's denominator), shifted by the maximum.
CREATE OR REPLACE FUNCTION gpt2.logsumexp(logits float8[]) RETURNS float8
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    m float8 := '-Infinity';
    s float8 := 0;
    l float8;
BEGIN
    FOREACH l IN ARRAY logits LOOP
        IF l > m THEN m := l; END IF;
    END LOOP;
    FOREACH l IN ARRAY logits LOOP
        s := s + exp(greatest(l - m, -700));         -- exp() raises an error on underflow
    END LOOP;
    RETURN m + ln(s);
END
$$;

-- The token of the largest logit, the lowest id on a tie (greedy decoding).
CREATE OR REPLACE FUNCTION gpt2.argmax(logits float8[]) RETURNS int
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    m float8 := '-Infinity';
    best int;
    i int := 0;
    l float8;
BEGIN
    FOREACH l IN ARRAY logits LOOP                   -- any shape: a row logits[i:i] too
        IF l > m OR best IS NULL THEN m := l; best := i; END IF;
        i := i + 1;
    END LOOP;
    RETURN best;
END
$$;


-- The next-token loss of final hidden states: sum over rows of -log softmax(logits)[target]
-- (targets: token ids, one per row), the head computed up to 16 rows at a time.
CREATE OR REPLACE FUNCTION gpt2.lm_loss(xs vector[], targets int[]) RETURNS float8
LANGUAGE plpgsql STABLE AS $$
DECLARE
    unit int := gpt2.parallel_unit();
    logits float8[];
    total float8 := 0;
BEGIN
    FOR start IN 1 .. cardinality(xs) BY unit LOOP
        logits := gpt2.head(xs[start:start + unit - 1]);
        total := total + (SELECT sum(gpt2.logsumexp(logits[i:i]) - logits[i][targets[start + i - 1] + 1])
                          FROM generate_series(1, array_length(logits, 1)) AS i);
    END LOOP;
    RETURN total;
END
$$;

-- Backward (training, stage 12): cross-entropy of next tokens through the tied LM head.
-- NumPy twin: tests/reference.py loss_and_grads (its LM-head lines).
--   loss     sum over rows of -log softmax(logits)[target] = logsumexp(logits) - logits[target]
--   dlogits  (softmax(logits) - onehot(target)) * scale        [n, n_vocab], scale = 1 / tokens
--   dx       dlogits @ wte: the kernels of stage 4 on wte's transpose (conv1d rows `wte^T`, one
--            per embedding dimension, chunked over the vocabulary)
--   dwte     dlogits^T @ x: for each token, n_embd products over positions (gpt2.products),
--            the LM head's share of wte's gradient (the embedding lookup adds its own, stage 8)
CREATE TYPE gpt2.lm_grad AS (
    loss float8,       -- the sum over rows (not scaled)
    dx   vector[],     -- [n] of [n_embd]
    dwte vector[]      -- [n_vocab] of [n_embd]
);

-- What gpt2.lm_rows gives back for up to 16 rows.
CREATE TYPE gpt2.lm_part AS (
    loss float8,       -- the sum over its rows
    dx   vector[],     -- [rows] of [n_embd]
    dl   real[]        -- [rows, n_vocab] dlogits
);

-- Up to 16 rows: their logits (one pass over wte), (softmax - onehot) * scale, and dx (the
-- kernels over wte^T, chunk by chunk). Read-only: it runs in parallel units.
CREATE OR REPLACE FUNCTION gpt2.lm_rows(xs vector[], targets int[], scale float8) RETURNS gpt2.lm_part
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    m gpt2.models := gpt2.current_model();
    unit int := cardinality(xs);
    width int := gpt2.chunk_dims(m.n_vocab, 'float32');            -- wte^T's chunks of the vocabulary
    logits float8[] := gpt2.head(xs);                              -- [unit, n_vocab]
    lrow float8[];                                                 -- [1, n_vocab] one row of them
    target int;
    v float8;
    mx float8;                                                     -- its largest logit
    z float8;                                                      -- its sum of exp(logit - mx)
    c int;
    ones vector[] := ARRAY(SELECT gpt2.fill(1, least(width, m.n_vocab - k * width)) FROM generate_series(0, (m.n_vocab - 1) / width) AS k);
    dl real[];                                                     -- [n_vocab] its row of dlogits
    chunks vector[] := '{}';                                       -- [n_chunks * unit] the rows' pieces, chunk-major
    part vector[];
    r gpt2.lm_part := ROW(0, NULL, '{}');
BEGIN
    FOR i IN 1 .. unit LOOP                                        -- each row: (softmax - onehot) * scale
        target := targets[i];
        lrow := logits[i:i];
        mx := '-Infinity';
        FOREACH v IN ARRAY lrow LOOP                               -- (a PL/pgSQL loop: half the time of max())
            IF v > mx THEN mx := v; END IF;
        END LOOP;
        -- one pass over the row for exp; sums and scaling are pgvector's, on its chunks
        -- subtle: below e^-40 a float32 is 0 next to the maximum's 1; made 0, not e^-87 (the
        --   smallest that casts): scaled by scale / z, that could underflow, and pgvector RAISES
        --   on a product that underflows to 0 (header of stage 3)
        dl := ARRAY(SELECT CASE WHEN l - mx < -40 THEN 0 ELSE exp(l - mx) END FROM unnest(lrow) AS l);
        z := 0;
        FOR c IN 0 .. (m.n_vocab - 1) / width LOOP
            chunks[c * unit + i] := dl[c * width + 1 : least((c + 1) * width, m.n_vocab)]::vector;
            z := z - (chunks[c * unit + i] <#> ones[c + 1]);
        END LOOP;
        r.loss := r.loss + mx + ln(z) - lrow[1][target + 1];       -- log sum exp - the target's logit
        dl := '{}';
        FOR c IN 0 .. (m.n_vocab - 1) / width LOOP                 -- (exp / z - onehot) * scale
            chunks[c * unit + i] := chunks[c * unit + i] * gpt2.fill(scale / z, vector_dims(chunks[c * unit + i]));
            dl := dl || chunks[c * unit + i]::real[];
        END LOOP;
        dl[target + 1] := dl[target + 1] - scale;
        c := target / width;
        chunks[c * unit + i] := dl[c * width + 1 : least((c + 1) * width, m.n_vocab)]::vector;
        r.dl := r.dl || ARRAY[dl];                                 -- (one more row of the 2-D array)
    END LOOP;
    FOR c IN 0 .. (m.n_vocab - 1) / width LOOP                     -- dx = dlogits @ wte, chunk by chunk
        part := gpt2.linear_chunk('wte^T', 0, c, chunks[c * unit + 1 : c * unit + unit], NULL);
        r.dx := CASE WHEN r.dx IS NULL THEN part ELSE gpt2.add(r.dx, part) END;
    END LOOP;
    RETURN r;
END
$$;

-- lm_rows of units u0 .. u0 + count - 1: unit g is rows 16 g + 1 .. 16 g + 16.
CREATE OR REPLACE FUNCTION gpt2.lm_units(xs vector[], targets int[], scale float8, u0 int, count int)
RETURNS TABLE (g int, r gpt2.lm_part)
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    unit int := gpt2.parallel_unit();
BEGIN
    RETURN QUERY
    SELECT u0 + u.g, gpt2.lm_rows(xs[(u0 + u.g) * unit + 1 : (u0 + u.g + 1) * unit],
                                  targets[(u0 + u.g) * unit + 1 : (u0 + u.g + 1) * unit], scale)
    FROM gpt2.units u
    WHERE u.g < count;
END
$$;

SELECT gpt2.run_in_units('gpt2.lm_units(vector[], int[], float8, int, int)');

-- The loss and gradients of every row: lm_rows in units of 16 rows (on both cores from 32
-- rows on), then dwte from all rows at once.
CREATE OR REPLACE FUNCTION gpt2.lm_backward(xs vector[], targets int[], scale float8) RETURNS gpt2.lm_grad
LANGUAGE plpgsql AS $$
DECLARE
    unit int := gpt2.parallel_unit();
    n_units int := (cardinality(xs) - 1) / unit + 1;
    dl real[] := '{}';                                             -- [n, n_vocab] every row's dlogits
    p record;
    r gpt2.lm_grad := ROW(0, '{}', NULL);
BEGIN
    IF cardinality(xs) < gpt2.parallel_min() THEN
        FOR g IN 0 .. n_units - 1 LOOP
            p := gpt2.lm_rows(xs[g * unit + 1 : g * unit + unit], targets[g * unit + 1 : g * unit + unit], scale);
            r.loss := r.loss + p.loss;
            r.dx := r.dx || p.dx;
            dl := dl || p.dl;
        END LOOP;
    ELSE
        FOR u0 IN 0 .. n_units - 1 BY gpt2.parallel_round() LOOP
            FOR p IN SELECT (u.r).* FROM gpt2.lm_units(xs, targets, scale, u0, least(gpt2.parallel_round(), n_units - u0)) AS u
                     ORDER BY u.g LOOP
                r.loss := r.loss + p.loss;
                r.dx := r.dx || p.dx;
                dl := dl || p.dl;
            END LOOP;
        END LOOP;
    END IF;
    -- dwte[v] = sum over rows of dlogits[row][v] * x[row]: products of columns over rows
    r.dwte := gpt2.products(gpt2.transpose(xs), gpt2.transpose(dl));
    RETURN r;
END
$$;
ALTER FUNCTION gpt2.lm_backward(vector[], int[], float8) SET plan_cache_mode = force_generic_plan;
