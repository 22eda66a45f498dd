"""Collation: Samples -> one model batch, pages rendered in one launch, samples padded or packed.

Interface (stable; the trainer builds on it):

    collate = Collator(image_token_id, pad_id, mode="pad" | "pack", model=hf_model, device=..., dtype=...)
    batch = collate(samples)          # a dict
    out = model(**model_inputs(batch))

    pad:   input_ids, labels, attention_mask, mm_token_type_ids      [B, L]   (right padding)
    pack:  input_ids, labels, mm_token_type_ids                      [1, T]   (samples back to back)
           position_ids  [4, 1, T]: row 0 the text position inside each sample (0, 1, ...), rows 1-3 its M-RoPE
                         positions from the model's own get_rope_index, run per sample; transformers reads row 0
                         to keep attention inside each sample (sdpa: a block mask; attn_implementation="glyph"
                         and flash attention: varlen segments)
           use_cache=False (transformers builds the per-sample mask only without a cache)
           cu_seqlens    int32 [B + 1] sample boundaries, max_seqlen int (not model arguments)
    both:  pixel_values  [sum of gh*gw, 1176] every page of every sample, in order; image_grid_thw [images, 3]
           num_samples, loss_tokens (not model arguments); text_tokens (int, not a model argument): the text tokens
           the batch's pages stand for (each Sample's meta["text_tokens"], the tasks' count), when every sample has it

Pages are drawn by glyph_rt.render.gpu.inputs_of_batch: one launch for the whole batch on a GPU, the
C++ CPU path otherwise; samples whose pages were drawn earlier (attach_pixels, in DataLoader workers
with TaskDataset(render="worker")) are only concatenated. Each sample's image tokens are expanded to
its pages' visual tokens here, once the page sizes are known (auto-crop can change them).
"""
from __future__ import annotations

import numpy as np
import torch

from ..models.prompt import IGNORE_INDEX, tokens_per_image
from ..ops.pixel_values import ROW, cat_rows, normalize_lut, uint8_rows
from ..render.gpu import inputs_of_batch, resolve_device_backend
from ..render.tokens import VisionModel
from .tasks import TASKS

MODES = ("pad", "pack")
NOT_MODEL_INPUTS = ("cu_seqlens", "max_seqlen", "num_samples", "loss_tokens", "label_weights", "label_task",
                    "text_tokens")


class SamplesTooLong(ValueError):
    """Samples of a batch longer than the collator's max_length; `indices`: their places in the batch."""

    def __init__(self, message: str, indices: list[int]):
        super().__init__(message)
        self.indices = indices


def model_inputs(batch: dict) -> dict:
    """The keys of a batch that the model's forward takes."""
    return {k: v for k, v in batch.items() if k not in NOT_MODEL_INPUTS}


def render_samples(samples, device="cpu", dtype=torch.float32, model: str = "glm4v", backend: str = "auto"):
    """Draws every page of the samples in one batch: (pixel_values, image_grid_thw, images per sample)."""
    device, backend = resolve_device_backend(device, backend)
    items = [(p.document(), p.start, p.stop) for s in samples for p in s.pages if p.num_pages]
    counts = [s.num_images for s in samples]
    if not items:
        return _no_rows(dtype, device), torch.zeros(0, 3, dtype=torch.long), counts
    lut = None if dtype == torch.uint8 else normalize_lut(device, dtype)
    pv, grid, _ = inputs_of_batch(items, device, backend, model, dtype, lut)
    return pv, grid.cpu(), counts


def _no_rows(dtype, device="cpu") -> torch.Tensor:
    """pixel_values of no page: [0, 1176] normalized rows, or [0, 588] uint8 patches."""
    return uint8_rows(0, device) if dtype == torch.uint8 else torch.zeros(0, ROW, dtype=dtype, device=device)


def attach_pixels(samples, **render_kw) -> None:
    """Renders the samples' pages now and stores each sample's pixel_values and image_grid_thw in it."""
    _attach(samples, *render_samples(samples, **render_kw))


