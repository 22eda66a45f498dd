"""Training tasks: OCR targets are the pages' exact text, labels cover exactly the response, samples are
deterministic per (seed, index) and survive pickling."""
import pickle

import pytest

from glyph_rt.models.prompt import IGNORE_INDEX, PromptBuilder
from glyph_rt.models.tiny import tiny_tokenizer
from glyph_rt.render.config import RenderConfig
from glyph_rt.render.pages import Document
from glyph_rt.render.textio import sample_text
from glyph_rt.train.collate import expand_images
from glyph_rt.train.styles import StyleSampler
from glyph_rt.train.tasks import TaskError, make_task, think_answer

CFG = RenderConfig(dpi=36, page_size=(300, 260))


@pytest.fixture(scope="module")
def builder():
    tok = tiny_tokenizer()
    return PromptBuilder(tok, tok.convert_tokens_to_ids("<|image|>"))


@pytest.fixture(scope="module")
def text():
    return sample_text()


def trained_text(builder, s):
    ids = [t for t, lab in zip(s.input_ids, s.labels) if lab != IGNORE_INDEX]
    return builder.tokenizer.decode(ids, skip_special_tokens=True)


def test_page_spans_partition_the_text(text):
    """Every character is on exactly one page's span or is whitespace between spans: none lost, none duplicated."""
    window = text[:9000]
    doc = Document(window, CFG)
    spans = doc.page_spans()
    assert doc.num_pages > 3
    assert not window[:spans[0][0]].strip() and not window[spans[-1][1]:].strip()
    for (a, b), (c, d) in zip(spans, spans[1:]):
        assert a < b <= c < d and not window[b:c].strip()


@pytest.mark.parametrize("index", range(6))
def test_ocr_target_is_the_text_of_the_pages(builder, text, index):
    s = make_task("ocr", builder, config=CFG, max_pages=3, window_chars=5000)({"text": text}, index)
    (page,) = s.pages
    doc = page.document()
    spans = doc.page_spans()
    target = s.messages[-1]["content"]
    assert target == page.text[spans[0][0]:spans[-1][1]]
    assert not page.text[:spans[0][0]].strip()
    if not doc.layout.truncated:  # every character of the window is on the pages
        assert not page.text[spans[-1][1]:].strip()
    assert s.num_images == doc.num_pages <= 3
    assert trained_text(builder, s).strip() == target.strip()


@pytest.mark.parametrize("task", ["ocr", "gen", "qa"])
def test_labels_cover_exactly_the_response(builder, text, task):
    rec = {"text": text, "context": text[:3000], "question": "What license is this?", "answer": "The GNU GPL."}
    pages = {} if task == "qa" else {"max_pages": 2}  # a QA context must fit whole
    s = make_task(task, builder, config=CFG, window_chars=4000, **pages)(rec, 3)
    answer = s.messages[-1]["content"]
    assert trained_text(builder, s).strip() == answer.strip()
    first = next(i for i, lab in enumerate(s.labels) if lab != IGNORE_INDEX)
    assert all(lab != IGNORE_INDEX for lab in s.labels[first:])  # one contiguous response, to the end
    assert s.input_ids.count(builder.image_token_id) == s.num_images
    # expanding the placeholders gives what PromptBuilder.encode gives with the real visual tokens
    vt = [5 + k for k in range(s.num_images)]
    ids, labels = expand_images(s.input_ids, s.labels, builder.image_token_id, vt)
    ref = builder.encode(s.messages, vt)
    assert (ids, labels) == (ref.input_ids, ref.labels)


def test_lm_loss_on_the_text_spans_in_order(builder, text):
    task = make_task("lm", builder, config=CFG, max_pages=3, window_chars=3000)
    for index in range(8):
        s = task({"text": text}, index)
        content = s.messages[0]["content"]
        texts = [c["text"] for c in content if c["type"] == "text"]
        assert texts and s.num_images == sum(c["type"] == "image" for c in content) >= 1
        assert trained_text(builder, s) == "".join(texts)
        # the pages' text and the text spans are consecutive pieces of the document, in order
        pages, shown, k = iter(s.pages), [], 0
        for c in content:
            if c["type"] == "text":
                shown.append(c["text"])
            elif k == 0:
                page = next(pages)
                shown.append(page.text[:page.document().page_spans()[-1][1]])
                k = page.num_pages - 1
            else:
                k -= 1
        assert content[0]["type"] == "image"
        assert " ".join("\n".join(shown).split()) in " ".join(text.split())  # up to whitespace between pieces
        assert s.input_ids.count(builder.image_token_id) == s.num_images


