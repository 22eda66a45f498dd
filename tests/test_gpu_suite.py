"""bench/gpu_suite.sh (its CPU smoke mode end to end, its steps' time budgets, the GPU plan's
arguments), bench/summary.py on sample results, the benchmarks' output directory, the test device."""
import argparse
import hashlib
import json
import os
import subprocess
import tarfile
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import common, gpu_suite, summary  # noqa: E402


def write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))


def result(bench, rows, summ, gpu="NVIDIA H100 80GB HBM3"):
    return {"bench": bench, "machine": {"gpu": gpu} if gpu else {}, "commit": "abc", "rows": rows, "summary": summ}


def sample_outdir(out: Path) -> None:
    write(out / "environment.json", {"gpu": "NVIDIA H100 80GB HBM3", "torch": "2.11.0+cu130", "mode": "gpu"})
    write(out / "render-gpu-h100.json", result("render-gpu", [
        {"what": "text -> pixel_values, 1 document (GPU time, layout excluded)", "ms": 1.5, "pages": 82,
         "text_tokens": 131072},
        {"what": "CPU path: C++ render + torch pixel_values (1 document, wall)", "ms": 3200.0}],
        {"gpu_ms_128k": 1.5, "gpu_busy_ms_128k": 1.1, "pages_per_s": 40000.0, "gpu_pages_per_s": 90000.0, "peak_gbps": 3350.0,
         "speedup_vs_cpu": 400}))
    for backend, lin in (("triton", 1.3), ("cuda", 1.1)):
        write(out / f"patch-embed-{backend}-h100.json", result("patch-embed", [
            {"patches": 131072, "backend": backend, "ours_uint8": {"ms": 1.0}, "linear_bf16": {"ms": lin},
             "hf_conv3d": {"ms": 6.0}}], {"speedup_vs_linear_bf16": lin, "speedup_vs_conv3d": 6.0}))
    att = [{"case": "vision 64x2520, 12x128", "backend": "glyph", "fwd_ms": 2.0},
           {"case": "vision 64x2520, 12x128", "backend": "sdpa_flash", "fwd_ms": 2.2},
           {"case": "prefill 128K, 32q/2kv x128", "backend": "glyph", "fwd_ms": 100.0},
           {"case": "prefill 128K, 32q/2kv x128", "backend": "sdpa_cudnn", "fwd_ms": 80.0},
           {"case": "decode 128K x8, 32q/2kv x128", "backend": "glyph", "fwd_ms": 1.0, "fwd_gbps": 2680.0},
           {"case": "decode 128K x8, 32q/2kv x128", "backend": "sdpa_flash", "fwd_ms": 2.0, "fwd_gbps": 1340.0},
           {"case": "decode 128K x8, 32q/2kv x128", "backend": "sdpa_cudnn", "error": "RuntimeError: no"},
           {"case": "prefill 128K, 32q/2kv x128", "backend": "auto", "fwd_ms": 81.0, "auto_ratio_vs_best": 0.988,
            "best_backend": "sdpa_cudnn"}]
    write(out / "attention-h100.json", result("attention", att, {
        "vision_ratio_vs_best": 1.1, "prefill_128k_ratio_vs_best": 0.8, "decode_128k_ratio_vs_best": 2.0,
        "auto_ratio_vs_best": 0.988, "auto_worst_case": "prefill 128K, 32q/2kv x128"}))
    write(out / "e2e-h100.json", result("e2e", [
        {"text_tokens": 131072, "text_rt_ttft_s": 20.0, "prefill_speedup_hf": 2.0, "text_rt_decode_s_per_sample": 1.0,
         "decode_speedup_hf": 3.0, "glyph_rt_render_s": 0.05, "attention_prefill": "sdpa"}],
        {"prefill_speedup_128k": 5.0, "decode_speedup_128k": 4.0, "render_fraction_of_ttft": 0.005}))
    write(out / "train-h100.json", result("train", [
        {"tokens": 32768, "text_step_s": 3.0, "glyph_step_s": 1.2, "speedup": 2.5}],
        {"speedup_max_tokens": 2.5, "config": "LoRA r=16 (attention), vision trained, 8 layers"}))
    write(out / "serve-backbone-h100.json", result("serve-backbone", [
        {"arm": "text", "doc_tokens": 131070, "pages": 0, "ttft_s": 20.0, "requests_per_s": 0.5},
        {"arm": "glyph", "doc_tokens": 131070, "pages": 82, "ttft_s": 4.0, "requests_per_s": 1.5}],
        {"ttft_speedup": 5.0, "requests_per_s_ratio": 3.0, "compression": 2.55, "context_tokens": 131070,
         "load_tokens": 16384, "clients": 8, "max_tokens": 32, "errors": 0, "cache_hits": 0}))
    write(out / "serve-nvidia-h100.json", result("bench_serve", [
        {"path": "serial_generate", "requests": 8, "requests_per_s": 10.0},
        {"path": "engine", "clients": 16, "requests": 32, "requests_per_s": 25.0},
        {"path": "engine_process", "clients": 16, "requests": 32, "requests_per_s": 35.0},
        {"path": "document_cache", "doc_chars": 40000, "ttft_first_s": 0.2, "ttft_followup_s": 0.02}],
        {"throughput_vs_serial": 3.5, "engine_thread_vs_serial": 2.5, "ttft_followup_fraction": 0.1, "errors": 0}))
    write(out / "data-cuda.json", result("bench_data", [], {
        "pages_per_s_alone": 2400.0, "pages_per_s_while_training": 1800.0, "train_step_s_alone": 1.2,
        "train_step_s_with_loader": 1.26, "train_layers": 40, "train_tokens": 8192}))
    write(out / "steps" / "tests-gpu.json", {"name": "tests-gpu", "order": 3, "status": "failed", "seconds": 40,
                                             "budget_s": 120, "log": "logs/tests-gpu.log", "junit": ["junit/gpu.xml"]})
    write(out / "junit" / "gpu.xml", '<testsuites><testsuite tests="5" failures="1" errors="0" skipped="1">'
                                     '<testcase classname="tests.test_raster" name="test_a"><failure/></testcase>'
                                     '</testsuite></testsuites>')
    for tool, text in (("memcheck", "========= ERROR SUMMARY: 0 errors\n"),
                       ("racecheck", "========= RACECHECK SUMMARY: 2 hazards displayed (2 errors, 0 warnings)\n")):
        write(out / "steps" / f"sanitizer-{tool}.json", {"name": f"sanitizer-{tool}", "order": 9, "status": "ok",
                                                         "seconds": 30, "budget_s": 60,
                                                         "log": f"logs/sanitizer-{tool}.log", "junit": []})
        write(out / "logs" / f"sanitizer-{tool}.log", text)


