-- Stage 0: upgrading a database that an earlier gpt2sql set up. Every upgrade step lives here.
--
-- NumPy twin: none (bookkeeping).
-- The schema is applied again whenever the files of sql/ change (cli/db.py ensure_schema,
-- one transaction under an advisory lock). Tables keep their data; code does not: every
-- function, aggregate and type of the gpt2 schema is dropped here and created again by the
-- files after this one, so no signature of an earlier release survives beside the current
-- one (CREATE OR REPLACE cannot change a function's arguments or result). On a fresh
-- database there is nothing to do.
--
-- subtle: a table column whose type is one of ours would stop this (DROP TYPE without
--   CASCADE); the gpt2 schema's tables use only built-in types and pgvector's.

DO $$
DECLARE
    r record;
BEGIN
    IF to_regnamespace('gpt2') IS NULL THEN
        RETURN;
    END IF;
    -- columns that tables of earlier releases lack
    IF to_regclass('gpt2.models') IS NOT NULL THEN
        ALTER TABLE gpt2.models ADD COLUMN IF NOT EXISTS layout int NOT NULL DEFAULT 1;
        ALTER TABLE gpt2.models ADD COLUMN IF NOT EXISTS step int NOT NULL DEFAULT 0;
    END IF;
    -- gpt2.units of earlier releases had a primary key, which can keep units from the workers
    ALTER TABLE IF EXISTS gpt2.units DROP CONSTRAINT IF EXISTS units_pkey;
    FOR r IN SELECT p.oid::regprocedure AS f, p.prokind FROM pg_proc p
             WHERE p.pronamespace = 'gpt2'::regnamespace LOOP
        EXECUTE format('DROP %s %s', CASE r.prokind WHEN 'a' THEN 'AGGREGATE' WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END, r.f);
    END LOOP;
    -- one statement for all of them: they refer to each other
    FOR r IN SELECT string_agg(t.oid::regtype::text, ', ') AS types FROM pg_type t JOIN pg_class c ON c.oid = t.typrelid
             WHERE t.typnamespace = 'gpt2'::regnamespace AND t.typtype = 'c' AND c.relkind = 'c' HAVING count(*) > 0 LOOP
        EXECUTE 'DROP TYPE ' || r.types;
    END LOOP;
END
$$;
