"""Attention on the GPU in bfloat16: glyph_rt's Triton kernel beside torch SDPA's backends and flash_attn.

  (a) vision tower: 64 pages x 2,520 patches as varlen segments, 12 heads x 128, bidirectional
  (b) prefill: 8K to 128K tokens, causal, 32 query heads and 2 KV heads x 128 (GLM-4-9B)
  (c) decode: one new token per request against a KV cache of 32K or 128K tokens in
      transformers' layout, batch 1 and 8, GLM-4-9B's heads (glyph_rt's split-key kernel)

For each backend, and for the dispatcher's choice (attention(backend="auto"); in (c) the transformers
attention function, which takes the decode kernel when auto resolves to glyph): milliseconds and TFLOP/s,
forward and forward+backward (triton.testing.do_bench, median after warm-up). FLOPs: forward
4 * sum(Lq * Lk) * heads * dim (halved when causal), backward 2.5x the forward. Decoding is bound by reading
the cache, so (c) reports GB/s of K and V read. A backend that cannot run a shape is listed with its error.
Writes attention-<gpu>.json to --out (bench/out/; bench/results/ with --results), replaced whole after every
backend (a run cut short keeps what it measured), with summary vision_ratio_vs_best, prefill_128k_ratio_vs_best
and decode_128k_ratio_vs_best (the best library backend's forward time over ours; > 1 is faster), and
auto_ratio_vs_best (per case the best backend's forward time, glyph's included, over auto's; the least over the
cases, which auto_worst_case names; >= 1 when auto is never slower than the best backend).

    python bench/bench_attention.py [--prefill 8192,32768,131072] [--no-backward] [--write-choices]

The summary's `choices` names, per case, the fastest of the dispatcher's backends (glyph, sdpa, flash_attn);
--write-choices stores them in glyph_rt/data/attention_backends.json under this GPU's name and compute
capability: the table attention(backend="auto") reads.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench.common import add_output_args, write_result  # noqa: E402
from glyph_rt.ops.attention import attention, flash_attn_varlen, glyph_attention_forward  # noqa: E402

CHOICES = Path(__file__).resolve().parent.parent / "glyph_rt" / "data" / "attention_backends.json"


def sdpa_backends():
    from torch.nn.attention import SDPBackend

    return {"sdpa_flash": SDPBackend.FLASH_ATTENTION, "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION,
            "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION}


def runner(name, q, k, v, cu, max_len, causal):
    """A zero-argument forward for backend `name`."""
    # flash_attn: through the dispatcher, which calls FA2 and FA4 each with its own arguments; sdpa: torch's own
    # pick among its kernels, what the dispatcher's "sdpa" runs; auto: the dispatcher's choice for this GPU
    if name in ("glyph", "flash_attn", "sdpa", "auto"):
        return lambda: attention(q, k, v, cu, cu, max_len, max_len, causal=causal, backend=name)
    from torch.nn.attention import sdpa_kernel

    backend = sdpa_backends()[name]

    def run():
        with sdpa_kernel(backend):
            return attention(q, k, v, cu, cu, max_len, max_len, causal=causal, backend="sdpa")
    return run


def error_text(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"


def release_cached_memory() -> None:
    """Frees the allocator's cached blocks after a failed run. After a sticky CUDA error (an illegal access) this
    raises that error again, which the failed row already holds: it must not end the run before that row and the
    others are written."""
    try:
        torch.cuda.empty_cache()
    except Exception as e:
        print(f"torch.cuda.empty_cache after the failure: {error_text(e)}")


def measure(name, q, k, v, cu, max_len, causal, flops, backward: bool) -> dict:
    from triton.testing import do_bench

    fwd = runner(name, q, k, v, cu, max_len, causal)
    row = {"backend": name}
    try:
        ms = do_bench(fwd, return_mode="median")
        row.update(fwd_ms=ms, fwd_tflops=flops / ms / 1e9)
        if backward:
            qq, kk, vv = (x.detach().requires_grad_() for x in (q, k, v))
            f = runner(name, qq, kk, vv, cu, max_len, causal)
            out = f()
            do = torch.randn_like(out[0] if isinstance(out, tuple) else out)

            def step():
                o = f()
                (o[0] if isinstance(o, tuple) else o).backward(do)

            ms = do_bench(step, grad_to_none=[qq, kk, vv], return_mode="median")
            row.update(fwd_bwd_ms=ms, fwd_bwd_tflops=3.5 * flops / ms / 1e9)
    except Exception as e:  # unsupported shape, dtype or GQA: say so in the table
        row["error"] = error_text(e)
        release_cached_memory()
    return row


def case(label, lens, hq, hkv, d, causal, backends, backward):
    """Each backend's row, as it is measured."""
    dev, dt = torch.device("cuda"), torch.bfloat16
    total = sum(lens)
    q = torch.randn(total, hq, d, device=dev, dtype=dt)
    k = torch.randn(total, hkv, d, device=dev, dtype=dt)
    v = torch.randn(total, hkv, d, device=dev, dtype=dt)
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32, device=dev)
    flops = 4 * sum(n * n for n in lens) * hq * d / (2 if causal else 1)
    for name in backends:
        r = measure(name, q, k, v, cu, max(lens), causal, flops, backward)
        r.update(case=label, tokens=total, segments=len(lens), heads=hq, kv_heads=hkv, head_dim=d, causal=causal)
        shown = "  ".join(f"{key} {r[key]:.1f}" for key in ("fwd_tflops", "fwd_bwd_tflops") if key in r)
        print(f"{label:28s} {name:15s} {shown or r.get('error')}")
        yield r


