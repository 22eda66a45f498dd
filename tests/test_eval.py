"""The evaluation harness end to end: a tiny random-weight checkpoint in process and behind a real
OpenAI-compatible HTTP server on 127.0.0.1, the text baseline, resuming an interrupted run."""
import base64
import io
import threading

import pytest

from glyph_rt import RenderConfig
from glyph_rt.eval import Item, evaluate, load_items, make_target, read_rows
from glyph_rt.eval.targets import GlyphModelTarget, OpenAITarget, Target, parse_openai_spec

CFG = RenderConfig(page_size=(200, 150))


@pytest.fixture(scope="module")
def local(ckpt):
    return make_target(str(ckpt), device="cpu")


def items(n=4):
    return [Item(id=f"q{i}", context=f"The magic number of item {i} is {1000 + i}. " * 12,
                 question="What is the magic number?", answers=[str(1000 + i)], max_new_tokens=4,
                 metadata={"task": "niah_single_1", "length": 256}) for i in range(n)]


class Server:
    """A FastAPI app speaking OpenAI's /v1/models and /v1/chat/completions, answering from the tiny
    GlyphModel: image_url pages are decoded from their PNG data URIs; every request is kept."""

    def __init__(self, target: GlyphModelTarget, tmp_path):
        from fastapi import FastAPI
        from PIL import Image

        from glyph_rt.serve.app import ServerThread

        self.requests = []
        lock = threading.Lock()  # one generation at a time on the shared model
        app = FastAPI()

        @app.get("/v1/models")
        def models():
            return {"object": "list", "data": [{"id": "tiny-glyph", "object": "model", "owned_by": "test"}]}

        @app.post("/v1/chat/completions")
        def chat(body: dict):
            with lock:
                return answer(body)

        def answer(body: dict):
            self.requests.append(body)
            content = body["messages"][-1]["content"]
            n = body.get("max_tokens") or 16
            if isinstance(content, str):
                text = target.answer(Item(id="r", context=content, question="", answers=["x"], text_prompt=content,
                                          max_new_tokens=n), CFG, as_text=True).text
            else:
                paths = []
                for k, part in enumerate(c for c in content if c["type"] == "image_url"):
                    data = base64.b64decode(part["image_url"]["url"].split(",", 1)[1])
                    p = tmp_path / f"req{len(self.requests)}_{k}.png"
                    Image.open(io.BytesIO(data)).convert("RGB").save(p)
                    paths.append(str(p))
                question = "".join(c["text"] for c in content if c["type"] == "text")
                text = target.answer(Item(id="r", context="", question=question, answers=["x"], images=paths,
                                          max_new_tokens=n), CFG).text
            return {"id": "c1", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}]}

        self.live = ServerThread(app).__enter__()  # raises if it does not start
        self.port = self.live.port

    def stop(self):
        self.live.__exit__(None, None, None)


@pytest.fixture(scope="module")
def server(local, tmp_path_factory):
    s = Server(local, tmp_path_factory.mktemp("srv"))
    yield s
    s.stop()


def test_in_process_end_to_end(local, tmp_path):
    r = evaluate(CFG, items(), local, out=tmp_path / "run", progress=False)
    assert len(r.rows) == 4 and 0 <= r.accuracy <= 100
    rows = read_rows(tmp_path / "run" / "results.jsonl")
    assert [x["id"] for x in rows] == ["q0", "q1", "q2", "q3"]
    for x in rows:
        assert x["visual_tokens"] > 0 and x["pages"] >= 1 and x["text_tokens"] > 0 and x["latency_s"] > 0
        assert x["compression"] == pytest.approx(x["text_tokens"] / x["visual_tokens"])
        assert x["task"] == "niah_single_1" and x["mode"] == "image"
    assert r.compression == pytest.approx(sum(x["text_tokens"] for x in rows) / sum(x["visual_tokens"] for x in rows))


