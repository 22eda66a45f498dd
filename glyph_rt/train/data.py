"""The data of each stage, built from `data.loader` in the config on the data engine (tasks, loader, collate).

    data.loader:
      corpus: [paths]        text / .jsonl / .parquet / datasets dirs (default: the bundled sample text)
      tasks: {ocr: 1, lm: 1, gen: 1}   task -> weight (cpt); sft: {qa: 1} with data.ocr_ratio of OCR mixed in (the
                             stage YAMLs hold these defaults, so that task.NAME=W overrides one weight of them)
      think: true            sft: the answer is written `<think>{record's "thinking"}</think>\n{answer}`
      styles: true           a rendering style per sample from the Table 8 sampler (false: data.render_config, else
                             RenderConfig()); the default is false when data.render_config is set
      max_pages, window_chars    whole numbers >= 1 (checked as task_options are, naming the key)
      text_field, render (worker | batch), shuffle (true | false)
      epochs: null           null: no end; N: N passes over the corpus, after which training ends at its last
                             whole step on every rank together (Trainer.fit), warning that it ended early
      max_chars              a text file (.txt, .md) is cut into records of at most this many characters (default: the
                             largest window_chars of the stage's tasks, at least 50,000), so that a task's window fits
      task_options: {lm: {window_chars: 400000, max_pages: 64}}   one task's own options over the shared ones
                             (max_pages, window_chars; lm: max_spans; gen: answer_chars, backward)

cpt and sft get a GlyphLoader of collated micro-batches (packed rows when data.max_tokens > 0; a StageLoader, whose
state keeps the key of its styles, font pool included: a resume under other fonts warns); rl gets this rank's
QA records ({"context", "question", "answer"}; plain text becomes a needle question) with the same state_dict, and
with data.ocr_ratio that share of OCR records (the auxiliary task, scored by the OCR reward). rl takes corpus,
text_field, window_chars (the needle's haystack), max_chars, epochs and shuffle; the config refuses the others.
"""
from __future__ import annotations

import random
import warnings
from pathlib import Path

import torch

from .config import TrainConfig, TrainConfigError, check_task_weights
from .loader import GlyphLoader

LOADER_KEYS = {"corpus", "tasks", "think", "styles", "max_pages", "window_chars", "text_field", "render", "epochs",
               "shuffle", "task_options", "max_chars"}
TASK_OPTIONS = {"ocr": {"max_pages", "window_chars"}, "lm": {"max_pages", "window_chars", "max_spans"},
                "gen": {"max_pages", "window_chars", "answer_chars", "backward"}, "qa": {"max_pages", "window_chars"}}
STAGE_TASKS = {"cpt": {"ocr": 1.0, "lm": 1.0, "gen": 1.0}, "sft": {"qa": 1.0}, "rl": {"qa": 1.0}}


def loader_options(cfg: TrainConfig, held_out: bool = False) -> dict:
    """data.loader with the stage's defaults (held_out: data.eval_loader's keys over it, its tasks and task_options
    weight by weight and option by option); TrainConfigError naming a bad key of either mapping."""
    for name, given in (("data.loader", cfg.data.loader), ("data.eval_loader", cfg.data.eval_loader)):
        for k in given:
            if k not in LOADER_KEYS:
                raise TrainConfigError(f"{name}.{k}: unknown key; {name} takes {', '.join(sorted(LOADER_KEYS))}")
        check_loader_values(given, name)
    train = {**cfg.data.loader, "tasks": dict(cfg.data.loader.get("tasks", STAGE_TASKS[cfg.stage]))}
    held = cfg.data.eval_loader
    own, over = train.get("task_options") or {}, held.get("task_options") or {}
    held = {**train, **held, "tasks": {**train["tasks"], **held.get("tasks", {})},
            **({"task_options": {t: {**own.get(t, {}), **over.get(t, {})} for t in {**own, **over}}} if over else {})}
    for name, opts in (("data.loader", train), ("data.eval_loader", held)):
        if sum(opts["tasks"].values()) <= 0:
            raise TrainConfigError(f"{name}.tasks: every weight is 0")
    return held if held_out else train


# the shared options of data.loader (and data.eval_loader) that take a whole number >= 1 or a boolean; epochs also
# takes null (no end: the corpus again and again). max_chars: the records a text file is cut into
WHOLE_OPTIONS = ("max_pages", "window_chars", "epochs", "max_chars")
BOOL_OPTIONS = ("styles", "shuffle", "think")


