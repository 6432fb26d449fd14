"""A small byte-pair encoder (benchmark input for bench_tokenizer.py; it also runs)."""

import sys
from collections import Counter


def byte_symbols(text: str) -> list[int]:
    """The UTF-8 bytes of text, one symbol each: 'hé' -> [104, 195, 169]."""
    return list(text.encode("utf-8"))


def pair_counts(ids: list[int]) -> Counter:
    """How often each adjacent pair occurs: [1, 2, 3, 1, 2] -> {(1, 2): 2, ...}."""
    return Counter(zip(ids, ids[1:]))


def merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every non-overlapping occurrence of pair, left to right."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


class Tokenizer:
    """Train merges on a text, then encode and decode with them."""

    def __init__(self) -> None:
        self.merges: dict[tuple[int, int], int] = {}
        self.vocab: dict[int, bytes] = {i: bytes([i]) for i in range(256)}

    def train(self, text: str, vocab_size: int) -> None:
        ids = byte_symbols(text)
        for new_id in range(256, vocab_size):
            counts = pair_counts(ids)
            if not counts:
                break
            pair = max(counts, key=counts.get)
            ids = merge(ids, pair, new_id)
            self.merges[pair] = new_id
            self.vocab[new_id] = self.vocab[pair[0]] + self.vocab[pair[1]]

    def encode(self, text: str) -> list[int]:
        ids = byte_symbols(text)
        while len(ids) >= 2:
            counts = pair_counts(ids)
            # the pair that was learned first wins: lowest new id
            pair = min(counts, key=lambda p: self.merges.get(p, float("inf")))
            if pair not in self.merges:
                break
            ids = merge(ids, pair, self.merges[pair])
        return ids

    def decode(self, ids: list[int]) -> str:
        return b"".join(self.vocab[i] for i in ids).decode("utf-8", errors="replace")


def main(argv: list[str]) -> int:
    text = " ".join(argv[1:]) or "hello hello world, hello tokenizer!"
    tok = Tokenizer()
    tok.train(text * 4, vocab_size=256 + 20)
    ids = tok.encode(text)
    assert tok.decode(ids) == text, "round trip failed"
    print(f"{len(text.encode())} bytes -> {len(ids)} tokens: {ids}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
