"""Answer extraction: an LLM reads a question and a model's free-form response and writes the short answer that a
rule-based metric then scores, as MMLongBench-Doc's reference evaluation does (with GPT-4o) before its eval_score.

    extractor = AnswerExtractor("openai:http://127.0.0.1:8000/v1:Qwen2.5-72B-Instruct")   # any make_target spec
    evaluate(config, items, target, extractor=extractor)   # items whose metric needs it are scored on the extraction

The extractor is itself a Target answering a text prompt (greedy), so any OpenAI-compatible endpoint or a local
checkpoint can extract. Each scored row keeps the raw `prediction`, the `extracted` answer and the `extractor`.
"""
from __future__ import annotations

from .item import Item

METRICS = frozenset({"mmlongbench"})  # metrics scored on an extracted answer when an extractor is given

FORMATS = {
    "Int": "an integer, digits only (e.g. 12)",
    "Float": "a number (e.g. 3.5 or 12.25), no units",
    "Str": "a short phrase taken from the response",
    "List": "a Python list of short strings (e.g. ['red', 'blue'])",
    "None": "the phrase Not answerable",
}

PROMPT = """Read a question about a document and a model's response to it, and write the model's final answer in
short form.

Question: {question}

Response: {response}

Write only the short answer, as {form}. If the response says the question cannot be answered from the document,
or gives no answer, write: Not answerable

Short answer:"""


class AnswerExtractor:
    """Extracts short answers with `target` (a make_target spec or a Target), for items whose metric is in
    METRICS. max_new_tokens bounds the extraction."""

    def __init__(self, target, max_new_tokens: int = 64):
        from .targets import make_target

        self.target = make_target(target)
        self.name = self.target.name
        self.max_new_tokens = max_new_tokens

    def applies(self, item: Item) -> bool:
        return item.metric in METRICS

    def prompt(self, item: Item, response: str) -> str:
        fmt = str(item.metadata.get("answer_format", "Str"))
        question = str(item.metadata.get("question") or item.question)
        return PROMPT.format(question=question, response=response.strip() or "(empty)",
                             form=FORMATS.get(fmt, FORMATS["Str"]))

    def __call__(self, item: Item, response: str) -> str:
        """The short answer in `response` to `item`'s question (its first non-empty line)."""
        from ..render.config import RenderConfig

        text = self.prompt(item, response)
        ask = Item(id=f"{item.id}:extract", context=text, question="", answers=["-"], text_prompt=text,
                   max_new_tokens=self.max_new_tokens)
        reply = self.target.answer(ask, RenderConfig(), as_text=True).text
        lines = [x.strip() for x in reply.strip().splitlines() if x.strip()]
        answer = lines[0] if lines else ""
        for prefix in ("short answer:", "answer:", "extracted answer:"):
            if answer.lower().startswith(prefix):
                answer = answer[len(prefix):].strip()
        return answer

    def close(self) -> None:
        self.target.close()
