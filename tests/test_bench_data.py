"""bench_data's CPU smoke run, with the loader timed beside a (tiny) training step: the script must not rot."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_data_with_training_smoke(tmp_path):
    # its own process: the benchmark pins itself to one core
    subprocess.run([sys.executable, "bench/bench_data.py", "--samples", "8", "--official-samples", "1", "--repeat", "1",
                    "--with-training", "--workers", "1", "--train-tokens", "64", "--train-steps", "1", "--seconds", "1",
                    "--out", str(tmp_path)], cwd=ROOT, check=True, capture_output=True, timeout=600)
    d = json.loads((tmp_path / "data-cpu.json").read_text())
    loaders = [r["loader"] for r in d["rows"]]
    assert any("bfloat16" in n for n in loaders) and any("uint8" in n for n in loaders)
    s = d["summary"]
    assert s["pages_per_s_while_training"] > 0 and s["pages_per_s_alone"] > 0
    assert s["train_step_s_alone"] > 0 and s["train_layers"] == 2 and s["train_tokens"] == 64
    assert (tmp_path / "data-cpu.png").exists()
