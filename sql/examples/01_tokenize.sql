-- Example 1: byte-pair encoding, step by step (the essay's " Mississippilessly").
--   gpt2sql psql -f sql/examples/01_tokenize.sql
--   gpt2sql psql -v prompt='any text' -f sql/examples/01_tokenize.sql
\if :{?prompt}
\else
\set prompt ' Mississippilessly'
\endif

-- Every merge: which adjacent pair was joined, its rank (= merged id - 256), and the pieces
-- after it (step 0 spells the piece in bytes).
SELECT piece_no, step, pair, rank, merged_id, symbols FROM gpt2.tokenize_trace(:'prompt');

-- The result, and back again (byte-exact).
SELECT gpt2.tokenize(:'prompt') AS ids, gpt2.detokenize(gpt2.tokenize(:'prompt')) AS text;

-- Each token with its byte-level spelling (Ġ is the space byte) and its text.
SELECT t.ord, t.id, v.token, gpt2.decode_bytes(v.bytes) AS text
FROM unnest(gpt2.tokenize(:'prompt')) WITH ORDINALITY AS t(id, ord) JOIN gpt2.vocab v ON v.id = t.id
ORDER BY t.ord;
