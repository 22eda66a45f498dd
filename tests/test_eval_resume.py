"""What a long evaluation or search must not get wrong: rows whose text holds line separators, resumes that
mix settings, answers in flight when a run stops, a busy engine, a target that is down or busy, a line torn
inside a character, an unreadable page image, a critic that thinks out loud."""
import contextlib
import dataclasses
import json
import time

import pytest

from glyph_rt import RenderConfig
from glyph_rt.eval import Item, Reply, Target, TargetError, evaluate, load_items, read_rows, report, save_items

from conftest import chat_completion, http_endpoint

CFG = RenderConfig(page_size=(200, 150))
SEPARATORS = "\u2028 \u2029 \u0085 \x1c \x0b"  # str.splitlines splits at each; JSON keeps them raw


def items(n=4, tokens=8):
    return [Item(id=f"q{i}", context=f"Item {i}{SEPARATORS} says {1000 + i}. " * 3, question="What number?",
                 answers=[str(1000 + i)], max_new_tokens=tokens, metadata={"task": "niah_single_1"}) for i in range(n)]


class Echo(Target):
    """Answers the item's answer (its first max_new_tokens characters), with the separators around it."""
    name, concurrent = "echo", True

    def __init__(self, key=None, penalty=1.0, delay=0.0, fail=()):
        self._key, self.repetition_penalty, self.delay, self.fail = key, penalty, delay, set(fail)
        self.asked = []

    @property
    def key(self):
        return self._key or self.name

    def answer(self, item, config, *, as_text=False):
        self.asked.append(item.id)
        if item.id in self.fail:
            raise TargetError("http://x/v1: cannot reach the server")
        time.sleep(self.delay)
        return Reply(f"{SEPARATORS}{item.answers[0][:item.max_new_tokens]}", 1, 10, 0.0)


def test_rows_with_line_separators_survive_a_resume(tmp_path):
    r = evaluate(CFG, items(), Echo(), out=tmp_path, progress=False, tokenizer=None)
    assert r.accuracy == 100.0
    assert len(read_rows(tmp_path / "results.jsonl")) == 4
    t = Echo()
    evaluate(CFG, items(), t, out=tmp_path, progress=False, tokenizer=None)
    assert t.asked == [] and len((tmp_path / "results.jsonl").read_text().split("\n")) == 5
    save_items(items(), tmp_path / "items.jsonl")
    assert load_items(tmp_path / "items.jsonl") == items()


def test_a_resume_reruns_rows_of_another_budget_penalty_or_model(tmp_path):
    out = tmp_path / "r.jsonl"
    quick = evaluate(CFG, items(), Echo(), out=out, progress=False, tokenizer=None, max_new_tokens=2)
    assert quick.accuracy == 0.0 and {x["max_new_tokens"] for x in quick.rows} == {2}
    full = Echo()
    assert evaluate(CFG, items(), full, out=out, progress=False, tokenizer=None).accuracy == 100.0
    assert len(full.asked) == 4  # the smoke test's truncated answers were not reused
    again = Echo(penalty=1.1)
    evaluate(CFG, items(), again, out=out, progress=False, tokenizer=None)
    other = Echo(key="/elsewhere/final")  # another checkpoint with the same directory name
    evaluate(CFG, items(), other, out=out, progress=False, tokenizer=None)
    assert len(again.asked) == len(other.asked) == 4
    rows = read_rows(out)
    assert len(rows) == 12  # the budget's rerun replaced the smoke test's rows; penalty and model are their own
    labels = [report.run_label(k) for k in report.group_runs(rows)]
    assert len(set(labels)) == 3 and any("repetition penalty 1.1" in x for x in labels), labels
    assert any("/elsewhere/final" in x for x in labels), labels


def test_a_quick_run_neither_hides_nor_reruns_the_full_rows(tmp_path):
    """A capped smoke run between two full runs: the second full run asks nothing, and the rows reports read are
    those of the latest run's settings."""
    out = tmp_path / "r.jsonl"
    for cap, asked, acc in [(None, 4, 100.0), (2, 4, 0.0), (None, 0, 100.0), (2, 0, 0.0)]:
        t = Echo()
        assert evaluate(CFG, items(), t, out=out, progress=False, tokenizer=None, max_new_tokens=cap).accuracy == acc
        rows = read_rows(out)
        assert len(t.asked) == asked and len(rows) == 4 and 100 * sum(x["score"] for x in rows) / 4 == acc


