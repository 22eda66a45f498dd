"""Patch embedding in bfloat16: the Hugging Face Conv3d, the Linear reshape, and glyph_rt.

For 8K to 128K patches of GLM-4.1V's vision tower (1536 wide), in the same run:
  - hf_conv3d:          Glm4vVisionPatchEmbed (nn.Conv3d) on pixel_values [N, 1176]
  - linear:             F.linear on bf16 pixel_values [N, 1176] with the Conv3d weight reshaped
                        (what vLLM / HF now do)
  - ours_pixel_values:  glyph_rt's GEMM on pixel_values (a drop-in)
  - linear_bf16_k588:   F.linear on the same patches already in bf16 [N, 588] (cuBLAS on the same folded
                        weights, [D, 588] contiguous; the cast not timed): rows 1176 bytes apart, not 16-byte aligned
  - linear_bf16_k592:   the same on the rows zero-padded to [N, 592] with the [D, 592] weight (aligned rows)
  - linear_bf16:        the target's baseline: the faster of the two (its "variant" says which)
  - linear_u8:          the same from uint8 patches: F.linear(u8.to(bf16), W_folded, b_folded), the cast timed
  - ours_uint8:         glyph_rt's GEMM on uint8 patches ([N, 588] views of 592-byte rows, as
                        render_inputs returns them), normalization folded in
Each is timed with triton.testing.do_bench (median ms, after warm-up) and printed with TFLOP/s
(of the GEMM each performs) and GB/s; ratios of ours_uint8 against the Conv3d (speedup_vs_conv3d),
against linear_bf16 (speedup_vs_linear_bf16, graded), linear_u8 and linear (speedup_vs_linear_u8, _linear). Writes
patch-embed-<backend>-<gpu>.json (patch-embed-<backend>-<device>-quick.json with --quick; <backend>: triton, cuda or
auto) to --out (bench/out/; bench/results/ with --results), so that the two backends' runs keep both files.

    python bench/bench_patch_embed.py [--backend triton|cuda] [--sizes 8192,16384,...]
    python bench/bench_patch_embed.py --quick     # small sizes; on the CPU without a GPU (smoke test)
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.common import add_output_args, median_seconds, write_result  # noqa: E402
from glyph_rt.models.patch_embed import PatchEmbed  # noqa: E402
from glyph_rt.ops.patch_embed import expand_uint8  # noqa: E402
from glyph_rt.ops.pixel_values import uint8_rows  # noqa: E402


def timer(device):
    """fn -> median milliseconds: do_bench on a GPU, wall time on the CPU."""
    if device.type == "cuda":
        from triton.testing import do_bench

        return lambda fn: do_bench(fn, return_mode="median")
    return lambda fn: 1e3 * median_seconds(fn, repeat=3)


def faster(row: dict, *keys: str) -> dict:
    """The fastest of the row's timings `keys`, with its key as "variant"."""
    best = min(keys, key=lambda k: row[k]["ms"])
    return {**row[best], "variant": best}


# (ratio, baseline, ours): baseline time / ours
RATIOS = [("speedup_vs_conv3d", "hf_conv3d", "ours_uint8"), ("speedup_vs_linear_bf16", "linear_bf16", "ours_uint8"),
          ("speedup_vs_linear_u8", "linear_u8", "ours_uint8"), ("speedup_vs_linear", "linear", "ours_uint8"),
          ("pixel_values_vs_linear", "linear", "ours_pixel_values")]


