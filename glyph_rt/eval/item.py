"""Item: one evaluation question (a long context, a question, reference answers, the metric that scores it)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..fileio import json_line, text_lines


@dataclass
class Item:
    """id: unique within a run (the key of resuming); context: the long text read as pages (or as text with
    as_text); question: what follows the pages, kept as text; answers: reference answers; metric: a name in
    glyph_rt.eval.metrics.METRICS; metadata: task, length, depth, ... (copied into each result row, but for a key
    that is one of the row's own fields, harness.ROW_FIELDS: id, score, prediction, ..., kept in the item only).
    images: page image files instead of a text context (document benchmarks); max_new_tokens: the task's
    generation budget (RULER's tokens_to_generate); text_prompt: the whole user turn of the text baseline when the
    benchmark words it differently from the pages' question (default: context, a blank line, question); messages:
    the text baseline's whole conversation instead, for a multi-turn benchmark (MRCR: [{"role", "content"}, ...],
    ending with the user's request); render_config: Glyph dashed keys that override the run's render config for
    this item's pages (a row's own config in Glyph's evaluation data)."""
    id: str
    context: str
    question: str
    answers: list
    metric: str = "string_match_all"
    metadata: dict = field(default_factory=dict)
    images: list = field(default_factory=list)
    max_new_tokens: int = 128
    text_prompt: str = ""
    messages: list = field(default_factory=list)
    render_config: dict = field(default_factory=dict)

    def __post_init__(self):
        from .metrics import METRICS

        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"Item.id: {self.id!r} must be a non-empty str")
        if not isinstance(self.context, str) or not isinstance(self.question, str):
            raise ValueError(f"item {self.id}: context and question must be str")
        if not self.context.strip() and not self.images:
            raise ValueError(f"item {self.id}: empty context and no page images")
        if self.metadata is None:
            self.metadata = {}
        if not isinstance(self.metadata, dict):
            raise ValueError(f"item {self.id}: metadata must be an object (a dict), got {type(self.metadata).__name__}")
        if isinstance(self.answers, str):
            self.answers = [self.answers]
        if not isinstance(self.answers, (list, tuple)) or not self.answers:
            raise ValueError(f"item {self.id}: answers must be a non-empty list, got {self.answers!r:.60}")
        self.answers = list(self.answers)
        if self.metric not in METRICS:
            raise ValueError(f"item {self.id}: metric {self.metric!r} is unknown; choose from {', '.join(METRICS)}")
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"item {self.id}: max_new_tokens {self.max_new_tokens!r} must be an integer >= 1")
        turns_ok = isinstance(self.messages, list) and all(
            isinstance(m, dict) and m.get("role") in ("system", "user", "assistant") and isinstance(m.get("content"), str)
            for m in self.messages)
        if self.messages and not (turns_ok and self.messages[-1]["role"] == "user"):
            raise ValueError(f"item {self.id}: messages must be a list of {{role: system|user|assistant, content: "
                             "str}} ending with a user message")
        if self.render_config:
            from ..render.config import ConfigError, glyph_fields

            try:
                glyph_fields(self.render_config)
            except ConfigError as e:
                raise ValueError(f"item {self.id}: render_config: {e}") from None

    @property
    def task(self) -> str:
        return str(self.metadata.get("task", "all"))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Item":
        known = {"id", "context", "question", "answers", "metric", "metadata", "images", "max_new_tokens", "text_prompt",
                 "messages", "render_config"}
        extra = set(d) - known
        if extra:
            raise ValueError(f"item {d.get('id')!r}: unknown fields {sorted(extra)}")
        return cls(**d)


def save_items(items: list[Item], path) -> None:
    """Writes items as JSONL (temporary file + rename)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for it in items:
            f.write(json_line(it.to_dict()))
    tmp.replace(p)


def load_items(path) -> list[Item]:
    """Items from a JSONL file written by save_items; errors name the line."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"items file {str(p)!r} does not exist")
    out = []
    for n, line in enumerate(text_lines(p.read_text(encoding="utf-8")), 1):
        if not line.strip():
            continue
        try:
            out.append(Item.from_dict(json.loads(line)))
        except (json.JSONDecodeError, TypeError, ValueError) as e:
            raise ValueError(f"{p}:{n}: not an item ({e})") from None
    return out
