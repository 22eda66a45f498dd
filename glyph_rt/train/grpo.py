"""GRPO with DAPO's clip-higher and dynamic sampling, on rollouts from a small Rollout interface.

    rollout = GlyphRollout(gm, max_new_tokens=512, temperature=1.0)     # the model's own batched generate
    groups = rollout(records, n=16)             # records: {"context", "question", "answer"}; one Group per record
    trainer = GRPOTrainer(cfg, gm)              # cfg.stage == "rl"
    trainer.fit(records_iterator)

Per step: prompts are drawn and answered `group_size` times; each response gets the weighted rewards; groups whose
rewards are all equal carry no signal and are dropped, and new prompts are drawn until the batch is full (dynamic
sampling, at most grpo.max_refills extra draws). Advantages are normalised within each group; the loss is the
clipped surrogate per token with ratio bounds [1 - eps_low, 1 + eps_high], summed over every response token of the
(mini-)batch on all ranks and divided by their count (token-level aggregation), plus kl_coef * KL to a frozen
reference (k3 estimator) when kl_coef > 0. The rollout batch is used for grpo.epochs passes of grpo.mini_batches
optimizer updates each; with more than one update the ratio is taken against the rollout policy's log-probs (one
extra forward), so the clip acts. Any server speaking the Rollout interface (e.g. a vLLM client) can replace
GlyphRollout.

A group's pages go through the vision tower once per forward, whatever the number of its responses in it; the
old log-probs, the reference and (with the vision tower and projector frozen) the training forwards take each
group's page embeddings once per step.

Under FSDP every rank must run as many forwards: all ranks draw as long as one still needs groups, generate runs
with synced_gpus, and a rank with fewer sequences to train on runs spare ones at weight 0.
"""
from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .checkpoint import distributed
from .model import base_model, gathered
from .rewards import Judge, RewardSet
from .trainer import DataRanOut, Trainer, _all_reduce


def _world() -> int:
    return dist.get_world_size() if distributed() else 1


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


OCR_REWARDS = RewardSet({"ocr": 1.0})  # the OCR auxiliary task's records: 1 - normalised Levenshtein distance


def score_groups(groups: list[Group], rewards: RewardSet) -> None:
    """Each group's rewards: the run's for its question, the OCR reward alone for an OCR record (its answer is
    the text on its pages)."""
    for g in groups:
        rs = OCR_REWARDS if g.record.get("task") == "ocr" else rewards
        g.rewards, g.parts = rs(g.texts, [g.record.get("answer", "")] * len(g.texts))


def dynamic_sample(draw, want: int, max_refills: int, drop_uniform: bool = True,
                   most=lambda need: need) -> tuple[list[Group], dict]:
    """Calls draw(k) -> k scored Groups until `want` groups with differing rewards are kept (or the refills run
    out); returns the kept groups and {draws, dropped}. most(need) is the largest number of groups still
    needed by any rank: while another rank draws, one already full draws one prompt too (FSDP's forwards go in
    step) and keeps nothing from it."""
    kept: list[Group] = []
    dropped = draws = 0
    while draws <= max_refills and most(want - len(kept)) > 0:
        full = len(kept) >= want
        for g in draw(max(1, want - len(kept))):
            if full:
                continue
            if drop_uniform and g.uniform:
                dropped += 1
            else:
                kept.append(g)
        draws += 1
    return kept[:want], {"draws": draws, "dropped_groups": dropped}


# ----------------------------------------------------------------- rollouts
THINK_TAGS = ("<think>", "</think>")


def reward_hidden_ids(tokenizer) -> set[int]:
    """The ids a response's text for the rewards leaves out: every added token (control tokens, GLM's
    <|begin_of_box|> markers, special or not) but the thinking format's tags, which the format reward reads."""
    return {int(i) for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()
            if getattr(t, "content", str(t)) not in THINK_TAGS}


def placeholder_ids(config) -> list[int]:
    """The image, video and vision token ids of a model config: a response holding one would not match the pages,
    so the rollout never samples one (and token_logps leaves them out of the distribution too)."""
    return sorted({int(v) for k, v in vars(config).items() if isinstance(v, int) and not isinstance(v, bool)
                   and k.endswith("_token_id") and k.split("_")[0] in ("image", "video", "vision")})


