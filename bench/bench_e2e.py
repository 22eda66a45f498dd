"""End to end: Glyph (pages + vision tower + GLM-4 decoder) against its text backbone (the decoder alone).

For N tokens of real prose (counted with Qwen's tokenizer; GLM's is not bundled), in GLM-4.1V-9B's
shapes with random weights on one GPU, each side twice:
  on glyph_rt (graded)   both sides patched by apply_glyph_kernels, the same attention for both prefills
                         and glyph_rt's GlyphCache (written in place) and decode kernel for both decodes;
                         Glyph's text rendered on the GPU straight into pixel_values
  on HF defaults (_hf)   both sides on transformers' SDPA and DynamicCache; Glyph's text rendered at
                         Glyph's config on the CPU, PNG round trip, the HF image processor, stock patch embed
So the graded ratios compare Glyph with its backbone on one runtime, never a runtime with another;
prefill_speedup_vs_hf_text (Glyph on glyph_rt over the text on HF defaults) mixes both gains and is
not graded. The row names the attention backend that "auto" ran for the prefills.
Time to first token (TTFT) includes rendering, preprocessing, the vision tower and the prefill.
Decode: seconds per sample for --decode-tokens greedy steps at the largest batch whose KV cache
fits in memory (the cache of the TTFT's last timed prefill, at batch 1, repeated to the batch, as a server
that prefills requests one at a time holds them). KV cache: bytes per request. Visual tokens are counted from the
rendered pages, never assumed. TTFT is the median of --repeat runs after a warm-up (every sample kept
for the graded ones), or of one run when a run takes over 5 s.

    python bench/bench_e2e.py [--tokens 8192,...,131072] [--decode-tokens 256] [--profile DIR]
    python bench/bench_e2e.py --counts        # pages, tokens and KV bytes only: no model, CPU
    python bench/bench_e2e.py --quick         # tiny shapes on the CPU: a smoke test

Writes e2e-<gpu>.json after every length, and after each length's graded part (summary:
prefill_speedup_128k, decode_speedup_128k at the longest length measured, kv_memory_reduction,
render_fraction_of_ttft) and, with matplotlib, e2e-<gpu>.png; --counts writes e2e-counts.json. Files
go to --out DIR (default bench/out/); --results also writes them to bench/results/.
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import glyph_rt  # noqa: E402
from bench.common import add_output_args, copy_to_results, prose_of, slug, write_result  # noqa: E402
from glyph_rt.models.kv_cache import kv_bytes  # noqa: E402
from glyph_rt.nvtx import nvtx_range  # noqa: E402
from glyph_rt.render.config import GLYPH_CONFIG_EN, RenderConfig  # noqa: E402
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
    with torch.device(device):  # built in `dtype`: 9B parameters never exist in fp32
        model = Glm4vForConditionalGeneration._from_config(cfg, dtype=dtype).eval()
    return model


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeat: int, long_s: float = 5.0, samples: bool = False):
    """(median seconds, last result[, every timed sample]) of fn() after a warm-up call; one timed call when the
    warm-up took over long_s (first-call costs are then noise, and the device time is precious). A call's result
    is let go before the next call starts (a prefill's KV cache is not held while the next one is timed)."""
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    times = []
    for _ in range(1 if time.perf_counter() - t > long_s else repeat):
        out = None
        sync(device)
        t = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return (med, out, [round(x, 6) for x in times]) if samples else (med, out)


def counts(text: str, n: int, question_tokens: int, text_config) -> dict:
    """Pages, visual tokens, prompt tokens and KV bytes of the three paths: renderer and resize rules, no model.
    The HF path renders Glyph's pages (the processor resizes them); glyph_rt snaps the canvas to 28 px."""
    glyph_cfg = RenderConfig.from_glyph_dict(GLYPH_CONFIG_EN)
    row = {"text_tokens": n, "chars": len(text), "text_prompt_tokens": n + question_tokens}
    for name, cfg in (("glyph_hf", glyph_cfg), ("glyph", _snapped(glyph_cfg))):
        pages = glyph_rt.render(text, cfg)
        vis = glyph_rt.visual_tokens(pages.sizes, "glm4v")
        row[f"{name}_pages"] = len(vis)
        row[f"{name}_visual_tokens"] = int(sum(vis))
        row[f"{name}_prompt_tokens"] = int(sum(vis)) + 2 * len(vis) + question_tokens  # begin/end of image
    row["pages"], row["visual_tokens"] = row.pop("glyph_pages"), row.pop("glyph_visual_tokens")
    row["compression"] = n / row["visual_tokens"]
    row["text_kv_bytes"] = kv_bytes(text_config, row["text_prompt_tokens"])
    row["glyph_kv_bytes"] = kv_bytes(text_config, row["glyph_prompt_tokens"])
    row["kv_memory_reduction"] = 1 - row["glyph_kv_bytes"] / row["text_kv_bytes"]
    return row


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


def glyph_inputs_rt(model, text: str, cfg: RenderConfig, tokenizer_ids, device, dtype=None):
    """The prompt of `text` rendered by glyph_rt, pixel_values in `dtype` (default: the model's)."""
    t = time.perf_counter()
    mi = glyph_rt.render_inputs(text, cfg, device=device, dtype=dtype or model.dtype)
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


def prefill(model, inputs):
    """The model's output on the prompt: its KV cache (output_cache) and the last position's logits."""
    with torch.no_grad():
        return model(**inputs, use_cache=True, logits_to_keep=1)


def output_cache(out):
    """A model output's KV cache: `cache`, or `past_key_values` before transformers renamed it (reading the old name
    where `cache` exists logs a deprecation warning)."""
    return out["cache"] if "cache" in out else out.past_key_values


def _batch_that_fits(per_request: int, layers: int, device, max_batch: int) -> int:
    """The most requests whose caches fit in free memory, beside one layer's growth transient and 2 GiB."""
    if device.type != "cuda":
        return max_batch
    torch.cuda.empty_cache()  # blocks the allocator keeps are free for this purpose
    free, _ = torch.cuda.mem_get_info(device)
    return max(1, min(max_batch, int((free - (2 << 30)) / (per_request * (1 + 2 / layers)))))


def _mark(device):
    if device.type == "cuda":
        e = torch.cuda.Event(enable_timing=True)
        e.record()
        return e
    return time.perf_counter()


def _elapsed_ms(a, z) -> float:
    return a.elapsed_time(z) if isinstance(a, torch.cuda.Event) else (z - a) * 1e3


def decode_seconds_per_sample(model, inputs: dict, new_tokens: int, device, max_batch: int,
                              glyph_cache: bool, spread: dict | None = None, prefilled=None) -> tuple[float, int]:
    """(seconds per sample for `new_tokens` greedy steps, batch) at the largest batch whose cache fits;
    in transformers' DynamicCache, or in glyph_rt's GlyphCache (written in place) when `glyph_cache`. `spread`
    receives the steps' median, fastest and slowest milliseconds (CUDA events: no sync between steps).
    `prefilled`: prefill(model, inputs)'s output, the last call the model made (so that its rope_deltas are the
    prompt's), used instead of a prefill of its own (at 128K one costs a TTFT). Its cache is only read: the batch's
    cache is a copy of it, made again whenever an out-of-memory error makes the batch smaller."""
    from transformers import DynamicCache

    from glyph_rt.models import GlyphCache, cache_kwarg

    out = prefill(model, inputs) if prefilled is None else prefilled
    prompt, first = output_cache(out), out.logits[:, -1].argmax(-1)
    del out, prefilled
    c = model.config.text_config
    per_request = kv_bytes(c, prompt.get_seq_length() + new_tokens + 1, model.dtype.itemsize)
    b = _batch_that_fits(per_request, c.num_hidden_layers, device, max_batch)
    while True:
        try:
            if glyph_cache:
                cache = GlyphCache.from_cache(prompt, b, reserve=new_tokens + 1)
            else:
                cache = DynamicCache()
                for i, layer in enumerate(prompt.layers):
                    cache.update(layer.keys.repeat(b, 1, 1, 1), layer.values.repeat(b, 1, 1, 1), i)
            tok = first.repeat(b)[:, None]
            marks = []  # a CUDA event (or the host's clock) before each step: the steps' spread, with no sync
            with torch.no_grad():
                for step in range(new_tokens + 1):  # the first step is a warm-up
                    if step == 1:
                        sync(device)
                        t = time.perf_counter()
                    if step:
                        marks.append(_mark(device))
                    tok = model(input_ids=tok, **{cache_kwarg(model): cache}, use_cache=True,
                                logits_to_keep=1).logits[:, -1].argmax(-1, keepdim=True)
            marks.append(_mark(device))
            sync(device)
            total = time.perf_counter() - t
            steps = sorted(_elapsed_ms(a, z) for a, z in zip(marks, marks[1:]))
            if spread is not None:
                spread.update(step_ms_p50=round(statistics.median(steps), 4), step_ms_min=round(steps[0], 4),
                              step_ms_max=round(steps[-1], 4))
            return total / b, b
        except torch.OutOfMemoryError:
            cache = tok = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if b == 1:
                raise
            b = max(1, b * 3 // 4)


def check_prompt(row: dict, key: str, inputs: dict, whose: str) -> None:
    """A prompt whose length differs from the count made before is noted in the row (which still measures it), not
    an error that would lose the row."""
    n = inputs["input_ids"].shape[1]
    if n != row[key]:
        row.setdefault("prompt_mismatch", []).append(f"{whose} prompt has {n} tokens, the count {row[key]}")
        print(f"WARNING {row['prompt_mismatch'][-1]}", flush=True)


def run_length(model, n: int, prose: str, tok: TextTokenizer, args, device, question_ids, save=None):
    """One context length. First the graded comparison, both sides on glyph_rt's kernels and KV cache (the text
    backbone's prompt and Glyph's pages through the same attention, the same in-place cache and decode kernel),
    saved through `save(row)` before the rest; then both sides on transformers' defaults (SDPA, DynamicCache)."""
    from glyph_rt.models import apply_glyph_kernels
    from glyph_rt.ops.attention import resolve_backend

    ids, text = tok.prefix(prose, n)
    row = counts(text, n, len(question_ids), model.config.text_config)
    vocab = model.config.text_config.vocab_size
    text_inputs = {"input_ids": torch.tensor([[i % vocab for i in ids + question_ids]], device=device)}
    text_inputs["attention_mask"] = torch.ones_like(text_inputs["input_ids"])
    glyph_cfg = RenderConfig.from_glyph_dict(GLYPH_CONFIG_EN)
    probe = torch.empty(1, 1, 128, dtype=model.dtype, device=device)
    row["attention_prefill"] = resolve_backend("auto", probe, "prefill")  # what "auto" runs for both sides' prefill
    patch = apply_glyph_kernels(model)
    try:
        model.model.rope_deltas = None  # the text path has plain positions
        with nvtx_range("glyph_rt.ttft.text_rt"):
            row["text_rt_ttft_s"], pre, row["text_rt_ttft_samples"] = timed(lambda: prefill(model, text_inputs),
                                                                            device, args.repeat, samples=True)
        row["text_rt_decode_steps"], row["glyph_decode_steps"] = {}, {}
        row["text_rt_decode_s_per_sample"], row["text_rt_decode_batch"] = decode_seconds_per_sample(
            model, text_inputs, args.decode_tokens, device, args.max_batch, glyph_cache=True,
            spread=row["text_rt_decode_steps"], prefilled=pre)  # the timed prefill's cache: no prefill more
        pre = None
        rt_cfg = _snapped(glyph_cfg)  # glyph_rt's canvas snapping: the kernel writes the model input directly

        def ttft_rt():
            x, r, _ = glyph_inputs_rt(model, text, rt_cfg, question_ids, device)
            return x, r, prefill(model, x)

        with nvtx_range("glyph_rt.ttft.glyph_rt"):
            row["glyph_rt_ttft_s"], (inputs_rt, render_rt, pre), row["glyph_rt_ttft_samples"] = timed(
                ttft_rt, device, args.repeat, samples=True)
        row["glyph_rt_render_s"] = render_rt
        check_prompt(row, "glyph_prompt_tokens", inputs_rt, "glyph_rt's")
        row["glyph_decode_s_per_sample"], row["glyph_decode_batch"] = decode_seconds_per_sample(
            model, inputs_rt, args.decode_tokens, device, args.max_batch, glyph_cache=True,
            spread=row["glyph_decode_steps"], prefilled=pre)
        del inputs_rt, pre
    finally:
        patch.undo()
    row["prefill_speedup_rt"] = row["text_rt_ttft_s"] / row["glyph_rt_ttft_s"]
    row["decode_speedup"] = row["text_rt_decode_s_per_sample"] / row["glyph_decode_s_per_sample"]
    row["render_fraction_of_ttft"] = row["glyph_rt_render_s"] / row["glyph_rt_ttft_s"]
    if save is not None:
        save(row)
    if args.graded_only:
        return row

    model.model.rope_deltas = None
    with nvtx_range("glyph_rt.ttft.text"):
        row["text_ttft_s"], pre = timed(lambda: prefill(model, text_inputs), device, args.repeat)
    row["text_decode_s_per_sample"], row["text_decode_batch"] = decode_seconds_per_sample(
        model, text_inputs, args.decode_tokens, device, args.max_batch, glyph_cache=False, prefilled=pre)
    pre = None

    def ttft_hf():  # preprocessing and prefill timed together, warmed up, as glyph_rt's side
        x, r, _ = glyph_inputs_hf(model, text, glyph_cfg, question_ids, device)
        return x, r, prefill(model, x)

    with nvtx_range("glyph_rt.ttft.glyph_hf"):
        row["glyph_hf_ttft_s"], (inputs_hf, render_hf, pre) = timed(ttft_hf, device, args.repeat)
    check_prompt(row, "glyph_hf_prompt_tokens", inputs_hf, "HF's")
    row["glyph_hf_render_s"] = render_hf
    row["glyph_hf_decode_s_per_sample"], row["glyph_hf_decode_batch"] = decode_seconds_per_sample(
        model, inputs_hf, args.decode_tokens, device, args.max_batch, glyph_cache=False, prefilled=pre)
    inputs_hf = pre = None  # (not del: the timed lambda names inputs_hf)
    row["prefill_speedup_hf"] = row["text_ttft_s"] / row["glyph_hf_ttft_s"]
    row["decode_speedup_hf"] = row["text_decode_s_per_sample"] / row["glyph_hf_decode_s_per_sample"]
    # what moving from the text backbone on transformers' defaults to Glyph on glyph_rt gives (not graded: the
    # runtime's gain and Glyph's are mixed in it)
    row["prefill_speedup_vs_hf_text"] = row["text_ttft_s"] / row["glyph_rt_ttft_s"]
    row["decode_speedup_vs_hf_text"] = row["text_decode_s_per_sample"] / row["glyph_decode_s_per_sample"]
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
    rows = sorted(rows, key=lambda r: r["text_tokens"])
    n = [r["text_tokens"] / 1024 for r in rows]  # K tokens (under 1K in --quick)
    fig, ax = plt.subplots(figsize=(6, 4))
    hf = all("prefill_speedup_hf" in r for r in rows)  # absent with --graded-only
    ax.plot(n, [r["prefill_speedup_rt"] for r in rows], "o-", label="prefill (TTFT), both on glyph_rt")
    if hf:
        ax.plot(n, [r["prefill_speedup_hf"] for r in rows], "s--", label="prefill (TTFT), both on HF defaults")
    ax.plot(n, [r["decode_speedup"] for r in rows], "^-", label="decode, both on glyph_rt")
    if hf:
        ax.plot(n, [r["decode_speedup_hf"] for r in rows], "v--", label="decode, both on HF defaults")
    ax.set_xscale("log", base=2)
    ax.set_xticks(n, [f"{k:.3g}K" for k in n])
    ax.set_xlabel("context length (text tokens)")
    ax.set_ylabel("speedup over the text backbone")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def summarize(rows) -> dict:
    """The headline figures at the longest context measured (128K in the full run; the keys say 128k, the
    targets' length): glyph_rt on both sides (graded), transformers' defaults on both sides (_hf)."""
    last = max(rows, key=lambda r: r["text_tokens"])

    def r(key: str, digits: int = 2):
        return None if last.get(key) is None else round(last[key], digits)

    return {
        "prefill_speedup_128k": r("prefill_speedup_rt"),
        "prefill_speedup_128k_hf": r("prefill_speedup_hf"),
        "decode_speedup_128k": r("decode_speedup"),
        "decode_speedup_128k_hf": r("decode_speedup_hf"),
        "prefill_speedup_vs_hf_text": r("prefill_speedup_vs_hf_text"),
        "decode_speedup_vs_hf_text": r("decode_speedup_vs_hf_text"),
        "kv_memory_reduction": r("kv_memory_reduction", 3),
        "render_fraction_of_ttft": r("render_fraction_of_ttft", 4),
        "attention_prefill": last.get("attention_prefill"),
        "context_tokens": last["text_tokens"],
    }


def count_only(lengths, tok, question_ids, args) -> list[dict]:
    from transformers import Glm4vConfig

    text_config = Glm4vConfig().text_config  # GLM-4.1V-9B's decoder
    prose = prose_of(tok, max(lengths))
    rows = []
    for n in lengths:
        _, text = tok.prefix(prose, n)
        rows.append(counts(text, n, len(question_ids), text_config))
        r = rows[-1]
        print(f"{n:>7,} tokens: {r['pages']} pages, {r['visual_tokens']:,} visual tokens ({r['compression']:.2f}x), "
              f"prompt {r['glyph_prompt_tokens']:,} vs {r['text_prompt_tokens']:,} tokens (HF pages: "
              f"{r['glyph_hf_prompt_tokens']:,}); KV {r['glyph_kv_bytes'] / 2**30:.2f} vs "
              f"{r['text_kv_bytes'] / 2**30:.2f} GiB (-{r['kv_memory_reduction']:.1%})")
    summary = {"kv_memory_reduction": round(rows[-1]["kv_memory_reduction"], 3),
               "compression": round(rows[-1]["compression"], 3), "context_tokens": rows[-1]["text_tokens"]}
    p = write_result(args, "e2e-counts.json", "e2e-counts", rows, summary)
    print(f"summary {summary}\nwrote {p}")
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", default="8192,16384,32768,65536,131072")
    ap.add_argument("--decode-tokens", type=int, default=256)
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="tiny shapes on the CPU (a smoke test)")
    ap.add_argument("--counts", action="store_true", help="pages, tokens and KV bytes only (no model, CPU)")
    ap.add_argument("--profile", default=None, help="write a torch profiler trace of the glyph_rt path here")
    ap.add_argument("--graded-only", action="store_true", help="only the graded half (both sides on glyph_rt), not "
                    "both sides on transformers' defaults (about 85 s more at 128K on an H100)")
    add_output_args(ap)
    args = ap.parse_args(argv)
    if args.quick:
        args.tokens = args.tokens if "--tokens" in (sys.argv[1:] if argv is None else argv) else "256,512"
        args.decode_tokens, args.max_batch, args.repeat = min(args.decode_tokens, 4), 2, 1
    lengths = [int(s) for s in args.tokens.split(",")]
    if args.decode_tokens < 1 or args.max_batch < 1 or args.repeat < 1 or min(lengths) < 1:
        raise SystemExit("--tokens, --decode-tokens, --max-batch and --repeat must be positive")
    tok = TextTokenizer()
    question_ids = tok.prefix(QUESTION, tok.count(QUESTION))[0]
    if args.counts:
        return count_only(lengths, tok, question_ids, args)
    if args.quick:
        device, dtype = torch.device("cpu"), torch.float32
    elif not torch.cuda.is_available():
        raise SystemExit("bench_e2e needs a CUDA GPU (or --counts, or --quick for the CPU smoke test)")
    else:
        device, dtype = torch.device("cuda"), torch.bfloat16
    from tqdm import tqdm

    from glyph_rt.ops.attention import register_transformers

    register_transformers()
    model = build_model(args.quick, device, dtype)
    prose = prose_of(tok, max(lengths))
    out_name = f"e2e-{'cpu-quick' if args.quick else slug(torch.cuda.get_device_name(0))}.json"
    ranges = StageRanges(model)
    rows = []
    try:
        for n in tqdm(lengths, desc="bench_e2e", unit="length"):
            row = run_length(model, n, prose, tok, args, device, question_ids,  # the graded part saved first
                             save=lambda r: write_result(args, out_name, "e2e", rows + [r], summarize(rows + [r])))
            rows.append(row)
            p = write_result(args, out_name, "e2e", rows, summarize(rows))  # what is measured survives a cut-off run
            hf = "" if args.graded_only else (f"; on HF defaults: prefill {row['prefill_speedup_hf']:.2f}x, decode "
                                               f"{row['decode_speedup_hf']:.2f}x")
            tqdm.write(f"{n:>7,} tokens: {row['pages']} pages, {row['visual_tokens']:,} visual tokens "
                       f"({row['compression']:.2f}x); on glyph_rt: TTFT text {row['text_rt_ttft_s']:.3f} s, glyph "
                       f"{row['glyph_rt_ttft_s']:.3f} s ({row['prefill_speedup_rt']:.2f}x), decode "
                       f"{row['decode_speedup']:.2f}x (batch {row['text_rt_decode_batch']} vs "
                       f"{row['glyph_decode_batch']}){hf}; KV -{row['kv_memory_reduction']:.0%}; "
                       f"render {row['render_fraction_of_ttft']:.1%} of TTFT; attention {row['attention_prefill']}")
        if args.profile:
            profile(model, prose, tok, lengths[-1], question_ids, device, Path(args.profile))
    finally:
        ranges.remove()
    summary = summarize(rows)
    png = p.with_suffix(".png")
    plotted = plot(rows, png)
    if plotted:
        copy_to_results(args, png)
    print(f"summary {summary}\nwrote {p}" + (f" and {png}" if plotted else " (no plot: matplotlib missing)"))
    return summary


def profile(model, prose: str, tok: TextTokenizer, n: int, question_ids, device, out: Path) -> None:
    """A torch profiler trace of the glyph_rt path: render, vision tower, prefill and 8 decode steps."""
    from glyph_rt.models import apply_glyph_kernels

    out.mkdir(parents=True, exist_ok=True)
    _, text = tok.prefix(prose, n)
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


if __name__ == "__main__":
    main()