def decode_case(batch: int, keys: int, hq=32, hkv=2, d=128):
    """(c): q [B, 1, Hq, D] against a cache [B, Hkv, Sk, D] read in place; each backend's row, as it is measured.
    auto runs as a model's decoding step does: through the transformers attention function."""
    import torch.nn.functional as F
    from triton.testing import do_bench

    from glyph_rt.kernels.attention_decode import decode
    from torch.nn.attention import sdpa_kernel

    dev, dt = torch.device("cuda"), torch.bfloat16
    q = torch.randn(batch, 1, hq, d, device=dev, dtype=dt)
    k = torch.randn(batch, hkv, keys, d, device=dev, dtype=dt)
    v = torch.randn_like(k)
    scale = d ** -0.5
    cache_bytes = 2 * k.numel() * k.element_size()
    label = f"decode {keys // 1024}K x{batch}, 32q/2kv x128"
    runs = {"glyph": lambda: decode(q, k.transpose(1, 2), v.transpose(1, 2), None, True, scale),
            "sdpa": lambda: F.scaled_dot_product_attention(q.transpose(1, 2), k, v, scale=scale, enable_gqa=True)}
    for name, backend in sdpa_backends().items():
        def run(backend=backend):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q.transpose(1, 2), k, v, scale=scale, enable_gqa=True)
        runs[name] = run
    runs["auto"] = lambda: glyph_attention_forward(None, q.transpose(1, 2), k, v, None, scaling=scale, is_causal=True,
                                                   backend="auto")
    for name, fn in runs.items():
        row = {"backend": name, "case": label, "tokens": keys, "batch": batch, "heads": hq, "kv_heads": hkv,
               "head_dim": d, "causal": True}
        try:
            ms = do_bench(fn, return_mode="median")
            row.update(fwd_ms=ms, fwd_gbps=cache_bytes / ms / 1e6)
        except Exception as e:
            row["error"] = error_text(e)
            release_cached_memory()
        print(f"{label:28s} {name:15s} " + (f"{row['fwd_gbps']:.0f} GB/s" if "fwd_gbps" in row else row["error"]))
        yield row


def ratio_vs_best(rows, ours: str = "glyph") -> float | None:
    """The best other backend's forward time over `ours`' (> 1: ours is faster). auto, which runs one of the
    others, is never among them; for ours="auto" glyph is."""
    mine = next((r for r in rows if r["backend"] == ours and "fwd_ms" in r), None)
    others = [r["fwd_ms"] for r in rows if r["backend"] not in (ours, "auto") and "fwd_ms" in r]
    return round(min(others) / mine["fwd_ms"], 3) if mine and others else None


def note_auto(rows) -> float | None:
    """Puts auto_ratio_vs_best and best_backend on the case's auto row; returns the ratio."""
    auto = next((r for r in rows if r["backend"] == "auto"), None)
    timed = [r for r in rows if r["backend"] != "auto" and "fwd_ms" in r]
    ratio = ratio_vs_best(rows, "auto")
    if auto is not None and timed:
        auto.update(auto_ratio_vs_best=ratio, best_backend=min(timed, key=lambda r: r["fwd_ms"])["backend"])
    return ratio