def rows_of(md: str) -> dict[str, list[str]]:
    """figure -> cells of the targets table (one figure may have several rows: the last wins)."""
    rows = {}
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 7 and cells[0] in ("rasterizer", "patch embed", "attention", "end to end", "training data",
                                            "training", "serving"):
            rows.setdefault(cells[1], []).append(cells)
    return rows


def test_summary_puts_each_figure_beside_its_target_and_baseline(tmp_path):
    sample_outdir(tmp_path)
    md = summary.build(tmp_path)
    rows = rows_of(md)
    assert "NVIDIA H100 80GB HBM3" in md and "CPU smoke" not in md
    ms = rows["128K-token document -> pixel_values (GPU ms)"][0]
    assert ms[2:4] == ["1.50", "<= 2.00"] and ms[5] == "pass" and "CPU path 3200.000 ms" in ms[4]
    assert "device time (CUDA events); GPU busy 1.100 ms" in ms[6]  # the busy time beside it
    pps = rows["batch throughput (pages/s)"][0]  # the device's throughput; wall with layout in the note
    assert pps[2] == "90,000" and pps[5] == "pass" and "40,000 wall with layout" in pps[6]
    auto = rows["auto vs the best backend, worst case (x; 0.95: the same kernel within timing noise)"][0]
    assert auto[5] == "pass" and "sdpa_cudnn vs auto 81.000 ms" in auto[4] and "prefill 128K" in auto[6]
    # one row per patch-embed backend, each judged on its own
    assert [r[5] for r in rows["uint8 vs F.linear on bf16 input (x)"]] == ["FAIL", "pass"]  # cuda, triton
    assert [r[5] for r in rows["uint8 vs HF Conv3d (x)"]] == ["pass", "pass"]
    vision = rows["vision varlen vs best library backend (x)"][0]
    assert vision[5] == "pass" and "sdpa_flash 2.200 ms vs ours 2.000 ms" in vision[4]
    assert rows["causal prefill 128K vs best library backend (x)"][0][5] == "FAIL"
    decode = rows["decode 128K, fraction of HBM bandwidth"][0]  # 2680 of 3350 GB/s
    assert decode[2] == "0.8" and decode[5] == "pass" and "sdpa_flash 1,340 GB/s" in decode[4]
    assert rows["prefill (TTFT) vs text backbone (x)"][0][5] == "pass"
    assert rows["decode vs text backbone (x)"][0][5] == "FAIL"
    assert rows["rendering, fraction of TTFT"][0][5] == "pass"
    assert "both on glyph_rt" in rows["prefill (TTFT) vs text backbone (x)"][0][4]
    sft = rows["SFT step vs text backbone (x)"][0]
    assert sft[2] == "2.50" and sft[5] == "pass" and "8 layers" in sft[6]
    ttft = rows["TTFT, 128K-token document, vs text backbone (x)"][0]
    assert ttft[2:4] == ["5.00", ">= 4.00"] and ttft[5] == "pass" and "text 20,000 ms vs glyph 4,000 ms" in ttft[4]
    assert "82 pages" in ttft[6] and "run --full" not in ttft[6]
    load = rows["requests/s under load vs text backbone (x)"][0]
    assert load[5] == "FAIL" and "8 clients, 16K-token documents" in load[6]
    served = rows["requests/s under load vs serial generate (x)"][0]
    assert served[2:4] == ["3.50", ">= 3.00"] and served[5] == "pass" and "serial 10.00 vs served 35.00" in served[4]
    assert "engine on a thread x2.50" in served[6]
    follow = rows["follow-up on a cached document, fraction of the first's TTFT"][0]
    assert follow[2:4] == ["0.1", "<= 0.05"] and follow[5] == "FAIL" and "follow-up 20.0 ms" in follow[4]
    data = rows["GPU loader while a 9B SFT step trains (pages/s)"][0]
    assert data[2] == "1,800" and data[5] == "pass" and "1.200 s alone, 1.260 s beside the loader" in data[6]
    assert "14 pass, 5 fail, 0 missing" in md  # counted per row
    assert "| tests-gpu | failed | 3 | 1 | 1 | tests.test_raster::test_a |" in md
    assert "| sanitizer-memcheck | pass | ERROR SUMMARY: 0 errors |" in md
    assert "| sanitizer-racecheck | FAIL |" in md