class GlyphRollout:
    """Samples responses with the training model's batched generate (pages rendered by GlyphModel.build_inputs).
    `suppress`: the ids it never samples (a Rollout may have one; GRPOTrainer's log-probs leave them out too)."""

    def __init__(self, gm, max_new_tokens: int = 1024, temperature: float = 1.0, top_p: float = 1.0):
        self.gm, self.max_new_tokens, self.temperature, self.top_p = gm, max_new_tokens, temperature, top_p
        self.suppress = placeholder_ids(gm.model.config)

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
            out = self.sample(inputs, n)
        finally:
            model.train(was_training)
        P = inputs["input_ids"].shape[1]
        stops = gm.prompts.stop_ids
        hidden = reward_hidden_ids(gm.tokenizer) | set(stops)
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
                ids = ids[:cut]  # generate pads a row only after its stop: a pad id before one was sampled
                responses.append(ids)
                texts.append(gm.tokenizer.decode([t for t in ids if t not in hidden], skip_special_tokens=False))
            groups.append(Group(rec, inputs["input_ids"][b][mask].tolist(), rendered.pixel_values[row:row + nrows],
                                rendered.image_grid_thw[img:img + k].cpu(), responses, texts))
            img, row = img + k, row + nrows
        return groups


    def sample(self, inputs: dict, n: int) -> torch.Tensor:
        """n sampled continuations of each prompt, [rows * n, prompt + new tokens]. The prompts (their pages through
        the vision tower) are prefilled once, all but their last token, and each row's KV is copied n times; with
        num_return_sequences generate would run the vision tower and the prefill n times over."""
        from ..models.kv_cache import GlyphCache, cache_kwarg
        model, hf = self.gm.model, base_model(self.gm.model)
        kw = cache_kwarg(hf)
        P = inputs["input_ids"].shape[1]  # prompts are left-padded: the last column is every row's last token
        per_token = [k for k in ("input_ids", "attention_mask", "mm_token_type_ids") if k in inputs]
        head = {k: v[:, :P - 1] if k in per_token else v for k, v in inputs.items()}
        cache = GlyphCache()
        model(**head, use_cache=True, logits_to_keep=1, **{kw: cache})
        rows = GlyphCache(reserve=self.max_new_tokens + 1)
        for i, layer in enumerate(cache.layers):
            rows.update(layer.keys.repeat_interleave(n, 0), layer.values.repeat_interleave(n, 0), i)
        del cache
        if getattr(hf.model, "rope_deltas", None) is not None:  # M-RoPE's offsets after the pages, one per row
            hf.model.rope_deltas = hf.model.rope_deltas.repeat_interleave(n, 0)
        # synced_gpus: every rank runs forwards until all are done, as FSDP's gathers need (transformers does not
        # recognise a model sharded by fully_shard itself)
        with _bare_generation_config(hf):
            return model.generate(**{k: inputs[k].repeat_interleave(n, 0) for k in per_token},
                                  generation_config=self.generation_config(), synced_gpus=_world() > 1, **{kw: rows})

    def generation_config(self):
        """Sampling at the rollout's temperature and top-p, the placeholder ids suppressed, and nothing else: a
        repetition penalty, min_p or n-gram ban from the checkpoint's generation_config.json would make the
        sampler's distribution differ from the log-probs the policy loss takes (token_logps, which takes the
        temperature and suppresses the same ids). generate fills every field left unset here from the model's
        generation_config, so sample() runs it with a bare one in its place. top-p is the one difference: the loss
        takes the whole (temperature-scaled, suppressed) distribution, as TRL's does; cut to the nucleus, a sampled
        token outside the updated policy's nucleus would get a log-prob of -inf."""
        from transformers import GenerationConfig

        gm = self.gm
        return GenerationConfig(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=0,
                                max_new_tokens=self.max_new_tokens, suppress_tokens=self.suppress or None,
                                eos_token_id=list(gm.prompts.stop_ids), pad_token_id=gm.tokenizer.pad_token_id,
                                use_cache=True)


@contextlib.contextmanager
def _bare_generation_config(hf):
    """While it lasts, the transformers model `hf` has a default GenerationConfig: generate takes nothing from the
    checkpoint's (its repetition_penalty, min_p, typical_p, no_repeat_ngram_size, min_new_tokens, ...)."""
    from transformers import GenerationConfig

    own = hf.generation_config
    hf.generation_config = GenerationConfig()
    try:
        yield
    finally:
        hf.generation_config = own