def check_loader_values(given: dict, name: str) -> None:
    """The values of one loader mapping (`name`: data.loader or data.eval_loader), as the data engine takes them; a
    TrainConfigError naming `name.key`."""
    if "tasks" in given:
        tasks = given["tasks"]
        if not isinstance(tasks, dict) or not tasks:
            raise TrainConfigError(f"{name}.tasks: expected a mapping of task -> weight, got {tasks!r}")
        check_task_weights(tasks, f"{name}.tasks")
    for k in WHOLE_OPTIONS:
        v = given.get(k)
        if k in given and not (v is None and k == "epochs") and (isinstance(v, bool) or not isinstance(v, int)
                                                                  or v < 1):
            what = "a whole number >= 1" + (" (or null: no end)" if k == "epochs" else "")
            raise TrainConfigError(f"{name}.{k}: {v!r} must be {what}")
    for k in BOOL_OPTIONS:
        if k in given and not isinstance(given[k], bool):
            raise TrainConfigError(f"{name}.{k}: {given[k]!r} must be true or false")
    if "text_field" in given and not (isinstance(given["text_field"], str) and given["text_field"]):
        raise TrainConfigError(f"{name}.text_field: {given['text_field']!r} must be a field name")
    if given.get("render", "worker") not in ("worker", "batch"):
        raise TrainConfigError(f"{name}.render: {given['render']!r} must be worker or batch")
    per_task = given.get("task_options") or {}
    if not isinstance(per_task, dict):
        raise TrainConfigError(f"{name}.task_options: expected a mapping of task -> options, got {per_task!r}")
    for task, options in per_task.items():
        if task not in TASK_OPTIONS or not isinstance(options, dict):
            raise TrainConfigError(f"{name}.task_options.{task}: expected one of {', '.join(TASK_OPTIONS)} "
                                   "with a mapping of options")
        for k, v in options.items():
            if k not in TASK_OPTIONS[task]:
                raise TrainConfigError(f"{name}.task_options.{task}.{k}: unknown option; {task} takes "
                                       f"{', '.join(sorted(TASK_OPTIONS[task]))}")
            if k == "backward":  # a probability
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                    raise TrainConfigError(f"{name}.task_options.{task}.{k}: {v!r} must be in [0, 1]")
            elif isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise TrainConfigError(f"{name}.task_options.{task}.{k}: {v!r} must be a whole number >= 1")


class StageLoader(GlyphLoader):
    """build_data's GlyphLoader. Its state also holds the key of its style sampler (export.styles_key: the
    parameters, the vision model's limits and the font pool, whose fonts include those installed on the machine) and
    of the font pool alone: a resume under other styles (most often on a machine with other fonts) warns, since its
    samples are then drawn from another distribution than the checkpoint's."""

    def __init__(self, *args, styles=None, **kw):
        from .export import font_pool_key, styles_key

        super().__init__(*args, **kw)
        self.styles_key, self.fonts_key = styles_key(styles), font_pool_key(styles)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "styles": self.styles_key, "fonts": self.fonts_key}

    def load_state_dict(self, state: dict) -> None:
        from .export import FONTS_DIFFER

        super().load_state_dict(state)
        if "styles" not in state or state["styles"] == self.styles_key:  # (a state from before the key: no check)
            return
        if state.get("fonts") is not None and self.fonts_key is not None and state["fonts"] != self.fonts_key:
            why = FONTS_DIFFER
        elif (state["styles"] is None) != (self.styles_key is None):
            why = "data.loader.styles differs (a style per sample, or one render config)"
        else:
            why = "the style sampler's parameters differ"
        warnings.warn(f"data state of rank {self.dataset.rank}: the checkpoint's samples were drawn with other styles "
                      f"than this run's (key {state['styles']}, this run's {self.styles_key}): {why}; the samples from "
                      "here on follow this run's", stacklevel=2)


class MixedTask:
    """Sample g comes from task k with probability weight_k (a pure function of (seed, g)); OCR reads a QA record's
    context."""
    name = "mix"

    def __init__(self, tasks: dict, weights: dict, seed: int = 0):
        self.tasks, self.seed = tasks, seed
        self.names = [n for n in tasks if weights[n] > 0]
        self.weights = [weights[n] for n in self.names]

    def __call__(self, record: dict, index: int):
        name = self.names[0] if len(self.names) == 1 else \
            random.Random(f"{self.seed}:mix:{index}").choices(self.names, self.weights)[0]
        if name != "qa" and isinstance(record, dict) and "text" not in record and "context" in record:
            record = {"text": record["context"]}
        return self.tasks[name](record, index)