def test_added_tokens_in_a_record_are_plain_text(builder, text):
    """A corpus that mentions "<|image|>" or "<|endoftext|>" trains on those characters, tokenized as the tokenizer
    tokenizes them with split_special_tokens: no page placeholder without a page, no eos inside an answer."""
    tok, eos = builder.tokenizer, builder.tokenizer.eos_token_id
    record = {"text": text[:600] + " a chat log: <|image|> then <|endoftext|> and <|user|> go on.\n" + text[600:900]}
    for name in ("ocr", "gen", "lm"):
        task = make_task(name, builder, config=CFG, max_pages=3, window_chars=2000)
        for index in range(6):
            s = task(record, index)
            assert s.input_ids.count(builder.image_token_id) == s.num_images
            trained = [t for t, lab in zip(s.input_ids, s.labels) if lab != IGNORE_INDEX]
            if name != "lm":
                assert trained.count(eos) == 1 and trained[-1] == eos  # the answer's end, learnt once
                answer = s.messages[-1]["content"]
                assert trained[:-1] == tok(answer, add_special_tokens=False, split_special_tokens=True)["input_ids"]
            else:
                assert eos not in trained
                spans = "".join(c["text"] for c in s.messages[0]["content"] if c["type"] == "text")
                assert tok.decode(trained) == spans
    qa = make_task("qa", builder, config=CFG, max_pages=3)
    s = qa({"context": text[:800], "question": "What is <|image|>?", "answer": "<|endoftext|>"}, 0)
    assert s.input_ids.count(builder.image_token_id) == s.num_images
    assert [t for t, lab in zip(s.input_ids, s.labels) if lab != IGNORE_INDEX].count(eos) == 1
    with pytest.raises(TaskError, match="record 3: .*private-use"):
        qa({"context": text[:800], "question": "q\U0010F000?", "answer": "a"}, 3)


def test_thinking_format_tags_stay_tokens():
    from glyph_rt.models.tiny import GLM_SPECIAL

    tok = tiny_tokenizer(special=GLM_SPECIAL + ["<think>", "</think>"])
    b = PromptBuilder(tok, tok.convert_tokens_to_ids("<|image|>"))
    think, end = tok.convert_tokens_to_ids(["<think>", "</think>"])
    qa = make_task("qa", b, config=CFG, max_pages=3, think=True)
    for answer in ("42, not <think>", "<think>I read it.</think>\n42, not <think>"):
        s = qa({"context": sample_text()[:800], "question": "What?", "answer": answer, "thinking": "I read it."}, 0)
        trained = [t for t, lab in zip(s.input_ids, s.labels) if lab != IGNORE_INDEX]
        assert trained.count(think) == 1 and trained.count(end) == 1 and trained[0] == think
        assert s.messages[-1]["content"] == "<think>I read it.</think>\n42, not <think>"


def test_text_windows_are_never_short():
    import random

    from glyph_rt.train.tasks import text_window

    lines = "".join(("x" * 950 + "\n") for _ in range(4))  # long lines, each ending with a newline
    rng = random.Random(0)
    assert min(len(text_window(lines, 1500, rng)) for _ in range(2000)) >= 750


def test_windows_and_cuts_end_between_words():
    """A window that stops short of the text ends at a line end or a space (the lm task's last span and a forward
    gen answer end there: they used to end mid-word, 40 of 150 lm samples); a cut finds a space at the text's
    start as it finds any other."""
    import random

    from glyph_rt.train.tasks import _cut, text_window

    words = " ".join(random.Random(1).choice(["amber", "basalt", "cobalt", "dune"]) for _ in range(5000))
    rng = random.Random(0)
    for _ in range(200):
        w = text_window(words, 1500, rng)
        assert 750 <= len(w) <= 1500 and (words.endswith(w) or w.endswith(" ")), w[-20:]
    assert _cut(" abcdefgh", 6) == 1


def test_deterministic_and_picklable(builder, text):
    styles = StyleSampler(seed=3)
    a = make_task("gen", builder, styles=styles, seed=1, max_pages=2)
    b = make_task("gen", builder, styles=StyleSampler(seed=3), seed=1, max_pages=2)
    for i in (5, 0, 7):
        sa, sb = a({"text": text}, i), b({"text": text}, i)
        assert (sa.input_ids, sa.labels, sa.messages) == (sb.input_ids, sb.labels, sb.messages)
        assert sa.pages[0].config == styles.sample(i).config
    s = pickle.loads(pickle.dumps(sa))
    assert s.pages[0].document().num_pages == sa.pages[0].num_pages and s.input_ids == sa.input_ids
    assert a({"text": text}, 1).input_ids != a({"text": text}, 2).input_ids


