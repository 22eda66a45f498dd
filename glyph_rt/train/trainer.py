"""The CPT / SFT loop: gradient accumulation to a global batch, AdamW, warm-up + cosine, loss on labels only.

    cfg = load_config("sft", "sft.yaml", ["model.path=ckpt/"])
    run(cfg)                                   # what `glyph-rt train sft` and `torchrun -m glyph_rt.train` call

    trainer = Trainer(cfg, gm)                 # gm: load_for_training(cfg.model, device)
    trainer.fit(batches)                       # an iterator of collated micro-batches (the data engine's loader)

The loss of a step is the summed cross-entropy of every label token of the global batch (all micro-batches,
all ranks) divided by their count, so it does not depend on how the batch is split into micro-batches or ranks.
"""
from __future__ import annotations

import itertools
import math
import os
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..fileio import write_atomic
from ..models.patching import forget_weight_caches
from ..models.prompt import IGNORE_INDEX
from .checkpoint import CheckpointManager, distributed, export_hf
from .collate import model_inputs as collated_inputs
from .config import TrainConfig, TrainConfigError
from .metrics import MetricsLogger
from .tasks import TASKS


# ----------------------------------------------------------------- distribution
def setup_distributed(cfg: TrainConfig) -> tuple[int, int, torch.device]:
    """(rank, world size, device); initialises the process group when launched by torchrun with > 1 rank, or with
    one and fsdp=on (a 1-rank mesh)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cfg.device == "auto":
        device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device: {cfg.device!r} but torch sees no CUDA device; use device=cpu")
        if device.type == "cuda" and device.index is None:
            device = torch.device(f"cuda:{local}")
        elif device.type == "cuda" and world > 1:
            raise ValueError(f"device: {cfg.device!r} puts all {world} ranks on one GPU; use device=cuda (or auto): "
                             "each rank takes the GPU of its LOCAL_RANK")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torchrun = "MASTER_ADDR" in os.environ and "MASTER_PORT" in os.environ
    if (world > 1 or (cfg.fsdp == "on" and torchrun)) and not distributed():
        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    return rank, world, device


def per_rank(cfg: TrainConfig, world: int) -> int:
    """Micro-batches of a step on each rank (rl: prompts); an error naming data.global_batch when it does not split."""
    d = cfg.data
    per_step = d.global_batch if cfg.stage == "rl" else d.global_batch // d.micro_batch
    if per_step % world:
        unit = world * (1 if cfg.stage == "rl" else d.micro_batch)
        lo, hi = d.global_batch // unit * unit, (d.global_batch // unit + 1) * unit
        what = "prompts" if cfg.stage == "rl" else f"samples in micro-batches of {d.micro_batch}"
        raise ValueError(f"data.global_batch: {d.global_batch} {what} do not split over {world} ranks; use "
                         + (f"{lo} or {hi}" if lo else f"{hi}") + f" (data.global_batch={hi})")
    return per_step // world


def use_fsdp(cfg: TrainConfig, world: int) -> bool:
    if cfg.fsdp == "off" and world > 1:
        raise ValueError(f"fsdp: 'off' with {world} ranks; multi-rank training shards with FSDP2 (fsdp=auto)")
    if cfg.fsdp == "on" and not distributed():
        raise TrainConfigError("fsdp: 'on' shards over a process group, and this single process has none; launch "
                               "with torchrun (torchrun --nproc-per-node N -m glyph_rt.train ...), or use fsdp=auto "
                               "(no sharding on one process)")
    return cfg.fsdp == "on" or (cfg.fsdp == "auto" and world > 1)


# ----------------------------------------------------------------- optimisation
def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to optim.lr, then cosine decay toward optim.min_lr (or constant). As in HF's schedules, the
    factor reaches min_lr at step `steps`, the one after the last: the last step trains just above it."""
    o = cfg.optim
    if o.warmup_steps and step < o.warmup_steps:
        return (step + 1) / o.warmup_steps
    if o.schedule == "constant":
        return 1.0
    span = max(1, cfg.steps - o.warmup_steps)
    t = min(1.0, (step - o.warmup_steps) / span)
    floor = o.min_lr / o.lr
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))


