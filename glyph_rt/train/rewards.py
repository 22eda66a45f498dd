"""GRPO rewards: format (the thinking template), verifiable (exact / F1 / contains, or an LLM judge), OCR.

Each reward takes the responses and their references and returns one float in [0, 1] per response:

    format_reward(["<think>a</think> 42"])                       # [1.0]
    verifiable_reward(["<think>..</think> Paris"], ["paris"], "exact")   # [1.0]: the answer after </think>
    ocr_reward(["hello wrld"], ["hello world"])                   # [0.909...]: 1 - normalised Levenshtein
"""
from __future__ import annotations

import os
import re
import unicodedata
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

from ..models.prompt import split_thinking  # the one helper, shared with the evaluation harness

VERIFIERS = ("exact", "f1", "contains", "judge")


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
# the marks a number keeps: a sign or decimal point before its digits, - . / , between digits, and the ^ of an
# exponent after them
_NUMBER_MARK = re.compile(r"(?<=\d)[-./,](?=\d)|(?<!\w)[-.](?=\d)|(?<=\d)\^(?=[-+]?\d)")
_GROUPED = re.compile(r"(?<![\d,.])\d{1,3}(?:,\d{3})+(?!,?\d)")  # 1,000,000: the commas are no part of the number
_SUPERSCRIPT = re.compile("[\u2070\u00b9\u00b2\u00b3\u2074-\u2079\u207a\u207b]+")  # NFKC: 10³ -> 103
_SLASHES = {"\u2044", "\u2215"}  # FRACTION SLASH (NFKC's ½ is 1\u20442), DIVISION SLASH: a number's "/"


def answer_words(s: str) -> list[str]:
    """The words an answer is scored on: SQuAD's normalisation (lower case, no punctuation, no English articles)
    over any script: NFKC and case folding first ("STRASSE" is "straße", "İ" is "i"), punctuation and symbols of
    every script removed (combining marks stay), and each CJK character a word of its own (Chinese and Japanese
    answers put no spaces between words). Numbers keep their sign, decimal point and fraction bar ("-5", "3.14",
    "1/2" are not "5", "314", "12"; any dash before a digit is a minus, a fraction or division slash between
    digits a bar: "½" is "1/2", "2½" is "2 1/2"), write a superscript exponent with ^ ("10³" is "10^3", not
    "103"), and drop their thousands separators ("1,000" is "1000")."""
    s = "".join(f" {unicodedata.normalize('NFKC', ch)} " if unicodedata.decomposition(ch).startswith("<fraction>")
                else ch for ch in s)  # a vulgar fraction is a word: 2½ is "2 1/2", not "21/2"
    s = _SUPERSCRIPT.sub(lambda m: "^" + unicodedata.normalize("NFKC", m.group()), s)
    # NFKC, then full case folding (ß -> ss), then NFKC again (what folding decomposes); İ folds to i + U+0307
    # COMBINING DOT ABOVE, a dot the i already has
    s = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", s).casefold()).replace("i\u0307", "i")
    s = _GROUPED.sub(lambda m: m.group().replace(",", ""), s)
    s = "".join("-" if ch == "\u2212" or unicodedata.category(ch) == "Pd" else "/" if ch in _SLASHES else ch
                for ch in s)  # dashes and minus; fraction and division slashes
    keep = {m.start() for m in _NUMBER_MARK.finditer(s)}
    s = "".join(ch for i, ch in enumerate(s) if i in keep or unicodedata.category(ch)[0] not in "PS")
    s = _CJK.sub(lambda m: f" {m.group()} ", _ARTICLES.sub(" ", s))
    return s.split()


def f1_score(prediction: str, reference: str) -> float:
    p, r = answer_words(prediction), answer_words(reference)
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def format_reward(responses: Sequence[str], references: Sequence[str] | None = None) -> list[float]:
    """1 when the response is `<think>thoughts</think>` followed by a non-empty answer, else 0."""
    return [float(split_thinking(r)[0] is not None) for r in responses]


def reference_texts(references: Sequence) -> list[str]:
    """The references as text: a number (a record's `"answer": 42`) as it prints; anything else not a string is
    a TypeError naming its index."""
    out = []
    for i, ref in enumerate(references):
        if isinstance(ref, (int, float)) and not isinstance(ref, bool):
            ref = str(ref)
        if not isinstance(ref, str):
            raise TypeError(f"references[{i}]: {type(ref).__name__} {ref!r}; a reference must be a string or a "
                            "number (give every record an answer)")
        out.append(ref)
    return out


def verifiable_reward(responses: Sequence[str], references: Sequence[str], rule: str = "exact",
                      judge: "Judge | None" = None) -> list[float]:
    """Scores the answer (the text after </think>, or the whole response) against the reference."""
    if rule not in VERIFIERS:
        raise ValueError(f"rule: {rule!r} must be one of {', '.join(VERIFIERS)}")
    references = reference_texts(references)
    answers = [split_thinking(r)[1] for r in responses]
    if rule == "judge":
        if judge is None:
            raise ValueError("rule 'judge' needs a Judge (an OpenAI-compatible endpoint)")
        return judge.score(answers, references)
    out = []
    for a, ref in zip(answers, references):
        got, want = answer_words(a), answer_words(ref)
        if not want:  # a reference with no words: only an answer with none matches it
            out.append(float(not got))
        elif rule == "exact":
            out.append(float(got == want))
        elif rule == "f1":
            out.append(f1_score(a, ref))
        else:  # the reference's words, in order, among the answer's
            out.append(float(f" {' '.join(want)} " in f" {' '.join(got)} "))
    return out


