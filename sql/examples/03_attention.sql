-- Example 3: one head's attention matrix in the first block: who looks at whom.
--   gpt2sql psql -v prompt='The cat sat on the mat because it' -v head=0 -f sql/examples/03_attention.sql
\if :{?prompt}
\else
\set prompt 'The cat sat on the mat because it'
\endif
\if :{?head}
\else
\set head 0
\endif
SELECT name FROM gpt2.use_model();

-- softmax(q k^T / sqrt(d_head)) for head :head of layer 0, with the causal mask: row t
-- (the query) attends to columns s <= t; each row sums to 1.
WITH m AS (SELECT * FROM gpt2.current_model()),
ids AS (SELECT gpt2.tokenize(:'prompt') AS ids),
qkv AS (                                     -- [n_seq, 3*n_embd] = c_attn(ln_1(embeddings))
    SELECT u.t, u.v FROM ids, unnest(gpt2.linear('attn.c_attn', 0, gpt2.ln('ln_1', 0, gpt2.embed(ids.ids, 0))))
         WITH ORDINALITY AS u(v, t)
), heads AS (                                -- this head's slice of q and k
    SELECT t, subvector(v, :head * (m.n_embd / m.n_head) + 1, m.n_embd / m.n_head) AS q,
              subvector(v, m.n_embd + :head * (m.n_embd / m.n_head) + 1, m.n_embd / m.n_head) AS k,
           m.n_embd / m.n_head AS d
    FROM qkv, m
), scores AS (
    SELECT a.t AS query, b.t AS key, -(a.q <#> b.k) / sqrt(a.d) AS s
    FROM heads a JOIN heads b ON b.t <= a.t
), shifted AS (                              -- exp(s - max), the max taken per query row
    SELECT query, key, exp(greatest(s - max(s) OVER (PARTITION BY query), -80)) AS e FROM scores
), weights AS (                              -- softmax: each row sums to 1
    SELECT query, key, e / sum(e) OVER (PARTITION BY query) AS p FROM shifted
)
SELECT query - 1 AS pos, gpt2.decode_bytes(v.bytes) AS token,
       string_agg(to_char(p, '0.00'), ' ' ORDER BY key) AS attention_to_positions_0_to_pos
FROM weights JOIN ids ON true JOIN gpt2.vocab v ON v.id = ids.ids[query]
GROUP BY query, v.bytes ORDER BY query;