def test_items_with_the_same_ids_and_other_contents_are_asked_again(tmp_path):
    """RULER's ids do not hold the seed: the rows of another seed's items are not reused; rows of an older file
    (no item hash) are reused when their answers and metric are the item's."""
    from glyph_rt.eval.benchmarks import ruler

    class Oracle(Echo):
        def answer(self, item, config, *, as_text=False):
            self.asked.append(item.id)
            return Reply(" ".join(item.answers), 0, 0, 0.0)

    a = ruler.generate(["niah_single_1"], lengths=["1k"], n=2, seed=0)
    b = ruler.generate(["niah_single_1"], lengths=["1k"], n=2, seed=1)
    assert [it.id for it in a] == [it.id for it in b] and a[0].answers != b[0].answers
    evaluate(None, a, Oracle(), out=tmp_path, progress=False, tokenizer=None, as_text=True)
    t = Oracle()
    r = evaluate(None, b, t, out=tmp_path, progress=False, tokenizer=None, as_text=True)
    assert t.asked == [it.id for it in b] and [x["answers"] for x in r.rows] == [it.answers for it in b]
    old = tmp_path / "old.jsonl"  # the same rows as a file written before rows had an item hash
    old.write_text("".join(json.dumps({k: v for k, v in x.items() if k != "item_hash"}) + "\n" for x in r.rows))
    t = Oracle()
    assert evaluate(None, b, t, out=old, progress=False, tokenizer=None, as_text=True).accuracy == 100.0
    assert t.asked == [] and len(read_rows(old)) == 2  # the same answers and metric: reused
    t = Oracle()  # the other seed's items: other answers, asked again
    assert evaluate(None, a, t, out=old, progress=False, tokenizer=None, as_text=True).accuracy == 100.0
    assert t.asked == [it.id for it in a]
    other = tmp_path / "other.jsonl"  # the same old rows, items scored by another metric: asked again
    other.write_text("".join(json.dumps({k: v for k, v in x.items() if k != "item_hash"}) + "\n" for x in r.rows))
    t = Oracle()
    evaluate(None, [dataclasses.replace(it, metric="string_match_part") for it in b], t, out=other, progress=False,
             tokenizer=None, as_text=True)
    assert t.asked == [it.id for it in b]


def test_a_metric_failure_is_an_error_row_that_keeps_the_answer(tmp_path):
    """The metric raises on q0 (a retrieval reference naming no paragraph): q0 is scored 0 with the error and its
    prediction, the other items run, and a resume asks nothing again."""
    its = items(3)
    its[0] = Item(id="q0", context="c", question="q", answers=["no paragraph"], metric="retrieval")
    r = evaluate(CFG, its, Echo(), out=tmp_path, progress=False, tokenizer=None)
    bad = r.rows[0]
    assert r.errors == 1 and bad["score"] == 0.0 and bad["prediction"].endswith("no paragraph")
    assert bad["error"].startswith("scoring failed: ValueError: retrieval:")
    assert [x["score"] for x in r.rows[1:]] == [1.0, 1.0]
    t = Echo()
    assert evaluate(CFG, its, t, out=tmp_path, progress=False, tokenizer=None).errors == 1 and t.asked == []



def test_a_row_whose_metric_failed_is_scored_again_on_resume_without_asking(tmp_path, monkeypatch):
    """Once the metric works (a package installed, a metric fixed), a resume scores the saved prediction."""
    from glyph_rt.eval import harness

    real = harness.score
    monkeypatch.setattr(harness, "score", lambda it, pred: 1 / 0 if it.id == "q0" else real(it, pred))
    its = items(3)
    assert evaluate(CFG, its, Echo(), out=tmp_path, progress=False, tokenizer=None).errors == 1
    monkeypatch.setattr(harness, "score", real)
    t = Echo()
    r = evaluate(CFG, its, t, out=tmp_path, progress=False, tokenizer=None)
    assert t.asked == [] and r.errors == 0 and [x["score"] for x in r.rows] == [1.0, 1.0, 1.0]
    assert "error" not in read_rows(tmp_path / "results.jsonl")[0]  # the report's row is the scored one


def test_a_missing_metric_package_stops_the_run_before_any_item(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "jieba", None)  # glyph_rt[eval] without [eval-zh]
    t = Echo()
    zh = Item(id="z", context="北京是中国的首都。", question="问题", answers=["北京"], metric="qa_f1_zh")
    with pytest.raises(RuntimeError, match=r"jieba: pip install 'glyph_rt\[eval-zh\]'"):
        evaluate(CFG, [*items(2), zh], t, out=tmp_path, progress=False, tokenizer=None)
    assert t.asked == []


