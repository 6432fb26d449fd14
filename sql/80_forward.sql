-- Stage 8: the whole forward pass: embeddings, the blocks, the final norm, the logits.
--
-- NumPy twin: tests/reference.py forward(ids) (and prefill / decode_step for the cache).
--   x = wte[ids] + wpe[positions]                       [n_seq, n_embd]
--   x = block_0(x) ... block_{n_layer-1}(x)             [n_seq, n_embd]
--   logits = ln_f(x) @ wte^T                            [n_seq, n_vocab]  (tied LM head)
--
-- gpt2.run(seqs, ids, positions) runs NEW tokens through the model: token ids[i] of
-- sequence seqs[i] at position positions[i], appending to this connection's KV cache
-- (sorted by sequence, then position; positions consecutive within a sequence).
-- gpt2.transformer(ids, pos0) is the one-sequence form (sequence 0, positions pos0..; the
-- cache is emptied first when pos0 = 0): a prefill is transformer(prompt, 0), a decode
-- step transformer(ARRAY[token], n_past).

CREATE OR REPLACE FUNCTION gpt2.embed_at(ids int[], positions int[]) RETURNS vector[]
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    m gpt2.models := gpt2.current_model();   -- first: it puts the model's tables on the search path
    xs vector[];
BEGIN
    SELECT array_agg(e.w::vector + p.w::vector ORDER BY u.t) INTO xs   -- [n_seq, n_embd]
    FROM unnest(ids, positions) WITH ORDINALITY AS u(id, pos, t)
    JOIN wte e ON e.token = u.id
    JOIN wpe p ON p.pos = u.pos;
    IF coalesce(array_length(xs, 1), 0) <> coalesce(array_length(ids, 1), 0) THEN
        RAISE EXCEPTION 'token id or position out of range for model "%" (ids %, positions %)',
            m.name, ids, positions;
    END IF;
    RETURN xs;
END
$$;

CREATE OR REPLACE FUNCTION gpt2.embed(ids int[], pos0 int) RETURNS vector[]
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT gpt2.embed_at(ids, ARRAY(SELECT pos0 + i - 1 FROM generate_series(1, cardinality(ids)) AS i))
$$;

-- The final hidden states (after ln_f) of the new positions. The blocks as gpt2.block runs
-- them, but each block's second half and the next one's first half in one parallel map.
CREATE OR REPLACE FUNCTION gpt2.run(seqs int[], ids int[], positions int[]) RETURNS vector[]
LANGUAGE plpgsql AS $$
DECLARE
    m gpt2.models := gpt2.current_model();
    xs vector[] := gpt2.embed_at(ids, positions);                  -- [n, n_embd]
    qkv vector[] := gpt2.parallel_map('block_in', 0, xs, NULL);    -- [n, 3*n_embd]
    pairs vector[];                                                -- [2n] x, qkv, x, qkv, ...
BEGIN
    FOR layer IN 0 .. m.n_layer - 1 LOOP
        IF layer < m.n_layer - 1 THEN                              -- block_out(layer), block_in(layer + 1)
            pairs := gpt2.parallel_map('block_out_in', layer, xs, gpt2.mha(layer, seqs, positions, qkv));
            xs := ARRAY(SELECT pairs[2 * i - 1] FROM generate_series(1, cardinality(xs)) AS i);
            qkv := ARRAY(SELECT pairs[2 * i] FROM generate_series(1, cardinality(xs)) AS i);
        ELSE
            xs := gpt2.parallel_map('block_out', layer, xs, gpt2.mha(layer, seqs, positions, qkv));
        END IF;
        PERFORM gpt2.progress('layer', layer + 1, m.n_layer);
    END LOOP;
    RETURN gpt2.ln('ln_f', 0, xs);
END
$$;

CREATE OR REPLACE FUNCTION gpt2.transformer(ids int[], pos0 int) RETURNS vector[]
LANGUAGE plpgsql AS $$
BEGIN
    IF pos0 = 0 THEN
        PERFORM gpt2.kv_drop(ARRAY[0]);
    END IF;
    RETURN gpt2.run(array_fill(0, ARRAY[cardinality(ids)]), ids,
                    ARRAY(SELECT pos0 + i - 1 FROM generate_series(1, cardinality(ids)) AS i));
END
$$;

-- Progress of long work, for clients that ask for it (the CLI's progress bars): with
-- SET gpt2sql.progress = on, a NOTICE 'gpt2sql progress: <what> <done>/<total>'.
CREATE OR REPLACE FUNCTION gpt2.progress(what text, done int, total int) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('gpt2sql.progress', true) = 'on' THEN
        RAISE NOTICE 'gpt2sql progress: % %/%', what, done, total;
    END IF;
END
$$;

-- Logits at every position of a token sequence, from scratch (resets the KV cache).
-- Made for inspection and tests: [n_seq, n_vocab] rows.
CREATE OR REPLACE FUNCTION gpt2.forward(ids int[], model text DEFAULT NULL)
RETURNS TABLE (pos int, token int, logit float8)
LANGUAGE plpgsql AS $$
DECLARE
    xs vector[];
BEGIN
    PERFORM gpt2.use_model(model, true);
    xs := gpt2.transformer(ids, 0);
    RETURN QUERY SELECT (u.t - 1)::int, l.token, l.logit
                 FROM unnest(xs) WITH ORDINALITY AS u(x, t), gpt2.logits(u.x) AS l;
END
$$;

ALTER FUNCTION gpt2.embed_at(int[], int[]) SET plan_cache_mode = force_generic_plan;