def distinct(groups: list[Group]) -> list[Group]:
    """The groups in first-seen order, each once."""
    return list({id(g): g for g in groups}.values())


def sequence_batch(items: list[tuple[Group, int]], image_token_id: int, pad_id: int, device) -> dict:
    """A right-padded batch of prompt + response sequences; resp_mask marks response tokens. Each group's pages go
    in once (pixel_values), however many of its responses the batch holds; image_grid_thw has every row's pages
    (for the positions), and "_groups" the group of each row (see token_logps)."""
    seqs = [g.prompt_ids + g.responses[j] for g, j in items]
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    att = torch.zeros(len(seqs), L, dtype=torch.long)
    resp = torch.zeros(len(seqs), L, dtype=torch.bool)
    for b, ((g, j), s) in enumerate(zip(items, seqs)):
        ids[b, :len(s)] = torch.tensor(s)
        att[b, :len(s)] = 1
        resp[b, len(g.prompt_ids):len(s)] = True
    groups = [g for g, _ in items]
    return {"input_ids": ids.to(device), "attention_mask": att.to(device), "resp_mask": resp.to(device),
            "pixel_values": torch.cat([g.pixel_values for g in distinct(groups)]).to(device),
            "image_grid_thw": torch.cat([g.image_grid_thw for g in groups]).to(device),
            "mm_token_type_ids": ((ids == image_token_id).long() * att).to(device), "_groups": groups}


def page_embeddings(model, groups: list[Group], device, calls: int = 0) -> dict[int, torch.Tensor]:
    """Each group's visual tokens [tokens, hidden] from `model`'s vision tower, one no-grad forward per group: for
    the forwards of a step whose vision tower does not change. Under FSDP every rank must make as many: `calls`
    (the most groups on any rank) pads the count with forwards whose output is dropped."""
    out = {}
    with torch.no_grad():
        for k in range(max(len(groups), calls)):
            g = groups[k % len(groups)]
            if not len(g.image_grid_thw):  # a prompt without pages
                out[id(g)] = g.pixel_values.new_zeros(0)
                continue
            feats = model.get_image_features(g.pixel_values.to(device), g.image_grid_thw.to(device),
                                             return_dict=True).pooler_output
            out.setdefault(id(g), torch.cat(feats))
    return out


@contextlib.contextmanager
def _pages_once(model, groups: list[Group]):
    """While it lasts, the vision tower of `model` runs over the distinct groups' pages only (as sequence_batch
    lays them out) and each row gets its group's embeddings: autograd adds up the rows' gradients."""
    inner = base_model(model).model
    once = distinct(groups)
    first, n = {}, 0
    for g in once:
        first[id(g)], n = n, n + len(g.image_grid_thw)
    index = [first[id(g)] + i for g in groups for i in range(len(g.image_grid_thw))]
    grids = torch.cat([g.image_grid_thw for g in once])
    own = vars(inner).get("get_image_features")
    run = inner.get_image_features

    def get_image_features(pixel_values, image_grid_thw=None, **kw):
        out = run(pixel_values, grids.to(pixel_values.device), **kw)
        out.pooler_output = tuple(out.pooler_output[i] for i in index)
        return out

    inner.get_image_features = get_image_features
    try:
        yield
    finally:
        if own is None:
            del inner.get_image_features
        else:
            inner.get_image_features = own


