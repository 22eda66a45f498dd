"""Training tasks: one document (a record) -> one Sample (pages to render + token ids + labels + messages).

Interface (stable; the trainer and `glyph-rt make-data` build on it):

    task = make_task("ocr" | "lm" | "gen" | "qa", builder, styles=StyleSampler(seed=0), seed=0, **options)
                                     # builder None: messages only, no token ids (for export)
    sample = task(record, index)     # record: {"text": ...} (ocr, lm, gen) or {"context", "question", "answer"} (qa;
                                     # a {"text"} record becomes a needle-in-a-haystack question)

    sample.pages       [PageRange]  the images, in prompt order: page range [start, stop) of a laid-out text
    sample.input_ids   [int]        ONE image token per page; collate.expand_images() repeats each to the page's
    sample.labels      [int]        visual tokens once the page sizes are known (labels: IGNORE_INDEX there)
    sample.messages    [dict]       the conversation in the messages format ({"type": "image"} per page)
    sample.pixel_values, sample.image_grid_thw   set when the pages were rendered early (render_samples)

Sample `index` of seed `seed` is a pure function of (seed, task, index, record): its style is
styles.sample(index) and every other choice comes from a generator seeded by (seed, task, index).

Tasks (the Glyph paper's continual pre-training families, plus long-context QA):
  ocr  read back one or several pages; the target is the text between the first page's and the last
       page's character spans as the layout reports them (no character lost, none duplicated), less what the
       pages draw nothing for (ocr_target: zero-width spaces, soft hyphens, BOMs; CR line ends as LF); pages
       that draw a character as a box (no font of the style has it) are a TaskError (MissingGlyphs)
  lm   interleaved language modelling: spans of the text alternate between pages and plain text, in
       order, in one user turn; loss on the plain-text spans (PromptBuilder.encode_pieces)
  gen  given the first pages, write what follows (or given the last pages, what came before)
  qa   a context rendered as pages, the question as text, loss on the answer; a context page drawing a box is
       a MissingGlyphs, as for OCR (gen and lm: past MAX_BOXED_SHARE of their pages' characters)
A record field with no visible character (only spaces and zero-width characters) is a TaskError.

max_tokens (the collator's max_length): each task finds a sample's length before any page is drawn (its text
tokens and page_tokens: each page's visual tokens, auto-crop included, from the layout) and keeps within it: ocr
and gen show fewer pages, lm stops its spans where the tokens run out, a needle's haystack ends where the pages
that fit end; a sample that still cannot fit (a QA context, a first page) is TooLong, a TaskError the loader
counts as too long.
The chat samples (ocr, gen, qa) use PromptBuilder.encode: loss on the assistant's turn only.
"""
from __future__ import annotations

import functools
import math
import random
import re
import sys
import unicodedata
from dataclasses import dataclass, field

import numpy as np

from ..models.prompt import IGNORE_INDEX, PromptBuilder, thinking_parts
from ..render.config import RenderConfig, parse_color
from ..render.pages import Document
from ..render.raster import (canvas_tokens, crops, drawn_canvas, final_sizes, glyph_clips, paragraph_rects, scales,
                              visible)
from ..render.resample import resized_extent
from ..render.tokens import vision_model

TASKS = ("ocr", "lm", "gen", "qa")

OCR_PROMPTS = ("Read all the text in the image.", "Transcribe the text on these pages exactly.",
               "What text do the pages contain? Write it out in full.", "OCR the document.")
GEN_FORWARD = ("Continue the text.", "Write what comes after these pages.", "Continue writing from where the pages end.")
GEN_BACKWARD = ("Write the text that comes before these pages.", "What precedes these pages? Write it.")


class TaskError(ValueError):
    """A record a task cannot use; the message names the record field."""


class MissingGlyphs(TaskError):
    """A sample whose pages draw characters as boxes (no font of the style covers them): OCR and QA any, generation
    and LM more than MAX_BOXED_SHARE of the characters their pages show."""


class TooLong(TaskError):
    """A sample longer than max_tokens (the collator's max_length), found from its layout before any page is drawn;
    the loader counts it with the samples the collator finds too long (state_dict()["too_long"])."""


# generation and LM: the most of the characters a sample's pages show that may be drawn as boxes (no font of the
# style covers them); past it the sample is a MissingGlyphs (skipped and counted). OCR and QA take none.
MAX_BOXED_SHARE = 0.01
# _cut looks this many characters back from a cut point for a line end, then a space; past it, it cuts where it is
# (text without spaces, as Chinese or Japanese, is cut at the character)
CUT_REACH = 64
# format characters (Unicode category Cf) that draw ink of their own (Arabic, Syriac and Kaithi number and
# abbreviation signs): kept in OCR targets. ZWJ and ZWNJ are kept too: they choose the shapes of the letters
# around them. The other Cf characters (soft hyphen, zero-width space, BOM, word joiner, bidi controls) draw
# nothing and leave OCR targets.
INKED_FORMAT = frozenset([*range(0x600, 0x606), 0x6DD, 0x70F, 0x890, 0x891, 0x8E2, 0x110BD, 0x110CD])
JOINERS = frozenset([0x200C, 0x200D])
# characters the layout draws as a space (breaking spaces that are controls or line and paragraph separators): a
# space in OCR targets; a lone CR or a CRLF ends a line as LF does: LF in OCR targets
_AS_SPACE = {c: " " for c in (0x0B, 0x0C, 0x1C, 0x1D, 0x1E, 0x1F, 0x85, 0x2028, 0x2029)}
_LINE_END = re.compile("\r\n?")


