"""Each benchmark's own metric, as its reference implementation computes it; a score is in [0, 1].

- RULER (NVIDIA/RULER scripts/eval/synthetic/constants.py): string_match_all, string_match_part, after
  RULER's postprocess_pred (strip, control characters -> newline).
- LongBench (THUDM/LongBench metrics.py): qa_f1, rouge (ROUGE-L F of the `rouge` package, as LongBench
  uses), classification, retrieval, count, code_sim (fuzzywuzzy's ratio with python-Levenshtein: (lensum - indel
  distance) / lensum, rounded to an integer percent as fuzzywuzzy's intr). The best score over the reference
  answers counts; datasets whose answers are one line (trec, triviaqa, samsum, lsht) score the prediction's
  first line (metadata first_line). The Chinese ones (qa_f1_zh, rouge_zh) segment words with jieba, which they
  import when used.
- MRCR (openai/mrcr): difflib.SequenceMatcher ratio, 0 unless the response starts with the item's
  random_string_to_prepend, which is removed from both before comparing.
- MMLongBench-Doc (mayubo2333/MMLongBench-Doc eval/eval_score.py): the rule-based score by answer format
  (Int, Float, Str, List, None) on an already short answer; the reference first has GPT-4o extract it.

    score(item, prediction) -> float;  METRICS[name](prediction, answers, metadata) -> float
    check_packages(metric names): the packages they import (rouge, jieba), before any item is asked
"""
from __future__ import annotations

import difflib
import math
import re
import string
from collections import Counter

_CONTROL = re.compile(r"[\x00-\x1f]")


# ------------------------------------------------------------------ RULER
def ruler_postprocess(pred: str) -> str:
    return _CONTROL.sub("\n", pred.strip()).strip()


def string_match_all(prediction: str, answers: list, metadata: dict | None = None) -> float:
    """Fraction of the references found (case-insensitive) in the prediction (NIAH, VT, CWE, FWE)."""
    p = ruler_postprocess(prediction).lower()
    return sum(1.0 if str(r).lower() in p else 0.0 for r in answers) / len(answers)


def string_match_part(prediction: str, answers: list, metadata: dict | None = None) -> float:
    """1 if any reference is found (case-insensitive) in the prediction (QA)."""
    p = ruler_postprocess(prediction).lower()
    return max(1.0 if str(r).lower() in p else 0.0 for r in answers)


