"""gpt2core.text.tokenizer: ids, round-trips, the special token, breakdown spans, file hashes.

The reference tokenizer is Hugging Face's GPT2Tokenizer (the Rust `tokenizers` BPE), built from
the same vocab files: an independent implementation of GPT-2's byte-level BPE.
"""
import hashlib
import inspect
import json

import pytest

from gpt2core.text import tokenizer as tok
from gpt2core.text.tokenizer import EOT, EOT_ID, breakdown, decode, encode

TEXTS = [
    "Hello, world!",
    "café naïve résumé Ångström Øre Straße",                       # accents
    "日本語のテキスト、中文字符和한국어",                                   # CJK + Hangul
    "emoji 🎉🚀 and 👍🏽 skin tone",                                   # astral plane + modifier
    "family 👨‍👩‍👧 and flag 🏳️‍🌈",                                       # ZWJ sequences
    "שלום עולם and مرحبا بالعالم",                                  # RTL
    "e\u0301 n\u0303 a\u0308\u0323 Z\u0351\u0352\u0353",            # combining marks
    "line one\nline two\r\n\ttabbed\t\tend\n\n",                  # newlines and tabs
    "   leading and trailing   ",
    "I'm sure they'll say we've done what you'd've",
    "numbers 1234567 3.14159 -42 1e-5",
    "\u200b zero width \ufeff bom \u00a0 nbsp",
    "",
]


@pytest.fixture(scope="module")
def reference():
    transformers = pytest.importorskip("transformers")
    vocab = json.loads(open(tok._data_file("encoder.json"), encoding="utf-8").read())
    lines = open(tok._data_file("vocab.bpe"), encoding="utf-8").read().split("\n")[1:]
    merges = [tuple(line.split(" ")) for line in lines if line]
    return transformers.GPT2Tokenizer(vocab=vocab, merges=merges)