def test_a_lone_surrogate_is_saved_and_read_back(tmp_path):
    """A JSON reply may hold a lone surrogate ("\\ud83d"): the row and the items are written and read back as
    they were."""
    class Odd(Echo):
        def answer(self, item, config, *, as_text=False):
            return Reply(json.loads('"1000 \\ud83d"'), 1, 10, 0.0)

    r = evaluate(CFG, items(1), Odd(), out=tmp_path, progress=False, tokenizer=None)
    assert r.accuracy == 100.0 and read_rows(tmp_path / "results.jsonl") == r.rows
    assert r.rows[0]["prediction"] == "1000 \ud83d"
    odd = [Item(id="b", context="text \udc00 more 北京", question="q", answers=["x"])]
    save_items(odd, tmp_path / "items.jsonl")
    assert load_items(tmp_path / "items.jsonl") == odd and "北京" in (tmp_path / "items.jsonl").read_text()


def test_two_render_configs_at_one_dpi_are_two_runs():
    rows = [{"id": f"r{i}", "target": "glyph", "mode": "image", "dpi": 72.0, "config_key": c, "score": 1.0,
             "text_tokens": 10, "visual_tokens": 5, "compression": 2.0} for i in range(2) for c in ("aaa", "bbb")]
    runs = report.group_runs(rows)
    assert [len(v) for v in runs.values()] == [2, 2]
    assert sorted(report.run_label(k) for k in runs) == ["glyph @ 72 dpi [config aaa]", "glyph @ 72 dpi [config bbb]"]


def test_items_with_their_own_config_are_labelled_with_the_dpi_they_drew_at(tmp_path):
    from glyph_rt.eval.suite import run_suite

    own = [dataclasses.replace(it, render_config={"dpi": d}) for it, d in zip(items(3), (96, 96, 120))]
    s = run_suite("ruler", [Echo()], out=tmp_path / "a", items=own[:2], config=CFG, progress=False)
    assert s["runs"][0]["dpi"] == 96 and {r["dpi"] for r in read_rows(tmp_path / "a" / "results.jsonl")} == {96}
    s = run_suite("ruler", [Echo()], out=tmp_path / "b", items=own, config=CFG, progress=False)
    assert s["runs"][0]["dpi"] is None and s["runs"][0]["dpis"] == [96, 120]


def test_compression_counts_only_items_answered_from_pages(tmp_path):
    class TooLong(Echo):
        def answer(self, item, config, *, as_text=False):
            if item.id == "q0":
                raise ValueError("this request needs 9999 positions")
            return Reply(item.answers[0], 1, 10, 0.0)

    r = evaluate(CFG, items(3), TooLong(), out=None, progress=False)
    assert r.errors == 1 and r.rows[0]["visual_tokens"] == 0
    answered = r.rows[1:]
    assert r.compression == pytest.approx(sum(x["text_tokens"] for x in answered) / 20)


def test_a_stopped_concurrent_run_keeps_the_answers_in_flight(tmp_path):
    """q0's server goes down at once; the items already in flight (q1-q3, and q4 if q0's worker took it before the
    run stopped) finish and are saved; nothing else starts."""
    t = Echo(delay=0.3, fail={"q0"})
    with pytest.raises(TargetError):
        evaluate(CFG, items(8), t, out=tmp_path, progress=False, tokenizer=None, concurrency=4)
    kept = {x["id"] for x in read_rows(tmp_path / "results.jsonl")}
    assert kept >= {"q1", "q2", "q3"} and kept == set(t.asked) - {"q0"} and len(t.asked) <= 5


def test_a_full_engine_queue_makes_items_wait_not_fail(tmp_path):
    """The engine refuses a request while its queue holds its limit of rendered pages (QueueFull): the item
    renders again once there is room instead of failing the run."""
    from glyph_rt.eval.targets import GlyphModelTarget
    from glyph_rt.models.tiny import tiny_glm4v_checkpoint
    from glyph_rt.serve.engine import QueueFull

    t = GlyphModelTarget(tiny_glm4v_checkpoint(tmp_path / "ckpt"), device="cpu")
    try:
        engine, calls = t.engine, []
        submit = engine.submit

        def full_at_first(*a, **kw):  # the first two requests find the queue full
            calls.append(1)
            if len(calls) <= 2:
                raise QueueFull(3)
            return submit(*a, **kw)

        engine.submit = full_at_first
        r = evaluate(CFG, items(4, tokens=2), t, out=None, progress=False, concurrency=4)
        assert r.errors == 0 and all(x["pages"] >= 1 for x in r.rows) and len(calls) == 6
    finally:
        t.close()


