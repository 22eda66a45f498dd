"""`glyph-rt make-data`: Parquet shards of PNG pages + messages, resumable, never half-written."""
import io
import json

import pytest

pq = pytest.importorskip("pyarrow.parquet")

from glyph_rt.cli import main  # noqa: E402
from glyph_rt.render.textio import sample_text  # noqa: E402
from glyph_rt.train import export  # noqa: E402


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("in")
    (d / "doc.txt").write_text(sample_text()[:6000])
    qa = [{"context": sample_text()[i:i + 800], "question": "Which license?", "answer": "GPL"} for i in (0, 900)]
    (d / "qa.jsonl").write_text("\n".join(json.dumps(r) for r in qa))
    return d


@pytest.mark.parametrize("task", ["ocr", "lm", "gen", "qa"])
def test_make_data_shards(tmp_path, corpus, task, capsys):
    from PIL import Image

    src = corpus / ("qa.jsonl" if task == "qa" else "doc.txt")
    out = tmp_path / task
    assert main(["make-data", "--task", task, "--input", str(src), "--out", str(out), "--n", "3", "--shard-size", "2",
                 "--max-pages", "2", "--quiet"]) == 0
    assert "2 shards written" in capsys.readouterr().out
    rows = [r for f in sorted(out.glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    # nothing but shards: LLaMA-Factory refuses a dataset directory holding files of another type
    assert {p.name for p in out.iterdir()} == {f"{task}-00000.parquet", f"{task}-00001.parquet"}
    assert export.shard_args(out / f"{task}-00001.parquet")["num_samples"] == 3
    assert [r["index"] for r in rows] == [0, 1, 2]
    for r in rows:
        roles = [m["role"] for m in r["messages"]]
        assert roles == ["user", "assistant"] and r["messages"][1]["content"].strip()
        assert r["messages"][0]["content"].count("<image>") == len(r["images"]) >= 1
        for im in r["images"]:
            page = Image.open(io.BytesIO(im["bytes"]))
            assert page.format == "PNG" and min(page.size) > 0


def test_resume_and_mismatch(tmp_path, corpus, monkeypatch, capsys):
    args = ["make-data", "--task", "ocr", "--input", str(corpus / "doc.txt"), "--out", str(tmp_path), "--n", "4",
            "--shard-size", "2", "--max-pages", "1", "--quiet"]
    calls = []
    real = export.sample_row

    def failing(sample):
        calls.append(sample.index)
        if sample.index == 3:
            raise KeyboardInterrupt
        return real(sample)

    monkeypatch.setattr(export, "sample_row", failing)
    assert main(args) == 130  # interrupted inside the second shard
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ocr-00000.parquet"]  # nothing partial
    first = (tmp_path / "ocr-00000.parquet").read_bytes()
    calls.clear()
    monkeypatch.setattr(export, "sample_row", real)
    assert main(args) == 0
    assert (tmp_path / "ocr-00000.parquet").read_bytes() == first and (tmp_path / "ocr-00001.parquet").exists()
    assert main([*args[:-3], "--max-pages", "2", "--quiet"]) == 2  # other arguments, same directory: an error
    assert "max_pages" in capsys.readouterr().err


def test_stale_temp_removed_and_foreign_parquet_refused(tmp_path, corpus, capsys):
    args = ["make-data", "--task", "ocr", "--input", str(corpus / "doc.txt"), "--out", str(tmp_path), "--n", "1",
            "--max-pages", "1", "--quiet"]
    (tmp_path / ".ocr-00000.parquet.tmp").write_bytes(b"PAR1 cut short")  # a killed run's half-written shard
    assert main(args) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["ocr-00000.parquet"]
    other = tmp_path / "other"
    other.mkdir()
    pq.write_table(pq.read_table(tmp_path / "ocr-00000.parquet").replace_schema_metadata(None), other / "x.parquet")
    assert main([*args[:5], "--out", str(other), *args[7:]]) == 2
    assert "x.parquet, which make-data did not write" in capsys.readouterr().err


def test_bundled_corpus_and_needle_qa(tmp_path):
    r = export.make_data("qa", tmp_path, num_samples=2, max_pages=1, progress=False)
    assert r["samples"] == 2
    rows = pq.read_table(tmp_path / "qa-00000.parquet").to_pylist()
    assert all(row["messages"][1]["content"].isdigit() for row in rows)


@pytest.mark.parametrize("framework,module", [("llamafactory", "llamafactory"), ("swift", "swift.dataset")])
def test_trainers_read_the_shards(tmp_path, corpus, framework, module):
    """LLaMA-Factory / ms-swift load the shards with their own pipeline (skipped where they are not installed)."""
    pytest.importorskip(module)
    from bench.check_export_frameworks import main as check
    from glyph_rt.models.tiny import make_tiny_checkpoint

    for task in ("ocr", "lm", "gen", "qa"):
        src = corpus / ("qa.jsonl" if task == "qa" else "doc.txt")
        export.make_data(task, tmp_path / task, [src], num_samples=2, max_pages=2, progress=False)
    model = make_tiny_checkpoint(tmp_path / "ckpt")
    dirs = [str(tmp_path / t) for t in ("ocr", "lm", "gen", "qa")]
    assert check(["--framework", framework, "--model", str(model), "--data", *dirs, "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / f"export-{framework}.json").read_text())
    assert [r["samples"] for r in result["rows"]] == [2, 2, 2, 2] and result["summary"]["ok"]


def test_rerun_with_other_styles_is_refused(tmp_path, corpus, capsys):
    """--styles is among the arguments kept in the shards (a hash of the styles' parameters): a rerun into the same
    directory with other styles is refused instead of mixing them; the same styles file resumes."""
    from glyph_rt.train.styles import StyleSampler

    sampler = StyleSampler(seed=0)
    sampler.params["dpi"] = {"normal": {"weight": 1.0, "values": [72]}}
    sampler.save(tmp_path / "styles72.yaml")
    def args(out, *styles):
        return ["make-data", "--task", "ocr", "--input", str(corpus / "doc.txt"), "--out", str(tmp_path / out),
                "--n", "2", "--shard-size", "1", "--max-pages", "1", "--quiet", *styles]

    dpi72 = ("--styles", str(tmp_path / "styles72.yaml"))
    assert main(args("out")) == 0
    assert export.shard_args(tmp_path / "out" / "ocr-00000.parquet")["styles"] == export.styles_key(StyleSampler())
    (tmp_path / "out" / "ocr-00001.parquet").unlink()
    assert main(args("out", *dpi72)) == 2
    assert "(styles: " in capsys.readouterr().err
    assert main(args("out")) == 0 and "1 kept" in capsys.readouterr().out  # the same (default) styles: resumed
    assert main(args("o72", *dpi72)) == 0
    (tmp_path / "o72" / "ocr-00001.parquet").unlink()
    assert main(args("o72", *dpi72)) == 0 and "1 kept" in capsys.readouterr().out
    assert main(args("o72")) == 2


def test_a_records_own_image_text_is_no_placeholder(tmp_path):
    """A record's text "<image>" would be one more page to LLaMA-Factory / ms-swift: it is written with a zero-width
    space inside, and counted (the sample's meta, the summary); the pages' placeholders stay one per page."""
    text = "A prompt template writes <image> where a picture goes, or <video>.\n" + sample_text()[:700]
    qa = [{"context": text, "question": "What does <image> mark?", "answer": "A picture: <image>."}]
    (tmp_path / "img.jsonl").write_text(json.dumps(qa[0]))
    (tmp_path / "img.txt").write_text(text)
    r = export.make_data("qa", tmp_path / "qa", [tmp_path / "img.jsonl"], num_samples=1, max_pages=2, progress=False)
    assert r["samples"] == 1 and r["placeholders_escaped"] == 2
    (row,) = pq.read_table(tmp_path / "qa" / "qa-00000.parquet").to_pylist()
    user, assistant = (m["content"] for m in row["messages"])
    assert user.count("<image>") == len(row["images"]) and assistant == "A picture: <\u200bimage>."
    assert user.endswith("What does <\u200bimage> mark?")
    for task in ("ocr", "lm"):
        r = export.make_data(task, tmp_path / task, [tmp_path / "img.txt"], num_samples=2, max_pages=2,
                             progress=False)
        rows = pq.read_table(tmp_path / task / f"{task}-00000.parquet").to_pylist()
        assert all(row["messages"][0]["content"].count("<image>") == len(row["images"]) for row in rows)
        assert r["placeholders_escaped"] == sum("".join(m["content"] for m in row["messages"]).count("<\u200b")
                                                for row in rows)
        assert task != "ocr" or r["placeholders_escaped"] == 4  # both samples' pages start at the first line
    assert export.escape_placeholders("<image><audio> <images>") == ("<\u200bimage><\u200baudio> <images>", 2)


def test_a_records_special_token_texts_stay_text_for_other_trainers(tmp_path):
    """glyph_rt's own pipeline tokenizes a record's "<|endoftext|>" as text; an exported one would be the end token
    (or a turn marker) to another trainer's tokenizer: it is written broken by a zero-width space, and counted."""
    from glyph_rt.models.tiny import tiny_tokenizer

    text = "A log: <|endoftext|><|user|>hi<|assistant|> [gMASK]<sop> ends here.\n" + sample_text()[:600]
    (tmp_path / "tok.txt").write_text(text)
    r = export.make_data("ocr", tmp_path / "ocr", [tmp_path / "tok.txt"], num_samples=1, max_pages=2, progress=False)
    (row,) = pq.read_table(tmp_path / "ocr" / "ocr-00000.parquet").to_pylist()
    answer = row["messages"][1]["content"]
    assert "<\u200b|endoftext|>" in answer and "[\u200bgMASK]<\u200bsop>" in answer and r["placeholders_escaped"] == 5
    tok = tiny_tokenizer()
    added = set(tok.get_added_vocab().values())
    assert added & set(tok(text, add_special_tokens=False)["input_ids"])  # as written: tokens
    assert not added & set(tok(answer, add_special_tokens=False)["input_ids"])
