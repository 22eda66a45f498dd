"""OUTDIR/summary.md from what bench/gpu_suite.py left in OUTDIR: one table of every figure beside its
H100 target (bf16) and the baseline measured in the same run, then the tests, the
sanitizers and every step with its time and log.

    python bench/summary.py OUTDIR
"""
from __future__ import annotations

import json
import os
import re
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


UNFINISHED = ("pending", "running")  # a step's status before it ends (what a run killed midway leaves)


def write_atomic(path: Path, text: str) -> None:
    """`path` replaced whole: a process killed while writing leaves the previous file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_results(out: Path) -> dict[str, list[dict]]:
    """Every benchmark results file under `out` (not its steps' records or its cache), by its "bench" key
    (several files per key: the patch embedding's two backends, patch-embed-<backend>-<gpu>.json)."""
    found: dict[str, list[dict]] = {}
    for p in sorted(out.rglob("*.json")):
        if p.relative_to(out).parts[0] in ("steps", "cache"):
            continue
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and "bench" in data and "summary" in data:
            data["_file"] = str(p.relative_to(out))
            found.setdefault(data["bench"], []).append(data)
    return found


def load_steps(out: Path) -> list[dict]:
    steps = []
    for p in (out / "steps").glob("*.json"):
        try:
            steps.append(json.loads(p.read_text()))
        except (OSError, ValueError):
            steps.append({"name": p.stem, "status": "unreadable", "order": 1 << 30})
    return sorted(steps, key=lambda s: (s.get("order", 0), s.get("name", "")))


# A figure: (value, baseline text, note), with a fourth element when it must not pass whatever its value (why);
# None when the results lack it, or a string saying why the figure there does not count.
Figure = tuple


@dataclass
class Target:
    area: str
    what: str
    bench: str  # the results' "bench" key
    step: str  # the suite step that makes them (named when the figure is missing)
    op: str  # "<=" or ">="
    threshold: float
    unit: str
    get: Callable[[dict], "Figure | str | None"]


def made_by(name: str, step: str) -> bool:
    """Whether suite step `name` is `step`: "bench-data" is also "train-serve-bench-data", "bench-patch-embed" also
    "bench-patch-embed-cuda", "bench-e2e" also "bench-e2e-full"; "bench-serve" is not "bench-serve-backbone"."""
    for mode in ("full-", "train-serve-"):
        name = name.removeprefix(mode)
    return name == step or name in (f"{step}-triton", f"{step}-cuda", f"{step}-full")


def _ms(x) -> str:
    return "-" if x is None else f"{x:.3f} ms"


def _row(data: dict, what: str) -> dict:
    return next((r for r in data["rows"] if str(r.get("what", "")).startswith(what)), {})


def render_ms(d: dict) -> Figure | None:
    """Graded on the device's time between CUDA events on a batch already built and uploaded (the rasterizer's
    work); the time with the host's batch building and upload, and the profiler's busy time, go in the note."""
    s = d["summary"]
    v = s.get("gpu_ms_128k")
    if v is None:
        return None
    cpu = _row(d, "CPU path")
    one = _row(d, "text -> pixel_values, 1 document (GPU")
    tokens = one.get("text_tokens")
    busy = f"; GPU busy {_ms(s['gpu_busy_ms_128k'])} (profiler)" if s.get("gpu_busy_ms_128k") is not None else ""
    host = f"; {_ms(s['host_inclusive_ms_128k'])} with the host's batch building and upload" \
        if s.get("host_inclusive_ms_128k") is not None else ""
    fig = (v, f"CPU path {_ms(cpu.get('ms'))} (x{s.get('speedup_vs_cpu', '-')} slower, wall)",
           f"{one.get('pages', '?')} pages, {tokens if tokens else '?'} text tokens; device time (CUDA events){host}"
           f"{busy}; layout excluded")
    if tokens is not None and tokens < 0.99 * 131072:
        return (*fig, f"the document has {tokens:,} text tokens, not 128K")
    return fig


def render_pps(d: dict) -> Figure | None:
    """Graded on the device's throughput over 8 laid-out, uploaded documents; the end-to-end figures (with the
    host's work, and wall time with layout) go in the note."""
    s = d["summary"]
    v = s.get("gpu_pages_per_s")
    if v is None:
        return None
    pages, cpu = _row(d, "text -> pixel_values, 1 document (GPU").get("pages"), _row(d, "CPU path").get("ms")
    base = f"CPU path {pages / cpu * 1e3:,.0f} pages/s" if pages and cpu else "-"
    return v, base, (f"device time; {_fmt(s.get('host_inclusive_pages_per_s'))} pages/s with the host's batch "
                     f"building and upload, {_fmt(s.get('pages_per_s'))} wall with layout")


def _largest(d: dict) -> dict:
    return max(d["rows"], key=lambda r: r.get("patches", 0)) if d["rows"] else {}


def pe_ratio(key: str, base: str) -> Callable[[dict], Figure | None]:
    def get(d: dict) -> Figure | None:
        v = d["summary"].get(key)
        if v is None:
            return None
        r = _largest(d)
        ours = r.get("ours_uint8", {}).get("ms")
        return v, f"{base} {_ms(r.get(base, {}).get('ms'))} vs ours {_ms(ours)} at {r.get('patches', '?')} patches", \
            f"backend {r.get('backend', '?')}; minimum over sizes"
    return get


def _best_other(rows: list[dict], case: str, key: str, best=min) -> dict | None:
    cands = [r for r in rows if r.get("case", "").startswith(case) and r["backend"] not in ("glyph", "auto")
             and key in r]
    return best(cands, key=lambda r: r[key]) if cands else None


def attn_ratio(key: str, case: str) -> Callable[[dict], Figure | None]:
    def get(d: dict) -> Figure | None:
        v = d["summary"].get(key)
        if v is None:
            return None
        b = _best_other(d["rows"], case, "fwd_ms")
        ours = next((r for r in d["rows"] if r.get("case", "").startswith(case) and r["backend"] == "glyph"), {})
        base = f"{b['backend']} {_ms(b['fwd_ms'])} vs ours {_ms(ours.get('fwd_ms'))}" if b else "-"
        flash = any(r["backend"].startswith("flash") and "fwd_ms" in r for r in d["rows"])
        return v, base, "forward; > 1 is faster than the best library backend" + (
            "" if flash else " (flash_attn was not measured: the best of SDPA's kernels)")
    return get


def auto_ratio(d: dict) -> Figure | None:
    """backend="auto" against the fastest backend of each case (glyph's and the pinned SDPA kernels included)."""
    s = d["summary"]
    if s.get("auto_ratio_vs_best") is None:
        return None
    case = s.get("auto_worst_case", "?")
    auto = next((r for r in d["rows"] if r.get("case") == case and r["backend"] == "auto"), {})
    return s["auto_ratio_vs_best"], f"{auto.get('best_backend', '?')} vs auto {_ms(auto.get('fwd_ms'))}", \
        f"worst case: {case}"


def decode_bandwidth(d: dict, peak: float | None) -> Figure | None:
    ours = next((r for r in d["rows"] if r.get("case", "").startswith("decode 128K x8") and r["backend"] == "glyph"
                 and "fwd_gbps" in r), None)
    if ours is None or not peak:
        return None
    b = _best_other(d["rows"], "decode 128K x8", "fwd_gbps", best=max)
    base = f"{b['backend']} {b['fwd_gbps']:,.0f} GB/s" if b else "-"
    return ours["fwd_gbps"] / peak, base, f"{ours['fwd_gbps']:,.0f} of {peak:,.0f} GB/s peak, batch 8"


def e2e(key: str, base: Callable[[dict], str]) -> Callable[[dict], Figure | None]:
    def get(d: dict) -> Figure | None:
        v = d["summary"].get(key)
        if v is None or not d["rows"]:
            return None
        last = max(d["rows"], key=lambda r: r["text_tokens"])
        n = last["text_tokens"]
        if n < 131072:  # the first command measures 8K; the target is at 128K (--full)
            return f"{d['_file']} reaches {n:,} tokens; the target is at 128K (bash bench/gpu_suite.sh OUT --full)"
        return v, base(last), f"at {n // 1024}K tokens; attention {last.get('attention_prefill', '?')}"
    return get


def data_while_training(d: dict) -> Figure | None:
    """bench_data --with-training: the GPU loader's pages/s while GLM-4.1V-9B's SFT step trains on the same GPU."""
    s = d["summary"]
    if s.get("pages_per_s_while_training") is None:
        return None
    step = s.get("train_step_s_with_loader")
    base = f"loader alone {s['pages_per_s_alone']:,.0f} pages/s"
    note = (f"SFT step ({s['train_layers']} layers, {s['train_tokens']:,} tokens) {s['train_step_s_alone']:.3f} s alone"
            + (f", {step:.3f} s beside the loader" if step else ""))
    return s["pages_per_s_while_training"], base, note


def serve_backbone(key: str) -> Callable[[dict], Figure | None]:
    """bench_serve_backbone's ratios: Glyph over the text backbone, through the same server."""
    def get(d: dict) -> Figure | None:
        s = d["summary"]
        if s.get(key) is None or not d["rows"]:
            return None
        arm = {r["arm"]: r for r in d["rows"]}
        text, glyph = arm["text"], arm["glyph"]
        if key == "ttft_speedup":
            n = s["context_tokens"]
            base = f"text {text['ttft_s'] * 1e3:,.0f} ms vs glyph {glyph['ttft_s'] * 1e3:,.0f} ms"
            note = f"{n:,}-token document, {glyph['pages']} pages ({s['compression']:.2f}x)"
            if n < 0.99 * 131072:
                return s[key], base, note, f"the document has {n:,} tokens; the target is at 128K"
        else:
            base = f"text {text['requests_per_s']:.3f} vs glyph {glyph['requests_per_s']:.3f} req/s"
            note = f"{s['clients']} clients, {s['load_tokens'] // 1024}K-token documents, {s['max_tokens']} tokens each"
        bad = [f"{s[k]} {what}" for k, what in (("errors", "requests failed"), ("cache_hits", "document cache hits"))
               if s.get(k)]
        return (s[key], base, note, "; ".join(bad)) if bad else (s[key], base, note)
    return get


def _left_out(s: dict, key: str) -> str | None:
    """bench_serve's note on why it left ratio `key` out (a side had failed requests); None when it has none."""
    return next((f"bench_serve: {n}" for n in s.get("notes", []) if n.startswith(key + ":")), None)


def serve_load(d: dict) -> Figure | str | None:
    """bench_serve: `glyph-rt serve` (the engine in its own process) under load over serial GlyphModel.generate."""
    s = d["summary"]
    if s.get("throughput_vs_serial") is None:  # not run, or left out: a side had failed requests (notes)
        return _left_out(s, "throughput_vs_serial")
    row = {r["path"]: r for r in d["rows"]}
    serial, served = row["serial_generate"], row["engine_process"]
    base = f"serial {serial['requests_per_s']:.2f} vs served {served['requests_per_s']:.2f} req/s"
    note = (f"{served['clients']} clients, {served['requests']} requests; "
            f"engine on a thread x{_fmt(s.get('engine_thread_vs_serial'))}")
    return (s["throughput_vs_serial"], base, note) + ((f"{s['errors']} requests failed",) if s.get("errors") else ())


def serve_followup(d: dict) -> Figure | str | None:
    """bench_serve: a follow-up question's TTFT on a cached document, as a fraction of the first question's."""
    row = {r["path"]: r for r in d["rows"]}.get("document_cache")
    if row is None or d["summary"].get("ttft_followup_fraction") is None:
        return None if row is None else _left_out(d["summary"], "ttft_followup_fraction")
    base = f"first {row['ttft_first_s'] * 1e3:,.1f} ms vs follow-up {row['ttft_followup_s'] * 1e3:,.1f} ms"
    return d["summary"]["ttft_followup_fraction"], base, f"{row['doc_chars']:,}-character documents"


def train_speedup(d: dict) -> Figure | None:
    """bench_train: an SFT step on the text backbone's tokens over the same step on Glyph's pages."""
    s = d["summary"]
    if s.get("speedup_max_tokens") is None or not d["rows"]:
        return None
    last = max(d["rows"], key=lambda r: r["tokens"])
    return s["speedup_max_tokens"], f"text step {last['text_step_s']:.3f} s vs glyph {last['glyph_step_s']:.3f} s", \
        f"{last['tokens']:,} tokens, {s.get('config', '?')} (the paper: full SFT at 128K)"


TARGETS = [
    Target("rasterizer", "128K-token document -> pixel_values (GPU ms)", "render-gpu", "bench-render", "<=", 2.0,
           "ms", render_ms),
    Target("rasterizer", "batch throughput (pages/s)", "render-gpu", "bench-render", ">=", 50_000, "pages/s",
           render_pps),
    Target("patch embed", "uint8 vs F.linear on bf16 input (x)", "patch-embed", "bench-patch-embed", ">=", 1.2, "x",
           pe_ratio("speedup_vs_linear_bf16", "linear_bf16")),
    Target("patch embed", "uint8 vs HF Conv3d (x)", "patch-embed", "bench-patch-embed", ">=", 5.0, "x",
           pe_ratio("speedup_vs_conv3d", "hf_conv3d")),
    Target("attention", "vision varlen vs best library backend (x)", "attention", "bench-attention", ">=", 1.0, "x",
           attn_ratio("vision_ratio_vs_best", "vision")),
    Target("attention", "causal prefill 128K vs best library backend (x)", "attention", "bench-attention", ">=", 0.9,
           "x", attn_ratio("prefill_128k_ratio_vs_best", "prefill 128K")),
    Target("attention", "decode 128K, fraction of HBM bandwidth", "attention", "bench-attention", ">=", 0.70, "",
           None),  # needs the peak: see build()
    Target("attention", "auto vs the best backend, worst case (x; 0.95: the same kernel within timing noise)",
           "attention", "bench-attention", ">=", 0.95, "x", auto_ratio),
    Target("end to end", "prefill (TTFT) vs text backbone (x)", "e2e", "bench-e2e", ">=", 4.8, "x",
           e2e("prefill_speedup_128k", lambda r: f"text TTFT {r['text_rt_ttft_s']:.3f} s, both on glyph_rt; HF "
                                                 f"defaults x{_fmt(r.get('prefill_speedup_hf'))}")),
    Target("end to end", "decode vs text backbone (x)", "e2e", "bench-e2e", ">=", 4.4, "x",
           e2e("decode_speedup_128k", lambda r: f"text {r['text_rt_decode_s_per_sample']:.3f} s/sample, both on "
                                                f"glyph_rt; HF defaults x{_fmt(r.get('decode_speedup_hf'))}")),
    Target("end to end", "rendering, fraction of TTFT", "e2e", "bench-e2e", "<=", 0.01, "",
           e2e("render_fraction_of_ttft", lambda r: f"glyph_rt renders in {r['glyph_rt_render_s']:.3f} s")),
    Target("training", "SFT step vs text backbone (x)", "train", "bench-train", ">=", 2.0, "x", train_speedup),
    Target("training data", "GPU loader while a 9B SFT step trains (pages/s)", "bench_data", "bench-data", ">=", 1000,
           "pages/s", data_while_training),
    Target("serving", "requests/s under load vs serial generate (x)", "bench_serve", "bench-serve", ">=", 3.0, "x",
           serve_load),
    Target("serving", "follow-up on a cached document, fraction of the first's TTFT", "bench_serve", "bench-serve",
           "<=", 0.05, "", serve_followup),
    Target("serving", "TTFT, 128K-token document, vs text backbone (x)", "serve-backbone", "bench-serve-backbone",
           ">=", 4.0, "x", serve_backbone("ttft_speedup")),
    Target("serving", "requests/s under load vs text backbone (x)", "serve-backbone", "bench-serve-backbone", ">=",
           4.0, "x", serve_backbone("requests_per_s_ratio")),
]


def measured_on_cpu(d: dict) -> str:
    """Why results measured without a GPU do not count against the H100 targets ("" when they were on one)."""
    if "gpu" not in d.get("machine", {}) or "cpu" in Path(d["_file"]).stem.split("-"):
        return f"{d['_file']} was measured on the CPU; the target is for an H100"
    return ""


def peak_of(results: dict, env: dict) -> float | None:
    for d in results.get("render-gpu", []):
        if d["summary"].get("peak_gbps"):
            return d["summary"]["peak_gbps"]
    return env.get("peak_gbps")


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.3g}" if abs(v) < 1 else f"{v:.2f}"


def target_rows(results: dict, steps: dict, env: dict) -> list[list[str]]:
    rows = []
    peak = peak_of(results, env)
    for t in TARGETS:
        get = t.get or (lambda d: decode_bandwidth(d, peak))
        figs, errors = [], []
        for d in results.get(t.bench, []):
            cpu = measured_on_cpu(d)
            if cpu:
                errors.append(cpu)
                continue
            try:
                f = get(d)
            except (KeyError, TypeError, ValueError, ZeroDivisionError, AttributeError) as e:
                errors.append(f"{d['_file']}: unreadable ({type(e).__name__}: {e})")
                continue
            if isinstance(f, str):
                errors.append(f)
            elif f is not None:
                figs.append((d, f))
        if errors and not figs:
            rows.append([t.area, t.what, "-", f"{t.op} {_fmt(t.threshold)}", "-", "missing", "; ".join(errors)])
        if not figs and not errors:
            step = [s for n, s in steps.items() if made_by(n, t.step)]
            why = "; ".join(f"{s['name']}: {s['status']}" + (f" ({s['note']})" if s.get("note") else "")
                            for s in step) or f"step {t.step} did not run"
            if t.get is None and results.get(t.bench) and not peak:
                why = "the GPU's peak bandwidth is unknown"
            rows.append([t.area, t.what, "-", f"{t.op} {_fmt(t.threshold)}", "-", "missing", why])
            continue
        for d, (v, base, note, *invalid) in figs:
            ok = (v <= t.threshold if t.op == "<=" else v >= t.threshold) and not any(invalid)
            note = "; ".join(x for x in (*invalid, note) if x)
            rows.append([t.area, t.what, _fmt(v), f"{t.op} {_fmt(t.threshold)}", base, "pass" if ok else "FAIL",
                         f"{note}; {d['_file']}"])
    return rows


def junit_counts(path: Path) -> dict | None:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    c = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    c["passed"] = c["tests"] - c["failures"] - c["errors"] - c["skipped"]
    c["failed"] = [f"{tc.get('classname', '')}::{tc.get('name', '')}" for s in suites for tc in s.iter("testcase")
                   if tc.find("failure") is not None or tc.find("error") is not None]
    return c


def test_rows(out: Path, steps: dict) -> list[list[str]]:
    rows = []
    for name, s in steps.items():
        xmls = [out / x for x in s.get("junit", [])]
        if not xmls:
            continue
        counts = [c for c in map(junit_counts, xmls) if c]
        tot = {k: sum(c[k] for c in counts) for k in ("passed", "failures", "errors", "skipped")}
        failed = [f for c in counts for f in c["failed"]]
        missing = len(xmls) - len(counts)
        note = ", ".join(failed[:8]) + (f" and {len(failed) - 8} more" if len(failed) > 8 else "")
        if missing:
            note = (note + "; " if note else "") + f"{missing} of {len(xmls)} runs left no report (see the log)"
        rows.append([name, s["status"], str(tot["passed"]), str(tot["failures"] + tot["errors"]), str(tot["skipped"]),
                     note or "-"])
    return rows


SANITIZER = re.compile(r"(ERROR SUMMARY: \d+ errors?|RACECHECK SUMMARY: [^\n]*)")


def sanitizer_rows(out: Path, steps: dict) -> list[list[str]]:
    rows = []
    for name, s in steps.items():
        if not name.startswith("sanitizer"):
            continue
        text = (out / s["log"]).read_text(errors="replace") if s.get("log") and (out / s["log"]).exists() else ""
        found = SANITIZER.findall(text)
        clean = bool(found) and all(re.search(r"\b0 (errors?|hazards)", f) for f in found)
        if s["status"] in ("skipped", *UNFINISHED):
            verdict = "not run" if s["status"] == "pending" else s["status"]
        elif s["status"] == "timeout" and (clean or not found):  # cut off before a verdict, and no error so far
            verdict = "timeout"
        else:
            verdict = "pass" if clean and s["status"] == "ok" else "FAIL"
        rows.append([name, verdict, "; ".join(sorted(set(found))) or s.get("note") or s["status"]])
    return rows


def table(header: list[str], rows: list[list[str]]) -> str:
    esc = [[c.replace("|", "\\|").replace("\n", " ") for c in r] for r in rows]
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(r) + " |" for r in esc])


