"""End to end: Glyph (pages + vision tower + GLM-4 decoder) against its text backbone (the decoder alone).

For N tokens of real prose (counted with Qwen's tokenizer; GLM's is not bundled), in GLM-4.1V-9B's
shapes with random weights on one GPU:
  text        the decoder's prefill on the N tokens, then decode
  glyph (hf)  the same text rendered at Glyph's config on the CPU, PNG round trip, the HF image
              processor, stock patch embed and SDPA attention: Hugging Face defaults
  glyph (rt)  glyph_rt: rendered on the GPU straight into pixel_values, patched model
Time to first token (TTFT) includes rendering, preprocessing, the vision tower and the prefill.
Decode: seconds per sample for --decode-tokens new tokens at the largest batch that fits.
KV cache: bytes per request. Visual tokens are counted from the rendered pages, never assumed.

    python bench/bench_e2e.py [--tokens 8192,...,131072] [--decode-tokens 256] [--profile DIR]
    python bench/bench_e2e.py --quick         # tiny shapes on the CPU: a smoke test

Writes results/e2e-<gpu>.json (summary: prefill_speedup_128k, decode_speedup_128k,
kv_memory_reduction, render_fraction_of_ttft) and, with matplotlib, results/e2e-<gpu>.png.
"""
from __future__ import annotations

import argparse
import io
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import glyph_rt  # noqa: E402
from bench.common import RESULTS, write_result  # noqa: E402
from glyph_rt.nvtx import nvtx_range  # noqa: E402
from glyph_rt.render.config import GLYPH_CONFIG_EN, RenderConfig  # noqa: E402
from glyph_rt.render.textio import sample_text  # noqa: E402
from glyph_rt.render.tokens import TextTokenizer  # noqa: E402

QUESTION = "Summarize the conditions under which the text may be copied and modified."
ROPE = {"rope_type": "default", "rope_theta": 10000, "partial_rotary_factor": 0.5, "mrope_section": [8, 12, 12]}


def build_model(quick: bool, device, dtype):
    """GLM-4.1V-9B's shapes (or tiny ones) with random weights."""
    from transformers import Glm4vConfig, Glm4vForConditionalGeneration

    if quick:
        cfg = Glm4vConfig(
            text_config=dict(vocab_size=151552, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=1 << 18,
                             rope_parameters={**ROPE, "mrope_section": [2, 1, 1]}),
            vision_config=dict(hidden_size=64, depth=2, num_heads=4, intermediate_size=128, out_hidden_size=64))
    else:
        cfg = Glm4vConfig(text_config=dict(rope_parameters=ROPE, max_position_embeddings=1 << 18))
    with torch.device(device):
        model = Glm4vForConditionalGeneration(cfg).to(dtype).eval()
    return model


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeat: int):
    """(median seconds, last result) of fn() after a warm-up call."""
    out = fn()
    times = []
    for _ in range(repeat):
        sync(device)
        t = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2], out


def kv_bytes(model, tokens: int) -> int:
    c = model.config.text_config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return c.num_hidden_layers * 2 * c.num_key_value_heads * head_dim * tokens * model.dtype.itemsize


class StageRanges:
    """NVTX ranges per stage: patch embed, each vision block, the prefill and every decode step."""

    def __init__(self, model):
        self.handles = []
        visual = model.model.visual
        self._wrap(visual.patch_embed, lambda kw: "glyph_rt.patch_embed")
        for i, blk in enumerate(visual.blocks):
            self._wrap(blk, lambda kw, i=i: f"glyph_rt.vision_block.{i}")
        self._wrap(model.model.language_model, self._lm_name)

    @staticmethod
    def _lm_name(kwargs) -> str:
        x = kwargs.get("inputs_embeds")
        x = x if x is not None else kwargs.get("input_ids")
        return "glyph_rt.decode" if x is not None and x.shape[1] == 1 else "glyph_rt.prefill"

    def _wrap(self, module, name):
        stack = []

        def pre(_, args, kwargs):
            r = nvtx_range(name(kwargs))
            r.__enter__()
            stack.append(r)

        def post(*_):
            stack.pop().__exit__(None, None, None)

        self.handles += [module.register_forward_pre_hook(pre, with_kwargs=True), module.register_forward_hook(post)]

    def remove(self):
        for h in self.handles:
            h.remove()


def glyph_inputs_hf(model, text: str, cfg: RenderConfig, tokenizer_ids, device):
    """Hugging Face defaults: pages drawn on the CPU, PNG round trip, the HF image processor."""
    from PIL import Image
    from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil

    t = time.perf_counter()
    pages = glyph_rt.render(text, cfg)
    images = []
    for i in range(len(pages)):  # what a PNG-based pipeline pays: encode, then decode
        buf = io.BytesIO()
        pages.to_pil(i).save(buf, format="PNG")
        buf.seek(0)
        images.append(Image.open(buf).convert("RGB"))
    render_s = time.perf_counter() - t
    px = Glm4vImageProcessorPil()(images, return_tensors="pt")
    return _prompt(model, px["pixel_values"].to(device), px["image_grid_thw"].to(device), tokenizer_ids, device), \
        render_s, len(pages)