def test_a_line_torn_inside_a_character_is_left_out(tmp_path):
    """A kill mid-write can cut a multi-byte character: the torn line is dropped before decoding."""
    path = tmp_path / "results.jsonl"
    torn = json.dumps({"id": "b", "score": 0.0, "prediction": "日本語"}, ensure_ascii=False).encode()
    path.write_bytes(json.dumps({"id": "a", "score": 1.0}).encode() + b"\n" + torn[:torn.index("日".encode()) + 1])
    assert read_rows(path) == [{"id": "a", "score": 1.0}]
    path.write_bytes(b'{"id": "a"}\n{"id": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=r"results.jsonl:2: not UTF-8"):
        read_rows(path)


class Pages(Echo):
    """Reads each item's pages as an endpoint target does (page_images), then answers the item's answer."""

    def answer(self, item, config, *, as_text=False):
        from glyph_rt.eval.targets import page_images

        self.asked.append(item.id)
        return Reply(item.answers[0], len(page_images(item, config)), 500, 0.0)


def doc_item(name: str, path) -> Item:
    return Item(id=name, context="", question="Q?", answers=["x"], metric="mmlongbench", images=[str(path)],
                metadata={"answer_format": "Str", "kind": "SP"})


def test_an_unreadable_page_image_is_its_items_failure(tmp_path):
    from PIL import Image

    Image.new("RGB", (32, 32), "white").save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    its = [doc_item("bad", tmp_path / "bad.png"), doc_item("ok", tmp_path / "ok.png")]
    r = evaluate(CFG, its, Pages(), out=tmp_path / "run", progress=False, tokenizer=None)
    bad, ok = r.rows
    assert bad["score"] == 0.0 and bad["error"].startswith(f"item bad: page image {tmp_path / 'bad.png'}: cannot")
    assert ok["score"] == 1.0 and "error" not in ok
    t = Pages()
    evaluate(CFG, its, t, out=tmp_path / "run", progress=False, tokenizer=None)
    assert t.asked == []  # recorded: a rerun goes on past it


def test_compression_counts_only_items_with_text_tokens(tmp_path):
    """Page-image items (MMLongBench-Doc) have no text tokens: they count in neither sum; with none left, None."""
    from PIL import Image

    Image.new("RGB", (32, 32), "white").save(tmp_path / "p.png")
    r = evaluate(CFG, [doc_item("doc", tmp_path / "p.png")], Pages(), progress=False)
    assert r.rows[0]["text_tokens"] is None and r.compression is None and r.summary()["compression"] is None
    mixed = evaluate(CFG, [doc_item("doc", tmp_path / "p.png"), *items(1)], Pages(), progress=False)
    assert mixed.compression == pytest.approx(mixed.rows[1]["text_tokens"] / 500)


@contextlib.contextmanager
def endpoint(statuses=(), answer="x"):
    """A local OpenAI-compatible chat endpoint that fails with each of `statuses` in turn, then answers `answer`;
    yields its URL and the statuses it sent."""
    sent = []

    def respond(body):
        code = statuses[len(sent)] if len(sent) < len(statuses) else 200
        sent.append(code)
        return code, (chat_completion(answer) if code == 200 else b'{"error": {"message": "try again"}}'), {}

    with http_endpoint(respond) as url:
        yield url, sent


@pytest.mark.parametrize("status", [408, 409])
def test_a_request_timeout_or_conflict_stops_the_run_and_a_rerun_asks_again(tmp_path, status):
    """408 and 409 are transient (the openai client retries them, as 429 and 5xx): not the item's failure."""
    from glyph_rt.eval.targets import OpenAITarget

    with endpoint([status], answer="1000") as (url, sent):
        t = OpenAITarget(url, "m", max_retries=0)
        with pytest.raises(TargetError, match=f"HTTP {status}"):
            evaluate(CFG, items(1), t, as_text=True, out=tmp_path, progress=False, tokenizer=None)
        assert read_rows(tmp_path / "results.jsonl") == []
        r = evaluate(CFG, items(1), t, as_text=True, out=tmp_path, progress=False, tokenizer=None)
        assert sent == [status, 200] and r.rows[0]["score"] == 1.0 and "error" not in r.rows[0]


NOT_A_COMPLETION = {  # 200 replies that are no chat completion: the server's failure, not the item's
    "html": (b"<html>proxy error</html>", {"Content-Type": "text/html"}),
    "no_choices": (b'{"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": []}', {}),
    "no_message": (b'{"choices": [{"index": 0}]}', {}),
    "not_json": (b'{"choices": [', {}),
}


@pytest.mark.parametrize("kind", NOT_A_COMPLETION)
def test_a_reply_that_is_no_chat_completion_stops_the_run_and_a_rerun_asks_again(tmp_path, kind):
    from glyph_rt.eval.targets import OpenAITarget

    sent = []

    def respond(body):
        sent.append(body)
        return (200, *NOT_A_COMPLETION[kind]) if len(sent) == 1 else (200, chat_completion("1000"), {})

    with http_endpoint(respond) as url:
        t = OpenAITarget(url, "m", max_retries=0)
        with pytest.raises(TargetError, match=url):
            evaluate(CFG, items(1), t, as_text=True, out=tmp_path, progress=False, tokenizer=None)
        assert read_rows(tmp_path / "results.jsonl") == []
        r = evaluate(CFG, items(1), t, as_text=True, out=tmp_path, progress=False, tokenizer=None)
        assert len(sent) == 2 and r.rows[0]["score"] == 1.0 and "error" not in r.rows[0]


@pytest.mark.parametrize("body", [b"<html>proxy error</html>", b"{oops", b'{"data": ["m"]}', b'{"data": [{}]}'])
def test_a_model_list_that_is_no_list_of_models_is_a_target_error(body):
    from glyph_rt.eval.targets import OpenAITarget

    kind = {"Content-Type": "text/html"} if body.startswith(b"<") else {}
    with http_endpoint(None, get=lambda path: (200, body, kind)) as url:
        with pytest.raises(TargetError, match="127.0.0.1"):
            OpenAITarget(url, max_retries=0)


def cli_eval(url, out, *extra):
    from glyph_rt.cli import main

    return main(["eval", "--target", f"{url}:m", "--out", str(out), "--quiet", *extra])


def test_a_run_resumes_with_its_stored_seed_when_none_is_given(tmp_path, capsys):
    ruler = ["--suite", "ruler", "--lengths", "1k", "--limit", "1", "--tasks", "vt", "--as", "text"]
    with endpoint() as (url, sent):
        assert cli_eval("openai:" + url, tmp_path / "a", *ruler, "--seed", "3") == 0
        items_3 = (tmp_path / "a" / "items.jsonl").read_text()
        assert cli_eval("openai:" + url, tmp_path / "a", *ruler) == 0  # as the README: left out, the stored run's
        assert (tmp_path / "a" / "items.jsonl").read_text() == items_3 and len(sent) == 1
        assert cli_eval("openai:" + url, tmp_path / "a", *ruler, "--seed", "0") == 2
        assert "holds the items of another run (seed: 3 then 0)" in capsys.readouterr().err
        assert cli_eval("openai:" + url, tmp_path / "b", *ruler) == 0  # no seed: 0, given or not
        assert cli_eval("openai:" + url, tmp_path / "b", *ruler, "--seed", "0") == 0
    assert (tmp_path / "b" / "items.jsonl").read_text() != items_3


def test_the_cli_says_n_a_for_the_compression_of_page_images_only(tmp_path, capsys):
    """MMLongBench-Doc's page images: no compression (n/a), and the run labelled with the dpi of the PDF pages."""
    from PIL import Image

    (tmp_path / "docs").mkdir()
    (tmp_path / "pages" / "a" / "144dpi").mkdir(parents=True)  # the page cache of docs/a.pdf: no PDF converted
    Image.new("RGB", (32, 32), "white").save(tmp_path / "pages" / "a" / "144dpi" / "page-1.png")
    (tmp_path / "pages" / "a" / "144dpi" / ".complete").touch()
    (tmp_path / "samples.json").write_text(json.dumps([{"doc_id": "a.pdf", "question": "Q?", "answer": "x"}]))
    with endpoint() as (url, _):
        assert cli_eval("openai:" + url, tmp_path / "out", "--suite", "mmlongbench-doc", "--data",
                        str(tmp_path / "samples.json"), "--documents", str(tmp_path / "docs")) == 0
    assert "accuracy 100.00 on 1 items, compression n/a" in capsys.readouterr().out
    [run] = json.loads((tmp_path / "out" / "summary.json").read_text())["runs"]
    assert run["compression"] is None and run["dpi"] == 144
    [row] = [json.loads(x) for x in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert row["dpi"] == 144
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "@ 144 dpi" in md and "72 dpi" not in md


# ----------------------------------------------------------------- search
def test_search_stops_when_the_target_is_down_and_records_no_failure(tmp_path):
    from glyph_rt.search import History, SyntheticObjective, load_settings, run_search

    class Down(SyntheticObjective):
        def __call__(self, config):
            raise TargetError("http://x/v1: cannot reach the server")

    with pytest.raises(TargetError):
        run_search(load_settings(None, ["generations=1"]), Down(), tmp_path, report=False)
    assert History(tmp_path / "history.jsonl").of_type("eval") == []


def test_search_stops_on_a_reply_that_is_no_chat_completion_and_a_rerun_asks_again(tmp_path):
    """A 200 with no choices is the server failing: nothing is recorded, and once it is fixed a rerun asks."""
    from glyph_rt.search import EvalObjective, History, load_settings, run_search

    broken = [True]
    empty = b'{"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": []}'
    settings = load_settings(None, ["generations=0", "population=1", "outputs.contact_sheet=0"])
    with http_endpoint(lambda body: (200, empty if broken[0] else chat_completion("1000"), {})) as url:
        objective = EvalObjective(items(1), f"openai:{url}:m")
        with pytest.raises(TargetError, match="not a chat completion"):
            run_search(settings, objective, tmp_path, report=False)
        assert History(tmp_path / "history.jsonl").of_type("eval") == []
        broken[0] = False
        run_search(settings, objective, tmp_path, report=False)
    [rec] = History(tmp_path / "history.jsonl").of_type("eval")
    assert rec["accuracy"] == 1.0 and "error" not in rec


def test_best_is_never_a_failed_config():
    from glyph_rt.search import Goal

    failed = {"hash": "zz", "accuracy": None, "compression": None}
    assert Goal("constrained", 0.5).best([failed]) is None
    ok = {"hash": "aa", "accuracy": 0.1, "compression": 2.0}
    assert Goal("constrained", 0.5).best([failed, ok]) is ok


@pytest.mark.parametrize("text", [
    '<think>Raise the {dpi}? Use {"proposals": []} as a format.</think>{"proposals": [{"op": "mutate"}]}',
    'Here: {"proposals": [{"op": "mutate"}]} and that is {all}.',
    '```json\n[{"op": "mutate"}]\n```',
])
def test_critic_answers_with_thoughts_or_prose_around_the_json(text):
    from glyph_rt.search.critic import parse_answer

    assert parse_answer(text) == [{"op": "mutate"}]


def test_a_failed_critic_answer_is_asked_again_on_resume_only_before_its_generation_ran(tmp_path):
    from glyph_rt.search import Search, SyntheticObjective, load_settings

    class Critic:
        def __init__(self, answers):
            self.answers = answers

        def ask(self, messages):
            return self.answers.pop(0)  # IndexError when asked more often than expected

    s = load_settings(None, ["generations=1", "patience=0"])

    def stop_at(k):
        class Stop(SyntheticObjective):
            n = 0

            def __call__(self, config):
                Stop.n += 1
                if Stop.n == k:
                    raise KeyboardInterrupt
                return super().__call__(config)
        return Stop(0.5)

    good = json.dumps({"proposals": [{"op": "mutate", "parent": "c1", "changes": {"dpi": 80}, "reason": "r"}]})
    # stopped at generation 1's first evaluation (8 in generation 0): nothing of it ran, the critic is asked again
    with pytest.raises(KeyboardInterrupt):
        Search(s, stop_at(9), tmp_path / "a", Critic(["no JSON at all"])).run()
    r = Search(s, SyntheticObjective(0.5), tmp_path / "a", Critic([good])).run()
    assert r.counts.get("critic.accepted") == 1
    # stopped after some of generation 1 ran: the failure is replayed, the operators draw the same children
    with pytest.raises(KeyboardInterrupt):
        Search(s, stop_at(12), tmp_path / "b", Critic(["no JSON at all"])).run()
    r = Search(s, SyntheticObjective(0.5), tmp_path / "b", Critic([])).run()
    assert r.counts.get("critic.failed") == 1 and r.evaluations == 16


# ----------------------------------------------------------------- thinking replies, budgets, row fields
class Thinker(Target):
    """Answers in glyph_rt's thinking format (`<think>...</think>\\nanswer`, as its SFT data and GRPO teach), the
    thoughts full of other numbers and words; keeps the budgets it was given."""
    name = "thinker"

    def __init__(self, reply="<think>Paragraph 12 says 1999; the question asks who.</think>\n{answer}"):
        self.reply, self.budgets = reply, []

    def answer(self, item, config, *, as_text=False):
        self.budgets.append(item.max_new_tokens)
        return Reply(self.reply.format(answer=item.answers[0]), 1, 10, 0.0)


def thinking_items():
    return [Item(id="hqa", context="ctx " * 20, question="Who?", answers=["Marie Curie"], metric="qa_f1",
                 metadata={"task": "hotpotqa"}),
            Item(id="pc", context="ctx " * 20, question="How many?", answers=["7"], metric="count",
                 metadata={"task": "passage_count"}),
            Item(id="mrcr", context="User: write a poem\nAssistant: roses are red", question="Prepend xY9",
                 answers=["xY9roses are red"], metric="mrcr", metadata={"task": "mrcr", "random_string_to_prepend": "xY9"})]


def test_a_thinking_reply_is_scored_on_its_answer_after_the_block(tmp_path):
    """The thoughts are not the answer: scored after </think> (the whole reply gave 0.235, 1/3 and 0); the row keeps
    the whole reply as its prediction and the text scored as its answer; an unclosed block answers nothing."""
    r = evaluate(CFG, thinking_items(), Thinker(), out=tmp_path, progress=False, tokenizer=None)
    assert [x["score"] for x in r.rows] == [1.0, 1.0, 1.0]
    assert r.rows[0]["prediction"].startswith("<think>Paragraph 12") and r.rows[0]["answer"] == "Marie Curie"
    cut = evaluate(CFG, thinking_items(), Thinker("<think>It is {answer}, I think, but let me check"), progress=False,
                   tokenizer=None)
    assert [x["score"] for x in cut.rows] == [0.0, 0.0, 0.0] and {x["answer"] for x in cut.rows} == {""}
    plain = evaluate(CFG, thinking_items()[:1], Thinker("{answer}"), progress=False, tokenizer=None)
    assert plain.rows[0]["score"] == 1.0 and plain.rows[0]["answer"] == "Marie Curie"  # no thinking: the reply


def test_rows_scored_on_the_whole_thinking_reply_are_scored_again_on_resume(tmp_path):
    """A row written before the answer was split off (no `answer`) is scored again from its prediction, unasked."""
    evaluate(CFG, thinking_items(), Thinker(), out=tmp_path, progress=False, tokenizer=None)
    path = tmp_path / "results.jsonl"
    old = [{**{k: v for k, v in json.loads(x).items() if k != "answer"}, "score": 0.25}
           for x in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(x) + "\n" for x in old))
    t = Thinker()
    r = evaluate(CFG, thinking_items(), t, out=tmp_path, progress=False, tokenizer=None)
    assert t.budgets == [] and [x["score"] for x in r.rows] == [1.0, 1.0, 1.0]
    assert [x["score"] for x in read_rows(path)] == [1.0, 1.0, 1.0] and read_rows(path)[0]["answer"] == "Marie Curie"


@pytest.mark.parametrize("reply, answer", [
    ("Paragraph 12 says 1999.</think>\n{answer}", "{answer}"),  # the chat template wrote <think>
    ("<think>1999?</think> no <think>wait</think>\n{answer}", "{answer}"),  # Glyph's scripts: after the last </think>
    ("<think>It is {answer}, I think", ""),  # opened, never closed: no answer
    ("1999.</think>\nno, <think>it is {answer}", ""),  # a block opened after the last </think> and never closed
])
def test_the_answer_is_the_text_after_the_last_end_of_thinking(reply, answer):
    from glyph_rt.eval.harness import reply_answer
    from glyph_rt.models.prompt import split_thinking

    r = evaluate(CFG, thinking_items(), Thinker(reply), progress=False, tokenizer=None)
    want = [answer.format(answer=it.answers[0]) for it in thinking_items()]
    assert [x["answer"] for x in r.rows] == want and [x["score"] for x in r.rows] == [float(bool(a)) for a in want]
    assert reply_answer(reply.format(answer="42")) == answer.format(answer="42")
    assert split_thinking(reply)[0] is None  # GRPO's format reward still asks for the whole <think>...</think> format


def test_rows_whose_answer_an_older_rule_split_off_are_scored_again_on_resume(tmp_path):
    """A template-opened reply (`thoughts</think>answer`) scored as no answer by the older rule is scored again on
    its answer, unasked."""
    t = Thinker("Paragraph 12 says 1999.</think>\n{answer}")
    evaluate(CFG, thinking_items(), t, out=tmp_path, progress=False, tokenizer=None)
    path = tmp_path / "results.jsonl"
    old = [{**json.loads(x), "answer": "", "score": 0.0} for x in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(x) + "\n" for x in old))
    again = Thinker(t.reply)
    r = evaluate(CFG, thinking_items(), again, out=tmp_path, progress=False, tokenizer=None)
    assert again.budgets == [] and [x["score"] for x in r.rows] == [1.0, 1.0, 1.0]
    assert [x["answer"] for x in read_rows(path)] == ["Marie Curie", "7", "xY9roses are red"]


