"""A character-level text corpus generated from a small grammar, a tokenizer, and
language-model batches (next-character prediction, as nanoGPT's shakespeare_char).

    text = data.grammar_text(num_chars=20_000, seed=0)    # "the small cat sees a red ball . ..."
    tok = data.CharTokenizer(text)                       # tok.vocab_size, tok.encode, tok.decode
    ids = tok.encode(text)                               # (num_chars,) int64
    x, y = data.lm_batch(ids, batch_size=8, seq_len=32, rng=np.random.default_rng(0))
    # x, y: (8, 32) int64, y[:, t] = x[:, t + 1] (the next character)

The grammar (determiner, optional adjective, noun, verb, determiner, optional adjective,
noun, full stop) is generated, not downloaded, so the corpus is the same on every
machine and offline. Its entropy is low: a small model's loss falls well below the
uniform log(vocab_size) within a few hundred steps (the test states the numbers).
"""
import numpy as np

DETERMINERS = ("the", "a", "every", "one")
ADJECTIVES = ("small", "red", "old", "quick", "quiet", "blue")
NOUNS = ("cat", "dog", "bird", "ball", "tree", "child", "robot", "river")
VERBS = ("sees", "likes", "finds", "follows", "hears", "paints")


def grammar_sentence(rng):
    """One sentence of the grammar, e.g. "the red cat sees a tree ."."""
    def phrase():
        words = [DETERMINERS[rng.integers(len(DETERMINERS))]]
        if rng.random() < 0.5:
            words.append(ADJECTIVES[rng.integers(len(ADJECTIVES))])
        words.append(NOUNS[rng.integers(len(NOUNS))])
        return words

    return " ".join(phrase() + [VERBS[rng.integers(len(VERBS))]] + phrase() + ["."])


def grammar_text(num_chars=20_000, seed=0):
    """At least ``num_chars`` characters of grammar sentences (cut to exactly num_chars)."""
    if isinstance(num_chars, bool) or not isinstance(num_chars, (int, np.integer)) or num_chars < 1:
        raise ValueError(f"grammar_text: num_chars={num_chars!r} must be a whole number >= 1")
    rng = np.random.default_rng(seed)
    parts, n = [], 0
    while n < num_chars:
        s = grammar_sentence(rng) + " "
        parts.append(s)
        n += len(s)
    return "".join(parts)[:num_chars]


class CharTokenizer:
    """Characters <-> integer ids; the vocabulary is the sorted set of characters of ``text``."""

    def __init__(self, text):
        if not text:
            raise ValueError("CharTokenizer: empty text, nothing to build a vocabulary from")
        self.chars = sorted(set(text))
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    @property
    def vocab_size(self):
        return len(self.chars)

    def encode(self, text):
        """(len(text),) int64 ids; unknown characters raise a KeyError naming them."""
        unknown = sorted(set(text) - set(self.stoi))
        if unknown:
            raise KeyError(f"CharTokenizer.encode: characters {unknown} are not in the vocabulary "
                           f"{''.join(self.chars)!r}: build the tokenizer on a text that has them")
        return np.fromiter((self.stoi[c] for c in text), dtype=np.int64, count=len(text))

    def decode(self, ids):
        return "".join(self.chars[int(i)] for i in np.asarray(ids).reshape(-1))


def lm_batch(ids, batch_size, seq_len, rng):
    """``batch_size`` random windows of ``ids``: x (batch, seq_len) and y = x shifted by one."""
    ids = np.asarray(ids)
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise TypeError(f"lm_batch: ids must be a 1-D integer array, got shape {ids.shape}, dtype {ids.dtype}")
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"lm_batch: batch_size={batch_size} and seq_len={seq_len} must be >= 1")
    if len(ids) < seq_len + 1:
        raise ValueError(f"lm_batch: {len(ids)} tokens cannot give a window of seq_len + 1 = {seq_len + 1}: "
                         f"use a longer text or a shorter seq_len")
    starts = rng.integers(0, len(ids) - seq_len, size=batch_size)
    win = ids[starts[:, None] + np.arange(seq_len + 1)]  # (batch, seq_len + 1)
    return win[:, :-1].astype(np.int64), win[:, 1:].astype(np.int64)


__all__ = ["grammar_sentence", "grammar_text", "CharTokenizer", "lm_batch"]