def test_bad_records(builder):
    with pytest.raises(TaskError, match="field 'text'"):
        make_task("ocr", builder, config=CFG)({"txt": "x"}, 0)
    with pytest.raises(TaskError, match="field 'answer'"):
        make_task("qa", builder, config=CFG)({"context": "abc", "question": "q"}, 4)
    with pytest.raises(ValueError, match="unknown"):
        make_task("nope", builder)


def test_needle_qa_from_plain_text(text):
    task = make_task("qa", None, config=CFG, max_pages=2, window_chars=6000)
    for index in range(4):
        s = task({"text": text}, index)
        (page,) = s.pages
        answer = s.messages[-1]["content"]
        shown = page.text[:page.document().page_spans()[-1][1]]
        assert answer.isdigit() and f"is: {answer}." in shown and s.input_ids == []
        assert "magic number" in s.messages[0]["content"][-1]["text"]


def test_qa_whose_context_does_not_fit_is_skipped_not_truncated(text):
    """A QA context longer than max_pages would train an answer the pages do not show: TaskError (the loader
    skips the record); the default page limit is generous; think writes the thinking format, needles too."""
    from glyph_rt.train.tasks import TaskError

    rec = {"context": text * 4, "question": "Who wrote it?", "answer": "Someone"}
    with pytest.raises(TaskError, match="needs more than 2 pages"):
        make_task("qa", None, config=CFG, max_pages=2)(rec, 0)
    task = make_task("qa", None, config=CFG, think=True)
    assert task.max_pages == 64
    assert task({**rec, "context": text[:2000]}, 0).messages[-1]["content"] == "<think></think>\nSomeone"
    needle = task({"text": text}, 1).messages[-1]["content"]
    assert needle.startswith("<think></think>\n") and needle.split("\n")[-1].isdigit()


def test_document_crosses_to_a_process_whose_atlas_differs(text, tmp_path, monkeypatch):
    """A pickled Document is drawn the same by a process whose atlas numbered the glyphs differently."""
    from collections import OrderedDict

    import numpy as np

    from glyph_rt.render.atlas import FontAtlas
    from glyph_rt.render.layout import atlas_for

    monkeypatch.setenv("GLYPH_RT_CACHE", str(tmp_path / "a"))
    monkeypatch.setattr(FontAtlas, "_memory", OrderedDict())
    doc = Document(text[:3000] + " \u00e9\u00df\u0416", CFG)
    data = pickle.dumps(doc)
    want, sizes = doc.rasterize()
    # "another process": an empty atlas cache that first meets the glyphs in another order
    monkeypatch.setenv("GLYPH_RT_CACHE", str(tmp_path / "b"))
    monkeypatch.setattr(FontAtlas, "_memory", OrderedDict())
    atlas_for(CFG).ensure(np.asarray(sorted({ord(c) for c in "zyx\u0416WVU" + text[5000:6000]}, reverse=True)))
    other = pickle.loads(data)
    assert other.atlas is not doc.atlas and not np.array_equal(other.layout.g_slot, doc.layout.g_slot)
    got, got_sizes = other.rasterize()
    assert got_sizes == sizes and np.array_equal(got, want)


def test_thinking_none_is_absent(builder, text):
    """A record's "thinking" of None (Parquet and `datasets` fill a missing column with it) is no thinking, never
    the text "None" trained inside <think></think>."""
    task = make_task("qa", builder, config=CFG, think=True)
    s = task({"context": text[:1500], "question": "Q?", "answer": "A.", "thinking": None}, 0)
    assert s.messages[-1]["content"] == "<think></think>\nA."
    assert "None" not in trained_text(builder, s)
    assert think_answer("A.", None) == "<think></think>\nA."