def _attach(samples, pv, grid, counts) -> None:
    """Stores each sample's rows of pixel_values (views) and its image_grid_thw in it."""
    rows = (grid[:, 1] * grid[:, 2]).tolist()
    r = i = 0
    for s, n in zip(samples, counts):
        nrows = sum(rows[i:i + n])
        s.pixel_values, s.image_grid_thw = pv[r:r + nrows], grid[i:i + n]
        r, i = r + nrows, i + n


def expand_images(input_ids, labels, image_token_id: int, visual_tokens) -> tuple[list[int], list[int]]:
    """Repeats the k-th image token visual_tokens[k] times (labels: IGNORE_INDEX), as PromptBuilder.expand does."""
    ids, labs = _expand(input_ids, labels, image_token_id, visual_tokens)
    return ids.tolist(), labs.tolist()


def _expand(input_ids, labels, image_token_id: int, visual_tokens) -> tuple[np.ndarray, np.ndarray]:
    ids = np.asarray(input_ids, np.int64)
    labs = np.asarray(labels, np.int64)
    images = ids == image_token_id
    k = int(images.sum())
    if k != len(visual_tokens):
        raise ValueError(f"the sample has {k} image tokens for {len(visual_tokens)} pages")
    repeats = np.ones(len(ids), np.int64)
    repeats[images] = visual_tokens
    labs = np.where(images, IGNORE_INDEX, labs)
    return np.repeat(ids, repeats), np.repeat(labs, repeats)


def rope_index_fn(model):
    """The HF model's own get_rope_index (on the model or its inner .model)."""
    for m in (model, getattr(model, "model", None)):
        fn = getattr(m, "get_rope_index", None)
        if fn is not None:
            return fn
    raise ValueError(f"{type(model).__name__} has no get_rope_index; packing needs the VLM (GLM-4.1V, Qwen2.5-VL)")


