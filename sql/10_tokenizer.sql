-- Stage 1: the tokenizer. Text -> GPT-2 token ids and back, exactly as OpenAI's tokenizer.
--
-- Python twin: OpenAI's encoder.py (tiktoken is the test reference):
--   pieces = regex.findall(pat, text)                       -> gpt2.pretokenize(text)
--   bpe(''.join(byte_encoder[b] for b in piece.encode()))   -> gpt2.bpe(pieces), and
--                                 gpt2.bpe_rounds(pieces) for long ones (same ids, fewer rounds)
--   encode(text)                                            -> gpt2.tokenize(text)
--   bytes(...).decode('utf-8', errors='replace')            -> gpt2.decode_bytes(bytea)
--   decode(ids)                                             -> gpt2.detokenize(ids)
-- Inputs:  gpt2.bytes_to_unicode [256], gpt2.vocab [n_vocab], gpt2.merges [n_merges]
--          (filled by loader/tokenizer.py with binary COPY); gpt2.unicode_class and
--          gpt2.pretokenizer (filled by this file, see the appendix).
-- Outputs: gpt2.tokenize(text) -> int[] [n_tokens]; gpt2.detokenize(int[]) -> text;
--          gpt2.tokenize_trace(text) -> one row per merge step, for reading in psql:
--            SELECT * FROM gpt2.tokenize_trace(' Mississippilessly');
--
-- Safe to re-run: CREATE ... IF NOT EXISTS, CREATE OR REPLACE; the appendix rewrites its
-- own two tables. Runs as it is in psql.

CREATE SCHEMA IF NOT EXISTS gpt2;

-- ---------------------------------------------------------------------------------------
-- Tables
-- ---------------------------------------------------------------------------------------

-- GPT-2's byte-to-unicode map: a printable stand-in character for each of the 256 bytes,
-- so that every vocabulary entry is a plain string (' ' is 'Ġ', '\n' is 'Ċ'); id is the
-- token of that character, where BPE starts (for GPT-2 not the byte itself: ' ' is 220).
CREATE TABLE IF NOT EXISTS gpt2.bytes_to_unicode (
    b   int  PRIMARY KEY CHECK (b BETWEEN 0 AND 255),
    ch  text NOT NULL UNIQUE CHECK (length(ch) = 1),
    id  int  NOT NULL
);

-- The vocabulary: token id -> its byte-level string (as in encoder.json) and raw bytes.
-- subtle: a token's bytes need not be valid UTF-8 on their own (byte-split tokens: '\xe2\x80'
-- is a token); join the bytes of a whole sequence before decoding (gpt2.detokenize).
CREATE TABLE IF NOT EXISTS gpt2.vocab (
    id     int   PRIMARY KEY,
    token  text  NOT NULL UNIQUE,
    bytes  bytea NOT NULL
);

-- (databases made before gpt2.bytes_to_unicode had its id column: add it, fill it)
ALTER TABLE gpt2.bytes_to_unicode ADD COLUMN IF NOT EXISTS id int;
UPDATE gpt2.bytes_to_unicode AS u SET id = v.id FROM gpt2.vocab AS v WHERE v.token = u.ch AND u.id IS NULL;

-- The merges: (left id, right id) -> merged id, in priority order (rank = line of vocab.bpe).
-- subtle: for GPT-2, merged_id = 256 + rank, but a pair whose concatenation is in the
-- vocabulary is not therefore a merge: only the pairs listed here are.
CREATE TABLE IF NOT EXISTS gpt2.merges (
    rank       int PRIMARY KEY,
    left_id    int NOT NULL,
    right_id   int NOT NULL,
    merged_id  int NOT NULL,
    pair       bigint GENERATED ALWAYS AS ((left_id::bigint << 32) | right_id) STORED  -- the probe key
);
-- The probe index of the BPE loop: each step looks up all adjacent pairs of a piece at
-- once (pair = ANY(keys): one index scan; on words of thousands of characters ~5x faster
-- than a join per pair, on short ones the same).
CREATE UNIQUE INDEX IF NOT EXISTS merges_pair ON gpt2.merges (pair) INCLUDE (rank, merged_id);

-- Which files are loaded (one row): the loader skips a reload of the same files.
CREATE TABLE IF NOT EXISTS gpt2.tokenizer_files (
    singleton      bool PRIMARY KEY DEFAULT true CHECK (singleton),
    vocab_file     text NOT NULL,
    vocab_sha256   text NOT NULL,
    merges_file    text NOT NULL,
    merges_sha256  text NOT NULL,
    n_vocab        int  NOT NULL,
    n_merges       int  NOT NULL,
    loaded_at      timestamptz NOT NULL DEFAULT now()
);

-- The pre-tokenizer's character classes as code point ranges: L = \p{L}, N = \p{N},
-- S = \s (Unicode White_Space). Filled by the appendix of this file.
CREATE TABLE IF NOT EXISTS gpt2.unicode_class (
    class  char(1) NOT NULL CHECK (class IN ('L', 'N', 'S')),
    lo     int     NOT NULL,
    hi     int     NOT NULL CHECK (hi >= lo),
    PRIMARY KEY (class, lo)
);

-- The pre-tokenizer's pattern, a PostgreSQL ARE built from gpt2.unicode_class (one row).
CREATE TABLE IF NOT EXISTS gpt2.pretokenizer (
    singleton  bool PRIMARY KEY DEFAULT true CHECK (singleton),
    pattern    text NOT NULL
);

-- ---------------------------------------------------------------------------------------
-- Pre-tokenizer: text -> pieces (words, numbers, punctuation runs, whitespace)
-- ---------------------------------------------------------------------------------------

