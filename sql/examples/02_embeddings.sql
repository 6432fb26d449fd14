-- Example 2: token + position embeddings, the input of the first block.
--   gpt2sql psql -v prompt='Happy New Year! I wish' -f sql/examples/02_embeddings.sql
\if :{?prompt}
\else
\set prompt 'Happy New Year! I wish'
\endif
SELECT name, n_layer, n_head, n_embd, dtype FROM gpt2.use_model();   -- the default model (or pass its name)

-- x[t] = wte[id] + wpe[t]: the first 3 of the n_embd numbers of each, a row per number.
SELECT u.t - 1 AS pos, u.id, gpt2.decode_bytes(v.bytes) AS token, d.i AS dim,
       (e.w::vector::real[])[d.i] AS wte, (p.w::vector::real[])[d.i] AS wpe, (x.x::real[])[d.i] AS x
FROM unnest(gpt2.tokenize(:'prompt')) WITH ORDINALITY AS u(id, t)
JOIN gpt2.vocab v ON v.id = u.id
JOIN wte e ON e.token = u.id
JOIN wpe p ON p.pos = u.t - 1
JOIN unnest(gpt2.embed(gpt2.tokenize(:'prompt'), 0)) WITH ORDINALITY AS x(x, t) ON x.t = u.t
CROSS JOIN generate_series(1, 3) AS d(i)
ORDER BY u.t, d.i;
