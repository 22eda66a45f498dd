"""glyph-rt batch: the OpenAI Batch API file format, resumable, safe to kill."""
import json
import signal
import subprocess
import sys
import time

import pytest

from glyph_rt import RenderConfig
from glyph_rt.models import GlyphModel
from glyph_rt.models.tiny import tiny_glm4v_checkpoint
from glyph_rt.render.textio import sample_text
from glyph_rt.serve.batch import BatchFileError, run_batch
from glyph_rt.serve.engine import Engine
from glyph_rt.serve.inputs import InputOptions
from glyph_rt.serve.service import ChatService

from conftest import EXACT  # fp32 on the test device: answers compared token for token

CFG = RenderConfig(page_size=(120, 90))
TEXT = sample_text()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_glm4v_checkpoint(tmp_path_factory.mktemp("glm4v"))


def write_requests(path, n, max_tokens=lambda i: 6, bad=(), **extra):
    with open(path, "w") as f:
        for i in range(n):
            body = {"model": "tiny", "max_tokens": max_tokens(i), "temperature": 0, **extra,
                    "messages": [{"role": "user", "content": [
                        {"type": "glyph", "glyph": {"text": TEXT[i * 40:i * 40 + 300]}},
                        {"type": "text", "text": f"Question {i}?"}]}]}
            if i in bad:
                body["frobnicate"] = True
            f.write(json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
                                "body": body}) + "\n")


