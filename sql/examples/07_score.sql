-- Example 7: how likely the model finds each token of a text, and its perplexity.
--   gpt2sql psql -v prompt='The cat sat on the mat because it was warm.' -f sql/examples/07_score.sql
\if :{?prompt}
\else
\set prompt 'The cat sat on the mat because it was warm.'
\endif
SELECT name FROM gpt2.use_model();

-- Each token's log-probability given <|endoftext|> and the tokens before it, its rank among
-- all tokens (1 = the model's first choice) and the 3 tokens the model found most likely.
CREATE TEMPORARY TABLE scored AS SELECT * FROM gpt2.score(:'prompt', top => 3);

SELECT s.pos, to_json(s.text) AS token, round(s.logprob::numeric, 3) AS logprob, s.rank,
       (SELECT string_agg(format('%s %s', to_json(a ->> 'text'), round((a ->> 'logprob')::numeric, 2)), '  ')
        FROM jsonb_array_elements(s.alternatives) AS a) AS top_3
FROM scored s ORDER BY s.pos;

-- Perplexity = exp(mean negative log-probability): gpt2.perplexity (which scores the text
-- again), and the same from the table above.
SELECT round(gpt2.perplexity(:'prompt')::numeric, 3) AS perplexity,
       round(exp(-avg(logprob))::numeric, 3) AS from_the_table, count(*) AS tokens
FROM scored;

DROP TABLE scored;