def token_logps(model, batch: dict, temperature: float = 1.0, embeds: dict | None = None,
                suppress: Sequence[int] | None = None) -> torch.Tensor:
    """log p(token t | tokens < t) for t >= 1 under the sampling temperature: [B, L - 1] (float32), on the response
    tokens (zero elsewhere: logits are made only before a response token, not over the long prompt). `embeds`:
    page_embeddings of the rows' groups, in place of the vision tower. `suppress`: ids the sampler never samples,
    left out of the softmax as generate's suppress_tokens does (None: GlyphRollout's, the model's placeholder ids);
    the sampler's top-p is not applied (see GlyphRollout.generation_config)."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    groups = batch["_groups"]
    fwd = {k: v for k, v in batch.items() if k not in ("resp_mask", "_groups")}
    ids, resp = batch["input_ids"], batch["resp_mask"]
    if suppress is None:
        suppress = placeholder_ids(base_model(model).config)
    keep = torch.zeros_like(resp)
    keep[:, :-1] = resp[:, 1:]
    pages = contextlib.nullcontext()
    if embeds is not None:
        del fwd["pixel_values"]
        fwd["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(
            pooler_output=tuple(embeds[id(g)] for g in groups))}
    elif len(distinct(groups)) < len(groups):
        pages = _pages_once(model, groups)
    with pages:
        logits = model(**fwd, use_cache=False, logits_to_keep=keep).logits.float() / temperature  # [resp tokens, V]
    if len(suppress):
        logits = logits.index_fill(1, torch.tensor(list(suppress), device=logits.device), float("-inf"))
    picked = torch.gather(F.log_softmax(logits, -1), 1, ids[:, 1:][resp[:, 1:]][:, None]).squeeze(1)
    out = torch.zeros(ids.shape[0], ids.shape[1] - 1, dtype=picked.dtype, device=picked.device)
    out[resp[:, 1:]] = picked
    return out


class GRPOTrainer(Trainer):
    """The RL stage: Trainer's optimizer, schedule, checkpoints and logs with a GRPO step."""

    def __init__(self, cfg, gm, rollout: Rollout | None = None, rewards: RewardSet | None = None, reference=None,
                 **kw):
        super().__init__(cfg, gm, **kw)
        g = cfg.grpo
        self.prompts_per_rank = self.accum
        self.rollout = rollout or GlyphRollout(gm, g.max_new_tokens, g.temperature, g.top_p)
        self.suppress = list(getattr(self.rollout, "suppress", None) or ())  # what the sampler never samples
        self._warned_mini = False
        judge = Judge(g.judge_base_url, g.judge_model, api_key_env=g.judge_api_key_env,
                      concurrency=g.judge_concurrency, max_retries=g.judge_max_retries) if g.verifier == "judge" \
            else None
        self.rewards = rewards or RewardSet(g.rewards, g.verifier, judge)
        self.reference = reference.eval() if reference is not None else None  # frozen, no dropout
        self._drawn: list[tuple[list, dict]] = []  # (rewards, parts) of the step's groups, kept or dropped
        self.vision_frozen = not any(p.requires_grad for p in base_model(self.model).model.visual.parameters())
        if g.kl_coef > 0 and reference is None:  # frozen: in the run's compute dtype, whatever its master weights
            from ..models.glyph_model import GlyphModel
            from .model import resolve_dtype

            self.reference = GlyphModel.from_pretrained(cfg.model.path, kernels=cfg.model.kernels,
                                                        dtype=resolve_dtype(cfg.model.dtype, self.device),
                                                        device=self.device).model.eval().requires_grad_(False)
            if self.fsdp:  # sharded like the policy: not a whole copy (18 GB at 9B in bf16) on every rank
                from .model import shard

                shard(self.reference, mixed_precision=False, device=self.device)

    def collect(self, it, steps):
        self._records = it  # the step draws its prompts itself (dynamic sampling decides how many)
        return None

    def draw(self, k: int) -> list[Group]:
        """k prompts' groups, rolled out grpo.rollout_prompts prompts at a time. Every rank makes as many rollout
        calls (FSDP's forwards go in step): one with fewer repeats its last prompt and drops the groups. Records
        that run out (a finite data.loader.epochs) on any rank raise DataRanOut on every rank (the ranks agree in
        the reduction they make anyway), before this step updates anything: the run ends after its last whole step."""
        records, out = [], 0.0
        for _ in range(k):
            try:
                records.append(next(self._records))
            except StopIteration:
                out = 1.0
                break
        per = self.cfg.grpo.rollout_prompts or k
        calls = [records[i:i + per] for i in range(0, len(records), per)]
        most, ran_out = (int(x) for x in _all_reduce([float(len(calls)), out], self.device, "max"))
        if ran_out:
            (ranks,) = _all_reduce([out], self.device)
            raise DataRanOut(int(ranks))
        groups = []
        gather = self.fsdp and self.cfg.grpo.rollout_gathered
        with self.autocast(), gathered(self.model) if gather else contextlib.nullcontext():
            for c in range(most):
                out = self.rollout(calls[c] if c < len(calls) else records[-1:], self.cfg.grpo.group_size)
                if c < len(calls):
                    groups += out
        score_groups(groups, self.rewards)
        # the step's reward statistics: every group drawn, kept or dropped; not the groups, whose pages a dropped
        # one would hold on to until the step ends
        self._drawn += [(gr.rewards, gr.parts) for gr in groups]
        if groups:
            self._spare = groups[-1]
        return groups

    def _batch(self, chunk: list[tuple]) -> dict:
        """The sequences of a chunk of (group, response, advantage) as one batch."""
        return sequence_batch([(gr, j) for gr, j, _ in chunk], self.gm.image_token_id, self.gm.tokenizer.pad_token_id,
                              self.device)

    def train_step(self, _micro=None) -> dict:
        """One rollout batch, then grpo.epochs passes over it in grpo.mini_batches optimizer updates each: each
        update takes an even slice of the rank's sequences (whatever data.micro_batch), in forwards of
        data.micro_batch; a step with fewer sequences than grpo.mini_batches makes fewer updates and warns (once).
        Every rank runs the same number of forwards (FSDP gathers in step): a rank with fewer chunks in a
        mini-batch runs spare ones at weight 0."""
        g = self.cfg.grpo
        t0 = time.perf_counter()
        self._spare, self._drawn = None, []
        groups, ds = dynamic_sample(self.draw, self.prompts_per_rank, g.max_refills if g.dynamic_sampling else 0,
                                    g.dynamic_sampling, lambda need: _all_reduce([float(need)], self.device, "max")[0])
        t_roll = time.perf_counter() - t0
        self.model.train()
        items = []  # (group, response, advantage)
        for gr in groups:
            a = group_advantages(torch.tensor([gr.rewards], dtype=torch.float32))[0]
            items += [(gr, j, float(a[j])) for j in range(len(gr.responses))]
        # the sequences in grpo.mini_batches even slices (one optimizer update each), each cut into micro-batches
        mb, M = self.cfg.data.micro_batch, g.mini_batches
        minis = [items[len(items) * m // M:len(items) * (m + 1) // M] for m in range(M)]
        parts = [[mini[i:i + mb] for i in range(0, len(mini), mb)] for mini in minis]
        chunks = [c for p in parts for c in p]
        *width, most_items = [int(x) for x in _all_reduce([float(len(p)) for p in parts] + [float(len(items))],
                                                           self.device, "max")]
        totals = _all_reduce([float(sum(len(gr.responses[j]) for c in p for gr, j, _ in c)) for p in parts],
                             self.device)
        if 0 < most_items < M and not self._warned_mini:  # the same counts, so the same warning, on every rank
            self._warned_mini = True
            if self.rank == 0:
                warnings.warn(f"grpo.mini_batches={M} but step {self.step + 1} has {most_items} sequences to train on "
                              f"(the most on a rank): {sum(t > 0 for t in totals)} optimizer updates per pass, not {M};"
                              " lower grpo.mini_batches or raise data.global_batch or grpo.group_size (warned once)",
                              stacklevel=2)
        spare = [(self._spare, 0, 0.0)] if self._spare is not None else None
        if spare is None and any(width):
            raise RuntimeError("GRPO: this rank's rollout returned no group to keep its forwards in step")
        parts = [p + [spare] * (w - len(p)) for p, w in zip(parts, width)]  # weight 0: no response token counts
        real = {id(c) for c in chunks}
        # the pages' embeddings, once per group for the step, where the vision tower stays as it is: the rollout
        # policy's (for old log-probs, and for training when the tower and projector are frozen) and the reference's
        needed = distinct([gr for p in parts for c in p for gr, _, _ in c])
        old, embeds, ref_embeds = {}, None, None
        self.model.eval()  # the rollout policy as it sampled (no dropout); the updates below run in train mode
        try:
            with self.autocast():
                most = int(_all_reduce([float(len(needed))], self.device, "max")[0]) if any(width) else 0
                if any(width) and (g.epochs * M > 1 or self.vision_frozen):
                    embeds = page_embeddings(self.model, needed, self.device, most)
                if any(width) and g.kl_coef > 0 and self.reference is not None:
                    ref_embeds = page_embeddings(self.reference, needed, self.device, most)
                if g.epochs * M > 1:  # the policy moves within the batch: the ratio takes the rollout log-probs
                    with torch.no_grad():
                        for pi, p in enumerate(parts):
                            for ci, c in enumerate(p):
                                old[pi, ci] = token_logps(self.model, self._batch(c), g.temperature, embeds,
                                                          self.suppress)
        finally:
            self.model.train()
        loss_sum, clip_low, clip_high, kl_sum, norms, updates, seen = 0.0, 0.0, 0.0, 0.0, [], 0, 0.0
        lr = self.scheduler.get_last_lr()[0]
        for _ in range(g.epochs):
            for pi, (p, total) in enumerate(zip(parts, totals)):
                if not p or total == 0:
                    continue
                for ci, c in enumerate(p):
                    batch = self._batch(c)  # one batch for the policy and the reference
                    with self.autocast():
                        logp = token_logps(self.model, batch, g.temperature, embeds if self.vision_frozen else None,
                                           self.suppress)
                        ref = None
                        if ref_embeds is not None:
                            with torch.no_grad():
                                ref = token_logps(self.reference, batch, g.temperature, ref_embeds, self.suppress)
                        adv = torch.tensor([a for _, _, a in c], device=self.device)
                        s, st = grpo_token_loss(logp, old.get((pi, ci), logp.detach()), adv,
                                                batch["resp_mask"][:, 1:], g.eps_low, g.eps_high, ref, g.kl_coef)
                    w = self.world / total if id(c) in real else 0.0
                    (s * w).backward()
                    if id(c) in real:
                        loss_sum += float(s.detach()) / total
                        clip_low += st["clipped_low"]
                        clip_high += st["clipped_high"]
                        kl_sum += st["kl"]
                if self.cfg.optim.grad_clip > 0:
                    gn = torch.nn.utils.clip_grad_norm_([q for q in self.model.parameters() if q.requires_grad],
                                                        self.cfg.optim.grad_clip)
                    norms.append(float(gn.full_tensor() if hasattr(gn, "full_tensor") else gn))
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                updates += 1
                seen += total
        with warnings.catch_warnings():
            if not updates:  # every draw was uniform: nothing to learn this step
                warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
            self.scheduler.step()  # the schedule counts rollout steps, updates or none
        self.step += 1
        # the same names on every rank: the OCR reward's when the OCR task is mixed in
        names = sorted(set(self.rewards.weights) | ({"ocr"} if self.cfg.data.ocr_ratio > 0 else set()))
        drawn = self._drawn
        self._spare, self._drawn = None, []  # the spare's pages go with the step
        series = [[r for rewards, _ in drawn for r in rewards]] + \
            [[x for _, parts in drawn for x in parts.get(name, [])] for name in names] + \
            [[r for gr in groups for r in gr.rewards]]
        lens = [len(gr.responses[j]) for gr, j, _ in items]
        local = [clip_low, clip_high, kl_sum, loss_sum, len(groups), ds["dropped_groups"], sum(lens), len(lens)]
        for v in series:
            local += [len(v), sum(v), sum(x * x for x in v)]
        tot = _all_reduce([float(x) for x in local], self.device)  # the step over all ranks
        clip_low, clip_high, kl_sum, loss_sum = tot[:4]
        (longest,) = _all_reduce([float(max(lens, default=0))], self.device, "max")
        seen = max(seen, 1.0)
        m = {"loss": loss_sum / max(updates, 1), "lr": lr, "grad_norm": sum(norms) / len(norms) if norms else None,
             "updates": updates, "groups": int(tot[4]), "dropped_groups": int(tot[5]), "draws": ds["draws"],
             "response_tokens": int(sum(totals)), "clip_fraction": (clip_low + clip_high) / seen,
             "clip_low": clip_low / seen, "clip_high": clip_high / seen, "rollout_s": t_roll,
             "step_s": time.perf_counter() - t0}
        if tot[7]:
            m.update(response_len_mean=tot[6] / tot[7], response_len_max=int(longest))
        for k, name in enumerate(["reward"] + [f"reward_{n}" for n in names] + ["reward_kept"]):
            n, s1, s2 = tot[8 + 3 * k:11 + 3 * k]
            if n:  # mean and sample std over every response drawn in the step (reward_kept: the kept groups')
                m[f"{name}_mean"] = s1 / n
                m[f"{name}_std"] = math.sqrt(max(0.0, s2 - s1 * s1 / n) / (n - 1)) if n > 1 else 0.0
        if g.kl_coef > 0:
            m["kl"] = kl_sum / seen
        if self.device.type == "cuda":
            m["gpu_mem_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        return m