def results(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_batch_runs_skips_done_ids_and_reports_bad_lines(checkpoint, tmp_path, capsys):
    gm = GlyphModel.from_pretrained(checkpoint, render_config=CFG, **EXACT)
    svc = ChatService(Engine(gm, max_batch=4).start(), InputOptions(CFG, "tiny"), 8)
    try:
        inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
        write_requests(inp, 10, bad={3})
        c = run_batch(svc, inp, out, progress=False)
        assert c == {"total": 10, "skipped": 0, "retried": 0, "ok": 9, "failed": 1, "failed_before": 0}
        rows = {r["custom_id"]: r for r in results(out)}
        assert len(rows) == 10 and rows["req-3"]["response"]["status_code"] == 400
        assert "frobnicate" in rows["req-3"]["response"]["body"]["error"]["message"]
        body = rows["req-0"]["response"]["body"]
        assert body["object"] == "chat.completion" and body["usage"]["completion_tokens"] <= 6
        answer = gm.generate(TEXT[:300], "Question 0?", max_new_tokens=6)[0].text
        assert body["choices"][0]["message"]["content"] == answer
        assert run_batch(svc, inp, out, progress=False)["skipped"] == 10 and len(results(out)) == 10
        # the exit status says whether the output holds an error line, on a rerun too
        from glyph_rt.cli import main

        argv = ["batch", "--model", str(checkpoint), "--input", str(inp), "--output", str(out), "--quiet",
                "--device", "cpu", "--served-model-name", "tiny"]
        assert main(argv) == 1 and "1 of them failed" in capsys.readouterr().err
        (tmp_path / "dup.jsonl").write_text(inp.read_text().splitlines()[0] + "\n" + inp.read_text().splitlines()[0])
        with pytest.raises(BatchFileError, match="appears twice"):
            run_batch(svc, tmp_path / "dup.jsonl", tmp_path / "o2.jsonl", progress=False)
        # a line whose preparation fails in a way nothing checked for is answered with a 500, and the file goes on
        prepare = svc.prepare

        def failing(req):
            if "Question 1?" in json.dumps(req.model_dump()):
                raise AttributeError("simulated")
            return prepare(req)

        svc.prepare = failing
        assert run_batch(svc, inp, tmp_path / "o3.jsonl", progress=False) == {"total": 10, "skipped": 0,
                                                                             "retried": 0, "ok": 8, "failed": 2,
                                                                             "failed_before": 0}
        rows = {r["custom_id"]: r for r in results(tmp_path / "o3.jsonl")}
        assert rows["req-1"]["response"]["status_code"] == 500 and "AttributeError: simulated" in \
            rows["req-1"]["response"]["body"]["error"]["message"]
        # a rerun runs the server's failure again and replaces its line; the refused request keeps its 400
        svc.prepare = prepare
        assert run_batch(svc, inp, tmp_path / "o3.jsonl", progress=False) == {"total": 10, "skipped": 9,
                                                                             "retried": 1, "ok": 1, "failed": 0,
                                                                             "failed_before": 1}  # req-3's 400
        rows = results(tmp_path / "o3.jsonl")
        assert sorted(r["custom_id"] for r in rows) == sorted(f"req-{i}" for i in range(10))
        by_id = {r["custom_id"]: r["response"]["status_code"] for r in rows}
        assert by_id["req-1"] == 200 and by_id["req-3"] == 400
        # logprobs reach the result lines
        write_requests(tmp_path / "lp.jsonl", 2, logprobs=True, top_logprobs=1)
        run_batch(svc, tmp_path / "lp.jsonl", tmp_path / "lp_out.jsonl", progress=False)
        for row in results(tmp_path / "lp_out.jsonl"):
            choice, usage = row["response"]["body"]["choices"][0], row["response"]["body"]["usage"]
            assert len(choice["logprobs"]["content"]) == usage["completion_tokens"]
            assert all(len(t["top_logprobs"]) == 1 for t in choice["logprobs"]["content"])
    finally:
        svc.shutdown()


def test_every_request_gets_one_line_and_the_run_ends(checkpoint, tmp_path, monkeypatch):
    import threading

    import glyph_rt.serve.batch as batch

    svc = ChatService(Engine(GlyphModel.from_pretrained(checkpoint, render_config=CFG, **EXACT), max_batch=4).start(),
                      InputOptions(CFG, "tiny"), 8)
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_requests(inp, 4, bad={2})
    lines = inp.read_text().splitlines()  # custom_ids with a lone surrogate: valid JSON strings, not UTF-8
    lines[1] = lines[1].replace('"req-1"', '"req-1\\ud800"')
    lines[2] = lines[2].replace('"req-2"', '"req-2\\udfff"')  # refused (an unknown field): its error line
    inp.write_text("\n".join(lines) + "\n")
    ids = ["req-0", "req-1\ud800", "req-2\udfff", "req-3"]
    response = batch.response

    def failing(rid, model, text, *a):  # building one result fails on the engine's thread
        if failing.once:
            failing.once = False
            raise ValueError("simulated")
        return response(rid, model, text, *a)

    failing.once = True
    monkeypatch.setattr(batch, "response", failing)

    def run():
        res = {}
        t = threading.Thread(target=lambda: res.update(c=run_batch(svc, inp, out, progress=False)), daemon=True)
        t.start()
        t.join(120)
        assert not t.is_alive(), "the run never ended"
        return res["c"]

    try:
        assert run() == {"total": 4, "skipped": 0, "retried": 0, "ok": 2, "failed": 2, "failed_before": 0}
        rows = {r["custom_id"]: r["response"] for r in results(out)}
        assert sorted(rows) == sorted(ids) and rows["req-2\udfff"]["status_code"] == 400
        failed = [r for r in rows.values() if r["status_code"] == 500]
        assert len(failed) == 1 and "ValueError: simulated" in failed[0]["body"]["error"]["message"]
        # the lines read back as the same ids: a rerun runs only the 500 again
        assert run() == {"total": 4, "skipped": 3, "retried": 1, "ok": 1, "failed": 0, "failed_before": 1}
        rows = {r["custom_id"]: r["response"]["status_code"] for r in results(out)}
        assert rows == {"req-0": 200, "req-1\ud800": 200, "req-2\udfff": 400, "req-3": 200}
    finally:
        svc.shutdown()


def test_batch_resumes_after_a_kill(checkpoint, tmp_path):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    n = 6
    write_requests(inp, n, max_tokens=lambda i: 24 + 12 * i, ignore_eos=True)  # they finish one by one
    cmd = [sys.executable, "-m", "glyph_rt.cli", "batch", "--model", str(checkpoint), "--input", str(inp),
           "--output", str(out), "--quiet", "--max-batch", "4", "--device", "cpu", "--served-model-name", "tiny"]
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (out.exists() and out.read_text().count("\n") >= 2):
        assert p.poll() is None, p.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    p.stderr.close()
    written = out.read_text().count("\n")
    assert 2 <= written < n
    with open(out, "ab") as f:
        f.write(b'{"id": "batch_req_cut", "custom_id": "req-')  # as if the kill had cut a write short
    svc = ChatService(Engine(GlyphModel.from_pretrained(checkpoint, render_config=CFG, **EXACT)).start(),
                      InputOptions(CFG, "tiny"), 8)
    try:
        assert run_batch(svc, inp, out, progress=False) == {"total": n, "skipped": written, "retried": 0,
                                                            "ok": n - written, "failed": 0, "failed_before": 0}
    finally:
        svc.shutdown()
    ids = [row["custom_id"] for row in results(out)]
    assert sorted(ids) == sorted(f"req-{i}" for i in range(n))  # no duplicate, none lost


@pytest.fixture
def no_load(monkeypatch):
    """The model must not load: ChatService.from_config records the config and stops the command."""
    pytest.importorskip("prometheus_client")
    from glyph_rt.serve import engine_process, service

    seen = []

    def stop(cls, cfg):
        seen.append(cfg)
        raise RuntimeError("the model would load here")

    monkeypatch.setattr(service.ChatService, "from_config", classmethod(stop))
    monkeypatch.setattr(engine_process, "EngineProcess", lambda cfg: stop(None, cfg))
    return seen


@pytest.mark.parametrize("lines, message", [
    (['{"custom_id": "a", "body": {"messages": []}}', '{"custom_id": "b", "body": {"mess'], "in.jsonl:2: not JSON"),
    (['{"custom_id": "a", "body": {}}', '{"custom_id": "a", "body": {}}'], "in.jsonl:2: custom_id 'a' appears twice"),
    (['{"custom_id": "a", "body": {}}', '{"body": {}}'], "in.jsonl:2: each line needs a non-empty string custom_id"),
    (['{"custom_id": "a", "body": {}}', '{"custom_id": "b"}'], "in.jsonl:2: body must be a JSON object"),
    (['{"custom_id": "a", "body": {}}', '{"custom_id": "\xff", "body": {}}'], "cannot read it ('utf-8' codec"),
])
def test_a_bad_input_file_fails_before_the_model_loads(tmp_path, no_load, capsys, lines, message):
    from glyph_rt.cli import main

    (tmp_path / "in.jsonl").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))  # \xff: not UTF-8
    argv = ["batch", "--model", str(tmp_path), "--input", str(tmp_path / "in.jsonl"), "--output",
            str(tmp_path / "out" / "r.jsonl"), "--device", "cpu", "--quiet"]
    assert main(argv) == 2
    assert message in capsys.readouterr().err and no_load == []
    (tmp_path / "in.jsonl").write_text(lines[0] + "\n")  # a good file: on to loading the model
    (tmp_path / "out" / "r.jsonl").write_text('{"not": "a batch result"}\n')  # but an output no run wrote
    assert main(argv) == 2
    assert "line 1 is not a batch result" in capsys.readouterr().err and no_load == []
    (tmp_path / "out" / "r.jsonl").unlink()
    assert main(argv) == 2 and "the model would load here" in capsys.readouterr().err and len(no_load) == 1


