"""Summary tables in the paper's layouts and the plots, from synthetic result rows."""
import pytest

from glyph_rt.eval import report


def row(i, score, **kw):
    base = {"id": f"r{i}", "target": "glyph", "mode": "image", "dpi": 72.0, "score": score, "text_tokens": 5000,
            "visual_tokens": 2000, "compression": 2.5, "latency_s": 0.1, "prediction": "x"}
    return {**base, **kw}


def test_ruler_table_columns_separators_and_average():
    rows = [row(0, 1.0, task="niah_single_1", length=4096), row(1, 0.5, task="vt", length=4096),
            row(2, 0.0, task="vt", length=8192, compression=4.0),
            row(3, 1.0, task="vt", length=4096, mode="text", dpi=None, visual_tokens=0, compression=1.0)]
    md = report.markdown(rows, "ruler")
    assert "| Model | Niah-S1 | VT | Avg |" in md
    assert "| glyph (text) | - | 100.00 | 100.00 |" in md
    assert "| DPI: 72 / Compression rate: average 3.0, up to 4.0 |" in md
    assert "| glyph @ 72 dpi | 100.00 | 25.00 | 62.50 |" in md  # Avg: mean over tasks
    assert "| Model | 4K | 8K | All |" in md


def test_mrcr_table_bins_by_text_tokens():
    rows = [row(0, 0.8, needles=2, text_tokens=5000), row(1, 0.4, needles=2, text_tokens=100000),
            row(2, 0.2, needles=4, text_tokens=6000)]
    md = report.markdown(rows, "mrcr")
    assert "2 Needle 0k-8k | 2 Needle 64k-128k | 2 Needle Avg | 4 Needle 0k-8k" in md
    assert "| glyph @ 72 dpi | 80.00 | 40.00 | 60.00 | 20.00 | - | 20.00 |" in md


def test_mmlongbench_scores_as_its_reference():
    rows = [row(0, 1.0, kind="SP"), row(1, 0.0, kind="CP"), row(2, 1.0, kind="UA", prediction="Not answerable"),
            row(3, 0.5, kind="SP")]
    s = report.mmlongbench_scores(rows)
    assert s["SP"] == 0.75 and s["CP"] == 0.0 and s["UA"] == 1.0 and s["Acc"] == 0.625
    recall, precision = 1.5 / 3, 1.5 / 3  # answerable mean; answerable scores over predictions not "Not answerable"
    assert s["F1"] == pytest.approx(2 * recall * precision / (recall + precision))
    assert "| Model | SP | CP | UA | Acc | F1 |" in report.markdown(rows, "mmlongbench-doc")


def test_mmlongbench_f1_reads_the_extracted_answer():
    """With an extractor, 'Not answerable' is what it extracted, not the raw response (the reference's pred)."""
    rows = [row(0, 1.0, kind="SP", prediction="The answer is 42.", extracted="42"),
            row(1, 1.0, kind="UA", prediction="I cannot find this in the document.", extracted="Not answerable")]
    s = report.mmlongbench_scores(rows)
    assert s["F1"] == 1.0  # recall 1/1, precision 1/1: the UA row did not claim an answer


def test_length_headers_below_1k_and_off_1024_are_the_numbers():
    rows = [row(i, float(i % 2), task="vt", length=n) for i, n in enumerate([256, 512, 1500, 2000, 4096])]
    assert "| Model | 256 | 512 | 1500 | 2000 | 4K | All |" in report.length_table(rows)
    assert [report.length_label(n) for n in (1024, 131072, 1000)] == ["1K", "128K", "1000"]


def test_longbench_e_table_by_official_buckets():
    """LongBench-E's scorer_e buckets on LongBench's `length` (words): under 4000, under 8000, the rest."""
    e = dict(longbench_e=True, mode="text", dpi=None, visual_tokens=0, compression=1.0)
    rows = [row(0, 1.0, task="hotpotqa", words=3999, **e), row(1, 0.0, task="hotpotqa", words=4000, **e),
            row(2, 1.0, task="hotpotqa", words=7999, **e), row(3, 0.5, task="hotpotqa", words=8000, **e),
            row(4, 1.0, task="trec", words=100, **e)]
    md = report.markdown(rows, "longbench")
    assert "## LongBench-E by length (words)\n\n| Model | Dataset | 0-4k | 4-8k | 8k+ |" in md
    assert "| glyph (text) | HQA | 100.00 | 50.00 | 50.00 |" in md and "| glyph (text) | TREC | 100.00 | - | - |" in md
    plain = [{k: v for k, v in r.items() if k != "longbench_e"} for r in rows]
    assert "LongBench-E" not in report.markdown(plain, "longbench")  # LongBench's own rows: no buckets


def test_plots(tmp_path):
    rows = [row(i, i % 2, task="vt", length=1024 * 2 ** (i % 3), dpi=d, compression=72 / d * 3)
            for i in range(6) for d in (72.0, 96.0)]
    for p in report.plot(rows, tmp_path, "ruler"):
        assert p.read_bytes()[:4] == b"\x89PNG"