def test_in_process_answers_equal_generate_and_batch_under_concurrency(local):
    """The in-process target runs on the serving engine: its greedy answers equal GlyphModel.generate's, and items
    in flight at once share decode steps."""
    import torch

    gm = local.model
    gm.render_config = CFG
    its = items(6)
    with torch.no_grad():
        want = [a.text for a in gm.generate([it.context for it in its], [it.question for it in its],
                                            max_new_tokens=4, do_sample=False)]
    steps = dict(local.engine.steps)
    a = evaluate(CFG, its, local, progress=False, concurrency=6)
    assert [x["prediction"] for x in a.rows] == want
    rows = local.engine.steps["decode_rows"] - steps["decode_rows"]
    assert rows / max(1, local.engine.steps["decode"] - steps["decode"]) > 1  # several items per decode step
    b = evaluate(CFG, its, local, progress=False, as_text=True)
    c = evaluate(CFG, its, local, progress=False, as_text=True, concurrency=3)
    assert [x["prediction"] for x in b.rows] == [x["prediction"] for x in c.rows]


def test_server_target_matches_in_process(local, server, tmp_path):
    remote = make_target(f"openai:http://127.0.0.1:{server.port}/v1")
    assert isinstance(remote, OpenAITarget) and remote.model == "tiny-glyph"
    a = evaluate(CFG, items(3), local, progress=False)
    b = evaluate(CFG, items(3), remote, out=tmp_path / "remote", progress=False)
    assert [x["prediction"] for x in a.rows] == [x["prediction"] for x in b.rows]
    assert [x["score"] for x in a.rows] == [x["score"] for x in b.rows]
    assert [x["visual_tokens"] for x in a.rows] == [x["visual_tokens"] for x in b.rows]
    c = evaluate(CFG, items(3), remote, progress=False, concurrency=3)  # requests in flight at once
    assert [x["prediction"] for x in c.rows] == [x["prediction"] for x in a.rows]
    req = server.requests[-1]
    assert req["temperature"] == 0 and req["max_tokens"] == 4
    parts = req["messages"][0]["content"]
    assert parts[-1] == {"type": "text", "text": "What is the magic number?"}
    assert all(p["image_url"]["url"].startswith("data:image/png;base64,") for p in parts[:-1])


def test_text_baseline_sends_the_same_items(server):
    remote = make_target(f"openai:http://127.0.0.1:{server.port}/v1:tiny-glyph")
    server.requests.clear()
    its = items(3)
    img = evaluate(CFG, its, remote, progress=False)
    txt = evaluate(CFG, its, remote, as_text=True, progress=False)
    assert [x["id"] for x in img.rows] == [x["id"] for x in txt.rows]
    sent = server.requests[3:]
    assert [r["messages"][0]["content"] for r in sent] == [f"{it.context}\n\n{it.question}" for it in its]
    assert [r["messages"][0]["content"][-1]["text"] for r in server.requests[:3]] == [it.question for it in its]
    assert txt.compression == 1.0 and all(x["visual_tokens"] == 0 for x in txt.rows)


def test_text_baseline_sends_a_multi_turn_item_as_chat(local, server):
    """An item with messages (MRCR) goes to the text baseline as that conversation, in process and to an endpoint;
    its pages (image mode) stay the flattened context."""
    turns = [{"role": "user", "content": "write a poem about tapirs"}, {"role": "assistant", "content": "Tapirs roam."},
             {"role": "user", "content": "Prepend AbC1 to the 1st poem about tapirs."}]
    it = Item(id="m0", context="User: write a poem about tapirs\nAssistant: Tapirs roam.", question=turns[-1]["content"],
              answers=["AbC1Tapirs roam."], metric="mrcr", max_new_tokens=4, messages=turns,
              metadata={"random_string_to_prepend": "AbC1"})
    remote = make_target(f"openai:http://127.0.0.1:{server.port}/v1:tiny-glyph")
    evaluate(CFG, [it], remote, as_text=True, progress=False)
    assert server.requests[-1]["messages"] == turns
    r = evaluate(CFG, [it], local, as_text=True, progress=False)
    assert not r.rows[0].get("error") and r.rows[0]["visual_tokens"] == 0
    with pytest.raises(ValueError, match="ending with a user message"):
        Item(id="bad", context="x", question="q", answers=["a"], messages=turns[:2])


class Killed(Exception):
    pass