-- GPT-2's pattern, with Perl semantics (the first alternative that matches wins):
--   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
-- PostgreSQL has no \p{L} or \p{N}, and its \s and [[:alpha:]] follow the database's
-- locale, so the classes are spelled out as code point ranges (gpt2.unicode_class).
-- subtle: a PostgreSQL alternation matches leftmost-LONGEST, not first-match. That gives
-- the same piece as Perl everywhere except the whitespace tail: longest, `\s+` would take
-- a whole run of spaces before a word, where Perl's `\s+(?!\S)` backtracks and leaves the
-- last space to the word ("\n    return" -> "\n   ", " return"). So the tail becomes
-- `\s+(?!\S)|\s`: a run at the end of the text -> the whole run; a run of n >= 2 before a
-- non-space -> n - 1; a single whitespace before a non-space -> itself (a single ' '
-- before a word is taken by ` ?\p{L}+`, which is longer). "'s" beats "'" (punctuation)
-- by length, as it does by order in Perl; contractions stay case-sensitive ("'LL" is not).
CREATE OR REPLACE FUNCTION gpt2.pretokenize(input text)
RETURNS TABLE (ord bigint, piece text)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT m.ord, m.match[1]
    FROM regexp_matches(input, (SELECT pattern FROM gpt2.pretokenizer), 'g') WITH ORDINALITY AS m(match, ord)
$$;

-- ---------------------------------------------------------------------------------------
-- BPE: pieces -> token ids, all distinct pieces advancing together in one recursive CTE
-- ---------------------------------------------------------------------------------------

-- Replace every non-overlapping occurrence of the pair (a, b) in ids by m, left to right:
-- merge_pair('{5,5,5,7}', 5, 5, 9) = '{9,5,7}'. Through the text form '<5><5><5><7>',
-- where replace() scans left to right exactly so; the brackets keep '<5><5>' from
-- matching inside '<15><5>'.
-- subtle: STABLE and not STRICT (array_to_string is STABLE, string_to_array not strict), so
-- that PostgreSQL inlines it into gpt2.bpe: 3x faster than calling it per row.
CREATE OR REPLACE FUNCTION gpt2.merge_pair(ids int[], a int, b int, m int)
RETURNS int[]
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT string_to_array(
               btrim(replace('<' || array_to_string(ids, '><') || '>',
                             '<' || a::text || '><' || b::text || '>',
                             '<' || m::text || '>'),
                     '<>'),
               '><')::int[]
$$;

-- One row per piece per step: step 0 holds the piece's byte tokens; each later step merges
-- the piece's lowest-rank adjacent pair, every non-overlapping occurrence left to right (as
-- encoder.py does; equivalent to one at a time, since any merge that uses the new token
-- ranks later); the last row of a piece (done) repeats the final ids.
-- Worked example, ' Mississippilessly' (12 steps; gpt2.tokenize_trace shows them all):
--   Ġ M i s s i s s i p p i l e s s l y  -> (i + s, rank 15) ->  Ġ M is s is s i p p i l e s s l y
--   -> ... ->  ĠMississ ipp iless ly  = [12732, 3974, 30608, 306]
CREATE OR REPLACE FUNCTION gpt2.bpe(pieces text[])
RETURNS TABLE (piece text, step int, rank int, left_id int, right_id int, merged_id int, ids int[], done bool)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
WITH RECURSIVE
-- byte_token: token id of each byte's stand-in character, indexed by byte + 1   [256]
byte_token AS MATERIALIZED (
    SELECT array_agg(id ORDER BY b) AS ids FROM gpt2.bytes_to_unicode
),
-- byte_split: each distinct piece as one token per UTF-8 byte                 [n_pieces]
byte_split AS (
    SELECT p.piece,
           ARRAY(SELECT bt.ids[get_byte(p.utf8, i) + 1] FROM generate_series(0, length(p.utf8) - 1) AS i ORDER BY i) AS ids
    FROM (SELECT DISTINCT x AS piece, convert_to(x, 'UTF8') AS utf8 FROM unnest(pieces) AS x) AS p, byte_token AS bt
),
-- walk: merge the lowest-rank pair of every unfinished piece, once per iteration
walk AS (
    SELECT s.piece, 0 AS step, NULL::int AS rank, NULL::int AS left_id, NULL::int AS right_id,
           NULL::int AS merged_id, s.ids, false AS done
    FROM byte_split AS s
    UNION ALL
    SELECT w.piece, w.step + 1, best.rank, best.left_id, best.right_id, best.merged_id,
           CASE WHEN best.rank IS NULL THEN w.ids
                ELSE gpt2.merge_pair(w.ids, best.left_id, best.right_id, best.merged_id) END,
           best.rank IS NULL
    FROM walk AS w
    LEFT JOIN LATERAL (
        -- best: the adjacent pair with the lowest rank, none when no pair is a merge   [1]
        SELECT m.rank, m.left_id, m.right_id, m.merged_id
        FROM gpt2.merges AS m
        WHERE m.pair = ANY (ARRAY(SELECT (w.ids[i]::bigint << 32) | w.ids[i + 1]
                                  FROM generate_series(1, cardinality(w.ids) - 1) AS i))
        ORDER BY m.rank
        LIMIT 1
    ) AS best ON true
    WHERE NOT w.done
)
SELECT * FROM walk
$$;

-- ---------------------------------------------------------------------------------------
-- BPE for long pieces: many merges per round
-- ---------------------------------------------------------------------------------------