@functools.lru_cache(maxsize=1)
def _format_re() -> re.Pattern:
    """The format characters (Unicode category Cf) as a character class (they lie below U+20000 or in plane 14)."""
    cps = [c for r in (range(0x20000), range(0xE0000, min(0xE1000, sys.maxunicode + 1))) for c in r
           if unicodedata.category(chr(c)) == "Cf"]
    return re.compile("[" + "".join(re.escape(chr(c)) for c in cps) + "]")


def visible_text(text: str) -> bool:
    """Whether the text holds a character that draws ink (not whitespace, not an inkless format character)."""
    return any(not c.isspace() and (unicodedata.category(c) != "Cf" or ord(c) in INKED_FORMAT) for c in text)


@dataclass
class PageRange:
    """Pages [start, stop) of `text` laid out with `config` (at most `max_pages` pages laid out).

    The laid-out Document travels with it, also to another process (a DataLoader's main process), where
    its atlas is found again; document() lays the text out only when the Document is missing."""
    text: str
    config: RenderConfig
    start: int
    stop: int
    max_pages: int | None = None
    _doc: Document | None = field(default=None, repr=False, compare=False)

    @property
    def num_pages(self) -> int:
        return self.stop - self.start

    def document(self) -> Document:
        if self._doc is None:
            self._doc = Document(self.text, self.config, max_pages=self.max_pages)
        return self._doc


@dataclass
class Sample:
    index: int
    task: str
    pages: list[PageRange]
    input_ids: list[int]
    labels: list[int]
    messages: list[dict]
    meta: dict = field(default_factory=dict)
    pixel_values: object = None  # torch.Tensor once rendered
    image_grid_thw: object = None

    @property
    def num_images(self) -> int:
        return sum(p.num_pages for p in self.pages)

    @property
    def loss_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


def _text_field(record: dict, name: str, index: int) -> str:
    if not isinstance(record, dict):
        raise TaskError(f"record {index}: expected a dict, got {type(record).__name__}")
    v = record.get(name)
    if not isinstance(v, str) or not v.strip():
        raise TaskError(f"record {index}: field {name!r} must be a non-empty string, got {v!r:.60}")
    if not visible_text(v):
        raise TaskError(f"record {index}: field {name!r} holds no visible character (only spaces and zero-width "
                        f"characters), got {v!r:.60}")
    return v


def answer_text(record: dict, index: int, name: str = "answer") -> str:
    """A QA record's answer as text: a string as _text_field takes it, a number (int or float, not a boolean: a JSON
    record's `"answer": 42`) as it prints ("42"), as rewards.reference_texts reads a reference; SFT's QA task and
    RL's records both take it so."""
    v = record.get(name) if isinstance(record, dict) else None
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        if not math.isfinite(v):
            raise TaskError(f"record {index}: field {name!r} must be a string or a finite number, got {v!r}")
        return str(v)
    return _text_field(record, name, index)


def _cut(text: str, at: int, rng: random.Random | None = None) -> int:
    """A cut point at or up to CUT_REACH characters before `at`: after a line end, else after a space, else `at`
    itself (text without spaces near the cut, as Chinese, is cut at the character)."""
    at = max(0, min(len(text), at))
    lo = max(0, at - CUT_REACH)
    nl = text.rfind("\n", lo, at)
    if nl >= 0:
        return nl + 1
    sp = text.rfind(" ", lo, at)
    return sp + 1 if sp >= 0 else at


def text_window(text: str, chars: int, rng: random.Random) -> str:
    """A window of at most `chars` characters of the text starting at a random line start and ending at a line end
    or a space (as `_cut` cuts) where the text goes on (the whole text when short), never shorter than chars // 2."""
    if len(text) <= chars:
        return text
    last = len(text) - chars // 2  # the latest start that leaves half a window
    start = rng.randrange(0, last + 1)
    nl = text.find("\n", start, min(start + 2000, last))
    start = nl + 1 if nl >= 0 else start
    end = start + chars
    if end < len(text):  # not inside a word: the text's last span (lm) and a forward answer (gen) end there
        cut = _cut(text, end)
        end = cut if cut - start >= chars // 2 else end
    return text[start:end]


