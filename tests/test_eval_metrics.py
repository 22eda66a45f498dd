"""Metrics against the reference implementations' values on known examples (RULER, LongBench, MRCR,
MMLongBench-Doc) and, for the difflib-based ones, against the reference code on random strings."""
import difflib

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from glyph_rt.eval import Item
from glyph_rt.eval.metrics import METRICS, anls, mmlongbench_one, mrcr_one, score


def m(name, pred, answers, **meta):
    return METRICS[name](pred, answers, meta)


def test_ruler_string_match():
    assert m("string_match_all", "The numbers are 123 and 456.", ["123", "456", "789"]) == pytest.approx(2 / 3)
    assert m("string_match_all", "  ABC-def\x00 ", ["abc-DEF"]) == 1.0  # case-insensitive, stripped
    assert m("string_match_part", "Paris, France", ["London", "paris"]) == 1.0
    assert m("string_match_part", "Rome", ["London", "Paris"]) == 0.0


def test_longbench_qa_f1():
    # normalized: "cat sat on mat" vs "cat on mat": precision 3/4, recall 1
    assert m("qa_f1", "The cat sat on the mat.", ["a cat on a mat"]) == pytest.approx(6 / 7)
    assert m("qa_f1", "nothing", ["a cat on a mat"]) == 0.0
    assert m("qa_f1", "Barack Obama", ["Obama", "Barack Hussein Obama"]) == pytest.approx(0.8)  # best of two
    assert m("qa_f1", "yes\nand more text", ["yes"], first_line=True) == 1.0


def test_longbench_rouge_matches_the_rouge_package():
    # ROUGE-L F of `rouge` 1.0.1 (LongBench's rouge_score) for these two sentences: LCS 4 of 6 and 5 words
    assert m("rouge", "the cat sat on the mat", ["a cat was on the mat"]) == pytest.approx(0.7272727223, abs=1e-8)
    assert m("rouge", "", ["a cat"]) == 0.0  # the package raises on an empty hypothesis: LongBench scores 0
    assert m("rouge", "...", ["a cat"]) == 0.0


def test_longbench_code_sim_is_fuzzywuzzy_ratio():
    # Levenshtein ratio 2*10/22 = 0.909 -> fuzzywuzzy rounds to 91
    assert m("code_sim", "return a+b", ["return a + b"]) == 0.91
    # the first line with no ` # // is the prediction
    assert m("code_sim", "```python\n# comment\nx = 1\ny = 2", ["x = 1"]) == 1.0
    assert m("code_sim", "```", ["x = 1"]) == 0.0
    assert m("code_sim", "", [""]) == 1.0  # fuzzywuzzy: equal strings score 100 before the empty check


def test_longbench_code_sim_rounds_exact_halves_as_fuzzywuzzy():
    # lensum 80, indel distance 46: python-Levenshtein's ratio 34/80 -> 100 * 0.425 = 42.5 -> round() 42;
    # rapidfuzz's fuzz.ratio gives 42.50000000000001 for the same pair, which rounds to 43
    a, b = "(d(d)c,b ed(acdad)d) ,(a) cbcbdb  e (=()", "(cbeabcad,=d=c,b,()abe)db,d)ae,cbaa)a,ce"
    assert m("code_sim", a, [b]) == 0.42


def test_longbench_classification_retrieval_count():
    classes = ["Abbreviation", "Entity", "Human being", "Human", "Location"]
    assert m("classification", "Location", ["Location"], all_classes=classes) == 1.0
    assert m("classification", "Location or Entity", ["Location"], all_classes=classes) == 0.5
    # "Human" is inside the answer "Human being" and is dropped; LongBench's loop then skips the next match
    assert m("classification", "Human being", ["Human being"], all_classes=classes) == 1.0
    assert m("classification", "Entity", ["Location"], all_classes=classes) == 0.0
    assert m("retrieval", "Paragraph 7", ["Paragraph 7"]) == 1.0
    assert m("retrieval", "Paragraph 7 or Paragraph 12", ["Paragraph 7"]) == 0.5
    assert m("retrieval", "none", ["Paragraph 7"]) == 0.0
    assert m("count", "There are 12 unique paragraphs", ["12"]) == 1.0
    assert m("count", "12 or 13", ["12"]) == 0.5
    with pytest.raises(ValueError, match="all_classes"):
        m("classification", "x", ["y"])


def reference_mrcr(response, answer, prefix):  # openai/mrcr's grade(), verbatim in substance
    if not response.startswith(prefix):
        return 0
    response = response.removeprefix(prefix)
    answer = answer.removeprefix(prefix)
    return float(difflib.SequenceMatcher(None, response, answer).ratio())


