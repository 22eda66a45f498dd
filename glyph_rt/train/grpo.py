"""GRPO with DAPO's clip-higher and dynamic sampling, on rollouts from a small Rollout interface.

    rollout = GlyphRollout(gm, max_new_tokens=512, temperature=1.0)     # the model's own batched generate
    groups = rollout(records, n=16)             # records: {"context", "question", "answer"}; one Group per record
    trainer = GRPOTrainer(cfg, gm)              # cfg.stage == "rl"
    trainer.fit(records_iterator)

Per step: prompts are drawn and answered `group_size` times; each response gets the weighted rewards; groups whose
rewards are all equal carry no signal and are dropped, and new prompts are drawn until the batch is full (dynamic
sampling, at most grpo.max_refills extra draws). Advantages are normalised within each group; the loss is the
clipped surrogate per token with ratio bounds [1 - eps_low, 1 + eps_high], summed over every response token of the
global batch and divided by their count (token-level aggregation), plus kl_coef * KL to a frozen reference (k3
estimator) when kl_coef > 0. Any server speaking the Rollout interface (e.g. a vLLM client) can replace
GlyphRollout.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import torch
import torch.nn.functional as F

from .rewards import Judge, RewardSet
from .trainer import Trainer, _all_reduce


@dataclass
class Group:
    """One prompt and its sampled responses."""
    record: dict
    prompt_ids: list[int]  # the expanded prompt (image tokens repeated per page)
    pixel_values: torch.Tensor  # the prompt's pages
    image_grid_thw: torch.Tensor
    responses: list[list[int]]  # token ids of each response (its stop token included)
    texts: list[str]
    rewards: list[float] = field(default_factory=list)
    parts: dict = field(default_factory=dict)  # reward name -> per-response scores

    @property
    def uniform(self) -> bool:
        return max(self.rewards) - min(self.rewards) <= 1e-9


class Rollout(Protocol):
    def __call__(self, records: Sequence[dict], n: int) -> list[Group]:
        """n sampled responses for each record's prompt (its pages and question)."""