def _levenshtein():
    """rapidfuzz's Levenshtein, imported where a reward is computed: the reward names (REWARDS, VERIFIERS), which
    the training config checks and `glyph-rt train --print-config` needs, import nothing outside the standard
    library."""
    try:
        from rapidfuzz.distance import Levenshtein
    except ImportError as e:
        raise ModuleNotFoundError("the OCR reward and CER need rapidfuzz: pip install 'glyph_rt[train]'",
                                  name="rapidfuzz") from e
    return Levenshtein


def ocr_reward(responses: Sequence[str], references: Sequence[str]) -> list[float]:
    """1 - normalised Levenshtein distance between the transcription (after </think> if any) and the text, both
    stripped (a page shows no whitespace at the text's ends)."""
    Levenshtein = _levenshtein()
    return [1.0 - Levenshtein.normalized_distance(split_thinking(r)[1].strip(), ref.strip())
            for r, ref in zip(responses, reference_texts(references))]


def cer(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Character error rate: total edit distance over total reference characters."""
    Levenshtein = _levenshtein()
    edits = sum(Levenshtein.distance(p, r) for p, r in zip(predictions, references))
    return edits / max(1, sum(len(r) for r in references))


JUDGE_PROMPT = ("You grade answers. Question context aside, compare the candidate answer with the reference answer.\n"
                "Reference: {reference}\nCandidate: {answer}\n"
                "Reply with one word: CORRECT if the candidate means the same as the reference, else INCORRECT.")


class JudgeError(RuntimeError):
    """A judge request that still failed after its retries."""


class Judge:
    """A reference-based LLM judge behind any OpenAI-compatible chat endpoint (vLLM, glyph-rt serve, OpenAI).

    A call's requests go `concurrency` at a time. The openai client retries each one `max_retries` times on a
    connection error, a timeout, 408, 409, 429 or a 5xx, waiting the server's Retry-After or 0.5 s doubling to 8 s
    (30-40 s in all with 8 retries); a request that still fails raises JudgeError naming the endpoint."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 timeout: float = 60.0, client=None, concurrency: int = 16, max_retries: int = 8):
        if concurrency < 1:
            raise ValueError(f"concurrency: {concurrency} must be >= 1")
        if max_retries < 0:
            raise ValueError(f"max_retries: {max_retries} must be >= 0")
        if client is None:
            from openai import OpenAI

            client = OpenAI(base_url=base_url, api_key=api_key or os.environ.get(api_key_env) or "none",
                            timeout=timeout, max_retries=max_retries)
        self.client, self.model, self.concurrency = client, model, concurrency
        self.base_url = str(getattr(client, "base_url", "") or base_url)

    def score(self, answers: Sequence[str], references: Sequence[str]) -> list[float]:
        """1.0 for each answer the judge calls correct, else 0.0, in order."""
        jobs = list(zip(answers, references))
        if not jobs:
            return []
        with ThreadPoolExecutor(min(self.concurrency, len(jobs)), thread_name_prefix="judge") as pool:
            futures = [pool.submit(self.verdict, i, a, ref) for i, (a, ref) in enumerate(jobs)]
            try:
                return [f.result() for f in futures]
            except BaseException:
                pool.shutdown(cancel_futures=True)  # the requests not yet sent
                raise

    def verdict(self, i: int, answer: str, reference: str) -> float:
        try:
            r = self.client.chat.completions.create(
                model=self.model, temperature=0.0, max_tokens=4,
                messages=[{"role": "user", "content": JUDGE_PROMPT.format(reference=reference, answer=answer)}])
            word = (r.choices[0].message.content or "").strip().upper()
        except Exception as e:
            retries = getattr(self.client, "max_retries", "its")
            raise JudgeError(f"the judge at {self.base_url} (model {self.model!r}) failed on answer {i} after "
                             f"{retries} retries: {type(e).__name__}: {e}; check that the endpoint is up, or give it "
                             "more retries (grpo.judge_max_retries)") from e
        return float(word.startswith("CORRECT"))


REWARDS = ("format", "verifiable", "ocr")


class RewardSet:
    """The weighted rewards of a GRPO run; `__call__` gives the total and each reward's scores."""

    def __init__(self, weights: dict, verifier: str = "exact", judge: Judge | None = None):
        for name in weights:
            if name not in REWARDS:
                raise ValueError(f"reward {name!r} is unknown; choose from {', '.join(REWARDS)}")
        self.weights, self.verifier, self.judge = dict(weights), verifier, judge

    def __call__(self, responses: Sequence[str], references: Sequence[str]) -> tuple[list[float], dict]:
        parts = {}
        for name in self.weights:
            if name == "format":
                parts[name] = format_reward(responses)
            elif name == "verifiable":
                parts[name] = verifiable_reward(responses, references, self.verifier, self.judge)
            else:
                parts[name] = ocr_reward(responses, references)
        total = [sum(self.weights[n] * parts[n][i] for n in parts) for i in range(len(responses))]
        return total, parts
