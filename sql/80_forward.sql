-- Stage 8: the whole forward pass: embeddings, the blocks, the final norm, the logits.
--
-- NumPy twin: tests/reference.py forward(ids) (and prefill / decode_step for the cache).
--   x = wte[ids] + wpe[positions]                       [n_seq, n_embd]
--   x = block_0(x) ... block_{n_layer-1}(x)             [n_seq, n_embd]
--   logits = ln_f(x) @ wte^T                            [n_seq, n_vocab]  (tied LM head)
--
-- gpt2.transformer(ids, pos0) runs NEW tokens at positions pos0.. through the model,
-- appending to this connection's KV cache (gpt2.kv_reset() empties it first when pos0 = 0):
-- a prefill is transformer(prompt, 0), a decode step transformer(ARRAY[token], n_past).

CREATE OR REPLACE FUNCTION gpt2.embed(ids int[], pos0 int) RETURNS vector[]
LANGUAGE plpgsql STABLE AS $$
DECLARE
    xs vector[];
BEGIN
    SELECT array_agg(e.w::vector + p.w::vector ORDER BY u.t) INTO xs   -- [n_seq, n_embd]
    FROM unnest(ids) WITH ORDINALITY AS u(id, t)
    JOIN wte e ON e.token = u.id
    JOIN wpe p ON p.pos = pos0 + u.t - 1;
    IF coalesce(array_length(xs, 1), 0) <> coalesce(array_length(ids, 1), 0) THEN
        RAISE EXCEPTION 'token id or position out of range for model "%" (ids %, first position %)',
            (gpt2.current_model()).name, ids, pos0;
    END IF;
    RETURN xs;
END
$$;

-- The final hidden states (after ln_f) of the new positions.
CREATE OR REPLACE FUNCTION gpt2.transformer(ids int[], pos0 int) RETURNS vector[]
LANGUAGE plpgsql AS $$
DECLARE
    m gpt2.models := gpt2.current_model();
    xs vector[] := gpt2.embed(ids, pos0);
BEGIN
    IF pos0 = 0 THEN
        PERFORM gpt2.kv_reset();
    END IF;
    FOR layer IN 0 .. m.n_layer - 1 LOOP
        xs := gpt2.block(layer, xs, pos0);
    END LOOP;
    RETURN gpt2.ln('ln_f', 0, xs);
END
$$;

-- Next-token logits from one final hidden state: x . wte[token] for every token.
-- A plain SQL function, so PostgreSQL inlines it into the calling query: an
-- ORDER BY logit DESC LIMIT k there becomes a top-k heap over the LM head, with
-- nothing materialized (greedy decoding is LIMIT 1).
-- subtle: (SELECT x::wvec) is computed once; a bare x::wvec would convert x per row.
SET check_function_bodies = off;   -- wte is the selected model's table, found when called
CREATE OR REPLACE FUNCTION gpt2.logits(x vector) RETURNS TABLE (token int, logit float8)
LANGUAGE sql STABLE AS $$
    SELECT e.token, -(e.w <#> (SELECT x::wvec)) FROM wte e
$$;
RESET check_function_bodies;

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