@pytest.fixture(scope="module")
def byte_decoder():
    """GPT-2's bytes_to_unicode table, written out (OpenAI's encoder.py), inverted."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def test_hello_world():
    assert encode("Hello, world!") == [15496, 11, 995, 0]
    assert decode([15496, 11, 995, 0]) == "Hello, world!"


def test_well_known_ids():
    assert encode(" the") == [262]
    assert encode("\n") == [198]
    assert encode(" ") == [220]
    assert EOT_ID == 50256 and EOT == "<|endoftext|>"
    assert decode([EOT_ID]) == EOT


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(text):
    ids = encode(text)
    assert all(isinstance(i, int) and 0 <= i < EOT_ID for i in ids)
    assert decode(ids) == text
    assert b"".join(tok.token_bytes(i) for i in ids) == text.encode("utf-8")


@pytest.mark.parametrize("text", TEXTS)
def test_matches_reference_tokenizer(reference, text):
    assert encode(text) == reference.encode(text)


def test_token_bytes_match_the_vocab_file(byte_decoder):
    vocab = json.loads(open(tok._data_file("encoder.json"), encoding="utf-8").read())
    by_id = {i: s for s, i in vocab.items()}
    assert len(by_id) == 50257
    for i in list(range(0, 50257, 97)) + [0, 198, 220, 50255]:
        assert tok.token_bytes(i) == bytes(byte_decoder[c] for c in by_id[i]), i


def test_typed_endoftext_is_plain_text(reference):
    text = f"a{EOT}b"
    ids = encode(text)
    assert EOT_ID not in ids
    assert decode(ids) == text
    assert encode(EOT) != [EOT_ID] and decode(encode(EOT)) == EOT
    # the same ids as the reference encoding the special token's characters as ordinary text
    assert encode(EOT) == reference.encode("<|") + reference.encode("endoftext") + reference.encode("|>")
    assert encode(EOT, allow_special=True) == [EOT_ID]
    assert encode(text, allow_special=True) == encode("a") + [EOT_ID] + encode("b")
    assert decode(encode(text, allow_special=True)) == text


def test_encode_rejects_non_strings():
    with pytest.raises(TypeError):
        encode(b"bytes")
    with pytest.raises(TypeError):
        encode(None)


def test_decode_out_of_range_ids():
    with pytest.raises(ValueError):
        decode([50257])
    with pytest.raises(ValueError):
        decode([-1])


def test_decode_of_split_character_uses_replacement():
    ids = encode("🎉")
    assert len(ids) >= 2                                     # the emoji is split into byte tokens
    assert decode(ids[:1]) == "\ufffd" * len(decode(ids[:1]))
    assert "\ufffd" in decode(ids[:1])


@pytest.mark.parametrize("text", ["a\ud800b", "\udfff", "x\ud83d", "\ud83d\ude00 ok", "\udc00\ud800"])
def test_lone_surrogates_do_not_crash(text):
    ids = encode(text)
    out = decode(ids)
    expected = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")  # pairs join, lone -> U+FFFD
    assert out == expected
    assert "\ud800" not in out and "\udfff" not in out
    infos = breakdown(text)
    assert [t.id for t in infos] == ids
    check_breakdown(expected, infos)


def test_lone_surrogate_becomes_replacement_character():
    assert encode("a\ud800b") == encode("a\ufffdb")
    assert decode(encode("a\ud800b")) == "a\ufffdb"


# ---- breakdown -------------------------------------------------------------------------------

def char_boundaries(text: str) -> set[int]:
    out, pos = {0}, 0
    for ch in text:
        pos += len(ch.encode("utf-8"))
        out.add(pos)
    return out


def check_breakdown(text, infos):
    """Spans cover the text in order; partial flags and bytes agree with UTF-8."""
    raw = text.encode("utf-8")
    assert b"".join(t.bytes for t in infos) == raw
    assert [t.index for t in infos] == list(range(len(infos)))
    if not text:
        assert infos == []
        return
    assert infos[0].start == 0 and infos[-1].end == len(text)
    covered = set()
    boundaries = char_boundaries(text)
    offset = 0
    for prev, t in zip([None] + infos[:-1], infos):
        assert 0 <= t.start < t.end <= len(text)
        covered.update(range(t.start, t.end))
        if prev is not None:
            # next token starts where the last ended, or on the same character when it was split
            assert t.start == prev.end or (t.start == prev.end - 1 and prev.partial and t.partial)
        b0, b1 = offset, offset + len(t.bytes)
        offset = b1
        assert t.partial == (b0 not in boundaries or b1 not in boundaries)
        # a partial token is exactly a token whose bytes are not valid UTF-8 on their own
        try:
            t.bytes.decode("utf-8")
            valid = True
        except UnicodeDecodeError:
            valid = False
        assert t.partial == (not valid), t
        if not t.partial:
            assert text[t.start:t.end].encode("utf-8") == t.bytes
        else:
            assert t.bytes in text[t.start:t.end].encode("utf-8")
        assert t.id == encode(text)[t.index]
        assert tok.token_bytes(t.id) == t.bytes
    assert covered == set(range(len(text)))


@pytest.mark.parametrize("text", TEXTS)
def test_breakdown_spans_cover_the_text(text):
    check_breakdown(text, breakdown(text))


def test_breakdown_marks_split_multibyte_characters():
    text = "a 👨‍👩‍👧 b"
    infos = breakdown(text)
    partial = [t for t in infos if t.partial]
    assert partial, "the family emoji is split across byte tokens"
    # every partial token covers exactly one character of the ZWJ sequence (or a space and one)
    for t in partial:
        chars = text[t.start:t.end]
        assert any(ord(c) > 0x7F for c in chars)
    whole = [t for t in infos if not t.partial]
    assert [text[t.start:t.end] for t in whole][:1] == ["a"]


def test_breakdown_printable_form():
    infos = breakdown("a b\n\tc")
    texts = [t.text for t in infos]
    assert "".join(texts).replace("␣", " ").replace("↵", "\n").replace("⇥", "\t") == "a b\n\tc"
    em = breakdown("🎉")
    assert all(t.partial for t in em)
    assert "".join(t.text for t in em) == "".join(f"<0x{b:02X}>" for b in "🎉".encode("utf-8"))


def test_breakdown_special_token():
    infos = breakdown(f"x{EOT}", allow_special=True)
    assert [t.id for t in infos][-1] == EOT_ID
    assert infos[-1].bytes == EOT.encode() and infos[-1].start == 1 and infos[-1].end == 1 + len(EOT)
    assert EOT_ID not in [t.id for t in breakdown(f"x{EOT}")]


def test_token_info_to_dict():
    d = breakdown("é")[0].to_dict()
    assert d == {"index": 0, "id": encode("é")[0], "bytes": "c3 a9", "text": "é", "start": 0, "end": 1,
                 "partial": False}


# ---- files and their hashes ------------------------------------------------------------------

def test_vocab_files_have_tiktoken_pinned_hashes():
    import tiktoken_ext.openai_public as pub
    source = inspect.getsource(pub.gpt2)
    for name, const in (("vocab.bpe", tok.VOCAB_BPE_SHA256), ("encoder.json", tok.ENCODER_JSON_SHA256)):
        with open(tok._data_file(name), "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        assert digest == const
        assert f'"{digest}"' in source


@pytest.mark.parametrize("attr", ["VOCAB_BPE_SHA256", "ENCODER_JSON_SHA256"])
def test_hash_mismatch_is_an_error(monkeypatch, attr):
    good = tok.get_encoding()
    monkeypatch.setattr(tok, attr, "0" * 64)
    monkeypatch.setattr(tok, "_encoding", None)       # force a rebuild; undone after the test
    with pytest.raises(RuntimeError, match="sha256") as info:
        tok.get_encoding()
    expected_file = "vocab.bpe" if attr == "VOCAB_BPE_SHA256" else "encoder.json"
    assert expected_file in str(info.value)
    with pytest.raises(RuntimeError):
        encode("still refused")
    assert tok._encoding is None
    monkeypatch.undo()
    assert tok._encoding is good
    assert encode("Hello, world!") == [15496, 11, 995, 0]


def test_ranks_from_encoder_json_equal_tiktokens_from_the_merges(monkeypatch):
    """get_encoding reads the ranks from encoder.json alone; tiktoken's own loader derives them from vocab.bpe's
    merges and checks them against encoder.json. Both give the same table."""
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")      # read the files as they are, write nothing
    theirs = data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=tok._data_file("vocab.bpe"),
                                             encoder_json_file=tok._data_file("encoder.json"))
    ours = tok.mergeable_ranks(tok._data_file("encoder.json"))
    assert len(ours) == 50256 and ours == theirs


def test_encoding_rebuilds_with_correct_hashes(monkeypatch):
    monkeypatch.setattr(tok, "_encoding", None)
    enc = tok.get_encoding()
    assert enc is tok.get_encoding()   # built once
    assert enc.n_vocab == 50257
    assert enc.encode("Hello, world!") == [15496, 11, 995, 0]
