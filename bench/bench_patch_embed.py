"""Patch embedding on the GPU in bfloat16: the Hugging Face Conv3d, the Linear reshape, and glyph_rt.

For 8K to 128K patches of GLM-4.1V's vision tower (1536 wide), in the same run:
  - hf_conv3d:          Glm4vVisionPatchEmbed (nn.Conv3d) on pixel_values [N, 1176]
  - linear:             the Linear reshape of the same weight on pixel_values (what vLLM / HF now do)
  - ours_pixel_values:  glyph_rt's GEMM on pixel_values (a drop-in)
  - linear_from_uint8:  raw uint8 patches normalized and repeated over both frames, then the Linear
  - ours_uint8:         glyph_rt's 588-wide GEMM on uint8 patches, normalization folded in
Each is timed with triton.testing.do_bench (median ms, after warm-up) and printed with TFLOP/s
(of the GEMM each performs) and GB/s; ratios are against the Conv3d and against the Linear path
from uint8 patches. Writes patch-embed-<gpu>.json to --out (bench/out/; bench/results/ with
--results).

    python bench/bench_patch_embed.py [--backend triton|cuda] [--sizes 8192,16384,...]
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.common import add_output_args, write_result  # noqa: E402
from glyph_rt.models.patch_embed import PatchEmbed  # noqa: E402
from glyph_rt.ops.patch_embed import expand_uint8  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="triton", help="glyph_rt backend: triton or cuda")
    ap.add_argument("--sizes", default="8192,16384,32768,65536,131072")
    ap.add_argument("--dim", type=int, default=1536)
    add_output_args(ap)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_patch_embed needs a CUDA GPU")
    from transformers.models.glm4v.configuration_glm4v import Glm4vVisionConfig
    from transformers.models.glm4v.modeling_glm4v import Glm4vVisionPatchEmbed
    from triton.testing import do_bench

    dev, dt, D = torch.device("cuda"), torch.bfloat16, args.dim
    hf = Glm4vVisionPatchEmbed(Glm4vVisionConfig(hidden_size=D)).to(dev, dt).eval()
    ours = PatchEmbed.from_hf(hf, backend=args.backend)
    w2d, bias = hf.proj.weight.view(D, -1), hf.proj.bias
    gpu = torch.cuda.get_device_name(dev)
    rows = []
    with torch.no_grad():
        ours.folded()  # folded once per weight version, as in inference
        for n in [int(s) for s in args.sizes.split(",")]:
            u8 = torch.randint(0, 256, (n, 588), dtype=torch.uint8, device=dev)
            pv = expand_uint8(u8, dt)
            runs = {
                "hf_conv3d": (lambda: hf(pv), 1176, n * 1176 * 2),
                "linear": (lambda: F.linear(pv, w2d, bias), 1176, n * 1176 * 2),
                "ours_pixel_values": (lambda: ours(pv), 1176, n * 1176 * 2),
                "linear_from_uint8": (lambda: F.linear(expand_uint8(u8, dt), w2d, bias), 1176, n * 588),
                "ours_uint8": (lambda: ours(u8), 588, n * 588),
            }
            row = {"patches": n, "dim": D, "dtype": "bfloat16", "backend": args.backend}
            for name, (fn, k, in_bytes) in runs.items():
                ms = do_bench(fn, return_mode="median")
                moved = in_bytes + k * D * 2 + n * D * 2  # input, weight, output
                row[name] = {"ms": ms, "tflops": 2 * n * k * D / ms / 1e9, "gbps": moved / ms / 1e6}
            row["speedup_vs_conv3d"] = row["hf_conv3d"]["ms"] / row["ours_uint8"]["ms"]
            row["speedup_vs_linear"] = row["linear_from_uint8"]["ms"] / row["ours_uint8"]["ms"]
            row["pixel_values_vs_linear"] = row["linear"]["ms"] / row["ours_pixel_values"]["ms"]
            rows.append(row)
            print(f"N={n:7d} " + "  ".join(f"{k} {row[k]['ms']:.3f} ms ({row[k]['tflops']:.0f} TFLOP/s)"
                                           for k in runs)
                  + f"  vs conv3d {row['speedup_vs_conv3d']:.1f}x, vs linear(uint8) {row['speedup_vs_linear']:.2f}x")
    summary = {
        "speedup_vs_conv3d": round(min(r["speedup_vs_conv3d"] for r in rows), 2),
        "speedup_vs_linear": round(min(r["speedup_vs_linear"] for r in rows), 2),
        "pixel_values_vs_linear": round(min(r["pixel_values_vs_linear"] for r in rows), 2),
        "note": "minimum over the sizes",
    }
    slug = re.sub(r"[^a-z0-9]+", "-", gpu.lower().replace("nvidia", "")).strip("-")
    p = write_result(args, f"patch-embed-{slug}.json", "patch-embed", rows, summary)
    print(f"{gpu}: summary {summary}\nwrote {p}")


if __name__ == "__main__":
    main()
