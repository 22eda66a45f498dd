"""The loader: corpus formats, the same samples in the same batches whatever the worker count, ranks that
split the samples, exact resume from a state_dict."""
import json

import pytest
import torch

from glyph_rt.models.prompt import PromptBuilder
from glyph_rt.models.tiny import tiny_tokenizer
from glyph_rt.render.config import RenderConfig
from glyph_rt.render.textio import sample_text
from glyph_rt.train.collate import Collator
from glyph_rt.train.loader import SKIP_LIMIT, Corpus, CorpusError, GlyphLoader, TaskDataset, split_text
from glyph_rt.train.styles import StyleSampler
from glyph_rt.train.tasks import make_task

CFG = RenderConfig(dpi=30, page_size=(300, 200))


@pytest.fixture(scope="module")
def builder():
    tok = tiny_tokenizer()
    return PromptBuilder(tok, tok.convert_tokens_to_ids("<|image|>"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    text = sample_text()
    (d / "a.txt").write_text(text[:3000])
    (d / "b.md").write_text(text[3000:5000])
    return Corpus.open([d / "a.txt", d / "b.md"], max_chars=600)


def batches(builder, corpus, workers, n_batches=None, loader=None, render="worker", world=1, rank=0):
    task = make_task("gen", builder, config=CFG, max_pages=1, window_chars=500, answer_chars=100)
    if loader is None:
        data = TaskDataset(corpus, task, seed=5, epochs=2, render=render, rank=rank, world_size=world)
        loader = GlyphLoader(data, Collator(builder.image_token_id, 0), batch_size=3, num_workers=workers)
    out = []
    for b in loader:
        out.append((b["input_ids"], b["pixel_values"]))
        if n_batches is not None and len(out) == n_batches:
            break
    return out, loader


def same(a, b):
    assert len(a) == len(b)
    for (i1, p1), (i2, p2) in zip(a, b):
        assert torch.equal(i1, i2) and torch.equal(p1, p2)


def test_crlf_texts_are_cut_at_blank_lines_and_never_inside_a_crlf():
    crlf = "".join(f"line {i} of the text\r\n" + ("\r\n" if i % 7 == 6 else "") for i in range(400))
    parts = split_text(crlf, 500)
    assert "".join(parts) == crlf and all(len(p) <= 500 for p in parts)
    assert not any(p.endswith("\r") or p.startswith("\n") for p in parts)
    assert sum(p.startswith("\r\n\r\n") for p in parts) >= len(parts) // 2  # at blank lines
    long_line = "a" * 499 + "\r\n" + "b" * 600  # no line end to cut at: cut at the size, not inside the CRLF
    assert not any(p.endswith("\r") for p in split_text(long_line, 500))
    assert "".join(split_text(long_line, 500)) == long_line


def test_corpus_formats(tmp_path):
    text = sample_text()
    assert all(len(p) <= 1000 for p in split_text(text[:5000], 1000)) and "".join(split_text(text[:5000], 1000)) == \
        text[:5000]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps({"body": text[i:i + 200]}) for i in range(0, 1000, 200)))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": [text[:100], text[100:300]]}), tmp_path / "p.parquet")
    import datasets

    datasets.Dataset.from_dict({"text": ["one doc", "two docs", "three"]}).save_to_disk(str(tmp_path / "hf"))
    c = Corpus.open([tmp_path / "d.jsonl", tmp_path / "p.parquet", tmp_path / "hf"], text_field="body")
    assert len(c) == 5 + 2 + 3 and c[0]["text"] == text[:200] and c[6]["text"] == text[100:300]
    c = Corpus.open([tmp_path / "hf"])
    assert c[2] == {"text": "three"}
    bundled = Corpus.open()  # public-domain US presidential addresses
    assert len(bundled) == 124 and sum(len(bundled[i]["text"]) for i in range(len(bundled))) > 2_500_000
    assert bundled[0]["title"] == "Washington, Inaugural Address, 1789" and bundled[0]["text"].startswith("Fellow-Citizens")
    assert not any(ch in bundled[i]["text"] for i in range(len(bundled)) for ch in "\ufffd\u3000")  # no mojibake
    import gzip

    with gzip.open(tmp_path / "z.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps({"text": "zipped"}) + "\n")
    assert Corpus.open(tmp_path / "z.jsonl.gz")[0] == {"text": "zipped"}
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n{oops\n')
    with pytest.raises(CorpusError, match=r"bad.jsonl:2: not JSON \(Expecting property name .* column 2\)"):
        Corpus.open(tmp_path / "bad.jsonl")
    with pytest.raises(CorpusError, match="does not exist"):
        Corpus.open(tmp_path / "missing.txt")


def test_same_batches_whatever_the_workers(builder, corpus):
    ref, loader = batches(builder, corpus, 0)
    state = loader.state_dict()
    assert len(ref) >= 4 and 3 * len(ref) + state["skipped"] <= state["consumed"] <= 2 * len(corpus)
    same(batches(builder, corpus, 2)[0], ref)
    # pages drawn by the collator (render="batch", laid out again in the main process) equal the workers'
    same(batches(builder, corpus, 1, render="batch")[0], ref)


def test_ranks_split_the_samples(builder, corpus):
    task = make_task("ocr", builder, config=CFG, max_pages=1)
    whole = TaskDataset(corpus, task, seed=1, epochs=1, render="batch")
    ids = [s.input_ids for s in whole]
    parts = [[s.input_ids for s in TaskDataset(corpus, task, seed=1, epochs=1, render="batch", rank=r, world_size=3)]
             for r in range(3)]
    assert sum(map(len, parts)) == len(ids) // 3 * 3
    for r, part in enumerate(parts):
        assert part == ids[r::3][:len(part)]
    again = TaskDataset(corpus, make_task("ocr", builder, config=CFG, max_pages=1), seed=1, epochs=1, render="batch")
    assert [s.input_ids for s in again] == ids
    shuffled = TaskDataset(corpus, task, seed=2, epochs=1, render="batch")
    assert sorted(shuffled.record_index(g) for g in range(len(corpus))) == list(range(len(corpus)))


def test_resume_yields_the_next_samples(builder, corpus):
    ref, _ = batches(builder, corpus, 0)
    first, loader = batches(builder, corpus, 2, n_batches=2)
    state = loader.state_dict()
    same(first, ref[:2])
    task = make_task("gen", builder, config=CFG, max_pages=1, window_chars=500, answer_chars=100)
    fresh = GlyphLoader(TaskDataset(corpus, task, seed=5, epochs=2), Collator(builder.image_token_id, 0),
                        batch_size=3, num_workers=1)
    fresh.load_state_dict(state)
    rest, _ = batches(builder, corpus, 1, loader=fresh)
    same(rest, ref[2:])
    other = GlyphLoader(TaskDataset(corpus, task, seed=6, epochs=2), Collator(builder.image_token_id, 0), 3)
    with pytest.raises(ValueError, match="seed"):
        other.load_state_dict(state)


def test_unusable_records_are_skipped_and_counted(builder):
    corpus = Corpus([("mem", [{"text": "x" * 50}, {"text": sample_text()[:1500]}, {"text": "tiny"}])])
    task = make_task("gen", builder, config=CFG, max_pages=1, window_chars=1000)
    loader = GlyphLoader(TaskDataset(corpus, task, epochs=2, shuffle=False), Collator(builder.image_token_id, 0),
                         batch_size=1)
    assert len(list(loader)) == 2 and loader.state_dict()["skipped"] == 3


def test_samples_over_max_length_are_left_out_counted_and_their_batches_filled(builder, corpus):
    """data.max_tokens: a sample longer is left out of its batch (the next samples fill it) and counted, and a
    loader resumed from its state goes on with the same batches."""
    def loader(max_length=None, batch_size=1):
        task = make_task("ocr", builder, config=CFG, max_pages=3, window_chars=1500)
        return GlyphLoader(TaskDataset(corpus, task, seed=3, epochs=1),
                           Collator(builder.image_token_id, 0, max_length=max_length), batch_size=batch_size)

    lengths = [int(b["attention_mask"].sum()) for b in loader()]
    limit = sorted(lengths)[len(lengths) // 2]
    fits = [n for n in lengths if n <= limit]
    assert 0 < len(fits) < len(lengths)
    full = loader(limit, batch_size=2)
    got = [b["attention_mask"].sum(1).tolist() for b in full]
    assert got == [fits[i:i + 2] for i in range(0, len(fits) // 2 * 2, 2)]  # in order, every batch full
    last = [i for i, n in enumerate(lengths) if n <= limit][len(fits) // 2 * 2 - 1]  # the last sample batched
    assert full.state_dict()["too_long"] == sum(n > limit for n in lengths[:last + 1]) > 0
    first = loader(limit, batch_size=2)
    it = iter(first)
    next(it)
    resumed = loader(limit, batch_size=2)
    resumed.load_state_dict(first.state_dict())
    assert [b["attention_mask"].sum(1).tolist() for b in resumed] == got[1:]
    assert resumed.state_dict()["too_long"] == full.state_dict()["too_long"]


def test_a_sparse_corpus_fills_large_batches_and_an_all_too_long_one_stops(builder):
    """Misses in a row are counted per sample: 1 usable record in 100 fills batches of 16 (about 1,500 misses
    each, never 1,000 in a row), while samples every one of which is too long stop the loader with the reason."""
    task = make_task("ocr", builder, config=CFG, max_pages=1, window_chars=400)
    sparse = Corpus([("mem", [{"body": "x"}] * 99 + [{"text": sample_text()[:600]}])])
    loader = GlyphLoader(TaskDataset(sparse, task), Collator(builder.image_token_id, 0), batch_size=16)
    it = iter(loader)
    next(it), next(it)
    assert loader.skipped >= 16 * 99
    usable = Corpus([("mem", [{"text": sample_text()[:600]}])])
    loader = GlyphLoader(TaskDataset(usable, task), Collator(builder.image_token_id, 0, max_length=5), batch_size=4)
    with pytest.raises(ValueError, match=f"^{SKIP_LIMIT} samples in a row were longer .*max_length=5.*max_tokens"):
        next(iter(loader))


def test_a_corpus_no_record_of_which_makes_a_sample_stops_with_the_reason(builder):
    """JSONL records under another field than data.loader.text_field: the loader says so instead of looking for a
    usable record for ever."""
    corpus = Corpus([("mem", [{"content": sample_text()[:1500]}] * 3)])
    task = make_task("ocr", builder, config=CFG, max_pages=1, window_chars=400)
    loader = GlyphLoader(TaskDataset(corpus, task), Collator(builder.image_token_id, 0), batch_size=1)
    with pytest.raises(ValueError, match=f"^{SKIP_LIMIT} samples in a row made nothing .*'text'.*text_field"):
        next(iter(loader))


def test_styles_in_workers(builder, corpus):
    task = make_task("ocr", builder, styles=StyleSampler(seed=0), max_pages=1, window_chars=400)
    data = TaskDataset(corpus, task, seed=0, epochs=1)
    a = [s.pages[0].config for s in data][:4]
    assert a == [StyleSampler(seed=0).sample(g).config for g in range(4)]


def _rank_main(rank, world, init, out):
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        tok = tiny_tokenizer()
        builder = PromptBuilder(tok, tok.convert_tokens_to_ids("<|image|>"))
        corpus = Corpus([("mem", [{"text": sample_text()[i:i + 700]} for i in range(0, 7000, 700)])])
        data = TaskDataset(corpus, make_task("ocr", builder, config=CFG, max_pages=1), seed=4, epochs=1,
                           render="batch")  # rank and world size from torch.distributed
        (out / f"{rank}.json").write_text(json.dumps([data.rank, data.world_size, [s.index for s in data]]))
    finally:
        torch.distributed.destroy_process_group()


def test_ranks_from_torch_distributed(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_rank_main, args=(2, f"file://{tmp_path / 'rendezvous'}", tmp_path), nprocs=2)
    got = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2)]
    assert [g[:2] for g in got] == [[0, 2], [1, 2]]
    assert got[0][2] == [0, 2, 4, 6, 8] and got[1][2] == [1, 3, 5, 7, 9]


def test_null_fields_are_absent_so_mixed_files_route_each_row(builder, tmp_path):
    """Parquet and `datasets` fill a column a row lacks with None: those fields are dropped on reading, so a file
    of QA rows and text rows gives each task what it takes (OCR reads a QA row's context, QA makes a needle from a
    text row, RL counts no row as skipped) and a null "thinking" is no thinking."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    from glyph_rt.train.data import MixedTask, RecordStream

    text = sample_text()
    rows = [{"context": text[:1500], "question": "q", "answer": "a", "text": None, "thinking": None},
            {"text": text[:3000]}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "mixed.parquet")
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "hf"))
    (tmp_path / "nulls.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    for path in ("mixed.parquet", "hf", "nulls.jsonl"):
        c = Corpus.open(tmp_path / path)
        assert c[0] == {"context": text[:1500], "question": "q", "answer": "a"} and c[1] == {"text": text[:3000]}
    qa = make_task("qa", builder, config=CFG, think=True)
    ocr = make_task("ocr", builder, config=CFG, max_pages=1)
    assert MixedTask({"ocr": ocr}, {"ocr": 1.0})(c[0], 0).messages[-1]["content"] in text[:1500]
    assert "magic number" in MixedTask({"qa": qa}, {"qa": 1.0})(c[1], 0).messages[0]["content"][-1]["text"]
    assert qa(c[0], 0).messages[-1]["content"] == "<think></think>\na"
    stream = RecordStream(c)
    recs = [r for r, _ in zip(stream, range(4))]
    assert stream.skipped == 0 and all({"context", "question", "answer"} <= r.keys() for r in recs)


def test_unreadable_corpus_files_are_corpus_errors_naming_the_file(tmp_path):
    """Not UTF-8 (JSONL or text), a truncated or a non-gzip .gz, a lone surrogate (legal JSON, not text): a
    CorpusError naming the file (and line), advising nothing the corpus options lack."""
    import gzip

    (tmp_path / "latin1.jsonl").write_bytes('{"text": "ok"}\n{"text": "caf\u00e9"}\n'.encode("latin-1"))
    (tmp_path / "latin1.txt").write_bytes("line one\ncaf\u00e9 noir\n".encode("latin-1"))
    whole = gzip.compress(("\n".join(json.dumps({"text": f"record {i}"}) for i in range(200))).encode())
    (tmp_path / "cut.jsonl.gz").write_bytes(whole[:len(whole) // 2])
    (tmp_path / "plain.jsonl.gz").write_text('{"text": "not zipped"}\n')
    (tmp_path / "sur.jsonl").write_text('{"text": "fine \\ud83d\\ude00"}\n\n{"text": "Hello \\ud800 world"}\n')
    for name, match in (("latin1.jsonl", r"latin1.jsonl:2: invalid UTF-8 at byte 28 \(b'\\xe9"),
                        ("latin1.txt", r"latin1.txt:2: invalid UTF-8 at byte 12 \(b'\\xe9 no'\)"),
                        ("cut.jsonl.gz", r"cut.jsonl.gz: the gzip stream ends early"),
                        ("plain.jsonl.gz", r"plain.jsonl.gz: not a gzip file"),
                        ("sur.jsonl", r"sur.jsonl:3: a lone surrogate \(\\ud800\)")):
        with pytest.raises(CorpusError, match=f"^corpus: .*{match}") as e:
            Corpus.open(tmp_path / name)
        assert "--errors" not in str(e.value) and "errors=" not in str(e.value)
    import pyarrow as pa
    import pyarrow.parquet as pq

    raw = pa.array([b"fine text", b"bad \xff\xfe text"], pa.binary()).view(pa.string())  # Parquet keeps the bytes
    pq.write_table(pa.table({"text": raw}), tmp_path / "bad.parquet")
    corpus = Corpus.open(tmp_path / "bad.parquet")
    assert corpus[0] == {"text": "fine text"}
    with pytest.raises(CorpusError, match=r"^corpus: .*bad.parquet: row 1: invalid UTF-8 at byte 4 "):
        corpus[1]
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + '{"text": "a \\ud83d\\ude00"}\n'.encode())
    assert Corpus.open(tmp_path / "bom.jsonl")[0] == {"text": "a \U0001F600"}  # a BOM, a surrogate pair: fine


def test_ocr_samples_whose_pages_miss_glyphs_are_skipped_counted_and_logged(builder, caplog):
    """The loader leaves out an OCR sample whose pages draw characters as boxes, counts it among the skipped
    (the trainer's metrics) and logs the first few with the characters."""
    text = sample_text()
    corpus = Corpus([("mem", [{"text": "Glyphs \x07 none has. " * 10}, {"text": text[:500]}])])
    task = make_task("ocr", builder, config=CFG, max_pages=1)
    loader = GlyphLoader(TaskDataset(corpus, task, epochs=3, shuffle=False), Collator(builder.image_token_id, 0),
                         batch_size=1)
    with caplog.at_level("WARNING", logger="glyph_rt.train"):
        assert len(list(loader)) == 3
    assert loader.state_dict()["skipped"] == 3 and loader.dataset.missing_glyphs == 3
    assert "pages miss glyphs" in caplog.text and "U+0007" in caplog.text


def test_corpus_files_by_suffix_in_any_case_and_directories_of_records(tmp_path, caplog):
    """A .json array of records is records, suffixes count in any case, a directory of JSONL / Parquet shards is
    read whole; a directory mixing record files and text files (a README beside the shards), an unknown suffix, a
    .json that is not an array of objects: a CorpusError naming the files."""
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq

    recs = [{"context": f"The sky is blue {i}.", "question": "What colour?", "answer": "Blue."} for i in range(3)]
    (tmp_path / "data.json").write_text(json.dumps(recs))
    (tmp_path / "DATA.JSONL").write_text("\n".join(json.dumps(r) for r in recs))
    (tmp_path / "lines.json").write_text("\n".join(json.dumps(r) for r in recs))  # JSON Lines under .json
    (tmp_path / "z.JSON.GZ").write_bytes(gzip.compress(json.dumps(recs).encode()))
    (tmp_path / "NOTES.TXT").write_text("plain text")
    for name in ("data.json", "DATA.JSONL", "lines.json", "z.JSON.GZ"):
        c = Corpus.open(tmp_path / name)
        assert len(c) == 3 and c[1] == recs[1], name
    assert Corpus.open(tmp_path / "NOTES.TXT")[0] == {"text": "plain text"}
    shards = tmp_path / "shards"
    (shards / "train").mkdir(parents=True)
    (shards / "part-0.jsonl").write_text("\n".join(json.dumps(r) for r in recs))
    pq.write_table(pa.Table.from_pylist(recs[:2]), shards / "train" / "part-1.parquet")
    (shards / ".gitattributes").write_text("*.parquet filter=lfs")
    (shards / "LICENSE").write_text("MIT")
    with caplog.at_level("WARNING", logger="glyph_rt.train"):
        c = Corpus.open(shards)
    assert len(c) == 5 and c[3] == recs[0] and "1 files that are no corpus files left out" in caplog.text
    (shards / "README.md").write_text("This dataset holds QA records.")
    with pytest.raises(CorpusError, match=r"mixes 2 record files .*part-0.jsonl.* and 1 text files .*README.md"):
        Corpus.open(shards)
    (tmp_path / "corpus.csv").write_text("text\nhello\n")
    (tmp_path / "squad.json").write_text(json.dumps({"version": 2, "data": recs}))
    (tmp_path / "mixed.json").write_text(json.dumps([recs[0], "text"]))
    for name, match in (("corpus.csv", "corpus.csv' is not a corpus file by its name: .*\\.jsonl"),
                        ("squad.json", "squad.json: a JSON dict, not an array of records"),
                        ("mixed.json", "mixed.json: item 1: not a JSON object")):
        with pytest.raises(CorpusError, match=match):
            Corpus.open(tmp_path / name)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.csv").write_text("a")
    with pytest.raises(CorpusError, match="holds no corpus file"):
        Corpus.open(tmp_path / "empty")


def test_samples_the_task_finds_too_long_are_counted_never_drawn(builder, monkeypatch):
    """A task given max_tokens finds a too-long sample from its layout: the loader counts it as too long (and
    skipped), its pages are never drawn, and the batches are the same whatever the workers and after a resume."""
    from glyph_rt.train import collate

    text = sample_text()
    limit = 400  # 26 full pages of CFG
    long = {1, 4, 7}
    corpus = Corpus([("mem", [{"context": text[:40000] if i in long else text[i * 600:i * 600 + 600],
                               "question": "What?", "answer": "This."} for i in range(12)])])

    def loader(workers=0):
        task = make_task("qa", builder, config=CFG, max_tokens=limit)
        data = TaskDataset(corpus, task, seed=2, epochs=1, shuffle=False)
        return GlyphLoader(data, Collator(builder.image_token_id, 0, max_length=limit), batch_size=2,
                           num_workers=workers)

    drawn = []
    render = collate.render_samples
    monkeypatch.setattr(collate, "render_samples", lambda samples, *a, **k: drawn.extend(s.index for s in samples)
                        or render(samples, *a, **k))
    full = loader()
    got = [b["attention_mask"].sum(1).tolist() for b in full]
    state = full.state_dict()
    assert len(got) == 4 and state["consumed"] == 11  # the 9 that fit: 4 batches, the last one left over
    assert state["too_long"] == state["skipped"] == 3 and max(max(g) for g in got) <= limit
    assert sorted(drawn) == sorted(set(range(12)) - long)  # the samples that fit, each drawn once
    assert [b["attention_mask"].sum(1).tolist() for b in loader(2)] == got
    first = loader()
    it = iter(first)
    next(it)
    resumed = loader()
    resumed.load_state_dict(first.state_dict())
    assert [b["attention_mask"].sum(1).tolist() for b in resumed] == got[1:]
    assert resumed.state_dict()["too_long"] == 3