def test_summary_names_the_step_behind_a_missing_figure(tmp_path):
    write(tmp_path / "steps" / "bench-attention.json", {"name": "bench-attention", "status": "timeout",
                                                        "seconds": 100, "budget_s": 100, "log": "logs/x.log"})
    write(tmp_path / "e2e-cpu-quick.json", result("e2e", [
        {"text_tokens": 200, "text_ttft_s": 1.0, "prefill_speedup_hf": 1.0, "text_decode_s_per_sample": 1.0,
         "decode_speedup_hf": 1.0, "glyph_hf_render_s": 0.1}],
        {"prefill_speedup_128k": 1.2, "decode_speedup_128k": 1.5, "render_fraction_of_ttft": 0.2}))
    write(tmp_path / "p" / "patch-embed-x.json", result("patch-embed", [{"patches": 8, "ours_uint8": None}],
                                                       {"speedup_vs_linear_bf16": 2}))
    rows = rows_of(summary.build(tmp_path))
    vision = rows["vision varlen vs best library backend (x)"][0]
    assert vision[5] == "missing" and "bench-attention: timeout" in vision[6]
    # a results file whose rows lack a key: named, the rest of the summary is still written
    linear = rows["uint8 vs F.linear on bf16 input (x)"][0]
    assert linear[5] == "missing" and "p/patch-embed-x.json: unreadable (AttributeError" in linear[6]
    assert "bench-render did not run" in rows["batch throughput (pages/s)"][0][6]
    decode = rows["decode vs text backbone (x)"][0]  # measured on the CPU: not graded against the H100's targets
    assert decode[5] == "missing" and "e2e-cpu-quick.json was measured on the CPU" in decode[6]