-- gpt2.bpe merges one pair per round and probes every adjacent pair of the piece each
-- round: a piece of n bytes costs O(n) per round for up to n rounds, so one word of
-- 100,000 random letters took 86 s. gpt2.bpe_rounds gives the same ids in a few rounds
-- (for those letters: docs/performance.md, "Tokenizer", with the commands), each O(n), by
-- merging at once every pair that sequential BPE is certain to merge next at that place:
--
--   pair i = (t_i, t_i+1) of rank r is merged this round when
--   (1) r is lower than the ranks of pairs i-1 and i+1, and
--   (2) r is the lowest rank left in the piece, or no pair of lower rank lies within
--       reach: left of t_i, closer than the longest merge product that ends with t_i
--       (left_reach(t_i) bytes); right of t_i+1, closer than the longest merge product
--       that begins with t_i+1 (right_reach(t_i+1) bytes).
--
-- Why this is exact: sequential BPE applies merges in increasing rank (a merge that uses
-- a new token ranks after the merge that made it). Pair i is undone only if t_i or t_i+1
-- is first taken into another token by a merge of lower rank. Taking t_i from the left
-- means merging (Z, t_i) with Z built from the tokens left of it; the first merge inside
-- Z joins two tokens that are adjacent now, has a lower rank than r, and lies within Z,
-- so within left_reach(t_i) bytes of t_i's end. With no such pair (or when r is the
-- lowest rank of all), nothing can take t_i before rank r, and the same holds on the right.
-- subtle: (1) alone is wrong. In "enth", e+n (rank 12) and t+h (144) are both lower than
--   their neighbours, but en+t (42) comes before t+h and takes the t: BPE gives [ent, h],
--   not [en, th].
-- subtle: equal neighbours are one token repeated (a a a: the pairs a+a share a rank).
--   encoder.py merges such a run left to right, (aa)(aa)a, so the whole run counts as one
--   unit for (1) and (2), judged at its two ends, and every other pair from its left end
--   is merged.
--
-- State of a piece between rounds (arrays, one element per token or per adjacent pair):
--   ids    int[]    [n]      the tokens
--   starts int[]    [n + 1]  byte offset of each token in the piece, then the piece's length
--   rm     bigint[] [n - 1]  rank << 32 | merged id of each adjacent pair (gpt2.no_merge(): none),
--                            so that comparing rm compares ranks
--   ll, rl int[]    [n]      each token's left_reach and right_reach (gpt2.merge_reach)
--   low    bigint            min(rm): the piece's lowest rank (NULL or no_merge(): done)
-- subtle: ids[i] is O(1) only on an array held in memory. A stored (TOASTed) array is
--   decompressed at every subscript, which would make each round quadratic again; these
--   arrays never leave the recursive query.

-- The reach of each token, derived from gpt2.merges and gpt2.vocab. It is refreshed after
-- every tokenizer load (loader/tokenizer.py) and here, when this file is applied.
CREATE MATERIALIZED VIEW IF NOT EXISTS gpt2.merge_reach AS
WITH product AS (   -- every merge with the byte length of the token it makes
    SELECT m.left_id, m.right_id, length(v.bytes) AS len
    FROM gpt2.merges AS m JOIN gpt2.vocab AS v ON v.id = m.merged_id
)
SELECT v.id,
       coalesce(l.len, 0) AS left_reach,    -- longest merge product (x, id): 0 when none
       coalesce(r.len, 0) AS right_reach    -- longest merge product (id, x)
FROM gpt2.vocab AS v
LEFT JOIN (SELECT right_id AS id, max(len) AS len FROM product GROUP BY right_id) AS l USING (id)
LEFT JOIN (SELECT left_id AS id, max(len) AS len FROM product GROUP BY left_id) AS r USING (id);
CREATE UNIQUE INDEX IF NOT EXISTS merge_reach_id ON gpt2.merge_reach (id) INCLUDE (left_reach, right_reach);
REFRESH MATERIALIZED VIEW gpt2.merge_reach;
-- Whoever may read the vocabulary may read its reach, also a role that was granted SELECT
-- on gpt2's tables before this view existed (docs/operations.md: Read-only users).
DO $$
DECLARE
    reader text;
BEGIN
    FOR reader IN SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END
                  FROM pg_class AS c, aclexplode(c.relacl) AS a
                  WHERE c.oid = 'gpt2.vocab'::regclass AND a.privilege_type = 'SELECT' AND a.grantee <> c.relowner LOOP
        EXECUTE format('GRANT SELECT ON gpt2.merge_reach TO %s', reader);
    END LOOP;
END
$$;

-- The rm value of a pair that is no merge: above every rank << 32 | merged id.
CREATE OR REPLACE FUNCTION gpt2.no_merge() RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT 9223372036854775807::bigint   -- the largest bigint
$$;

