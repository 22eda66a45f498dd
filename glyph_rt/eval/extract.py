"""Answer extraction: an LLM reads a question and a model's free-form response and writes the short answer that a
rule-based metric then scores, as MMLongBench-Doc's reference evaluation does (with GPT-4o) before its eval_score.

    extractor = AnswerExtractor("openai:http://127.0.0.1:8000/v1:Qwen2.5-72B-Instruct")   # any make_target spec
    evaluate(config, items, target, extractor=extractor)   # items whose metric needs it are scored on the extraction

The extractor is itself a Target answering a text prompt (greedy), so any OpenAI-compatible endpoint or a local
checkpoint can extract. Each scored row keeps the raw `prediction`, the `extracted` answer and the `extractor`.
As in the reference's run_api.py, a reply without "Extracted answer:", or a request the extractor's server rejects,
extracts FAILED ("Failed to extract") and scores 0; a resume extracts a rejected request's answer again.
"""
from __future__ import annotations

import hashlib

from .item import Item

METRICS = frozenset({"mmlongbench"})  # metrics scored on an extracted answer when an extractor is given

# One prompt for every item: the extractor decides the answer's format itself, as MMLongBench-Doc's does; the item's
# answer_format is the reference's and would give the answer away ("Not answerable") or its type.
PROMPT = """Read a question about a document and a model's response to it, and extract the model's final answer.

Question: {question}

Response: {response}

Write the answer in the shortest form, as one of: an integer (e.g. 12), a float (e.g. 3.5, no units), a string (a short
phrase taken from the response) or a list (a Python list of short strings, e.g. ['red', 'blue']). If the response says
the question cannot be answered from the document, the answer is: Not answerable. If the response gives no answer
(e.g. it only says it cannot read the document), the answer is: Fail to answer.

Reply in this form:
Extracted answer: <the answer>
Answer format: <Integer, Float, String, List or None>"""
FAILED = "Failed to extract"  # the answer of a reply without "Extracted answer:" or of a failed request; scores 0
# how parse reads the extractor's reply; rows extracted with another prompt, or read by another rule (before this
# one: the reply's first line where it had no "Extracted answer:"), are extracted again
PARSE_RULE = "reply.split('Answer format:')[0].split('Extracted answer:')[1].strip(), else 'Failed to extract'"
PROMPT_ID = hashlib.sha1((PROMPT + "\n" + PARSE_RULE).encode()).hexdigest()[:8]


class AnswerExtractor:
    """Extracts short answers with `target` (a make_target spec or a Target), for items whose metric is in
    METRICS. max_new_tokens bounds the extraction (the reference's extract_answer.py lets GPT-4o write 256)."""

    def __init__(self, target, max_new_tokens: int = 256):
        from .targets import make_target

        self.target = make_target(target)
        self.name = self.target.name
        self.max_new_tokens = max_new_tokens

    def applies(self, item: Item) -> bool:
        return item.metric in METRICS

    def prompt(self, item: Item, response: str) -> str:
        question = str(item.metadata.get("question") or item.question)
        return PROMPT.format(question=question, response=response.strip() or "(empty)")

    def __call__(self, item: Item, response: str) -> str:
        """The short answer in `response` to `item`'s question: parse(the extractor's reply)."""
        from ..render.config import RenderConfig

        text = self.prompt(item, response)
        ask = Item(id=f"{item.id}:extract", context=text, question="", answers=["-"], text_prompt=text,
                   max_new_tokens=self.max_new_tokens)
        return self.parse(self.target.answer(ask, RenderConfig(), as_text=True).text)

    @staticmethod
    def parse(reply: str) -> str:
        """The answer in an extractor's reply as MMLongBench-Doc's reference (run_api.py) takes it: everything
        between "Extracted answer:" and "Answer format:" (a list over several lines, an answer on the next line);
        FAILED ("Failed to extract", scored 0) where the reply has no "Extracted answer:" before its "Answer
        format:"."""
        head = reply.split("Answer format:")[0]
        return head.split("Extracted answer:")[1].strip() if "Extracted answer:" in head else FAILED

    def close(self) -> None:
        self.target.close()