def glyph_inputs_rt(model, text: str, cfg: RenderConfig, tokenizer_ids, device):
    t = time.perf_counter()
    mi = glyph_rt.render_inputs(text, cfg, device=device, dtype=model.dtype)
    sync(device)
    render_s = time.perf_counter() - t
    return _prompt(model, mi.pixel_values, mi.image_grid_thw, tokenizer_ids, device), render_s, len(mi.image_grid_thw)


def _prompt(model, pixel_values, grid, question_ids, device):
    """[begin_of_image, image tokens, end_of_image] per page, then the question's tokens."""
    c = model.config
    ids = []
    for g in grid.tolist():
        ids += [c.image_start_token_id] + [c.image_token_id] * (g[1] * g[2] // 4) + [c.image_end_token_id]
    ids += question_ids
    input_ids = torch.tensor([ids], device=device)
    return dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), pixel_values=pixel_values,
                image_grid_thw=grid, mm_token_type_ids=(input_ids == c.image_token_id).long())


def prefill(model, inputs) -> None:
    with torch.no_grad():
        model(**inputs, use_cache=True, logits_to_keep=1)


def decode_seconds_per_sample(model, inputs: dict, new_tokens: int, device, max_batch: int) -> tuple[float, int]:
    """Seconds per sample for `new_tokens` decode steps at the largest batch (power of 2) that fits."""
    def batch(b):
        return {k: (v.repeat(b, 1) if k in ("input_ids", "attention_mask", "mm_token_type_ids") else
                    v.repeat(b, *([1] * (v.dim() - 1))) if k in ("pixel_values", "image_grid_thw") else v)
                for k, v in inputs.items()}

    b, best = 1, None
    while b <= max_batch:
        try:
            x = batch(b)
            with torch.no_grad():
                t_pre, _ = timed(lambda: prefill(model, x), device, 1)
                t_all, _ = timed(lambda: model.generate(**x, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                                        do_sample=False), device, 1)
            best = (max(t_all - t_pre, 1e-9) / b, b)
            b *= 2
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            break
    return best


