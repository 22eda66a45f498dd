"""Shared helpers for the benchmarks: machine description, commit, output and results files.

Every benchmark writes its JSON (and plots) to `--out DIR` (default bench/out/, ignored by git);
only `--results` also writes them to bench/results/, the committed figures."""
from __future__ import annotations

import datetime
import json
import math
import os
import platform
import re
import shutil
import subprocess
import time
from pathlib import Path

from glyph_rt.fileio import write_atomic

RESULTS = Path(__file__).resolve().parent / "results"
OUT = Path(__file__).resolve().parent / "out"


def add_output_args(ap) -> None:
    """The output options every benchmark shares: `--out DIR` and `--results`."""
    ap.add_argument("--out", type=Path, default=OUT, metavar="DIR",
                    help="directory for the JSON results and plots (default: bench/out/, not committed)")
    ap.add_argument("--results", action="store_true",
                    help="also write them to bench/results/, over the committed results")


def output_dirs(args) -> list[Path]:
    """Where this run writes: args.out, then bench/results/ when --results was given."""
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise SystemExit(f"--out {out}: is a file; give a directory for the results")
    dirs = [out]
    if args.results and out.resolve() != RESULTS:
        dirs.append(RESULTS)
    return dirs


def slug(name: str) -> str:
    """A file-name part from a device name: 'NVIDIA H100 80GB HBM3' -> 'h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower().replace("nvidia", "")).strip("-")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device=None) -> dict:
    """The machine a result was measured on; `device` (e.g. "cuda:1") names the GPU that ran it, else the
    current CUDA device."""
    info = {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform()}
    try:
        import torch

        info["torch"] = torch.__version__
        dev = torch.device(device) if device is not None else None
        if dev is not None and dev.type == "cuda" or dev is None and torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(dev)
    except ImportError:
        pass
    return info


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def median_seconds(fn, repeat: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


def write_result(args, name: str, bench: str, rows: list, summary: dict, device=None) -> Path:
    """Write the results file `name` to every output directory; returns the one in --out. `device` is the
    torch device the figures were measured on (machine() names its GPU)."""
    out = {"bench": bench, "machine": machine(device), "commit": commit(),
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "rows": rows, "summary": summary}
    return write_json(args, name, out)


def finite(obj):
    """`obj` with every NaN or infinite float (a figure with nothing measured) as None: strict JSON, which
    json.dumps's NaN is not."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def write_json(args, name: str, data: dict) -> Path:
    paths = []
    text = json.dumps(finite(data), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    for d in output_dirs(args):
        d.mkdir(parents=True, exist_ok=True)
        paths.append(d / name)
        write_atomic(paths[-1], text)  # a killed run: whole
    return paths[0]


def copy_to_results(args, path: Path) -> None:
    """Copy a file written to --out (a plot) to the other output directories."""
    for d in output_dirs(args)[1:]:
        shutil.copyfile(path, d / path.name)


def prose_of(tok, tokens: int) -> str:
    """The bundled prose, repeated (each copy on lines of its own) until it holds `tokens` tokens of `tok` (a
    TextTokenizer); `tok.prefix(prose, n)` cuts a document of n tokens from it."""
    from glyph_rt.render.textio import sample_text

    one = sample_text()
    copies = max(1, -(-tokens // max(1, tok.count(one))))
    while tok.count(prose := "\n".join([one] * copies)) < tokens:
        copies += 1
    return prose
