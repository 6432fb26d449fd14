-- Stage 11: the glass box: what the model sees and thinks, one query away.
--
-- NumPy twin: tests/reference.py attention_weights, logit_lens and score.
--   gpt2.attention(prompt)      every layer's and head's attention weights
--                               (layer, head, query_pos, key_pos, weight): softmax(q k^T / sqrt(d_head)),
--                               causal (key_pos <= query_pos), positions from 0
--   gpt2.logit_lens(prompt, k)  what each layer would predict (nostalgebraist's "logit lens"):
--                               top-k of softmax(ln_f(residual) @ wte^T) at every position, for layer
--                               0 (the embeddings) to n_layer (after the last block: the model's output)
--   gpt2.score(text, top)       each token's log-probability given <|endoftext|> and the tokens
--                               before it, its rank among all tokens, and the top alternatives
--   gpt2.perplexity(text)       exp(mean negative log-probability) of those tokens
-- Each takes the model's name (default: the default model).
--
-- Texts longer than the context window are scored as lm-evaluation-harness's
-- loglikelihood_rolling does: the first window predicts tokens 1..n_positions from
-- <|endoftext|> and the tokens before them; each later window predicts the next
-- n_positions tokens (fewer at the end) with the n_positions tokens before its last
-- prediction as context, so every token is predicted once, with as much context as fits.
--
-- These run the same stages as generation (stage 7's halves, stage 5's heads), on a
-- sequence of their own in the KV cache (gpt2.inspect_seq()), so they do not disturb a
-- generation in progress on the connection.

CREATE OR REPLACE FUNCTION gpt2.inspect_seq() RETURNS int LANGUAGE sql IMMUTABLE AS $$ SELECT -1 $$;

-- The tokens of a prompt to look inside: at most n_positions, <|endoftext|> for an empty one.
CREATE OR REPLACE FUNCTION gpt2.inspect_ids(prompt text, m gpt2.models) RETURNS int[]
LANGUAGE plpgsql STABLE AS $$
DECLARE
    ids int[] := coalesce(gpt2.tokenize(prompt), '{}');
BEGIN
    IF cardinality(ids) = 0 THEN
        RETURN ARRAY[gpt2.eos_id()];
    ELSIF cardinality(ids) > m.n_positions THEN
        RAISE EXCEPTION 'the prompt has % tokens; model "%" sees at most %', cardinality(ids), m.name, m.n_positions
            USING HINT = 'inspect a shorter text (gpt2.score and gpt2.perplexity take any length)';
    END IF;
    RETURN ids;
END
$$;

-- The attention weights of every head of one layer for queries at positions pos0.. (all of
-- them in the cache), the textbook way: scores, the row maximum, softmax. [n_head, n, pos+1].
CREATE OR REPLACE FUNCTION gpt2.attention_weights(layer int, seq int, pos0 int, qkv vector[])
RETURNS TABLE (head int, query_pos int, key_pos int, weight float8)
LANGUAGE plpgsql AS $$
DECLARE
    m gpt2.models := gpt2.current_model();
    dh int := m.n_embd / m.n_head;
BEGIN
    RETURN QUERY
    WITH q AS (                                         -- [n, n_head] the queries
        SELECT pos0 + u.t::int - 1 AS pos, h, subvector(u.x, h * dh + 1, dh) AS q
        FROM unnest(qkv) WITH ORDINALITY AS u(x, t), generate_series(0, m.n_head - 1) AS h
    ), s AS (                                           -- [n, n_head, pos+1] q.k / sqrt(d_head), causal
        SELECT q.h, q.pos, k.pos AS kpos, -(k.k <#> q.q) / sqrt(dh) AS s
        FROM q JOIN kv_k k ON k.seq = attention_weights.seq AND k.layer = attention_weights.layer
                          AND k.head = q.h AND k.pos <= q.pos
    ), e AS (                                           -- exp(s - max s) per query and head
        SELECT s.h, s.pos, s.kpos, exp(greatest(s.s - max(s.s) OVER w, -700)) AS e FROM s WINDOW w AS (PARTITION BY s.h, s.pos)
    )
    SELECT e.h, e.pos, e.kpos, e.e / sum(e.e) OVER (PARTITION BY e.h, e.pos) FROM e;
END
$$;

-- Run ids (positions 0..) through the model on the inspection sequence, keeping what was
-- asked for: trace_residual(layer, pos, x) the residual stream before block `layer` (and,
-- as layer n_layer, after the last block), trace_attention(layer, head, query_pos, key_pos, weight).
CREATE OR REPLACE FUNCTION gpt2.trace(ids int[], residuals boolean, attention boolean) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    m gpt2.models := gpt2.current_model();
    s int := gpt2.inspect_seq();
    seqs int[] := array_fill(s, ARRAY[cardinality(ids)]);
    positions int[] := ARRAY(SELECT generate_series(0, cardinality(ids) - 1));
    xs vector[] := gpt2.embed_at(ids, positions);
    qkv vector[];
BEGIN
    IF to_regclass('pg_temp.trace_residual') IS NULL THEN
        CREATE TEMPORARY TABLE trace_residual (layer int, pos int, x vector);
        CREATE TEMPORARY TABLE trace_attention (layer int, head int, query_pos int, key_pos int, weight float8);
    END IF;
    TRUNCATE trace_residual, trace_attention;
    PERFORM gpt2.kv_drop(ARRAY[s]);
    FOR layer IN 0 .. m.n_layer - 1 LOOP
        IF residuals THEN
            INSERT INTO trace_residual SELECT layer, u.t - 1, u.x FROM unnest(xs) WITH ORDINALITY AS u(x, t);
        END IF;
        qkv := gpt2.parallel_map('block_in', layer, xs, NULL);             -- the block, as gpt2.block runs it
        xs := gpt2.parallel_map('block_out', layer, xs, gpt2.mha(layer, seqs, positions, qkv));
        IF attention THEN                                                   -- (the keys are in the cache now)
            INSERT INTO trace_attention SELECT layer, w.* FROM gpt2.attention_weights(layer, s, 0, qkv) AS w;
        END IF;
        PERFORM gpt2.progress('layer', layer + 1, m.n_layer);
    END LOOP;
    IF residuals THEN
        INSERT INTO trace_residual SELECT m.n_layer, u.t - 1, u.x FROM unnest(xs) WITH ORDINALITY AS u(x, t);
    END IF;
    PERFORM gpt2.kv_drop(ARRAY[s]);
END
$$;

CREATE OR REPLACE FUNCTION gpt2.attention(prompt text, model text DEFAULT NULL)
RETURNS TABLE (layer int, head int, query_pos int, key_pos int, weight float8)
LANGUAGE plpgsql AS $$
DECLARE
    m gpt2.models := gpt2.use_model(model, true);
BEGIN
    PERFORM gpt2.trace(gpt2.inspect_ids(prompt, m), false, true);
    RETURN QUERY SELECT t.layer, t.head, t.query_pos, t.key_pos, t.weight FROM trace_attention t
                 ORDER BY t.layer, t.head, t.query_pos, t.key_pos;
END
$$;

-- Top-k of softmax(logits) of each row of [n, n_vocab] logits, rows numbered from pos0:
-- (pos, rank, token, logit, prob).
CREATE OR REPLACE FUNCTION gpt2.top_tokens(logits float8[], pos0 int, k int)
RETURNS TABLE (pos int, rank int, token int, logit float8, prob float8)
LANGUAGE sql IMMUTABLE AS $$
    SELECT pos0 + r.i - 1, t.rank::int, t.token, t.l, exp(t.l - gpt2.logsumexp(logits[r.i:r.i]))
    FROM generate_series(1, array_length(logits, 1)) AS r(i),
         LATERAL (SELECT (u.t - 1)::int AS token, u.l, row_number() OVER (ORDER BY u.l DESC, u.t) AS rank
                  FROM unnest(logits[r.i:r.i]) WITH ORDINALITY AS u(l, t) ORDER BY u.l DESC, u.t LIMIT k) AS t
$$;

CREATE OR REPLACE FUNCTION gpt2.logit_lens(prompt text, model text DEFAULT NULL, k int DEFAULT 5)
RETURNS TABLE (layer int, pos int, rank int, token int, text text, prob float8)
LANGUAGE plpgsql AS $$
DECLARE
    m gpt2.models := gpt2.use_model(model, true);
    unit int := gpt2.parallel_unit();
    xs vector[];
    ls int[];                                           -- the layer and position of each of xs
    ps int[];
    logits float8[];                                    -- [unit, n_vocab]
BEGIN
    IF k IS NULL OR k < 1 THEN
        RAISE EXCEPTION 'k must be >= 1, got %', k;
    END IF;
    PERFORM gpt2.trace(gpt2.inspect_ids(prompt, m), true, false);
    SELECT array_agg(t.layer ORDER BY t.layer, t.pos), array_agg(t.pos ORDER BY t.layer, t.pos) INTO ls, ps FROM trace_residual t;
    xs := ARRAY(SELECT y FROM unnest(ARRAY(SELECT t.layer FROM trace_residual t GROUP BY t.layer ORDER BY t.layer)) AS l(layer),
                     unnest(gpt2.ln('ln_f', 0, ARRAY(SELECT t.x FROM trace_residual t WHERE t.layer = l.layer
                                                     ORDER BY t.pos))) WITH ORDINALITY AS u(y, i)
                ORDER BY l.layer, u.i);                                   -- [n_layer + 1, n] ln_f(residual)
    FOR start IN 1 .. cardinality(xs) BY unit LOOP                         -- their logits, a few at a time
        logits := gpt2.head(xs[start:start + unit - 1]);
        RETURN QUERY
        SELECT ls[start + t.pos], ps[start + t.pos], t.rank, t.token, gpt2.decode_bytes(v.bytes), t.prob
        FROM gpt2.top_tokens(logits, 0, k) AS t
        LEFT JOIN gpt2.vocab v ON v.id = t.token
        ORDER BY t.pos, t.rank;
    END LOOP;
END
$$;

-- subtle: the text argument is called `input` (and the top alternatives' column
--   `alternatives`): PostgreSQL allows no argument of the same name as a result column.
CREATE OR REPLACE FUNCTION gpt2.score(input text, model text DEFAULT NULL, top int DEFAULT 0)
RETURNS TABLE (pos int, token int, text text, logprob float8, rank int, alternatives jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    m gpt2.models := gpt2.use_model(model, true);
    ids int[] := coalesce(gpt2.tokenize(input), '{}');
    n int := cardinality(ids);
    unit int := gpt2.parallel_unit();
    s int := gpt2.inspect_seq();
    done int := 0;                                      -- tokens predicted so far
    upto int;                                           -- the last token this window predicts (1-based)
    input int[];                                        -- the window's input tokens
    xs vector[];
    logits float8[];
BEGIN
    IF top IS NULL OR top < 0 OR top > 20 THEN
        RAISE EXCEPTION 'top must be between 0 and 20, got %', top;
    END IF;
    WHILE done < n LOOP                                 -- the windows (see the header)
        upto := least(n, done + m.n_positions);
        input := CASE WHEN done = 0 THEN gpt2.eos_id() || ids[1:upto - 1]
                      ELSE ids[upto - m.n_positions:upto - 1] END;
        PERFORM gpt2.kv_drop(ARRAY[s]);
        xs := gpt2.run(array_fill(s, ARRAY[cardinality(input)]), input,
                       ARRAY(SELECT generate_series(0, cardinality(input) - 1)));
        xs := xs[cardinality(input) - (upto - done) + 1:cardinality(input)];     -- the positions predicting done+1..upto
        FOR start IN 1 .. cardinality(xs) BY unit LOOP
            logits := gpt2.head(xs[start:start + unit - 1]);                  -- [unit, n_vocab]
            RETURN QUERY
            WITH r AS MATERIALIZED (                    -- [unit] each row once: target logit, log sum exp
                SELECT done + start + r.i - 1 AS pos, ids[done + start + r.i - 1] AS token,
                       logits[r.i:r.i] AS row, gpt2.logsumexp(logits[r.i:r.i]) AS lse
                FROM generate_series(1, array_length(logits, 1)) AS r(i)
            )
            SELECT (r.pos - 1)::int, r.token, gpt2.decode_bytes(v.bytes),
                   r.row[1][r.token + 1] - r.lse,
                   (SELECT count(*)::int + 1 FROM unnest(r.row) AS x WHERE x > r.row[1][r.token + 1]),
                   CASE WHEN top > 0 THEN gpt2.top_logprobs(r.row, top, r.lse) END
            FROM r LEFT JOIN gpt2.vocab v ON v.id = r.token
            ORDER BY r.pos;
        END LOOP;
        done := upto;
    END LOOP;
    PERFORM gpt2.kv_drop(ARRAY[s]);
END
$$;

CREATE OR REPLACE FUNCTION gpt2.perplexity(text text, model text DEFAULT NULL) RETURNS float8
LANGUAGE sql AS $$
    SELECT exp(-avg(s.logprob)) FROM gpt2.score(text, model) AS s
$$;