-- One round of gpt2.bpe_rounds on one piece: the state after merging every pair that the
-- rule above selects.
CREATE OR REPLACE FUNCTION gpt2.bpe_round(ids int[], starts int[], rm bigint[], ll int[], rl int[], low bigint)
RETURNS TABLE (ids int[], starts int[], rm bigint[], ll int[], rl int[], low bigint)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
WITH
-- candidate: pairs lower than both neighbours, and the pairs of runs (a a a)   [<= n - 1]
candidate AS MATERIALIZED (
    SELECT i, coalesce(rm[i] = rm[i - 1], false) OR coalesce(rm[i] = rm[i + 1], false) AS in_run
    FROM generate_series(1, cardinality(ids) - 1) AS i
    WHERE rm[i] < gpt2.no_merge()
      AND (   (rm[i] < coalesce(rm[i - 1], gpt2.no_merge()) AND rm[i] < coalesce(rm[i + 1], gpt2.no_merge()))
           OR rm[i] = rm[i - 1] OR rm[i] = rm[i + 1])
),
-- unit: pairs p..q judged together: a single pair (p = q), or a whole run
unit AS (
    SELECT i AS p, i AS q FROM candidate WHERE NOT in_run
    UNION ALL
    SELECT p, max(i) FROM (
        SELECT i, max(CASE WHEN rm[i - 1] IS DISTINCT FROM rm[i] THEN i END) OVER (ORDER BY i) AS p
        FROM candidate WHERE in_run) AS run
    GROUP BY p
),
-- merged: the pairs merged this round (in a run: p, p + 2, ...), by the rule (1) and (2)
merged AS MATERIALIZED (
    SELECT i
    FROM unit AS u, generate_series(u.p, u.q, 2) AS i
    WHERE rm[u.p] < coalesce(rm[u.p - 1], gpt2.no_merge()) AND rm[u.p] < coalesce(rm[u.q + 1], gpt2.no_merge())
      AND (rm[u.p] = low OR (
               NOT EXISTS (SELECT FROM generate_series(greatest(1, u.p + 1 - ll[u.p]), u.p - 2) AS j  -- left of t_p
                           WHERE rm[j] < rm[u.p] AND starts[u.p + 1] - starts[j] <= ll[u.p])
           AND NOT EXISTS (SELECT FROM generate_series(u.q + 2, least(cardinality(ids) - 1, u.q - 1 + rl[u.q + 1])) AS j
                           WHERE rm[j] < rm[u.p] AND starts[j + 2] - starts[u.q + 1] <= rl[u.q + 1])))  -- right of t_q+1
),
-- starts_merge: for each token, whether the pair it begins is merged           [n]
starts_merge AS MATERIALIZED (
    SELECT ARRAY(SELECT g.i IN (SELECT i FROM merged) FROM generate_series(1, cardinality(ids)) AS g(i) ORDER BY g.i) AS m
),
-- kept: the tokens after this round, at their old index i; next: the old index after it
kept AS MATERIALIZED (
    SELECT g.i, s.m[g.i] AS new, g.i + 1 + s.m[g.i]::int AS next,
           CASE WHEN s.m[g.i] THEN (rm[g.i] & 4294967295)::int ELSE ids[g.i] END AS id   -- low 32 bits: merged id
    FROM starts_merge AS s, generate_series(1, cardinality(ids)) AS g(i)
    WHERE NOT coalesce(s.m[g.i - 1], false)
),
-- pairs: each kept token, its reach, and the rm of the pair it begins: unchanged, or probed
pairs AS (
    SELECT k.i, k.id,
           CASE WHEN k.next > cardinality(ids) THEN NULL
                WHEN NOT (k.new OR s.m[k.next]) THEN rm[k.i]
                ELSE coalesce((SELECT (m.rank::bigint << 32) | m.merged_id FROM gpt2.merges AS m
                               WHERE m.pair = (k.id::bigint << 32)
                                            | CASE WHEN s.m[k.next] THEN (rm[k.next] & 4294967295)::int ELSE ids[k.next] END),
                              gpt2.no_merge()) END AS rm,
           CASE WHEN k.new THEN (SELECT r.left_reach FROM gpt2.merge_reach AS r WHERE r.id = k.id) ELSE ll[k.i] END AS ll,
           CASE WHEN k.new THEN (SELECT r.right_reach FROM gpt2.merge_reach AS r WHERE r.id = k.id) ELSE rl[k.i] END AS rl
    FROM kept AS k, starts_merge AS s
    ORDER BY k.i
)
SELECT array_agg(p.id ORDER BY p.i), array_agg(starts[p.i] ORDER BY p.i) || starts[cardinality(starts)],
       array_agg(p.rm ORDER BY p.i) FILTER (WHERE p.rm IS NOT NULL), array_agg(p.ll ORDER BY p.i),
       array_agg(p.rl ORDER BY p.i), min(p.rm)
FROM pairs AS p
$$;

-- The final ids of each distinct piece, the same as gpt2.bpe's, and the rounds it took:
-- gpt2.bpe_rounds(ARRAY[' Mississippilessly']) = (' Mississippilessly', '{12732,3974,30608,306}', 9),
-- where gpt2.bpe takes 12 steps.
CREATE OR REPLACE FUNCTION gpt2.bpe_rounds(pieces text[])
RETURNS TABLE (piece text, ids int[], rounds int)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
WITH RECURSIVE
-- byte_token: each byte's token id and reach, indexed by byte + 1              [256]
byte_token AS MATERIALIZED (
    SELECT array_agg(u.id ORDER BY u.b) AS ids, array_agg(r.left_reach ORDER BY u.b) AS ll,
           array_agg(r.right_reach ORDER BY u.b) AS rl
    FROM gpt2.bytes_to_unicode AS u JOIN gpt2.merge_reach AS r ON r.id = u.id
),
-- byte_split: each distinct piece as one token per UTF-8 byte
byte_split AS (
    SELECT p.piece,
           ARRAY(SELECT bt.ids[get_byte(p.utf8, i) + 1] FROM generate_series(0, length(p.utf8) - 1) AS i ORDER BY i) AS ids,
           ARRAY(SELECT i FROM generate_series(0, length(p.utf8)) AS i ORDER BY i) AS starts,
           ARRAY(SELECT bt.ll[get_byte(p.utf8, i) + 1] FROM generate_series(0, length(p.utf8) - 1) AS i ORDER BY i) AS ll,
           ARRAY(SELECT bt.rl[get_byte(p.utf8, i) + 1] FROM generate_series(0, length(p.utf8) - 1) AS i ORDER BY i) AS rl
    FROM (SELECT DISTINCT x AS piece, convert_to(x, 'UTF8') AS utf8 FROM unnest(pieces) AS x) AS p, byte_token AS bt
),
-- walk: one row per piece per round, until no pair of the piece is a merge
walk AS (
    SELECT s.piece, 0 AS round, s.ids, s.starts, r.rm, s.ll, s.rl, (SELECT min(x) FROM unnest(r.rm) AS x) AS low
    FROM byte_split AS s
    CROSS JOIN LATERAL (   -- the rm of every adjacent pair
        SELECT ARRAY(SELECT coalesce((SELECT (m.rank::bigint << 32) | m.merged_id FROM gpt2.merges AS m
                                      WHERE m.pair = (s.ids[i]::bigint << 32) | s.ids[i + 1]), gpt2.no_merge())
                     FROM generate_series(1, cardinality(s.ids) - 1) AS i ORDER BY i) AS rm) AS r
    UNION ALL
    SELECT w.piece, w.round + 1, r.*
    FROM walk AS w, LATERAL gpt2.bpe_round(w.ids, w.starts, w.rm, w.ll, w.rl, w.low) AS r
    WHERE w.low < gpt2.no_merge()
)
SELECT piece, ids, round FROM walk WHERE coalesce(low, gpt2.no_merge()) = gpt2.no_merge()
$$;

