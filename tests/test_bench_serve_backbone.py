"""bench_serve_backbone's smoke mode: the text backbone and Glyph through one tiny server, a results file."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def test_bench_serve_backbone_smoke(tmp_path):
    from bench.bench_serve_backbone import main

    assert main(["--smoke", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "serve-backbone-cpu-smoke.json").read_text())
    assert data["bench"] == "serve-backbone"
    text, glyph = data["rows"]
    assert (text["arm"], glyph["arm"]) == ("text", "glyph")
    for row in (text, glyph):
        assert {"doc_tokens", "prompt_tokens", "pages", "visual_tokens", "ttft_s", "ttft_runs_s", "requests_per_s",
                "tokens_per_s", "ttft_p50_s", "errors"} <= row.keys()
        assert row["errors"] == 0 and row["ttft_s"] > 0 and row["requests_per_s"] > 0 and len(row["ttft_runs_s"]) == 2
    # the same document each way: every token as text, far fewer as pages
    assert text["doc_tokens"] == glyph["doc_tokens"] and abs(text["doc_tokens"] - 1024) <= 4
    assert text["pages"] == 0 and text["prompt_tokens"] > text["doc_tokens"]
    assert glyph["pages"] >= 1 and glyph["prompt_tokens"] < text["prompt_tokens"]
    s = data["summary"]
    assert {"ttft_speedup", "requests_per_s_ratio", "target", "compression", "context_tokens", "load_tokens",
            "clients", "cache_hits", "errors"} <= s.keys()
    assert s["cache_hits"] == 0 and s["errors"] == 0 and s["target"] == 4.0 and s["compression"] > 1
    assert s["ttft_speedup"] == pytest.approx(text["ttft_s"] / glyph["ttft_s"])
    assert (tmp_path / "serve-backbone-cpu-smoke.png").exists()


def test_it_says_it_needs_cuda_without_smoke(monkeypatch):
    import torch

    from bench.bench_serve_backbone import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="needs a CUDA GPU .*--smoke"):
        main([])