class RecordStream:
    """This rank's records r, r + R, ... of a corpus (reshuffled each epoch, or in corpus order with shuffle=False),
    endlessly or for `epochs` passes (this rank's equal share of them, as TaskDataset's), with state_dict: a resume
    goes on at the record that would have come next. Record g is an OCR record with probability ocr_ratio (a pure
    function of (seed, g)): {"task": "ocr", "context": a window of ocr_chars at a line start, "question": an OCR
    instruction, "answer": the same window (the text the pages show of it, ocr_target, once `check` laid it out:
    rollout_check)}. A QA record's numeric answer ("answer": 42) is its text ("42"). A record that makes no prompt (a
    QA record missing a field, or no "text"), or that `check(record, i)` refuses with a TaskError (rollout_check: one
    the rollout could not run), is skipped and counted (state_dict()["skipped"]); `check` may return the record to
    use in its place."""

    def __init__(self, corpus, seed: int = 0, rank: int = 0, world: int = 1, window_chars: int = 12000,
                 ocr_ratio: float = 0.0, ocr_chars: int = 1500, check=None, epochs: int | None = None,
                 shuffle: bool = True):
        if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
            raise ValueError(f"epochs: {epochs!r} must be a whole number >= 1 (or None: no end)")
        self.corpus, self.seed, self.rank, self.world, self.pos = corpus, seed, rank, world, 0
        self.skipped = 0  # records that made no prompt
        self.window_chars, self.ocr_ratio, self.ocr_chars = window_chars, ocr_ratio, ocr_chars
        self.check, self.epochs, self.shuffle = check, epochs, bool(shuffle)
        self.last_skip: str | None = None  # the reason the latest record skipped made no prompt

    @property
    def end(self) -> int | None:
        """This rank's positions (None: no end): an equal share of epochs x records, as TaskDataset's."""
        return None if self.epochs is None else self.epochs * len(self.corpus) // self.world

    def record(self, g: int) -> dict:
        """Record g, or TaskError when the corpus record cannot make one."""
        rec, i = self._record(g)
        if self.check is not None:
            rec = self.check(rec, i) or rec
        return rec

    def _record(self, g: int) -> tuple[dict, int]:
        from .loader import epoch_order
        from .tasks import TaskError, answer_text, needle_record

        n = len(self.corpus)
        epoch, i = divmod(g, n)
        if self.shuffle:
            i = int(epoch_order(self.seed, epoch, n)[i])
        rec = self.corpus[i]
        if not isinstance(rec, dict):
            raise TaskError(f"record {i}: expected a dict, got {type(rec).__name__}")

        def field(*names):
            text = next((rec[k] for k in names if isinstance(rec.get(k), str) and rec[k].strip()), None)
            if text is None:
                raise TaskError(f"record {i}: needs a non-empty {' or '.join(repr(k) for k in names)}")
            return text

        if self.ocr_ratio and random.Random(f"{self.seed}:rl-task:{g}").random() < self.ocr_ratio:
            return ocr_record(field("text", "context"), random.Random(f"{self.seed}:ocr:{g}"), self.ocr_chars), i
        if "question" in rec:  # a QA record as it is (a numeric answer as its text, as the rewards read it)
            field("context"), field("question")
            answer = answer_text(rec, i)
            return (rec if answer is rec["answer"] else {**rec, "answer": answer}), i
        rng = random.Random(f"{self.seed}:rl:{g}")
        text = field("text")
        if len(text) > self.window_chars:
            start = rng.randrange(0, len(text) - self.window_chars + 1)
            text = text[start:start + self.window_chars]
        return needle_record(text, rng), i

    def __iter__(self):
        from .loader import SkipStreak
        from .tasks import TaskError

        streak = SkipStreak("records in a row made no rl prompt",
                            "rl takes records with 'context', 'question' and 'answer', or a 'text'")
        while self.end is None or self.pos < self.end:
            g = self.pos * self.world + self.rank
            self.pos += 1
            try:
                rec = self.record(g)
            except TaskError as e:
                self.skipped += 1
                self.last_skip = str(e)
                streak.miss(lambda e=e: e)
                continue
            streak.hit()
            yield rec

    def counts(self) -> dict:
        """This rank's records drawn so far and, of them, those skipped (too_long: none, rl has no max_tokens)."""
        return {"drawn": self.pos, "skipped": self.skipped, "too_long": 0}

    def last_skip_reason(self) -> str | None:
        return self.last_skip

    def state_dict(self) -> dict:
        return {"pos": self.pos, "skipped": self.skipped, "rank": self.rank, "world_size": self.world,
                "seed": self.seed}

    def load_state_dict(self, s: dict) -> None:
        if (s.get("world_size"), s.get("seed")) != (self.world, self.seed):
            raise ValueError("data state: resume with the same seed and number of ranks")
        self.pos, self.skipped = int(s["pos"]), int(s.get("skipped", 0))


