-- Stage 10: generation: prefill once, then one decode step per token, with the KV cache;
-- for one prompt or a batch of prompts decoded together.
--
-- NumPy twin: tests/reference.py generate_greedy (greedy) and the sampling rules of stage 9.
--
-- Ways to use it:
--   SELECT * FROM gpt2.generate('Happy New Year! I wish', max_tokens => 20, temperature => 0);
--       all tokens at once (PL/pgSQL returns a set only when the function ends);
--   SELECT gpt2.generate_start('...', ...);  then  SELECT * FROM gpt2.generate_next();  per token
--       one round trip per token: what the CLI does to stream. The prompt is processed
--       (prefilled) by the first generate_next, or ahead of it in pieces by
--       SELECT gpt2.generate_prefill(256) until it returns 0.
--   SELECT * FROM gpt2.generate_batch(ARRAY['...', '...'], ...);  (and generate_batch_start /
--       generate_batch_next): many prompts decoded together, each with its own cache,
--       length, stop condition and end; every weight row is read once per step for all of
--       them (the kernels of stage 4 take up to 16 positions per pass).
-- The state lives in temporary tables (gen_seq, and the KV cache of stage 5), so every
-- connection has its own generation and nothing is left behind when it disconnects.
--
-- Each prompt is a sequence (seq = prompt number - 1) with its own state row:
--   ids[window_start:]   the tokens the model sees; the first n_cached are in the KV cache;
--   x                    the final hidden state of the last one cached;
--   pending              the token chosen last step, fed through the model at the START of
--                        the next one, so a token is returned as soon as it is chosen (and
--                        the last token of a generation costs no forward pass).
-- Context window: a model sees at most n_positions tokens. When feeding the next token
-- would pass that, the window slides: the cache is rebuilt from the last n_positions / 2
-- tokens (one prefill) and decoding goes on. A prompt longer than n_positions starts as if
-- it had slid there: from its last n_positions / 2 tokens (a whole window would be thrown
-- away after one token). tests/reference.py generate_greedy follows the same rule.
-- A seed means the same alone or in a batch: prompt i draws from gpt2.uniform(seed, step).

CREATE OR REPLACE FUNCTION gpt2.eos_id() RETURNS int
LANGUAGE sql STABLE AS $$
    SELECT id FROM gpt2.vocab WHERE token = '<|endoftext|>'
$$;

-- The most prompts one batch takes: each holds a KV cache and a row of every kernel pass;
-- for more, call once per slice of prompts (README: "Many prompts at once").
CREATE OR REPLACE FUNCTION gpt2.batch_limit() RETURNS int
LANGUAGE sql IMMUTABLE AS $$ SELECT 64 $$;

-- Whether a generation is in progress on this connection (a prompt not done).
CREATE OR REPLACE FUNCTION gpt2.generating() RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    going boolean := false;
BEGIN
    IF to_regclass('pg_temp.gen_seq') IS NOT NULL THEN      -- (dynamic: the table comes and goes)
        EXECUTE 'SELECT EXISTS (SELECT FROM pg_temp.gen_seq WHERE NOT done)' INTO going;
    END IF;
    RETURN going;
END
$$;

-- End this connection's generation: its cache, its hold on the model, and (unless finished: its
-- rows then say so to generate_next) its state.
-- subtle: a generation holds a shared lock on its model for as long as it lasts (session level,
--   so between its steps too): a training step on that model (stage 12) takes the lock
--   exclusively, so it refuses to change weights under a generation of another connection.
CREATE OR REPLACE FUNCTION gpt2.generation_end(finished boolean DEFAULT false) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    key int;
BEGIN
    IF to_regclass('pg_temp.gen_seq') IS NOT NULL THEN
        EXECUTE 'SELECT lock_key FROM pg_temp.gen_seq LIMIT 1' INTO key;   -- (dynamic: the table is made later)
        IF key IS NOT NULL THEN
            PERFORM pg_advisory_unlock_shared(hashtext('gpt2sql generate'), key);
            EXECUTE 'UPDATE pg_temp.gen_seq SET lock_key = NULL';
        END IF;
        IF NOT finished THEN
            TRUNCATE pg_temp.gen_seq;
        END IF;
    END IF;
    PERFORM gpt2.kv_clear();
