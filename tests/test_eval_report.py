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


def test_longbench_avg_is_the_mean_of_the_category_means():
    """The paper's Table 1 Avg (Glyph's eval_longbench.py category_scores, averaged): Glyph's own scores give its
    50.56 (the mean over the 21 datasets is 49.08); a column per category, each the mean of its datasets."""
    from glyph_rt.eval.benchmarks.longbench import CATEGORIES

    paper = {"qasper": 40.64, "narrativeqa": 28.45, "hotpotqa": 66.42, "2wikimqa": 72.98, "qmsum": 19.78,
             "gov_report": 25.53, "trec": 82.62, "triviaqa": 88.54, "passage_retrieval_zh": 89.03,
             "passage_retrieval_en": 99.50, "repobench-p": 60.80, "lcc": 48.85, "multifieldqa_zh": 37.23,
             "multifieldqa_en": 45.89, "musique": 56.18, "dureader": 26.87, "multi_news": 21.52, "vcsum": 12.43,
             "samsum": 32.49, "lsht": 44.43, "passage_count": 30.50}
    rows = [row(f"{d}{k}", paper[d] / 100, task=d) for d in paper for k in range(2)]
    md = report.markdown(rows, "longbench")
    header = next(x for x in md.splitlines() if x.startswith("| Model | NQA"))
    assert header.endswith(" | " + " | ".join(CATEGORIES) + " | Avg |")
    line = next(x for x in md.splitlines() if x.startswith("| glyph @ 72 dpi | 28.45"))
    assert line.endswith("| 54.83 | 50.56 |")  # Code: mean(60.80, 48.85); Avg: the paper's
    assert report.longbench_scores(rows)["avg"] == pytest.approx(0.50559, abs=1e-4)
    assert "Avg is the mean of the category columns" in md


def test_longbench_summary_json_has_the_papers_avg_beside_the_item_accuracy(tmp_path):
    import json

    from glyph_rt import RenderConfig
    from glyph_rt.eval import Item, Reply, Target
    from glyph_rt.eval.suite import run_suite

    class Right(Target):
        name = "right"

        def answer(self, item, config, *, as_text=False):
            return Reply(item.answers[0] if item.metadata["task"] == "trec" else "no", 1, 10, 0.0)

    # three trec items (Few-shot, all right) and one hotpotqa item (Multi-Doc QA, wrong): 75% of the items, Avg 50
    its = [Item(id=f"t{i}", context="ctx " * 20, question="Type?", answers=["DESC"], metric="classification",
                metadata={"task": "trec", "all_classes": ["DESC", "HUM"], "first_line": True}) for i in range(3)]
    its.append(Item(id="h", context="ctx " * 20, question="Who?", answers=["Marie Curie"], metric="qa_f1",
                    metadata={"task": "hotpotqa"}))
    s = run_suite("longbench", [Right()], out=tmp_path, items=its, config=RenderConfig(page_size=(200, 150)),
                  progress=False, tokenizer=None)
    [run] = s["runs"]
    assert run["accuracy"] == 75.0 and run["paper_avg"] == 50.0
    assert run["by_category"] == {"Multi-Doc QA": 0.0, "Few-shot": 100.0}
    assert json.loads((tmp_path / "summary.json").read_text())["runs"][0]["paper_avg"] == 50.0


def test_mrcr_avg_is_the_mean_of_the_bin_columns():
    """As the paper's rows (GPT-4.1 4-needle: mean(50, 38, 29, 42, 38) = 39.4), not the mean over items."""
    rows = [row(i, 1.0, needles=4, text_tokens=4000) for i in range(9)]  # 0k-8k: 9 items, all right
    rows.append(row(9, 0.0, needles=4, text_tokens=12000))  # 8k-16k: one item, wrong
    assert "| glyph @ 72 dpi | 100.00 | 0.00 | 50.00 |" in report.markdown(rows, "mrcr")


