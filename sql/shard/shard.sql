-- Sharding, the shard side: the rows a shard holds and the work done where they live.
--
-- Applied by `gpt2sql shard setup` on every shard server, after the gpt2 schema (sql/NN_*.sql);
-- not one of the numbered files: a single server never needs it. Design: docs/sharding.md.
--
-- postgres_fdw ships no non-extension function to a remote server: a coordinator query that
-- calls gpt2.perplexity(body) on a foreign table would fetch every body and compute on the
-- coordinator. So the work is a view here, and the coordinator's foreign tables read the views:
--
--   gpt2_shard.docs          (id bigint, body text)      the rows of this shard (the coordinator's
--                                                        partition routes its INSERTs here)
--   gpt2_shard.requests      one row per coordinator connection (keyed by the backend's pid):
--                            the model and sampling settings the views below use
--   gpt2_shard.perplexities  (id, perplexity)            gpt2.perplexity(body) per row
--   gpt2_shard.scores        (id, pos, token, text, logprob, rank, alternatives)   gpt2.score per row
--   gpt2_shard.completions   (id, completion)            gpt2.complete(body) per row
--   gpt2_shard.batch_completions (id, completion)        gpt2.complete_batch over slices of
--                                                        gpt2_shard.slice_size() rows
--
-- subtle: a view takes no arguments, so the coordinator INSERTs its settings into requests (in
--   its remote transaction, which the views' scan then sees) and the views read the row of
--   their own session: pid = pg_backend_pid(). postgres_fdw keeps one connection per server and
--   user per coordinator session, so the INSERT and the scan share that pid. A BEFORE INSERT
--   trigger replaces the session's previous row; a row committed by a session that has ended is
--   a few bytes and is replaced when its pid comes back.
-- subtle: postgres_fdw runs remote sessions with search_path = pg_catalog; the views call
--   wrappers that carry the search path of `gpt2sql shard setup` (SET search_path FROM CURRENT:
--   pgvector's schema), as gpt2's functions expect.
-- subtle: with no request row for the session, the views return no rows: a direct scan from
--   psql is empty rather than run with settings nobody chose.

CREATE SCHEMA IF NOT EXISTS gpt2_shard;

-- Where this shard sits in the coordinator's hash partitioning: setup refuses to change it
-- while the shard holds rows (they would sit in the wrong partition).
CREATE TABLE IF NOT EXISTS gpt2_shard.placement (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    modulus int NOT NULL,
    remainder int NOT NULL
);

CREATE TABLE IF NOT EXISTS gpt2_shard.docs (
    id bigint PRIMARY KEY,
    body text NOT NULL
);

CREATE TABLE IF NOT EXISTS gpt2_shard.requests (
    pid int PRIMARY KEY DEFAULT pg_backend_pid(),
    model text,
    max_tokens int NOT NULL DEFAULT 40,
    temperature float8 NOT NULL DEFAULT 1.0,
    top_k int DEFAULT 50,
    top_p float8 NOT NULL DEFAULT 1.0,
    seed bigint,
    top int NOT NULL DEFAULT 0
);

CREATE OR REPLACE FUNCTION gpt2_shard.replace_request() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM gpt2_shard.requests WHERE pid = NEW.pid;
    RETURN NEW;
END $$;

DROP TRIGGER IF EXISTS replace_request ON gpt2_shard.requests;
CREATE TRIGGER replace_request BEFORE INSERT ON gpt2_shard.requests
    FOR EACH ROW EXECUTE FUNCTION gpt2_shard.replace_request();

-- The prompts of one complete_batch call: the kernels take 16 positions per pass (README,
-- "Many prompts at once").
CREATE OR REPLACE FUNCTION gpt2_shard.slice_size() RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT 16';

CREATE OR REPLACE VIEW gpt2_shard.request AS
    SELECT * FROM gpt2_shard.requests WHERE pid = pg_backend_pid();

CREATE OR REPLACE FUNCTION gpt2_shard.perplexity(body text, model text) RETURNS float8
LANGUAGE sql SET search_path FROM CURRENT AS $$ SELECT gpt2.perplexity(body, model) $$;

CREATE OR REPLACE FUNCTION gpt2_shard.score(body text, model text, top int)
RETURNS TABLE (pos int, token int, text text, logprob float8, rank int, alternatives jsonb)
LANGUAGE sql SET search_path FROM CURRENT AS $$ SELECT * FROM gpt2.score(body, model, top) $$;

CREATE OR REPLACE FUNCTION gpt2_shard.complete(body text, r gpt2_shard.request) RETURNS text
LANGUAGE sql SET search_path FROM CURRENT AS $$
    SELECT gpt2.complete(body, r.model, r.max_tokens, r.temperature, r.top_k, r.top_p, r.seed)
$$;

CREATE OR REPLACE FUNCTION gpt2_shard.complete_batch(bodies text[], r gpt2_shard.request) RETURNS text[]
LANGUAGE sql SET search_path FROM CURRENT AS $$
    SELECT gpt2.complete_batch(bodies, r.model, r.max_tokens, r.temperature, r.top_k, r.top_p, r.seed)
$$;

CREATE OR REPLACE VIEW gpt2_shard.perplexities AS
    SELECT d.id, gpt2_shard.perplexity(d.body, r.model) AS perplexity
    FROM gpt2_shard.docs d, gpt2_shard.request r;

CREATE OR REPLACE VIEW gpt2_shard.scores AS
    SELECT d.id, s.pos, s.token, s.text, s.logprob, s.rank, s.alternatives
    FROM gpt2_shard.docs d, gpt2_shard.request r, gpt2_shard.score(d.body, r.model, r.top) s;

CREATE OR REPLACE VIEW gpt2_shard.completions AS
    SELECT d.id, gpt2_shard.complete(d.body, r) AS completion
    FROM gpt2_shard.docs d, gpt2_shard.request r;

CREATE OR REPLACE VIEW gpt2_shard.batch_completions AS
    SELECT c.id, c.completion
    FROM gpt2_shard.request r,
         (SELECT array_agg(id ORDER BY id) AS ids, array_agg(body ORDER BY id) AS bodies
          FROM (SELECT id, body, (row_number() OVER (ORDER BY id) - 1) / gpt2_shard.slice_size() AS slice
                FROM gpt2_shard.docs) AS numbered
          GROUP BY slice) AS batch,
         unnest(batch.ids, gpt2_shard.complete_batch(batch.bodies, r)) AS c(id, completion);