def rollout_check(gm, max_new_tokens: int):
    """check(record, i) for RecordStream: a TaskError for a record GlyphRollout could not run, so that it is
    skipped and counted rather than stopping the run: its question holds the image token, or its prompt (the
    context's pages at gm.render_config, each at its full canvas size: an upper bound; the question; max_new_tokens)
    is longer than the model's window, or it is an OCR record (ocr_record) whose pages draw characters as boxes (no
    font of gm.render_config covers them: its answer would hold text the pages do not show). It returns the record,
    an OCR record with its answer as the pages show the window (ocr_target of the same layout: CR/CRLF line ends as
    LF, soft hyphens, zero-width spaces and BOMs left out), the target SFT's OCR task trains."""
    from ..render.pages import Document
    from ..render.raster import canvas_tokens
    from .tasks import TaskError, missing_glyphs, ocr_target, visible_text

    per_page = canvas_tokens(gm.render_config, gm.vision)  # a page's most: uncropped, snapped

    def check(rec: dict, i: int) -> dict:
        try:
            gm.prompts.check_text(rec["question"], f"record {i}: field 'question'")
        except ValueError as e:
            raise TaskError(str(e)) from None
        ocr = rec.get("task") == "ocr"
        if not gm.max_positions and not ocr:
            return rec
        doc = Document(rec["context"], gm.render_config)
        pages = doc.num_pages
        if ocr:
            missing = doc.missing_chars()
            if missing:
                raise missing_glyphs(i, missing, "context")
            spans = doc.page_spans()
            target = ocr_target(rec["context"], doc, spans[0][0], spans[-1][1], pages) if pages else ""
            if not visible_text(target):
                raise TaskError(f"record {i}: field 'context': its pages show no visible character")
            rec = {**rec, "answer": target}
        if not gm.max_positions:
            return rec
        prompt = len(gm.prompts.prompt_ids([per_page] * pages, rec["question"]))  # as build_inputs feeds it
        if prompt + max_new_tokens > gm.max_positions:
            raise TaskError(f"record {i}: its prompt takes up to {prompt} positions ({pages} pages), which with "
                            f"grpo.max_new_tokens={max_new_tokens} is over the model's {gm.max_positions}")
        return rec
    return check


def ocr_record(text: str, rng: random.Random, chars: int) -> dict:
    """An RL record of the OCR auxiliary task: a window of the text (from a line start) to read back; its answer is
    the window, which rollout_check replaces with what the pages show of it (ocr_target)."""
    from .tasks import OCR_PROMPTS, text_window

    text = text_window(text, chars, rng)
    return {"task": "ocr", "context": text, "question": rng.choice(OCR_PROMPTS), "answer": text}


DEFAULT_MAX_CHARS = 50000  # Corpus.open's: a text file's records when no task's window is longer


def task_windows(cfg: TrainConfig, opts: dict, weights: dict | None = None) -> dict:
    """name -> the window (window_chars) each of the stage's tasks cuts from a record's text (rl: the needle's
    haystack, "qa", and the OCR records' window, "ocr")."""
    import inspect

    from .tasks import TASK_CLASSES, Task

    shared = opts.get("window_chars", inspect.signature(Task.__init__).parameters["window_chars"].default)
    if cfg.stage == "rl":
        return {"qa": shared, **({"ocr": 1500} if cfg.data.ocr_ratio > 0 else {})}
    own = opts.get("task_options") or {}
    return {n: own.get(n, {}).get("window_chars", shared) for n, w in (weights or opts["tasks"]).items()
            if n in TASK_CLASSES and w > 0}


def corpus_max_chars(opts: dict, windows: dict) -> int:
    """The records a text file is cut into (Corpus.open's max_chars): data.loader.max_chars, by default the largest of
    the tasks' windows (at least DEFAULT_MAX_CHARS), so that a 400,000-character window can be cut from one record."""
    largest = max(windows.values(), default=0)
    return int(opts.get("max_chars") or max(DEFAULT_MAX_CHARS, largest))


