"""The SFT loss on kept logits against the full logits: peak memory and step time of forward + loss + backward.

glyph_rt's trainer makes logits only before the tokens that take loss (`logits_to_keep`, the answer of an SFT
sample); the baseline is transformers' own loss over every position's logits. A GLM-4.1V decoder with its
151,552-token vocabulary and a small hidden size (the vocabulary's share of a step is what changes), one sample
of N tokens with a 128-token answer, the same loss both ways.

    python bench/bench_loss.py [--tokens 2048,4096] [--hidden 256] [--device cpu|cuda] [--out DIR] [--results]

Each measurement runs in a fresh process (the CPU's peak RSS only grows). Writes loss-<device>.json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import add_output_args, slug, write_result  # noqa: E402

VOCAB = 151552
ANSWER = 128

ONE = r"""
import json, resource, sys, time, torch
from transformers import Glm4vConfig, Glm4vForConditionalGeneration
from glyph_rt.train.trainer import label_tokens, token_loss_sum
mode, n, hidden, dev = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), torch.device(sys.argv[4])
torch.manual_seed(0)
cfg = Glm4vConfig(text_config=dict(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=2 * hidden,
                                   num_hidden_layers=2, num_attention_heads=hidden // 64, num_key_value_heads=1,
                                   max_position_embeddings=n + 16),
                  vision_config=dict(hidden_size=64, depth=1, num_heads=4, intermediate_size=128, out_hidden_size=hidden))
with dev:  # built where it runs: 1.5B parameters at hidden 4096 take tens of seconds to initialise on a CPU
    model = Glm4vForConditionalGeneration(cfg)
ids = torch.randint(0, VOCAB, (1, n), device=dev)
labels = torch.full_like(ids, -100)
labels[:, -ANSWER:] = ids[:, -ANSWER:]
batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels, "mm_token_type_ids": torch.zeros_like(ids)}

def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)

def step():
    if mode == "kept":
        loss = token_loss_sum(model, batch, dev) / label_tokens(batch)
    else:
        loss = model(**batch, use_cache=False).loss
    loss.backward()
    model.zero_grad(set_to_none=True)
    return float(loss)

base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if dev.type == "cuda":
    torch.cuda.reset_peak_memory_stats(dev)
    base_cuda = torch.cuda.memory_allocated(dev)
loss = step()  # warm-up
times = []
for _ in range(3):
    sync()
    t = time.perf_counter()
    step()
    sync()
    times.append(time.perf_counter() - t)
peak = (torch.cuda.max_memory_allocated(dev) - base_cuda if dev.type == "cuda"
        else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024)
print(json.dumps({"mode": mode, "tokens": n, "step_s": min(times), "peak_gib": peak / 2**30, "loss": loss}))
""".replace("VOCAB", str(VOCAB)).replace("ANSWER", str(ANSWER))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", default="2048,4096", help="tokens per sample, comma-separated")
    ap.add_argument("--hidden", type=int, default=256, help="decoder hidden size (a multiple of 64)")
    ap.add_argument("--device", default="cpu")
    add_output_args(ap)
    args = ap.parse_args(argv)
    if args.hidden % 64:
        raise SystemExit(f"--hidden {args.hidden}: must be a multiple of 64 (the head size)")
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("bench_loss --device cuda needs a CUDA GPU")
    rows = []
    for n in (int(x) for x in args.tokens.split(",")):
        got = {}
        for mode in ("kept", "full"):
            r = subprocess.run([sys.executable, "-c", ONE, mode, str(n), str(args.hidden), args.device],
                               capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
            if r.returncode:
                raise SystemExit(f"bench_loss {mode} at {n} tokens failed:\n{r.stderr[-2000:]}")
            got[mode] = json.loads(r.stdout.strip().splitlines()[-1])
        k, f = got["kept"], got["full"]
        row = {"tokens": n, "kept_step_s": k["step_s"], "full_step_s": f["step_s"], "kept_peak_gib": k["peak_gib"],
               "full_peak_gib": f["peak_gib"], "speedup": f["step_s"] / k["step_s"],
               "memory_ratio": f["peak_gib"] / max(k["peak_gib"], 1e-9), "loss_diff": abs(k["loss"] - f["loss"])}
        rows.append(row)
        print(f"{n:>6,} tokens: step {k['step_s']:.3f} s kept vs {f['step_s']:.3f} s full logits "
              f"({row['speedup']:.1f}x); peak {k['peak_gib']:.2f} GiB vs {f['peak_gib']:.2f} GiB "
              f"({row['memory_ratio']:.1f}x less); loss difference {row['loss_diff']:.1e}")
        dev = "cpu" if args.device == "cpu" else slug(torch.cuda.get_device_name(torch.device(args.device)))
        path = write_result(args, f"loss-{dev}.json", "bench_loss", rows,  # each length as it is measured
                            {"vocab": VOCAB, "answer_tokens": ANSWER, "hidden": args.hidden},
                            device=args.device)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