def test_interrupted_run_resumes(local, tmp_path):
    calls = []
    real = local.answer

    def flaky(item, config, *, as_text=False):
        calls.append(item.id)
        if len(calls) == 3:
            raise Killed
        return real(item, config, as_text=as_text)

    local.answer = flaky
    try:
        with pytest.raises(Killed):
            evaluate(CFG, items(), local, out=tmp_path, progress=False)
        path = tmp_path / "results.jsonl"
        assert [x["id"] for x in read_rows(path)] == ["q0", "q1"]
        with open(path, "a") as f:
            f.write('{"id": "q2", "torn')  # a kill in the middle of a write
        calls.clear()
        r = evaluate(CFG, items(), local, out=tmp_path, progress=False)
    finally:
        del local.answer
    assert calls == ["q2", "q3"]  # finished items are not run again
    assert [x["id"] for x in r.rows] == ["q0", "q1", "q2", "q3"]
    assert [x["id"] for x in read_rows(path)] == ["q0", "q1", "q2", "q3"]
    t = evaluate(CFG, items(), local, out=tmp_path, progress=False, as_text=True)  # another mode: its own rows
    assert [x["mode"] for x in t.rows] == ["text"] * 4 and len(read_rows(path)) == 8


def test_too_long_item_is_recorded_not_lost(ckpt, tmp_path):
    from glyph_rt.models.tiny import tiny_glm4v_checkpoint

    small = make_target(str(tiny_glm4v_checkpoint(tmp_path / "small", max_positions=64)), device="cpu")
    r = evaluate(CFG, items(1), small, progress=False)
    assert r.rows[0]["score"] == 0.0 and "positions" in r.rows[0]["error"] and r.errors == 1


def test_bad_input():
    with pytest.raises(ValueError, match="answers"):
        Item(id="x", context="c", question="q", answers=[])
    with pytest.raises(ValueError, match="metric 'nope' is unknown"):
        Item(id="x", context="c", question="q", answers=["a"], metric="nope")
    assert Item(id="x", context="c", question="q", answers=["a"], metadata=None).metadata == {}  # "metadata": null
    with pytest.raises(ValueError, match="item x: metadata must be an object"):
        Item(id="x", context="c", question="q", answers=["a"], metadata=["task"])
    with pytest.raises(ValueError, match="unique"):
        evaluate(CFG, [items(1)[0], items(1)[0]], "openai:http://127.0.0.1:9/v1:m", progress=False)
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        make_target("/nonexistent/ckpt")
    with pytest.raises(ValueError, match="openai:URL"):
        make_target("openai:localhost")
    assert parse_openai_spec("openai:http://h:8000/v1:glyph") == ("http://h:8000/v1", "glyph")
    assert parse_openai_spec("openai:http://h:8000") == ("http://h:8000/v1", None)
    assert parse_openai_spec("openai:https://api.x.com/v1") == ("https://api.x.com/v1", None)
    # model names with ':' (Ollama's tags) and '/' (hub names)
    assert parse_openai_spec("openai:http://h:11434/v1:llama3:8b") == ("http://h:11434/v1", "llama3:8b")
    assert parse_openai_spec("openai:http://h:8000:org/name") == ("http://h:8000/v1", "org/name")
    assert parse_openai_spec("openai:http://[::1]:8000/v1/:m") == ("http://[::1]:8000/v1", "m")
    with pytest.raises(ValueError, match="empty model name"):
        parse_openai_spec("openai:http://h:8000/v1:")


def test_concurrent_run_stops_on_a_server_failure_and_resumes(tmp_path):
    from glyph_rt.eval import Reply, Target

    class Endpoint(Target):
        name, concurrent, down = "endpoint", True, {"q2"}

        def answer(self, item, config, *, as_text=False):
            if item.id in self.down:
                raise RuntimeError("http://x/v1: cannot reach the server")
            return Reply(item.answers[0], 0, 0, 0.001)

    t = Endpoint()
    with pytest.raises(RuntimeError, match="cannot reach"):
        evaluate(CFG, items(), t, as_text=True, out=tmp_path, progress=False, concurrency=2)
    kept = {x["id"] for x in read_rows(tmp_path / "results.jsonl")}
    assert "q2" not in kept
    t.down = set()
    r = evaluate(CFG, items(), t, as_text=True, out=tmp_path, progress=False, concurrency=2)
    assert r.accuracy == 100.0 and len(read_rows(tmp_path / "results.jsonl")) == 4


