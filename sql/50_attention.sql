-- Stage 5: causal multi-head self-attention over the KV cache.
--
-- NumPy twin: tests/reference.py attention(q, k, v, mask) and mha(x, c_attn, c_proj, n_head)
-- (the projections c_attn / c_proj are gpt2.linear, called by gpt2.block).
-- Input  qkv: vector[] [n_seq] of [3*n_embd] for the NEW positions pos0 .. pos0+n_seq-1.
-- Output      vector[] [n_seq] of [n_embd], the heads' outputs side by side.
--   attention(q, k, v) = softmax(q k^T / sqrt(d_head) + causal mask) v     per head
--
-- The KV cache is a temporary table, so it belongs to this connection alone: concurrent
-- generations never see each other's, and it disappears with the connection. Each call
-- appends the new positions' keys and values (one row per layer, head and position) and
-- attends over everything cached for the layer: a prefill passes the whole prompt, a
-- decode step one token, and both run this same code.
--
-- subtle: causal mask = the join condition c.pos <= q.pos (a position sees itself and
--   the past), so the masked scores are never computed rather than set to -inf.
-- subtle: softmax subtracts the row maximum before exp(), or large scores overflow; and
--   PostgreSQL RAISES an error on underflow (exp(-800), or a float8 too small for real)
--   instead of returning 0, so the exponent is clamped at -80: a weight of 1.8e-35 next
--   to the maximum's 1, far below float32's resolution, and still a normal real.

CREATE OR REPLACE FUNCTION gpt2.kv_reset() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF to_regclass('pg_temp.kv_cache') IS NULL THEN
        CREATE TEMPORARY TABLE kv_cache (
            layer int NOT NULL, head int NOT NULL, pos int NOT NULL,
            k vector NOT NULL,            -- [d_head]
            v vector NOT NULL,            -- [d_head]
            PRIMARY KEY (layer, head, pos)
        );
    ELSE
        TRUNCATE kv_cache;
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION gpt2.mha(layer int, qkv vector[], pos0 int) RETURNS vector[]
LANGUAGE plpgsql AS $$
DECLARE
    m gpt2.models := gpt2.current_model();
    d int := m.n_embd / m.n_head;                         -- d_head
    out vector[];
BEGIN
    INSERT INTO kv_cache (layer, head, pos, k, v)       -- [n_seq, n_head] new keys and values
    SELECT mha.layer, h, pos0 + u.t - 1,
           subvector(u.qkv, m.n_embd + h * d + 1, d),
           subvector(u.qkv, 2 * m.n_embd + h * d + 1, d)
    FROM unnest(qkv) WITH ORDINALITY AS u(qkv, t), generate_series(0, m.n_head - 1) AS h;

    WITH q AS MATERIALIZED (                            -- [n_seq, n_head, d_head] queries
        SELECT u.t, pos0 + u.t - 1 AS pos, h, subvector(u.qkv, h * d + 1, d) AS q
        FROM unnest(qkv) WITH ORDINALITY AS u(qkv, t), generate_series(0, m.n_head - 1) AS h
    ), scores AS (                                      -- [n_seq, n_head, n_past] q.k / sqrt(d_head), causal
        SELECT q.t, q.h, c.v, -(c.k <#> q.q) / sqrt(d) AS s
        FROM q JOIN kv_cache c ON c.layer = mha.layer AND c.head = q.h AND c.pos <= q.pos
    ), shifted AS (                                     -- exp(s - max s) per (position, head)
        SELECT t, h, v, exp(greatest(s - max(s) OVER w, -80)) AS e FROM scores WINDOW w AS (PARTITION BY t, h)
    ), softmax AS (                                     -- [n_seq, n_head, n_past] attention weights
        SELECT t, h, v, e / sum(e) OVER (PARTITION BY t, h) AS p FROM shifted
    ), heads AS (                                       -- [n_seq, n_head, d_head] weighted sum of values
        SELECT t, h, sum(v * gpt2.fill(p, d))::real[] AS o FROM softmax GROUP BY t, h
    ), merged AS (                                      -- [n_seq, n_embd] heads side by side
        SELECT t, array_agg(o ORDER BY h) AS o FROM heads GROUP BY t
    )
    SELECT array_agg(ARRAY(SELECT unnest(merged.o))::vector ORDER BY t) INTO out FROM merged;
    RETURN out;
END
$$;