def test_summary_of_a_run_cut_short_says_what_did_not_finish(tmp_path):
    for name, status in (("bench-e2e", "running"), ("sanitizer-memcheck", "pending"),
                         ("sanitizer-racecheck", "timeout"), ("tests-gpu", "ok")):
        write(tmp_path / "steps" / f"{name}.json", {"name": name, "status": status, "seconds": 1, "budget_s": 9,
                                                   "log": f"logs/{name}.log", "note": gpu_suite.RUNNING})
    write(tmp_path / "logs" / "sanitizer-racecheck.log", "========= Racecheck: starting\n")  # killed: no verdict
    md = summary.build(tmp_path)
    assert "**Incomplete run**: 2 of 4 steps did not finish (bench-e2e, sanitizer-memcheck)" in md
    assert "| sanitizer-memcheck | not run |" in md and "| sanitizer-racecheck | timeout |" in md
    assert "bench-e2e: running (started, not finished" in rows_of(md)["rendering, fraction of TTFT"][0][6]
    write(tmp_path / "steps" / "bench-e2e.json", {"name": "bench-e2e", "status": "ok"})
    write(tmp_path / "steps" / "sanitizer-memcheck.json", {"name": "sanitizer-memcheck", "status": "ok"})
    assert "Incomplete" not in summary.build(tmp_path)


def test_patch_embed_runs_of_two_backends_keep_two_results_files(tmp_path):
    from bench.bench_patch_embed import main

    for backend in ("torch", "auto"):
        main(["--quick", "--dim", "32", "--sizes", "48", "--backend", backend, "--out", str(tmp_path)])
    assert sorted(p.name for p in tmp_path.glob("patch-embed-*-quick.json")) == [
        "patch-embed-auto-cpu-quick.json", "patch-embed-torch-cpu-quick.json"]
    found = summary.load_results(tmp_path)["patch-embed"]
    assert sorted(d["rows"][0]["backend"] for d in found) == ["auto", "torch"]


def test_a_missing_figure_names_its_own_step_only():
    assert summary.made_by("bench-serve", "bench-serve") and summary.made_by("train-serve-bench-serve", "bench-serve")
    assert not summary.made_by("bench-serve-backbone", "bench-serve")
    assert summary.made_by("bench-patch-embed-cuda", "bench-patch-embed")
    assert summary.made_by("bench-e2e-full", "bench-e2e") and not summary.made_by("bench-e2e", "bench-e2e-full")


def test_patch_embed_summary_leaves_out_a_variant_that_failed():
    from bench.bench_patch_embed import summarise

    rows = [{"speedup_vs_conv3d": 6.0, "speedup_vs_linear_bf16": 1.3}, {"speedup_vs_conv3d": 5.5}]
    assert summarise(rows) == {"speedup_vs_conv3d": 5.5, "speedup_vs_linear_bf16": 1.3,
                               "note": "minimum over the sizes; speedup_* are of ours_uint8"}


def test_summary_fails_a_serving_figure_whose_run_had_errors(tmp_path):
    sample_outdir(tmp_path)
    p = tmp_path / "serve-backbone-h100.json"
    d = json.loads(p.read_text())
    d["summary"].update(errors=3, cache_hits=2)
    p.write_text(json.dumps(d))
    ttft = rows_of(summary.build(tmp_path))["TTFT, 128K-token document, vs text backbone (x)"][0]
    assert ttft[5] == "FAIL" and "3 requests failed; 2 document cache hits" in ttft[6]


