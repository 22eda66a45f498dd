"""bench_serve's quick CPU mode: a tiny checkpoint, real HTTP, a results file."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def test_bench_serve_quick(tmp_path):
    from bench.bench_serve import main

    assert main(["--quick", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "serve-cpu.json").read_text())
    assert [r["path"] for r in data["rows"]] == ["serial_generate", "engine", "document_cache",
                                                   "batch_runner"]
    assert data["summary"]["errors"] == 0 and data["summary"]["throughput_vs_serial"] > 0
    engine = data["rows"][1]
    assert engine["requests"] == 4 and engine["ttft_p50_s"] > 0 and engine["itl_p50_s"] > 0
    batch = data["rows"][3]
    assert batch["requests"] == 4 and batch["errors"] == 0 and data["summary"]["batch_vs_serial"] > 0
    assert batch["tokens_per_s"] == 4 * 4 / batch["seconds"]  # every answer's 4 tokens (ignore_eos)
