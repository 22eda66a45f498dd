"""Run by tests/test_train.py under torchrun (gloo, CPU): trains a tiny checkpoint through glyph_rt.train.run.

    python -m torch.distributed.run --nproc-per-node N tests/train_fsdp_worker.py STAGE CKPT OUT STEPS [key=value ...]

sft: rank r reads the samples r, r + N, ... of a fixed list, so N ranks together see the same global batches as one.
rl: rank r reads the prompts r, r + S, ... (S: $RECORD_STRIDE, else N), and the ranks in $UNIFORM_RANKS score with
the format reward alone, which a random-weight model never earns: their groups are all dropped.
$BF16_COMPUTE=1 shards with the bf16 mixed-precision policy that CUDA runs get (on the CPU too).
$DATA_LIMITS="a,b,...": rank r's data ends after its first (r-th number) items (finite data, uneven over the ranks).
$EVAL_LIMITS="a,b,...": sft's held-out data (eval_every > 0) is the same stream, rank r's ending after its first
(r-th number) items. Every rank prints `RANK r STEP s` at the end.
"""
import os
import sys

from glyph_rt.render.config import RenderConfig
from glyph_rt.train.config import load_config
from glyph_rt.train.trainer import run

TEXTS = ["hello world", "the cat sat", "red fox", "blue sky"]


class Stream:
    def __init__(self, items, rank, world, limit=None):
        self.items, self.rank, self.world, self.pos, self.limit = items, rank, world, 0, limit

    def __iter__(self):
        while self.limit is None or self.pos < self.limit:
            i = (self.pos * self.world + self.rank) % len(self.items)
            self.pos += 1
            yield self.items[i]

    def state_dict(self):
        return {"pos": self.pos}

    def load_state_dict(self, s):
        self.pos = s["pos"]


def sft_data(ckpt, rank, world):
    from glyph_rt.models.glyph_model import GlyphModel
    from glyph_rt.train.collate import Collator
    from glyph_rt.train.tasks import make_task

    gm = GlyphModel.from_pretrained(ckpt, device="cpu", kernels="off")  # builds the batches only
    task = make_task("ocr", gm.prompts, config=RenderConfig(page_size=(112, 112), margin_x=4, margin_y=4,
                                                            font_size=20, line_height=24), max_pages=1)
    col = Collator(gm.image_token_id, gm.tokenizer.pad_token_id)
    return Stream([col([task({"text": t}, i)]) for i, t in enumerate(TEXTS)], rank, world)


def main():
    stage, ckpt, out, steps, *over = sys.argv[1:]
    if os.environ.get("BF16_COMPUTE") == "1":
        from glyph_rt.train import model

        shard = model.shard
        model.shard = lambda m, mixed_precision, **kw: shard(m, mixed_precision=True, **kw)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    common = [f"model.path={ckpt}", f"out_dir={out}", f"steps={steps}", "optim.warmup_steps=0", "optim.lr=1e-3",
              "device=cpu",  # gloo processes on the CPU, on a GPU machine too (one GPU cannot hold two ranks)
              "tensorboard=false", "plot=false", "model.gradient_checkpointing=false"]
    if stage == "sft":
        cfg = load_config("sft", None, [*common, "data.global_batch=2", *over])
        data = sft_data(ckpt, rank, world)
    else:
        uniform = str(rank) in os.environ.get("UNIFORM_RANKS", "").split(",")
        cfg = load_config("rl", None, [*common, "grpo.group_size=4", "data.micro_batch=1", "grpo.max_new_tokens=5",
                                       "grpo.rewards={format: 1.0}" if uniform else "grpo.rewards={ocr: 1.0}",
                                       "grpo.max_refills=1", "data.ocr_ratio=0", *over])  # its own prompts
        records = [{"context": t, "question": "Read the text.", "answer": t} for t in TEXTS]
        data = Stream(records, rank, int(os.environ.get("RECORD_STRIDE", world)))
    eval_limits = os.environ.get("EVAL_LIMITS")
    if eval_limits:
        from glyph_rt.train import data as engine

        def held_out(cfg, gm, rank, world, held_out=False):
            return Stream(data.items, rank, world, int(eval_limits.split(",")[rank]))

        engine.build_data = held_out
    limits = os.environ.get("DATA_LIMITS")
    if limits:
        data.limit = int(limits.split(",")[rank])
    r = run(cfg, data=data, progress=False)
    say(f"RANK {rank} STEP {r['step']}")
    if rank == 0:
        say(f"LOSS {r['loss']!r}")  # before any teardown of the process group
        say(f"METRICS {r!r}")


def say(line: str) -> None:
    """One line in one write: the ranks share the pipe, and print's separate write of the newline (unbuffered
    output) let another rank's line land in between ("RANK 1 STEP 1LOSS ...")."""
    sys.stdout.flush()
    os.write(sys.stdout.fileno(), (line + "\n").encode())


if __name__ == "__main__":
    main()