-- ---------------------------------------------------------------------------------------
-- tokenize: text -> ids
-- ---------------------------------------------------------------------------------------

-- gpt2.tokenize('Hello world') = '{15496,995}'; gpt2.tokenize('') = '{}'.
CREATE OR REPLACE FUNCTION gpt2.tokenize(input text)
RETURNS int[]
LANGUAGE sql STABLE STRICT PARALLEL SAFE AS $$
WITH
-- pieces: the pre-tokenizer's pieces in text order                            [n_pieces]
pieces AS MATERIALIZED (
    SELECT ord, piece FROM gpt2.pretokenize(input)
),
-- merged: the final ids of each distinct piece (a repeated word is merged once). Pieces
-- of up to 64 bytes take gpt2.bpe, longer ones gpt2.bpe_rounds: measured on random
-- letters, one merge per round is cheaper up to about 64 bytes, and quadratic beyond.
merged AS (
    SELECT b.piece, b.ids
    FROM gpt2.bpe(ARRAY(SELECT DISTINCT piece FROM pieces WHERE octet_length(piece) <= 64)) AS b
    WHERE b.done
    UNION ALL
    SELECT r.piece, r.ids
    FROM gpt2.bpe_rounds(ARRAY(SELECT DISTINCT piece FROM pieces WHERE octet_length(piece) > 64)) AS r
)
-- tokens: the pieces' ids, concatenated in text order                         [n_tokens]
SELECT coalesce(array_agg(t.id ORDER BY p.ord, t.k), '{}')
FROM pieces AS p
JOIN merged AS m USING (piece)
CROSS JOIN LATERAL unnest(m.ids) WITH ORDINALITY AS t(id, k)
$$;

-- The merge steps of every distinct piece, in text order: step 0 is the byte split, each
-- later row the pair merged (as token strings), its rank and the symbols after the step.
CREATE OR REPLACE FUNCTION gpt2.tokenize_trace(input text)
RETURNS TABLE (piece_no bigint, piece text, step int, pair text, rank int, merged_id int, symbols text[])
LANGUAGE sql STABLE STRICT PARALLEL SAFE AS $$
WITH
-- pieces: distinct pieces, numbered by their first occurrence
pieces AS MATERIALIZED (
    SELECT row_number() OVER (ORDER BY min(ord)) AS piece_no, piece
    FROM gpt2.pretokenize(input)
    GROUP BY piece
)
SELECT p.piece_no, p.piece, b.step,
       (SELECT l.token || ' + ' || r.token FROM gpt2.vocab l, gpt2.vocab r WHERE l.id = b.left_id AND r.id = b.right_id),
       b.rank, b.merged_id,
       ARRAY(SELECT v.token FROM unnest(b.ids) WITH ORDINALITY AS t(id, k) JOIN gpt2.vocab v ON v.id = t.id ORDER BY t.k)
FROM pieces AS p
JOIN gpt2.bpe(ARRAY(SELECT piece FROM pieces)) AS b USING (piece)
WHERE NOT b.done
ORDER BY p.piece_no, b.step
$$;

-- ---------------------------------------------------------------------------------------
-- detokenize: ids -> text
-- ---------------------------------------------------------------------------------------

-- UTF-8 decode where every invalid or incomplete sequence becomes U+FFFD, like Python's
-- bytes.decode('utf-8', errors='replace'): one U+FFFD per maximal invalid subpart, so
-- '\xe2\x82A' -> '�A', '\xed\xa0\x80' -> '���', '\xf0\x9f' -> '�'.
-- subtle: text cannot hold NUL, so a 0x00 byte (token 188) becomes U+FFFD as well.
-- Fast path convert_from; the byte walk runs only when that fails.
CREATE OR REPLACE FUNCTION gpt2.decode_bytes(utf8 bytea)
RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    n      int := length(utf8);
    i      int := 0;       -- current byte (0-based)
    start  int := 0;       -- first byte of the valid run not yet copied to out
    b      int;
    need   int;            -- continuation bytes the lead byte b asks for
    lo     int;            -- allowed range of the first continuation byte
    hi     int;
    k      int;
    out    bytea := '';
BEGIN
    BEGIN
        RETURN convert_from(utf8, 'UTF8');
    EXCEPTION WHEN character_not_in_repertoire OR untranslatable_character THEN
        NULL;  -- invalid UTF-8: walk the bytes below
    END;
    WHILE i < n LOOP
        b := get_byte(utf8, i);
        need := CASE WHEN b = 0 THEN -1 WHEN b < 128 THEN 0 WHEN b BETWEEN 194 AND 223 THEN 1
                     WHEN b BETWEEN 224 AND 239 THEN 2 WHEN b BETWEEN 240 AND 244 THEN 3 ELSE -1 END;
        -- subtle: the first continuation byte is narrower after E0, ED, F0, F4 (no overlong
        -- forms, no surrogates, nothing above U+10FFFF)
        lo := CASE b WHEN 224 THEN 160 WHEN 240 THEN 144 ELSE 128 END;
        hi := CASE b WHEN 237 THEN 159 WHEN 244 THEN 143 ELSE 191 END;
        k := 0;  -- continuation bytes that fit
        WHILE need > 0 AND k < need AND i + 1 + k < n LOOP
            EXIT WHEN get_byte(utf8, i + 1 + k) NOT BETWEEN (CASE WHEN k = 0 THEN lo ELSE 128 END)
                                                        AND (CASE WHEN k = 0 THEN hi ELSE 191 END);
            k := k + 1;
        END LOOP;
        IF need >= 0 AND k = need THEN
            i := i + 1 + need;                    -- a valid character: keep it in the run
        ELSE
            out := out || substr(utf8, start + 1, i - start) || '\xefbfbd'::bytea;
            i := i + 1 + k;                       -- the maximal invalid subpart -> one U+FFFD
            start := i;
        END IF;
    END LOOP;
    RETURN convert_from(out || substr(utf8, start + 1), 'UTF8');
END
$$;

