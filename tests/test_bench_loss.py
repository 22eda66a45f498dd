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


def test_bench_loss_cuda_names_the_gpu_it_ran_on(tmp_path, monkeypatch):
    """The CUDA branch of main, its GPU faked: the file is named after --device's GPU, not GPU 0's."""
    import types

    import torch

    sys.path.insert(0, str(ROOT))
    from bench import bench_loss

    names = {0: "NVIDIA A100-SXM4-40GB", 1: "NVIDIA H100 80GB HBM3"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: names[getattr(d, "index", d) or 0])
    seen, real_run = [], subprocess.run

    def run(cmd, **kw):
        if cmd[1:3] != ["-c", bench_loss.ONE]:  # git, for the results' commit
            return real_run(cmd, **kw)
        seen.append(cmd[-1])
        mode, n = cmd[-4], int(cmd[-3])
        out = {"mode": mode, "tokens": n, "step_s": 0.5 if mode == "kept" else 1.0,
               "peak_gib": 1.0 if mode == "kept" else 4.0, "loss": 11.9}
        return types.SimpleNamespace(returncode=0, stdout=json.dumps(out) + "\n", stderr="")

    monkeypatch.setattr(bench_loss.subprocess, "run", run)
    assert bench_loss.main(["--device", "cuda:1", "--tokens", "8192", "--out", str(tmp_path)]) == 0
    assert seen == ["cuda:1", "cuda:1"]
    row = json.loads((tmp_path / "loss-h100-80gb-hbm3.json").read_text())["rows"][0]
    assert row["speedup"] == 2.0 and row["memory_ratio"] == 4.0