def warn_short_records(corpus, max_chars: int, windows: dict, name: str = "data.loader") -> None:
    """A warning when the corpus holds text files cut into records shorter than a task's window (an explicit
    data.loader.max_chars below it): those tasks never see a whole window."""
    from .loader import _kind

    over = {n: w for n, w in windows.items() if w > max_chars}
    texts = [src for src, _ in corpus.sources if _kind(Path(src)) == "text"]
    if over and texts:
        named = ", ".join(f"{n}'s {w}" for n, w in over.items())
        warnings.warn(f"{name}.max_chars={max_chars} cuts the corpus's text files ({texts[0]!r}"
                      f"{', ...' if len(texts) > 1 else ''}) into records of at most {max_chars} characters, shorter "
                      f"than the tasks' windows ({named} window_chars): those samples see at most {max_chars} "
                      f"characters of a text; raise {name}.max_chars (or leave it out: the largest window)",
                      stacklevel=3)


def stage_weights(cfg: TrainConfig, opts: dict) -> dict:
    """task -> weight of the stage's mix (cpt, sft): data.loader.tasks, and for sft with data.ocr_ratio > 0 that
    share of OCR, the other weights scaled to the rest."""
    weights = dict(opts["tasks"])
    if cfg.stage == "sft" and cfg.data.ocr_ratio > 0:
        rest = sum(w for n, w in weights.items() if n != "ocr")
        weights = {n: w * (1 - cfg.data.ocr_ratio) / rest for n, w in weights.items() if n != "ocr"} if rest else {}
        weights["ocr"] = cfg.data.ocr_ratio if rest else 1.0
    return weights


def build_data(cfg: TrainConfig, gm, rank: int, world: int, held_out: bool = False):
    """The stage's data for this rank: collated micro-batches (cpt, sft) or QA records (rl); held_out: the
    micro-batches of data.eval_loader's corpus (the held-out loss)."""
    from .collate import Collator
    from .config import fixed_render_config
    from .loader import Corpus, TaskDataset
    from .styles import StyleSampler
    from .tasks import make_task

    opts = loader_options(cfg, held_out)
    weights = None if cfg.stage == "rl" else stage_weights(cfg, opts)
    windows = task_windows(cfg, opts, weights)
    max_chars = corpus_max_chars(opts, windows)
    corpus = Corpus.open(opts.get("corpus"), max_chars=max_chars, text_field=opts.get("text_field", "text"))
    warn_short_records(corpus, max_chars, windows, "data.eval_loader" if held_out else "data.loader")
    fixed = fixed_render_config(cfg.data.render_config) if cfg.data.render_config else None
    if cfg.stage == "rl":
        return RecordStream(corpus, cfg.seed, rank, world, opts.get("window_chars", 12000), cfg.data.ocr_ratio,
                            check=rollout_check(gm, cfg.grpo.max_new_tokens), epochs=opts.get("epochs"),
                            shuffle=opts.get("shuffle", True))
    styles = StyleSampler(seed=cfg.seed, vision=gm.vision) if opts.get("styles", fixed is None) else None
    kw = {k: opts[k] for k in ("max_pages", "window_chars") if k in opts}
    think = opts.get("think", cfg.stage == "sft")  # QA answers in the thinking format
    own = opts.get("task_options") or {}
    # ocr, lm and gen show fewer pages where data.max_tokens holds fewer full pages of a sample's style
    tasks = {n: make_task(n, gm.prompts, styles=styles, seed=cfg.seed, config=fixed, vision=gm.vision,
                          max_tokens=cfg.data.max_tokens or None,
                          **{**kw, **own.get(n, {}), **({"think": think} if n == "qa" else {})})
             for n in weights}
    task = MixedTask(tasks, weights, cfg.seed)
    device = gm.device
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    render = opts.get("render", "batch" if device.type == "cuda" else "worker")
    ds = TaskDataset(corpus, task, seed=cfg.seed, epochs=opts.get("epochs"), shuffle=opts.get("shuffle", True),
                     rank=rank, world_size=world, render=render, dtype=dtype, vision_model=gm.vision)
    mode = "pack" if cfg.data.max_tokens else "pad"
    from .model import base_model

    col = Collator(gm.image_token_id, gm.tokenizer.pad_token_id, mode=mode, model=base_model(gm.model),
                   device=device, dtype=dtype, vision_model=gm.vision, max_length=cfg.data.max_tokens or None,
                   loss_weights=cfg.data.loss_weights)
    return StageLoader(ds, col, batch_size=cfg.data.micro_batch, num_workers=0 if held_out else cfg.data.workers,
                       styles=styles)
