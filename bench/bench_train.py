"""SFT speed: one training step of the text backbone on N tokens against the Glyph path on the same text rendered.

For N tokens of real prose (counted with Qwen's tokenizer), in GLM-4.1V-9B's shapes with random weights on one
GPU, per sample (batch 1), the median of --repeat steps after a warm-up:
  text   the decoder on the N tokens + the question + a 128-token answer (loss on the answer)
  glyph  the same text rendered by glyph_rt into pixel_values at Glyph's config (snapped canvas), the vision
         tower and the decoder on the visual tokens + the question + the answer; apply_glyph_kernels
A step is forward, the loss as glyph_rt's trainer takes it (logits on the answer only), backward and AdamW on
the trainable parameters: LoRA r=16 on the decoder's attention
projections (peft) with the vision tower trained fully, gradient checkpointing, frozen weights in bf16 and
trainable ones in fp32 under bf16 autocast (as the trainer keeps them): the largest configuration of the 9B shapes
that one 80 GB GPU holds at 128K tokens (--layers N cuts the decoder if not).
The paper measured ~2x per-sample SFT speed-up.

    python bench/bench_train.py [--tokens 8192,16384,32768,65536,131072] [--layers 40] [--repeat 3]
    python bench/bench_train.py --quick        # tiny shapes on the CPU: the test suite's smoke test

Writes train-<gpu>.json (rows per N: seconds per step each way, visual tokens, compression, speed-up) and
train-<gpu>.png to --out DIR (default bench/out/); --results also writes them to bench/results/.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench.bench_e2e import QUESTION, _snapped, build_model, glyph_inputs_rt, sync, timed  # noqa: E402
from bench.common import add_output_args, copy_to_results, prose_of, slug, write_result  # noqa: E402
from glyph_rt.models.prompt import IGNORE_INDEX  # noqa: E402
from glyph_rt.render.config import GLYPH_CONFIG_EN, RenderConfig  # noqa: E402
from glyph_rt.render.tokens import TextTokenizer  # noqa: E402

ANSWER_TOKENS = 128


def with_answer(inputs: dict, answer_ids: list[int]) -> dict:
    """The prompt followed by the answer; labels on the answer only."""
    ids = inputs["input_ids"]
    ans = torch.tensor([answer_ids], device=ids.device)
    full = torch.cat([ids, ans], 1)
    labels = torch.full_like(full, IGNORE_INDEX)
    labels[:, ids.shape[1]:] = ans
    out = {**inputs, "input_ids": full, "attention_mask": torch.ones_like(full), "labels": labels}
    if "mm_token_type_ids" in inputs:
        out["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(ans)], 1)
    return out


def make_trainable(model, quick: bool):
    from peft import LoraConfig, get_peft_model

    visual = [p for p in model.model.visual.parameters()]
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj",
                                                                                     "o_proj"]))
    for p in visual:
        p.requires_grad_(True)
    model.get_base_model().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:  # trainable parameters in fp32 (master weights), the frozen ones stay bf16
        p.data = p.data.float()
    return model, torch.optim.AdamW(params, lr=1e-6)


def trainable_model(quick: bool, device, dtype, layers: int | None = None):
    """(peft model, optimizer, kernel patch): GLM-4.1V-9B's shapes (or tiny ones) with random weights, cut to `layers` decoder
    layers, on glyph_rt's kernels, made trainable as this benchmark's SFT step trains it."""
    from glyph_rt.models import apply_glyph_kernels
    from glyph_rt.ops.attention import register_transformers

    register_transformers()
    model = build_model(quick, device, dtype)
    if layers:
        model.model.language_model.layers = model.model.language_model.layers[:layers]
        model.config.text_config.num_hidden_layers = layers
    patch = apply_glyph_kernels(model)
    return (*make_trainable(model, quick), patch)


def step(model, opt, batch, dtype) -> float:
    """One SFT step as glyph_rt's trainer takes it: the mean loss on the answer (logits made there only; bf16 autocast
    over the fp32 trainable weights when the weights load in bf16), backward, AdamW."""
    from glyph_rt.train.config import ModelConfig
    from glyph_rt.train.model import autocast
    from glyph_rt.train.trainer import label_tokens, token_loss_sum

    dev = batch["input_ids"].device
    with autocast(ModelConfig(dtype=str(dtype).removeprefix("torch.")), dev):
        loss = token_loss_sum(model, batch, dev) / label_tokens(batch)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", default="8192,16384,32768,65536,131072")
    ap.add_argument("--layers", type=int, default=None, help="decoder layers (default: 40, GLM-4.1V-9B's)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="tiny shapes on the CPU (a smoke test)")
    add_output_args(ap)
    args = ap.parse_args(argv)
    lengths = [int(s) for s in args.tokens.split(",")]
    if args.quick:
        lengths, args.repeat = [256], 1
        device, dtype = torch.device("cpu"), torch.float32
    elif not torch.cuda.is_available():
        raise SystemExit("bench_train needs a CUDA GPU (or --quick for the CPU smoke test)")
    else:
        device, dtype = torch.device("cuda"), torch.bfloat16
    model, opt, patch = trainable_model(args.quick, device, dtype, args.layers)
    base = model.get_base_model()
    tok = TextTokenizer()
    question_ids = tok.prefix(QUESTION, tok.count(QUESTION))[0]
    prose = prose_of(tok, max(lengths) + ANSWER_TOKENS)
    vocab = base.config.text_config.vocab_size
    cfg = _snapped(RenderConfig.from_glyph_dict(GLYPH_CONFIG_EN))
    name = f"train-{'cpu-quick' if args.quick else slug(torch.cuda.get_device_name(0))}.json"
    rows = []
    from tqdm import tqdm

    for n in tqdm(lengths, desc="bench_train", unit="length"):
        ids, text = tok.prefix(prose, n)
        answer = [i % vocab for i in tok.prefix(prose[len(text):], 16 if args.quick else ANSWER_TOKENS)[0]]
        t_in = {"input_ids": torch.tensor([[i % vocab for i in ids + question_ids]], device=device)}
        text_batch = with_answer(t_in, answer)
        base.model.rope_deltas = None
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        text_s, _ = timed(lambda: step(model, opt, text_batch, dtype), device, args.repeat)
        text_mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        text_batch = None  # its activations go before the glyph side is timed

        def glyph_step():  # rendering is part of the step, as in training on the fly
            x, _, _ = glyph_inputs_rt(base, text, cfg, question_ids, device, dtype)  # the compute dtype (the
            base.model.rope_deltas = None  # model's first parameters are fp32 master weights)
            return step(model, opt, with_answer(x, answer), dtype)

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        glyph_s, _ = timed(glyph_step, device, args.repeat)
        x, _, pages = glyph_inputs_rt(base, text, cfg, question_ids, device, dtype)
        visual = int((x["input_ids"] == base.config.image_token_id).sum())
        sync(device)
        row = {"tokens": n, "pages": pages, "visual_tokens": visual, "compression": n / visual,
               "text_step_s": text_s, "glyph_step_s": glyph_s, "speedup": text_s / glyph_s,
               "text_peak_gib": text_mem,
               "glyph_peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}
        rows.append(row)
        longest = max(rows, key=lambda r: r["tokens"])
        p = write_result(args, name, "train", rows, {"speedup_max_tokens": longest["speedup"],
                                                      "config": f"LoRA r=16 (attention), vision trained, "
                                                                f"{len(base.model.language_model.layers)} layers, "
                                                                "gradient checkpointing"})
        tqdm.write(f"{n:>7,} tokens: {pages} pages, {visual:,} visual tokens ({n / visual:.2f}x); step text "
                   f"{text_s:.3f} s, glyph {glyph_s:.3f} s: {text_s / glyph_s:.2f}x")
    patch.undo()
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([r["tokens"] for r in rows], [r["text_step_s"] for r in rows], "o-", label="text backbone")
        ax.plot([r["tokens"] for r in rows], [r["glyph_step_s"] for r in rows], "o-", label="Glyph (glyph_rt)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("text tokens per sample")
        ax.set_ylabel("seconds per SFT step (batch 1)")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        png = p.with_suffix(".png")
        fig.savefig(png, dpi=100)
        plt.close(fig)
        copy_to_results(args, png)
    except ImportError:
        png = None
    print(f"wrote {p}" + (f" and {png}" if png else ""))
    return rows


if __name__ == "__main__":
    main()