# ------------------------------------------------------------------ LongBench
def normalize_answer(s: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (SQuAD's normalisation, LongBench's copy)."""
    s = s.lower()
    exclude = set(string.punctuation)
    s = "".join(ch for ch in s if ch not in exclude)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _f1(prediction: list, ground_truth: list) -> float:
    common = Counter(prediction) & Counter(ground_truth)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction)
    recall = num_same / len(ground_truth)
    return 2 * precision * recall / (precision + recall)


def qa_f1_one(prediction: str, ground_truth: str) -> float:
    return _f1(normalize_answer(prediction).split(), normalize_answer(ground_truth).split())


def rouge_one(prediction: str, ground_truth: str) -> float:
    """ROUGE-L F of the `rouge` package (LongBench's rouge_score); 0 where it raises (an empty hypothesis)."""
    Rouge = _rouge()
    try:
        return float(Rouge().get_scores([prediction], [ground_truth], avg=True)["rouge-l"]["f"])
    except Exception:  # noqa: BLE001 - LongBench scores any failure (empty or punctuation-only text) as 0
        return 0.0


def _rouge():
    try:
        from rouge import Rouge
    except ImportError:
        raise RuntimeError("the rouge metric needs the `rouge` package: pip install 'glyph_rt[eval]'") from None
    return Rouge


def _count_matches(prediction: str, wanted: str) -> float:
    numbers = re.findall(r"\d+", prediction)
    return 0.0 if not numbers else sum(1 for n in numbers if n == str(wanted)) / len(numbers)


def count_one(prediction: str, ground_truth: str) -> float:
    return _count_matches(prediction, ground_truth)


def retrieval_one(prediction: str, ground_truth: str) -> float:
    m = re.findall(r"Paragraph (\d+)", ground_truth)
    if not m:
        raise ValueError(f"retrieval: the reference {ground_truth!r:.60} names no 'Paragraph N'")
    return _count_matches(prediction, m[0])


def code_sim_one(prediction: str, ground_truth: str) -> float:
    from rapidfuzz.distance import Indel

    line = ""
    for cand in prediction.lstrip("\n").split("\n"):
        if "`" not in cand and "#" not in cand and "//" not in cand:
            line = cand
            break
    # fuzzywuzzy's ratio: equal strings 100, an empty one 0, else int(round(100 * Levenshtein.ratio)), whose C code
    # divides (lensum - indel distance) by lensum (rapidfuzz's fuzz.ratio computes it otherwise: 42.50000000000001
    # where this is 42.5, and the rounding differs at exact halves)
    if line == ground_truth:
        return 1.0
    if not line or not ground_truth:
        return 0.0
    lensum = len(line) + len(ground_truth)
    return int(round(100 * ((lensum - Indel.distance(line, ground_truth)) / lensum))) / 100


def classification_one(prediction: str, ground_truth: str, all_classes: list) -> float:
    em = [c for c in all_classes if c in prediction]
    for term in em:  # removing while iterating skips the next term, as LongBench's loop does
        if term in ground_truth and term != ground_truth:
            em.remove(term)
    return 1.0 / len(em) if ground_truth in em else 0.0


def retrieval_zh_one(prediction: str, ground_truth: str) -> float:
    m = re.findall(r"段落(\d+)", ground_truth)
    if not m:
        raise ValueError(f"retrieval_zh: the reference {ground_truth!r:.60} names no '段落N'")
    return _count_matches(prediction, m[0])


def _jieba():
    try:
        import jieba
    except ImportError:
        raise RuntimeError("LongBench's Chinese metrics segment words with jieba: pip install 'glyph_rt[eval-zh]'") from None
    return jieba


def normalize_zh_answer(s: str) -> str:
    cn_punctuation = ("！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿"
                      "–—‘’‛“”„‟…‧﹏.")
    exclude = set(string.punctuation + cn_punctuation)
    return "".join("".join(ch for ch in s.lower() if ch not in exclude).split())


def qa_f1_zh_one(prediction: str, ground_truth: str) -> float:
    jieba = _jieba()
    p = [t for t in (normalize_zh_answer(x) for x in jieba.cut(prediction, cut_all=False)) if t]
    g = [t for t in (normalize_zh_answer(x) for x in jieba.cut(ground_truth, cut_all=False)) if t]
    return _f1(p, g)


def rouge_zh_one(prediction: str, ground_truth: str) -> float:
    jieba = _jieba()
    return rouge_one(" ".join(jieba.cut(prediction, cut_all=False)), " ".join(jieba.cut(ground_truth, cut_all=False)))


def _best(fn):
    def metric(prediction: str, answers: list, metadata: dict | None = None) -> float:
        if (metadata or {}).get("first_line"):
            prediction = prediction.lstrip("\n").split("\n")[0]
        return max(fn(prediction, str(a)) for a in answers)
    metric.__doc__ = f"LongBench's {fn.__name__[:-4]}: the best over the reference answers."
    return metric


def classification(prediction: str, answers: list, metadata: dict | None = None) -> float:
    meta = metadata or {}
    classes = meta.get("all_classes")
    if not classes:
        raise ValueError("classification needs metadata['all_classes'] (LongBench's all_classes field)")
    if meta.get("first_line"):
        prediction = prediction.lstrip("\n").split("\n")[0]
    return max(classification_one(prediction, str(a), list(classes)) for a in answers)


# ------------------------------------------------------------------ MRCR
def mrcr_one(response: str, answer: str, random_string_to_prepend: str) -> float:
    if not response.startswith(random_string_to_prepend):
        return 0.0
    response = response.removeprefix(random_string_to_prepend)
    answer = answer.removeprefix(random_string_to_prepend)
    return float(difflib.SequenceMatcher(None, response, answer).ratio())


def mrcr(prediction: str, answers: list, metadata: dict | None = None) -> float:
    prefix = (metadata or {}).get("random_string_to_prepend")
    if prefix is None:
        raise ValueError("mrcr needs metadata['random_string_to_prepend']")
    return mrcr_one(prediction, str(answers[0]), prefix)


# ------------------------------------------------------------------ MMLongBench-Doc
def _clean(s) -> str:
    """get_clean_string (its unit-suffix lines change nothing in the reference, so none are here)."""
    s = str(s).lower().strip()
    s = re.sub(r"\s*\([^)]*\)", "", s).strip()
    s = re.sub(r"^['\"]|['\"]$", "", s).strip()
    return s.strip().lstrip("$").strip().rstrip("%").strip()


def _is_exact_match(s: str) -> bool:
    return bool(
        "https://" in s or s.endswith((".py", "ipynb")) or s.startswith("page")
        or re.fullmatch(r"\b\d+(-\d+|\s\d+)?\b", s) or "a.m." in s or "p.m." in s
        or re.fullmatch(r"\b\d{4}[-\s]\d{2}[-\s]\d{2}\b", s) or re.fullmatch(r"\b\d{4}[-\s]\d{2}\b", s)
        or re.fullmatch(r"[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\.[a-zA-Z]{2,}", s))


def _isfloat(s) -> bool:
    try:
        float(s)
        return True
    except (TypeError, ValueError):
        return False


def _float_equal(reference: float, prediction) -> bool:
    def precision(x) -> int:
        return len(str(x).split(".")[-1]) if "." in str(x) else 3

    try:
        prediction = float(str(prediction).strip().rstrip("%").strip())
    except ValueError:
        return False
    for gt in (reference / 100, reference, reference * 100):
        if math.isclose(gt, prediction, rel_tol=0.01):
            return True
        p = max(min(precision(prediction), precision(gt)), 2)
        if round(prediction, p) == round(gt, p):
            return True
    return False


def anls(gt: str, pred: str, threshold: float = 0.5) -> float:
    """1 - normalised Levenshtein distance, 0 at or below the threshold (MMLongBench-Doc's anls_compute)."""
    from rapidfuzz.distance import Levenshtein

    length = max(len(gt.upper()), len(pred.upper()))  # the reference's lengths (upper() can lengthen: ß -> SS)
    value = 1.0 - (Levenshtein.distance(gt, pred) / length if length else 0.0)
    return 0.0 if value <= threshold else value


def _as_list(x) -> list:
    import ast

    if isinstance(x, str) and x.startswith("["):
        try:
            x = ast.literal_eval(x)
        except Exception:  # noqa: BLE001 - the reference's bare except: the text stays one answer
            pass
    return x if isinstance(x, list) else [x]


def mmlongbench_one(gt, pred, answer_format: str) -> float:
    if answer_format == "Int":
        try:
            return float(int(gt) == int(float(pred)))
        except Exception:  # noqa: BLE001 - the reference's bare except ("inf": OverflowError): 0
            return 0.0
    if answer_format == "Float":
        try:
            g, p = float(_clean(gt)), float(_clean(pred))
        except (TypeError, ValueError):
            return 0.0
        return float(_float_equal(g, p))
    if answer_format in ("Str", "None"):
        g, p = _clean(gt), _clean(pred)
        return float(g == p) if _is_exact_match(g) else anls(g, p)
    if answer_format == "List":
        g, p = _as_list(gt), _as_list(pred)
        if len(g) != len(p):
            return 0.0
        g, p = sorted(_clean(a) for a in g), sorted(_clean(a) for a in p)
        if _isfloat(g[0]) or _is_exact_match(g[0]):
            return float("-".join(g) == "-".join(p))
        return min(anls(a, b) for a, b in zip(g, p))
    raise ValueError(f"mmlongbench: answer_format {answer_format!r} is not Int, Float, Str, List or None")


def mmlongbench(prediction: str, answers: list, metadata: dict | None = None) -> float:
    fmt = (metadata or {}).get("answer_format", "Str")
    return mmlongbench_one(answers[0], prediction.strip(), fmt)


METRICS = {
    "string_match_all": string_match_all,
    "string_match_part": string_match_part,
    "qa_f1": _best(qa_f1_one),
    "rouge": _best(rouge_one),
    "count": _best(count_one),
    "retrieval": _best(retrieval_one),
    "code_sim": _best(code_sim_one),
    "retrieval_zh": _best(retrieval_zh_one),
    "qa_f1_zh": _best(qa_f1_zh_one),
    "rouge_zh": _best(rouge_zh_one),
    "classification": classification,
    "mrcr": mrcr,
    "mmlongbench": mmlongbench,
}


def check_packages(metrics) -> None:
    """Raises RuntimeError naming the extra to install when a metric among `metrics` needs a missing package."""
    metrics = set(metrics)
    if metrics & {"rouge", "rouge_zh"}:
        _rouge()
    if metrics & {"qa_f1_zh", "rouge_zh"}:
        _jieba()


def score(item, prediction: str) -> float:
    """The item's metric on a prediction, in [0, 1]."""
    return float(METRICS[item.metric](prediction, item.answers, item.metadata))