def page_tokens(doc: Document, vision="glm4v", last: bool = True) -> list[int]:
    """Visual tokens of each page of `doc` as the renderer crops it (auto-crop, snapping), found from the layout
    alone, no page drawn: a page's ink lies within its glyphs' bitmap boxes and its paragraph boxes, whose extent
    takes the ink's place in the crop, so a drawn page never takes more (tests/test_tasks.py: as many, on the
    style sampler's styles). last=False: the last page laid out is not the text's last (a layout that max_pages
    cut short, whose text goes on), so it is not cropped as the last page is."""
    n = doc.num_pages
    if n == 0:
        return []
    c, lay = doc.config, doc.layout
    W, H = drawn_canvas(c)
    right, bottom = np.zeros(n, np.int64), np.zeros(n, np.int64)
    if crops(c):
        a, P = doc.atlas.arrays(), doc.atlas.phases
        sx, sy = scales(c)
        lo, hi, g_page, g_y = lay.page_glyphs(0, n)
        xf = lay.g_x[lo:hi].astype(np.float64) * sx
        ix = np.floor(xf)
        k = lay.g_slot[lo:hi].astype(np.int64) * P + np.minimum(P - 1, ((xf - ix) * P).astype(np.int64))
        gw, gh = a["width"][k].astype(np.int64), a["height"][k].astype(np.int64)
        drawn = (gw > 0) & (gh > 0)
        x1 = ix.astype(np.int64) + a["left"][k] + gw
        y1 = np.minimum(np.floor(g_y.astype(np.float64) * sy + 0.5).astype(np.int64) - a["top"][k] + gh,
                        glyph_clips(lay, c, lo, hi))
        np.maximum.at(right, g_page[drawn], x1[drawn])
        np.maximum.at(bottom, g_page[drawn], y1[drawn])
        rp, rb, rc = paragraph_rects(lay, c)
        bg = parse_color(c.page_bg_color, "page_bg_color")
        # resized, a box's edges ring past its colour: one just under the ink threshold becomes ink there
        shown = visible(rc, bg) if c.horizontal_scale == 1 else (rc != np.asarray(bg, rc.dtype)).any(-1)
        on = (rp < n) & shown
        np.maximum.at(right, rp[on], rb[on, 2])
        np.maximum.at(bottom, rp[on], rb[on, 3])
        right, bottom = np.clip(right, 0, W), np.clip(bottom, 0, H)
        if c.horizontal_scale != 1:  # Glyph resizes the drawn page; the filter spreads the ink a few columns
            right = resized_extent(right, W, c.page_pixels[0])
    sizes = final_sizes(c, right, bottom, 0, n if last else n + 1, doc.canvas)
    v = vision_model(vision)
    return [v.tokens(h, w) for w, h in sizes]


def boxed_share(docs: list[tuple[Document, int]]) -> tuple[dict, float]:
    """(characters drawn as boxes with their counts, their share of the characters drawn) on the first `pages` pages
    of each (Document, pages)."""
    missing = {}
    for doc, pages in docs:
        for ch, k in doc.missing_chars(pages).items():
            missing[ch] = missing.get(ch, 0) + k
    if not missing:
        return {}, 0.0
    shown = sum(doc.char_counts(pages)["placed_chars"] for doc, pages in docs)
    return missing, sum(missing.values()) / max(1, shown)


