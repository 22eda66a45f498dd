"""tiktoken's BPE on Qwen's vocabulary (and on a GPT-2-style ByteLevel one) counts and encodes exactly what
Hugging Face `tokenizers` does."""
import json
import os
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from glyph_rt.render import bpe
from glyph_rt.render.textio import sample_text
from glyph_rt.render.tokens import TextTokenizer, default_tokenizer_path

pytest.importorskip("tiktoken")
EXAMPLES = int(os.environ.get("GLYPH_RT_FUZZ_EXAMPLES", "150"))


@pytest.fixture(scope="module")
def tok():
    t = TextTokenizer()
    assert t.engine == "tiktoken"
    return t


def hf_count(tok, text: str) -> int:
    return len(tok._tok.encode(text, add_special_tokens=False).ids)


def hf_ids(tok, text: str) -> list[int]:
    return tok._tok.encode(text, add_special_tokens=False).ids


@pytest.fixture(scope="module")
def tiny():
    """A ByteLevel(use_regex=True) tokenizer with GLM's special tokens, and its fast form."""
    from glyph_rt.models.tiny import tiny_tokenizer

    t = tiny_tokenizer()
    fast = bpe.for_tokenizer(t)
    assert fast is not None and fast.pattern == bpe.GPT2_PATTERN
    return t, fast


def tiny_matches(tiny, text: str) -> bool:
    t, fast = tiny
    return fast.encode(text) == t.backend_tokenizer.encode(text, add_special_tokens=False).ids


SAMPLES = [
    "Hello world", "  leading and trailing spaces  ", "tabs\tand\t\ttabs", "\n\n\nnewlines\r\n\r\nCRLF\r",
    "naïve café résumé", "e\u0301 combining, NFC composes it; A\u030a; \u212b ångström", "\ufb01 ligature, \u2126 ohm",
    "東京は日本の首都です。中文文本测试，标点符号！", "한국어 텍스트 테스트", "日本語のひらがなとカタカナ",
    "emoji 👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️", "\u0915\u094d\u0937\u093f \u0928\u092e\u0938\u094d\u0924\u0947 देवनागरी",
    "العربية עברית ไทย မြန်မာ", "numbers 1234567890 3.14159 1e-9 ١٢٣", "don't I'll we've they're she'd IT'S 'S",
    "<|im_start|>user\nhello<|im_end|>\n<|endoftext|>", "<think>x</think> <tool_call>{}</tool_call>",
    "<|im_end|>\u0338 stays apart", "code: def f(x):\n    return x**2  # comment\n\n\tif a != b: pass",
    "\u00a0nbsp\u2003em\u3000ideographic\u200bzwsp\u00adshy", "a" * 5000, " " * 300 + "x", "\x00\x01\x7f controls",
    "ſ long s, K kelvin, 'ſ 'K", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math 𝟙𝟚𝟛", "\U000e0041 tags \U0010fffd private",
]


@pytest.mark.parametrize("text", SAMPLES)
def test_samples_match_tokenizers(tok, tiny, text):
    assert tok.count(text) == hf_count(tok, text)
    assert tok._fast.encode(text) == hf_ids(tok, text)
    assert tiny_matches(tiny, text + " <|user|>\n<|image|>x<|endoftext|>")


def test_sample_text_and_long_text(tok):
    s = sample_text()
    assert tok.count(s) == hf_count(tok, s)
    long = "The quick brown fox jumps over the lazy dog.\n" * 30000
    assert tok.count(long) == 30000 * tok.count("The quick brown fox jumps over the lazy dog.\n")


PIECES = st.sampled_from([
    " ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u3000", "'s", "'LL", "<|im_start|>", "<|endoftext|>", "<think>",
    "e\u0301", "\u0338", "👍", "🏽", "\u200d", "東", "京", "한", "\u0915", "\u094d", "\u0937", "ไ", "1", "٣",
    "ab", "The", " the", "ing", ".", ",", "!?", "#", "{", "}", "-", "_", "Å", "\u212b", "ﬁ", "x",
])
TEXT = st.one_of(
    st.text(max_size=60),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=60),
    st.lists(PIECES, max_size=40).map("".join),
    st.lists(st.one_of(PIECES, st.text(max_size=4)), max_size=30).map("".join),
)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(TEXT)
def test_generated_text_matches_tokenizers(tok, tiny, text):
    assert tok.count(text) == hf_count(tok, text)
    assert tok._fast.encode(text) == hf_ids(tok, text)
    assert tiny_matches(tiny, text)