def choices(rows_by_case: dict[str, list[dict]]) -> dict:
    """{case: {"backend", "fwd_ms", "measured"}}: the fastest of the dispatcher's backends (glyph, sdpa as
    torch picks its kernel, flash_attn) per case, forward time; the sdpa_* rows pin one SDPA kernel,
    which the dispatcher cannot, so they do not compete."""
    out = {}
    for case, rows in rows_by_case.items():
        timed = [r for r in rows if r["backend"] in ("glyph", "sdpa", "flash_attn") and "fwd_ms" in r]
        if timed:
            best = min(timed, key=lambda r: r["fwd_ms"])
            out[case] = {"backend": best["backend"], "fwd_ms": round(best["fwd_ms"], 4), "measured": best["case"],
                         "others_ms": {r["backend"]: round(r["fwd_ms"], 4) for r in timed if r is not best}}
    return out


def write_choices(gpu: str, capability: tuple[int, int], table: dict, path: Path = CHOICES) -> None:
    """Stores the choices under the GPU's name and its compute capability (sm_XY) in the package's table."""
    data = json.loads(path.read_text())
    for key in (gpu, f"sm_{capability[0]}{capability[1]}"):
        data["gpus"].setdefault(key, {}).update(table)
    path.write_text(json.dumps(data, indent=2) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prefill", default="8192,16384,32768,65536,131072")
    ap.add_argument("--no-backward", action="store_true")
    add_output_args(ap)
    ap.add_argument("--write-choices", action="store_true",
                    help="store the fastest backend per case for this GPU in glyph_rt/data/attention_backends.json")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_attention needs a CUDA GPU")
    backends = ["glyph", "sdpa", *sdpa_backends()]
    fa = flash_attn_varlen(torch.cuda.get_device_capability(0), 128)  # every case here is at head dim 128
    if fa[0] is not None:
        backends.append("flash_attn")
    backends.append("auto")
    backward = not args.no_backward
    gpu = torch.cuda.get_device_name(0)
    slug = re.sub(r"[^a-z0-9]+", "-", gpu.lower().replace("nvidia", "")).strip("-")
    summary = {"vision_ratio_vs_best": None, "prefill_128k_ratio_vs_best": None, "decode_128k_ratio_vs_best": None,
               "auto_ratio_vs_best": None, "auto_worst_case": None, "flash_attn": fa[1]}
    rows: list[dict] = []
    auto_ratios: dict[str, float] = {}

    def save():
        return write_result(args, f"attention-{slug}.json", "attention", rows, summary)

    def measured(case_rows) -> list[dict]:
        """The case's rows, each written out as soon as it is measured; then auto's ratio for the case."""
        mine = []
        for r in case_rows:
            mine.append(r)
            rows.append(r)
            save()
        if (ratio := note_auto(mine)) is not None:
            auto_ratios[mine[0]["case"]] = ratio
            summary["auto_worst_case"] = min(auto_ratios, key=auto_ratios.get)
            summary["auto_ratio_vs_best"] = auto_ratios[summary["auto_worst_case"]]
        return mine

    r = measured(case("vision 64x2520, 12x128", [2520] * 64, 12, 12, 128, False, backends, backward))
    summary["vision_ratio_vs_best"] = ratio_vs_best(r)
    by_case = {"vision": r}
    save()
    for n in [int(s) for s in args.prefill.split(",")]:
        r = measured(case(f"prefill {n // 1024}K, 32q/2kv x128", [n], 32, 2, 128, True, backends, backward))
        by_case["prefill"] = r  # the longest prefill decides
        if n == 131072:
            summary["prefill_128k_ratio_vs_best"] = ratio_vs_best(r)
        save()
    for keys in (32768, 131072):
        for batch in (1, 8):
            r = measured(decode_case(batch, keys))
            by_case["decode"] = r  # the longest cache at the largest batch decides
            if keys == 131072 and batch == 8:
                summary["decode_128k_ratio_vs_best"] = ratio_vs_best(r)
            save()
    table = choices(by_case)
    summary["choices"] = {c: t["backend"] for c, t in table.items()}  # what --write-choices would store
    p = save()
    print(f"{gpu}: summary {summary}\nwrote {p}")
    if args.write_choices:
        write_choices(gpu, torch.cuda.get_device_capability(0), table)
        print(f"auto's choices for {gpu}: {json.dumps({c: t['backend'] for c, t in table.items()})} -> {CHOICES}")


if __name__ == "__main__":
    main()
