"""Training logs: one JSON line per logged step, TensorBoard scalars, and a plot of the curves (rank 0 only).

    log = MetricsLogger("runs/sft", tensorboard=True)
    log.log(step, {"loss": 1.2, "lr": 5e-6})
    log.close()                    # writes runs/sft/curves.png
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from ..fileio import save_figure, text_lines, write_atomic

PLOTTED = ("loss", "lr", "tokens_per_s", "grad_norm", "reward_mean", "clip_fraction", "compression", "cer")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    rows = []
    p = Path(path)
    if p.exists():
        for line in text_lines(p.read_text(encoding="utf-8")):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    pass  # a line cut by a kill
    return rows


class MetricsLogger:
    def __init__(self, out_dir: str | os.PathLike, tensorboard: bool = True, plot: bool = True, enabled: bool = True):
        self.dir = Path(out_dir)
        self.enabled, self.plot = enabled, plot
        self.writer = None
        if not enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "metrics.jsonl"
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (missing: an error now, not at step 1)
        self.tensorboard, self.purge_step = tensorboard, None  # the event file is opened by the first row logged

    def truncate(self, step: int) -> None:
        """Drops the rows after `step` (a resumed run logs them again), in TensorBoard too (its purge_step)."""
        if self.enabled and self.path.exists():
            keep = [r for r in read_jsonl(self.path) if r.get("step", 0) <= step]
            write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in keep))
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        self.purge_step = step + 1

    def _tensorboard(self):
        if self.writer is None and self.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.dir / "tensorboard"), purge_step=self.purge_step)
        return self.writer

    def log(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: v for k, v in metrics.items() if v is not None}}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if self._tensorboard() is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self.writer.add_scalar(f"train/{k}", v, step)

    def close(self) -> Path | None:
        if not self.enabled:
            return None
        if self.writer is not None:
            self.writer.close()
        return plot_curves(self.path, self.dir / "curves.png") if self.plot else None


def plot_curves(jsonl: str | os.PathLike, out: str | os.PathLike, keys=PLOTTED, title: str = "training") -> Path | None:
    """One panel per metric present in the log, against the step."""
    rows = read_jsonl(jsonl)
    keys = [k for k in keys if any(isinstance(r.get(k), (int, float)) for r in rows)]
    if not keys:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(keys))
    nrows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.0 * nrows), squeeze=False)
    for ax, k in zip(axes.flat, keys):
        pts = [(r["step"], r[k]) for r in rows if isinstance(r.get(k), (int, float))]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1.2)
        ax.set_title(k)
        ax.set_xlabel("step")
        if k == "loss":  # the held-out loss beside the training loss
            held = [(r["step"], r["eval_loss"]) for r in rows if isinstance(r.get("eval_loss"), (int, float))]
            if held:
                ax.plot([p[0] for p in held], [p[1] for p in held], "o-", lw=1.2, ms=3)
                ax.legend(["train", "held-out"])
            if all(p[1] > 0 for p in pts + held):
                ax.set_yscale("log")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, out)