END
$$;

-- Empty this connection's KV cache: a generation in progress ends with it (and says so).
CREATE OR REPLACE FUNCTION gpt2.kv_reset() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF gpt2.generating() THEN
        RAISE NOTICE 'gpt2.kv_reset ended the generation in progress on this connection';
    END IF;
    PERFORM gpt2.generation_end();
END
$$;

-- The single-statement generations (gpt2.generate, complete, generate_batch, complete_batch)
-- run in tables of their own: a streaming generation in progress on the connection (its state
-- and cache) is set aside while they run and comes back after, as it was.
CREATE OR REPLACE FUNCTION gpt2.generation_aside() RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    t text;
BEGIN
    IF NOT gpt2.generating() THEN
        RETURN false;
    END IF;
    -- subtle: their keys too: kv_append names kv_vt's (ON CONFLICT ON CONSTRAINT kv_vt_pkey)
    FOREACH t IN ARRAY ARRAY['gen_seq', 'kv_k', 'kv_v', 'kv_vt'] LOOP
        EXECUTE format('ALTER TABLE pg_temp.%I RENAME TO %I', t, t || '_aside');
        EXECUTE format('ALTER INDEX pg_temp.%I RENAME TO %I', t || '_pkey', t || '_aside_pkey');
    END LOOP;
    RETURN true;
END
$$;

CREATE OR REPLACE FUNCTION gpt2.generation_back(aside boolean) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    t text;
BEGIN
    PERFORM gpt2.generation_end();
    IF aside THEN
        FOREACH t IN ARRAY ARRAY['gen_seq', 'kv_k', 'kv_v', 'kv_vt'] LOOP
            EXECUTE format('DROP TABLE pg_temp.%I', t);
            EXECUTE format('ALTER TABLE pg_temp.%I RENAME TO %I', t || '_aside', t);
            EXECUTE format('ALTER INDEX pg_temp.%I RENAME TO %I', t || '_aside_pkey', t || '_pkey');
        END LOOP;
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION gpt2.generate_batch_start(
    prompts text[], model text DEFAULT NULL, max_tokens int DEFAULT 40, temperature float8 DEFAULT 1.0,
    top_k int DEFAULT 50, top_p float8 DEFAULT 1.0, seed bigint DEFAULT NULL, stop text[] DEFAULT NULL,
    top_logprobs int DEFAULT 0)
RETURNS int[]    -- each prompt's length in tokens
LANGUAGE plpgsql AS $$
DECLARE
    m gpt2.models;
    lengths int[];
