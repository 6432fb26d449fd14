-- Example 6: the logit lens: what the model would predict if it stopped after each layer.
--   gpt2sql psql -v prompt='The cat sat on the mat because it' -f sql/examples/06_logit_lens.sql
\if :{?prompt}
\else
\set prompt 'The cat sat on the mat because it'
\endif
SELECT name, n_layer FROM gpt2.use_model();

-- The residual stream before each block (layer 0 is the embeddings) and after the last one
-- (layer n_layer: the model's output), read out through the final layer norm and the LM
-- head: top 3 of softmax(ln_f(residual) @ wte^T) at every position. One run of the model.
CREATE TEMPORARY TABLE lens AS SELECT * FROM gpt2.logit_lens(:'prompt', k => 3);

-- The top token at every layer: how the prediction forms layer by layer. A row per position
-- and run of 3 layers (GPT-2 124M has 13 of them, 0..12: one row would not fit a terminal).
-- Tokens in JSON quotes, so that spaces show ("\n" is a newline).
SELECT l.pos, to_json(gpt2.decode_bytes(v.bytes)) AS token,
       CASE WHEN min(l.layer) = max(l.layer) THEN min(l.layer)::text
            ELSE min(l.layer) || '-' || max(l.layer) END AS layers,
       string_agg(format('%s: %s %s', l.layer, to_json(l.text), round(l.prob::numeric, 2)), '  ' ORDER BY l.layer)
           AS top_token
FROM lens l JOIN gpt2.vocab v ON v.id = (gpt2.tokenize(:'prompt'))[l.pos + 1]
WHERE l.rank = 1
GROUP BY l.pos, v.bytes, l.layer / 3
ORDER BY l.pos, min(l.layer);

-- At the last position, the next token: the top 3 of each layer.
SELECT layer, rank, token AS id, to_json(text) AS text, round(prob::numeric, 4) AS probability
FROM lens WHERE pos = (SELECT max(pos) FROM lens)
ORDER BY layer, rank;

DROP TABLE lens;