def test_ocr_whose_pages_miss_glyphs_is_a_task_error_naming_them(builder, text):
    """OCR reads back what the pages show: a sample whose pages draw characters as boxes (no font of the style
    covers them) is a TaskError (skipped and counted by the loader) naming the characters and their count."""
    from glyph_rt.train.tasks import MissingGlyphs

    task = make_task("ocr", builder, config=CFG, max_pages=1)
    rec = {"text": "Hello \x07 world \x1b end. " * 5}
    with pytest.raises(MissingGlyphs, match=r"record 2: field 'text': the pages draw 10 characters as boxes .*"
                                            r"U\+0007\) x5, .*U\+001B\) x5"):
        task(rec, 2)
    assert issubclass(MissingGlyphs, TaskError)
    s = task({"text": "caf\u00e9 \u0416\t\u00a0\u200b\u00ad " + text[:300]}, 0)  # drawn or invisible: not missing
    assert s.messages[-1]["content"].startswith("caf\u00e9 \u0416")


def test_max_tokens_caps_the_pages_ocr_lm_and_gen_show(builder, text):
    """With max_tokens (the collator's max_length), ocr, lm and gen show at most as many pages as max_tokens holds
    full canvases of the sample's style, so no sample is drawn only to be left out for its pages; qa is left as it
    is (its context is whole or the sample is skipped)."""
    from glyph_rt.render.raster import canvas_size
    from glyph_rt.render.tokens import vision_model

    W, H = canvas_size(CFG)
    per_page = vision_model("glm4v").tokens(H, W)
    for name in ("ocr", "lm", "gen"):  # no builder: the pages alone count (the text's tokens: the test below)
        free = make_task(name, None, config=CFG, max_pages=8, window_chars=6000)
        capped = make_task(name, None, config=CFG, max_pages=8, window_chars=6000, max_tokens=2 * per_page + 1)
        assert capped.page_budget(CFG) == 2 and free.page_budget(CFG) == 8
        most = max(sum(p.num_pages for p in free({"text": text}, i).pages) for i in range(12))
        assert most > 2, name
        assert all(sum(p.num_pages for p in capped({"text": text}, i).pages) <= 2 for i in range(12)), name
    assert make_task("ocr", builder, config=CFG, max_pages=8, max_tokens=1).page_budget(CFG) == 1  # one at least
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match="max_tokens: .* must be an integer >= 1"):
            make_task("lm", builder, config=CFG, max_tokens=bad)


def drawn_length(s) -> int:
    """The sample's tokens once its pages are drawn (what the collator checks against max_length)."""
    from glyph_rt.models.prompt import tokens_per_image
    from glyph_rt.train.collate import render_samples

    _, grid, _ = render_samples([s])
    return len(s.input_ids) - s.num_images + sum(tokens_per_image(grid))


def test_page_tokens_are_the_drawn_pages_tokens(text):
    """page_tokens, the tasks' length check before drawing, gives each page's visual tokens as drawn (auto-crop
    and snapping included) from the layout alone, on the style sampler's styles."""
    from glyph_rt.render.tokens import vision_model
    from glyph_rt.train.tasks import page_tokens

    styles = StyleSampler(seed=0)
    for i in range(6):
        config = styles.sample(i).config
        for vision in ("glm4v", "qwen2_5_vl"):
            doc = Document(text[i * 3000:i * 3000 + 2500], config, max_pages=2)
            _, sizes = doc.rasterize()
            assert page_tokens(doc, vision) == [vision_model(vision).tokens(h, w) for w, h in sizes]
            assert page_tokens(doc, vision, last=False) >= page_tokens(doc, vision)  # the last page uncropped


@pytest.mark.parametrize("scale", [1.0, 0.8, 0.5, 1.5])
def test_page_tokens_bound_boxes_whose_resized_edges_turn_to_ink(scale):
    """A paragraph background 5 grey levels off the page is no ink by Glyph's rule, but the bicubic resize of the
    horizontal scale rings at its edges past that: page_tokens stays an upper bound of the drawn pages' tokens."""
    from glyph_rt.render.tokens import vision_model
    from glyph_rt.train.tasks import page_tokens

    c = RenderConfig(page_size=(300, 200), margin_x=10, margin_y=10, para_bg_color="#FFFFCF", border_padding=3,
                     horizontal_scale=scale, snap=28, auto_crop_width=True, auto_crop_last_page=True)
    doc = Document("Short line one.\nShort line two.\n\n" * 3, c)
    _, sizes = doc.rasterize()
    drawn = [vision_model("glm4v").tokens(h, w) for w, h in sizes]
    assert all(e >= d for e, d in zip(page_tokens(doc), drawn)), (page_tokens(doc), drawn)