def test_max_tokens_gives_every_item_its_budget_and_keys_the_resume(tmp_path):
    """max_tokens replaces the tasks' budgets (room to think); rows of another budget are not reused, and
    max_new_tokens still caps it."""
    its = thinking_items()[:2]
    t = Thinker()
    r = evaluate(CFG, its, t, out=tmp_path, progress=False, tokenizer=None, max_tokens=8192)
    assert t.budgets == [8192, 8192] and {x["max_new_tokens"] for x in r.rows} == {8192}
    own = Thinker()
    evaluate(CFG, its, own, out=tmp_path, progress=False, tokenizer=None)
    assert own.budgets == [128, 128]  # the items' own budgets: the 8192 rows are not theirs
    again = Thinker()
    evaluate(CFG, its, again, out=tmp_path, progress=False, tokenizer=None, max_tokens=8192)
    assert again.budgets == []  # resumed
    capped = Thinker()
    evaluate(CFG, its, capped, out=tmp_path, progress=False, tokenizer=None, max_tokens=8192, max_new_tokens=16)
    assert capped.budgets == [16, 16]
    with pytest.raises(ValueError, match="max_tokens 0"):
        evaluate(CFG, its, Thinker(), progress=False, tokenizer=None, max_tokens=0)


def test_the_cli_sends_max_tokens_to_the_endpoint(tmp_path):
    sent = []

    def respond(body):
        sent.append(json.loads(body))
        return 200, chat_completion("<think>hmm</think>\n1000"), {}

    ruler = ["--suite", "ruler", "--lengths", "1k", "--limit", "1", "--tasks", "vt", "--as", "text"]
    with http_endpoint(respond) as url:
        assert cli_eval("openai:" + url, tmp_path, *ruler, "--max-tokens", "8192") == 0
        assert cli_eval("openai:" + url, tmp_path, *ruler, "--max-tokens", "8192") == 0  # resumed: not sent again
    assert [b["max_tokens"] for b in sent] == [8192]
    [row] = read_rows(tmp_path / "results.jsonl")
    assert row["max_new_tokens"] == 8192 and row["prediction"].startswith("<think>")


