"""Model setup for training: a GlyphModel checkpoint on glyph_rt's kernels, with freezing, LoRA and FSDP2.

    gm = load_for_training(cfg.model, device)        # GlyphModel: .model in train mode, .tokenizer, .prompts
    shard(gm.model, mixed_precision=True)            # FSDP2: one unit per decoder layer and vision block
    with autocast(cfg.model, device, fsdp): ...      # the forwards (bf16 compute over fp32 trainable weights)
"""
from __future__ import annotations

import contextlib

import torch

from ..models.glyph_model import GlyphModel
from .config import ModelConfig, TrainConfigError

# the vision-to-LLM projection of GLM-4.1V (downsample conv + merger MLP) / Qwen2.5-VL (merger); GLM's
# post_conv_layernorm sits at the tower's input, right after patch_embed, and belongs to the tower
PROJECTOR = ("merger", "downsample")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"bfloat16": torch.bfloat16, "float32": torch.float32}[name]


def base_model(model):
    """The transformers model under a peft wrapper (or the model itself)."""
    get = getattr(model, "get_base_model", None)
    return get() if get is not None else model


def parts(model) -> dict:
    """Parameter groups by part: vision (the tower), projector (merger), llm (language model + head)."""
    inner = base_model(model).model
    out = {"vision": [], "projector": [], "llm": []}
    for name, p in inner.visual.named_parameters():
        out["projector" if name.split(".")[0] in PROJECTOR else "vision"].append(p)
    out["llm"] = list(inner.language_model.parameters()) + list(base_model(model).lm_head.parameters())
    return out


def autocast(cfg: ModelConfig, device: torch.device, fsdp: bool = False):
    """The context for a training run's forwards: bf16 autocast when the weights load in bf16 (the trainable ones
    then stay fp32, see load_for_training); FSDP's mixed-precision policy does this itself."""
    if fsdp or resolve_dtype(cfg.dtype, device) != torch.bfloat16:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def fsdp_precision(cfg: ModelConfig, device: torch.device) -> tuple[torch.dtype, bool]:
    """(dtype to load, bf16 mixed precision) of a sharded run. model.dtype bfloat16 (auto on a GPU) keeps fp32
    master weights FSDP's way: loaded in fp32 and sharded with bf16 compute and fp32 reductions. model.pure_bf16
    loads bf16 and float32 loads fp32, each sharded as it is (no mixed precision), as on one process."""
    dtype = resolve_dtype(cfg.dtype, device)
    if dtype == torch.bfloat16 and not cfg.pure_bf16:
        return torch.float32, True
    return dtype, False


def load_for_training(cfg: ModelConfig, device: torch.device, dtype: torch.dtype | None = None) -> GlyphModel:
    """Loads the checkpoint (transformers' own loader), patches it with apply_glyph_kernels (kernels=auto),
    applies freezing and LoRA, and enables gradient checkpointing. The GlyphModel's .model is in train mode.
    Loaded in bf16, the trainable weights are kept in fp32 (master weights: an Adam step at lr 1e-6 is far below
    bf16's precision and would round away) and compute goes through `autocast`; model.pure_bf16 keeps them bf16."""
    dtype = dtype or resolve_dtype(cfg.dtype, device)
    gm = GlyphModel.from_pretrained(cfg.path, kernels=cfg.kernels, dtype=dtype, device=device)
    model = gm.model
    model.train()
    groups = parts(model)
    for name, frozen in (("vision", cfg.freeze_vision), ("projector", cfg.freeze_projector), ("llm", cfg.freeze_llm)):
        if frozen:
            for p in groups[name]:
                p.requires_grad_(False)
    if cfg.lora.r > 0:
        from peft import LoraConfig, get_peft_model

        keep = {id(p) for g in ("vision", "projector") for p in groups[g] if p.requires_grad}
        model = get_peft_model(model, LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha,
                                                 lora_dropout=cfg.lora.dropout,
                                                 target_modules=list(cfg.lora.target_modules)))
        # peft freezes every base weight: the LLM trains through its adapters, the vision tower and projector
        # (unless frozen) train fully beside them
        for p in base_model(model).parameters():
            if id(p) in keep:
                p.requires_grad_(True)
        if not any("lora_" in n for n, _ in model.named_parameters()):
            raise ValueError(f"model.lora.target_modules: {cfg.lora.target_modules} match no module of the model")
        check_lora_layers(model)
    if cfg.gradient_checkpointing:
        hf = base_model(model)
        if hasattr(hf, "activation_checkpointing_enable"):
            hf.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base_model(model).config.use_cache = False
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("model: no parameter is trainable (every part frozen and no LoRA)")
    if dtype == torch.bfloat16 and not cfg.pure_bf16:
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    gm.model = model
    return gm


