import json
import subprocess
import sys

import pytest
import torch

from glyph_rt.cli import main


def test_render_sample(tmp_path, capsys):
    assert main(["render", "--out", str(tmp_path), "--quiet"]) == 0
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["pages"] == len(list(tmp_path.glob("page_*.png"))) > 1
    for k in ("page_sizes", "visual_tokens", "text_tokens", "compression_ratio", "missing_glyphs", "seconds"):
        assert k in s
    assert s["input"] == "built-in sample"


def test_render_stdin_and_glyph_config(tmp_path):
    from glyph_rt.render.config import GLYPH_CONFIG_EN
    from glyph_rt.render.fonts import BUILTIN_FONTS

    cfg = tmp_path / "config_en.json"
    cfg.write_text(json.dumps({**GLYPH_CONFIG_EN, "font-path": str(BUILTIN_FONTS["sans"])}))
    r = subprocess.run([sys.executable, "-m", "glyph_rt.cli", "render", "-", "--config", str(cfg), "--out",
                        str(tmp_path / "o")], input="hello world\n" * 50, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "1 pages" in r.stdout and "visual tokens" in r.stdout
    assert (tmp_path / "o" / "page_001.png").is_file()


def test_stats_prints_the_ratio(capsys):
    assert main(["stats"]) == 0
    assert float(capsys.readouterr().out) > 1


def test_errors_are_reported(tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok \xff")
    assert main(["render", str(bad), "--out", str(tmp_path)]) == 2
    assert "invalid UTF-8 at byte 3" in capsys.readouterr().err
    assert main(["render", str(tmp_path / "missing.txt")]) == 2
    assert main(["render", "--preset", "nope"]) == 2
    assert "preset" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["render", "--device", "cuda"]) == 2
        assert "no CUDA device" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_render_on_the_gpu_writes_the_same_pages(tmp_path, backend):
    cpu, gpu = tmp_path / "cpu", tmp_path / "gpu"
    assert main(["render", "--out", str(cpu), "--quiet"]) == 0
    assert main(["render", "--out", str(gpu), "--quiet", "--device", "cuda", "--backend", backend]) == 0
    a, b = sorted(cpu.glob("page_*.png")), sorted(gpu.glob("page_*.png"))
    assert [p.name for p in a] == [p.name for p in b]
    assert all(p.read_bytes() == q.read_bytes() for p, q in zip(a, b))
