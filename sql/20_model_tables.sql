-- Stage 2: where a model's weights live.
--
-- NumPy twin: tests/reference.py load() (the same tensors, as arrays).
-- Each loaded model gets a schema of its own (gpt2.models.schema_name) holding:
--
--   wvec                         domain: the weights' pgvector type, vector (float32) or halfvec (float16)
--   wte(token, w wvec)           [n_vocab, n_embd]      token embeddings; also the LM head (tied)
--   wpe(pos, w wvec)             [n_positions, n_embd]  position embeddings
--   ln(tensor, layer, g, b)      [n_embd] each          'ln_1', 'ln_2' per layer; 'ln_f' at layer 0
--   conv1d(tensor, layer, chunk, col, w wvec, b)
--                                one row per OUTPUT column (and input chunk) of each Conv1D
--                                weight [in, out]: w = W[chunk*width : (chunk+1)*width, col],
--                                b = bias[col] on chunk 0 (0 on the others), tensor in
--                                'attn.c_attn', 'attn.c_proj', 'mlp.c_fc', 'mlp.c_proj' (the
--                                checkpoint's names); width = gpt2.chunk_dims(in, dtype)
--
-- The stage functions name these tables without a schema: gpt2.use_model() puts the
-- model's schema first on the search path, and PostgreSQL re-plans cached statements
-- when the search path changes, so one set of functions serves every model and dtype.
--
-- subtle: a row per output column makes a matrix-vector product one pgvector inner
--   product per row (`w <#> x` is the NEGATIVE inner product). Every row must fit in one
--   8 kB page (STORAGE PLAIN): a vector stored out of line (TOAST) is fetched from the
--   TOAST table on every read, 2-4x slower. Inputs wider than a page holds (mlp.c_proj
--   reads n_inner = 4*n_embd: 3072 floats are 12 kB) are cut into equal chunks.
-- subtle: ln keeps the default storage: its two n_embd vectors exceed a page from
--   gpt2-medium's width on (2 x 1024 floats), and it is read once per layer, not per row.

-- The layout version this file creates (gpt2.models.layout); bump it when the tables change.
CREATE OR REPLACE FUNCTION gpt2.layout_version() RETURNS int
LANGUAGE sql IMMUTABLE AS $$ SELECT 2 $$;

-- The width of the input chunks of a Conv1D weight with n_in inputs: the fewest equal
-- chunks whose rows fit in a page: up to 2000 float32 (8 kB) or 4000 float16 per row.
--   gpt2.chunk_dims(3072, 'float16') = 3072;  gpt2.chunk_dims(3072, 'float32') = 1536
CREATE OR REPLACE FUNCTION gpt2.chunk_dims(n_in int, dtype text) RETURNS int
LANGUAGE sql IMMUTABLE AS $$
    SELECT ceil(n_in::numeric / ceil(n_in::numeric / CASE dtype WHEN 'float16' THEN 4000 ELSE 2000 END))::int
$$;

CREATE OR REPLACE FUNCTION gpt2.create_model_tables(schema_name text, dtype text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    vtype text := CASE dtype WHEN 'float32' THEN 'vector' WHEN 'float16' THEN 'halfvec' END;
BEGIN
    IF vtype IS NULL THEN
        RAISE EXCEPTION 'dtype must be float32 or float16, not %', dtype;
    END IF;
    EXECUTE format('CREATE SCHEMA %I', schema_name);
    EXECUTE format('CREATE DOMAIN %I.wvec AS %s', schema_name, (SELECT format('%I.%I', n.nspname, t.typname)
        FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE t.oid = to_regtype(vtype)));
    EXECUTE format('CREATE TABLE %1$I.wte (token int NOT NULL, w %1$I.wvec NOT NULL)', schema_name);
    EXECUTE format('CREATE TABLE %1$I.wpe (pos int NOT NULL, w %1$I.wvec NOT NULL)', schema_name);
    EXECUTE format('CREATE TABLE %I.ln (tensor text NOT NULL, layer int NOT NULL, g vector NOT NULL, b vector NOT NULL)', schema_name);
    EXECUTE format('CREATE TABLE %1$I.conv1d (tensor text NOT NULL, layer int NOT NULL, chunk int NOT NULL,
                    col int NOT NULL, w %1$I.wvec NOT NULL, b real NOT NULL)', schema_name);
    EXECUTE format('ALTER TABLE %I.wte ALTER COLUMN w SET STORAGE PLAIN', schema_name);
    EXECUTE format('ALTER TABLE %I.wpe ALTER COLUMN w SET STORAGE PLAIN', schema_name);
    EXECUTE format('ALTER TABLE %I.conv1d ALTER COLUMN w SET STORAGE PLAIN', schema_name);
END
$$;

-- After the bulk COPY: keys (built once, faster than maintaining them row by row) and statistics.
CREATE OR REPLACE FUNCTION gpt2.finish_model_tables(schema_name text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('ALTER TABLE %I.wte ADD PRIMARY KEY (token)', schema_name);
    EXECUTE format('ALTER TABLE %I.wpe ADD PRIMARY KEY (pos)', schema_name);
    EXECUTE format('ALTER TABLE %I.ln ADD PRIMARY KEY (tensor, layer)', schema_name);
    EXECUTE format('ALTER TABLE %I.conv1d ADD PRIMARY KEY (tensor, layer, chunk, col)', schema_name);
    EXECUTE format('ANALYZE %I.wte, %I.wpe, %I.ln, %I.conv1d', schema_name, schema_name, schema_name, schema_name);
END
$$;

-- Make `name` (default: gpt2.default_model()) the model the stage functions read, for the
-- session, or with is_local until the end of the transaction (what generation uses).
-- Returns the model's row; a one-line error when there is no such model, or when this
-- role may not read it.
CREATE OR REPLACE FUNCTION gpt2.use_model(name text DEFAULT NULL, is_local boolean DEFAULT false) RETURNS gpt2.models
LANGUAGE plpgsql AS $$
DECLARE
    m gpt2.models;
    wanted text := coalesce(name, gpt2.default_model());
BEGIN
    IF wanted IS NULL THEN
        RAISE EXCEPTION 'no model is loaded' USING HINT = 'load one: gpt2sql load gpt2 (or gpt2sql load ./checkpoint-dir)';
    END IF;
    SELECT * INTO m FROM gpt2.models WHERE models.name = wanted;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no model named "%" is loaded (loaded: %)', wanted,
            coalesce((SELECT string_agg(models.name, ', ' ORDER BY models.name) FROM gpt2.models), 'none');
    END IF;
    IF m.layout <> gpt2.layout_version() THEN
        RAISE EXCEPTION 'model "%" was loaded by an older gpt2sql (table layout %, this one reads %)',
            m.name, m.layout, gpt2.layout_version()
            USING HINT = format('load it again: gpt2sql load %s --name %s --dtype %s', m.source, m.name, m.dtype);
    END IF;
    -- subtle: without USAGE on the schema, search_path skips it silently and every stage
    -- function would fail later with a misleading "relation does not exist"
    IF NOT has_schema_privilege(m.schema_name, 'USAGE')
       OR NOT has_table_privilege(format('%I.wte', m.schema_name), 'SELECT') THEN
        RAISE EXCEPTION 'permission denied for model "%" (schema %)', m.name, m.schema_name
            USING ERRCODE = 'insufficient_privilege',
                  HINT = format('its owner can run: GRANT USAGE ON SCHEMA %1$I TO %2$I; GRANT SELECT ON ALL TABLES IN SCHEMA %1$I TO %2$I;',
                                m.schema_name, current_user);
    END IF;
    PERFORM set_config('search_path', format('%I, gpt2, %I, public',
        m.schema_name, (SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'vector')), is_local);
    RETURN m;
END
$$;

-- The model chosen by gpt2.use_model(): its schema is first on the search path. With none
-- chosen (a fresh psql session), the default model, for the rest of the transaction.
CREATE OR REPLACE FUNCTION gpt2.current_model() RETURNS gpt2.models
LANGUAGE plpgsql STABLE AS $$
DECLARE
    m gpt2.models;
    -- model schemas are [a-z0-9_], never quoted on the search path
    first text := btrim(split_part(current_setting('search_path'), ',', 1));
BEGIN
    SELECT * INTO m FROM gpt2.models WHERE schema_name = current_schema();
    IF FOUND THEN
        RETURN m;
    END IF;
    -- subtle: current_schema() skips a schema this role may not use: the model chosen last
    -- may still be first on the search path, and use_model() says what is missing
    SELECT * INTO m FROM gpt2.models WHERE schema_name = first;
    RETURN gpt2.use_model(m.name, true);   -- m.name NULL (nothing chosen): the default model
END
$$;