-- gpt2.detokenize('{15496,995}') = 'Hello world'. The bytes of all tokens are joined first
-- and decoded once (byte-split tokens), so the result is byte-exact for valid UTF-8.
CREATE OR REPLACE FUNCTION gpt2.detokenize(ids int[])
RETURNS text
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE AS $$
DECLARE
    joined   bytea;
    unknown  int;
BEGIN
    SELECT string_agg(v.bytes, ''::bytea ORDER BY t.k), min(t.id) FILTER (WHERE v.id IS NULL)
      INTO joined, unknown
      FROM unnest(ids) WITH ORDINALITY AS t(id, k)
      LEFT JOIN gpt2.vocab AS v ON v.id = t.id;
    IF unknown IS NOT NULL OR array_position(ids, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'unknown token id %', coalesce(unknown::text, 'NULL')
            USING HINT = format('token ids run from 0 to %s', (SELECT max(id) FROM gpt2.vocab));
    END IF;
    RETURN gpt2.decode_bytes(coalesce(joined, ''::bytea));
END
$$;

-- ---------------------------------------------------------------------------------------
-- Appendix: the character classes, and the pattern built from them
-- ---------------------------------------------------------------------------------------

-- \p{L}, \p{N} and \s as tiktoken's Rust regex defines them (Unicode 16.0), hex code point
-- ranges. subtle: the `regex` package may know a newer Unicode (2026.x: 17,144 more
-- letters, 336 more numbers); tiktoken is the reference, and tests/test_tokenizer.py
-- checks every code point against it (and prints new lines for this table when it moves).
DELETE FROM gpt2.unicode_class;
INSERT INTO gpt2.unicode_class (class, lo, hi)
SELECT c.class,
       ('x' || lpad(split_part(r, '-', 1), 8, '0'))::bit(32)::int,
       ('x' || lpad(coalesce(nullif(split_part(r, '-', 2), ''), split_part(r, '-', 1)), 8, '0'))::bit(32)::int
FROM (VALUES
('L', '
41-5a 61-7a aa b5 ba c0-d6 d8-f6 f8-2c1 2c6-2d1 2e0-2e4 2ec 2ee 370-374 376-377 37a-37d 37f 386
388-38a 38c 38e-3a1 3a3-3f5 3f7-481 48a-52f 531-556 559 560-588 5d0-5ea 5ef-5f2 620-64a 66e-66f
671-6d3 6d5 6e5-6e6 6ee-6ef 6fa-6fc 6ff 710 712-72f 74d-7a5 7b1 7ca-7ea 7f4-7f5 7fa 800-815 81a
824 828 840-858 860-86a 870-887 889-88e 8a0-8c9 904-939 93d 950 958-961 971-980 985-98c 98f-990
993-9a8 9aa-9b0 9b2 9b6-9b9 9bd 9ce 9dc-9dd 9df-9e1 9f0-9f1 9fc a05-a0a a0f-a10 a13-a28 a2a-a30
a32-a33 a35-a36 a38-a39 a59-a5c a5e a72-a74 a85-a8d a8f-a91 a93-aa8 aaa-ab0 ab2-ab3 ab5-ab9 abd
ad0 ae0-ae1 af9 b05-b0c b0f-b10 b13-b28 b2a-b30 b32-b33 b35-b39 b3d b5c-b5d b5f-b61 b71 b83
b85-b8a b8e-b90 b92-b95 b99-b9a b9c b9e-b9f ba3-ba4 ba8-baa bae-bb9 bd0 c05-c0c c0e-c10 c12-c28
c2a-c39 c3d c58-c5a c5d c60-c61 c80 c85-c8c c8e-c90 c92-ca8 caa-cb3 cb5-cb9 cbd cdd-cde ce0-ce1
cf1-cf2 d04-d0c d0e-d10 d12-d3a d3d d4e d54-d56 d5f-d61 d7a-d7f d85-d96 d9a-db1 db3-dbb dbd
dc0-dc6 e01-e30 e32-e33 e40-e46 e81-e82 e84 e86-e8a e8c-ea3 ea5 ea7-eb0 eb2-eb3 ebd ec0-ec4 ec6
edc-edf f00 f40-f47 f49-f6c f88-f8c 1000-102a 103f 1050-1055 105a-105d 1061 1065-1066 106e-1070
1075-1081 108e 10a0-10c5 10c7 10cd 10d0-10fa 10fc-1248 124a-124d 1250-1256 1258 125a-125d
1260-1288 128a-128d 1290-12b0 12b2-12b5 12b8-12be 12c0 12c2-12c5 12c8-12d6 12d8-1310 1312-1315
1318-135a 1380-138f 13a0-13f5 13f8-13fd 1401-166c 166f-167f 1681-169a 16a0-16ea 16f1-16f8
1700-1711 171f-1731 1740-1751 1760-176c 176e-1770 1780-17b3 17d7 17dc 1820-1878 1880-1884
1887-18a8 18aa 18b0-18f5 1900-191e 1950-196d 1970-1974 1980-19ab 19b0-19c9 1a00-1a16 1a20-1a54
1aa7 1b05-1b33 1b45-1b4c 1b83-1ba0 1bae-1baf 1bba-1be5 1c00-1c23 1c4d-1c4f 1c5a-1c7d 1c80-1c8a
1c90-1cba 1cbd-1cbf 1ce9-1cec 1cee-1cf3 1cf5-1cf6 1cfa 1d00-1dbf 1e00-1f15 1f18-1f1d 1f20-1f45
1f48-1f4d 1f50-1f57 1f59 1f5b 1f5d 1f5f-1f7d 1f80-1fb4 1fb6-1fbc 1fbe 1fc2-1fc4 1fc6-1fcc
1fd0-1fd3 1fd6-1fdb 1fe0-1fec 1ff2-1ff4 1ff6-1ffc 2071 207f 2090-209c 2102 2107 210a-2113 2115
2119-211d 2124 2126 2128 212a-212d 212f-2139 213c-213f 2145-2149 214e 2183-2184 2c00-2ce4
2ceb-2cee 2cf2-2cf3 2d00-2d25 2d27 2d2d 2d30-2d67 2d6f 2d80-2d96 2da0-2da6 2da8-2dae 2db0-2db6
2db8-2dbe 2dc0-2dc6 2dc8-2dce 2dd0-2dd6 2dd8-2dde 2e2f 3005-3006 3031-3035 303b-303c 3041-3096
309d-309f 30a1-30fa 30fc-30ff 3105-312f 3131-318e 31a0-31bf 31f0-31ff 3400-4dbf 4e00-a48c
a4d0-a4fd a500-a60c a610-a61f a62a-a62b a640-a66e a67f-a69d a6a0-a6e5 a717-a71f a722-a788
a78b-a7cd a7d0-a7d1 a7d3 a7d5-a7dc a7f2-a801 a803-a805 a807-a80a a80c-a822 a840-a873 a882-a8b3
a8f2-a8f7 a8fb a8fd-a8fe a90a-a925 a930-a946 a960-a97c a984-a9b2 a9cf a9e0-a9e4 a9e6-a9ef
a9fa-a9fe aa00-aa28 aa40-aa42 aa44-aa4b aa60-aa76 aa7a aa7e-aaaf aab1 aab5-aab6 aab9-aabd aac0
aac2 aadb-aadd aae0-aaea aaf2-aaf4 ab01-ab06 ab09-ab0e ab11-ab16 ab20-ab26 ab28-ab2e ab30-ab5a
ab5c-ab69 ab70-abe2 ac00-d7a3 d7b0-d7c6 d7cb-d7fb f900-fa6d fa70-fad9 fb00-fb06 fb13-fb17 fb1d
fb1f-fb28 fb2a-fb36 fb38-fb3c fb3e fb40-fb41 fb43-fb44 fb46-fbb1 fbd3-fd3d fd50-fd8f fd92-fdc7
fdf0-fdfb fe70-fe74 fe76-fefc ff21-ff3a ff41-ff5a ff66-ffbe ffc2-ffc7 ffca-ffcf ffd2-ffd7
ffda-ffdc 10000-1000b 1000d-10026 10028-1003a 1003c-1003d 1003f-1004d 10050-1005d 10080-100fa
10280-1029c 102a0-102d0 10300-1031f 1032d-10340 10342-10349 10350-10375 10380-1039d 103a0-103c3
103c8-103cf 10400-1049d 104b0-104d3 104d8-104fb 10500-10527 10530-10563 10570-1057a 1057c-1058a
1058c-10592 10594-10595 10597-105a1 105a3-105b1 105b3-105b9 105bb-105bc 105c0-105f3 10600-10736
10740-10755 10760-10767 10780-10785 10787-107b0 107b2-107ba 10800-10805 10808 1080a-10835
10837-10838 1083c 1083f-10855 10860-10876 10880-1089e 108e0-108f2 108f4-108f5 10900-10915
10920-10939 10980-109b7 109be-109bf 10a00 10a10-10a13 10a15-10a17 10a19-10a35 10a60-10a7c
10a80-10a9c 10ac0-10ac7 10ac9-10ae4 10b00-10b35 10b40-10b55 10b60-10b72 10b80-10b91 10c00-10c48
10c80-10cb2 10cc0-10cf2 10d00-10d23 10d4a-10d65 10d6f-10d85 10e80-10ea9 10eb0-10eb1 10ec2-10ec4
10f00-10f1c 10f27 10f30-10f45 10f70-10f81 10fb0-10fc4 10fe0-10ff6 11003-11037 11071-11072 11075
11083-110af 110d0-110e8 11103-11126 11144 11147 11150-11172 11176 11183-111b2 111c1-111c4 111da
111dc 11200-11211 11213-1122b 1123f-11240 11280-11286 11288 1128a-1128d 1128f-1129d 1129f-112a8
112b0-112de 11305-1130c 1130f-11310 11313-11328 1132a-11330 11332-11333 11335-11339 1133d 11350
1135d-11361 11380-11389 1138b 1138e 11390-113b5 113b7 113d1 113d3 11400-11434 11447-1144a
1145f-11461 11480-114af 114c4-114c5 114c7 11580-115ae 115d8-115db 11600-1162f 11644 11680-116aa
116b8 11700-1171a 11740-11746 11800-1182b 118a0-118df 118ff-11906 11909 1190c-11913 11915-11916
11918-1192f 1193f 11941 119a0-119a7 119aa-119d0 119e1 119e3 11a00 11a0b-11a32 11a3a 11a50
11a5c-11a89 11a9d 11ab0-11af8 11bc0-11be0 11c00-11c08 11c0a-11c2e 11c40 11c72-11c8f 11d00-11d06
11d08-11d09 11d0b-11d30 11d46 11d60-11d65 11d67-11d68 11d6a-11d89 11d98 11ee0-11ef2 11f02
11f04-11f10 11f12-11f33 11fb0 12000-12399 12480-12543 12f90-12ff0 13000-1342f 13441-13446
13460-143fa 14400-14646 16100-1611d 16800-16a38 16a40-16a5e 16a70-16abe 16ad0-16aed 16b00-16b2f
16b40-16b43 16b63-16b77 16b7d-16b8f 16d40-16d6c 16e40-16e7f 16f00-16f4a 16f50 16f93-16f9f
16fe0-16fe1 16fe3 17000-187f7 18800-18cd5 18cff-18d08 1aff0-1aff3 1aff5-1affb 1affd-1affe
1b000-1b122 1b132 1b150-1b152 1b155 1b164-1b167 1b170-1b2fb 1bc00-1bc6a 1bc70-1bc7c 1bc80-1bc88
1bc90-1bc99 1d400-1d454 1d456-1d49c 1d49e-1d49f 1d4a2 1d4a5-1d4a6 1d4a9-1d4ac 1d4ae-1d4b9 1d4bb
1d4bd-1d4c3 1d4c5-1d505 1d507-1d50a 1d50d-1d514 1d516-1d51c 1d51e-1d539 1d53b-1d53e 1d540-1d544
1d546 1d54a-1d550 1d552-1d6a5 1d6a8-1d6c0 1d6c2-1d6da 1d6dc-1d6fa 1d6fc-1d714 1d716-1d734
1d736-1d74e 1d750-1d76e 1d770-1d788 1d78a-1d7a8 1d7aa-1d7c2 1d7c4-1d7cb 1df00-1df1e 1df25-1df2a
1e030-1e06d 1e100-1e12c 1e137-1e13d 1e14e 1e290-1e2ad 1e2c0-1e2eb 1e4d0-1e4eb 1e5d0-1e5ed 1e5f0
1e7e0-1e7e6 1e7e8-1e7eb 1e7ed-1e7ee 1e7f0-1e7fe 1e800-1e8c4 1e900-1e943 1e94b 1ee00-1ee03
1ee05-1ee1f 1ee21-1ee22 1ee24 1ee27 1ee29-1ee32 1ee34-1ee37 1ee39 1ee3b 1ee42 1ee47 1ee49 1ee4b
1ee4d-1ee4f 1ee51-1ee52 1ee54 1ee57 1ee59 1ee5b 1ee5d 1ee5f 1ee61-1ee62 1ee64 1ee67-1ee6a
1ee6c-1ee72 1ee74-1ee77 1ee79-1ee7c 1ee7e 1ee80-1ee89 1ee8b-1ee9b 1eea1-1eea3 1eea5-1eea9
1eeab-1eebb 20000-2a6df 2a700-2b739 2b740-2b81d 2b820-2cea1 2ceb0-2ebe0 2ebf0-2ee5d 2f800-2fa1d
30000-3134a 31350-323af
'),
('N', '
30-39 b2-b3 b9 bc-be 660-669 6f0-6f9 7c0-7c9 966-96f 9e6-9ef 9f4-9f9 a66-a6f ae6-aef b66-b6f
b72-b77 be6-bf2 c66-c6f c78-c7e ce6-cef d58-d5e d66-d78 de6-def e50-e59 ed0-ed9 f20-f33
1040-1049 1090-1099 1369-137c 16ee-16f0 17e0-17e9 17f0-17f9 1810-1819 1946-194f 19d0-19da
1a80-1a89 1a90-1a99 1b50-1b59 1bb0-1bb9 1c40-1c49 1c50-1c59 2070 2074-2079 2080-2089 2150-2182
2185-2189 2460-249b 24ea-24ff 2776-2793 2cfd 3007 3021-3029 3038-303a 3192-3195 3220-3229
3248-324f 3251-325f 3280-3289 32b1-32bf a620-a629 a6e6-a6ef a830-a835 a8d0-a8d9 a900-a909
a9d0-a9d9 a9f0-a9f9 aa50-aa59 abf0-abf9 ff10-ff19 10107-10133 10140-10178 1018a-1018b
102e1-102fb 10320-10323 10341 1034a 103d1-103d5 104a0-104a9 10858-1085f 10879-1087f 108a7-108af
108fb-108ff 10916-1091b 109bc-109bd 109c0-109cf 109d2-109ff 10a40-10a48 10a7d-10a7e 10a9d-10a9f
10aeb-10aef 10b58-10b5f 10b78-10b7f 10ba9-10baf 10cfa-10cff 10d30-10d39 10d40-10d49 10e60-10e7e
10f1d-10f26 10f51-10f54 10fc5-10fcb 11052-1106f 110f0-110f9 11136-1113f 111d0-111d9 111e1-111f4
112f0-112f9 11450-11459 114d0-114d9 11650-11659 116c0-116c9 116d0-116e3 11730-1173b 118e0-118f2
11950-11959 11bf0-11bf9 11c50-11c6c 11d50-11d59 11da0-11da9 11f50-11f59 11fc0-11fd4 12400-1246e
16130-16139 16a60-16a69 16ac0-16ac9 16b50-16b59 16b5b-16b61 16d70-16d79 16e80-16e96 1ccf0-1ccf9
1d2c0-1d2d3 1d2e0-1d2f3 1d360-1d378 1d7ce-1d7ff 1e140-1e149 1e2f0-1e2f9 1e4f0-1e4f9 1e5f1-1e5fa
1e8c7-1e8cf 1e950-1e959 1ec71-1ecab 1ecad-1ecaf 1ecb1-1ecb4 1ed01-1ed2d 1ed2f-1ed3d 1f100-1f10c
1fbf0-1fbf9
'),
('S', '
9-d 20 85 a0 1680 2000-200a 2028-2029 202f 205f 3000
')) AS c(class, ranges)
CROSS JOIN LATERAL regexp_split_to_table(btrim(c.ranges, E' \n'), E'[ \n]+') AS r;

-- pattern: GPT-2's alternation with the classes as bracket expressions of \U escapes
DELETE FROM gpt2.pretokenizer;
WITH
-- brackets: the inside of a bracket expression per class, e.g. '\U00000041-\U0000005A...'
brackets AS (
    SELECT class,
           string_agg(CASE WHEN lo = hi THEN '\U' || lpad(to_hex(lo), 8, '0')
                           ELSE '\U' || lpad(to_hex(lo), 8, '0') || '-\U' || lpad(to_hex(hi), 8, '0') END,
                      '' ORDER BY lo) AS inside
    FROM gpt2.unicode_class
    GROUP BY class
)
INSERT INTO gpt2.pretokenizer (pattern)
SELECT format($re$'s|'t|'re|'ve|'m|'ll|'d| ?[%1$s]+| ?[%2$s]+| ?[^%3$s%1$s%2$s]+|[%3$s]+(?![^%3$s])|[%3$s]$re$,
              l.inside, n.inside, s.inside)
FROM brackets AS l, brackets AS n, brackets AS s
WHERE l.class = 'L' AND n.class = 'N' AND s.class = 'S';
