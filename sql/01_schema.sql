-- Stage 0b: the schema every later stage lives in.
--
-- NumPy twin: none (bookkeeping).
-- gpt2.models holds one row per loaded checkpoint: its hyperparameters, read from the
-- checkpoint's config.json, and the schema that holds its weight tables. No stage
-- hard-codes a width, a head count or a vocabulary size: they all come from here.
--
-- Each file in sql/ is applied in name order, which is the order they depend on each other
-- (a file calls only what the files before it define), is safe to re-run (CREATE OR
-- REPLACE, IF NOT EXISTS; 00_upgrade.sql clears what earlier releases defined) and runs as
-- it is in psql (pgvector must be installed).

CREATE EXTENSION IF NOT EXISTS vector;
CREATE SCHEMA IF NOT EXISTS gpt2;

CREATE TABLE IF NOT EXISTS gpt2.models (
    name                text PRIMARY KEY,
    schema_name         text NOT NULL UNIQUE,     -- the model's weight tables: wte, wpe, c_attn, ...
    n_layer             int  NOT NULL CHECK (n_layer > 0),
    n_head              int  NOT NULL CHECK (n_head > 0),
    n_embd              int  NOT NULL CHECK (n_embd > 0 AND n_embd % n_head = 0),
    n_inner             int  NOT NULL CHECK (n_inner > 0),       -- MLP width, 4 * n_embd for GPT-2
    n_positions         int  NOT NULL CHECK (n_positions > 0),   -- context length
    n_vocab             int  NOT NULL CHECK (n_vocab > 0),
    layer_norm_epsilon  float8 NOT NULL,
    dtype               text NOT NULL CHECK (dtype IN ('float32', 'float16')),
    source              text NOT NULL,
    loaded_at           timestamptz NOT NULL DEFAULT now(),
    -- the layout of the weight tables it was loaded with (sql/20_model_tables.sql); a model
    -- loaded by an older gpt2sql has to be loaded again (gpt2.use_model says so)
    layout              int  NOT NULL DEFAULT 1,
    -- AdamW steps taken on these weights since they were loaded or copied (sql/99_train.sql);
    -- its moments live in the model's schema
    step                int  NOT NULL DEFAULT 0
);

-- The model used when none is named: the one loaded most recently.
CREATE OR REPLACE FUNCTION gpt2.default_model() RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT name FROM gpt2.models ORDER BY loaded_at DESC, name LIMIT 1
$$;

-- Unrolling, for the kernels that read each weight row once for several positions
-- (sql/50_linear.sql): a query is written for one position with '@' for its number, inside
-- {{ }}; gpt2.unroll repeats each {{...}} for @ = 1..g, comma-separated, and writes g for %G.
--   gpt2.unroll('SELECT {{x@ * 2 AS y@}} -- %G', 3) = 'SELECT x1 * 2 AS y1, x2 * 2 AS y2, x3 * 2 AS y3 -- 3'
CREATE OR REPLACE FUNCTION gpt2.unroll(template text, g int) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    out text := replace(template, '%G', g::text);
    part text;
BEGIN
    FOR part IN SELECT m[1] FROM regexp_matches(out, '\{\{([^}]*)\}\}', 'g') AS m LOOP
        out := replace(out, '{{' || part || '}}',
                       (SELECT string_agg(replace(part, '@', i::text), ', ' ORDER BY i) FROM generate_series(1, g) AS i));
    END LOOP;
    RETURN out;
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

-- The gradient of one parameter tensor (training, stage 12), named as Hugging Face names it
-- ('h.3.mlp.c_fc.weight', 'ln_f.bias', ...): the rows of a Conv1D weight by output column
-- (dW[:, o], the layout of a model's conv1d rows), of wte and wpe by token and position, and
-- a bias or a layer norm's vector as one row.
CREATE TYPE gpt2.param_grad AS (name text, rows vector[]);
