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
       page's character spans as the layout reports them (no character lost, none duplicated); pages that
       draw a character as a box (no font of the style has it) are a TaskError (MissingGlyphs)
  lm   interleaved language modelling: spans of the text alternate between pages and plain text, in
       order, in one user turn; loss on the plain-text spans (PromptBuilder.encode_pieces)
  gen  given the first pages, write what follows (or given the last pages, what came before)
  qa   a context rendered as pages, the question as text, loss on the answer
The chat samples (ocr, gen, qa) use PromptBuilder.encode: loss on the assistant's turn only.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from ..models.prompt import IGNORE_INDEX, PromptBuilder
from ..render.config import RenderConfig
from ..render.pages import Document
from ..render.raster import canvas_tokens
from ..render.tokens import vision_model

TASKS = ("ocr", "lm", "gen", "qa")

OCR_PROMPTS = ("Read all the text in the image.", "Transcribe the text on these pages exactly.",
               "What text do the pages contain? Write it out in full.", "OCR the document.")
GEN_FORWARD = ("Continue the text.", "Write what comes after these pages.", "Continue writing from where the pages end.")
GEN_BACKWARD = ("Write the text that comes before these pages.", "What precedes these pages? Write it.")


class TaskError(ValueError):
    """A record a task cannot use; the message names the record field."""


class MissingGlyphs(TaskError):
    """An OCR sample whose pages draw characters as boxes (no font of the style covers them)."""


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
    return v


def _cut(text: str, at: int, rng: random.Random) -> int:
    """A cut point near `at` at a line or word boundary (never inside a word)."""
    at = max(0, min(len(text), at))
    nl = text.rfind("\n", 0, at)
    if nl > at * 0.7:
        return nl + 1
    sp = text.rfind(" ", 0, at)
    return sp + 1 if sp > 0 else at


def text_window(text: str, chars: int, rng: random.Random) -> str:
    """A window of `chars` characters of the text starting at a random line start (the whole text when short),
    never shorter than chars // 2."""
    if len(text) <= chars:
        return text
    last = len(text) - chars // 2  # the latest start that leaves half a window
    start = rng.randrange(0, last + 1)
    nl = text.find("\n", start, min(start + 2000, last))
    start = nl + 1 if nl >= 0 else start
    return text[start:start + chars]


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
        thinking format's tags as the tokens they are."""
        n = sum(p.num_pages for p in pages)
        shown = answer if thinking is None else think_answer(answer, thinking)
        msgs = PromptBuilder.messages(n, question, answer=shown)
        if self.builder is None:  # messages only (export): no token ids
            return Sample(index, self.name, pages, [], [], msgs, meta)
        esc = self.escape(index)
        said = esc(answer) if thinking is None else think_answer(answer, thinking, esc)
        enc = self.builder.encode(PromptBuilder.messages(n, esc(question), answer=said), [1] * n)
        return Sample(index, self.name, pages, enc.input_ids, enc.labels, msgs, meta)

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


def missing_glyphs(index: int, missing: dict, field_name: str = "text") -> MissingGlyphs:
    """The TaskError of an OCR record whose pages draw characters as replacement boxes (Document.missing_chars():
    no font of the style covers them): a target holding them would teach reading what the pages do not show."""
    top = sorted(missing.items(), key=lambda kv: -kv[1])
    named = ", ".join(f"{c!r} (U+{ord(c):04X}) x{n}" for c, n in top[:8]) + (
        f" and {len(top) - 8} other characters" if len(top) > 8 else "")
    return MissingGlyphs(f"record {index}: field {field_name!r}: the pages draw {sum(missing.values())} characters as "
                     f"boxes (no font of the style has them): {named}; an OCR target must hold only what the pages "
                     "show")


class OCRTask(Task):
    """Reads back 1 to max_pages pages of a window. A sample whose pages draw a character as a box (no font of its
    style covers it) is a TaskError: skipped and counted, never a target holding text the pages do not show."""
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
        missing = doc.missing_chars()
        if missing:
            raise missing_glyphs(index, missing)
        spans = doc.page_spans()
        target = window[spans[0][0]:spans[-1][1]]
        page = PageRange(window, doc.config, 0, doc.num_pages, k, doc)
        return self.chat(index, [page], rng.choice(OCR_PROMPTS), target,
                         {"chars": len(target), "page_spans": spans})


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
        if rng.random() < self.backward:  # the last pages are shown: write what came before
            doc = Document(window[split:], style, max_pages=k)
            begin = _cut(window, split - self.answer_chars, rng) if split > self.answer_chars else 0
            answer, prompt = window[begin:split], rng.choice(GEN_BACKWARD)
            shown = window[split:]
        else:
            doc = Document(window[:split], style, max_pages=k)
            end = doc.page_spans()[-1][1]  # text past the last page shown (max_pages) continues the answer
            answer = window[end:end + self.answer_chars]
            answer = answer[:_cut(answer, len(answer), rng)] if end + self.answer_chars < len(window) else answer
            prompt, shown = rng.choice(GEN_FORWARD), window[:split]
        if not answer.strip():
            raise TaskError(f"record {index}: field 'text' leaves nothing to generate")
        page = PageRange(shown, doc.config, 0, doc.num_pages, k, doc)
        return self.chat(index, [page], prompt, answer, {"direction": "backward" if prompt in GEN_BACKWARD else
                                                         "forward"})


NEEDLE_NAMES = ("amber", "basalt", "cobalt", "dune", "ember", "fjord", "garnet", "harbor", "iris", "juniper",
                "kestrel", "lagoon", "meadow", "nickel", "onyx", "prairie", "quartz", "raven", "sierra", "tundra")


