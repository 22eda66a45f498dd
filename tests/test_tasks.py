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
    for name in ("ocr", "lm", "gen"):
        free = make_task(name, builder, config=CFG, max_pages=8, window_chars=6000)
        capped = make_task(name, builder, config=CFG, max_pages=8, window_chars=6000, max_tokens=2 * per_page + 1)
        assert capped.page_budget(CFG) == 2 and free.page_budget(CFG) == 8
        most = max(sum(p.num_pages for p in free({"text": text}, i).pages) for i in range(12))
        assert most > 2, name
        assert all(sum(p.num_pages for p in capped({"text": text}, i).pages) <= 2 for i in range(12)), name
    assert make_task("ocr", builder, config=CFG, max_pages=8, max_tokens=1).page_budget(CFG) == 1  # one at least
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match="max_tokens: .* must be an integer >= 1"):
            make_task("lm", builder, config=CFG, max_tokens=bad)