BEGIN
    IF max_tokens IS NULL OR max_tokens < 1 THEN RAISE EXCEPTION 'max_tokens must be >= 1, got %', max_tokens; END IF;
    IF temperature IS NULL OR NOT (temperature >= 0 AND temperature < 'Infinity') THEN
        RAISE EXCEPTION 'temperature must be >= 0 and finite, got %', temperature;    -- (NaN > every number in SQL)
    END IF;
    IF top_k IS NOT NULL AND top_k < 1 THEN RAISE EXCEPTION 'top_k must be >= 1 (or NULL for all tokens), got %', top_k; END IF;
    IF top_p IS NULL OR NOT (top_p > 0 AND top_p <= 1) THEN RAISE EXCEPTION 'top_p must be in (0, 1], got %', top_p; END IF;
    IF top_logprobs IS NULL OR top_logprobs < 0 OR top_logprobs > 20 THEN
        RAISE EXCEPTION 'top_logprobs must be between 0 and 20, got %', top_logprobs;
    END IF;
    IF prompts IS NULL OR cardinality(prompts) = 0 THEN RAISE EXCEPTION 'no prompts given'; END IF;
    IF array_position(prompts, NULL) IS NOT NULL THEN RAISE EXCEPTION 'prompt % is NULL', array_position(prompts, NULL); END IF;
    IF cardinality(prompts) > gpt2.batch_limit() THEN
        RAISE EXCEPTION 'a batch takes at most % prompts, got %', gpt2.batch_limit(), cardinality(prompts)
            USING HINT = 'call once per slice of the prompts (README: "Many prompts at once")';
    END IF;
    m := gpt2.use_model(model, true);

    IF gpt2.generating() THEN
        RAISE NOTICE 'a new generation replaces the one in progress on this connection';
    END IF;
    PERFORM gpt2.generation_end();
    IF to_regclass('pg_temp.gen_seq') IS NULL THEN
        CREATE TEMPORARY TABLE gen_seq (
            seq int PRIMARY KEY, model text, loaded_at timestamptz, model_step int, lock_key int, ids int[],
            window_start int, n_cached int, pending int, x vector, step int, max_tokens int, temperature float8,
            top_k int, top_p float8, seed bigint, stop text[], top_logprobs int, generated bytea, done boolean);
    END IF;
    PERFORM pg_advisory_lock_shared(hashtext('gpt2sql generate'), hashtext(m.schema_name));   -- (gpt2.generation_end)
    INSERT INTO gen_seq
    SELECT p.i - 1, m.name, m.loaded_at, m.step, hashtext(m.schema_name), t.ids,
           -- a prompt longer than the window starts as the window would slide (see the header)
           CASE WHEN cardinality(t.ids) > m.n_positions THEN cardinality(t.ids) - m.n_positions / 2 + 1 ELSE 1 END,
           0, NULL, NULL,                                          -- nothing cached yet
           0, max_tokens, temperature, top_k, top_p, coalesce(seed, floor(random() * 2147483647)::bigint),
           stop, top_logprobs, ''::bytea, false
    FROM unnest(prompts) WITH ORDINALITY AS p(prompt, i),
         LATERAL (SELECT CASE WHEN cardinality(coalesce(gpt2.tokenize(p.prompt), '{}')) = 0
                              THEN ARRAY[gpt2.eos_id()]   -- as Hugging Face: an empty prompt starts at <|endoftext|>
                              ELSE gpt2.tokenize(p.prompt) END AS ids) AS t;
    SELECT array_agg(cardinality(g.ids) ORDER BY g.seq) INTO lengths FROM gen_seq g;
    RETURN lengths;
END
$$;

CREATE OR REPLACE FUNCTION gpt2.generate_start(
    prompt text, model text DEFAULT NULL, max_tokens int DEFAULT 40, temperature float8 DEFAULT 1.0,
    top_k int DEFAULT 50, top_p float8 DEFAULT 1.0, seed bigint DEFAULT NULL, stop text[] DEFAULT NULL,
    top_logprobs int DEFAULT 0)
RETURNS int    -- the prompt's length in tokens
LANGUAGE sql AS $$
    SELECT (gpt2.generate_batch_start(ARRAY[prompt], model, max_tokens, temperature, top_k, top_p, seed, stop,
                                      top_logprobs))[1]
$$;

-- A one-line error unless this connection has a generation in progress; selects its model,
-- and stops with a clear error if the model was dropped or loaded again since it started
-- (a generation never goes on with other weights than it began with).
CREATE OR REPLACE FUNCTION gpt2.require_generation() RETURNS gpt2.models
LANGUAGE plpgsql AS $$
DECLARE
    s record;
    m gpt2.models;