def needle_record(text: str, rng: random.Random) -> dict:
    """A QA record made from plain text (RULER's single needle): a sentence holding a number is put at a line
    start in the first 80% of the text, and the question asks for it."""
    name = f"{rng.choice(NEEDLE_NAMES)}-{rng.choice(NEEDLE_NAMES)}"
    number = str(rng.randrange(1000000, 10000000))
    starts = [0] + [i + 1 for i, c in enumerate(text) if c == "\n" and i + 1 < len(text) * 0.8]
    at = rng.choice(starts)
    needle = f"The special magic number for {name} is: {number}.\n"
    return {"context": text[:at] + needle + text[at:], "answer": number,
            "question": f"What is the special magic number for {name} mentioned in the text?"}


def think_answer(answer: str, thinking: str = "", escape=None) -> str:
    """The answer in the thinking format (as it is when it already starts with <think>); `escape` applies to the
    text, not to the format's tags."""
    esc = escape or (lambda t: t)
    head, tag, rest = answer.partition("<think>")
    if tag and not head.strip() and "</think>" in rest:
        inner, _, after = rest.partition("</think>")
        return f"{head}<think>{esc(inner)}</think>{esc(after)}"
    return f"<think>{esc(('' if thinking is None else str(thinking)).strip())}</think>\n{esc(answer)}"


class QATask(Task):
    """Long-context QA from {"context", "question", "answer"} records; a record with only "text" becomes a
    needle-in-a-haystack question (needle_record). A context that does not fit in max_pages (default 64) at the
    sample's style is a TaskError, never a truncated context whose answer may lie beyond the pages. think: the
    answer in the thinking format, `<think>{record's "thinking"}</think>\n{answer}`."""
    name = "qa"

    def __init__(self, *args, max_pages: int = 64, think: bool = False, **kw):
        super().__init__(*args, max_pages=max_pages, **kw)
        self.think = bool(think)

    def __call__(self, record: dict, index: int) -> Sample:
        style, doc = self.style(index), None
        if isinstance(record, dict) and "question" not in record and "context" not in record and "text" in record:
            rng = self.rng(index)
            hay = self.window(_text_field(record, "text", index), rng)
            first = Document(hay, style, max_pages=self.max_pages)
            if first.layout.truncated:  # the needle goes where the pages show it
                hay = hay[:first.page_spans()[-1][1]]
            record = needle_record(hay, rng)
            doc = Document(record["context"], style, max_pages=self.max_pages)
            if doc.layout.truncated:  # the needle's line pushed the end over: the haystack ends where the pages do
                record["context"] = record["context"][:doc.page_spans()[-1][1]]
                doc = None  # laid out again below, cut
        context = _text_field(record, "context", index)
        question = _text_field(record, "question", index)
        answer = _text_field(record, "answer", index)
        doc = doc or Document(context, style, max_pages=self.max_pages)
        if doc.layout.truncated:
            raise TaskError(f"record {index}: field 'context' needs more than {self.max_pages} pages at this style; "
                            "its answer may lie beyond them (raise data.loader.max_pages)")
        page = PageRange(context, doc.config, 0, doc.num_pages, self.max_pages, doc)
        thinking = record.get("thinking")  # None (a Parquet / datasets row without it) is absent, never "None"
        return self.chat(index, [page], question, answer, {},
                         thinking=("" if thinking is None else str(thinking)) if self.think else None)


_MARK = "\U0010FFFE"  # a noncharacter: LMTask's marker of a text span's place in the template
_SPAN_MARKER = re.compile(f"{_MARK}(\\d+){_MARK}")


class LMTask(Task):
    """Interleaved LM: 2..`max_spans` spans of a window, each rendered (pages) or kept as text; loss on the text."""
    name = "lm"

    def __init__(self, *args, max_spans: int = 5, **kw):
        super().__init__(*args, **kw)
        self.max_spans = int(max_spans)

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
        content, pages, left = [], [], self.page_budget(config)
        for span, as_pages in zip(spans, rendered):
            if as_pages and left > 0:
                doc = Document(span, config, max_pages=left)
                end = doc.page_spans()[-1][1] if doc.num_pages else 0
                if doc.num_pages:
                    pages.append(PageRange(span, doc.config, 0, doc.num_pages, left, doc))
                    content += [{"type": "image"}] * doc.num_pages
                    left -= doc.num_pages
                if end < len(span.rstrip()):  # pages full: the rest of this span stays text, then stop
                    content.append({"type": "text", "text": span[end:]})
                    break
            elif content and content[-1]["type"] == "text":  # text after text: one span, tokenized as one
                content[-1] = {"type": "text", "text": content[-1]["text"] + span}
            else:
                content.append({"type": "text", "text": span})
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
        return Sample(index, self.name, pages, enc.input_ids, enc.labels, msgs, meta)


TASK_CLASSES = {"ocr": OCRTask, "lm": LMTask, "gen": GenTask, "qa": QATask}


def make_task(name: str, builder: PromptBuilder, **options) -> Task:
    """The task `name` (ocr, lm, gen, qa) with its options (styles, seed, config, max_pages, window_chars, ...)."""
    if name not in TASK_CLASSES:
        raise ValueError(f"task: {name!r} is unknown; choose from {', '.join(TASKS)}")
    return TASK_CLASSES[name](builder, **options)


__all__ = ["TASKS", "Task", "TaskError", "MissingGlyphs", "Sample", "PageRange", "make_task", "OCRTask", "LMTask",
           "GenTask", "QATask"]
