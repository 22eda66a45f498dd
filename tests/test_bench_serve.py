"""bench_serve's quick CPU mode: a tiny checkpoint, real HTTP, a results file."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def test_bench_serve_quick(tmp_path):
    from bench.bench_serve import main

    assert main(["--quick", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "serve-cpu.json").read_text())
    assert [r["path"] for r in data["rows"]] == ["serial_generate", "engine", "engine_process", "document_cache",
                                                   "batch_runner", "engine_alone"]
    assert data["summary"]["errors"] == 0 and data["summary"]["throughput_vs_serial"] > 0
    rows = {r["path"]: r for r in data["rows"]}
    for path in ("engine", "engine_process"):
        r = rows[path]
        assert r["requests"] == 4 and r["errors"] == 0 and r["ttft_p50_s"] > 0 and r["itl_p50_s"] > 0
        assert r["tpot_p99_s"] >= r["tpot_p50_s"] > 0  # 4 tokens each (ignore_eos): 3 intervals per request
    assert data["summary"]["engine_thread_vs_serial"] > 0 and "notes" not in data["summary"]
    serial = rows["serial_generate"]  # the requests it ran, not --serial's number
    assert serial["requests"] == 2 and serial["requests_per_s"] == 2 / serial["seconds"]
    assert rows["document_cache"]["errors"] == 0
    assert rows["engine"]["client_cpu_s"] > 0
    batch = rows["batch_runner"]
    assert batch["requests"] == 4 and batch["errors"] == 0 and data["summary"]["batch_vs_serial"] > 0
    assert batch["tokens_per_s"] == 4 * 4 / batch["seconds"]  # every answer's 4 tokens (ignore_eos)
    alone = rows["engine_alone"]
    assert alone["requests"] == 4 and alone["errors"] == 0 and data["summary"]["engine_alone_vs_serial"] > 0


def test_bench_serve_compares_with_another_openai_server(tmp_path):
    """--compare-url: the same requests, pages rendered by the benchmark and sent as PNG data URIs, against another
    server of the same model (here a second glyph_rt server, which speaks the protocol vLLM does)."""
    from bench.bench_serve import main
    from glyph_rt import RenderConfig
    from glyph_rt.models import GlyphModel
    from glyph_rt.models.tiny import tiny_glm4v_checkpoint
    from glyph_rt.serve.app import ServerThread, build_app
    from glyph_rt.serve.engine import Engine
    from glyph_rt.serve.inputs import InputOptions
    from glyph_rt.serve.service import ChatService

    ckpt = tiny_glm4v_checkpoint(tmp_path / "tiny")
    gm = GlyphModel.from_pretrained(str(ckpt), render_config=RenderConfig())
    svc = ChatService(Engine(gm).start(), InputOptions(gm.render_config, "other"))
    try:
        with ServerThread(build_app(svc)) as other:
            assert main(["--quick", "--model", str(ckpt), "--compare-url", other.url + "/v1",
                         "--out", str(tmp_path / "out")]) == 0
    finally:
        svc.shutdown()
    data = json.loads((tmp_path / "out" / "serve-cpu.json").read_text())
    row = data["rows"][-1]
    assert row["path"] == "other_server" and row["server"].startswith("http://127.0.0.1")
    assert row["requests"] == 4 and row["errors"] == 0 and row["tokens_per_s"] > 0
    assert data["summary"]["engine_vs_other_server"] > 0


def test_bench_serve_vllm_on_needs_vllm_and_a_gpu(tmp_path):
    import pytest

    from bench.bench_serve import main, vllm_available

    if vllm_available():
        pytest.skip("vLLM and a GPU are here")
    with pytest.raises(SystemExit, match="needs vLLM installed and a CUDA GPU"):
        main(["--quick", "--vllm", "on", "--out", str(tmp_path)])


def fake_server(hits: list):
    """An OpenAI-compatible server without a model: /ok/v1 streams each answer as 4 chunks of text 20 ms apart, 8
    tokens in all (as glyph_rt's server merges queued tokens into one chunk), then the usage; /half/v1 answers
    every other request 503; /bad/v1 answers 400."""
    import asyncio
    import json

    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, StreamingResponse

    from glyph_rt.serve.protocol import error

    app = FastAPI()

    def sse(choices: list, usage=None) -> str:
        return "data: " + json.dumps({"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
                                      "choices": choices, **({"usage": usage} if usage else {})}) + "\n\n"

    async def answer():
        yield sse([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        for k in range(4):
            await asyncio.sleep(0.02)
            yield sse([{"index": 0, "delta": {"content": f"w{k} w "}, "finish_reason": "length" if k == 3 else None}])
        yield sse([], {"prompt_tokens": 5, "completion_tokens": 8, "total_tokens": 13})
        yield "data: [DONE]\n\n"

    @app.get("/{kind}/v1/models")
    async def models(kind: str):
        return {"object": "list", "data": [{"id": "m", "object": "model"}]}

    @app.post("/{kind}/v1/chat/completions")
    async def chat(kind: str):
        hits.append(kind)
        if kind == "bad" or (kind == "half" and len(hits) % 2):
            status = 400 if kind == "bad" else 503
            return JSONResponse(error("no", status), status_code=status)
        return StreamingResponse(answer(), media_type="text/event-stream")

    return app


def test_load_counts_what_succeeded_and_reports_tpot():
    """Throughput of the requests that succeeded; ITL per chunk with text, TPOT per token from the usage."""
    import asyncio

    from bench.bench_serve import load
    from glyph_rt.serve.app import ServerThread

    with ServerThread(fake_server([])) as s:
        res = asyncio.run(load(s.url + "/half/v1", ["doc"] * 4, 2, 2, 8))
        ok = asyncio.run(load(s.url + "/ok/v1", ["doc"] * 2, 2, 1, 8))
    assert res["requests"] == 4 and res["errors"] == 2 and "HTTP 503" in res["error_samples"][0]
    assert res["requests_per_s"] == 2 / res["seconds"] and res["tokens_per_s"] == 2 * 8 / res["seconds"]
    assert len(res["_ttft"]) == 2 and len(res["_itl"]) == 2 * 3  # the two that succeeded: 3 gaps between 4 chunks
    for r in (res, ok):
        # ~60 ms from the first text to the last over 7 tokens: ~9 ms per token, ~20 ms per chunk
        assert 0.005 < r["tpot_p50_s"] < r["itl_p50_s"] / 1.5 and r["tpot_p99_s"] >= r["tpot_p50_s"]


def test_a_ratio_with_failed_requests_is_left_out():
    """Every run's errors count; a ratio whose side had some is None, with a note, and the GPU suite's summary says
    why the figure is missing."""
    from bench.bench_serve import ITL_NOTE, summarise
    from bench.summary import serve_followup, serve_load

    done = {"serial_generate": {"requests_per_s": 1.0},
            "engine": {"requests_per_s": 3.0, "errors": 0, "clients": 2, "requests": 4},
            "engine_process": {"requests_per_s": 3.0, "errors": 0, "clients": 2, "requests": 4},
            "document_cache": {"doc_chars": 100, "ttft_first_s": 0.2, "ttft_followup_s": 0.01, "errors": 1},
            "other_server": {"server": "vllm", "requests_per_s": 0.0, "errors": 4}}
    s = summarise(done)
    assert s["errors"] == 5 and s["throughput_vs_serial"] == 3.0 and s["engine_thread_vs_serial"] == 3.0
    assert s["engine_vs_other_server"] is None and s["ttft_followup_fraction"] is None
    assert s["notes"] == ["ttft_followup_fraction: left out, document_cache had 1 failed requests",
                          "engine_vs_other_server: left out, other_server had 4 failed requests"]
    assert "per token" in s["itl_note"] and "several tokens" in s["itl_note"]
    rows = [{"path": p, **r} for p, r in done.items()]
    assert serve_followup({"rows": rows, "summary": s}) == \
        "bench_serve: ttft_followup_fraction: left out, document_cache had 1 failed requests"
    assert serve_load({"rows": rows, "summary": s})[0] == 3.0
    done["engine_process"]["errors"] = 2
    s = summarise(done)
    assert s["throughput_vs_serial"] is None and "engine_process had 2" in serve_load({"rows": rows, "summary": s})
    del done["other_server"], done["document_cache"]
    done["engine_process"]["errors"] = 0
    assert summarise(done) == {"throughput_vs_serial": 3.0, "engine_thread_vs_serial": 3.0, "errors": 0,
                               "itl_note": ITL_NOTE}  # no notes when nothing was left out


def test_bench_serve_fails_when_the_compared_server_fails(tmp_path, capsys):
    """--compare-url at a server that fails every request: no ratio against it, and the exit status is 1 (the GPU
    suite's bench-serve step: failed)."""
    from bench.bench_serve import main
    from glyph_rt.serve.app import ServerThread

    with ServerThread(fake_server([])) as other:
        assert main(["--quick", "--compare-url", other.url + "/bad/v1", "--out", str(tmp_path)]) == 1
    def strict(name):
        raise AssertionError(f"{name} in the results file: not JSON")

    data = json.loads((tmp_path / "serve-cpu.json").read_text(), parse_constant=strict)
    assert data["rows"][-1]["path"] == "other_server" and data["rows"][-1]["errors"] == 4
    assert data["rows"][-1]["ttft_p50_s"] is None  # nothing measured: null, not NaN
    assert data["rows"][-1]["requests_per_s"] == 0.0
    assert data["summary"]["errors"] == 4 and data["summary"]["engine_vs_other_server"] is None
    assert data["summary"]["throughput_vs_serial"] > 0
    err = capsys.readouterr().err
    assert "bench_serve: 4 requests failed (other_server 4;" in err and "engine_vs_other_server: left out" in err