class Verbose(Target):
    """Answers every item with a sentence around its answer, as a chatty model does."""
    name = "verbose"

    def answer(self, item, config, *, as_text=False):
        from glyph_rt.eval.targets import Reply

        return Reply(f"Looking at page 3, the total comes to {item.metadata['spelled']} dollars.", 1, 10, 0.0)


def test_mmlongbench_scores_the_extracted_answer(tmp_path):
    """An extractor behind a real OpenAI-compatible endpoint turns each response into the short answer that
    MMLongBench-Doc's rule-based score reads; rows keep both; a rerun without it scores the raw response again."""
    import json
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from glyph_rt.eval.extract import AnswerExtractor

    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            prompt = body["messages"][-1]["content"]
            seen.append(prompt)
            words = {"forty-two": "42", "seven": "7"}
            short = next((v for k, v in words.items() if k in prompt), "Not answerable")
            said = f"Extracted answer: {short}\nAnswer format: Integer"
            out = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                              "choices": [{"index": 0, "finish_reason": "stop",
                                           "message": {"role": "assistant", "content": said}}]})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out.encode())

        def log_message(self, *a):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    its = [Item(id=f"d{i}", context="", question=f"Answer from the pages.\n\nQuestion: {q}", answers=[a],
                metric="mmlongbench", images=[str(tmp_path / "p.png")],
                metadata={"answer_format": "Int", "question": q, "spelled": w, "kind": "SP"})
           for i, (q, a, w) in enumerate([("What is the total?", "42", "forty-two"), ("How many?", "8", "seven")])]
    try:
        ext = AnswerExtractor(f"openai:http://127.0.0.1:{server.server_port}/v1:judge")
        r = evaluate(CFG, its, Verbose(), out=tmp_path / "run", progress=False, extractor=ext, tokenizer=None)
        assert [x["extracted"] for x in r.rows] == ["42", "7"] and [x["score"] for x in r.rows] == [1.0, 0.0]
        assert all(x["extractor"] == "judge" and x["prediction"].startswith("Looking") for x in r.rows)
        assert "Question: What is the total?\n" in seen[0] and "integer" in seen[0] and "Answer from" not in seen[0]
        again = evaluate(CFG, its, Verbose(), out=tmp_path / "run", progress=False, extractor=ext, tokenizer=None)
        assert len(seen) == 2 and again.rows == r.rows  # resumed: nothing asked again
    finally:
        server.shutdown()
    raw = evaluate(CFG, its, Verbose(), out=tmp_path / "run", progress=False, tokenizer=None)
    assert [x["score"] for x in raw.rows] == [0.0, 0.0] and "extracted" not in raw.rows[0]
    rows = read_rows(tmp_path / "run" / "results.jsonl")  # the rerun's rows replace the extracted ones
    assert len(rows) == 2 and all("extractor" not in x for x in rows)


class Said(Target):
    """An extractor's target that replies `text` and keeps the prompts it was asked."""
    name = "judge"

    def __init__(self, text):
        self.text, self.asked = text, []

    def answer(self, item, config, *, as_text=False):
        from glyph_rt.eval.targets import Reply

        self.asked.append(item.text_prompt)
        return Reply(self.text, 0, 0, 0.0)


def test_the_extraction_prompt_never_tells_the_reference_answers_format():
    """MMLongBench-Doc's extractor decides the format itself: the prompt is the same whatever the gold answer
    (an unanswerable item's "Not answerable" is not given away); the reply's "Extracted answer:" line is the answer."""
    from glyph_rt.eval.extract import AnswerExtractor

    ext = AnswerExtractor(Said("The response gives a number.\nExtracted answer: 5 million\nAnswer format: String"))
    gold = {"Int": "12", "Float": "3.5", "Str": "red", "List": "['a', 'b']", "None": "Not answerable"}
    prompts = {ext.prompt(Item(id=f"m{f}", context="", images=["p.png"], question="Q", answers=[a],
                               metric="mmlongbench", metadata={"answer_format": f, "question": "What revenue?"}),
                          "The 2031 revenue was 5 million dollars.") for f, a in gold.items()}
    assert len(prompts) == 1
    it = Item(id="u", context="", images=["p.png"], question="Q", answers=["Not answerable"], metric="mmlongbench",
              metadata={"answer_format": "None", "question": "What revenue?"})
    assert ext(it, "The 2031 revenue was 5 million dollars.") == "5 million"