def test_metadata_cannot_overwrite_a_rows_own_fields(tmp_path):
    """A metadata "id" (a dataset's own id kept in items.jsonl), "score" or "error" is not copied over the row's:
    the run finishes and resumes."""
    its = [Item(id=f"q{i}", context="ctx " * 10, question="?", answers=["42"],
                metadata={"task": "t", "id": f"orig-{i}", "score": 5, "error": "x", "target_id": "y"}) for i in range(3)]
    t = Thinker("{answer}")
    r = evaluate(CFG, its, t, out=tmp_path, progress=False, tokenizer=None)
    assert [x["id"] for x in r.rows] == ["q0", "q1", "q2"] and [x["score"] for x in r.rows] == [1.0] * 3
    assert r.errors == 0 and r.rows[0]["target_id"] == "thinker" and r.rows[0]["task"] == "t"
    again = Thinker("{answer}")
    evaluate(CFG, its, again, out=tmp_path, progress=False, tokenizer=None)
    assert again.budgets == [] and len(read_rows(tmp_path / "results.jsonl")) == 3


def test_mrcr_max_length_reaches_the_loader_and_keys_the_stored_items(tmp_path, capsys):
    """--max-length (tokens, as the length bins) through build_items to mrcr.load, stored in items_spec.json: a
    resume with another is refused, one without it takes the stored run's."""
    from glyph_rt.eval.suite import build_items

    def mrcr_row(n_chars):
        msgs = [{"role": "user", "content": "write a poem"}, {"role": "assistant", "content": "tapir " * n_chars},
                {"role": "user", "content": "Prepend ab to the 1st poem"}]
        return {"prompt": json.dumps(msgs), "answer": "ab" + "tapir " * n_chars, "random_string_to_prepend": "ab",
                "n_needles": 2, "n_chars": 6 * n_chars}

    data = tmp_path / "2needle.jsonl"
    data.write_text("".join(json.dumps(mrcr_row(n)) + "\n" for n in (10, 3000)))
    assert len(build_items("mrcr", data=data)) == 2
    assert [it.metadata["n_chars"] for it in build_items("mrcr", data=data, max_length="1k")] == [60]
    assert [it.metadata["n_chars"] for it in build_items("mrcr", data=data, max_chars=1000)] == [60]
    with pytest.raises(ValueError, match="applies to MRCR"):
        build_items("ruler", lengths=["1k"], max_length="1k")
    mrcr = ["--suite", "mrcr", "--data", str(data), "--as", "text"]
    with endpoint(answer="abtapir") as (url, sent):
        assert cli_eval("openai:" + url, tmp_path / "o", *mrcr, "--max-length", "1k") == 0
        assert len(sent) == 1 and len(load_items(tmp_path / "o" / "items.jsonl")) == 1
        assert json.loads((tmp_path / "o" / "items_spec.json").read_text())["max_length"] == 1024
        assert cli_eval("openai:" + url, tmp_path / "o", *mrcr) == 0 and len(sent) == 1  # the stored run's
        assert cli_eval("openai:" + url, tmp_path / "o", *mrcr, "--max-length", "1024") == 0  # the same length
        assert cli_eval("openai:" + url, tmp_path / "o", *mrcr, "--max-length", "2k") == 2
        assert "holds the items of another run (max_length: 1024 then 2048)" in capsys.readouterr().err
        assert cli_eval("openai:" + url, tmp_path / "r", "--suite", "ruler", "--max-length", "1k") == 2
        assert "--max-length applies to --suite mrcr" in capsys.readouterr().err