class Collator:
    """Samples -> batch dict (see the module docstring). `model` (the HF VLM) is needed for mode='pack'."""

    def __init__(self, image_token_id: int, pad_id: int, mode: str = "pad", model=None, device="cpu",
                 dtype=torch.float32, vision_model: str | VisionModel = "glm4v", backend: str = "auto",
                 max_length: int | None = None, loss_weights: dict | None = None):
        if mode not in MODES:
            raise ValueError(f"mode: {mode!r} is unknown; choose from {', '.join(MODES)}")
        if mode == "pack" and model is None:
            raise ValueError("mode='pack' needs the model (its get_rope_index gives each sample's M-RoPE positions)")
        self.image_token_id, self.pad_id, self.mode = int(image_token_id), int(pad_id), mode
        self.rope_index = rope_index_fn(model) if mode == "pack" else None
        self.device, self.dtype, self.vision_model, self.backend = device, dtype, vision_model, backend
        self.max_length = max_length
        # task -> weight of each of its label tokens in the loss (1 when absent); with any other than 1 the batch
        # carries label_weights beside labels
        self.loss_weights = {k: float(v) for k, v in (loss_weights or {}).items() if float(v) != 1.0}

    def pixels(self, samples):
        """(pixel_values, image_grid_thw, images per sample): the samples' own when rendered earlier (a worker, or
        a collation that left out a too-long sample), the rest rendered here in one batch."""
        todo = [s for s in samples if s.pixel_values is None]
        if len(todo) == len(samples):
            return render_samples(samples, self.device, self.dtype, self.vision_model, self.backend)
        if todo:
            _attach(todo, *render_samples(todo, self.device, self.dtype, self.vision_model, self.backend))
        pvs = [s.pixel_values for s in samples if len(s.pixel_values)]
        pv = cat_rows(pvs) if len(pvs) > 1 else (pvs[0] if pvs else _no_rows(self.dtype))
        grid = torch.cat([s.image_grid_thw for s in samples]) if samples else torch.zeros(0, 3, dtype=torch.long)
        return pv.to(self.device), grid.cpu(), [s.num_images for s in samples]

    def __call__(self, samples) -> dict:
        samples = list(samples)
        if not samples:
            raise ValueError("collate: no samples")
        pv, grid, counts = self.pixels(samples)
        per_image = tokens_per_image(grid)
        seqs, i, long = [], 0, []
        for k, (s, n) in enumerate(zip(samples, counts)):
            ids, labs = _expand(s.input_ids, s.labels, self.image_token_id, per_image[i:i + n])
            if self.max_length is not None and len(ids) > self.max_length:
                long.append((k, f"sample {s.index} ({s.task}) has {len(ids)} tokens"))
            seqs.append((ids, labs, grid[i:i + n]))
            i += n
        if long:
            if samples[0].pixel_values is None:  # the samples that fit keep their pages for the next collation
                _attach(samples, pv, grid, counts)
            raise SamplesTooLong(f"{'; '.join(w for _, w in long)}: over max_length={self.max_length}; lower the "
                                 "task's max_pages or raise max_length", [k for k, _ in long])
        batch = self.pack(seqs) if self.mode == "pack" else self.pad(seqs)
        batch.update(pixel_values=pv, image_grid_thw=grid.to(pv.device), num_samples=len(samples),
                     loss_tokens=int((batch["labels"] != IGNORE_INDEX).sum()))
        text = [getattr(s, "meta", {}).get("text_tokens") for s in samples]
        if all(isinstance(t, int) for t in text):  # the compression metric's: text tokens the pages stand for
            batch["text_tokens"] = sum(text)
        batch["label_task"] = self._per_token([TASKS.index(s.task) if s.task in TASKS else -1 for s in samples],
                                              seqs, batch["labels"])  # each token's task, for the loss per task
        if self.loss_weights:  # each label token's task weight (a task outside TASKS, -1, weighs 1)
            lut = torch.tensor([self.loss_weights.get(t, 1.0) for t in TASKS] + [1.0])
            batch["label_weights"] = lut[batch["label_task"]] * (batch["labels"] != IGNORE_INDEX)
        dev = pv.device
        return {k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def _per_token(self, values: list, seqs, labels: torch.Tensor) -> torch.Tensor:
        """One value per sample spread over its tokens, in the batch's layout (rows padded, or segments packed)."""
        if self.mode == "pack":
            return torch.cat([torch.full((len(ids),), v) for v, (ids, _, _) in zip(values, seqs)])[None]
        return torch.tensor(values)[:, None].expand_as(labels).clone()

    def pad(self, seqs) -> dict:
        L = max(len(ids) for ids, _, _ in seqs)
        B = len(seqs)
        input_ids = np.full((B, L), self.pad_id, np.int64)
        labels = np.full((B, L), IGNORE_INDEX, np.int64)
        mask = np.zeros((B, L), np.int64)
        for b, (ids, labs, _) in enumerate(seqs):
            input_ids[b, :len(ids)], labels[b, :len(ids)], mask[b, :len(ids)] = ids, labs, 1
        input_ids, mask = torch.from_numpy(input_ids), torch.from_numpy(mask)
        return {"input_ids": input_ids, "labels": torch.from_numpy(labels), "attention_mask": mask,
                "mm_token_type_ids": (input_ids == self.image_token_id).long() * mask}

    def pack(self, seqs) -> dict:
        pos, lens = [], []
        for ids, labs, grid in seqs:
            t = torch.from_numpy(ids)[None]
            mm = (t == self.image_token_id).long()
            mrope, _ = self.rope_index(t, mm, image_grid_thw=grid if len(grid) else None)
            pos.append(torch.cat([torch.arange(len(ids))[None, None], mrope.cpu()], 0))
            labs[0] = IGNORE_INDEX  # nothing predicts a sample's first token (it would see the previous sample)
            lens.append(len(ids))
        input_ids = torch.from_numpy(np.concatenate([ids for ids, _, _ in seqs]))[None]
        labels = torch.from_numpy(np.concatenate([labs for _, labs, _ in seqs]))[None]
        cu = torch.zeros(len(lens) + 1, dtype=torch.int32)
        cu[1:] = torch.tensor(lens).cumsum(0)
        return {"input_ids": input_ids, "labels": labels, "position_ids": torch.cat(pos, 2),
                "mm_token_type_ids": (input_ids == self.image_token_id).long(), "cu_seqlens": cu,
                "max_seqlen": max(lens), "use_cache": False}


__all__ = ["Collator", "MODES", "SamplesTooLong", "model_inputs", "render_samples", "attach_pixels", "expand_images",
           "rope_index_fn"]
