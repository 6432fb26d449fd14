-- Sharding, the coordinator side: one table of documents over N shards, and the model's work
-- run where the rows live, on every shard at once (PostgreSQL's own federation, postgres_fdw).
--
-- Applied by `gpt2sql shard setup` on the coordinator, which needs postgres_fdw and nothing of
-- gpt2sql (no pgvector, no weights); not one of the numbered files. Design: docs/sharding.md.
--
--   gpt2_coord.shards            (remainder, server): the foreign servers gpt2_shard_<remainder>
--   gpt2_coord.docs              (id bigint, body text) PARTITION BY HASH (id); partition i is a
--                                foreign table over shard i's gpt2_shard.docs: INSERT routes rows
--   gpt2_coord.perplexities, .scores, .completions, .batch_completions   partitioned the same
--                                way; partition i is a foreign table over shard i's view
--   gpt2_coord.perplexity(model)                   -> (id, perplexity), ordered by id
--   gpt2_coord.score(model, top)                   -> (id, pos, token, text, logprob, rank, alternatives)
--   gpt2_coord.complete(model, max_tokens, temperature, top_k, top_p, seed)        -> (id, completion)
--   gpt2_coord.complete_batch(same)                -> (id, completion): complete_batch per slice
--
-- Each function writes its settings to every shard's gpt2_shard.requests, then scans the
-- partitioned result table: an Append of foreign scans that, with the servers' async_capable
-- 'true', sends the scan to every shard before waiting for any (Async Foreign Scan), so the
-- shards compute side by side. Every shard's work is in the remote transaction postgres_fdw
-- opens for the coordinator's transaction, committed or rolled back with it: a statement such as
-- INSERT INTO results SELECT * FROM gpt2_coord.perplexity() stores every row or none.
-- subtle: a shard that cannot be reached (SQLSTATE class 08) becomes one line naming its server
--   and libpq's reason, raised from here so that the whole statement is rolled back.

CREATE EXTENSION IF NOT EXISTS postgres_fdw;
CREATE SCHEMA IF NOT EXISTS gpt2_coord;

CREATE TABLE IF NOT EXISTS gpt2_coord.shards (
    remainder int PRIMARY KEY,
    server name NOT NULL UNIQUE
);

CREATE TABLE IF NOT EXISTS gpt2_coord.docs (id bigint NOT NULL, body text NOT NULL) PARTITION BY HASH (id);
CREATE TABLE IF NOT EXISTS gpt2_coord.perplexities (id bigint, perplexity float8) PARTITION BY HASH (id);
CREATE TABLE IF NOT EXISTS gpt2_coord.scores (
    id bigint, pos int, token int, text text, logprob float8, rank int, alternatives jsonb
) PARTITION BY HASH (id);
CREATE TABLE IF NOT EXISTS gpt2_coord.completions (id bigint, completion text) PARTITION BY HASH (id);
CREATE TABLE IF NOT EXISTS gpt2_coord.batch_completions (id bigint, completion text) PARTITION BY HASH (id);

-- Partition `remainder` of every table above (of `modulus` shards), on foreign server `server`.
CREATE OR REPLACE FUNCTION gpt2_coord.attach_shard(remainder int, modulus int, server name) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    -- coordinator table -> the shard's table or view (same name, schema gpt2_shard)
    tables text[] := ARRAY['docs', 'perplexities', 'scores', 'completions', 'batch_completions'];
    t text;
BEGIN
    FOREACH t IN ARRAY tables LOOP
        EXECUTE format('CREATE FOREIGN TABLE gpt2_coord.%I PARTITION OF gpt2_coord.%I '
                       'FOR VALUES WITH (MODULUS %s, REMAINDER %s) SERVER %I '
                       'OPTIONS (schema_name %L, table_name %L)',
                       t || '_' || remainder, t, modulus, remainder, server, 'gpt2_shard', t);
    END LOOP;
    -- the settings table, without its pid: the shard's default (pg_backend_pid()) fills it
    EXECUTE format('CREATE FOREIGN TABLE gpt2_coord.%I (model text, max_tokens int, temperature float8, '
                   'top_k int, top_p float8, seed bigint, top int) SERVER %I '
                   'OPTIONS (schema_name %L, table_name %L)',
                   'requests_' || remainder, server, 'gpt2_shard', 'requests');
    INSERT INTO gpt2_coord.shards VALUES (remainder, server);
END $$;

-- Write one settings row on every shard (in this transaction's remote transactions).
CREATE OR REPLACE FUNCTION gpt2_coord.request(model text, max_tokens int DEFAULT 40, temperature float8 DEFAULT 1.0,
    top_k int DEFAULT 50, top_p float8 DEFAULT 1.0, seed bigint DEFAULT NULL, top int DEFAULT 0) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    s gpt2_coord.shards;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM gpt2_coord.shards) THEN
        RAISE EXCEPTION 'no shard is attached to this coordinator: run gpt2sql shard setup';
    END IF;
    FOR s IN SELECT * FROM gpt2_coord.shards ORDER BY remainder LOOP
        EXECUTE format('INSERT INTO gpt2_coord.%I VALUES ($1, $2, $3, $4, $5, $6, $7)', 'requests_' || s.remainder)
            USING model, max_tokens, temperature, top_k, top_p, seed, top;
    END LOOP;
END $$;

-- One line for an unreachable shard: postgres_fdw's message names the server, libpq's detail says why.
CREATE OR REPLACE FUNCTION gpt2_coord.unreachable(message text, detail text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'a shard is unreachable, nothing was computed or written: % (%)', message,
        coalesce(split_part(detail, E'\n', 1), 'no detail')
        USING HINT = 'start that shard server, or run gpt2sql shard setup without it (its rows are then not reachable)';
END $$;

CREATE OR REPLACE FUNCTION gpt2_coord.perplexity(model text DEFAULT NULL)
RETURNS TABLE (id bigint, perplexity float8)
LANGUAGE plpgsql AS $$
DECLARE
    message text;
    detail text;
BEGIN
    PERFORM gpt2_coord.request(model);
    RETURN QUERY SELECT p.id, p.perplexity FROM gpt2_coord.perplexities p ORDER BY p.id;
EXCEPTION WHEN connection_exception THEN
    GET STACKED DIAGNOSTICS message = MESSAGE_TEXT, detail = PG_EXCEPTION_DETAIL;
    PERFORM gpt2_coord.unreachable(message, detail);
END $$;

CREATE OR REPLACE FUNCTION gpt2_coord.score(model text DEFAULT NULL, top int DEFAULT 0)
RETURNS TABLE (id bigint, pos int, token int, text text, logprob float8, rank int, alternatives jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    message text;
    detail text;
BEGIN
    PERFORM gpt2_coord.request(model, top => top);
    RETURN QUERY SELECT s.id, s.pos, s.token, s.text, s.logprob, s.rank, s.alternatives
                 FROM gpt2_coord.scores s ORDER BY s.id, s.pos;
EXCEPTION WHEN connection_exception THEN
    GET STACKED DIAGNOSTICS message = MESSAGE_TEXT, detail = PG_EXCEPTION_DETAIL;
    PERFORM gpt2_coord.unreachable(message, detail);
END $$;

CREATE OR REPLACE FUNCTION gpt2_coord.complete(model text DEFAULT NULL, max_tokens int DEFAULT 40,
    temperature float8 DEFAULT 1.0, top_k int DEFAULT 50, top_p float8 DEFAULT 1.0, seed bigint DEFAULT NULL)
RETURNS TABLE (id bigint, completion text)
LANGUAGE plpgsql AS $$
DECLARE
    message text;
    detail text;
BEGIN
    PERFORM gpt2_coord.request(model, max_tokens, temperature, top_k, top_p, seed);
    RETURN QUERY SELECT c.id, c.completion FROM gpt2_coord.completions c ORDER BY c.id;
EXCEPTION WHEN connection_exception THEN
    GET STACKED DIAGNOSTICS message = MESSAGE_TEXT, detail = PG_EXCEPTION_DETAIL;
    PERFORM gpt2_coord.unreachable(message, detail);
END $$;

CREATE OR REPLACE FUNCTION gpt2_coord.complete_batch(model text DEFAULT NULL, max_tokens int DEFAULT 40,
    temperature float8 DEFAULT 1.0, top_k int DEFAULT 50, top_p float8 DEFAULT 1.0, seed bigint DEFAULT NULL)
RETURNS TABLE (id bigint, completion text)
LANGUAGE plpgsql AS $$
DECLARE
    message text;
    detail text;
BEGIN
    PERFORM gpt2_coord.request(model, max_tokens, temperature, top_k, top_p, seed);
    RETURN QUERY SELECT c.id, c.completion FROM gpt2_coord.batch_completions c ORDER BY c.id;
EXCEPTION WHEN connection_exception THEN
    GET STACKED DIAGNOSTICS message = MESSAGE_TEXT, detail = PG_EXCEPTION_DETAIL;
    PERFORM gpt2_coord.unreachable(message, detail);
END $$;
