"""`glyph-rt eval` end to end on a tiny random-weight checkpoint: results file, summary table, plots, dpi sweep,
text baseline, resuming after a real kill, clear errors."""
import os
import signal
import subprocess
import sys
import time

import pytest

from glyph_rt.cli import main
from glyph_rt.eval import read_rows


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from glyph_rt.models.tiny import tiny_glm4v_checkpoint

    return str(tiny_glm4v_checkpoint(tmp_path_factory.mktemp("glm4v")))


def args(ckpt, out, *extra):
    return ["eval", "--suite", "ruler", "--target", ckpt, "--out", str(out), "--lengths", "1k", "--limit", "1",
            "--tasks", "niah_single_1,vt", "--max-new-tokens", "2", "--device", "cpu", "--quiet", *extra]


def test_eval_ruler_dpi_sweep_text_baseline_and_resume(ckpt, tmp_path, capsys):
    assert main(args(ckpt, tmp_path, "--dpi", "72,96")) == 0
    out = capsys.readouterr().out
    assert "@ 72 dpi): accuracy" in out and "@ 96 dpi)" in out
    rows = read_rows(tmp_path / "results.jsonl")
    assert len(rows) == 4 and {r["dpi"] for r in rows} == {72.0, 96.0}
    for r in rows:
        assert {"prediction", "score", "text_tokens", "visual_tokens", "compression", "latency_s"} <= set(r)
    at = {r["dpi"]: r for r in rows if r["task"] == "vt"}
    assert at[96.0]["visual_tokens"] > at[72.0]["visual_tokens"]  # higher dpi, more tokens, less compression
    md = (tmp_path / "summary.md").read_text()
    assert "| Model | Niah-S1 | VT | Avg |" in md and "DPI: 72 / Compression rate: average" in md
    for png in ("accuracy_vs_length.png", "accuracy_vs_compression.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    items = (tmp_path / "items.jsonl").read_text()
    # a rerun resumes: nothing is run again
    assert main(args(ckpt, tmp_path, "--dpi", "72,96")) == 0
    assert len(read_rows(tmp_path / "results.jsonl")) == 4
    # the text baseline scores exactly the same items
    assert main(args(ckpt, tmp_path, "--as", "text")) == 0
    rows = read_rows(tmp_path / "results.jsonl")
    text = [r for r in rows if r["mode"] == "text"]
    assert sorted(r["id"] for r in text) == sorted(r["id"] for r in rows if r.get("dpi") == 72.0)
    assert all(r["visual_tokens"] == 0 for r in text) and (tmp_path / "items.jsonl").read_text() == items
    assert "(text)" in (tmp_path / "summary.md").read_text()
    # as the README: the text baseline without --lengths resumes the stored run's items
    no_lengths = args(ckpt, tmp_path, "--as", "text")
    del no_lengths[no_lengths.index("--lengths"):no_lengths.index("--lengths") + 2]
    assert main(no_lengths) == 0 and len(read_rows(tmp_path / "results.jsonl")) == 6
    # other item options into the same --out: an error, not the old items scored silently
    assert main(args(ckpt, tmp_path, "--lengths", "2k")) == 2
    assert "holds the items of another run (lengths: [1024] then [2048])" in capsys.readouterr().err
    capsys.readouterr()


def test_eval_resumes_after_a_kill(ckpt, tmp_path):
    cmd = [sys.executable, "-m", "glyph_rt.cli", *args(ckpt, tmp_path)]
    cmd[cmd.index("--tasks") + 1] = "niah_single_1,niah_single_2,vt,fwe"
    cmd[cmd.index("--max-new-tokens") + 1] = "24"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    results = tmp_path / "results.jsonl"
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if results.exists() and results.read_text().count("\n") >= 1:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    before = read_rows(results)
    if len(before) == 4:
        pytest.skip("the run finished before it could be killed")
    assert 1 <= len(before) < 4
    assert main(args(ckpt, tmp_path, "--tasks", "niah_single_1,niah_single_2,vt,fwe", "--max-new-tokens", "24")) == 0
    after = read_rows(results)
    assert after[:len(before)] == before  # finished rows kept as they were, none run again
    assert sorted(r["id"] for r in after) == sorted({r["id"] for r in after}) and len(after) == 4


@pytest.mark.parametrize("extra, message", [
    (["--lengths", "four"], "--lengths: length 'four'"),
    (["--dpi", "x"], "--dpi:"),
    (["--tasks", "niah_single_3"], "--uuid"),
])
def test_eval_bad_input(ckpt, tmp_path, capsys, extra, message):
    assert main(args(ckpt, tmp_path / "o", *extra)) == 2
    assert message in capsys.readouterr().err


def test_eval_bad_target_and_data(tmp_path, capsys):
    assert main(["eval", "--suite", "ruler", "--target", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    assert "neither a checkpoint directory nor openai:URL" in capsys.readouterr().err
    assert main(["eval", "--suite", "ruler", "--target", "openai:http://127.0.0.1:9/v1:m", "--extractor",
                 str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    assert "--extractor" in capsys.readouterr().err
    assert main(["eval", "--suite", "longbench", "--target", "openai:http://127.0.0.1:9/v1:m",
                 "--out", str(tmp_path / "lb")]) == 2
    assert "--data PATH" in capsys.readouterr().err
    assert main(["eval", "--suite", "mrcr", "--target", "openai:http://127.0.0.1:9/v1:m", "--data",
                 str(tmp_path / "missing.parquet"), "--out", str(tmp_path / "m")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_eval_without_its_extra_names_it_before_any_compute(ckpt, tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "prometheus_client"
                        else real(name, *a))
    assert main(args(ckpt, tmp_path)) != 0
    assert "eval needs prometheus_client: pip install 'glyph_rt[eval]'" in capsys.readouterr().err
    assert not (tmp_path / "items.jsonl").exists()


def test_eval_glyph_suite_names_rouge_before_any_compute(ckpt, tmp_path, capsys, monkeypatch):
    """Glyph's evaluation data may hold LongBench rows scored with rouge."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "rouge" else real(name, *a))
    assert main(["eval", "--suite", "glyph", "--data", str(tmp_path), "--target", ckpt, "--out",
                 str(tmp_path / "o"), "--device", "cpu", "--quiet"]) != 0
    assert "eval needs rouge: pip install 'glyph_rt[eval]'" in capsys.readouterr().err