@settings(max_examples=max(20, EXAMPLES // 5), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(TEXT)
def test_nfc_forms_count_alike(tok, text):
    """tokenizers normalizes to NFC first: a text and its NFD form count the same outside added tokens."""
    if "<" in text:
        return
    assert tok.count(unicodedata.normalize("NFD", text)) == hf_count(tok, unicodedata.normalize("NFD", text))


def test_vocabulary_shape_is_checked(tmp_path):
    j = json.loads(default_tokenizer_path().read_text(encoding="utf-8"))
    assert bpe.build(default_tokenizer_path()) is not None
    bad = dict(j, normalizer={"type": "NFKC"})
    p = tmp_path / "tokenizer.json"
    p.write_text(json.dumps(bad), encoding="utf-8")
    assert bpe.build(p) is None
    t = TextTokenizer(p)  # counted by tokenizers instead
    assert t.engine == "tokenizers" and t.count("Hello world") == 2
    swapped = dict(j, model=dict(j["model"], merges=j["model"]["merges"][1:] + j["model"]["merges"][:1]))
    p.write_text(json.dumps(swapped), encoding="utf-8")
    assert bpe.build(p) is None  # merges out of id order: not tiktoken's rule


def test_cache_is_rebuilt_when_damaged(tmp_path, monkeypatch):
    monkeypatch.setenv("GLYPH_RT_CACHE", str(tmp_path))
    path = default_tokenizer_path()
    first = bpe.load(path)
    cache = bpe.cache_path(path)
    assert cache.is_file() and first.count("Hello world") == 2
    cache.write_bytes(b"\x00garbage")
    assert bpe.load(path).count("Hello world") == 2
    assert cache.read_bytes()[:8] != b"\x00garbage"


def test_bad_tokenizer_file(tmp_path):
    p = tmp_path / "tokenizer.json"
    p.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="tokenizer"):
        TextTokenizer(p)


def test_count_ahead(tok):
    text = sample_text()
    tok.count_ahead(text)
    assert tok.count(text) == hf_count(tok, text)
    tok.count_ahead(text)
    assert tok.count(text[:100]) == hf_count(tok, text[:100])  # another text: counted now
    assert tok.count(text) == hf_count(tok, text)


def test_pattern_tiktoken_cannot_compile(tmp_path):
    j = json.loads(default_tokenizer_path().read_text(encoding="utf-8"))
    j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(?<name"  # not a regex
    p = tmp_path / "tokenizer.json"
    p.write_text(json.dumps(j), encoding="utf-8")
    assert bpe.build(p) is None


def test_the_pruned_and_the_full_bpe_count_alike():
    """The first counts build a BPE pruned to the text, later ones share the full one: the same counts."""
    from glyph_rt.render import bpe

    fast = bpe.load(default_tokenizer_path())
    texts = [sample_text()[i * 500:(i + 1) * 500] for i in range(bpe.PRUNED_COUNTS + 2)]
    counts = [fast.count(t) for t in texts]
    assert fast._full is not None
    assert counts == [len(fast.encode(t)) for t in texts]


def test_the_cache_keeps_within_its_budget_least_recently_used_first(tmp_path):
    """Every tokenizer.json seen leaves an entry (12 MB for Qwen's): the oldest go once the budget is passed."""
    import time

    for i in range(5):
        (tmp_path / f"bpe-{i}.marshal").write_bytes(b"x" * 100)
        os.utime(tmp_path / f"bpe-{i}.marshal", (time.time() - 100 + i, time.time() - 100 + i))
    os.utime(tmp_path / "bpe-0.marshal")  # read just now
    (tmp_path / "other.txt").write_bytes(b"x" * 1000)
    bpe.prune(tmp_path, budget=250)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bpe-0.marshal", "bpe-4.marshal", "other.txt"]
    bpe.prune(tmp_path, budget=10)  # the newest always stays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bpe-0.marshal", "other.txt"]


def test_a_read_only_cache_is_used_as_it_is(tmp_path, monkeypatch):
    """Marking an entry used (its mtime) fails on a read-only cache: the entry is still read, not built again."""
    monkeypatch.setenv("GLYPH_RT_CACHE", str(tmp_path))
    path = default_tokenizer_path()
    bpe.load(path)
    builds = []
    monkeypatch.setattr(bpe, "build", lambda p: builds.append(p))
    monkeypatch.setattr(bpe.os, "utime", lambda *a: (_ for _ in ()).throw(PermissionError(13, "read-only")))
    assert bpe.load(path).count("Hello world") == 2 and builds == []