BEGIN
    IF to_regclass('pg_temp.gen_seq') IS NULL THEN
        RAISE EXCEPTION 'no generation in progress on this connection' USING HINT = 'call gpt2.generate_start(prompt, ...) first';
    END IF;
    EXECUTE 'SELECT model, loaded_at, model_step FROM pg_temp.gen_seq LIMIT 1' INTO s;      -- (dynamic: the table may not exist at compile time)
    IF s IS NULL THEN
        RAISE EXCEPTION 'no generation in progress on this connection' USING HINT = 'call gpt2.generate_start(prompt, ...) first';
    END IF;
    SELECT * INTO m FROM gpt2.models WHERE name = s.model;
    IF FOUND THEN
        -- subtle: a drop or reload may be committing: wait for it on the model's wte (its DROP
        --   SCHEMA holds it), then look again; the lock, held to the end of the step, keeps a
        --   later drop from starting under it
        BEGIN
            EXECUTE format('LOCK TABLE %I.wte IN ACCESS SHARE MODE', m.schema_name);
        EXCEPTION WHEN undefined_table OR invalid_schema_name THEN
            NULL;
        END;
        SELECT * INTO m FROM gpt2.models WHERE name = s.model;
    END IF;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'model "%" was dropped during the generation', s.model;
    ELSIF m.loaded_at <> s.loaded_at THEN
        RAISE EXCEPTION 'model "%" was loaded again during the generation: its weights changed, start again', s.model;
    ELSIF m.step <> s.model_step THEN
        RAISE EXCEPTION 'model "%" took a training step during the generation: its weights changed, start again', s.model;
    END IF;
    RETURN gpt2.use_model(s.model, true);
END
$$;

-- Run the uncached tokens of the windows through the model, up to n (default: all) per
-- sequence, all sequences together; returns how many are left. Stopping between calls is
-- safe: the cache and x always describe the first n_cached tokens of each window.
CREATE OR REPLACE FUNCTION gpt2.generate_prefill(n int DEFAULT NULL) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    xs vector[];
BEGIN
    PERFORM gpt2.require_generation();
    SELECT array_agg(t.seq ORDER BY t.seq, t.pos) AS seqs, array_agg(t.id ORDER BY t.seq, t.pos) AS ids,
           array_agg(t.pos ORDER BY t.seq, t.pos) AS positions INTO r
    FROM gen_seq g,
         LATERAL (SELECT g.seq, g.ids[g.window_start + j] AS id, j AS pos     -- window position j
                  FROM generate_series(g.n_cached,
                                       least(cardinality(g.ids) - g.window_start, g.n_cached + coalesce(n, cardinality(g.ids)) - 1)) AS j) AS t
    WHERE NOT g.done AND g.pending IS NULL;
    IF r.seqs IS NOT NULL THEN
        xs := gpt2.run(r.seqs, r.ids, r.positions);
        UPDATE gen_seq g SET x = l.x, n_cached = l.pos + 1              -- the last position of each sequence
        FROM (SELECT DISTINCT ON (u.s) u.s, u.p AS pos, u.x FROM unnest(r.seqs, r.positions, xs) AS u(s, p, x)
              ORDER BY u.s, u.p DESC) AS l
        WHERE g.seq = l.s;
    END IF;
    RETURN (SELECT coalesce(sum(cardinality(g.ids) - g.window_start + 1 - g.n_cached), 0)
            FROM gen_seq g WHERE NOT g.done AND g.pending IS NULL);
END
$$;

