"""Bad input: nothing crashes or hangs, and every non-whitespace character is placed or counted."""
import collections

import numpy as np
import pytest

import glyph_rt
from glyph_rt import RenderConfig
from glyph_rt.render.textio import decode_text

CFG = RenderConfig(auto_cjk_fallback=False)
STRIPPED = "\xad\u200b"


def check_accounting(doc):
    text = doc.text
    ink = [i for i, c in enumerate(text) if not c.isspace() and c not in STRIPPED]
    lay = doc.layout
    assert lay.placed == len(ink)
    assert sorted(lay.g_src.tolist()) == ink  # each exactly once
    assert lay.stripped == sum(text.count(c) for c in STRIPPED)
    boxes = collections.Counter(text[i] for i in lay.g_src[lay.g_slot == 0].tolist())
    assert doc.missing_chars() == dict(boxes) and lay.missing == sum(boxes.values())


def render_all(text, cfg=CFG):
    doc = glyph_rt.Document(text, cfg)
    n = 0
    for _, buf, sizes in doc.iter_chunks(64):
        n += len(sizes)
        assert buf.dtype == np.uint8
    assert n == doc.num_pages
    check_accounting(doc)
    return doc


def test_empty_text():
    doc = render_all("")
    assert doc.num_pages == 0
    pages = glyph_rt.render("", CFG)
    assert len(pages) == 0 and pages.summary()["visual_tokens"]["glm4v"] == 0


@pytest.mark.parametrize("text", [" ", "\n", "   \t  \n\n\r\n  ", "\u3000\u2003\xa0"])
def test_whitespace_only(text):
    doc = render_all(text)
    assert doc.layout.placed == 0 and doc.num_pages == 1


def test_ten_megabyte_single_line():
    words = "lorem ipsum dolor sit amet consectetur adipiscing elit "
    text = words * (10_000_000 // len(words))
    doc = render_all(text)
    assert doc.num_pages > 900


def test_one_enormous_word():
    doc = render_all("x" * 200_000)
    assert doc.layout.l_page.size > 100


def test_invalid_utf8():
    data = b"good \xff\xfe bad \xc3( end"
    with pytest.raises(ValueError, match="invalid UTF-8 at byte 5"):
        decode_text(data, "f.txt")
    text, n = decode_text(data, "f.txt", errors="replace")
    assert n == 3 and text.count("\ufffd") == 3
    render_all(text)


def test_control_characters_are_boxes():
    doc = render_all("bell\x07 null\x00 esc\x1b del\x7f c1\x9b end")
    assert doc.missing_chars() == {"\x07": 1, "\x00": 1, "\x1b": 1, "\x7f": 1, "\x9b": 1}


def test_emoji_rtl_and_combining_marks():
    text = "emoji 😀👍🏽 rtl שלום עולם مرحبا combining e\u0301 a\u0308 zalgo Z\u0351\u0352\u0353 flags 🇫🇷"
    doc = render_all(text)
    assert "👍" in doc.missing_chars()  # the bundled fonts have few emoji: the rest are boxed and counted
    assert "ש" not in doc.missing_chars()


def test_characters_no_font_has():
    doc = render_all("\U0010FFFD\U000E0001\uFFFF\ud800 x")
    assert set(doc.missing_chars()) >= {"\U0010FFFD", "\uFFFF", "\ud800"}


def test_soft_hyphens_and_zero_width_spaces_are_counted():
    doc = render_all("co\xadop\u200beration " * 10)
    assert doc.layout.stripped == 20
    s = doc.summary(sizes=[], tokenizer=None)
    assert s["stripped_chars"] == 20


def test_many_newlines():
    render_all("\n" * 5000 + "end")


def test_max_pages_truncates_and_says_so():
    doc = glyph_rt.Document("word " * 200_000, CFG, max_pages=2)
    assert doc.num_pages == 2 and doc.layout.truncated
    assert doc.summary(sizes=[], tokenizer=None)["truncated"]


def test_non_str_input():
    with pytest.raises(TypeError, match="str"):
        glyph_rt.render(b"bytes")