# ----------------------------------------------------------------- the maths
def group_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(r - mean) / (std + eps) within each group; rewards [groups, n]."""
    return (rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + eps)


def grpo_token_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                    eps_low: float = 0.2, eps_high: float = 0.28, ref_logp: torch.Tensor | None = None,
                    kl_coef: float = 0.0) -> tuple[torch.Tensor, dict]:
    """Summed per-token clipped surrogate (divide by the batch's response tokens for token-level aggregation).

    logp, old_logp, ref_logp, mask: [B, T] (mask 1 on response tokens); advantages: [B].
    Returns (loss sum, stats: clipped tokens low/high, KL sum)."""
    ratio = torch.exp(logp - old_logp)
    adv = advantages[:, None]
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * adv
    per_token = -torch.minimum(unclipped, clipped)
    mask = mask.to(per_token.dtype)
    stats = {"clipped_low": float((((ratio < 1 - eps_low) & (adv < 0)).float() * mask).sum()),
             "clipped_high": float((((ratio > 1 + eps_high) & (adv > 0)).float() * mask).sum()), "kl": 0.0}
    if kl_coef > 0 and ref_logp is not None:
        d = ref_logp - logp
        kl = torch.exp(d) - d - 1
        per_token = per_token + kl_coef * kl
        stats["kl"] = float((kl.detach() * mask).sum())
    return (per_token * mask).sum(), stats


def score_groups(groups: list[Group], rewards: RewardSet) -> None:
    for g in groups:
        g.rewards, g.parts = rewards(g.texts, [g.record.get("answer", "")] * len(g.texts))


def dynamic_sample(draw, want: int, max_refills: int, drop_uniform: bool = True) -> tuple[list[Group], dict]:
    """Calls draw(k) -> k scored Groups until `want` groups with differing rewards are kept (or the refills run
    out); returns the kept groups and {draws, dropped}."""
    kept: list[Group] = []
    dropped = draws = 0
    while len(kept) < want and draws <= max_refills:
        for g in draw(want - len(kept)):
            if drop_uniform and g.uniform:
                dropped += 1
            else:
                kept.append(g)
        draws += 1
    return kept[:want], {"draws": draws, "dropped_groups": dropped}


# ----------------------------------------------------------------- rollouts
class GlyphRollout:
    """Samples responses with the training model's batched generate (pages rendered by GlyphModel.build_inputs)."""

    def __init__(self, gm, max_new_tokens: int = 1024, temperature: float = 1.0, top_p: float = 1.0):
        self.gm, self.max_new_tokens, self.temperature, self.top_p = gm, max_new_tokens, temperature, top_p
        cfg = gm.model.config
        # a response holding an image or video placeholder would not match the pages: never sample one
        self.suppress = sorted({int(v) for k, v in vars(cfg).items() if isinstance(v, int) and not isinstance(v, bool)
                                and k.endswith("_token_id") and k.split("_")[0] in ("image", "video", "vision")})

    @torch.no_grad()
    def __call__(self, records: Sequence[dict], n: int) -> list[Group]:
        gm = self.gm
        contexts = [r["context"] for r in records]
        questions = [r["question"] for r in records]
        inputs, rendered, _ = gm.build_inputs(contexts, questions)
        gm.check_window(inputs, rendered, self.max_new_tokens)
        model = gm.model
        was_training = model.training
        model.eval()
        try:
            out = model.generate(**inputs, do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=0,
                                 num_return_sequences=n, max_new_tokens=self.max_new_tokens, use_cache=True,
                                 suppress_tokens=self.suppress)
        finally:
            model.train(was_training)
        P = inputs["input_ids"].shape[1]
        stops = gm.prompts.stop_ids
        pad = gm.tokenizer.pad_token_id
        rows = (rendered.image_grid_thw[:, 1] * rendered.image_grid_thw[:, 2]).tolist()
        groups, img, row = [], 0, 0
        for b, rec in enumerate(records):
            k = rendered.images_per_text[b]
            nrows = int(sum(rows[img:img + k]))
            mask = inputs["attention_mask"][b].bool()
            responses, texts = [], []
            for j in range(n):
                ids = out[b * n + j, P:].tolist()
                cut = next((i + 1 for i, t in enumerate(ids) if t in stops), None)
                ids = ids[:cut] if cut is not None else [t for t in ids if t != pad or pad in stops]
                responses.append(ids)
                texts.append(gm.tokenizer.decode(ids, skip_special_tokens=True))
            groups.append(Group(rec, inputs["input_ids"][b][mask].tolist(), rendered.pixel_values[row:row + nrows],
                                rendered.image_grid_thw[img:img + k].cpu(), responses, texts))
            img, row = img + k, row + nrows
        return groups


def sequence_batch(items: list[tuple[Group, int]], image_token_id: int, pad_id: int, device) -> dict:
    """A right-padded batch of prompt + response sequences with their pages; resp_mask marks response tokens."""
    seqs = [g.prompt_ids + g.responses[j] for g, j in items]
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    att = torch.zeros(len(seqs), L, dtype=torch.long)
    resp = torch.zeros(len(seqs), L, dtype=torch.bool)
    for b, ((g, j), s) in enumerate(zip(items, seqs)):
        ids[b, :len(s)] = torch.tensor(s)
        att[b, :len(s)] = 1
        resp[b, len(g.prompt_ids):len(s)] = True
    return {"input_ids": ids.to(device), "attention_mask": att.to(device), "resp_mask": resp.to(device),
            "pixel_values": torch.cat([g.pixel_values for g, _ in items]).to(device),
            "image_grid_thw": torch.cat([g.image_grid_thw for g, _ in items]).to(device),
            "mm_token_type_ids": ((ids == image_token_id).long() * att).to(device)}


def token_logps(model, batch: dict, temperature: float = 1.0) -> torch.Tensor:
    """log p(token t | tokens < t) for t >= 1 under the sampling temperature: [B, L - 1] (float32)."""
    fwd = {k: v for k, v in batch.items() if k != "resp_mask"}
    logits = model(**fwd, use_cache=False).logits[:, :-1].float() / temperature
    return torch.gather(F.log_softmax(logits, -1), 2, batch["input_ids"][:, 1:, None]).squeeze(2)


class GRPOTrainer(Trainer):
    """The RL stage: Trainer's optimizer, schedule, checkpoints and logs with a GRPO step."""

    def __init__(self, cfg, gm, rollout: Rollout | None = None, rewards: RewardSet | None = None, reference=None,
                 **kw):
        super().__init__(cfg, gm, **kw)
        g = cfg.grpo
        self.prompts_per_rank = self.accum
        self.rollout = rollout or GlyphRollout(gm, g.max_new_tokens, g.temperature, g.top_p)
        judge = Judge(g.judge_base_url, g.judge_model, api_key_env=g.judge_api_key_env) if g.verifier == "judge" \
            else None
        self.rewards = rewards or RewardSet(g.rewards, g.verifier, judge)
        self.reference = reference
        if g.kl_coef > 0 and reference is None:
            from ..models.glyph_model import GlyphModel

            self.reference = GlyphModel.from_pretrained(cfg.model.path, kernels=cfg.model.kernels,
                                                        dtype=next(gm.model.parameters()).dtype,
                                                        device=self.device).model.eval().requires_grad_(False)

    def collect(self, it, steps):
        self._records = it  # the step draws its prompts itself (dynamic sampling decides how many)
        return None

    def draw(self, k: int) -> list[Group]:
        records = []
        for _ in range(k):
            try:
                records.append(next(self._records))
            except StopIteration:
                raise ValueError("the RL prompts ran out") from None
        groups = self.rollout(records, self.cfg.grpo.group_size)
        score_groups(groups, self.rewards)
        return groups

    def train_step(self, _micro=None) -> dict:
        g = self.cfg.grpo
        t0 = time.perf_counter()
        groups, ds = dynamic_sample(self.draw, self.prompts_per_rank, g.max_refills if g.dynamic_sampling else 0,
                                    g.dynamic_sampling)
        t_roll = time.perf_counter() - t0
        self.model.train()
        items = [(gr, j) for gr in groups for j in range(len(gr.responses))]
        adv = {}
        for gi, gr in enumerate(groups):
            a = group_advantages(torch.tensor([gr.rewards], dtype=torch.float32))[0]
            for j in range(len(gr.responses)):
                adv[(gi, j)] = float(a[j])
        local_tokens = sum(len(gr.responses[j]) for gr, j in items)
        (total,) = _all_reduce([float(local_tokens)], self.device)
        total = max(total, 1.0)
        loss_sum, clip_low, clip_high, kl_sum = 0.0, 0.0, 0.0, 0.0
        mb = self.cfg.data.micro_batch
        index = {id(gr): gi for gi, gr in enumerate(groups)}
        chunks = [items[i:i + mb] for i in range(0, len(items), mb)]
        for ci, chunk in enumerate(chunks):
            self._sync(ci == len(chunks) - 1)
            batch = sequence_batch(chunk, self.gm.image_token_id, self.gm.tokenizer.pad_token_id, self.device)
            logp = token_logps(self.model, batch, g.temperature)
            ref = None
            if g.kl_coef > 0 and self.reference is not None:
                with torch.no_grad():
                    ref = token_logps(self.reference, batch, g.temperature)
            a = torch.tensor([adv[(index[id(gr)], j)] for gr, j in chunk], device=self.device)
            s, st = grpo_token_loss(logp, logp.detach(), a, batch["resp_mask"][:, 1:], g.eps_low, g.eps_high, ref,
                                    g.kl_coef)
            (s * (self.world / total)).backward()
            loss_sum += float(s.detach())
            clip_low += st["clipped_low"]
            clip_high += st["clipped_high"]
            kl_sum += st["kl"]
        if not chunks:  # every draw was uniform: nothing to learn this step, keep FSDP's collectives in step
            self._sync(True)
        grad_norm = None
        if self.cfg.optim.grad_clip > 0 and chunks:
            gn = torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad],
                                                self.cfg.optim.grad_clip)
            grad_norm = float(gn.full_tensor() if hasattr(gn, "full_tensor") else gn)
        lr = self.scheduler.get_last_lr()[0]
        if chunks:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        all_r = [r for gr in groups for r in gr.rewards]
        lens = [len(gr.responses[j]) for gr, j in items]
        m = {"loss": loss_sum / total, "lr": lr, "grad_norm": grad_norm, "groups": len(groups),
             "dropped_groups": ds["dropped_groups"], "draws": ds["draws"], "response_tokens": int(total),
             "clip_fraction": (clip_low + clip_high) / total, "clip_low": clip_low / total,
             "clip_high": clip_high / total, "rollout_s": t_roll, "step_s": time.perf_counter() - t0}
        if all_r:
            t = torch.tensor(all_r)
            m.update(reward_mean=float(t.mean()), reward_std=float(t.std()) if len(all_r) > 1 else 0.0,
                     response_len_mean=sum(lens) / len(lens), response_len_max=max(lens))
            for name in groups[0].parts:
                v = torch.tensor([x for gr in groups for x in gr.parts[name]])
                m[f"reward_{name}_mean"] = float(v.mean())
                m[f"reward_{name}_std"] = float(v.std()) if len(v) > 1 else 0.0
        if g.kl_coef > 0:
            m["kl"] = kl_sum / total
        if self.device.type == "cuda":
            m["gpu_mem_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        return m
