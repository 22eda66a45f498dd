"""Proof that the training chain learns: a tiny GLM-4.1V from random weights learns to read its own renders.

    python bench/train_tiny_ocr.py [--minutes 20] [--out bench/out] [--results]

Short lines of 2-3 words (a fixed list of 24) are rendered at a large font onto one small page each, through
the data engine (OCR task, collator) and trained with glyph_rt.train's SFT loop (loss on the transcription only).
The character error rate (CER, edit distance / reference characters) of greedy transcriptions is measured on
held-out lines (word combinations never trained on) before training and every few hundred steps; the learning
curve and the CER go to train-tiny-ocr.{json,png}. `--smoke` runs a few steps (the test suite's mode).
"""
from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import add_output_args, copy_to_results, output_dirs, write_result  # noqa: E402

WORDS = ["red", "blue", "green", "cat", "dog", "fox", "sun", "moon", "tree", "book", "door", "road", "cold", "warm",
         "open", "small", "big", "fast", "slow", "old", "new", "day", "night", "rain"]
PROMPT = "Read all the text in the image."


def lines(n: int, seed: int, exclude=()) -> list[str]:
    rng = random.Random(seed)
    out, seen = [], set(exclude)
    while len(out) < n:
        s = " ".join(rng.sample(WORDS, rng.choice((2, 3))))
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def widen(ckpt: Path) -> Path:
    """The tiny checkpoint with a 128-wide decoder of 32-dim heads, so that M-RoPE gives the page's width and height
    3 rotary frequencies each (the 64-wide test model's 16-dim heads leave one: words barely have an order)."""
    import torch
    from transformers import AutoConfig, Glm4vForConditionalGeneration

    cfg = AutoConfig.from_pretrained(ckpt)
    t = cfg.text_config
    t.hidden_size, t.intermediate_size, t.num_attention_heads, t.head_dim = 128, 256, 4, 32
    t.rope_parameters = {**t.rope_parameters, "mrope_section": [2, 3, 3]}
    cfg.vision_config.out_hidden_size = 128
    torch.manual_seed(0)
    Glm4vForConditionalGeneration(cfg).save_pretrained(ckpt)
    return ckpt


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=20.0, help="training time budget (default 20)")
    ap.add_argument("--max-steps", type=int, default=100000)
    ap.add_argument("--batch", type=int, default=8, help="lines per step")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--train-patch-embed", action="store_true",
                    help="train the vision patch embedding too (it collapses the visual tokens: see the README)")
    ap.add_argument("--heldout", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="a few steps and a small evaluation (tests)")
    add_output_args(ap)
    args = ap.parse_args(argv)
    output_dirs(args)
    if args.smoke:
        args.max_steps, args.heldout, args.eval_every, args.batch = 3, 4, 2, 2

    import torch

    from glyph_rt.models.tiny import make_tiny_checkpoint
    from glyph_rt.render.config import RenderConfig
    from glyph_rt.train.collate import Collator
    from glyph_rt.train.config import load_config
    from glyph_rt.train.metrics import plot_curves
    from glyph_rt.train.model import load_for_training
    from glyph_rt.train.rewards import cer
    from glyph_rt.train.tasks import make_task
    from glyph_rt.train.trainer import Trainer

    torch.manual_seed(args.seed)
    page = RenderConfig(page_size=(280, 56), margin_x=6, margin_y=8, font_size=22, line_height=26)
    tmp = Path(tempfile.mkdtemp(prefix="tiny-ocr-"))
    ckpt = widen(make_tiny_checkpoint(tmp / "ckpt"))
    run_dir = Path(args.out) / "train-tiny-ocr"
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = load_config("sft", None, [f"model.path={ckpt}", f"out_dir={run_dir}", f"steps={args.max_steps}",
                                    f"optim.lr={args.lr}", f"optim.min_lr={args.lr / 10}", "optim.warmup_steps=50"
                                    if not args.smoke else "optim.warmup_steps=0", f"data.global_batch={args.batch}",
                                    f"data.micro_batch={args.batch}", "model.gradient_checkpointing=false",
                                    "resume=false", "save_every=0", "export=false", "tensorboard=false", "plot=false",
                                    f"log_every={max(1, args.eval_every // 10)}"])
    gm = load_for_training(cfg.model, torch.device("cpu"))
    gm.render_config = page
    if not args.train_patch_embed:
        # The pages are mostly white, i.e. every one of the 1176 inputs of a patch is about +1.9 after GLM's CLIP
        # normalisation; Adam moves each weight of the patch embedding by ~lr per step in the direction the common
        # gradient asks, so all patches gain the same offset (1176 x 1.9 x lr per step) and after the RMSNorm that
        # follows they look alike: the visual tokens collapse to one vector and the decoder learns to ignore them.
        # A random projection of the patches keeps their information; the rest of the vision tower trains.
        for p in gm.model.model.visual.patch_embed.parameters():
            p.requires_grad_(False)
    task = make_task("ocr", gm.prompts, config=page, max_pages=1)
    col = Collator(gm.image_token_id, gm.tokenizer.pad_token_id, vision_model=gm.vision)
    heldout = lines(args.heldout, 10_000 + args.seed)

    from glyph_rt.train.trainer import label_tokens, token_loss_sum

    probe = col([task({"text": s}, 10**6 + k) for k, s in enumerate(heldout[:16])])

    def image_use() -> tuple[float, float]:
        """Held-out loss with the pages, and with blank (zero) pixel_values: equal when the image is ignored."""
        with torch.no_grad():
            n = label_tokens(probe)
            seen = float(token_loss_sum(gm.model, probe, torch.device("cpu"))) / n
            blank = float(token_loss_sum(gm.model, {**probe, "pixel_values": torch.zeros_like(probe["pixel_values"])},
                                         torch.device("cpu"))) / n
        return seen, blank

    def evaluate() -> tuple[float, list]:
        gm.model.eval()
        preds = []
        for i in range(0, len(heldout), 16):
            chunk = heldout[i:i + 16]
            preds += [a.text.strip() for a in gm.generate(chunk, [PROMPT] * len(chunk), max_new_tokens=12,
                                                          do_sample=False)]
        gm.model.train()
        return cer(preds, heldout), preds

    trainer = Trainer(cfg, gm, progress=not args.smoke)
    rng = random.Random(args.seed)
    train_lines = set()
    rows = []
    cer0, preds0 = evaluate()
    rows.append({"step": 0, "seconds": 0.0, "cer": cer0})
    print(f"step 0: held-out CER {cer0:.3f} (e.g. {heldout[0]!r} -> {preds0[0]!r})", flush=True)
    t0 = time.perf_counter()
    budget = args.minutes * 60
    step = 0
    held = set(heldout)
    while step < args.max_steps and time.perf_counter() - t0 < budget:
        batch = lines(args.batch, rng.randrange(1 << 30), exclude=held)
        train_lines.update(batch)
        samples = [task({"text": s}, step * args.batch + k) for k, s in enumerate(batch)]
        m = trainer.train_step([col(samples)])
        step += 1
        row = {"step": step, "seconds": time.perf_counter() - t0, "loss": m["loss"], "lr": m["lr"]}
        if step % args.eval_every == 0:
            row["cer"], preds = evaluate()
            gm.model.eval()
            row["heldout_loss"], row["blank_image_loss"] = image_use()
            gm.model.train()
            print(f"step {step} ({row['seconds']:.0f} s): loss {m['loss']:.4f}, held-out CER {row['cer']:.3f}, "
                  f"held-out loss {row['heldout_loss']:.3f} (blank pages: {row['blank_image_loss']:.3f}) "
                  f"(e.g. {heldout[0]!r} -> {preds[0]!r})", flush=True)
        if step % cfg.log_every == 0 or "cer" in row:
            trainer.log.log(step, row)
            rows.append(row)
    train_s = time.perf_counter() - t0
    cer1, preds1 = evaluate()
    rows.append({"step": step, "seconds": train_s, "cer": cer1})
    trainer.log.log(step, {"cer": cer1})
    print(f"after {step} steps ({train_s / 60:.1f} min): held-out CER {cer0:.3f} -> {cer1:.3f}")
    summary = {"steps": step, "train_minutes": train_s / 60, "cer_before": cer0, "cer_after": cer1,
               "batch": args.batch, "lr": args.lr, "heldout_lines": len(heldout),
               "patch_embed": "trained" if args.train_patch_embed else "frozen (random init)",
               "examples": [{"reference": r, "prediction": p} for r, p in list(zip(heldout, preds1))[:8]],
               "model": "tiny GLM-4.1V (decoder 128 wide x 2 layers, 4 heads of 32, M-RoPE [2,3,3]; vision 64 wide "
                        "x 2 blocks), random init",
               "page": "280x56 pt at 72 dpi, font 22 pt, one line of 2-3 words from a list of 24"}
    path = write_result(args, "train-tiny-ocr.json", "train_tiny_ocr", rows, summary)
    png = plot_curves(run_dir / "metrics.jsonl", Path(args.out) / "train-tiny-ocr.png", keys=("loss", "cer", "lr"),
                      title=f"tiny GLM-4.1V reading its renders: held-out CER {cer0:.2f} -> {cer1:.2f} in {step} steps")
    if png is not None:
        copy_to_results(args, png)
    print(f"wrote {path} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