def test_mrcr_sequence_ratio_with_prefix_rule():
    assert mrcr_one("abc123Hello world", "abc123Hello world", "abc123") == 1.0
    assert mrcr_one("Hello world", "abc123Hello world", "abc123") == 0.0  # no prefix: 0
    assert mrcr_one("abc123Hello", "abc123Hello world", "abc123") == pytest.approx(2 * 5 / 16)
    assert m("mrcr", "xyHi", ["xyHi there"], random_string_to_prepend="xy") == pytest.approx(2 * 2 / 10)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30), st.text(max_size=30), st.text(max_size=4))
def test_mrcr_equals_reference(resp, ans, prefix):
    assert mrcr_one(resp, ans, prefix) == reference_mrcr(resp, ans, prefix)


def reference_levenshtein(s1, s2):  # MMLongBench-Doc's levenshtein_distance
    if len(s1) > len(s2):
        s1, s2 = s2, s1
    distances = range(len(s1) + 1)
    for i2, c2 in enumerate(s2):
        d = [i2 + 1]
        for i1, c1 in enumerate(s1):
            d.append(distances[i1] if c1 == c2 else 1 + min((distances[i1], distances[i1 + 1], d[-1])))
        distances = d
    return distances[-1]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=20), st.text(max_size=20))
@example("ßßßß", "ßßßx")  # the reference's lengths are of the upper-cased strings: SSSSSSSS, 8
def test_anls_equals_reference(a, b):
    length = max(len(a.upper()), len(b.upper()))
    ref = 1.0 - (0.0 if length == 0 else reference_levenshtein(a, b) / length)
    ref = 0.0 if ref <= 0.5 else ref
    assert anls(a, b) == pytest.approx(ref)


def test_mmlongbench_rules():
    assert mmlongbench_one("12", "12.0", "Int") == 1.0
    assert mmlongbench_one("12", "twelve", "Int") == 0.0
    assert mmlongbench_one("0.25", "25%", "Float") == 1.0  # percent forms are equal
    assert mmlongbench_one("3.14", "3.1416", "Float") == 1.0  # within 1%
    assert mmlongbench_one("3.14", "3.5", "Float") == 0.0
    assert mmlongbench_one("Not answerable", "not answerable", "None") == 1.0
    assert mmlongbench_one("2019-05", "2019-06", "Str") == 0.0  # exact-match kinds
    assert mmlongbench_one("Apple Inc.", "apple inc", "Str") == pytest.approx(1 - 1 / 10)
    assert mmlongbench_one("['a', 'b']", "['b', 'a']", "List") == 1.0
    assert mmlongbench_one("['1', '2']", "['2']", "List") == 0.0
    assert mmlongbench_one("['10', '20']", "['20', '10']", "List") == 1.0


@pytest.mark.parametrize("pred", ["inf", "1e400", "-Infinity", "nan"])
def test_mmlongbench_int_of_infinity_scores_0(pred):
    assert mmlongbench_one("12", pred, "Int") == 0.0  # the reference's bare except


@pytest.mark.parametrize("pred", ["[{['a']}]", "[{'a': 1}, {{}}]", "[" * 200 + "]" * 200])
def test_mmlongbench_list_that_does_not_evaluate_is_one_answer(pred):
    assert mmlongbench_one("['a', 'b']", pred, "List") == 0.0


def test_score_uses_the_item_metric():
    it = Item(id="a", context="c", question="q", answers=["Paragraph 2"], metric="retrieval")
    assert score(it, "Paragraph 2") == 1.0


def test_longbench_chinese_metrics_on_known_strings():
    """LongBench's qa_f1_zh and rouge_zh segment with jieba (the eval-zh extra), worked by hand:
    北京是中国的首都 -> 北京 / 是 / 中国 / 的 / 首都."""
    pytest.importorskip("jieba")
    from glyph_rt.eval.metrics import qa_f1_zh_one, retrieval_zh_one, rouge_zh_one

    assert qa_f1_zh_one("北京是中国的首都", "北京") == pytest.approx(2 * 0.2 / 1.2)  # P 1/5, R 1
    assert qa_f1_zh_one("答案：北京。", "北京") == pytest.approx(2 / 3)  # punctuation tokens drop out
    assert rouge_zh_one("北京是中国的首都", "北京是首都") == pytest.approx(0.75, abs=1e-6)  # LCS 3: P 3/5, R 1
    assert retrieval_zh_one("段落3", "段落3") == 1.0
    it = Item(id="z", context="文", question="问", answers=["北京", "首都北京"], metric="qa_f1_zh")
    assert score(it, "北京") == 1.0
