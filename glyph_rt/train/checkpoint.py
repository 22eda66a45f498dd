"""Checkpoints: sharded torch.distributed.checkpoint directories written atomically, exact resume, HF export.

    ckpt = CheckpointManager("runs/sft/checkpoints", keep=2)
    ckpt.save(step, model, optimizer, extra={"scheduler": ..., "data": loader.state_dict()})
    step, extra = ckpt.load(ckpt.latest(), model, optimizer)
    export_hf(model, tokenizer, source_dir, "runs/sft/export")    # loadable by GlyphModel.from_pretrained

A checkpoint is written into `step_NNNNNNNN.tmp` and renamed to `step_NNNNNNNN` once every rank has finished,
so a kill leaves either a complete checkpoint or a .tmp directory that is ignored (and removed by the next save);
saving a step again (a resumed run that ends where it resumed) moves the old one aside before the rename.
Model and optimizer go through DCP (each rank writes its shards); the scheduler, the data position and every
rank's RNG states go into `rank_R.pt`.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                     set_state_dict)

STEP_DIR = re.compile(r"^step_(\d{8})$")
REPLACED = ".replaced"  # a step saved again: the old one, moved aside until the new one is in place


def distributed() -> bool:
    """Whether a process group is initialised (False on a torch built without torch.distributed)."""
    return dist.is_available() and dist.is_initialized()


def _rank() -> int:
    return dist.get_rank() if distributed() else 0


def _barrier() -> None:
    if distributed():
        dist.barrier()


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointManager:
    def __init__(self, directory: str | os.PathLike, keep: int = 2):
        self.dir = Path(directory)
        self.keep = keep

    def steps(self) -> list[Path]:
        """The complete checkpoints, oldest first: `step_N`, or `step_N.replaced` where a kill between the two
        renames of saving step N again left no `step_N` (_replace_dir)."""
        if not self.dir.is_dir():
            return []
        found = {}
        for p in self.dir.iterdir():
            name = p.name[:-len(REPLACED)] if p.name.endswith(REPLACED) else p.name
            if p.is_dir() and STEP_DIR.match(name) and (name == p.name or name not in found):
                found[name] = p
        return [found[k] for k in sorted(found)]

    def latest(self) -> Path | None:
        found = self.steps()
        return found[-1] if found else None

    def save(self, step: int, model, optimizer, extra: dict | None = None) -> Path:
        """Writes model + optimizer shards (DCP) and this rank's extra state; returns the final directory."""
        final = self.dir / f"step_{step:08d}"
        tmp = self.dir / f"step_{step:08d}.tmp"
        if _rank() == 0:
            for stale in self.dir.glob("step_*.*") if self.dir.is_dir() else []:
                whole = stale.with_name(stale.name[:-len(REPLACED)])
                if stale.name.endswith(REPLACED) and not whole.exists():  # the only copy of its step: back
                    os.replace(stale, whole)
                else:  # .tmp, and .replaced beside its new step
                    shutil.rmtree(stale, ignore_errors=True)
            tmp.mkdir(parents=True, exist_ok=True)
        _barrier()
        # get_state_dict gives an optimizer without state (no update yet) some, by a zero-gradient step at lr 0:
        # Adam's step count 1 with zero moments, which would shrink the first real update; it goes again after
        # the write, and the flag has load leave the optimizer without state too
        unstepped = not optimizer.state
        msd, osd = get_state_dict(model, optimizer)
        with warnings.catch_warnings():  # single-process DCP says so on every call
            warnings.filterwarnings("ignore", message=".*torch.distributed is disabled")
            dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(tmp), no_dist=not distributed())
        if unstepped:
            optimizer.state.clear()
        torch.save({"step": step, "rng": rng_state(), "optim_unstepped": unstepped, **(extra or {})},
                   tmp / f"rank_{_rank()}.pt")
        _barrier()
        if _rank() == 0:
            _replace_dir(tmp, final)
            for old in self.steps()[:-self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        _barrier()
        return final

    def load(self, path: str | os.PathLike, model, optimizer) -> tuple[int, dict]:
        """Restores model, optimizer and this rank's RNG; returns (step, extra) with the saved scheduler/data state."""
        path = Path(path)
        own = path / f"rank_{_rank()}.pt"
        if not own.exists():
            raise FileNotFoundError(f"{own} is missing: the checkpoint was written by fewer ranks than now run; "
                                    "resume with the same number of processes")
        msd, osd = get_state_dict(model, optimizer)
        state = {"model": msd, "optim": osd}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.distributed is disabled")
            dcp.load(state, checkpoint_id=str(path), no_dist=not distributed())
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        extra = torch.load(own, weights_only=False)
        if extra.pop("optim_unstepped", False):
            optimizer.state.clear()
        set_rng_state(extra.pop("rng"))
        return extra.pop("step"), extra


LORA_KEY = re.compile(r"^(.*)\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B)\.[^.]+(?:\.weight)?$")


def lora_delta(a: torch.Tensor, b: torch.Tensor, embedding: bool = False) -> torch.Tensor:
    """The weight update of one LoRA pair, as peft's get_delta_weight makes it (times the scale): Linear B @ A,
    Embedding (B @ A)^T (peft keeps A as [r, vocab] and B as [dim, r]), ConvNd A's kernel followed by B's 1x1
    conv (one groups=1 conv of the two, load_for_training refuses other groups)."""
    a, b = a.float(), b.float()
    if embedding:
        return (b @ a).T
    if a.ndim == 2:
        return b @ a
    conv = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[a.ndim]
    return conv(a.transpose(0, 1), b).transpose(0, 1)


def merge_lora(state: dict, scale: float) -> dict:
    """A peft model's full state dict with each LoRA pair folded into its base weight (W + scale * lora_delta),
    under the transformers model's own names. A LoRA weight it cannot fold is an error, never left out."""
    pairs: dict = {}
    for k, v in state.items():
        m = LORA_KEY.match(k)
        if m:
            pairs.setdefault(m.group(1), {})[m.group(2)[-1]] = (v, "embedding" in m.group(2))
        elif ".lora_" in k:
            raise ValueError(f"export: {k} is a LoRA weight that cannot be merged into its base layer (only "
                             "LoRA's A/B pairs are); leave that module out of model.lora.target_modules")
    out = {}
    for k, v in state.items():
        if ".lora_" in k:
            continue
        name = k.replace(".base_layer.", ".")
        if k.endswith(".base_layer.weight") and k[: -len(".base_layer.weight")] in pairs:
            stem = k[: -len(".base_layer.weight")]
            pair = pairs.pop(stem)
            if set(pair) != {"A", "B"}:
                raise ValueError(f"export: {stem} has LoRA {'/'.join(sorted(pair))} but not both A and B")
            (a, emb), (b, _) = pair["A"], pair["B"]
            delta = lora_delta(a, b, emb)
            if delta.shape != v.shape:
                raise ValueError(f"export: {stem}'s LoRA update is {tuple(delta.shape)}, its weight "
                                 f"{tuple(v.shape)}; leave that module out of model.lora.target_modules")
            v = (v.float() + scale * delta).to(v.dtype)
        if name.startswith("base_model.model."):
            name = name[len("base_model.model."):]
        out[name] = v
    if pairs:
        raise ValueError(f"export: the LoRA weights of {', '.join(sorted(pairs))} have no base weight to merge into")
    return out


def export_hf(model, tokenizer, source: str | os.PathLike, out: str | os.PathLike, lora_scale: float | None = None,
              dtype: torch.dtype | None = None) -> Path | None:
    """Writes an HF-format checkpoint (config, safetensors, tokenizer, chat template, processor config) that
    GlyphModel.from_pretrained and vLLM load; every rank calls it, rank 0 writes (temp dir + rename) and returns
    its path, the others None. A failure on rank 0 is raised on every rank."""
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    error = None
    if _rank() == 0:
        try:
            _write_hf(model, tokenizer, full, Path(source), Path(out), lora_scale, dtype)
        except Exception as e:  # noqa: BLE001 - told to every rank below, then raised here
            error = e
    if distributed():  # the other ranks learn whether rank 0's export worked, rather than wait at a barrier for ever
        told = [None if error is None else f"{type(error).__name__}: {error}"]
        dist.broadcast_object_list(told, src=0)
        if _rank() != 0:
            if told[0] is not None:
                raise RuntimeError(f"rank 0 failed to export the checkpoint to {out}: {told[0]}")
            return None
    if error is not None:
        raise error
    return Path(out)


def _write_hf(model, tokenizer, full: dict, source: Path, out: Path, lora_scale: float | None,
              dtype: torch.dtype | None) -> None:
    from .model import base_model

    if lora_scale is not None:
        full = merge_lora(full, lora_scale)
    hf = base_model(model)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if dtype is not None:
        full = {k: v.to(dtype) if v.is_floating_point() else v for k, v in full.items()}
    hf.save_pretrained(tmp, state_dict=full)
    _fix_config(tmp / "config.json", source / "config.json", full)
    tokenizer.save_pretrained(tmp)
    for name in ("preprocessor_config.json", "chat_template.jinja", "chat_template.json", "generation_config.json"):
        if (source / name).exists() and not (tmp / name).exists():
            shutil.copy2(source / name, tmp / name)
    _replace_dir(tmp, out)


SUB_CONFIGS = ("text_config", "vision_config")


def export_config(config: dict, source: dict, dtype: torch.dtype | None) -> dict:
    """The exported config.json: save_pretrained writes the training model's dtype (fp32 master weights, not the
    tensors written) and its use_cache (off for gradient checkpointing). dtype (the tensors', None: left as it
    is) goes to the top level and each sub-config; use_cache is the source checkpoint's, or left out where it
    had none."""
    out = json.loads(json.dumps(config))
    for node, src in [(out, source)] + [(out[k], source.get(k) or {}) for k in SUB_CONFIGS
                                        if isinstance(out.get(k), dict)]:
        if dtype is not None:
            node["dtype"] = str(dtype).removeprefix("torch.")
        if "use_cache" in src:
            node["use_cache"] = src["use_cache"]
        else:
            node.pop("use_cache", None)
    return out


def _fix_config(path: Path, source: Path, state: dict) -> None:
    dtypes = {v.dtype for v in state.values() if v.is_floating_point()}
    old = json.loads(source.read_text(encoding="utf-8")) if source.exists() else {}
    config = export_config(json.loads(path.read_text(encoding="utf-8")), old,
                           dtypes.pop() if len(dtypes) == 1 else None)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _replace_dir(new: Path, dest: Path) -> None:
    """Puts directory `new` at `dest`. An existing `dest` is renamed aside first and removed after, so a kill
    leaves at worst `dest.replaced` (complete) beside `new` (complete), never a half-deleted `dest`."""
    if dest.exists():
        aside = dest.with_name(dest.name + REPLACED)
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(dest, aside)
        os.replace(new, dest)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(new, dest)
