"""bench_loss's CPU smoke run: the loss on kept logits equals the full-logits loss and needs less memory."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_loss_smoke(tmp_path):
    subprocess.run([sys.executable, "bench/bench_loss.py", "--tokens", "512", "--hidden", "64", "--out", str(tmp_path)],
                   cwd=ROOT, check=True, capture_output=True, timeout=600)
    row = json.loads((tmp_path / "loss-cpu.json").read_text())["rows"][0]
    assert row["tokens"] == 512 and row["loss_diff"] < 1e-4
    assert row["kept_peak_gib"] < row["full_peak_gib"]
