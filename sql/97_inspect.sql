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
-- These run the layer loop of generation (gpt2.run_layers, stage 8) on sequences of their
-- own in the KV cache (gpt2.scratch_seqs), so a generation in progress on the connection
-- goes on undisturbed.

-- The tokens of a prompt to look inside: at most n_positions, <|endoftext|> for an empty one.
CREATE OR REPLACE FUNCTION gpt2.inspect_ids(prompt text, m gpt2.models) RETURNS int[]
LANGUAGE plpgsql STABLE AS $$
DECLARE
    ids int[];
BEGIN
    IF prompt IS NULL THEN
        RAISE EXCEPTION 'the prompt is NULL';
    END IF;
    ids := coalesce(gpt2.tokenize(prompt), '{}');
    IF cardinality(ids) = 0 THEN
        RETURN ARRAY[gpt2.eos_id()];
    ELSIF cardinality(ids) > m.n_positions THEN
        RAISE EXCEPTION 'the prompt has % tokens; model "%" sees at most %', cardinality(ids), m.name, m.n_positions
            USING HINT = 'inspect a shorter text (gpt2.score and gpt2.perplexity take any length)';
    END IF;
    RETURN ids;
END
$$;

-- Run ids (positions 0..) through the model on a sequence of its own, recording every
-- activation (the table tape, stage 8) unless `record` is false, with the edits of run_edit
-- if `edited` (stage 11b); returns the final hidden states ln_f(x).
CREATE OR REPLACE FUNCTION gpt2.trace(ids int[], record boolean DEFAULT true, edited boolean DEFAULT false)
RETURNS vector[]
LANGUAGE plpgsql AS $$
DECLARE
    s record := gpt2.scratch_seqs(ARRAY[cardinality(ids)]);
    xs vector[];
BEGIN
    PERFORM gpt2.kv_drop(s.seqs[1:1]);
    xs := gpt2.run_layers(s.seqs, s.positions, gpt2.embed_at(ids, s.positions), 0, record, edited);
    PERFORM gpt2.kv_drop(s.seqs[1:1]);
    RETURN xs;
END
$$;

-- The attention weights of every head of one layer, from its qkv [n] of [3*n_embd] (positions
-- 0 .. n-1), the textbook way: scores, the row maximum, softmax.
CREATE OR REPLACE FUNCTION gpt2.attention_weights(qkv vector[])
RETURNS TABLE (head int, query_pos int, key_pos int, weight float8)
LANGUAGE plpgsql AS $$
DECLARE
    m gpt2.models := gpt2.current_model();
    dh int := m.n_embd / m.n_head;
BEGIN
    RETURN QUERY
    WITH qk AS MATERIALIZED (                           -- [n, n_head] queries and keys
        SELECT u.t::int - 1 AS pos, h, subvector(u.x, h * dh + 1, dh) AS q, subvector(u.x, m.n_embd + h * dh + 1, dh) AS k
        FROM unnest(qkv) WITH ORDINALITY AS u(x, t), generate_series(0, m.n_head - 1) AS h
    ), s AS (                                           -- [n_head, n, pos+1] q.k / sqrt(d_head), causal
        SELECT a.h, a.pos, b.pos AS kpos, -(a.q <#> b.k) / sqrt(dh) AS s
        FROM qk a JOIN qk b ON b.h = a.h AND b.pos <= a.pos
    ), e AS (                                           -- exp(s - max s) per query and head
        SELECT s.h, s.pos, s.kpos, exp(greatest(s.s - max(s.s) OVER w, -700)) AS e FROM s WINDOW w AS (PARTITION BY s.h, s.pos)
    )
    SELECT e.h, e.pos, e.kpos, e.e / sum(e.e) OVER (PARTITION BY e.h, e.pos) FROM e;
END
$$;

CREATE OR REPLACE FUNCTION gpt2.attention(prompt text, model text DEFAULT NULL)
RETURNS TABLE (layer int, head int, query_pos int, key_pos int, weight float8)
LANGUAGE plpgsql AS $$
DECLARE
    m gpt2.models := gpt2.use_model(model, true);
BEGIN
    PERFORM gpt2.trace(gpt2.inspect_ids(prompt, m));
    RETURN QUERY SELECT t.layer, w.head, w.query_pos, w.key_pos, w.weight
                 FROM tape t, LATERAL gpt2.attention_weights(t.xs) AS w
                 WHERE t.site = 'qkv'
                 ORDER BY t.layer, w.head, w.query_pos, w.key_pos;
END
$$;

-- The most alternatives the glass box lists per position (top, k).
CREATE OR REPLACE FUNCTION gpt2.top_limit() RETURNS int LANGUAGE sql IMMUTABLE AS $$ SELECT 20 $$;

-- Top-k of softmax(logits) of each row of [n, n_vocab] logits, rows numbered from pos0:
-- (pos, rank, token, logit, prob); log sum exp once per row.
CREATE OR REPLACE FUNCTION gpt2.top_tokens(logits float8[], pos0 int, k int)
RETURNS TABLE (pos int, rank int, token int, logit float8, prob float8)
LANGUAGE sql IMMUTABLE AS $$
    SELECT pos0 + r.i - 1, t.rank::int, t.token, t.l, exp(t.l - r.lse)
    FROM (SELECT i, gpt2.logsumexp(logits[i:i]) AS lse FROM generate_series(1, array_length(logits, 1)) AS i
          OFFSET 0) AS r,
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
    IF k IS NULL OR k < 1 OR k > gpt2.top_limit() THEN
        RAISE EXCEPTION 'k must be between 1 and %, got %', gpt2.top_limit(), k;
    END IF;
    PERFORM gpt2.trace(gpt2.inspect_ids(prompt, m));
    SELECT array_agg(t.layer ORDER BY t.layer, p.i), array_agg(p.i - 1 ORDER BY t.layer, p.i),
           array_agg(p.y ORDER BY t.layer, p.i) INTO ls, ps, xs            -- [n_layer + 1, n] ln_f(residual)
    FROM tape t, unnest(gpt2.ln('ln_f', 0, t.xs)) WITH ORDINALITY AS p(y, i)
    WHERE t.site = 'resid_pre';
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
    done int := 0;                                      -- tokens predicted so far
    upto int;                                           -- the last token this window predicts (1-based)
    input int[];                                        -- the window's input tokens
    s record;                                           -- its sequence and positions
    xs vector[];
    logits float8[];
BEGIN
    IF top IS NULL OR top < 0 OR top > gpt2.top_limit() THEN
        RAISE EXCEPTION 'top must be between 0 and %, got %', gpt2.top_limit(), top;
    END IF;
    WHILE done < n LOOP                                 -- the windows (see the header)
        upto := least(n, done + m.n_positions);
        input := CASE WHEN done = 0 THEN gpt2.eos_id() || ids[1:upto - 1]
                      ELSE ids[upto - m.n_positions:upto - 1] END;
        s := gpt2.scratch_seqs(ARRAY[cardinality(input)]);
        PERFORM gpt2.kv_drop(s.seqs[1:1]);
        xs := gpt2.run(s.seqs, input, s.positions);
        PERFORM gpt2.kv_drop(s.seqs[1:1]);
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
END
$$;

CREATE OR REPLACE FUNCTION gpt2.perplexity(text text, model text DEFAULT NULL) RETURNS float8
LANGUAGE sql AS $$
    SELECT exp(-avg(s.logprob)) FROM gpt2.score(text, model) AS s
$$;
