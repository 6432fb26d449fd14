"""Property tests: on random Unicode text (no NUL, no surrogates), gpt2.tokenize gives
tiktoken's ids and gpt2.detokenize gives the text back."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_tokenizer import assert_like_tiktoken

# characters where GPT-2's pre-tokenizer has rules: whitespace of every kind, contraction
# letters in both cases, digits of several scripts, marks, ZWJ emoji, fullwidth letters
TRICKY = list(" \t\n\r\x0b\x0c\x1c\x85\u00a0\u1680\u2028\u3000\u200b'sStTlLdDmMvVrReE"
              "019١²½a éЖ中ㄱ\u0301\u200d😀🏽👍!?.-_<|>ＡＺ𝐀")
ANY = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
TEXT = st.text(alphabet=st.one_of(st.sampled_from(TRICKY), ANY), max_size=60)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(texts=st.lists(TEXT, min_size=1, max_size=25))
def test_random_text_like_tiktoken(conn, texts):
    assert_like_tiktoken(conn, [(f"example {i}", t) for i, t in enumerate(texts)])


@SETTINGS
@given(texts=st.lists(st.text(alphabet=st.sampled_from(TRICKY), min_size=1, max_size=200), min_size=1, max_size=10))
def test_tricky_characters_like_tiktoken(conn, texts):
    assert_like_tiktoken(conn, [(f"example {i}", t) for i, t in enumerate(texts)])


@SETTINGS
@given(texts=st.lists(st.text(alphabet=ANY, max_size=300), min_size=1, max_size=5))
def test_any_unicode_like_tiktoken(conn, texts):
    assert_like_tiktoken(conn, [(f"example {i}", t) for i, t in enumerate(texts)])
