"""Loaders of the published formats, from local files: LongBench JSONL, OpenAI MRCR parquet / JSONL,
MMLongBench-Doc (PDF -> pages with poppler), Glyph's own evaluation layout."""
import json
import shutil
from pathlib import Path

import pytest

from glyph_rt.eval import score
from glyph_rt.eval.benchmarks import glyph_data, longbench, mmlongbench_doc, mrcr


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def lb_row(i, dataset="hotpotqa", **kw):
    return {"input": f"Who founded company {i}?", "context": f"Passage 1:\nCompany {i} was founded by Ann {i}.",
            "answers": [f"Ann {i}"], "length": 9, "dataset": dataset, "language": "en", "all_classes": None,
            "_id": f"id{i}", **kw}


def test_longbench(tmp_path):
    write_jsonl(tmp_path / "hotpotqa.jsonl", [lb_row(i) for i in range(3)])
    write_jsonl(tmp_path / "trec.jsonl", [lb_row(9, "trec", input="What is a cat?", answers=["Entity"],
                                                 all_classes=["Entity", "Human", "Location"])])
    (tmp_path / "notes.jsonl").write_text("{}\n")  # not a dataset: ignored
    items = longbench.load(tmp_path)
    assert [it.id for it in items] == ["hotpotqa-id0", "hotpotqa-id1", "hotpotqa-id2", "trec-id9"]
    hq = items[0]
    assert hq.metric == "qa_f1" and hq.max_new_tokens == 32 and hq.metadata["category"] == "Multi-Doc QA"
    assert hq.context == lb_row(0)["context"] and "Question: Who founded company 0?" in hq.question
    assert hq.context not in hq.question  # the pages carry the context
    assert hq.text_prompt.startswith("Answer the question based on the given passages.") and hq.context in hq.text_prompt
    assert score(hq, "Ann 0") == 1.0
    trec = items[-1]
    assert trec.metadata["first_line"] and score(trec, "Entity\nHuman") == 1.0
    assert len(longbench.load(tmp_path, datasets=["hotpotqa"], limit=2)) == 2
    write_jsonl(tmp_path / "hotpotqa_e.jsonl", [lb_row(i) for i in range(5)])  # LongBench-E beside LongBench
    assert len(longbench.load(tmp_path)) == 4 and len(longbench.load(tmp_path, e=True)) == 5
    assert all(it.metadata["longbench_e"] for it in longbench.load(tmp_path, e=True))  # the report's buckets
    assert not any("longbench_e" in it.metadata for it in longbench.load(tmp_path))
    long_ctx = "alpha " * 300 + "omega " * 300
    cut = longbench.truncate_middle(long_ctx, 100)
    assert cut.startswith("alpha alpha") and cut.rstrip().endswith("omega") and 95 <= len(cut.split()) <= 100
    assert longbench.truncate_middle("short text", 100) == "short text"
    with pytest.raises(ValueError, match="unknown"):
        longbench.load(tmp_path, datasets=["nope"])
    (tmp_path / "qasper.jsonl").write_text('{"input": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"qasper.jsonl:1: not a LongBench line \(missing context, answers\)"):
        longbench.load(tmp_path)


def test_longbench_truncate_keeps_the_whole_prompts_halves_as_pred_py(tmp_path):
    """--truncate N: the text baseline's whole prompt (instructions, context, question) keeps its first and last
    N / 2 tokens, as LongBench's pred.py; the pages' context keeps the halves of N less the image prompt's tokens;
    a budget the image prompt fills alone is an error naming the row."""
    from glyph_rt.render.tokens import get_tokenizer

    tok = get_tokenizer(None)
    ctx = " ".join(f"Passage {k}: company {k} was founded by someone." for k in range(400))
    write_jsonl(tmp_path / "hotpotqa.jsonl", [lb_row(0, context=ctx, input="Who founded company 7? " * 30)])
    full = longbench.load(tmp_path)[0]
    it = longbench.load(tmp_path, truncate=1000)[0]
    assert it.text_prompt == longbench.truncate_middle(full.text_prompt, 1000)
    assert tok.count(it.text_prompt) <= 1000 < tok.count(full.text_prompt)
    assert it.text_prompt.startswith("Answer the question based") and it.text_prompt.endswith("Answer:")
    assert it.question == full.question and it.context == longbench.truncate_middle(ctx, 1000 - tok.count(it.question))
    assert 990 <= tok.count(it.context) + tok.count(it.question) <= 1000
    assert it.context.startswith("Passage 0:") and it.context.endswith("company 399 was founded by someone.")
    with pytest.raises(ValueError, match=r"hotpotqa.jsonl:1: --truncate 100 leaves no tokens for the context after "
                                         r"the image prompt's \d+ \(instructions and input\)"):
        longbench.load(tmp_path, truncate=100)


def mrcr_row(i, n=2):
    msgs = [{"role": "user", "content": "write a poem about tapirs"},
            {"role": "assistant", "content": f"Tapirs roam {i}"},
            {"role": "user", "content": "write a poem about rivers"},
            {"role": "assistant", "content": "Rivers run"},
            {"role": "user", "content": "Prepend AbC1 to the 1st (1 indexed) poem about tapirs. Do not include any "
                                        "other text in your response."}]
    return {"prompt": json.dumps(msgs), "answer": f"AbC1Tapirs roam {i}", "random_string_to_prepend": "AbC1",
            "n_needles": n, "desired_msg_index": 1, "total_messages": 5, "n_chars": 60, "date_added": "04-12-2025"}


def test_mrcr_parquet_and_jsonl(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([mrcr_row(i) for i in range(3)]), tmp_path / "2needle.parquet")
    write_jsonl(tmp_path / "4needle.jsonl", [mrcr_row(7, 4)])
    items = mrcr.load(tmp_path)
    assert len(items) == 4 and {it.metadata["task"] for it in items} == {"mrcr_2needle", "mrcr_4needle"}
    it = items[0]
    assert it.context.startswith("User: write a poem about tapirs\nAssistant: Tapirs roam 0\nUser:")
    assert it.question.startswith("Prepend AbC1") and "Prepend" not in it.context
    assert it.text_prompt.endswith("User: " + it.question)
    sent = json.loads(mrcr_row(0)["prompt"]) if isinstance(mrcr_row(0)["prompt"], str) else mrcr_row(0)["prompt"]
    assert it.messages == sent and it.messages[-1]["content"] == it.question  # the text baseline's chat, turn by turn
    assert mrcr.load(tmp_path, chat=False)[0].messages == []
    assert score(it, "AbC1Tapirs roam 0") == 1.0 and score(it, "Tapirs roam 0") == 0.0
    assert len(mrcr.load(tmp_path, needles=[2], limit=2)) == 2
    assert mrcr.bin_label(5000) == "0k-8k" and mrcr.bin_label(100000) == "64k-128k"


@pytest.mark.skipif(shutil.which("pdftoppm") is None, reason="needs poppler's pdftoppm")
def test_mmlongbench_doc_pdf_to_pages(tmp_path):
    from PIL import Image, ImageDraw

    docs = tmp_path / "documents"
    docs.mkdir()
    pages = []
    for k in range(3):
        im = Image.new("RGB", (200, 280), "white")
        ImageDraw.Draw(im).text((20, 20), f"Page {k + 1}", fill="black")
        pages.append(im)
    pages[0].save(docs / "report.pdf", save_all=True, append_images=pages[1:])
    samples = [{"doc_id": "report.pdf", "doc_type": "Research report", "question": "How many pages?", "answer": "3",
                "evidence_pages": "[1]", "evidence_sources": "['Pure-text (Plain-text)']", "answer_format": "Int"},
               {"doc_id": "report.pdf", "doc_type": "Research report", "question": "Who?", "answer": "Not answerable",
                "evidence_pages": "[]", "evidence_sources": "[]", "answer_format": "None"}]
    (tmp_path / "samples.json").write_text(json.dumps(samples))
    items = mmlongbench_doc.load(tmp_path / "samples.json", docs, tmp_path / "pages", dpi=36)
    assert [len(it.images) for it in items] == [3, 3] and items[0].images[0].endswith("page-1.png")
    assert [it.metadata["kind"] for it in items] == ["SP", "UA"]
    assert score(items[0], "3") == 1.0 and score(items[1], "Not answerable") == 1.0
    mtime = Path(items[0].images[0]).stat().st_mtime
    again = mmlongbench_doc.load(tmp_path / "samples.json", docs, tmp_path / "pages", dpi=36)  # cached
    assert again[0].images == items[0].images and Path(items[0].images[0]).stat().st_mtime == mtime
    # other settings are another cache: never the first run's pages
    few = mmlongbench_doc.load(tmp_path / "samples.json", docs, tmp_path / "pages", dpi=36, max_pages=1)
    sharp = mmlongbench_doc.load(tmp_path / "samples.json", docs, tmp_path / "pages", dpi=72)
    assert len(few[0].images) == 1 and len(sharp[0].images) == 3
    assert Image.open(sharp[0].images[0]).size == tuple(2 * x for x in Image.open(items[0].images[0]).size)
    (docs / "broken.pdf").write_bytes(b"not a pdf")
    with pytest.raises(ValueError, match="pdftoppm failed"):
        mmlongbench_doc.pdf_pages(docs / "broken.pdf", tmp_path / "pages")


def test_glyph_evaluation_layout(tmp_path):
    ruler_dir = tmp_path / "ruler" / "data"
    ruler_dir.mkdir(parents=True)
    write_jsonl(ruler_dir / "final_dpi96_processed_ruler_all_tasks_4096.jsonl", [
        {"unique_id": "r1", "task_name": "niah_single_1", "context": "The grass is green. One of the special magic "
         "numbers for x-y is: 123.", "question": "What is the special magic number for x-y?", "outputs": ["123"]},
        {"unique_id": "r2", "task_name": "niah_single_3", "context": "c", "question": "q", "outputs": ["u"]},
        {"unique_id": "r3", "task_name": "qa_1", "context": "Document 1: Paris.", "question": "Capital?",
         "outputs": ["Paris", "paris city"]}])
    mrcr_dir = tmp_path / "mrcr" / "data"
    mrcr_dir.mkdir(parents=True)
    (mrcr_dir / "processed_2needle_0-128k.json").write_text(json.dumps([
        {"unique_id": "m1", "context": "User: hi\nAssistant: ho", "question": "Prepend zz to ...", "answer": "zzho",
         "random_string_to_prepend": "zz", "n_needles": 2}]))
    write_jsonl(tmp_path / "longbench" / "hotpotqa.jsonl" if (tmp_path / "longbench").mkdir() is None else None,
                [lb_row(1, unique_id="hotpotqa_1")])
    items = glyph_data.load(tmp_path)
    by = {it.id: it for it in items}
    assert set(by) == {"r1", "r3", "m1", "hotpotqa_1"}  # UUID task left out
    assert by["r1"].metadata == {"task": "niah_single_1", "length": 4096} and by["r1"].max_new_tokens == 128
    assert by["r3"].metric == "string_match_part" and by["m1"].metric == "mrcr"
    assert score(by["m1"], "zzho") == 1.0
    assert "r2" in {it.id for it in glyph_data.load(tmp_path, uuid=True)}
    from PIL import Image

    Image.new("RGB", (56, 56), "white").save(tmp_path / "p1.png")
    write_jsonl(tmp_path / "pre.jsonl", [{"unique_id": "p", "task_name": "vt", "context": "VAR A = 1",
                                          "question": "q", "outputs": ["A"], "image_paths": [str(tmp_path / "p1.png")]}])
    pre, = glyph_data.load(tmp_path / "pre.jsonl", rendered=True)
    assert pre.images == [str(tmp_path / "p1.png")] and pre.context == "VAR A = 1"
    with pytest.raises(ValueError, match="image_paths are missing"):
        glyph_data.load(ruler_dir, rendered=True)
    (tmp_path / "bad.json").write_text(json.dumps([{"foo": 1}]))
    with pytest.raises(ValueError, match="not a RULER, LongBench or MRCR row"):
        glyph_data.load(tmp_path / "bad.json")


def test_glyph_chinese_longbench_rows_need_jieba_up_front(tmp_path, monkeypatch):
    import sys

    write_jsonl(tmp_path / "multifieldqa_zh.jsonl", [lb_row(1, "multifieldqa_zh", answers=["北京"])])
    monkeypatch.setitem(sys.modules, "jieba", None)  # glyph_rt[eval] without [eval-zh]
    with pytest.raises(RuntimeError, match=r"jieba: pip install 'glyph_rt\[eval-zh\]'"):
        glyph_data.load(tmp_path)


def test_glyph_rows_keep_their_own_render_configs(tmp_path):
    """row_configs: each row's `config` (Glyph's dashed keys) becomes the item's render_config; a font-path that
    is not a file here is dropped and named in the metadata; without row_configs the rows' configs are ignored."""
    font = tmp_path / "fonts" / "Mine.ttf"
    font.parent.mkdir()
    font.write_bytes((Path(__file__).resolve().parent.parent / "glyph_rt" / "fonts" / "DejaVuSans.ttf").read_bytes())
    write_jsonl(tmp_path / "final_ruler_all_tasks_4096.jsonl", [
        {"unique_id": "a", "task_name": "niah_single_1", "context": "c", "question": "q", "outputs": ["1"],
         "config": {"font-size": 12, "dpi": 96, "font-path": "/nowhere/Verdana.ttf"}},
        {"unique_id": "b", "task_name": "niah_single_1", "context": "c", "question": "q", "outputs": ["1"],
         "config": {"font-path": "fonts/Mine.ttf", "alignment": "LEFT"}},
        {"unique_id": "c", "task_name": "niah_single_1", "context": "c", "question": "q", "outputs": ["1"]}])
    a, b, c = glyph_data.load(tmp_path, row_configs=True)
    assert a.render_config == {"font-size": 12, "dpi": 96} and a.metadata["font_missing"] == "Verdana.ttf"
    assert b.render_config == {"font-path": str(font), "alignment": "LEFT"} and "font_missing" not in b.metadata
    assert c.render_config == {}
    assert all(not it.render_config for it in glyph_data.load(tmp_path))
    write_jsonl(tmp_path / "bad" / "x.jsonl" if (tmp_path / "bad").mkdir() is None else None, [
        {"unique_id": "d", "task_name": "niah_single_1", "context": "c", "question": "q", "outputs": ["1"],
         "config": {"font-size": 12, "colour": "red"}}])
    with pytest.raises(ValueError, match="item d: render_config: .*'colour'"):
        glyph_data.load(tmp_path / "bad", row_configs=True)


def test_longbench_e_rows_say_their_dataset_with_e(tmp_path):
    """LongBench-E's rows hold "dataset": "hotpotqa_e", as its file name does: the same rule reads both."""
    write_jsonl(tmp_path / "hotpotqa_e.jsonl", [lb_row(i, "hotpotqa_e") for i in range(3)])
    for items in (longbench.load(tmp_path, e=True), longbench.load(tmp_path, e=True, datasets=["hotpotqa"]),
                  glyph_data.load(tmp_path)):
        assert len(items) == 3 and {it.task for it in items} == {"hotpotqa"}
        assert items[0].metric == "qa_f1" and items[0].metadata["category"] == "Multi-Doc QA"
    assert longbench.load(tmp_path, e=True)[0].metadata["longbench_e"]
    assert longbench.load(tmp_path, e=True, datasets=["qasper"]) == []


def write_samples(path, samples):
    path.write_text(json.dumps(samples))
    return path


@pytest.mark.parametrize("name, content, message", [
    ("hotpotqa.jsonl", b'{"input": "q", "context": "caf\xe9", "answers": ["a"]}\n',
     r"hotpotqa.jsonl:1: not UTF-8 text \(byte 0xe9"),
    ("hotpotqa.jsonl", b'{"input": "q", "context": "ok", "answers": ["a"]}\n[1, 2]\n',
     r"hotpotqa.jsonl:2: not a LongBench line \(a JSON object\), got list"),
    ("hotpotqa.jsonl", b'\n{"input": "q", "context": ["a", "b"], "answers": ["a"]}\n',
     r"hotpotqa.jsonl:2: context must be a string, got list"),
    ("hotpotqa.jsonl", b'{"input": "q", "context": "c", "answers": ["a"], "length": "long"}\n',
     r"hotpotqa.jsonl:1: length must be a number"),
    ("hotpotqa.jsonl", b'{"input": "q", "context": "c", "answers": ["a"]}\n{"input": "q", "context": "c", '
     b'"answers": []}\n', r"hotpotqa.jsonl:2: item hotpotqa-1: answers must be a non-empty list"),
    ("2wikimqa.jsonl", b'{"input": "q", "context": "", "answers": ["a"], "_id": "x3"}\n',
     r"2wikimqa.jsonl:1: item 2wikimqa-x3: empty context"),
    ("trec.jsonl", b'{"input": "q", "context": "c", "answers": ["a"], "all_classes": null}\n',
     r"trec.jsonl:1: all_classes must be a non-empty list of the class names \(trec is scored"),
    ("lsht.jsonl", b'{"input": "q", "context": "c", "answers": ["a"], "all_classes": "Sports"}\n',
     r"lsht.jsonl:1: all_classes must be a non-empty list"),
])
def test_longbench_bad_files_name_the_line_and_field(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=message):
        longbench.load(tmp_path)


@pytest.mark.parametrize("row, message", [
    ({"prompt": '["hello"]', "answer": "a", "random_string_to_prepend": "a", "n_needles": 2},
     r"x.jsonl:2: prompt must be a list of chat messages \{role: user\|assistant\|system, content: string\}"),
    ({"prompt": "[{", "answer": "a", "random_string_to_prepend": "a"}, r"x.jsonl:2: prompt is not JSON"),
    ({**mrcr_row(0), "n_needles": "two"}, r"x.jsonl:2: n_needles must be an integer, got 'two'"),
    ({**mrcr_row(0), "answer": None}, r"x.jsonl:2: answer must be a string, got NoneType"),
    ("just text", r"x.jsonl:2: not an MRCR row \(a JSON object\), got str"),
    ({**mrcr_row(0), "prompt": json.dumps([{"role": "user", "content": "hi"}])},
     r"x.jsonl:2: item .*: empty context"),  # the request alone: no conversation to recall from
])
def test_mrcr_bad_rows_name_the_line_and_field(tmp_path, row, message):
    (tmp_path / "x.jsonl").write_text("\n" + json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=message):
        mrcr.load(tmp_path / "x.jsonl")


@pytest.mark.parametrize("row, message", [
    ({"random_string_to_prepend": "ab", "context": "User: hi", "answer": "abx"},
     r"x.jsonl:1: an MRCR row of Glyph's evaluation data needs question \(fields: answer, context, random"),
    ({"task_name": "vt", "outputs": ["A"], "question": "q"}, r"x.jsonl:1: a RULER row .* needs context"),
    ({"task_name": "vt", "outputs": {"a": 1}, "context": "c"}, r"x.jsonl:1: outputs must be a list or a string"),
    ({"task_name": "vt", "outputs": ["A"], "context": "c", "question": None}, r"x.jsonl:1: question must be a string"),
    ({"input": "q", "context": 3, "answers": ["a"], "dataset": "hotpotqa"}, r"x.jsonl:1: context must be a string"),
    ({"task_name": "niah_single_1", "outputs": [], "context": "c", "question": "q"},
     r"x.jsonl:1: item x-0: answers must be a non-empty list"),
    ({"random_string_to_prepend": "ab", "context": "", "question": "q", "answer": "abx"},
     r"x.jsonl:1: item x-0: empty context"),
])
def test_glyph_bad_rows_name_the_line_and_field(tmp_path, row, message):
    write_jsonl(tmp_path / "x.jsonl", [row])
    with pytest.raises(ValueError, match=message):
        glyph_data.load(tmp_path / "x.jsonl")


@pytest.mark.parametrize("sample, message", [
    ({"doc_id": "a.pdf", "answer": "x", "evidence_pages": "[1]"}, r"samples.json: sample 1: missing question"),
    ({"doc_id": 7, "question": "q", "answer": "x"}, r"samples.json: sample 1: doc_id must be a string"),
    ({"doc_id": "a.pdf", "question": "q", "answer": None}, r"samples.json: sample 1: answer must be a string or a "),
    (["a.pdf"], r"samples.json: sample 1: not an object, got list"),
])
def test_mmlongbench_bad_samples_name_the_sample_and_field_before_any_pdf(tmp_path, sample, message):
    good = {"doc_id": "missing.pdf", "question": "q", "answer": "x"}  # checked before its PDF would be converted
    samples = write_samples(tmp_path / "samples.json", [good, sample])
    with pytest.raises(ValueError, match=message):
        mmlongbench_doc.load(samples, tmp_path / "docs", tmp_path / "pages")


def test_mrcr_rows_over_max_tokens_are_left_out(tmp_path):
    """The published files go to 1M tokens, the paper's Table 2 to 128k: max_tokens keeps the rows whose context
    has at most that many text tokens, counted as the report's bins count them; limit counts the rows kept."""
    from glyph_rt.render.tokens import get_tokenizer

    long_row = mrcr_row(1)
    msgs = json.loads(long_row["prompt"])
    msgs[1]["content"] = "Tapirs roam the misty forest floor. " * 400
    write_jsonl(tmp_path / "2needle.jsonl", [dict(long_row, prompt=json.dumps(msgs)), mrcr_row(0), mrcr_row(2)])
    every = mrcr.load(tmp_path)
    tokens = [get_tokenizer(None).count(it.context) for it in every]
    assert tokens[0] > 2000 > max(tokens[1:])
    kept = mrcr.load(tmp_path, max_tokens=2000)
    assert [it.id for it in kept] == [it.id for it in every[1:]]
    assert [it.id for it in mrcr.load(tmp_path, max_tokens=2000, limit=1)] == [every[1].id]
    assert len(mrcr.load(tmp_path, max_tokens=tokens[0])) == 3  # at most: a row of exactly that many is kept
    with pytest.raises(ValueError, match="needs a tokenizer"):
        mrcr.load(tmp_path, max_tokens=2000, tokenizer=None)
