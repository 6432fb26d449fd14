-- Example 4: the next-token distribution, and what temperature does to it.
--   gpt2sql psql -v prompt='Happy New Year! I wish' -f sql/examples/04_next_token.sql
\if :{?prompt}
\else
\set prompt 'Happy New Year! I wish'
\endif
SELECT name FROM gpt2.use_model();

-- The final hidden state of the last position (a prefill of the whole prompt) ...
CREATE TEMPORARY TABLE last_state AS
SELECT xs[array_upper(xs, 1)] AS x FROM gpt2.transformer(gpt2.tokenize(:'prompt'), 0) AS xs;

-- ... and the model's probabilities at three temperatures (low = sharper, high = flatter):
-- softmax(logits / T) over all n_vocab tokens (top_k NULL and top_p 1 keep every token), of
-- which the 10 most likely are shown. `cumulative` is their running sum: what is left up to
-- 1 belongs to the other tokens.
SELECT t.temperature, p.rank, p.token, gpt2.decode_bytes(v.bytes) AS text,
       round(p.logit::numeric, 3) AS logit, round(p.prob::numeric, 4) AS probability,
       round(p.cumulative::numeric, 4) AS cumulative
FROM last_state, (VALUES (0.5), (1.0), (2.0)) AS t(temperature),
     LATERAL (SELECT d.*, sum(d.prob) OVER (ORDER BY d.rank) AS cumulative
              FROM gpt2.next_token_probs(last_state.x, t.temperature, NULL, 1) AS d
              ORDER BY d.rank LIMIT 10) AS p
JOIN gpt2.vocab v ON v.id = p.token
ORDER BY t.temperature, p.rank;

-- Nucleus sampling (top-p = 0.9) keeps the most likely tokens until their probability
-- reaches 0.9: the first rank whose `cumulative` above reaches 0.9 (beyond the 10 shown
-- when no row does). The higher the temperature, the more tokens it takes.
SELECT t.temperature, count(*) AS tokens_in_nucleus
FROM last_state, (VALUES (0.5), (1.0), (2.0)) AS t(temperature),
     gpt2.next_token_probs(last_state.x, t.temperature, NULL, 0.9) AS p
GROUP BY t.temperature ORDER BY t.temperature;

DROP TABLE last_state;
