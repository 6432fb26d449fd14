-- Example 4: the next-token distribution, and what temperature does to it.
--   psql "$(gpt2sql db url)" -v prompt='Happy New Year! I wish' -f sql/examples/04_next_token.sql
\if :{?prompt}
\else
\set prompt 'Happy New Year! I wish'
\endif
SELECT name FROM gpt2.use_model();

-- The final hidden state of the last position (a prefill of the whole prompt) ...
CREATE TEMPORARY TABLE last_state AS
SELECT xs[array_upper(xs, 1)] AS x FROM gpt2.transformer(gpt2.tokenize(:'prompt'), 0) AS xs;

-- ... its 10 most likely next tokens at three temperatures (low = sharper, high = flatter).
SELECT t.temperature, p.rank, p.token, gpt2.decode_bytes(v.bytes) AS text,
       round(p.logit::numeric, 3) AS logit, round(p.prob::numeric, 4) AS probability
FROM last_state, (VALUES (0.5), (1.0), (2.0)) AS t(temperature),
     gpt2.next_token_probs(last_state.x, t.temperature, 10) AS p
JOIN gpt2.vocab v ON v.id = p.token
ORDER BY t.temperature, p.rank;

-- Nucleus (top-p = 0.9) at temperature 1: how many tokens carry 90% of the probability?
SELECT count(*) AS tokens_in_nucleus FROM last_state, gpt2.next_token_probs(last_state.x, 1.0, NULL, 0.9);

DROP TABLE last_state;
