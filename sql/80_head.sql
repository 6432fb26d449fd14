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
-- array in PL/pgSQL loops, which cost less than unnest() and aggregates (GPT-2's 50,257
-- logits, bench/bench_kernels.py: 7.8 ms instead of 15.7 for logsumexp, 5.7 ms instead of
-- 9.0 for argmax by ORDER BY ... LIMIT 1).

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

