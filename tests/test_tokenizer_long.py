"""Long pieces: gpt2.bpe_rounds (many merges per round) gives tiktoken's ids, in few rounds.

gpt2.tokenize sends pieces longer than 64 bytes to gpt2.bpe_rounds. Here it also runs on
every piece of the parity corpus, short ones included, so that its merge rule meets every
kind of piece, and on the traps its comment names.
"""

from __future__ import annotations

import random

import regex

from test_tokenizer import EDGE_CASES, LONG_WORDS, PATTERN, assert_like_tiktoken, corpus, reference

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def random_word(alphabet: str, n: int, seed: int) -> str:
    rnd = random.Random(seed)
    return "".join(rnd.choice(alphabet) for _ in range(n))


def bpe_rounds(conn, pieces: list[str]) -> dict[str, tuple[list[int], int]]:
    rows = conn.execute("SELECT piece, ids, rounds FROM gpt2.bpe_rounds(%s)", (pieces,)).fetchall()
    return {piece: (ids, rounds) for piece, ids, rounds in rows}


def test_bpe_rounds_on_every_piece_like_tiktoken(conn):
    texts = [text for _, text in corpus()] + EDGE_CASES + list(LONG_WORDS.values())
    pieces = {p for text in texts for p in regex.findall(PATTERN, text)}
    rnd = random.Random(5)
    for alphabet in (LETTERS, "ab", "abc", "etaoinshr", "0123456789", "!@#$%^&*()", "aeiou "):
        for _ in range(100):  # short random words: runs (aaa), alternations (abab), rare pairs
            pieces |= set(regex.findall(PATTERN, random_word(alphabet, rnd.choice([3, 8, 20, 60, 200]), rnd.random())))
    # subtle: in "enth", e+n and t+h are both lower than their neighbours, yet en+t takes the t
    pieces |= {"enth", " tenth", "enth" * 50, "a" * 3, "a" * 4, "aab" * 30, "ab" * 41}
    pieces = sorted(pieces - {""})
    got, enc = bpe_rounds(conn, pieces), reference()
    bad = [p for p in pieces if got[p][0] != enc.encode_ordinary(p)]
    assert not bad, f"{len(bad)} of {len(pieces)} pieces differ from tiktoken, e.g. " + ", ".join(
        f"{p[:40]!r}: {got[p][0][:6]} vs {enc.encode_ordinary(p)[:6]}" for p in bad[:5])


def test_long_random_words_like_tiktoken(conn):
    assert_like_tiktoken(conn, [("letters*20000", random_word(LETTERS, 20_000, 6)),
                                ("digits*20000", random_word("0123456789", 20_000, 7)),
                                ("letters and spaces*20000", random_word(LETTERS + "  ", 20_000, 8))])


def test_rounds_barely_grow_with_length(conn):
    """Sequential BPE needs a round per merge (thousands here); the rounds of
    gpt2.bpe_rounds depend on how far merges interact, not on the word's length."""
    short, long = random_word(LETTERS, 2_000, 9), random_word(LETTERS, 20_000, 10)
    rounds = {n: r for n, (_, r) in ((len(p), v) for p, v in bpe_rounds(conn, [short, long]).items())}
    merges = len(long) - len(reference().encode_ordinary(long))
    assert rounds[20_000] <= rounds[2_000] + 10 and rounds[20_000] < merges / 100, (rounds, merges)