def test_summary_json_holds_every_run_in_the_out_dir_as_summary_md(tmp_path):
    """Two targets, two dpis and a text run, in three calls into one --out: summary.json's runs are all of them
    (it held only the last call's), each named as in summary.md's Runs table."""
    import json

    from glyph_rt import RenderConfig
    from glyph_rt.eval import Item, Reply, Target
    from glyph_rt.eval.suite import run_suite

    class Fixed(Target):
        def __init__(self, name, reply):
            self.name, self.reply = name, reply

        @property
        def key(self):
            return self.name

        def answer(self, item, config, *, as_text=False):
            return Reply(self.reply, 0 if as_text else 1, 0 if as_text else 10, 0.0)

    its = [Item(id=f"q{i}", context="ctx " * 20, question="Which?", answers=["42"], metadata={"task": "vt"})
           for i in range(2)]
    kw = dict(out=tmp_path, items=its, config=RenderConfig(page_size=(200, 150)), progress=False, tokenizer=None)
    run_suite("ruler", [Fixed("good", "42"), Fixed("bad", "no")], dpis=[72, 96], **kw)
    run_suite("ruler", [Fixed("good", "42")], as_text=True, **kw)
    s = run_suite("ruler", [Fixed("bad", "no")], dpis=[72], **kw)  # resumed: nothing asked again
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == s
    got = sorted((r["target"], r["mode"], r["dpi"], r["accuracy"], r["items"]) for r in s["runs"])
    assert got == [("bad", "image", 72.0, 0.0, 2), ("bad", "image", 96.0, 0.0, 2), ("good", "image", 72.0, 100.0, 2),
                   ("good", "image", 96.0, 100.0, 2), ("good", "text", None, 100.0, 2)]
    md = (tmp_path / "summary.md").read_text()
    runs_table = md.split("## Runs")[1]
    assert all(f"| {r['label']} | {r['items']} | {r['accuracy']:.2f} |" in runs_table for r in s["runs"])
    assert runs_table.count("\n| ") - 1 == len(s["runs"])  # the header, then a line per run


def test_glyph_suite_reports_each_benchmark_in_its_own_layout(tmp_path):
    """Glyph's evaluation data mixes benchmarks: LongBench's part has the paper's Avg (the mean of the category
    means: 50, where the mean over its datasets is 75) in summary.md and summary.json, MRCR's part its length bins,
    RULER's its task columns."""
    import json

    from glyph_rt.eval import Item, Reply, Target
    from glyph_rt.eval.suite import run_suite

    class Picky(Target):
        name, concurrent = "picky", True

        def answer(self, item, config, *, as_text=False):
            wrong = item.metadata["task"] == "qasper" or len(item.context) > 20000
            return Reply("no" if wrong else item.answers[0], 0, 0, 0.0)

    lb = [Item(id=d, context="Some passage. " * 10, question="Q?", answers=["paris"], metric="qa_f1",
               metadata={"task": d, "category": c})
          for d, c in (("qasper", "Single-Doc QA"), ("hotpotqa", "Multi-Doc QA"), ("2wikimqa", "Multi-Doc QA"),
                       ("musique", "Multi-Doc QA"))]
    mr = [Item(id=f"m{n}", context="User: hi\nAssistant: " + "ho " * n, question="Prepend zz", answers=["zzho"],
               metric="mrcr", metadata={"task": "mrcr_2needle", "needles": 2, "random_string_to_prepend": "zz"})
          for n in (10, 9000)]  # 0k-8k and 8k-16k text tokens
    ru = [Item(id="r", context="VAR A = 1", question="Which?", answers=["A"], metadata={"task": "vt", "length": 4096})]
    s = run_suite("glyph", [Picky()], out=tmp_path, items=lb + mr + ru, as_text=True, progress=False)
    [run] = s["runs"]
    assert run["paper_avg"] == 50.0 and run["by_category"] == {"Single-Doc QA": 0.0, "Multi-Doc QA": 100.0}
    assert json.loads((tmp_path / "summary.json").read_text())["runs"][0]["paper_avg"] == 50.0
    md = (tmp_path / "summary.md").read_text()
    lb_part = md.split("## LongBench\n")[1].split("## MRCR\n")[0]
    assert "| Model | QP | HQA | 2QA | MSQ | Single-Doc QA | Multi-Doc QA | Avg |" in lb_part
    assert "| picky (text) | 0.00 | 100.00 | 100.00 | 100.00 | 0.00 | 100.00 | 50.00 |" in lb_part
    mrcr_part = md.split("## MRCR\n")[1].split("## RULER\n")[0]
    assert "| Model | 2 Needle 0k-8k | 2 Needle 8k-16k | 2 Needle Avg |" in mrcr_part
    assert "| picky (text) | 100.00 | 0.00 | 50.00 |" in mrcr_part
    ruler_part = md.split("## RULER\n")[1].split("## Runs\n")[0]
    assert "| Model | VT | Avg |" in ruler_part and "### By context length" in ruler_part
    assert "Other tasks" not in md
