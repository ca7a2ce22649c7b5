"""The BPE merge inspector against tiktoken: same chunks, same final tokens, over thousands of strings."""
import random

import pytest

from gpt2core.text import merges, tokenizer

# Pieces the random strings are built from: several scripts, emoji with zero-width joiners and
# skin-tone / variation selectors, code, whitespace runs, digits, and Shakespeare-like text.
ALPHABETS = {
    "latin": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "accents": "éèêëàâäçñöüßøåÉÀÇœæ",
    "greek": "αβγδεζηθικλμνξοπρστυφχψωΑΒΓΔ",
    "cyrillic": "абвгдежзийклмнопрстуфхцчшщыэюяАБВГ",
    "cjk": "日本語の中文字漢字カタカナひらがな한국어",
    "arabic_hebrew": "العربيةשלוםעברית",
    "devanagari": "हिन्दीनमस्ते",
    "digits": "0123456789٠١٢३४५",
    "punct": "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~…—–«»“”‘’",
    "space": " \t\n\r\u00a0\u3000\u2009",
}
EMOJI = ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "❤️", "🇫🇷", "🧑🏿‍💻", "☕", "🍮", "👩‍❤️‍💋‍👨"]
WORDS = ["ROMEO:", "JULIET:", "thou", "art", "wherefore", "'tis", "o'er", "doth", "hath", "thee", "love",
         "To be, or not to be", "I'll", "we've", "you're", "she's", "they'd", "I'm", "HAMLET.", "Enter",
         "def", "return", "lambda x: x**2", "0x1F", "3.14159", "1,000,000", "i += 1;", "{'a': [1, 2]}",
         "    ", "\n\n", "\t\t", "   \n  ", "<|endoftext|>", "https://example.com/a?b=c", "naïve", "café"]


def random_string(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(1, 12)):
        kind = rng.random()
        if kind < 0.35:
            parts.append(rng.choice(WORDS))
        elif kind < 0.45:
            parts.append(rng.choice(EMOJI))
        elif kind < 0.6:
            parts.append(" " * rng.randint(1, 5) if rng.random() < 0.7 else "\n" * rng.randint(1, 3))
        else:
            alphabet = ALPHABETS[rng.choice(list(ALPHABETS))]
            parts.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 10))))
        if rng.random() < 0.5:
            parts.append(" ")
    return "".join(parts)


def test_byte_to_unicode_map():
    table = merges.byte_to_unicode()
    assert len(table) == 256 and len(set(table.values())) == 256
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[ord("a")] == "a"
    assert all(ch.isprintable() and not ch.isspace() for ch in table.values())
    assert sum(ord(ch) >= 256 for ch in table.values()) == 68
    data = bytes(range(256))
    assert merges.bytes_of(merges.symbols_of(data)) == data


def test_merge_ranks_are_vocab_bpe():
    ranks = merges.merge_ranks()
    assert len(ranks) == 50000
    assert ranks[("Ġ", "t")] == 0   # the first merge line of GPT-2's vocab.bpe
    enc = tokenizer.get_encoding()
    # tiktoken numbers a merged token 256 + its merge's line: the same file, read independently
    for pair, rank in list(ranks.items())[::997]:
        assert enc.encode_single_token(merges.bytes_of(pair[0] + pair[1])) == 256 + rank


def test_hello_world_steps():
    trace = merges.merge_trace(" world")
    assert trace.start == ("Ġ", "w", "o", "r", "l", "d")
    assert trace.pieces == ("Ġworld",) and trace.ids == [995]
    ranks = merges.merge_ranks()
    for step in trace.steps:
        assert step.rank == ranks[(step.left, step.right)]
        assert step.left + step.right in step.pieces
    # each step merges the lowest-ranked pair available, so ranks rise step by step
    assert [s.rank for s in trace.steps] == sorted(s.rank for s in trace.steps)
    assert [s.step for s in trace.steps] == list(range(1, len(trace.steps) + 1))


def test_repeated_pair_is_merged_in_every_place():
    trace = merges.merge_trace("aaaa")
    first = trace.steps[0]
    assert (first.left, first.right, first.places) == ("a", "a", 2) and first.pieces == ("aa", "aa")
    assert trace.token_bytes == [tokenizer.token_bytes(i) for i in tokenizer.encode("aaaa")]


def test_pretokenize_chunks():
    text = "Hello world's 123 tests!!  \n\nok"
    chunks = merges.pretokenize(text)
    assert [c.text for c in chunks] == ["Hello", " world", "'s", " 123", " tests", "!!", "  \n", "\n", "ok"]
    assert "".join(c.text for c in chunks) == text
    assert all(text[c.start:c.end] == c.text for c in chunks)


def test_merges_equal_tiktoken_on_thousands_of_strings():
    rng = random.Random(14)
    enc = tokenizer.get_encoding()
    n_chunks = 0
    for _ in range(3000):
        text = random_string(rng)
        chunks = merges.pretokenize(text)
        assert "".join(c.text for c in chunks) == text
        ids = []
        for c in chunks:
            trace = merges.merge_trace(c.text)
            expected = [enc.decode_single_token_bytes(t) for t in enc.encode_ordinary(c.text)]
            assert trace.token_bytes == expected, (text, c.text)
            ids += trace.ids
            n_chunks += 1
        # the chunks are tiktoken's chunks too: their tokens put together are the whole text's
        assert ids == enc.encode_ordinary(text), text
    assert n_chunks > 10000


@pytest.mark.parametrize("text", ["", " ", "\n", "😀", "a"])
def test_short_chunks(text):
    trace = merges.merge_trace(text)
    assert b"".join(trace.token_bytes) == text.encode()
    assert trace.token_bytes == [tokenizer.token_bytes(i) for i in tokenizer.encode(text)]