@pytest.mark.parametrize("cmd", ["serve", "batch"])
def test_cache_budgets_below_0_are_refused_before_the_model_loads(tmp_path, no_load, capsys, cmd):
    (tmp_path / "in.jsonl").write_text("")
    base = ["batch", "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "r.jsonl"), "--quiet"] \
        if cmd == "batch" else ["serve", "--port", "0", "--engine-in-process"]
    from glyph_rt.cli import main

    for flag in ("--cache-mb", "--kv-cache-mb", "--threshold"):
        for v in (["-0.5", "-1", "nan", "inf"] if flag != "--threshold" else ["-1"]):
            assert main([*base, "--model", str(tmp_path), "--device", "cpu", flag, v]) == 2, (flag, v)
            assert f"{flag} must be a number, 0 or more (0: " in capsys.readouterr().err and no_load == []
    # 0 keeps its meaning: no document cache; the KV budget left to the engine (None)
    assert main([*base, "--model", str(tmp_path), "--device", "cpu", "--cache-mb", "0", "--kv-cache-mb", "0"]) == 2
    assert "the model would load here" in capsys.readouterr().err
    assert no_load[0].cache_bytes == 0 and no_load[0].kv_cache_bytes is None


def test_a_request_for_another_endpoint_gets_an_error_line_and_the_file_goes_on(checkpoint, tmp_path):
    """As OpenAI's Batch API and vLLM's run_batch: a line for a url or method the server does not serve is answered
    with an error (response null), the other lines are answered, and a rerun keeps that line."""
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_requests(inp, 3)
    lines = inp.read_text().splitlines()
    lines[0] = lines[0].replace('"/v1/chat/completions"', '"/v1/completions"')
    lines[1] = lines[1].replace('"POST"', '"GET"')
    lines.append(json.dumps({"custom_id": "emb", "url": "/v1/embeddings"}))  # no body: nothing to check there
    inp.write_text("\n".join(lines) + "\n")
    svc = ChatService(Engine(GlyphModel.from_pretrained(checkpoint, render_config=CFG, **EXACT)).start(),
                      InputOptions(CFG, "tiny"), 8)
    try:
        assert run_batch(svc, inp, out, progress=False) == {"total": 4, "skipped": 0, "retried": 0, "ok": 1,
                                                            "failed": 3, "failed_before": 0}
        rows = {r["custom_id"]: r for r in results(out)}
        assert sorted(rows) == ["emb", "req-0", "req-1", "req-2"]
        assert rows["req-2"]["response"]["status_code"] == 200 and rows["req-2"]["error"] is None
        for cid, code, said in (("req-0", "unsupported_url", "'/v1/completions'"), ("req-1", "unsupported_method",
                                                                                   "'GET'"),
                                ("emb", "unsupported_url", "'/v1/embeddings'")):
            assert rows[cid]["response"] is None and rows[cid]["error"]["code"] == code
            assert said in rows[cid]["error"]["message"]
        # a rerun: every id is in the output; the error lines stay (not run again), and count as failed
        assert run_batch(svc, inp, out, progress=False) == {"total": 4, "skipped": 4, "retried": 0, "ok": 0,
                                                            "failed": 0, "failed_before": 3}
        assert len(results(out)) == 4
    finally:
        svc.shutdown()