def build(out: Path) -> str:
    out = Path(out)
    results = load_results(out)
    steps = {s["name"]: s for s in load_steps(out)}
    try:
        env = json.loads((out / "environment.json").read_text())
    except (OSError, ValueError):
        env = {}
    mode = env.get("mode", "gpu")
    lines = ["# glyph_rt GPU suite", ""]
    unfinished = [n for n, s in steps.items() if s.get("status") in UNFINISHED]
    if unfinished:
        lines += [f"**Incomplete run**: {len(unfinished)} of {len(steps)} steps did not finish "
                  f"({', '.join(unfinished)}): the run was killed (the machine's time limit?) or still runs; this is "
                  "what the steps before them left.", ""]
    what = [f"{k}: {env[k]}" for k in ("gpu", "torch", "cuda", "triton", "transformers", "python", "commit")
            if env.get(k)]
    lines += [", ".join(what) or "environment unknown (the environment step did not run)", ""]
    if env.get("missing"):
        lines += [f"**Python modules missing on this machine**: {', '.join(env['missing'])}; the steps that import "
                  "them fail (bench/offline_wheels.sh fetches wheels for a machine without network).", ""]
    if mode == "cpu-smoke":
        lines += ["**CPU smoke mode**: steps that need CUDA (the sanitizers, the GPU benchmarks) are "
                  "skipped, and the figures come from tiny CPU runs: they check that the suite runs, not the "
                  "targets.", ""]
    rows = target_rows(results, steps, env)
    counts = {k: sum(r[5].startswith(k) for r in rows) for k in ("pass", "FAIL", "missing")}
    lines += ["## Targets", "",
              f"{counts['pass']} pass, {counts['FAIL']} fail, {counts['missing']} missing "
              "(H100 targets, bf16; the baseline is measured in the same run).", "",
              table(["area", "figure", "measured", "target", "baseline (same run)", "status", "note"], rows), ""]
    tests = test_rows(out, steps)
    if tests:
        lines += ["## Tests", "", table(["step", "status", "passed", "failed", "skipped", "failures"], tests), ""]
    san = sanitizer_rows(out, steps)
    if san:
        lines += ["## Sanitizers", "", table(["step", "result", "summary"], san), ""]
    other = sorted(k for k in results if k not in {t.bench for t in TARGETS})
    if other:
        lines += ["## Other results", ""]
        lines += [f"- {k} ({d['_file']}): " + ", ".join(f"{a}={b}" for a, b in d["summary"].items())
                  for k in other for d in results[k]]
        lines += [""]
    step_rows = [[s["name"], s["status"], f"{s.get('seconds', 0):.1f}", f"{s.get('budget_s', 0):.0f}",
                  s.get("log") or "-", s.get("note") or "-"] for s in steps.values()]
    lines += ["## Steps", "", table(["step", "status", "seconds", "budget", "log", "note"], step_rows), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python bench/summary.py OUTDIR", file=sys.stderr)
        return 2
    out = Path(argv[0])
    if not out.is_dir():
        print(f"OUTDIR {out}: not a directory; give the directory bench/gpu_suite.sh wrote", file=sys.stderr)
        return 2
    write_atomic(out / "summary.md", build(out))
    print(f"wrote {out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
