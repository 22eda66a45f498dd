"""bench_serve's quick CPU mode: a tiny checkpoint, real HTTP, a results file."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def test_bench_serve_quick(tmp_path):
    from bench.bench_serve import main

    assert main(["--quick", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "serve-cpu.json").read_text())
    assert [r["path"] for r in data["rows"]] == ["serial_generate", "engine", "document_cache"]
    assert data["summary"]["errors"] == 0 and data["summary"]["throughput_vs_serial"] > 0
    engine = data["rows"][1]
    assert engine["requests"] == 4 and engine["ttft_p50_s"] > 0 and engine["itl_p50_s"] > 0
