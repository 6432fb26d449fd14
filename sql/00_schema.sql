-- Stage 0: the schema every later stage lives in.
--
-- NumPy twin: none (bookkeeping).
-- gpt2.models holds one row per loaded checkpoint: its hyperparameters, read from the
-- checkpoint's config.json, and the schema that holds its weight tables. No stage
-- hard-codes a width, a head count or a vocabulary size: they all come from here.
--
-- Each file in sql/ is applied in name order, is safe to re-run (CREATE OR REPLACE,
-- IF NOT EXISTS) and runs as it is in psql (pgvector must be installed).

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
    loaded_at           timestamptz NOT NULL DEFAULT now()
);

-- The model used when none is named: the one loaded most recently.
CREATE OR REPLACE FUNCTION gpt2.default_model() RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT name FROM gpt2.models ORDER BY loaded_at DESC, name LIMIT 1
$$;
