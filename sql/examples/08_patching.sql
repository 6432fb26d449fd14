-- Example 8: activation patching: where does the model keep who gets the drink?
--   gpt2sql psql -v clean='When Mary and John went to the store, John gave a drink to' \
--                -v corrupted='When John and Mary went to the store, John gave a drink to' \
--                -v answer=' Mary' -v wrong=' John' -f sql/examples/08_patching.sql
\if :{?clean}
\else
\set clean 'When Mary and John went to the store, John gave a drink to'
\endif
\if :{?corrupted}
\else
\set corrupted 'When John and Mary went to the store, John gave a drink to'
\endif
\if :{?answer}
\else
\set answer ' Mary'
\endif
\if :{?wrong}
\else
\set wrong ' John'
\endif
SELECT name, n_layer, n_head FROM gpt2.use_model();

-- The indirect object: after the clean prompt, a model that follows the story says " Mary"
-- (the one who did not give the drink), not " John". The corrupted prompt swaps the names
-- of the first clause: then " John" is the one to say. logit(answer) - logit(wrong) at the
-- last position, for each (GPT-2 124M: about +3.5 and -3.5; a random model: anything).
SELECT 'clean' AS prompt, round(gpt2.logit_diff(:'clean', :'answer', :'wrong')::numeric, 3) AS logit_diff
UNION ALL
SELECT 'corrupted', round(gpt2.logit_diff(:'corrupted', :'answer', :'wrong')::numeric, 3);

-- Patching: the corrupted prompt again, with ONE activation of the clean run put back. Where
-- that moves logit_diff toward the clean run's, the activation carries the answer. First the
-- residual stream entering each layer, at each position: a row per position, the layers
-- left to right (each: logit_diff minus the corrupted run's).
CREATE TEMPORARY TABLE patched AS
SELECT *, logit_diff - (SELECT gpt2.logit_diff(:'corrupted', :'answer', :'wrong')) AS change
FROM gpt2.patch_sweep(:'clean', :'corrupted', :'answer', :'wrong', 'resid_pre');

-- (Each number in 5 characters: +1.23, and +12.3 for larger ones.)
SELECT p.pos, to_json(gpt2.decode_bytes(v.bytes)) AS token,
       string_agg(lpad(to_char(round(p.change::numeric, 2), 'FMS990.00'), 5), ' ' ORDER BY p.layer)
           AS "change, layer 0 1 2 ..."
FROM patched p JOIN gpt2.vocab v ON v.id = (gpt2.tokenize(:'corrupted'))[p.pos + 1]
GROUP BY p.pos, v.bytes ORDER BY p.pos;

-- Each head's output (at every position) from the clean run: a row per layer, the heads
-- left to right.
CREATE TEMPORARY TABLE patched_heads AS
SELECT *, logit_diff - (SELECT gpt2.logit_diff(:'corrupted', :'answer', :'wrong')) AS change
FROM gpt2.patch_sweep(:'clean', :'corrupted', :'answer', :'wrong', 'head');

SELECT layer, string_agg(lpad(to_char(round(change::numeric, 2), 'FMS990.00'), 5), ' ' ORDER BY head)
           AS "change, head 0 1 2 ..."
FROM patched_heads GROUP BY layer ORDER BY layer;

-- Ablation, the other way round: the clean prompt with the head that mattered most knocked
-- out (its output set to 0, then to its mean over the positions): how much of the answer
-- is left? gpt2.intervene gives all the logits at the last position (token id + 1: SQL
-- arrays count from 1).
WITH top AS (SELECT layer, head FROM patched_heads ORDER BY abs(change) DESC, layer, head LIMIT 1),
ids AS (SELECT (gpt2.tokenize(:'answer'))[1] + 1 AS a, (gpt2.tokenize(:'wrong'))[1] + 1 AS w)
SELECT t.layer, t.head, mode, round((l[ids.a] - l[ids.w])::numeric, 3) AS logit_diff
FROM top t, ids,
     LATERAL (VALUES ('none', '[]'::jsonb),
                     ('zero', jsonb_build_array(jsonb_build_object('layer', t.layer, 'head', t.head))),
                     ('mean', jsonb_build_array(jsonb_build_object('layer', t.layer, 'head', t.head, 'mode', 'mean'))))
         AS a(mode, ablate),
     LATERAL (SELECT gpt2.intervene(:'clean', a.ablate) AS l) AS r;

DROP TABLE patched, patched_heads;