def build_optimizer(model, cfg: TrainConfig):
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    other = [p for p in params if p.ndim < 2]
    o = cfg.optim
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay}, {"params": other, "weight_decay": 0.0}],
                            lr=o.lr, betas=tuple(o.betas), eps=o.eps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))
    return opt, sched


def model_inputs(batch: dict, device: torch.device) -> dict:
    """The forward's arguments of a collated batch (the collator's, less the labels: the loss is ours), on device."""
    out = {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v)
           for k, v in collated_inputs(batch).items() if k != "labels"}
    out["use_cache"] = False
    return out


def label_tokens(batch: dict) -> float:
    """Tokens that take loss: labels shifted by one (a row's first label has no logit before it); with
    label_weights (data.loss_weights), their summed weights."""
    if "label_weights" in batch:
        return float(batch["label_weights"][..., 1:].sum())
    return int((batch["labels"][..., 1:] != IGNORE_INDEX).sum())


def token_loss_sum(model, batch: dict, device: torch.device, by_task: torch.Tensor | None = None) -> torch.Tensor:
    """Summed cross-entropy of the next-token predictions on every label that is not IGNORE_INDEX (float32). Logits
    are made only where a label follows (logits_to_keep): at long context the full [tokens, vocab] logits would
    dwarf the rest of the step's memory (a 32K-token row of GLM-4.1V: ~20 GB in float32), and the loss is on the
    answer tokens only. by_task ([2, len(TASKS)], float64): each task's cross-entropy sum and label tokens are
    added to it (unweighted: the loss per task that the metrics log), on its device without a host copy."""
    labels = batch["labels"].to(device)
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[..., :-1] = labels[..., 1:] != IGNORE_INDEX
    out = model(**model_inputs(batch, device), logits_to_keep=keep)
    logits = out.logits.float()  # [label tokens, vocab], rows in order
    targets = labels[..., 1:][keep[..., :-1]]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets, reduction="none")
    if by_task is not None and "label_task" in batch:
        task = batch["label_task"].to(device)[..., 1:][keep[..., :-1]].to(by_task.device)
        seen = (task >= 0).double()  # -1: a token of no task
        by_task[0].index_add_(0, task.clamp(min=0), ce.detach().double().to(by_task.device) * seen)
        by_task[1].index_add_(0, task.clamp(min=0), seen)
    if "label_weights" in batch:
        ce = ce * batch["label_weights"].to(device)[..., 1:][keep[..., :-1]]
    return ce.sum()


def batch_counts(batch: dict, image_token_id: int | None) -> dict:
    ids = batch["input_ids"]
    cu = batch.get("cu_seqlens")
    samples = batch.get("num_samples", (len(cu) - 1) if cu is not None else ids.shape[0])
    tokens = int(batch["attention_mask"].sum()) if "attention_mask" in batch else ids.numel()
    grid = batch.get("image_grid_thw")
    pages = int(grid.shape[0]) if grid is not None else 0
    visual = int((ids == image_token_id).sum()) if image_token_id is not None else 0
    out = {"samples": int(samples), "tokens": tokens, "pages": pages, "visual_tokens": visual}
    if "text_tokens" in batch:  # what the rendered text would have cost as text tokens (the tasks count it)
        tt = batch["text_tokens"]
        out["text_tokens"] = int(tt.sum()) if torch.is_tensor(tt) else int(sum(tt) if isinstance(tt, list) else tt)
        out["text_visual_tokens"] = visual  # the visual tokens of the batches that count their text tokens
    return out


def _all_reduce(values: list[float], device: torch.device, op: str = "sum") -> list[float]:
    if not distributed():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t.tolist()


_END = object()  # next(iterator, _END): the data ended


class DataRanOut(Exception):
    """Trainer.collect: the data ran out on `ranks` ranks (every rank raises it at the same micro-batch)."""

    def __init__(self, ranks: int):
        super().__init__(f"the data ran out on {ranks} rank(s)")
        self.ranks = ranks


def endless(data) -> bool:
    """Whether `data` is known never to run out: the data engine's loader with no data.loader.epochs."""
    dataset = getattr(data, "dataset", None)
    return dataset is not None and hasattr(dataset, "epochs") and dataset.epochs is None