def check_lora_layers(model) -> None:
    """TrainConfigError, before any step, for an adapter that would not train or not export: one on a module whose
    weight its parent reads itself (glyph_rt's patch-embedding GEMM over `proj`, kernels=auto; GLM-4.1V's position
    table, interpolated from its weight), which the adapter's forward never joins, and one the export cannot merge
    (checkpoint.merge_lora folds Linear, Embedding and groups=1 Conv layers' pairs into their weights, as peft
    merges them)."""
    from peft.tuners.lora import LoraLayer

    from ..models.patching import GlyphPatchEmbed

    for name, m in model.named_modules():
        if not isinstance(m, LoraLayer):
            continue
        key = f"model.lora.target_modules: {name.removeprefix('base_model.model.')}"
        parent = model.get_submodule(name.rpartition(".")[0])
        if isinstance(parent, GlyphPatchEmbed) or type(parent).__name__.endswith("VisionEmbeddings"):
            off = " (model.kernels=off runs it as a conv, which the adapter joins)" \
                if isinstance(parent, GlyphPatchEmbed) else ""
            raise TrainConfigError(f"{key}: {type(parent).__name__} reads its weight directly, so an adapter on it "
                                   f"would never train{off}; train that part fully instead (model.freeze_vision=false), "
                                   f"or name a module more exactly (peft matches suffixes: 'attn.proj' rather than "
                                   f"'proj' for the vision attention's output)")
        base = m.get_base_layer()
        conv = isinstance(base, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d))
        if not (type(base) in (torch.nn.Linear, torch.nn.Embedding) or (conv and base.groups == 1)) \
                or getattr(m, "fan_in_fan_out", False):
            raise TrainConfigError(f"{key} is a {type(base).__name__}{f' with groups={base.groups}' if conv else ''}, "
                                   "whose adapter the export cannot merge; target Linear, Embedding or Conv "
                                   "(groups=1) modules only")


@contextlib.contextmanager
def gathered(model):
    """Under FSDP2, each sharded block's parameters gathered once for the with-block (a rollout's generate),
    not once per forward: a decode step would otherwise all-gather every layer for each token. Costs the
    unsharded weights' memory while it lasts; without FSDP it does nothing."""
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule) and m is not model]
    for m in units:
        m.set_reshard_after_forward(False, recurse=False)
        m.unshard()
    try:
        yield
    finally:
        for m in units:
            m.reshard()
            m.set_reshard_after_forward(True, recurse=False)


def shard(model, mixed_precision: bool, device: torch.device | None = None) -> None:
    """FSDP2: fully_shard each decoder layer and vision block, then the root; bf16 compute, fp32 reductions.
    `generate` and `get_image_features` count as forwards of the root, so that its parameters are gathered for the
    whole of them: generate calls the vision tower outside the root's forward (the pages' embeddings first), and
    GRPO takes the pages' embeddings once per step. The mesh is on `device`'s type (without one, FSDP takes the
    machine's accelerator: a gloo run on the CPU of a GPU machine would put its shards on the GPU)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    kw = {}
    if device is not None:
        kw["mesh"] = init_device_mesh(device.type, (dist.get_world_size(),))
    if mixed_precision:
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    units = [m for m in model.modules() if type(m).__name__.endswith(("DecoderLayer", "VisionBlock"))
             or type(m).__name__ in ("Qwen2_5_VLVisionBlock",)]
    for m in units:
        fully_shard(m, **kw)
    fully_shard(model, **kw)
    register_fsdp_forward_method(model, "generate")
    register_fsdp_forward_method(model, "get_image_features")
