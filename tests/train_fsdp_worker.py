"""Run by tests/test_train.py under torchrun (gloo, CPU): trains a tiny checkpoint through glyph_rt.train.run.

    python -m torch.distributed.run --nproc-per-node N tests/train_fsdp_worker.py CKPT OUT STEPS [key=value ...]

Rank r reads the samples r, r + N, ... of a fixed list, so N ranks together see the same global batches as one.
"""
import sys

import torch.distributed as dist

from glyph_rt.render.config import RenderConfig
from glyph_rt.train.config import load_config
from glyph_rt.train.trainer import run

TEXTS = ["hello world", "the cat sat", "red fox", "blue sky"]


class Stream:
    def __init__(self, batches, rank, world):
        self.batches, self.rank, self.world, self.pos = batches, rank, world, 0

    def __iter__(self):
        while True:
            i = (self.pos * self.world + self.rank) % len(self.batches)
            self.pos += 1
            yield self.batches[i]

    def state_dict(self):
        return {"pos": self.pos}

    def load_state_dict(self, s):
        self.pos = s["pos"]


def main():
    ckpt, out, steps, *over = sys.argv[1:]
    cfg = load_config("sft", None, [f"model.path={ckpt}", f"out_dir={out}", f"steps={steps}", "optim.warmup_steps=0",
                                    "data.global_batch=2", "optim.lr=1e-3", "tensorboard=false", "plot=false",
                                    "model.gradient_checkpointing=false", *over])
    from glyph_rt.models.glyph_model import GlyphModel
    from glyph_rt.train.collate import Collator
    from glyph_rt.train.tasks import make_task

    gm = GlyphModel.from_pretrained(ckpt, device="cpu", kernels="off")  # builds the batches only
    task = make_task("ocr", gm.prompts, config=RenderConfig(page_size=(112, 112), margin_x=4, margin_y=4,
                                                            font_size=20, line_height=24), max_pages=1)
    col = Collator(gm.image_token_id, gm.tokenizer.pad_token_id)
    batches = [col([task({"text": t}, i)]) for i, t in enumerate(TEXTS)]
    import os

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    r = run(cfg, data=Stream(batches, rank, world), progress=False)
    if rank == 0:
        print(f"LOSS {r['loss']!r}")
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