def run_length(model, n: int, prose: str, tok: TextTokenizer, args, device, question_ids):
    from glyph_rt.models import apply_glyph_kernels

    ids, text = tok.prefix(prose, n)
    vocab = model.config.text_config.vocab_size
    text_inputs = {"input_ids": torch.tensor([[i % vocab for i in ids]], device=device)}
    text_inputs["attention_mask"] = torch.ones_like(text_inputs["input_ids"])
    row = {"text_tokens": n, "chars": len(text)}
    lm = model  # the text backbone: the same decoder fed text tokens only
    with nvtx_range("glyph_rt.text_prefill"):
        row["text_ttft_s"], _ = timed(lambda: prefill(lm, text_inputs), device, args.repeat)
    glyph_cfg = RenderConfig.from_glyph_dict(GLYPH_CONFIG_EN)
    t = time.perf_counter()
    inputs_hf, render_hf, pages = glyph_inputs_hf(model, text, glyph_cfg, question_ids, device)
    pre_hf = time.perf_counter() - t
    row["glyph_hf_ttft_s"] = pre_hf + timed(lambda: prefill(model, inputs_hf), device, args.repeat)[0]
    row["glyph_hf_render_s"] = render_hf
    patch = apply_glyph_kernels(model)
    try:
        rt_cfg = _snapped(glyph_cfg)  # glyph_rt's canvas snapping: the kernel writes the model input directly

        def ttft_rt():
            x, r, _ = glyph_inputs_rt(model, text, rt_cfg, question_ids, device)
            prefill(model, x)
            return x, r

        row["glyph_rt_ttft_s"], (inputs_rt, render_rt) = timed(ttft_rt, device, args.repeat)
        row["glyph_rt_render_s"] = render_rt
        grid = inputs_rt["image_grid_thw"]
        row["pages"] = int(len(grid))
        row["visual_tokens"] = int((grid[:, 1] * grid[:, 2]).sum() // 4)
        row["compression"] = n / row["visual_tokens"]
        row["glyph_prompt_tokens"] = int(inputs_rt["input_ids"].shape[1])
        dec = decode_seconds_per_sample(model, inputs_rt, args.decode_tokens, device, args.max_batch)
        row["glyph_decode_s_per_sample"], row["glyph_decode_batch"] = dec if dec else (None, 0)
    finally:
        patch.undo()
    dec = decode_seconds_per_sample(lm, text_inputs, args.decode_tokens, device, args.max_batch)
    row["text_decode_s_per_sample"], row["text_decode_batch"] = dec if dec else (None, 0)
    row["text_kv_bytes"] = kv_bytes(model, n)
    row["glyph_kv_bytes"] = kv_bytes(model, row["glyph_prompt_tokens"])
    row["prefill_speedup_hf"] = row["text_ttft_s"] / row["glyph_hf_ttft_s"]
    row["prefill_speedup_rt"] = row["text_ttft_s"] / row["glyph_rt_ttft_s"]
    if row["glyph_decode_s_per_sample"] and row["text_decode_s_per_sample"]:
        row["decode_speedup"] = row["text_decode_s_per_sample"] / row["glyph_decode_s_per_sample"]
    row["kv_memory_reduction"] = 1 - row["glyph_kv_bytes"] / row["text_kv_bytes"]
    row["render_fraction_of_ttft"] = row["glyph_rt_render_s"] / row["glyph_rt_ttft_s"]
    return row


def _snapped(cfg: RenderConfig) -> RenderConfig:
    import dataclasses

    return dataclasses.replace(cfg, snap=28)


def plot(rows, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    n = [r["text_tokens"] // 1024 for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(n, [r["prefill_speedup_rt"] for r in rows], "o-", label="prefill (TTFT), glyph_rt")
    ax.plot(n, [r["prefill_speedup_hf"] for r in rows], "s--", label="prefill (TTFT), HF defaults")
    ax.plot(n, [r.get("decode_speedup") or float("nan") for r in rows], "^-", label="decode")
    ax.set_xscale("log", base=2)
    ax.set_xticks(n, [f"{k}K" for k in n])
    ax.set_xlabel("context length (text tokens)")
    ax.set_ylabel("speedup over the text backbone")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", default="8192,16384,32768,65536,131072")
    ap.add_argument("--decode-tokens", type=int, default=256)
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="tiny shapes on the CPU (a smoke test)")
    ap.add_argument("--profile", default=None, help="write a torch profiler trace of the glyph_rt path here")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        device, dtype = torch.device("cpu"), torch.float32
        args.tokens = args.tokens if argv and "--tokens" in argv else "256,512"
        args.decode_tokens, args.max_batch, args.repeat = min(args.decode_tokens, 4), 2, 1
    elif not torch.cuda.is_available():
        raise SystemExit("bench_e2e needs a CUDA GPU (or --quick for the CPU smoke test)")
    else:
        device, dtype = torch.device("cuda"), torch.bfloat16
    from glyph_rt.ops.attention import register_transformers

    register_transformers()
    model = build_model(args.quick, device, dtype)
    tok = TextTokenizer()
    prose = sample_text()
    while tok.count(prose) < max(int(s) for s in args.tokens.split(",")):
        prose += "\n" + sample_text()
    question_ids = tok.prefix(QUESTION, tok.count(QUESTION))[0]
    ranges = StageRanges(model)
    rows = []
    try:
        for n in [int(s) for s in args.tokens.split(",")]:
            row = run_length(model, n, prose, tok, args, device, question_ids)
            rows.append(row)
            print(f"{n:>7,} tokens: {row['pages']} pages, {row['visual_tokens']:,} visual tokens "
                  f"({row['compression']:.2f}x); TTFT text {row['text_ttft_s']:.3f} s, glyph HF "
                  f"{row['glyph_hf_ttft_s']:.3f} s, glyph_rt {row['glyph_rt_ttft_s']:.3f} s "
                  f"({row['prefill_speedup_rt']:.2f}x); decode {row.get('decode_speedup') or 0:.2f}x; "
                  f"KV -{row['kv_memory_reduction']:.0%}; render {row['render_fraction_of_ttft']:.1%} of TTFT")
        if args.profile:
            from glyph_rt.models import apply_glyph_kernels

            out = Path(args.profile)
            out.mkdir(parents=True, exist_ok=True)
            ids, text = tok.prefix(prose, int(args.tokens.split(",")[-1]))
            patch = apply_glyph_kernels(model)
            try:
                with torch.profiler.profile(record_shapes=True) as prof:
                    x, _, _ = glyph_inputs_rt(model, text, _snapped(RenderConfig.from_glyph_dict(GLYPH_CONFIG_EN)),
                                              question_ids, device)
                    with torch.no_grad():
                        model.generate(**x, max_new_tokens=8, do_sample=False)
                prof.export_chrome_trace(str(out / "e2e-trace.json"))
            finally:
                patch.undo()
            print(f"wrote {out / 'e2e-trace.json'}")
    finally:
        ranges.remove()
    last = rows[-1]
    summary = {
        "prefill_speedup_128k": round(last["prefill_speedup_rt"], 2),
        "prefill_speedup_128k_hf": round(last["prefill_speedup_hf"], 2),
        "decode_speedup_128k": round(last["decode_speedup"], 2) if last.get("decode_speedup") else None,
        "kv_memory_reduction": round(last["kv_memory_reduction"], 3),
        "render_fraction_of_ttft": round(last["render_fraction_of_ttft"], 4),
        "context_tokens": last["text_tokens"],
    }
    name = "cpu-quick" if args.quick else re.sub(r"[^a-z0-9]+", "-",
                                                 torch.cuda.get_device_name(0).lower().replace("nvidia", "")).strip("-")
    p = write_result(args.out or f"e2e-{name}.json", "e2e", rows, summary)
    png = p.with_suffix(".png") if args.out else RESULTS / f"e2e-{name}.png"
    print(f"summary {summary}\nwrote {p}" + (f" and {png}" if plot(rows, png) else " (no plot: matplotlib missing)"))
    return summary


if __name__ == "__main__":
    main()