class Trainer:
    def __init__(self, cfg: TrainConfig, gm, *, rank: int = 0, world: int = 1, device: torch.device | None = None,
                 fsdp: bool = False, progress: bool = True, eval_data=None):
        self.cfg, self.gm, self.model = cfg, gm, gm.model
        self.rank, self.world = rank, world
        self.device = device or next(self.model.parameters()).device
        self.fsdp = fsdp
        self.accum = per_rank(cfg, world)  # rl: prompts per rank
        self.optimizer, self.scheduler = build_optimizer(self.model, cfg)
        # FSDP2 warns that its root returned a view (the logits of logits_to_keep), of in-place ops on it, which
        # these loops never do; set once (a filter set around each forward would make other warnings repeat)
        warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
        # no-grad forwards (eval loss, rollouts) must not reuse what the patched modules derived from old weights
        self.optimizer.register_step_post_hook(lambda *_: forget_weight_caches(self.model))
        self.step = 0
        self.out = Path(cfg.out_dir)
        self.ckpt = CheckpointManager(self.out / "checkpoints", keep=cfg.keep_checkpoints)
        self.log = MetricsLogger(self.out, tensorboard=cfg.tensorboard, plot=cfg.plot, enabled=rank == 0)
        self.progress = progress and rank == 0
        self.image_token_id = getattr(gm, "image_token_id", None)
        self.eval_data = eval_data  # held-out micro-batches: cfg.eval_batches of them make the held-out loss
        self._eval_batches: list | None = None
        self._agree = False  # fit: whether collect agrees over the ranks that each drew its micro-batch
        self.ran_out = False  # fit: whether the data ran out before `steps`

    # -------------------------------------------------------------- state
    def resume(self, data=None) -> bool:
        """Continues from the newest checkpoint in out_dir/checkpoints, if any (and cfg.resume)."""
        check_fresh_start(self.cfg)
        path = self.ckpt.latest() if self.cfg.resume else None
        if path is None:
            self.log.truncate(0)  # a fresh run: rows of an earlier one go
            return False
        self.step, extra = self.ckpt.load(path, self.model, self.optimizer)
        self.scheduler.load_state_dict(extra["scheduler"])
        self.apply_optim_config()
        if data is not None and extra.get("data") is not None and hasattr(data, "load_state_dict"):
            data.load_state_dict(extra["data"])
        self.log.truncate(self.step)
        return True

    def apply_optim_config(self) -> None:
        """The config's optimizer settings over those a checkpoint restored: its Adam moments and step count stay,
        while lr, min_lr, the schedule, weight decay, betas and eps are the run's (config.yaml), as HF's Trainer
        takes them from its arguments on resume; the schedule goes on from the checkpoint's step."""
        o = self.cfg.optim
        factor = lr_factor(self.scheduler.last_epoch, self.cfg)
        for group, decay in zip(self.optimizer.param_groups, (o.weight_decay, 0.0)):  # build_optimizer's groups
            group.update(lr=o.lr * factor, initial_lr=o.lr, weight_decay=decay, betas=tuple(o.betas), eps=o.eps)
        self.scheduler.base_lrs = [o.lr] * len(self.optimizer.param_groups)
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def save(self, data=None, data_state: dict | None = None) -> Path:
        """A checkpoint of this step; the data's position is `data_state` when given (the data's state as of the
        step's end, taken before a step that did not finish drew from it), else the data's state now."""
        if data_state is None and hasattr(data, "state_dict"):
            data_state = data.state_dict()
        extra = {"scheduler": self.scheduler.state_dict(), "data": data_state, "model": model_state_keys(self.cfg),
                 "data_config": self.cfg.to_dict()["data"]}
        return self.ckpt.save(self.step, self.model, self.optimizer, extra)

    # -------------------------------------------------------------- one step
    def autocast(self):
        """The context of the model's forwards (see train.model.autocast)."""
        from .model import autocast

        return autocast(self.cfg.model, self.device, self.fsdp)

    def train_step(self, micro_batches) -> dict:
        """One optimizer step over this rank's micro-batches of the global batch (a list, or an iterator that
        collect() gives: each micro-batch is drawn just before its forward, so one at a time is on the device).
        Each backward takes its loss sum as it is; the gradients are then scaled once by the global token count.
        Under FSDP every backward reduce-scatters its gradients, so they accumulate sharded (no unsharded fp32
        copy of them lives between micro-batches)."""
        t0 = time.perf_counter()
        self.model.train()
        local_tokens, loss_sum, counts = 0, 0.0, []
        by_task = torch.zeros(2, len(TASKS), dtype=torch.float64, device=self.device)
        for b in micro_batches:
            with self.autocast():
                s = token_loss_sum(self.model, b, self.device, by_task)
            s.backward()
            loss_sum += float(s.detach())
            local_tokens += label_tokens(b)
            counts.append(batch_counts(b, self.image_token_id))
            del b, s
        (total,) = _all_reduce([float(local_tokens)], self.device)
        total = total if total > 0 else 1.0  # summed label weights (data.loss_weights) may be below 1
        # FSDP averages gradients over ranks: scaled so that the result is the global token mean
        scale = self.world / total
        for p in self.model.parameters():
            if p.grad is not None:
                p.grad.mul_(scale)
        grad_norm = None
        if self.cfg.optim.grad_clip > 0:
            params = [p for p in self.model.parameters() if p.requires_grad]
            gn = torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.grad_clip)
            grad_norm = float(gn.full_tensor() if hasattr(gn, "full_tensor") else gn)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        keys = ("samples", "tokens", "pages", "visual_tokens", "text_tokens", "text_visual_tokens")
        local = [float(sum(c.get(k, 0) for c in counts)) for k in keys] + [loss_sum] + by_task.flatten().tolist()
        reduced = _all_reduce(local, self.device)
        summed = dict(zip(keys + ("loss_sum",), reduced))
        task_sums = reduced[len(keys) + 1:]
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        dt = time.perf_counter() - t0
        m = {"loss": summed["loss_sum"] / total, "lr": lr, "grad_norm": grad_norm, "loss_tokens": int(total),
             "samples": int(summed["samples"]), "pages": int(summed["pages"]),
             "visual_tokens": int(summed["visual_tokens"]), "tokens_per_s": summed["tokens"] / dt,
             "samples_per_s": summed["samples"] / dt, "step_s": dt}
        if summed["text_tokens"] and summed["text_visual_tokens"]:  # text tokens per visual token (the paper's ratio)
            m["compression"] = summed["text_tokens"] / summed["text_visual_tokens"]
        n = len(TASKS)
        for name, ce, tokens in zip(TASKS, task_sums[:n], task_sums[n:]):
            if tokens:  # each task's own loss per token and share of the loss tokens (unweighted)
                m[f"loss_{name}"] = ce / tokens
                m[f"token_share_{name}"] = tokens / max(sum(task_sums[n:]), 1.0)
        if self.device.type == "cuda":
            m["gpu_mem_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        return m

    @torch.no_grad()
    def eval_loss(self) -> float:
        """The loss on the held-out micro-batches (the same cfg.eval_batches each time, all ranks), per label
        token."""
        if self._eval_batches is None:
            # kept on the CPU between evaluations (a batch of pages is large)
            got = [{k: v.cpu() if torch.is_tensor(v) else v for k, v in b.items()}
                   for b in itertools.islice(self.eval_data, self.cfg.eval_batches)]
            # every rank learns whether any ran out, so that all raise rather than wait for it in the forwards
            (short,) = _all_reduce([float(len(got) < self.cfg.eval_batches)], self.device)
            if short:
                raise ValueError(f"the held-out data ran out before eval_batches={self.cfg.eval_batches} "
                                 f"micro-batches{self._on_ranks(short)}")
            self._eval_batches = got
        self.model.eval()
        try:
            with self.autocast():
                s = sum(float(token_loss_sum(self.model, b, self.device)) for b in self._eval_batches)
        finally:
            self.model.train()
        s, n = _all_reduce([s, float(sum(label_tokens(b) for b in self._eval_batches))], self.device)
        return s / (n if n > 0 else 1.0)

    # -------------------------------------------------------------- loop
    def collect(self, it, steps: int):
        """This rank's micro-batches of the next global batch, drawn one by one as the step takes them; DataRanOut
        when the data ends. With several ranks and data that may end (not the data engine's endless loader), the
        ranks agree before each forward that every one drew its micro-batch (one all_reduce of a flag): a rank whose
        data ran out alone would leave the others waiting in the forward's collectives. DataRanOut is then raised
        on every rank at the same micro-batch."""
        for _ in range(self.accum):
            b = next(it, _END)
            ran_out = float(b is _END)
            if self._agree:
                (ran_out,) = _all_reduce([ran_out], self.device)
            if ran_out:
                raise DataRanOut(int(ran_out))
            yield b

    def _on_ranks(self, n: float) -> str:
        return f" on {int(n)} of {self.world} ranks" if self.world > 1 else ""

    def data_counts(self, data) -> dict:
        """Samples (or rl records) the data skipped so far, over all ranks: those that made nothing or were longer
        than data.max_tokens (`too_long`, also among `skipped`)."""
        if not hasattr(data, "skipped"):
            return {}
        skipped, too_long = _all_reduce([float(data.skipped), float(getattr(data, "too_long", 0))], self.device)
        return {"skipped": int(skipped), "too_long": int(too_long)}

    def fit(self, data, steps: int | None = None) -> dict:
        """Trains until `steps` (default cfg.steps) optimizer steps are done, resuming first when a checkpoint
        exists; saves every cfg.save_every steps and at the end. Returns the last step's metrics. Data that runs out
        first (a finite data.loader.epochs; on any rank) ends the training after its last whole step, on every rank
        together: that step is logged and saved (the unfinished step's gradients are dropped; the checkpoint holds
        the data's position as of that step, so a resume draws what the unfinished step drew again) and a warning
        says so, with the data's counts; data that runs out before the first step is a ValueError (rl's records
        too: GRPOTrainer.draw raises DataRanOut)."""
        from tqdm import tqdm

        steps = steps or self.cfg.steps
        self.resume(data)
        self._agree = self.world > 1 and distributed() and not endless(data)
        self.ran_out = False
        it = iter(data)
        bar = tqdm(total=steps, initial=self.step, desc=f"{self.cfg.stage}", disable=not self.progress,
                   dynamic_ncols=True)
        last: dict = {}
        done = {"log": self.step, "eval": self.step, "save": self.step}  # what the last step got (resumed: all)
        try:
            while self.step < steps:
                # the data's position as of the last whole step: a step the data ends in draws some of its
                # micro-batches first, which a checkpoint of the last whole step must not count as consumed
                before = data.state_dict() if hasattr(data, "state_dict") else None
                try:
                    last = self.train_step(self.collect(it, steps))
                except DataRanOut as e:
                    self.optimizer.zero_grad(set_to_none=True)  # the unfinished step's
                    self.end_early(e.ranks, steps, data, last, done, before)
                    break
                end = self.step == steps
                held_out = self.eval_data is not None and self.cfg.eval_every and (
                    self.step % self.cfg.eval_every == 0 or end)
                self.finish_step(last, data, held_out=held_out,
                                 log=held_out or self.step % self.cfg.log_every == 0 or end,
                                 save=(self.cfg.save_every and self.step % self.cfg.save_every == 0) or end, done=done)
                bar.update(1)
                bar.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{last['lr']:.2e}")
        finally:
            bar.close()
        self.log.close()
        return last

    def finish_step(self, last: dict, data, held_out: bool, log: bool, save: bool, done: dict,
                    data_state: dict | None = None) -> None:
        """The held-out loss, the metrics row and the checkpoint of the step just trained, those asked for
        (data_state: the data's position as of that step's end, when the data moved on since)."""
        if held_out:
            last["eval_loss"] = self.eval_loss()
            done["eval"] = self.step
        if log:
            last.update(self.data_counts(data))
            self.log.log(self.step, last)
            done["log"] = self.step
        if save:
            self.save(data, data_state)
            done["save"] = self.step

    def ran_out_report(self, data) -> tuple[str, str | None]:
        """(what the data drew, over all ranks: " (N samples drawn, K of them skipped, T too long)", or "" for data
        that does not count them; the reason the last sample skipped on this rank was, when every sample drawn was
        skipped, else None)."""
        counts = data.counts() if callable(getattr(data, "counts", None)) else None
        if counts is None:
            return "", None
        drawn, skipped, too_long = (int(x) for x in _all_reduce(
            [float(counts["drawn"]), float(counts["skipped"]), float(counts["too_long"])], self.device))
        what = "records" if self.cfg.stage == "rl" else "samples"
        text = f" ({drawn} {what} drawn{' over all ranks' if self.world > 1 else ''}, {skipped} of them skipped" + \
            (f", {too_long} too long" if too_long else "") + ")"
        why = None
        if drawn and skipped == drawn:
            reason = getattr(data, "last_skip_reason", None)
            why = (reason() if callable(reason) else None) or "no reason given"
        return text, why

    def end_early(self, ranks: int, steps: int, data, last: dict, done: dict, data_state: dict | None = None) -> None:
        """The data ran out (on `ranks` ranks) in step self.step + 1: the last whole step gets what the last step
        of the run would (held-out loss, metrics row, checkpoint), those it did not get yet; its checkpoint holds
        `data_state`, the data's position as of that step (not counting what the unfinished step drew). The message
        says what the data drew and skipped; when it skipped every sample it gives the last one's reason rather
        than blaming data.loader.epochs."""
        epochs = self.cfg.data.loader.get("epochs") if isinstance(self.cfg.data.loader, dict) else None
        counts, why = self.ran_out_report(data)
        if why is not None:
            hint = (f"; every one was skipped (the last: {why}): check the corpus, data.loader.text_field and the "
                    "tasks' options")
        else:
            hint = (f"; data.loader.epochs={epochs} ends it: raise it (null: no end) or lower steps" if epochs else "")
        where = f"the data ran out in step {self.step + 1} of {steps}{self._on_ranks(ranks)}{counts}"
        if self.step == 0:
            raise ValueError(f"{where}: nothing to train{hint}")
        self.ran_out = True
        if self.rank == 0:
            warnings.warn(f"{where}: training ends after step {self.step}, which is saved{hint}", stacklevel=3)
        if last:  # a step trained in this run (a resumed run that ran out at once has nothing new)
            self.finish_step(last, data, held_out=self.eval_data is not None and bool(self.cfg.eval_every)
                             and done["eval"] != self.step, log=done["log"] != self.step,
                             save=done["save"] != self.step, done=done, data_state=data_state)

    def export(self, path: str | os.PathLike | None = None) -> Path | None:
        """HF-format safetensors of the trained model (LoRA merged) in out_dir/export, in model.dtype (fp32 master
        weights and FSDP's fp32 shards are written as bf16 where the run computes in bf16)."""
        from .model import resolve_dtype

        lora = self.cfg.model.lora
        return export_hf(self.model, self.gm.tokenizer, self.cfg.model.path, path or self.out / "export",
                         lora_scale=lora.alpha / lora.r if lora.r else None,
                         dtype=resolve_dtype(self.cfg.model.dtype, self.device))


# ----------------------------------------------------------------- entry point
# the model settings that shape a checkpoint's model and optimizer state: a resume under others cannot load it
# (model.path is not one: the same model may be found under another path, and a checkpoint outlives a move)
STATE_KEYS = ("lora.r", "lora.target_modules", "freeze_vision", "freeze_projector", "freeze_llm")


def model_state_keys(cfg: TrainConfig) -> dict:
    def get(key):
        node = cfg.model
        for part in key.split("."):
            node = getattr(node, part)
        return list(node) if isinstance(node, (list, tuple)) else node

    return {f"model.{k}": get(k) for k in STATE_KEYS if cfg.model.lora.r or not k.startswith("lora.target")}


def check_resume(cfg: TrainConfig) -> None:
    """A resume whose model settings differ from those its latest checkpoint was written under is refused, naming
    the first that differs, before the model loads (the checkpoint's state cannot load into the other model)."""
    if not cfg.resume:
        return
    latest = CheckpointManager(Path(cfg.out_dir) / "checkpoints").latest()
    try:
        state = torch.load(latest / "rank_0.pt", map_location="cpu", weights_only=False) if latest else {}
    except Exception:  # unreadable: the load says so, naming the file
        return
    saved = state.get("model")
    for key, value in model_state_keys(cfg).items():
        if isinstance(saved, dict) and key in saved and saved[key] != value:
            raise TrainConfigError(
                f"{key}: {value!r}, but {latest} was written with {saved[key]!r}: a resume continues that run with "
                f"its model; give {key}={saved[key]!r}, or another out_dir (or resume=false in a new one) to start "
                "over")
    was, now = state.get("data_config"), cfg.to_dict()["data"]
    changed = [k for k, v in now.items() if isinstance(was, dict) and k in was and was[k] != v]
    if changed and os.environ.get("RANK", "0") == "0":  # allowed (a larger batch, another corpus), but a change
        warnings.warn(f"resuming {latest.name} with other data settings than it was written with: "
                      + ", ".join(f"data.{k} {was[k]!r} -> {now[k]!r}" for k in changed)
                      + "; the data goes on from the checkpoint's position under the new settings", stacklevel=2)


def check_held_out_apart(cfg: TrainConfig) -> None:
    """With eval_every, the held-out corpus must hold none of the training corpus's files (else eval_loss is a loss on
    training data)."""
    from .loader import corpus_files

    if not cfg.eval_every:
        return
    shared = corpus_files(cfg.data.loader.get("corpus")) & corpus_files(cfg.data.eval_loader.get("corpus"))
    if shared:
        raise TrainConfigError(
            f"data.eval_loader.corpus: holds {len(shared)} of the training corpus's files "
            f"({sorted(map(str, shared))[0]}{', ...' if len(shared) > 1 else ''}): the held-out loss would be a loss "
            "on training data; give files data.loader.corpus does not hold")


def check_fresh_start(cfg: TrainConfig) -> None:
    """resume=false beside an earlier run's checkpoints would see them outrank (and prune) the new run's own."""
    if cfg.resume:
        return
    old = CheckpointManager(Path(cfg.out_dir) / "checkpoints").steps()
    if old:
        raise TrainConfigError(
            f"resume=false, but {old[0].parent} holds an earlier run's checkpoints ({old[-1].name}): resume=true "
            "continues that run; to start over, remove that directory or choose another out_dir")


def run(cfg: TrainConfig, data=None, progress: bool = True) -> dict:
    """Runs a stage end to end: distribution, model, data, training (with resume), export. A process group it
    initialised is destroyed once every rank has finished (an interpreter that exits while gloo's threads still hold
    the last collective's tensors can abort)."""
    from .data import loader_options

    loader_options(cfg)  # a bad data.loader key fails before the model loads
    check_held_out_apart(cfg)
    check_fresh_start(cfg)
    check_resume(cfg)
    torch.manual_seed(cfg.seed)
    owned = not distributed()
    rank, world, device = setup_distributed(cfg)
    owned = owned and distributed()
    result = _run(cfg, data, progress, rank, world, device)
    if owned:  # not on an error: the other ranks may never reach the barrier
        dist.barrier()
        dist.destroy_process_group()
    return result


def _run(cfg: TrainConfig, data, progress: bool, rank: int, world: int, device: torch.device) -> dict:
    from .model import fsdp_precision, load_for_training, shard

    per_rank(cfg, world)  # before the model loads
    if rank == 0:  # the run's resolved config, every key: `--config out_dir/config.yaml` runs it again
        Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
        write_atomic(Path(cfg.out_dir) / "config.yaml", cfg.to_yaml())
    fsdp = use_fsdp(cfg, world)
    dtype, mixed = fsdp_precision(cfg.model, device) if fsdp else (None, False)
    gm = load_for_training(cfg.model, device, dtype=dtype)
    if cfg.data.render_config:  # what rl's rollouts render with (the other stages' tasks take it in build_data)
        from .config import fixed_render_config

        gm.render_config = fixed_render_config(cfg.data.render_config)
    if fsdp:
        shard(gm.model, mixed_precision=mixed, device=device)
    if cfg.stage == "rl":
        from .grpo import GRPOTrainer

        trainer = GRPOTrainer(cfg, gm, rank=rank, world=world, device=device, fsdp=fsdp, progress=progress)
    else:
        trainer = Trainer(cfg, gm, rank=rank, world=world, device=device, fsdp=fsdp, progress=progress)
    from .data import build_data

    if data is None:
        data = build_data(cfg, gm, rank, world)
    if cfg.eval_every and trainer.eval_data is None:
        trainer.eval_data = build_data(cfg, gm, rank, world, held_out=True)
    last = trainer.fit(data)
    if cfg.export:
        trainer.export()
    return {"step": trainer.step, **last}