def test_qa_longer_than_max_tokens_is_too_long_before_a_page_is_drawn(builder, text):
    """A QA context whose pages and text pass max_tokens is TooLong (the loader counts it as too long, draws
    nothing: tests/test_loader.py), found from its layout; a needle's haystack ends where the pages that fit end,
    so needle samples fit."""
    from glyph_rt.train.tasks import TooLong

    limit = 600  # 20 full pages of CFG (30 visual tokens each)
    task = make_task("qa", builder, config=CFG, max_tokens=limit, think=True, window_chars=40000)
    assert task.layout_pages(CFG) < task.max_pages  # a long context is not laid out over 64 pages
    short = {"context": text[:900], "question": "Who?", "answer": "Them."}
    assert drawn_length(task(short, 0)) <= drawn_length(task({**short, "context": text[:15000]}, 0)) <= limit
    for bad in ({"context": text[:60000]}, {"answer": text[:3000]}):  # its pages, or its text
        with pytest.raises(TooLong, match=f"record 3: .* over max_tokens={limit}"):
            task({**short, **bad}, 3)
    for i in range(4):
        s = task({"text": text}, i)
        n, answer = drawn_length(s), s.messages[-1]["content"].split("\n")[-1]
        page = s.pages[0]
        assert limit - 2 * 32 < n <= limit  # the pages that fit, and no more
        assert f"is: {answer}." in page.text[:page.document().page_spans()[-1][1]]


