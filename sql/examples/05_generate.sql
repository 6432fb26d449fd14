-- Example 5: a whole generation, with no Python involved.
--   gpt2sql psql -v prompt='Happy New Year! I wish' -f sql/examples/05_generate.sql
\if :{?prompt}
\else
\set prompt 'Happy New Year! I wish'
\endif

-- Greedy (temperature 0): the same tokens every time. One row per generated token.
SELECT * FROM gpt2.generate(:'prompt', max_tokens => 20, temperature => 0);

-- Sampled, reproducibly: temperature 0.8, nucleus 0.95, a fixed seed; the text in one piece
-- (a long line: psql's \pset format wrapped folds it to the terminal).
SELECT :'prompt' || gpt2.complete(:'prompt', max_tokens => 20, temperature => 0.8, top_p => 0.95, seed => 42)
       AS continuation;

-- Token by token, as the CLI streams it: one round trip per token.
SELECT gpt2.generate_start(:'prompt', max_tokens => 5, temperature => 0);
SELECT step, id, text, done FROM gpt2.generate_next();
SELECT step, id, text, done FROM gpt2.generate_next();
SELECT step, id, text, done FROM gpt2.generate_next();