class Task:
    """Base: turns (record, index) into a Sample; options are the constructor's keyword arguments."""
    name = ""

    def __init__(self, builder: PromptBuilder, styles=None, seed: int = 0, config: RenderConfig | None = None,
                 max_pages: int = 4, window_chars: int = 12000, max_tokens: int | None = None, vision="glm4v"):
        if styles is None and config is None:
            config = RenderConfig()
        if max_pages < 1:
            raise ValueError(f"max_pages: {max_pages!r} must be >= 1")
        if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                       or max_tokens < 1):
            raise ValueError(f"max_tokens: {max_tokens!r} must be an integer >= 1 (or None: no limit)")
        self.builder, self.styles, self.seed, self.config = builder, styles, int(seed), config
        self.max_pages, self.window_chars = int(max_pages), int(window_chars)
        self.max_tokens, self.vision = max_tokens, vision_model(vision)

    def rng(self, index: int) -> random.Random:
        return random.Random(f"{self.seed}:{self.name}:{index}")

    def style(self, index: int) -> RenderConfig:
        return self.config if self.styles is None else self.styles.sample(index).config

    def window(self, text: str, rng: random.Random) -> str:
        return text_window(text, self.window_chars, rng)

    def page_budget(self, config: RenderConfig) -> int:
        """max_pages, or fewer where max_tokens (the collator's max_length) holds fewer full pages of `config`'s
        canvas: a sample past it would be drawn only to be left out. At least one page."""
        if self.max_tokens is None:
            return self.max_pages
        return max(1, min(self.max_pages, self.max_tokens // canvas_tokens(config, self.vision)))

    def chat(self, index: int, pages: list[PageRange], question: str, answer: str, meta: dict,
             thinking: str | None = None) -> Sample:
        """The sample of a user turn (the pages, then `question`) and the assistant's `answer`, in the thinking
        format when `thinking` is given (think_answer). Added tokens' texts in the question, the answer and the
        thinking (a corpus's "<|endoftext|>") are tokenized as plain text; the template's markup and the
        thinking format's tags as the tokens they are. TooLong when it would take more than max_tokens (checked).
        """
        n = sum(p.num_pages for p in pages)
        shown = answer if thinking is None else think_answer(answer, thinking)
        msgs = PromptBuilder.messages(n, question, answer=shown)
        if self.builder is None:  # messages only (export): no token ids
            return Sample(index, self.name, pages, [], [], msgs, meta)
        enc = self.encode_chat(index, n, question, answer, thinking)
        return self.checked(Sample(index, self.name, pages, enc.input_ids, enc.labels, msgs, meta))

    def encode_chat(self, index: int, n: int, question: str, answer: str, thinking: str | None = None):
        """builder.encode of the chat of `n` pages (one image token each), the texts escaped."""
        esc = self.escape(index)
        said = esc(answer) if thinking is None else think_answer(answer, thinking, esc)
        return self.builder.encode(PromptBuilder.messages(n, esc(question), answer=said), [1] * n)

    def visual_tokens(self, pages: list[PageRange]) -> int:
        """The visual tokens the pages will take once drawn (page_tokens: from the layout, none drawn)."""
        return sum(sum(page_tokens(p.document(), self.vision)[p.start:p.stop]) for p in pages)

    def checked(self, sample: Sample) -> Sample:
        """The sample, or TooLong when its text tokens and its pages' visual tokens (page_tokens) pass max_tokens:
        found before a page is drawn. No check without max_tokens or without token ids (builder None). A sample
        with token ids gets meta["text_tokens"] (page_text_tokens: the compression metric's)."""
        if self.builder is None:
            return sample
        if self.max_tokens is not None:
            visual = self.visual_tokens(sample.pages)
            total = len(sample.input_ids) - sample.num_images + visual
            if total > self.max_tokens:
                raise TooLong(f"record {sample.index}: the {self.name} sample takes {total} tokens "
                              f"({sample.num_images} pages, {visual} of them visual) over max_tokens={self.max_tokens}")
        tokens = self.page_text_tokens(sample.index, sample.pages)
        if tokens is not None:
            sample.meta["text_tokens"] = tokens
        return sample

    def page_text_tokens(self, index: int, pages: list[PageRange]) -> int | None:
        """The text tokens the pages stand for: the text the layout places on them, tokenized as the tasks tokenize
        a record's text (plain text; tiktoken's BPE where the tokenizer allows: ~1 ms per 10K characters). The
        trainer logs their sum over the visual tokens as `compression`. None when the text cannot be tokenized."""
        esc, n = self.escape(index), 0
        for p in pages:
            if not p.num_pages:
                continue
            spans = p.document().page_spans()
            try:
                n += len(self.builder.ids(esc(p.text[spans[p.start][0]:spans[p.stop - 1][1]]), escaped=True))
            except TaskError:
                return None
        return n

    def boxes(self, index: int, docs: list[tuple[Document, int]], field_name: str = "text",
              share: float = 0.0) -> None:
        """MissingGlyphs when the first `pages` pages of each (Document, pages) draw more than `share` of their
        characters as boxes (no font of the style has them)."""
        missing, boxed = boxed_share(docs)
        if missing and boxed > share:
            why = None if not share else (f"{boxed:.1%} of the characters the pages show, over {self.name}'s "
                                          f"{share:.0%} (MAX_BOXED_SHARE)")
            raise missing_glyphs(index, missing, field_name, why or BOXES_WHY.get(self.name))

    def escape(self, index: int):
        """builder.escape, its ValueError this record's TaskError."""
        def esc(text: str) -> str:
            try:
                return self.builder.escape(text)
            except ValueError as e:
                raise TaskError(f"record {index}: {e}") from None
        return esc

    def __call__(self, record: dict, index: int) -> Sample:
        raise NotImplementedError


BOXES_WHY = {"ocr": "an OCR target must hold only what the pages show",
             "qa": "a question about a context must be about what its pages show"}


def missing_glyphs(index: int, missing: dict, field_name: str = "text", why: str | None = None) -> MissingGlyphs:
    """The TaskError of a record whose pages draw characters as replacement boxes (Document.missing_chars(): no font
    of the style covers them): an OCR target holding them would teach reading what the pages do not show. `why`:
    the reason the sample cannot have them (an OCR target's by default)."""
    top = sorted(missing.items(), key=lambda kv: -kv[1])
    named = ", ".join(f"{c!r} (U+{ord(c):04X}) x{n}" for c, n in top[:8]) + (
        f" and {len(top) - 8} other characters" if len(top) > 8 else "")
    return MissingGlyphs(f"record {index}: field {field_name!r}: the pages draw {sum(missing.values())} characters as "
                         f"boxes (no font of the style has them): {named}; {why or BOXES_WHY['ocr']}")


def ocr_target(text: str, doc: Document, start: int, end: int, pages: int) -> str:
    """What the first `pages` pages of `doc` (the layout of `text`) show of text[start:end], as text: format
    characters that draw nothing there (soft hyphens, zero-width spaces, BOMs, word joiners, bidi controls; not
    ZWJ/ZWNJ, which choose the shapes around them) left out, a CR or CRLF line end as LF, and the controls and
    separators the layout draws as a space (VT, FF, U+2028, U+2029, ...) as a space."""
    target = text[start:end]
    fmt = [m.start() for m in _format_re().finditer(target)
           if ord(m.group()) not in JOINERS and ord(m.group()) not in INKED_FORMAT]
    if fmt:  # one the font draws with ink (a glyph placed for it whose bitmap is not blank) stays
        lay, atlas = doc.layout, doc.atlas
        lo, hi, _, _ = lay.page_glyphs(0, pages)
        src = lay.g_src[lo:hi]
        at = np.isin(src, np.asarray(fmt, np.int64) + start)
        inked = {int(i) - start for i, slot in zip(src[at].tolist(), lay.g_slot[lo:hi][at].tolist())
                 if any(atlas.bitmap(int(slot), ph)[0].any() for ph in range(atlas.phases))}
        drop = set(fmt) - inked
        target = "".join(ch for i, ch in enumerate(target) if i not in drop) if drop else target
    if "\r" in target:
        target = _LINE_END.sub("\n", target)
    return target.translate(_AS_SPACE)


class OCRTask(Task):
    """Reads back 1 to max_pages pages of a window (fewer where max_tokens holds fewer). A sample whose pages draw a
    character as a box (no font of its style covers it) is a TaskError: skipped and counted, never a target holding
    text the pages do not show; the target leaves out the characters the pages draw nothing for (ocr_target)."""
    name = "ocr"

    def __call__(self, record: dict, index: int) -> Sample:
        text = _text_field(record, "text", index)
        rng = self.rng(index)
        window = self.window(text, rng)
        style = self.style(index)
        k = rng.randint(1, self.page_budget(style))
        doc = Document(window, style, max_pages=k)
        if doc.num_pages == 0:
            raise TaskError(f"record {index}: field 'text' lays out to no page")
        prompt = rng.choice(OCR_PROMPTS)
        for n in range(doc.num_pages, 0, -1):  # fewer pages while the sample is longer than max_tokens
            self.boxes(index, [(doc, n)])
            spans = doc.page_spans()[:n]
            target = ocr_target(window, doc, spans[0][0], spans[-1][1], n)
            if not visible_text(target):
                raise TaskError(f"record {index}: field 'text': its pages show no visible character (only spaces "
                                "and zero-width characters)")
            page = PageRange(window, doc.config, 0, n, k, doc)
            try:
                return self.chat(index, [page], prompt, target, {"chars": len(target), "page_spans": spans})
            except TooLong:
                if n == 1:
                    raise


class GenTask(Task):
    name = "gen"

    def __init__(self, *args, answer_chars: int = 1500, backward: float = 0.25, **kw):
        super().__init__(*args, **kw)
        self.answer_chars, self.backward = int(answer_chars), float(backward)

    def __call__(self, record: dict, index: int) -> Sample:
        text = _text_field(record, "text", index)
        rng = self.rng(index)
        window = self.window(text, rng)
        if len(window) < 200:
            raise TaskError(f"record {index}: field 'text' is too short for generation ({len(window)} characters)")
        style = self.style(index)
        k = rng.randint(1, self.page_budget(style))
        split = _cut(window, int(len(window) * rng.uniform(0.3, 0.7)), rng)
        backward = rng.random() < self.backward
        if backward:  # the last pages are shown: write what came before
            doc = Document(window[split:], style, max_pages=k)
            begin = _cut(window, split - self.answer_chars, rng) if split > self.answer_chars else 0
            answer, prompt = window[begin:split], rng.choice(GEN_BACKWARD)
            shown = window[split:]
        else:
            doc = Document(window[:split], style, max_pages=k)
            prompt, shown = rng.choice(GEN_FORWARD), window[:split]
        for n in range(doc.num_pages, 0, -1):  # fewer pages while the sample is longer than max_tokens
            self.boxes(index, [(doc, n)], share=MAX_BOXED_SHARE)
            if not backward:
                end = doc.page_spans()[n - 1][1]  # text past the last page shown (max_pages) continues the answer
                answer = window[end:end + self.answer_chars]
                answer = answer[:_cut(answer, len(answer), rng)] if end + self.answer_chars < len(window) else answer
            if not visible_text(answer):
                raise TaskError(f"record {index}: field 'text' leaves nothing to generate")
            page = PageRange(shown, doc.config, 0, n, k, doc)
            try:
                return self.chat(index, [page], prompt, answer, {"direction": "backward" if backward else "forward"})
            except TooLong:
                if n == 1:
                    raise
        raise TaskError(f"record {index}: field 'text' lays out to no page")


NEEDLE_NAMES = ("amber", "basalt", "cobalt", "dune", "ember", "fjord", "garnet", "harbor", "iris", "juniper",
                "kestrel", "lagoon", "meadow", "nickel", "onyx", "prairie", "quartz", "raven", "sierra", "tundra")


def needle_record(text: str, rng: random.Random) -> dict:
    """A QA record made from plain text (RULER's single needle): a sentence holding a number is put at a line
    start in the first 80% of the text, and the question asks for it."""
    return _needle(text, rng)[0]


def _needle(text: str, rng: random.Random) -> tuple[dict, int, str]:
    """(needle_record's record, where its needle line starts in the context, the needle line)."""
    name = f"{rng.choice(NEEDLE_NAMES)}-{rng.choice(NEEDLE_NAMES)}"
    number = str(rng.randrange(1000000, 10000000))
    starts = [0] + [i + 1 for i, c in enumerate(text) if c == "\n" and i + 1 < len(text) * 0.8]
    at = rng.choice(starts)
    needle = f"The special magic number for {name} is: {number}.\n"
    return {"context": text[:at] + needle + text[at:], "answer": number,
            "question": f"What is the special magic number for {name} mentioned in the text?"}, at, needle


def think_answer(answer: str, thinking: str = "", escape=None) -> str:
    """The answer in the thinking format (as it is when it already starts with <think>); `escape` applies to the
    text, not to the format's tags."""
    esc = escape or (lambda t: t)
    parts = thinking_parts(answer)
    if parts is not None:
        head, inner, after = parts
        return f"{head}<think>{esc(inner)}</think>{esc(after)}"
    return f"<think>{esc(('' if thinking is None else str(thinking)).strip())}</think>\n{esc(answer)}"


class QATask(Task):
    """Long-context QA from {"context", "question", "answer"} records; a record with only "text" becomes a
    needle-in-a-haystack question (needle_record) whose haystack ends where the pages that fit end (max_pages and
    max_tokens). A context that does not fit in max_pages (default 64) at the sample's style is a TaskError, never a
    truncated context whose answer may lie beyond the pages; one longer than max_tokens is TooLong, found before
    its pages are drawn; one whose pages draw a character as a box is a MissingGlyphs. think: the answer in the
    thinking format, `<think>{record's "thinking"}</think>\n{answer}`."""
    name = "qa"

    def __init__(self, *args, max_pages: int = 64, think: bool = False, **kw):
        super().__init__(*args, max_pages=max_pages, **kw)
        self.think = bool(think)

    def layout_pages(self, config: RenderConfig) -> int:
        """The pages to lay out a context over: max_pages, or fewer where max_tokens holds fewer full pages (with
        room for auto-crop's savings: a layout cut there is laid out again whole unless its pages alone are too
        long)."""
        if self.max_tokens is None:
            return self.max_pages
        fit = self.max_tokens // canvas_tokens(config, self.vision)
        return max(1, min(self.max_pages, fit + fit // 4 + 2))

    def __call__(self, record: dict, index: int) -> Sample:
        style = self.style(index)
        if isinstance(record, dict) and "question" not in record and "context" not in record and "text" in record:
            return self.needle(record, index, style)
        context = _text_field(record, "context", index)
        question = _text_field(record, "question", index)
        answer = answer_text(record, index)
        limit = self.layout_pages(style)
        doc = Document(context, style, max_pages=limit)
        if doc.layout.truncated and limit < self.max_pages:
            visual = sum(page_tokens(doc, self.vision, last=False))
            if visual > self.max_tokens:  # its first `limit` pages alone
                raise TooLong(f"record {index}: field 'context' needs more than {limit} pages at this style, which "
                              f"alone take {visual} visual tokens, over max_tokens={self.max_tokens}")
            doc = Document(context, style, max_pages=self.max_pages)
        if doc.layout.truncated:
            raise TaskError(f"record {index}: field 'context' needs more than {self.max_pages} pages at this style; "
                            "its answer may lie beyond them (raise data.loader.max_pages)")
        self.boxes(index, [(doc, doc.num_pages)], "context")
        page = PageRange(context, doc.config, 0, doc.num_pages, self.max_pages, doc)
        thinking = record.get("thinking")  # None (a Parquet / datasets row without it) is absent, never "None"
        return self.chat(index, [page], question, answer, {},
                         thinking=("" if thinking is None else str(thinking)) if self.think else None)

    def needle(self, record: dict, index: int, style: RenderConfig) -> Sample:
        """The needle question of a {"text"} record: its haystack, a window of the text, ends where the last page
        that fits ends (max_pages; with max_tokens, the pages whose visual tokens fit beside the question and
        the answer), so the sample fits and its pages show the needle."""
        rng = self.rng(index)
        hay = self.window(_text_field(record, "text", index), rng)
        first = Document(hay, style, max_pages=self.layout_pages(style))
        if first.num_pages == 0:
            raise TaskError(f"record {index}: field 'text' lays out to no page")
        cum = np.cumsum(page_tokens(first, self.vision, last=not first.layout.truncated))
        n = first.num_pages
        state = rng.getstate()
        if self.max_tokens is not None and self.builder is not None:
            probe = random.Random()
            probe.setstate(state)
            q = needle_record("", probe)  # the same name and number as the real needle's
            thinking = "" if self.think else None
            t0 = len(self.encode_chat(index, 0, q["question"], q["answer"], thinking).input_ids)
            per_page = len(self.encode_chat(index, 1, q["question"], q["answer"], thinking).input_ids) - t0 - 1
            fit = [j + 1 for j in range(n) if t0 + (j + 1) * per_page + cum[j] <= self.max_tokens]
            n = max(fit[-1] if fit else 1, 1)
        elif self.max_tokens is not None:
            n = max(1, int(np.searchsorted(cum, self.max_tokens, side="right")))
        while True:
            whole = n == first.num_pages and not first.layout.truncated
            cut = hay if whole else hay[:first.page_spans()[n - 1][1]]
            cap = self.max_pages if whole and self.max_tokens is None else n  # the needle's line may add a page
            rec, doc = self.placed_needle(cut, rng, state, style, cap, index)
            self.boxes(index, [(doc, doc.num_pages)], "text")
            page = PageRange(rec["context"], doc.config, 0, doc.num_pages, cap, doc)
            try:
                return self.chat(index, [page], rec["question"], rec["answer"], {},
                                 thinking="" if self.think else None)
            except TooLong:  # the needle's line moved the lines over the pages (rare): a page less
                if n == 1:
                    raise
                n -= 1


    @staticmethod
    def placed_needle(hay: str, rng: random.Random, state, style: RenderConfig, cap: int,
                      index: int) -> tuple[dict, Document]:
        """The needle record of haystack `hay` (rng set to `state` each time: the same name and number) and its
        layout over at most `cap` pages. Where the needle's line pushes the text past the last page, the context
        ends where the pages end, provided the needle's line lies whole before that end; otherwise (the end would
        cut through the needle, whose answer would then be on no page) the haystack loses what fell past the pages
        and the needle is placed in it again."""
        while True:
            rng.setstate(state)
            rec, at, needle = _needle(hay, rng)
            doc = Document(rec["context"], style, max_pages=cap)
            if not doc.layout.truncated:
                return rec, doc
            end = doc.page_spans()[-1][1] if doc.num_pages else 0
            if at + len(needle.rstrip("\n")) <= end:  # the haystack ends where the pages do
                rec["context"] = rec["context"][:end]
                return rec, Document(rec["context"], style, max_pages=cap)
            if not hay:
                raise TaskError(f"record {index}: the needle's line alone does not fit on {cap} pages at this style")
            hay = hay[:_cut(hay, end - len(needle))]  # shorter than it was: the loop ends


_MARK = "\U0010FFFE"  # a noncharacter: LMTask's marker of a text span's place in the template
_SPAN_MARKER = re.compile(f"{_MARK}(\\d+){_MARK}")


class LMTask(Task):
    """Interleaved LM: 2..`max_spans` spans of a window, each rendered (pages) or kept as text; loss on the text."""
    name = "lm"

    def __init__(self, *args, max_spans: int = 5, **kw):
        super().__init__(*args, **kw)
        self.max_spans = int(max_spans)
        self._markup = None  # _Tally's (template tokens, tokens of a page's markup), found once

    def __call__(self, record: dict, index: int) -> Sample:
        text = _text_field(record, "text", index)
        rng = self.rng(index)
        window = self.window(text, rng)
        n = rng.randint(2, max(2, self.max_spans))
        cuts = sorted({_cut(window, int(len(window) * (i + rng.random()) / n), rng) for i in range(1, n)})
        bounds = [0] + [c for c in cuts if 0 < c < len(window)] + [len(window)]
        spans = [window[a:b] for a, b in zip(bounds, bounds[1:]) if window[a:b].strip()]
        if len(spans) < 2:
            raise TaskError(f"record {index}: field 'text' is too short to interleave")
        rendered = [rng.random() < 0.5 for _ in spans]
        rendered[0], rendered[-1] = True, False  # at least one page and one trained span
        config = self.style(index)
        tally = _Tally(self, index, config) if self.max_tokens is not None and self.builder is not None else None
        content, pages, left = [], [], self.page_budget(config)
        for span, as_pages in zip(spans, rendered):
            k = left if tally is None else min(left, tally.pages_left(first=not pages))
            if as_pages and k > 0:
                doc = Document(span, config, max_pages=k)
                end = doc.page_spans()[-1][1] if doc.num_pages else 0
                if doc.num_pages:
                    pages.append(PageRange(span, doc.config, 0, doc.num_pages, k, doc))
                    content += [{"type": "image"}] * doc.num_pages
                    left -= doc.num_pages
                    if tally is not None:
                        tally.add_pages(doc)
                if end < len(span.rstrip()):  # pages full: the rest of this span stays text, then stop
                    self._text(content, span[end:], tally)
                    break
            elif not self._text(content, span, tally):  # cut where max_tokens is reached: stop
                break
        if not any(c["type"] == "text" and c["text"].strip() for c in content):
            if tally is not None:
                raise TooLong(f"record {index}: its first page leaves no room for text within max_tokens="
                              f"{self.max_tokens}")
            raise TaskError(f"record {index}: field 'text' is too short to interleave")
        self.boxes(index, [(p.document(), p.stop) for p in pages], share=MAX_BOXED_SHARE)
        msgs = [{"role": "user", "content": content}]
        meta = {"spans": len(content), "text_spans": sum(c["type"] == "text" for c in content)}
        if self.builder is None:
            return Sample(index, self.name, pages, [], [], msgs, meta)
        # the template written with a marker in place of each text span, split at the markers: the spans' places
        esc = self.escape(index)
        texts = [esc(c["text"]) for c in content if c["type"] == "text"]

        def written(text_of) -> str:
            k, parts = iter(range(len(texts))), []
            for c in content:
                parts.append({"type": "text", "text": text_of(next(k))} if c["type"] == "text" else c)
            return self.builder.template([{"role": "user", "content": parts}], add_generation_prompt=False)

        parts = _SPAN_MARKER.split(written(lambda k: f"{_MARK}{k}{_MARK}"))  # template, k, template, k, ...
        if parts[1::2] != [str(k) for k in range(len(texts))] or written(texts.__getitem__) != "".join(
                texts[int(p)] if j % 2 else p for j, p in enumerate(parts)):
            raise TaskError(f"record {index}: the chat template changed a text span; cannot mark the interleaved text")
        pieces = [(texts[int(p)], True) if j % 2 else (p, False) for j, p in enumerate(parts)]
        enc = self.builder.encode_pieces([p for p in pieces if p[0]])
        return self.checked(Sample(index, self.name, pages, enc.input_ids, enc.labels, msgs, meta))

    @staticmethod
    def _text(content: list, text: str, tally) -> bool:
        """Appends `text` to the content (to its last text span when it ends with one: text after text is one
        span, tokenized as one); with a tally, only as much as max_tokens leaves room for. False when cut."""
        merge = bool(content) and content[-1]["type"] == "text"
        before = content[-1]["text"] if merge else ""
        whole, ok = (before + text, True) if tally is None else tally.text(before, before + text)
        if merge:
            content[-1] = {"type": "text", "text": whole}
        elif whole:
            content.append({"type": "text", "text": whole})
        return ok


class _Tally:
    """LMTask's running count of a sample's tokens against max_tokens, kept while its spans are laid out: the
    template's own tokens, each page's (its visual tokens, page_tokens, and its markup) and each text span's."""

    def __init__(self, task: Task, index: int, config: RenderConfig):
        b = task.builder
        if task._markup is None:
            def count(content):
                return len(b.ids(b.template([{"role": "user", "content": content}], add_generation_prompt=False)))
            base = count([])
            task._markup = (base, count([{"type": "image"}]) - base - 1)
        self.used, self.markup = task._markup
        self.max, self.vision, self.builder = task.max_tokens, task.vision, b
        self.canvas, self.esc, self.last = canvas_tokens(config, task.vision), task.escape(index), 0

    def pages_left(self, first: bool) -> int:
        """Full pages the tokens left hold (the first pages of a sample: at least one)."""
        k = (self.max - self.used) // (self.canvas + self.markup)
        return max(k, 1) if first else max(k, 0)

    def add_pages(self, doc: Document) -> None:
        self.used += sum(page_tokens(doc, self.vision)) + doc.num_pages * self.markup
        self.last = 0

    def count(self, text: str) -> int:
        return len(self.builder.ids(self.esc(text), escaped=True))

    def text(self, before: str, whole: str) -> tuple[str, bool]:
        """(the text span `whole`, True) when it fits in the tokens left (`before`, its start, is counted already),
        else (its longest start that fits, at a line or word boundary, never shorter than `before`, False)."""
        room = self.max - self.used + self.last
        c, m = len(whole), self.count(whole)
        ok = m <= room
        while m > room and c > len(before):
            c = max(len(before), min(c - 1, int(c * room / m)))
            m = self.count(whole[:c])
        if not ok and c > len(before):  # at a line or word boundary
            b = _cut(whole, c)
            mb = self.count(whole[:b]) if len(before) < b < c else room + 1
            if mb <= room:
                c, m = b, mb
        self.used += m - self.last
        self.last = m
        return whole[:c], ok


TASK_CLASSES = {"ocr": OCRTask, "lm": LMTask, "gen": GenTask, "qa": QATask}


def make_task(name: str, builder: PromptBuilder, **options) -> Task:
    """The task `name` (ocr, lm, gen, qa) with its options (styles, seed, config, max_pages, window_chars, ...)."""
    if name not in TASK_CLASSES:
        raise ValueError(f"task: {name!r} is unknown; choose from {', '.join(TASKS)}")
    return TASK_CLASSES[name](builder, **options)


__all__ = ["TASKS", "Task", "TaskError", "MissingGlyphs", "Sample", "PageRange", "make_task", "OCRTask", "LMTask",
           "GenTask", "QATask"]