@pytest.mark.parametrize("name", ["lm", "ocr", "gen"])
def test_samples_fit_max_tokens_text_included(builder, text, name):
    """ocr, gen and lm count their text's tokens too: lm fills max_tokens with pages and text and cuts its last
    text span where the tokens run out; ocr and gen show fewer pages, or are TooLong (never drawn); no sample comes
    out longer than max_tokens."""
    from glyph_rt.train.tasks import TooLong

    limit = 1000
    task = make_task(name, builder, config=CFG, max_pages=12, window_chars=20000, max_tokens=limit)
    lengths = []
    for i in range(8):
        try:
            s = task({"text": text}, i)
        except TooLong:
            continue
        lengths.append(drawn_length(s))
        if name == "lm":  # the trained text is the text spans, in order
            assert trained_text(builder, s) == "".join(c["text"] for c in s.messages[0]["content"]
                                                       if c["type"] == "text")
    assert len(lengths) >= 4 and max(lengths) <= limit
    if name == "lm":
        assert sorted(lengths)[len(lengths) // 2] > limit * 0.8  # filled (unless the window ran out first)


def test_qa_gen_lm_whose_pages_miss_glyphs_are_skipped(builder, text):
    """QA contexts take no box (as OCR); generation and LM take up to MAX_BOXED_SHARE of their pages' characters
    drawn as boxes (no font of the style has them), past it a MissingGlyphs (skipped and counted)."""
    from glyph_rt.train.tasks import MAX_BOXED_SHARE, MissingGlyphs

    qa = make_task("qa", builder, config=CFG)
    with pytest.raises(MissingGlyphs, match=r"record 1: field 'context': .*U\+0007.*what its pages show"):
        qa({"context": text[:500] + " \x07 " + text[500:900], "question": "q?", "answer": "a"}, 1)
    with pytest.raises(MissingGlyphs, match=r"field 'text'"):  # a needle's haystack
        qa({"text": text[:3000].replace("e", "\x07")}, 0)
    assert MAX_BOXED_SHARE == 0.01
    rare = text[:3000].replace("that", "\x07hat")  # well under 1% of the characters
    often = text[:3000].replace("e", "\x07")
    for name in ("gen", "lm"):
        task = make_task(name, builder, config=CFG, max_pages=2, window_chars=3000,
                         **({"backward": 0.0} if name == "gen" else {}))
        for i in range(3):
            task({"text": rare}, i)
            with pytest.raises(MissingGlyphs, match=r"U\+0007.*over .* 1% \(MAX_BOXED_SHARE\)"):
                task({"text": often}, i)


def test_cuts_stay_near_the_cut_point_without_spaces():
    """Text with no line end and few spaces (Chinese with an English term now and then) is cut at the character
    past CUT_REACH: generation answers keep to answer_chars, forward and backward."""
    import random

    from glyph_rt.train.tasks import CUT_REACH, _cut

    r = random.Random(0)
    chars = "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去"
    paras = []
    for _ in range(60):
        p = "".join(r.choice(chars) for _ in range(r.randint(150, 700)))
        k = r.randrange(len(p))
        paras.append(p[:k] + (" New York " if r.random() < 0.3 else "") + p[k:] + "。")
    cjk = "".join(paras)
    assert _cut("abc def\nghi jkl", 14, None) == 8 and _cut("x" * 200 + " " + "y" * 100, 300, None) == 300
    for backward in (0.0, 1.0):
        gen = make_task("gen", None, config=RenderConfig(), backward=backward, window_chars=12000, answer_chars=1500)
        lengths = [len(gen({"text": cjk}, i).messages[-1]["content"]) for i in range(12)]
        assert 1500 - CUT_REACH <= min(lengths) and max(lengths) <= 1500 + CUT_REACH, lengths


def test_ocr_targets_hold_what_the_pages_show(builder, text):
    """Characters the pages draw nothing for leave the OCR target (zero-width spaces, soft hyphens, BOMs, word
    joiners; ZWJ/ZWNJ stay: they shape their neighbours), CR and CRLF line ends are LF, breaking controls and line
    separators a space; a record or a target with no visible character is a TaskError, never an empty target."""
    task = make_task("ocr", builder, config=CFG, max_pages=1)
    base = text[:600]
    marked = (base.replace(" the ", " th\u00ade \u200b").replace("\n", "\r\n", 3).replace(". ", ".\u2028", 2)
              .replace("a", "a\ufeff\u2060", 3) + " a\u200db")
    assert marked.count("\u00ad") == 2 and marked.count("\u2028") == 2 and marked.count("\r\n") == 3
    s = task({"text": marked}, 0)  # one page holds it all
    target = s.messages[-1]["content"]
    assert target == base + " a\u200db"
    assert trained_text(builder, s).strip() == target.strip()
    for invisible in ("\u200b", "\ufeff\u200b\u2060", "\u00ad", " \u200b\n\u2060 "):
        with pytest.raises(TaskError, match="no visible character"):
            task({"text": invisible}, 0)


def test_a_needle_pushed_past_the_last_page_is_never_cut(text):
    """Small pages: the needle's line pushes the haystack past the one page it may take, and the context ends
    where that page ends. That end never cuts through the needle (samples 26 and 178 of these options did, asking
    for a number on no page): its whole line, the answer in it, is on the page."""
    qa = make_task("qa", None, config=RenderConfig(page_size=(200, 150), font_size=12, line_height=14), max_pages=1,
                   window_chars=3000)
    for i in [26, 178, *range(40)]:
        s = qa({"text": text[:30000]}, i)
        (page,) = s.pages
        shown = page.text[:page.document().page_spans()[page.stop - 1][1]]
        answer = s.messages[-1]["content"]
        answer = answer if isinstance(answer, str) else answer[0]["text"]
        name = s.messages[0]["content"][-1]["text"].split("number for ")[1].split(" ")[0]
        assert f"The special magic number for {name} is: {answer}." in shown, i


def test_qa_takes_a_numeric_answer_as_its_text(builder):
    """A QA record's answer may be a JSON number (rewards.reference_texts reads it so): SFT trains it as it prints,
    where it used to skip the record; a boolean or a NaN is still no answer."""
    qa = make_task("qa", builder, config=CFG)
    for answer, want in ((1900, "1900"), (2.5, "2.5"), (-3, "-3")):
        s = qa({"context": f"The year was {answer}.", "question": "Which?", "answer": answer}, 0)
        assert trained_text(builder, s) == want
    for bad in (True, float("nan"), None):
        with pytest.raises(TaskError, match="field 'answer'"):
            qa({"context": "The year was 1900.", "question": "Which?", "answer": bad}, 0)


def test_samples_count_the_text_tokens_their_pages_stand_for(builder, text):
    """Each sample with token ids carries the text tokens of what its pages show (the trainer's `compression`):
    an OCR sample's are its target's tokens."""
    s = make_task("ocr", builder, config=CFG, max_pages=2, window_chars=3000)({"text": text}, 0)
    assert s.meta["text_tokens"] == len(builder.ids(s.messages[-1]["content"])) > 0
    for name in ("lm", "gen", "qa"):
        rec = {"text": text} if name != "qa" else {"context": text[:800], "question": "What?", "answer": "x"}
        t = make_task(name, builder, config=CFG, max_pages=2, window_chars=3000)(rec, 1)
        assert t.meta["text_tokens"] > 0, name
    assert "text_tokens" not in make_task("ocr", None, config=CFG)({"text": text}, 0).meta  # no token ids: none