def test_rows_extracted_with_another_prompt_are_extracted_again(tmp_path):
    import json

    from PIL import Image

    from glyph_rt.eval.extract import AnswerExtractor

    Image.new("RGB", (8, 8), "white").save(tmp_path / "p.png")
    its = [Item(id="d0", context="", question="Q", answers=["42"], metric="mmlongbench",
                images=[str(tmp_path / "p.png")], metadata={"answer_format": "Int", "question": "Q", "spelled": "x"})]
    judge = Said("Extracted answer: 42\nAnswer format: Integer")
    ext = AnswerExtractor(judge)
    first = evaluate(CFG, its, Verbose(), out=tmp_path / "run", progress=False, extractor=ext, tokenizer=None)
    assert first.rows[0]["score"] == 1.0 and len(judge.asked) == 1
    evaluate(CFG, its, Verbose(), out=tmp_path / "run", progress=False, extractor=ext, tokenizer=None)
    assert len(judge.asked) == 1  # resumed
    path = tmp_path / "run" / "results.jsonl"
    old = {k: v for k, v in json.loads(path.read_text()).items() if k != "extraction_prompt"}
    path.write_text(json.dumps(old) + "\n")  # a row from before: extracted with the prompt that told the format
    evaluate(CFG, its, Verbose(), out=tmp_path / "run", progress=False, extractor=ext, tokenizer=None)
    assert len(judge.asked) == 2


def test_item_render_config_overrides_the_runs(local, tmp_path):
    """An item's own render config (Glyph's dashed keys, as a row of Glyph's evaluation data carries) renders its
    pages over the run's config: a larger font makes more pages; a bad key names the item."""
    base = items(2)
    base[1].render_config = {"font-size": 24, "margin-x": 4}
    r = evaluate(CFG, base, local, out=tmp_path / "run", progress=False)
    plain, own = r.rows
    assert own["pages"] > plain["pages"] >= 1 and "error" not in own
    with pytest.raises(ValueError, match="item z: render_config: .*unknown Glyph key"):
        Item(id="z", context="c", question="q", answers=["a"], render_config={"font-size": 9, "fontsize": 9})


def test_ruler_items_resumed_with_another_tokenizer_are_refused(ckpt, tmp_path):
    """RULER's lengths are counted in the run's tokenizer: another one into the same --out would score the old
    items under the new lengths."""
    from glyph_rt.eval.suite import run_suite

    opts = dict(out=tmp_path, tasks=["vt"], lengths=["1k"], limit=1, progress=False)
    run_suite("ruler", [], **opts)
    run_suite("ruler", [], **opts)  # the same run resumes
    with pytest.raises(ValueError, match=r"holds the items of another run \(tokenizer: None then '.*'\)"):
        run_suite("ruler", [], tokenizer=ckpt, **opts)


def test_items_are_never_left_without_their_spec(tmp_path, monkeypatch):
    """A kill while the items are written leaves their spec alone (a rerun builds them again with its own
    options); items without a spec are refused, naming what to remove."""
    from glyph_rt.eval import suite

    def killed(items, path):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(suite, "save_items", killed)
        with pytest.raises(KeyboardInterrupt):
            suite.run_suite("ruler", [], out=tmp_path, tasks=["vt"], lengths=["1k"], limit=1, progress=False)
    assert not (tmp_path / "items.jsonl").exists()
    suite.run_suite("ruler", [], out=tmp_path, tasks=["niah_single_1"], lengths=["1k"], limit=2, progress=False)
    assert [it.id for it in load_items(tmp_path / "items.jsonl")] == ["niah_single_1-1024-0", "niah_single_1-1024-1"]
    (tmp_path / "items_spec.json").unlink()  # as a kill between the two writes before left it
    with pytest.raises(ValueError, match="holds items.jsonl but no items_spec.json .*remove items.jsonl there"):
        suite.run_suite("ruler", [], out=tmp_path, tasks=["vt"], lengths=["2k"], limit=1, progress=False)


