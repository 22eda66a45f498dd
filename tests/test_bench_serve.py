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
    assert data["summary"]["engine_thread_vs_serial"] > 0
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