-- One step of every unfinished sequence: feed the pending token (or slide the window),
-- finish the prefill, choose the next token. One row per sequence that got a token.
CREATE OR REPLACE FUNCTION gpt2.generation_step()
RETURNS TABLE (seq int, step int, id int, text text, bytes bytea, done boolean, logprob float8, top jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    m gpt2.models := gpt2.require_generation();
    r record;
    xs vector[];
    logits float8[];                                     -- [n_active, n_vocab]
BEGIN
    UPDATE gen_seq g SET window_start = cardinality(g.ids) - m.n_positions / 2 + 1, n_cached = 0, pending = NULL
    WHERE NOT g.done AND g.pending IS NOT NULL AND g.n_cached >= m.n_positions;   -- the window slides (see the header)
    IF FOUND THEN
        PERFORM gpt2.kv_drop(ARRAY(SELECT g.seq FROM gen_seq g WHERE NOT g.done AND g.n_cached = 0));
        PERFORM gpt2.progress('slide', 0, 1);
    END IF;

    SELECT array_agg(g.seq ORDER BY g.seq) AS seqs, array_agg(g.pending ORDER BY g.seq) AS ids,
           array_agg(g.n_cached ORDER BY g.seq) AS positions INTO r
    FROM gen_seq g WHERE NOT g.done AND g.pending IS NOT NULL;
    IF r.seqs IS NOT NULL THEN                           -- feed the tokens chosen last step
        xs := gpt2.run(r.seqs, r.ids, r.positions);
        UPDATE gen_seq g SET x = u.x, n_cached = g.n_cached + 1, pending = NULL
        FROM unnest(r.seqs, xs) AS u(s, x) WHERE g.seq = u.s;
    END IF;
    PERFORM gpt2.generate_prefill();                     -- prompts, slid windows

    SELECT array_agg(g.seq ORDER BY g.seq) AS seqs, array_agg(g.x ORDER BY g.seq) AS xs INTO r
    FROM gen_seq g WHERE NOT g.done;
    IF r.seqs IS NULL THEN
        RETURN;
    END IF;
    logits := gpt2.head(r.xs);
    RETURN QUERY
    WITH chosen AS (                                     -- [n_active] the draw, and what it was drawn from
        SELECT g.seq, g.step + 1 AS step, l.logits, coalesce(k.lse, gpt2.logsumexp(l.logits)) AS lse,
               coalesce(k.id, gpt2.choose(l.logits, g.temperature, g.top_k, g.top_p, gpt2.uniform(g.seed, g.step))) AS id
        FROM unnest(r.seqs) WITH ORDINALITY AS u(s, i)
        JOIN gen_seq g ON g.seq = u.s
        CROSS JOIN LATERAL (SELECT logits[u.i:u.i] AS logits OFFSET 0) AS l   -- (sliced once, not per use)
        LEFT JOIN LATERAL (SELECT p.id, p.lse FROM gpt2.greedy_lse(l.logits) AS p  -- greedy: one pass
                           WHERE g.temperature = 0) AS k ON true
    ), advanced AS (
        UPDATE gen_seq g SET ids = g.ids || c.id, pending = c.id, step = c.step,
               generated = g.generated || coalesce(v.bytes, ''::bytea),
               done = c.id = gpt2.eos_id() OR c.step >= g.max_tokens
                      OR EXISTS (SELECT FROM unnest(g.stop) AS w
                                 WHERE w <> '' AND strpos(gpt2.decode_bytes(g.generated || coalesce(v.bytes, ''::bytea)), w) > 0)
        FROM chosen c LEFT JOIN gpt2.vocab v ON v.id = c.id
        WHERE g.seq = c.seq
        RETURNING g.seq, g.done
    )
    SELECT c.seq, c.step, c.id, gpt2.decode_bytes(v.bytes), v.bytes, a.done,
           c.logits[1][c.id + 1] - c.lse,
           CASE WHEN g.top_logprobs > 0 THEN gpt2.top_logprobs(c.logits, g.top_logprobs, c.lse) END
    FROM chosen c JOIN advanced a USING (seq) JOIN gen_seq g USING (seq) LEFT JOIN gpt2.vocab v ON v.id = c.id
    ORDER BY c.seq;
    IF NOT EXISTS (SELECT FROM gen_seq g WHERE NOT g.done) THEN
        PERFORM gpt2.generation_end(true);               -- the cache is not needed any more
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION gpt2.generate_next()
RETURNS TABLE (step int, id int, text text, bytes bytea, done boolean, logprob float8, top jsonb)
LANGUAGE sql AS $$
    SELECT s.step, s.id, s.text, s.bytes, s.done, s.logprob, s.top FROM gpt2.generation_step() AS s WHERE s.seq = 0
$$;

CREATE OR REPLACE FUNCTION gpt2.generate_batch_next()
RETURNS TABLE (prompt int, step int, id int, text text, bytes bytea, done boolean, logprob float8, top jsonb)
LANGUAGE sql AS $$
    SELECT s.seq + 1, s.step, s.id, s.text, s.bytes, s.done, s.logprob, s.top FROM gpt2.generation_step() AS s
$$;

-- Every generated token of one prompt, for psql: (step, id, text, logprob, top). A streaming
-- generation in progress on the connection waits aside meanwhile (gpt2.generation_aside).
CREATE OR REPLACE FUNCTION gpt2.generate(
    prompt text, model text DEFAULT NULL, max_tokens int DEFAULT 40, temperature float8 DEFAULT 1.0,
    top_k int DEFAULT 50, top_p float8 DEFAULT 1.0, seed bigint DEFAULT NULL, stop text[] DEFAULT NULL,
    top_logprobs int DEFAULT 0)
RETURNS TABLE (step int, id int, text text, logprob float8, top jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    aside boolean := gpt2.generation_aside();
    r record;
BEGIN
    PERFORM gpt2.generate_start(prompt, model, max_tokens, temperature, top_k, top_p, seed, stop, top_logprobs);
    LOOP
        SELECT * INTO r FROM gpt2.generate_next();
        EXIT WHEN NOT FOUND;
        step := r.step; id := r.id; text := r.text; logprob := r.logprob; top := r.top;
        RETURN NEXT;
        EXIT WHEN r.done;
    END LOOP;
    PERFORM gpt2.generation_back(aside);
END
$$;

-- The generated text as one string (bytes joined first, so characters split across
-- tokens come out whole).
CREATE OR REPLACE FUNCTION gpt2.complete(
    prompt text, model text DEFAULT NULL, max_tokens int DEFAULT 40, temperature float8 DEFAULT 1.0,
    top_k int DEFAULT 50, top_p float8 DEFAULT 1.0, seed bigint DEFAULT NULL, stop text[] DEFAULT NULL)
RETURNS text
LANGUAGE sql AS $$
    SELECT gpt2.detokenize(array_agg(g.id ORDER BY g.step))
    FROM gpt2.generate(prompt, model, max_tokens, temperature, top_k, top_p, seed, stop) AS g
$$;

-- Many prompts decoded together: (prompt, step, id, text), prompt the 1-based index into
-- prompts. Each prompt's tokens are those gpt2.generate gives it alone with the same knobs.
CREATE OR REPLACE FUNCTION gpt2.generate_batch(
    prompts text[], model text DEFAULT NULL, max_tokens int DEFAULT 40, temperature float8 DEFAULT 1.0,
    top_k int DEFAULT 50, top_p float8 DEFAULT 1.0, seed bigint DEFAULT NULL, stop text[] DEFAULT NULL)
RETURNS TABLE (prompt int, step int, id int, text text)
LANGUAGE plpgsql AS $$
DECLARE
    aside boolean := gpt2.generation_aside();
    r record;
    n int;
BEGIN
    PERFORM gpt2.generate_batch_start(prompts, model, max_tokens, temperature, top_k, top_p, seed, stop);
    LOOP
        n := 0;
        FOR r IN SELECT * FROM gpt2.generate_batch_next() LOOP
            prompt := r.prompt; step := r.step; id := r.id; text := r.text; n := n + 1;
            RETURN NEXT;
        END LOOP;
        EXIT WHEN n = 0;
    END LOOP;
    PERFORM gpt2.generation_back(aside);
END
$$;

CREATE OR REPLACE FUNCTION gpt2.complete_batch(
    prompts text[], model text DEFAULT NULL, max_tokens int DEFAULT 40, temperature float8 DEFAULT 1.0,
    top_k int DEFAULT 50, top_p float8 DEFAULT 1.0, seed bigint DEFAULT NULL, stop text[] DEFAULT NULL)
RETURNS text[]
LANGUAGE plpgsql AS $$
DECLARE
    texts text[] := array_fill(''::text, ARRAY[coalesce(cardinality(prompts), 0)]);   -- '' for no token
    r record;
BEGIN
    FOR r IN SELECT g.prompt, gpt2.detokenize(array_agg(g.id ORDER BY g.step)) AS text
             FROM gpt2.generate_batch(prompts, model, max_tokens, temperature, top_k, top_p, seed, stop) AS g
             GROUP BY g.prompt LOOP
        texts[r.prompt] := r.text;
    END LOOP;
    RETURN texts;
END
$$;