def test_ruler_items_resume_with_the_default_lengths_given_or_not(tmp_path):
    """No lengths means RULER's 4k: a run started without them resumes with 4k given, and the other way round."""
    from glyph_rt.eval.suite import run_suite

    opts = dict(tasks=["vt"], limit=1, progress=False)
    run_suite("ruler", [], out=tmp_path / "a", **opts)  # stores lengths: null, as older runs did
    run_suite("ruler", [], out=tmp_path / "a", lengths=["4k"], **opts)
    run_suite("ruler", [], out=tmp_path / "a", lengths=[4096], **opts)  # the CLI's parsed form
    with pytest.raises(ValueError, match=r"holds the items of another run \(lengths: None then \['8k'\]\)"):
        run_suite("ruler", [], out=tmp_path / "a", lengths=["8k"], **opts)
    run_suite("ruler", [], out=tmp_path / "b", lengths=["4k"], **opts)
    run_suite("ruler", [], out=tmp_path / "b", **opts)


@pytest.mark.parametrize("reply,answer", [
    ("Extracted answer: ['red',\n 'blue']\nAnswer format: List", "['red',\n 'blue']"),  # a list over lines
    ("Extracted answer:\n['red', 'blue']\nAnswer format: List", "['red', 'blue']"),  # the answer on the next line
    ("The response names two colours.\nExtracted answer: 12\nAnswer format: Integer", "12"),
    # no "Extracted answer:" as the reference writes it: its split fails, "Failed to extract" (scored 0)
    ("extracted answer: 12", "Failed to extract"),
    ("Short answer: 7\n", "Failed to extract"),
    ("12", "Failed to extract"),
    ("Answer: 12\nAnswer format: Integer", "Failed to extract"),
    ("Answer format: List\nExtracted answer: ['red', 'blue']", "Failed to extract"),
])
def test_the_extraction_is_read_as_mmlongbench_docs_reference_reads_it(reply, answer):
    """reply.split("Answer format:")[0].split("Extracted answer:")[1].strip(), on the whole reply; where that
    fails, "Failed to extract" (run_api.py's except)."""
    from glyph_rt.eval.extract import AnswerExtractor
    from glyph_rt.eval.metrics import score

    it = Item(id="m", context="", images=["x.png"], question="Which colours?", answers=["['red', 'blue']"],
              metric="mmlongbench", metadata={"answer_format": "List", "question": "Which colours?"})
    got = AnswerExtractor(Said(reply))(it, "The colours are red and blue.")
    assert got == answer
    if "red" in answer:
        assert score(it, got) == 1.0


class Budgeted(Target):
    """An extractor's target that replies `text` (or is rejected, as a server's 400, with text None) and keeps the
    budgets it was given."""
    name = "judge"

    def __init__(self, text):
        self.text, self.budgets = text, []

    def answer(self, item, config, *, as_text=False):
        from glyph_rt.eval.targets import Reply

        self.budgets.append(item.max_new_tokens)
        if self.text is None:
            raise ValueError("http://judge/v1: the server rejected the request (400): too long")
        return Reply(self.text, 0, 0, 0.0)


class Counted(Target):
    name = "model"

    def __init__(self, reply):
        self.reply, self.asked = reply, 0

    def answer(self, item, config, *, as_text=False):
        from glyph_rt.eval.targets import Reply

        self.asked += 1
        return Reply(self.reply, 1, 10, 0.0)


def mmlongbench_items(tmp_path, answer="12", fmt="Int"):
    from PIL import Image

    Image.new("RGB", (8, 8), "white").save(tmp_path / "p.png")
    return [Item(id="d0", context="", question="How many?", answers=[answer], metric="mmlongbench",
                 images=[str(tmp_path / "p.png")], metadata={"answer_format": fmt, "question": "How many?"})]


