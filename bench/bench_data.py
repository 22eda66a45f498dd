"""Training-data loader throughput: samples/s and pages/s, against a loader built from Glyph's official
renderer in the same run.

Both loaders make the same OCR samples (task ocr over the bundled corpus, Glyph's default page: A4 at
72 dpi, DejaVu Sans 9 pt, snapped to multiples of 28) into GLM-4.1V batches (token ids, labels,
pixel_values, image_grid_thw) of --batch samples:

  official   per sample: reportlab -> PDF -> pdftoppm pages (bench/official.py), Glm4vImageProcessorPil on the
             pages, token ids with the same PromptBuilder
  glyph_rt   GlyphLoader over a TaskDataset (layout, then the Collator draws every page of a batch in one
             pass straight into pixel_values: the C++ path on the CPU, one kernel launch on the GPU with
             --device cuda), float32 as the processor's output and bfloat16 as training feeds the model

On the CPU the process is pinned to one core (torch uses one thread). Each loader runs --repeat times,
interleaved with the others, and its median run is reported. Writes data-<device>.json and a bar chart to
--out (default bench/out/).

    python bench/bench_data.py [--samples 96] [--official-samples 16] [--batch 8] [--repeat 7] [--device cpu|cuda]
    python bench/bench_data.py --device cuda --with-training [--workers 4] [--seconds 15] [--train-tokens 8192]

--with-training also runs the loader on the GPU while GLM-4.1V-9B's SFT step trains there (random weights,
bench_train's step in a loop): pages/s of the loader and seconds per step, alone and together; the target
is >= 1,000 pages/s sustained while the model trains.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench.common import add_output_args, copy_to_results, machine, write_result  # noqa: E402
from glyph_rt.models.prompt import PromptBuilder  # noqa: E402
from glyph_rt.models.tiny import tiny_tokenizer  # noqa: E402
from glyph_rt.render.config import RenderConfig  # noqa: E402
from glyph_rt.train.collate import Collator  # noqa: E402
from glyph_rt.train.loader import Corpus, GlyphLoader, TaskDataset  # noqa: E402
from glyph_rt.train.tasks import make_task  # noqa: E402


def ours(task, corpus, builder, n, batch, device, render, dtype=torch.float32, workers: int = 0,
         seconds: float | None = None, started=None):
    """(samples, pages, seconds) of the loader over n samples, or for about `seconds` when given. With workers,
    `started()` is called once they run and the first batch is out (untimed): a process must not fork them while
    another of its threads runs."""
    data = TaskDataset(corpus, task, seed=0, render=render, dtype=dtype)
    collate = Collator(builder.image_token_id, builder.tokenizer.pad_token_id, device=device, dtype=dtype)
    loader = iter(GlyphLoader(data, collate, batch_size=batch, num_workers=workers))
    if started is not None or seconds:  # timed runs compared with each other start alike: workers up, a batch out
        next(loader)
    if started is not None:
        started()
    samples = pages = 0
    t = time.perf_counter()
    for b in loader:
        samples += b["num_samples"]
        pages += len(b["image_grid_thw"])
        if (time.perf_counter() - t >= seconds) if seconds else samples >= n:
            break
    if device != "cpu":  # the loader's stream only: not a training step in flight on another thread's stream
        torch.cuda.current_stream(device).synchronize()
    return samples, pages, time.perf_counter() - t


def official(task, corpus, builder, n, batch):
    from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil

    from bench.official import render_official
    from glyph_rt.models.prompt import IGNORE_INDEX, tokens_per_image

    proc = Glm4vImageProcessorPil()
    samples = pages = 0
    t = time.perf_counter()
    pending = []
    for g in range(n):
        s = task(corpus[g % len(corpus)], g)  # the same sample (its layout is not timed apart: ~2% of the time)
        p = s.pages[0]
        text = p.text[:p.document().page_spans()[-1][1]]
        images, _ = render_official(text, p.config.to_glyph_dict())
        px = proc(images, return_tensors="pt")
        user, answer = s.messages[0]["content"][-1]["text"], s.messages[-1]["content"]
        enc = builder.encode(builder.messages(len(images), user, answer=answer), tokens_per_image(px["image_grid_thw"]))
        pending.append((enc.input_ids, enc.labels, px))
        samples += 1
        pages += len(images)
        if len(pending) == batch or g == n - 1:
            L = max(len(i) for i, _, _ in pending)
            input_ids = torch.full((len(pending), L), builder.tokenizer.pad_token_id)
            lab = torch.full((len(pending), L), IGNORE_INDEX)
            for r, (i, la, _) in enumerate(pending):
                input_ids[r, :len(i)] = torch.tensor(i)
                lab[r, :len(la)] = torch.tensor(la)
            torch.cat([x["pixel_values"] for _, _, x in pending])
            pending = []
    return samples, pages, time.perf_counter() - t


def while_training(args, task, corpus, builder) -> dict:
    """The loader on the GPU (bfloat16, --workers DataLoader workers laying pages out, one launch per batch)
    for --seconds alone, then while GLM-4.1V-9B's SFT step runs in a loop on the same GPU: bench_train's step
    (LoRA r=16 on the decoder's attention, the vision tower trained, gradient checkpointing, AdamW) over
    --train-tokens tokens, with --train-layers decoder layers. Pages/s of the loader and seconds per step,
    each alone and together. --device cpu runs tiny shapes (a smoke test)."""
    import contextlib
    import threading

    from bench.bench_e2e import sync
    from bench.bench_train import step, trainable_model, with_answer

    quick = args.device == "cpu"
    device = torch.device(args.device)
    dtype = torch.float32 if quick else torch.bfloat16
    model, opt, _ = trainable_model(quick, device, dtype, args.train_layers)
    base = model.get_base_model()
    g = torch.Generator().manual_seed(0)
    vocab = base.config.text_config.vocab_size
    batch = with_answer({"input_ids": torch.randint(vocab, (1, args.train_tokens), generator=g).to(device)},
                        torch.randint(vocab, (128,), generator=g).tolist())

    def train_step() -> float:
        t = time.perf_counter()
        base.model.rope_deltas = None
        step(model, opt, batch, dtype)
        sync(device)
        return time.perf_counter() - t

    train_step()  # warm-up
    alone = sorted(train_step() for _ in range(args.train_steps))
    def load(started=None):
        return ours(task, corpus, builder, 0, args.batch, args.device, "batch", torch.bfloat16, workers=args.workers,
                    seconds=args.seconds, started=started)

    load()  # warm-up: workers, fonts, kernels
    s_alone, p_alone, t_alone = load()
    together, stop = [], threading.Event()

    def loop():
        # the step on a stream of its own, as a trainer overlapping its loader would run it: on the default stream
        # every copy and sync of the loader would wait for the step's kernels
        s = torch.cuda.Stream(device) if device.type == "cuda" else None
        if s is not None:
            s.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(s) if s is not None else contextlib.nullcontext():
            while not stop.is_set():
                together.append(train_step())

    trainer = threading.Thread(target=loop, daemon=True)
    try:
        s_with, p_with, t_with = load(started=trainer.start)
    finally:
        stop.set()
        if trainer.is_alive():
            trainer.join()
    together.sort()
    out = {"pages_per_s_alone": p_alone / t_alone, "pages_per_s_while_training": p_with / t_with,
           "samples_per_s_while_training": s_with / t_with, "train_step_s_alone": alone[len(alone) // 2],
           "train_step_s_with_loader": together[len(together) // 2] if together else None,
           "train_steps_with_loader": len(together), "train_tokens": args.train_tokens,
           "train_layers": args.train_layers or base.config.text_config.num_hidden_layers, "workers": args.workers}
    slow = f", {out['train_step_s_with_loader']:.3f} s with the loader" if together else ""
    print(f"loader while training: {out['pages_per_s_while_training']:,.0f} pages/s "
          f"(alone {out['pages_per_s_alone']:,.0f}); training step {out['train_step_s_alone']:.3f} s alone{slow} "
          f"({out['train_layers']} layers, {args.train_tokens:,} tokens)")
    return out


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 2.6))
    names = [r["loader"] for r in rows]
    ax.barh(names, [r["samples_per_s"] for r in rows], color=["#999999"] + ["#2b7bba"] * (len(rows) - 1))
    for i, r in enumerate(rows):
        ax.text(r["samples_per_s"], i, f" {r['samples_per_s']:.1f}/s ({r['pages_per_s']:.0f} pages/s)", va="center")
    ax.set_xlim(0, max(r["samples_per_s"] for r in rows) * 1.6)
    ax.set_xlabel("OCR samples per second into GLM-4.1V batches (one CPU core)" if "cpu" in path.name else
                  "OCR samples per second into GLM-4.1V batches")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=96)
    ap.add_argument("--official-samples", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-pages", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--repeat", type=int, default=7, help="runs of each loader, interleaved; the median is kept")
    ap.add_argument("--with-training", action="store_true",
                    help="also time the loader while GLM-4.1V-9B's SFT step runs on the same GPU (see while_training)")
    ap.add_argument("--workers", type=int, default=4, help="DataLoader workers with --with-training")
    ap.add_argument("--seconds", type=float, default=15.0, help="loader time with --with-training, alone and together")
    ap.add_argument("--train-tokens", type=int, default=8192)
    ap.add_argument("--train-layers", type=int, default=None, help="decoder layers (default: 40, GLM-4.1V-9B's)")
    ap.add_argument("--train-steps", type=int, default=3, help="training steps timed alone")
    add_output_args(ap)
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_data --device cuda needs a CUDA GPU")
    from bench import official as off

    if args.device == "cpu" and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
        torch.set_num_threads(1)
    tok = tiny_tokenizer()
    builder = PromptBuilder(tok, tok.convert_tokens_to_ids("<|image|>"))
    corpus = Corpus.open(max_chars=20000)
    task = make_task("ocr", builder, config=RenderConfig(), max_pages=args.max_pages, window_chars=8000)
    ours(task, corpus, builder, args.batch, args.batch, args.device, "batch")  # warm up: fonts, atlas
    runs = []  # (name, fn); each is timed --repeat times, interleaved, and its median run kept
    if off.available():
        runs.append(("official + HF processor",
                     lambda: official(task, corpus, builder, args.official_samples, args.batch)))
    else:
        print(f"official pipeline skipped: {off.unavailable_reason()}")
    # one process: the collator draws each batch's pages in one pass into one buffer (render="batch");
    # with DataLoader workers, render="worker" draws them in the workers instead
    for label, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16), ("uint8 patches", torch.uint8)):
        runs.append((f"glyph_rt ({args.device}, {label})", lambda dtype=dtype: ours(
            task, corpus, builder, args.samples, args.batch, args.device, "batch", dtype)))
    times = {name: [] for name, _ in runs}
    for _ in range(args.repeat):
        for name, fn in runs:
            times[name].append(fn())
    rows = []
    for name, _ in runs:
        s, p, sec = sorted(times[name], key=lambda r: r[2])[len(times[name]) // 2]
        rows.append({"loader": name, "samples": s, "pages": p, "seconds": sec,
                     "all_seconds": [round(r[2], 4) for r in times[name]]})
    base = rows[0]["samples"] / rows[0]["seconds"] if rows and "official" in rows[0]["loader"] else None
    for r in rows:
        r["samples_per_s"] = r["samples"] / r["seconds"]
        r["pages_per_s"] = r["pages"] / r["seconds"]
        r["speedup"] = r["samples_per_s"] / base if base else None
        sp = f"  {r['speedup']:.1f}x" if r["speedup"] else ""
        print(f"{r['loader']:40s} {r['samples']:4d} samples {r['pages']:4d} pages {r['seconds']:7.2f} s  "
              f"{r['samples_per_s']:7.2f} samples/s {r['pages_per_s']:8.1f} pages/s{sp}")
    print(machine())
    summary = {"device": args.device, "batch": args.batch, "max_pages": args.max_pages,
               "speedup": {r["loader"]: r["speedup"] for r in rows}}
    path = write_result(args, f"data-{args.device}.json", "bench_data", rows, summary)  # kept if training fails
    if args.with_training:
        summary.update(while_training(args, task, corpus, builder))
        path = write_result(args, f"data-{args.device}.json", "bench_data", rows, summary)
    png = path.with_name(f"data-{args.device}.png")
    plot(rows, png)
    copy_to_results(args, png)
    print(f"wrote {path} and {png}")


if __name__ == "__main__":
    main()