def test_summary_cli_checks_its_argument(tmp_path, capsys):
    assert summary.main([]) == 2
    assert summary.main([str(tmp_path / "nope")]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert summary.main([str(tmp_path)]) == 0 and (tmp_path / "summary.md").exists()


def test_a_step_out_of_time_is_killed_and_the_next_one_runs(tmp_path):
    for d in ("logs", "steps"):
        (tmp_path / d).mkdir()
    env = dict(os.environ)
    hang = gpu_suite.Step("hang", 2, [[sys.executable, "-c", "import time; time.sleep(60)"],
                                      [sys.executable, "-c", "print('never')"]])
    fail = gpu_suite.Step("fail", 30, [[sys.executable, "-c", "print('boom'); raise SystemExit(3)"]])
    ok = gpu_suite.Step("ok", 30, [[sys.executable, "-c", "print('hello')"]])
    par = gpu_suite.Step("par", 2, [hang.cmds[0], ok.cmds[0]], jobs=2)  # side by side, one log each
    t = time.monotonic()
    recs = [gpu_suite.run_step(s, i, tmp_path, time.monotonic() + 60, env, print) for i, s in
            enumerate([hang, fail, ok, par])]
    assert time.monotonic() - t < 30
    assert [r["status"] for r in recs] == ["timeout", "failed", "ok", "timeout"]
    assert recs[0]["rcs"] == ["timeout", "not run"] and recs[3]["rcs"] == ["timeout", 0]
    assert "killed" in (tmp_path / "logs" / "hang.log").read_text()
    assert "not run" in (tmp_path / "logs" / "hang.log").read_text()
    assert "hello" in (tmp_path / "logs" / "par" / "01.log").read_text()
    assert recs[1]["note"] == "boom"  # the failing command's last line
    assert "logs/par/00.log" in (tmp_path / "logs" / "par.log").read_text()
    assert "hello" in (tmp_path / "logs" / "ok.log").read_text()
    late = gpu_suite.run_step(ok, 3, tmp_path, time.monotonic() + 1, env, print)  # the run's budget is spent
    assert late["status"] == "skipped" and "out of time" in late["note"]
    # a step whose slot in the plan ends later than its own budget would (earlier steps left time) runs until then
    slow = gpu_suite.Step("slow", 1, [[sys.executable, "-c", "import time; time.sleep(2)"]])
    rec = gpu_suite.run_step(slow, 4, tmp_path, time.monotonic() + 60, env, print, until=time.monotonic() + 20)
    assert rec["status"] == "ok" and 19 < rec["limit_s"] <= 20
    rec = gpu_suite.run_step(slow, 4, tmp_path, time.monotonic() + 60, env, print, until=time.monotonic() - 5)
    assert rec["status"] == "timeout" and rec["limit_s"] == 1  # never less than its own budget, though


def test_every_commands_budgets_fit_its_run_and_the_checks_run_nowhere_else_come_first(tmp_path):
    for flags in ((), ("--full",), ("--train-serve",)):
        args = gpu_suite.parser().parse_args([str(tmp_path), *flags])
        assert args.budget == gpu_suite.DEFAULT_BUDGET == 500
        steps = gpu_suite.plan(args, tmp_path, cuda=True)
        assert sum(s.budget for s in steps) <= args.budget, (flags, [(s.name, s.budget) for s in steps])
        assert [s.rest for s in steps] == [False] * (len(steps) - 1) + [True]  # the last takes what is left
        assert steps[-1].budget >= gpu_suite.REST_MIN and min(s.budget for s in steps) >= 15
    assert [s.name for s in gpu_plan(tmp_path)] == [
        "build", "environment", "backends", "tests-gpu", "sanitizer-memcheck", "sanitizer-racecheck", "bench-render",
        "bench-patch-embed-triton", "bench-patch-embed-cuda", "bench-attention", "bench-e2e", "tests-suite"]
    full = gpu_plan(tmp_path, "--full")  # the serving figures before the e2e curves of the second command
    assert [s.name for s in full][-2:] == ["bench-serve-backbone", "bench-e2e-full"]
    wide = gpu_suite.plan(gpu_suite.parser().parse_args([str(tmp_path), "--budget", "900"]), tmp_path, cuda=True)
    assert sum(s.budget for s in wide) == 900 and wide[-1].name == "tests-suite"  # a longer run: more suite


KILLED_RUN = """
import sys
sys.path.insert(0, sys.argv[1])
from bench import gpu_suite as g

g.REFRESH_S = 0.2
out, result, pid = sys.argv[2:5]
hang = ("import os, pathlib, sys, time; pathlib.Path(sys.argv[3]).write_text(str(os.getpid())); "
        "pathlib.Path(sys.argv[1]).write_text(sys.argv[2]); time.sleep(120)")
g.plan = lambda args, o, cuda: [
    g.Step("first", 30, [[sys.executable, "-c", "print('done')"]]),
    g.Step("bench-e2e", 60, [[sys.executable, "-c", hang, out + "/e2e-h100.json", result, pid]]),
    g.Step("never", 30, [[sys.executable, "-c", "print('never')"]])]
sys.exit(g.main([out, "--cpu-smoke", "--no-build", "--budget", "200", "--pack", out + ".tar.gz"]))
"""


def test_a_run_killed_midway_leaves_the_summary_and_archive_of_what_it_did(tmp_path):
    """The machine may be killed when its time is spent: summary.md and the --pack archive are rewritten after
    every step and while a step runs, so that they hold what the run measured until then."""
    out, pid = tmp_path / "out", tmp_path / "pid"
    e2e = result("e2e", [{"text_tokens": 131072, "text_rt_ttft_s": 20.0, "text_rt_decode_s_per_sample": 1.0,
                          "glyph_rt_render_s": 0.05}],
                 {"prefill_speedup_128k": 5.0, "decode_speedup_128k": 4.0, "render_fraction_of_ttft": 0.005})
    p = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(ROOT), str(out), json.dumps(e2e), str(pid)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    md, end = "", time.monotonic() + 60
    try:  # until a refresh during bench-e2e has read what it wrote so far
        while "| 5.00 |" not in md and p.poll() is None and time.monotonic() < end:
            time.sleep(0.1)
            md = (out / "summary.md").read_text() if (out / "summary.md").exists() else ""
    finally:
        os.killpg(p.pid, 9)  # the suite, as the machine's end would
        p.wait()
        if pid.exists():  # the step it was running (a session of its own)
            try:
                os.kill(int(pid.read_text()), 9)
            except ProcessLookupError:
                pass
    md = (out / "summary.md").read_text()
    ttft = rows_of(md)["prefill (TTFT) vs text backbone (x)"][0]  # measured during the step the kill cut short
    assert ttft[2] == "5.00" and ttft[5] == "pass", p.stdout.read().decode()
    assert "| first | ok |" in md and "| bench-e2e | running |" in md and "| never | pending |" in md
    assert "**Incomplete run**: 2 of 3 steps did not finish (bench-e2e, never)" in md
    with tarfile.open(f"{out}.tar.gz") as tar:  # the archive has the same
        assert tar.extractfile(f"{out.name}/summary.md").read().decode() == md


def gpu_plan(tmp_path, *flags):
    return gpu_suite.plan(gpu_suite.parser().parse_args([str(tmp_path), "--no-build", *flags]), tmp_path, cuda=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the arguments where the benchmarks stop at CUDA")
def test_every_gpu_benchmark_command_parses(tmp_path):
    """The GPU plan's benchmark commands run here up to their CUDA check: their flags parse."""
    import importlib

    cmds = [c for s in gpu_plan(tmp_path) + gpu_plan(tmp_path, "--full") + gpu_plan(tmp_path, "--train-serve")
            for c in s.cmds]
    benches = [c for c in cmds if c[1].startswith("bench/")]
    assert len(benches) == 11
    for c in benches:
        assert "--out" in c and "--results" not in c
        mod = importlib.import_module("bench." + Path(c[1]).stem)
        with pytest.raises(SystemExit) as e:
            mod.main(c[2:])
        assert isinstance(e.value.code, str) and "CUDA" in e.value.code, c  # not argparse's exit 2
    assert all("--results" in c for s in gpu_plan(tmp_path, "--results") for c in s.cmds if c[1].startswith("bench/"))
    for c in cmds:  # the tests the pytest commands name exist
        assert all((ROOT / a).exists() for a in c if a.startswith("tests/"))


def test_cpu_smoke_mode_runs_every_step(tmp_path):
    """The whole script in its CPU smoke mode: it must not rot. Never touches bench/results/."""
    results = {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
               for p in (ROOT / "bench" / "results").rglob("*") if p.is_file()}
    env = dict(os.environ, PYTHON=sys.executable)
    env.pop("TRITON_INTERPRET", None)
    packed = tmp_path.parent / f"{tmp_path.name}-suite.tar.gz"
    r = subprocess.run(["bash", str(ROOT / "bench" / "gpu_suite.sh"), str(tmp_path), "--cpu-smoke", "--no-build",
                        "--pack", str(packed)], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    with tarfile.open(packed) as tar:  # the whole output but its cache, in one file
        names = tar.getnames()
    assert f"{tmp_path.name}/summary.md" in names and f"{tmp_path.name}/steps/tests-gpu.json" in names
    assert not any("/cache/" in n for n in names)
    assert r.stdout.rstrip().endswith((tmp_path / "summary.md").read_text().rstrip())  # printed last
    assert json.loads((tmp_path / "environment.json").read_text())["missing"] == []
    steps = {p.stem: json.loads(p.read_text())["status"] for p in (tmp_path / "steps").glob("*.json")}
    assert steps["build"] == "skipped" and steps["sanitizer-memcheck"] == "skipped"
    for name in ("environment", "backends", "tests-gpu", "bench-render-cpu", "bench-e2e", "tests-suite"):
        assert steps[name] == "ok", (name, (tmp_path / "logs" / f"{name}.log").read_text()[-2000:])
    md = (tmp_path / "summary.md").read_text()
    assert "CPU smoke mode" in md and "| tests-suite | ok |" in md and "e2e-cpu-quick.json" in md
    assert "Incomplete" not in md and not {"pending", "running"} & set(steps.values())
    assert (tmp_path / "render-cpu.json").exists()
    e2e = json.loads((tmp_path / "e2e-cpu-quick.json").read_text())  # --tokens is honoured from the command line
    assert [r["text_tokens"] for r in e2e["rows"]] == [200]
    assert results == {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
                       for p in (ROOT / "bench" / "results").rglob("*") if p.is_file()}


def test_benchmarks_write_to_out_and_to_results_only_when_asked(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    ap = argparse.ArgumentParser()
    common.add_output_args(ap)
    assert ap.parse_args([]).out == common.OUT and common.OUT.name == "out"
    args = ap.parse_args(["--out", str(tmp_path / "o")])
    p = common.write_result(args, "x.json", "x", [{"a": 1}], {"s": 2})
    assert p == tmp_path / "o" / "x.json" and json.loads(p.read_text())["summary"] == {"s": 2}
    assert not (tmp_path / "results").exists()
    args = ap.parse_args(["--out", str(tmp_path / "o"), "--results"])
    common.write_result(args, "y.json", "y", [], {})
    (tmp_path / "o" / "y.png").write_bytes(b"png")
    common.copy_to_results(args, tmp_path / "o" / "y.png")
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["y.json", "y.png"]
    (tmp_path / "f").write_text("")
    with pytest.raises(SystemExit, match="--out .*is a file"):
        common.write_result(ap.parse_args(["--out", str(tmp_path / "f")]), "z.json", "z", [], {})


def test_device_option_and_fixture(device):
    import conftest

    assert device.type == conftest.TEST_DEVICE == os.environ["GLYPH_RT_TEST_DEVICE"]
    assert (os.environ.get("TRITON_INTERPRET") == "1") == (device.type == "cpu")
    assert conftest.resolve_device("cpu") == "cpu"
    with pytest.raises(pytest.UsageError, match="use one of auto, cpu, cuda"):
        conftest.resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(pytest.UsageError, match="--device cuda: torch sees no CUDA device"):
            conftest.resolve_device("cuda")


def test_a_failed_cuda_build_is_built_again_without_cuda_and_says_so(tmp_path):
    """On a GPU the CUDA sources are required; a CUDA build that fails must still leave an extension for the other
    steps (the C++ layout, Triton), while the build step fails, saying why."""
    fake = tmp_path / "pip.sh"
    fake.write_text('echo "GLYPH_RT_CUDA=$GLYPH_RT_CUDA" >> "$1"; [ "$GLYPH_RT_CUDA" != 1 ]\n')
    log = tmp_path / "log"
    for cuda, rc, builds in (("1", 1, ["1", "0"]), ("auto", 0, ["auto"]), ("0", 0, ["0"])):
        log.write_text("")
        r = subprocess.run(gpu_suite.build_cmd(f"sh {fake} {log}"), capture_output=True, text=True,
                           env=dict(os.environ, GLYPH_RT_CUDA=cuda))
        assert r.returncode == rc and log.read_text().split() == [f"GLYPH_RT_CUDA={b}" for b in builds]
        assert ("built without CUDA" in r.stdout) == (rc == 1)


def test_no_step_runs_the_slow_tests(tmp_path):
    """pytest's last -m wins over pyproject's `not slow`: every step's marker says it again."""
    for flags in ((), ("--cpu-smoke",)):
        for s in gpu_plan(tmp_path, *flags):
            for c in s.cmds:
                if "pytest" in c:
                    assert "not slow" in c[c.index("-m", c.index("pytest") + 1) + 1], (s.name, c)


def test_a_profiles_device_time_counts_each_kernel_once():
    """An op that launched a kernel reports the kernel's time as its own too: only device events are summed."""
    from torch.autograd import DeviceType
    from torch.autograd.profiler_util import FunctionEvent

    from bench.bench_render_gpu import device_us

    op = FunctionEvent(0, "aten::copy_", 1, 0, 100, use_device="cuda")
    kernel = FunctionEvent(1, "Memcpy HtoD", 1, 10, 60, use_device="cuda", device_type=DeviceType.CUDA)
    op.append_kernel(kernel.name, kernel.device_index, kernel.time_range.elapsed_us())
    assert op.self_device_time_total == 50  # the double count that summing every event gives
    assert device_us([op, kernel]) == 50
