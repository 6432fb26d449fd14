-- Stage 9: choosing the next token.
--
-- NumPy twin: tests/reference.py softmax(x) (and the sampling rules of Hugging Face's
-- generate(): temperature, then top-k, then top-p).
-- Input: x, the final hidden state [n_embd] of the last position.
--
--   temperature = 0      greedy: argmax of the logits, the lowest id on a tie
--   temperature > 0      p = softmax(logits / temperature)
--   top_k  (NULL = all)  keep the k most likely tokens
--   top_p  (1 = all)     keep the smallest set of most likely tokens whose mass >= top_p
--   u in [0, 1)          the draw: the first token (most likely first) at which the
--                        cumulative probability of the kept set passes u * its mass
--
-- subtle: greedy needs no softmax at all: ORDER BY w <#> x LIMIT 1 over the LM head.
-- subtle: the draw u is a pure function of (seed, step) (gpt2.uniform), not PostgreSQL's
--   random(), so a seed gives the same tokens on any connection, run or server.

-- A uniform number in [0, 1) from (seed, step): 52 bits of md5.
CREATE OR REPLACE FUNCTION gpt2.uniform(seed bigint, step int) RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT ('x' || substr(md5(seed::text || ':' || step::text), 1, 13))::bit(52)::bigint / 4503599627370496.0
$$;

-- The next-token distribution after temperature, top-k and top-p, most likely first.
CREATE OR REPLACE FUNCTION gpt2.next_token_probs(x vector, temperature float8 DEFAULT 1,
                                                 top_k int DEFAULT NULL, top_p float8 DEFAULT 1)
RETURNS TABLE (rank int, token int, logit float8, prob float8)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF NOT temperature > 0 THEN
        RAISE EXCEPTION 'temperature must be > 0 for a distribution (0 means greedy), got %', temperature;
    END IF;
    RETURN QUERY
    WITH top AS (                                       -- [top_k] most likely first (all when NULL)
        SELECT l.token, l.logit FROM gpt2.logits(x) l ORDER BY l.logit DESC, l.token LIMIT top_k
    ), scaled AS (                                      -- exp((logit - max) / T); the max is in `top`
        SELECT t.token, t.logit, exp(greatest((t.logit - max(t.logit) OVER ()) / temperature, -700)) AS e
        FROM top t
    ), cumulative AS (                                  -- one pass in rank order: running and total mass
        SELECT t.token, t.logit, t.e, row_number() OVER w AS rank, sum(t.e) OVER w AS cum, sum(t.e) OVER () AS z
        FROM scaled t WINDOW w AS (ORDER BY t.logit DESC, t.token ROWS UNBOUNDED PRECEDING)
    ), nucleus AS (                                     -- mass ranked before a token < top_p: keep it
        SELECT c.* FROM cumulative c WHERE c.cum - c.e < top_p * c.z
    )
    SELECT n.rank::int, n.token, n.logit, n.e / (SELECT max(k.cum) FROM nucleus k)   -- renormalized over the kept set
    FROM nucleus n ORDER BY n.rank;
END
$$;

CREATE OR REPLACE FUNCTION gpt2.sample(x vector, temperature float8, top_k int, top_p float8, u float8)
RETURNS int
LANGUAGE plpgsql STABLE AS $$
DECLARE
    chosen int;
BEGIN
    IF temperature = 0 THEN
        SELECT l.token INTO chosen FROM gpt2.logits(x) l ORDER BY l.logit DESC, l.token LIMIT 1;
        RETURN chosen;
    END IF;
    SELECT c.token INTO chosen FROM (
        SELECT p.rank, p.token, sum(p.prob) OVER (ORDER BY p.rank) AS cdf
        FROM gpt2.next_token_probs(x, temperature, top_k, top_p) p) c
    WHERE c.cdf > u ORDER BY c.rank LIMIT 1;
    IF chosen IS NULL THEN   -- u just under 1 and rounding: the least likely kept token
        SELECT p.token INTO chosen FROM gpt2.next_token_probs(x, temperature, top_k, top_p) p
        ORDER BY p.rank DESC LIMIT 1;
    END IF;
    RETURN chosen;
END
$$;
