-- Stage 9: from the last hidden state to the next token.
--
-- NumPy twin: tests/reference.py softmax(x) (and the sampling rules of Hugging Face's
-- generate(): temperature, then top-k, then top-p).
-- Input: the logits [n_vocab] of the last position (gpt2.head, stage 8b).
--
--   temperature = 0      greedy: argmax of the logits, the lowest id on a tie
--   temperature > 0      p = softmax(logits / temperature)
--   top_k  (NULL = all)  keep the k most likely tokens
--   top_p  (1 = all)     keep the smallest set of most likely tokens whose mass >= top_p
--   u in [0, 1)          the draw: the first token (most likely first) at which the
--                        cumulative probability of the kept set passes u * its mass
--   logprob              log softmax(logits)[token]: the model's own distribution, before
--                        temperature, top-k and top-p (OpenAI's logprobs convention)
--
-- subtle: the draw u is a pure function of (seed, step) (gpt2.uniform), not PostgreSQL's
--   random(), so a seed gives the same tokens on any connection, run or server.
-- subtle: token ids are 0-based, array subscripts 1-based: logits[token + 1].

-- A uniform number in [0, 1) from (seed, step): 52 bits of md5.
CREATE OR REPLACE FUNCTION gpt2.uniform(seed bigint, step int) RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT ('x' || substr(md5(seed::text || ':' || step::text), 1, 13))::bit(52)::bigint / 4503599627370496.0
$$;

-- The distribution sampled from, after temperature, top-k and top-p: most likely first,
-- the probabilities renormalized over the kept tokens.
CREATE OR REPLACE FUNCTION gpt2.distribution(logits float8[], temperature float8 DEFAULT 1,
                                             top_k int DEFAULT NULL, top_p float8 DEFAULT 1)
RETURNS TABLE (rank int, token int, logit float8, prob float8)
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF NOT (temperature > 0 AND temperature < 'Infinity') THEN
        RAISE EXCEPTION 'temperature must be > 0 and finite for a distribution (0 means greedy), got %', temperature;
    END IF;
    RETURN QUERY
    WITH top AS (                                       -- [top_k] most likely first (all when NULL)
        SELECT (u.t - 1)::int AS token, u.l AS logit FROM unnest(logits) WITH ORDINALITY AS u(l, t)
        ORDER BY u.l DESC, u.t LIMIT top_k
    ), scaled AS (                                      -- exp((logit - max) / T); the max is in `top`
        -- subtle: clamp before dividing: (logit - max) / 1e-308 overflows float8
        SELECT t.token, t.logit, exp(greatest(t.logit - max(t.logit) OVER (), -700 * temperature) / temperature) AS e
        FROM top t
    ), cumulative AS (                                  -- one pass in rank order: running and total mass
        SELECT t.token, t.logit, t.e, row_number() OVER w AS rank, sum(t.e) OVER w AS cum, sum(t.e) OVER () AS z
        FROM scaled t WINDOW w AS (ORDER BY t.logit DESC, t.token ROWS UNBOUNDED PRECEDING)
    ), nucleus AS (                                     -- mass ranked before a token < top_p: keep it
        SELECT c.* FROM cumulative c                    -- (top_p = 1 keeps all: no rounding at the tail)
        WHERE top_p >= 1 OR c.cum - c.e < top_p * c.z
    )
    SELECT n.rank::int, n.token, n.logit, n.e / (SELECT max(k.cum) FROM nucleus k)   -- renormalized over the kept set
    FROM nucleus n ORDER BY n.rank;
END
$$;

-- The token drawn with u from the distribution above (greedy when temperature = 0).
CREATE OR REPLACE FUNCTION gpt2.choose(logits float8[], temperature float8, top_k int, top_p float8, u float8)
RETURNS int
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    chosen int;
BEGIN
    IF temperature = 0 THEN
        RETURN gpt2.argmax(logits);
    END IF;
    SELECT c.token INTO chosen FROM (
        SELECT p.rank, p.token, sum(p.prob) OVER (ORDER BY p.rank) AS cdf
        FROM gpt2.distribution(logits, temperature, top_k, top_p) p) c
    WHERE c.cdf > u ORDER BY c.rank LIMIT 1;
    IF chosen IS NULL THEN   -- u just under 1 and rounding: the least likely kept token
        SELECT p.token INTO chosen FROM gpt2.distribution(logits, temperature, top_k, top_p) p ORDER BY p.rank DESC LIMIT 1;
    END IF;
    RETURN chosen;
END
$$;

-- Greedy decoding's token and log sum exp in ONE pass over the logits (gpt2.argmax and
-- gpt2.logsumexp take three): a batch's step pays it for every sequence. The sum is kept
-- relative to the running maximum and rescaled when that grows (rarely, past the first few).
CREATE TYPE gpt2.greedy_pick AS (id int, lse float8);
CREATE OR REPLACE FUNCTION gpt2.greedy_lse(logits float8[]) RETURNS gpt2.greedy_pick
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    m float8 := '-Infinity';
    s float8 := 0;
    best int;
    i int := 0;
    l float8;
BEGIN
    FOREACH l IN ARRAY logits LOOP                   -- any shape: a row logits[i:i] too
        IF l > m OR best IS NULL THEN                -- the lowest id on a tie, as gpt2.argmax
            s := s * exp(greatest(m - l, -700)) + 1; -- (exp() raises an error on underflow)
            m := l; best := i;
        ELSE
            s := s + exp(greatest(l - m, -700));
        END IF;
        i := i + 1;
    END LOOP;
    RETURN ROW(best, m + ln(s));
END
$$;

-- The n most likely tokens with their log-probabilities (OpenAI's top_logprobs), as JSON:
-- [{"id": 15496, "text": "Hello", "logprob": -0.31}, ...]; lse = gpt2.logsumexp(logits).
CREATE OR REPLACE FUNCTION gpt2.top_logprobs(logits float8[], n int, lse float8) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT coalesce(jsonb_agg(jsonb_build_object('id', t.token, 'text', gpt2.decode_bytes(v.bytes), 'logprob', t.l - lse)
                              ORDER BY t.l DESC, t.token), '[]')
    FROM (SELECT (u.t - 1)::int AS token, u.l FROM unnest(logits) WITH ORDINALITY AS u(l, t)
          ORDER BY u.l DESC, u.t LIMIT n) AS t
    LEFT JOIN gpt2.vocab v ON v.id = t.token
$$;

-- The next-token distribution from a final hidden state (psql, sql/examples/04).
CREATE OR REPLACE FUNCTION gpt2.next_token_probs(x vector, temperature float8 DEFAULT 1,
                                                 top_k int DEFAULT NULL, top_p float8 DEFAULT 1)
RETURNS TABLE (rank int, token int, logit float8, prob float8)
LANGUAGE sql STABLE AS $$
    SELECT * FROM gpt2.distribution(gpt2.head(ARRAY[x]), temperature, top_k, top_p)
$$;

CREATE OR REPLACE FUNCTION gpt2.sample(x vector, temperature float8, top_k int, top_p float8, u float8)
RETURNS int
LANGUAGE sql STABLE AS $$
    SELECT gpt2.choose(gpt2.head(ARRAY[x]), temperature, top_k, top_p, u)
$$;