def test_a_failed_extraction_scores_0_and_a_resume_extracts_the_saved_reply_again(tmp_path):
    """As run_api.py: a reply without "Extracted answer:" is "Failed to extract" and scores 0 (even where the
    metric would score the words: a Str answer's ANLS); an extraction the server rejects scores 0 (not the raw
    response), and a resume asks the extractor again on the saved reply, not the model."""
    from glyph_rt.eval.extract import FAILED

    its = mmlongbench_items(tmp_path, answer="Failed to extract", fmt="Str")
    r = evaluate(CFG, its, Counted("Failed to extract"), progress=False, extractor=Budgeted("Failed to extract"),
                 tokenizer=None)
    assert r.rows[0]["extracted"] == FAILED and r.rows[0]["score"] == 0.0

    its = mmlongbench_items(tmp_path)
    model = Counted("There are 12.")
    r = evaluate(CFG, its, model, out=tmp_path / "run", progress=False, extractor=Budgeted(None), tokenizer=None)
    row = r.rows[0]
    assert row["score"] == 0.0 and row["extracted"] == FAILED and row["error"].startswith("extraction failed: ")
    judge = Budgeted("Extracted answer: 12\nAnswer format: Integer")
    again = evaluate(CFG, its, model, out=tmp_path / "run", progress=False, extractor=judge, tokenizer=None)
    assert model.asked == 1 and len(judge.budgets) == 1  # the extractor asked again, the model not
    assert again.rows[0]["score"] == 1.0 and "error" not in again.rows[0]
    assert again.rows[0]["prediction"] == "There are 12." and again.rows[0]["visual_tokens"] == 10
    assert read_rows(tmp_path / "run" / "results.jsonl") == again.rows
    evaluate(CFG, its, model, out=tmp_path / "run", progress=False, extractor=judge, tokenizer=None)
    assert model.asked == 1 and len(judge.budgets) == 1  # resumed: nothing asked


def test_the_extractor_may_write_256_tokens_as_the_reference():
    from glyph_rt.eval.extract import AnswerExtractor

    judge = Budgeted("Extracted answer: 12\nAnswer format: Integer")
    AnswerExtractor(judge)(Item(id="d", context="", images=["p.png"], question="Q", answers=["12"],
                                metric="mmlongbench", metadata={"answer_format": "Int"}), "12")
    assert judge.budgets == [256]


def test_a_summary_leaves_out_the_rows_of_items_no_longer_in_items_jsonl(tmp_path, capsys):
    """Removing items.jsonl builds the items again (as the refusal says); the summary and plots are of the new
    items only (the old rows stay in results.jsonl, counted as left out): other tasks, or the same ids drawn from
    another seed."""
    import json

    from glyph_rt.eval import Reply
    from glyph_rt.eval.suite import run_suite

    class Oracle(Target):
        concurrent = True

        def __init__(self, name, right):
            self.name, self.right = name, right

        def answer(self, item, config, *, as_text=False):
            return Reply(" ".join(item.answers) if self.right else "no idea", 0, 0, 0.0)

    out = tmp_path / "ruler"
    kw = dict(out=out, as_text=True, progress=False, lengths=["1k"], limit=2)
    run_suite("ruler", [Oracle("a", True), Oracle("b", True)], tasks=["niah_single_1"], **kw)
    with pytest.raises(ValueError, match=r"remove items.jsonl there to build the items again \(results.jsonl's rows "
                                         r"of items that stay the same are reused; the others stay in the file, left "
                                         r"out of the summary\)"):
        run_suite("ruler", [Oracle("a", False)], tasks=["vt"], **kw)
    (out / "items.jsonl").unlink()
    s = run_suite("ruler", [Oracle("a", False)], tasks=["vt"], **kw)
    [run] = s["runs"]
    assert (run["items"], run["accuracy"], run["by_task"]) == (2, 0.0, {"vt": 0.0}) and s["left_out_rows"] == 4
    assert json.loads((out / "summary.json").read_text()) == s
    md = (out / "summary.md").read_text()
    assert "Niah-S1" not in md and "4 rows of results.jsonl are left out of this summary" in md
    assert "4 rows of results.jsonl are left out" in capsys.readouterr().err
    assert len((out / "results.jsonl").read_text().splitlines()) == 6  # nothing removed from the file
    (out / "items.jsonl").unlink()
    s = run_suite("ruler", [Oracle("a", True)], tasks=["vt"], seed=1, **kw)  # the same ids, other items
    assert [(r["target"], r["items"], r["accuracy"]) for r in s["runs"]] == [("a", 2, 100.0)]
    assert s["left_out_rows"] == 6  # the niah rows, and seed 0's vt rows: other items under this run's ids
    fresh = run_suite("ruler", [Oracle("a", True)], out=tmp_path / "fresh", as_text=True, progress=False,
                      lengths=["1k"], limit=2, tasks=["vt"])
    assert "left_out_rows" not in fresh and "left out" not in (tmp_path / "fresh" / "summary.md").read_text()