def summarise(rows: list) -> dict:
    summary = {k: round(min(r[k] for r in rows if k in r), 2) for k, *_ in RATIOS if any(k in r for r in rows)}
    summary["note"] = "minimum over the sizes; speedup_* are of ours_uint8"
    return summary


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default=None, help="glyph_rt backend: triton or cuda (default: auto)")
    ap.add_argument("--sizes", default=None, help="patch counts, comma-separated (default 8192..131072)")
    ap.add_argument("--dim", type=int, default=1536)
    ap.add_argument("--quick", action="store_true", help="sizes 1024,4096; runs on the CPU when there is no GPU")
    add_output_args(ap)
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not args.quick:
        raise SystemExit("bench_patch_embed needs a CUDA GPU (or --quick for the CPU smoke test)")
    from transformers.models.glm4v.configuration_glm4v import Glm4vVisionConfig
    from transformers.models.glm4v.modeling_glm4v import Glm4vVisionPatchEmbed

    dev, dt, D = torch.device("cuda" if cuda else "cpu"), torch.bfloat16, args.dim
    sizes = args.sizes or ("1024,4096" if args.quick else "8192,16384,32768,65536,131072")
    backend = args.backend or "auto"
    hf = Glm4vVisionPatchEmbed(Glm4vVisionConfig(hidden_size=D)).to(dev, dt).eval()
    ours = PatchEmbed.from_hf(hf, backend=backend)
    w2d, bias = hf.proj.weight.view(D, -1), hf.proj.bias
    name = torch.cuda.get_device_name(dev) if cuda else "cpu"
    ms_of = timer(dev)
    rows = []
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower().replace("nvidia", "")).strip("-")
    # the backend in the name: the triton and the cuda runs of one GPU write two files, not one over the other
    out_name = f"patch-embed-{re.sub(r'[^a-z0-9]+', '-', backend.lower())}-{slug}{'-quick' if args.quick else ''}.json"

    def save(rows):
        return write_result(args, out_name, "patch-embed", rows, summarise(rows), device=dev)

    p = None
    with torch.no_grad():
        wf, bf = ours.folded()  # folded once per weight version, as in inference
        w_lin = wf[:588].t().contiguous()  # [D, 588]: the Linear layout cuBLAS runs best
        w_pad = wf.t().contiguous()  # [D, 592], its last 4 columns zero
        for n in [int(s) for s in sizes.split(",")]:
            u8 = uint8_rows(n, dev)
            u8.copy_(torch.randint(0, 256, (n, 588), dtype=torch.uint8, device=dev))
            pv = expand_uint8(u8, dt)
            x16 = u8.to(dt)  # the same rows already in bf16: the target's F.linear on bf16 input
            x16_pad = F.pad(x16, (0, 4))  # [N, 592]: 16-byte aligned rows, as the folded weight's
            runs = {  # name: (fn, K of its GEMM, bytes of its input)
                "hf_conv3d": (lambda: hf(pv), 1176, n * 1176 * 2),
                "linear": (lambda: F.linear(pv, w2d, bias), 1176, n * 1176 * 2),
                "ours_pixel_values": (lambda: ours(pv), 1176, n * 1176 * 2),
                "linear_bf16_k588": (lambda: F.linear(x16, w_lin, bf), 588, n * 588 * 2),
                "linear_bf16_k592": (lambda: F.linear(x16_pad, w_pad, bf), 588, n * 592 * 2),  # the useful columns
                "linear_u8": (lambda: F.linear(u8.to(dt), w_lin, bf), 588, n * 588),
                "ours_uint8": (lambda: ours(u8), 588, n * 592),  # TFLOP/s of the useful 588 columns
            }
            row = {"patches": n, "dim": D, "dtype": "bfloat16", "backend": backend, "device": str(dev)}
            for key, (fn, k, in_bytes) in runs.items():
                try:  # one variant that fails (an OOM, a backend's error) costs only its own figures
                    ms = ms_of(fn)
                except Exception as e:  # noqa: BLE001 - recorded in the row
                    row[key] = {"error": f"{type(e).__name__}: {e}"[:500]}
                    print(f"N={n}: {key} failed: {row[key]['error']}", flush=True)
                    continue
                moved = in_bytes + k * D * 2 + n * D * 2  # input, weight, output
                row[key] = {"ms": ms, "tflops": 2 * n * k * D / ms / 1e9, "gbps": moved / ms / 1e6}
            timed = [k for k in runs if "ms" in row[k]]
            bf16 = [k for k in ("linear_bf16_k588", "linear_bf16_k592") if k in timed]
            if bf16:
                row["linear_bf16"] = faster(row, *bf16)
            for ratio, base, ours_key in RATIOS:
                if "ms" in row.get(base, {}) and "ms" in row.get(ours_key, {}):
                    row[ratio] = row[base]["ms"] / row[ours_key]["ms"]
            rows.append(row)
            p = save(rows)  # after every size: a run cut short keeps what it measured
            print(f"N={n:7d} " + "  ".join(f"{k} {row[k]['ms']:.3f} ms ({row[k]['tflops']:.1f} TFLOP/s, "
                                           f"{row[k]['gbps']:.0f} GB/s)" for k in timed)
                  + "  " + ", ".join(f"{ratio} {row[ratio]:.2f}x" for ratio, *_ in RATIOS if ratio in row))
    print(f"{name}: summary {summarise(rows)}\nwrote {p}")


if __name__ == "__main__":
    main()
