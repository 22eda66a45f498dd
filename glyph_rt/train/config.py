"""Training configs: one YAML file per stage (cpt, sft, rl) loaded into dataclasses, with `key=value` overrides.

    cfg = load_config("sft", "my_sft.yaml", ["optim.lr=1e-5", "model.path=ckpt/"])

Defaults are the Glyph paper's (Appendix B), in glyph_rt/data/train/{cpt,sft,rl}.yaml. Every check runs
before any compute; a bad value raises TrainConfigError naming the dotted key and what it accepts.
"""
from __future__ import annotations

import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

STAGES = ("cpt", "sft", "rl")
DEFAULTS_DIR = Path(__file__).resolve().parent.parent / "data" / "train"


class TrainConfigError(ValueError):
    """A training config is invalid; the message names the dotted key."""


@dataclass
class LoraConfig:
    r: int = 0  # 0: no LoRA, full (or partly frozen) fine-tuning
    alpha: float = 16.0
    dropout: float = 0.0  # cpt, sft (rl: 0, the importance ratio needs the policy without dropout)
    target_modules: list = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class ModelConfig:
    path: str = ""  # a GlyphModel checkpoint directory (GLM-4.1V or Qwen2.5-VL)
    kernels: str = "auto"  # auto: apply_glyph_kernels forward and backward; off: stock transformers
    dtype: str = "auto"  # auto (bfloat16 on GPU, float32 on CPU) | bfloat16 | float32: frozen weights and compute
    pure_bf16: bool = False  # bfloat16: trainable weights in bf16 too (less memory; updates under bf16's step are lost)
    gradient_checkpointing: bool = True
    freeze_vision: bool = False
    freeze_projector: bool = False
    freeze_llm: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class OptimConfig:
    lr: float = 5e-6
    min_lr: float = 2e-6
    warmup_steps: int = 0
    schedule: str = "cosine"  # cosine (lr -> min_lr after warm-up) | constant
    weight_decay: float = 0.0
    betas: list = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0: no clipping


@dataclass
class DataConfig:
    global_batch: int = 32  # samples per optimizer step, over all ranks (gradient accumulation fills it)
    micro_batch: int = 1  # samples per forward on one rank
    ocr_ratio: float = 0.0  # SFT and RL: share of samples (RL: prompts) drawn from the OCR auxiliary task (cpt: 0)
    # > 0: a micro-batch's samples go into one packed varlen row (no padding), each sample at most this many
    # tokens (a longer one is left out, logged and counted: the metrics' too_long); the row holds up to
    # micro_batch x max_tokens. 0: padded rows
    max_tokens: int = 0
    # task -> weight of each of its label tokens (cpt, sft; default 1): the loss is the weighted token mean. An
    # OCR sample holds far more label tokens than a short answer, so data.ocr_ratio of samples can be most of the
    # loss tokens; {ocr: 0.1} weighs them down
    loss_weights: dict = field(default_factory=dict)
    workers: int = 0
    # a render config JSON (the search's best_config.json, glyph_rt's keys or Glyph's dashed ones): every sample,
    # and rl's rollouts, rendered with it, as the paper renders post-training data (data.loader.styles then
    # defaults to false)
    render_config: str = ""
    loader: dict = field(default_factory=dict)  # passed to the data engine's loader as it is
    eval_loader: dict = field(default_factory=dict)  # the held-out data: data.loader keys over data.loader (corpus)


@dataclass
class GRPOConfig:
    group_size: int = 16  # responses per prompt
    eps_low: float = 0.2  # DAPO clip-higher: ratio clipped to [1 - eps_low, 1 + eps_high]
    eps_high: float = 0.28
    kl_coef: float = 0.0  # 0: no KL term (and no reference model)
    dynamic_sampling: bool = True  # drop groups whose rewards are all equal and draw new prompts
    max_refills: int = 8  # draws per batch before training on what is there
    mini_batches: int = 1  # optimizer updates per pass over a rollout batch (verl's ppo_mini_batch_size)
    epochs: int = 1  # passes over each rollout batch (GRPO's mu, TRL's num_iterations, verl's ppo_epochs)
    # prompts per generate call, each with its prompt's KV copied group_size times (0: a rank's draw at once)
    rollout_prompts: int = 1
    rollout_gathered: bool = True  # under FSDP: the weights gathered once per rollout, not per decode step
    max_new_tokens: int = 1024
    temperature: float = 1.0
    top_p: float = 1.0
    rewards: dict = field(default_factory=lambda: {"format": 0.5, "verifiable": 1.0})  # name -> weight
    verifier: str = "exact"  # exact | f1 | contains | judge
    judge_base_url: str = ""  # an OpenAI-compatible endpoint for verifier=judge
    judge_model: str = ""
    judge_api_key_env: str = "OPENAI_API_KEY"
    judge_concurrency: int = 16  # requests in flight at once (a group's responses are judged together)
    judge_max_retries: int = 8  # retries of a failed request, with backoff (0.5 s doubling to 8 s: 30-40 s in all)


@dataclass
class TrainConfig:
    stage: str = "sft"
    steps: int = 1500
    seed: int = 0
    out_dir: str = "runs/train"
    log_every: int = 1
    eval_every: int = 0  # steps between held-out losses (cpt, sft; 0: none)
    eval_batches: int = 8  # micro-batches per rank in each held-out loss
    save_every: int = 100  # 0: only at the end
    keep_checkpoints: int = 2
    resume: bool = True  # continue from the newest checkpoint in out_dir when there is one
    export: bool = True  # write an HF-format safetensors checkpoint to out_dir/export at the end
    fsdp: str = "auto"  # auto: fully_shard when launched on more than one rank | on | off
    device: str = "auto"
    tensorboard: bool = True
    plot: bool = True
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        """Every key with its value, in the format --config reads back."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


# ----------------------------------------------------------------- loading
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _coerce(value, typ, key: str):
    """value converted to the field's type; TrainConfigError naming key when it cannot be."""
    if dataclasses.is_dataclass(typ):
        if not isinstance(value, dict):
            raise TrainConfigError(f"{key}: expected a mapping of {', '.join(f.name for f in dataclasses.fields(typ))}, "
                                   f"got {value!r}")
        return _build(typ, value, key + ".")
    origin = typing.get_origin(typ) or typ
    if origin is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise TrainConfigError(f"{key}: expected true or false, got {value!r}")
    if origin is int:
        value = _number(value)  # YAML 1.1 reads 1e3 as a string
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise TrainConfigError(f"{key}: expected an integer, got {value!r}")
        return int(value)
    if origin is float:
        if isinstance(value, bool):
            raise TrainConfigError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise TrainConfigError(f"{key}: expected a number, got {value!r}") from None
    if origin is str:
        if isinstance(value, bool):  # YAML reads a bare on/off as a boolean
            return "on" if value else "off"
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise TrainConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    if origin is list:
        if not isinstance(value, list):
            raise TrainConfigError(f"{key}: expected a list, got {value!r}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise TrainConfigError(f"{key}: expected a mapping, got {value!r}")
        return value
    return value


def _build(cls, data: dict, prefix: str = ""):
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in data:
        if k not in names:
            raise TrainConfigError(f"{prefix}{k}: unknown key; {prefix.rstrip('.') or 'the config'} takes "
                                   f"{', '.join(sorted(names))}")
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


# name -> weight mappings: a --config file's one replaces the default whole (as `key={...}` does), so that it can
# leave a default's name out; the other mappings merge key by key
WHOLE = {("grpo", "rewards"), ("data", "loss_weights"), ("data", "loader", "tasks")}


def _merge(base: dict, over: dict, at: tuple = ()) -> dict:
    out = dict(base)
    for k, v in over.items():
        whole = at + (k,) in WHOLE
        out[k] = _merge(out[k], v, at + (k,)) if isinstance(v, dict) and isinstance(out.get(k), dict) and not whole \
            else v
    return out


def _read_yaml(path: Path) -> dict:
    try:
        data = _load_yaml(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TrainConfigError(f"config file {path} does not exist") from None
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        raise TrainConfigError(f"config file {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TrainConfigError(f"config file {path}: expected a mapping of keys, got {type(data).__name__}")
    return data


# data.loader (data.eval_loader) keys that take text (corpus: or a [list] of paths)
LOADER_STRINGS = {"corpus", "text_field", "render"}
NULLABLE = {"corpus"}  # of those, null (or ~) means the default (the bundled corpus)
# name -> weight mappings, whose numbers may be written as YAML 1.1 strings (1e-1)
WEIGHTS = WHOLE | {("data", "eval_loader", "tasks")}


def takes_string(path: list[str]) -> bool:
    """Whether a dotted key takes a string: a str field of the config, or one of LOADER_STRINGS."""
    if len(path) == 3 and path[:2] in (["data", "loader"], ["data", "eval_loader"]):
        return path[2] in LOADER_STRINGS
    cls = TrainConfig
    for part in path[:-1]:
        cls = _hints(cls).get(part)
        if not dataclasses.is_dataclass(cls):
            return False
    return _hints(cls).get(path[-1]) is str


# the tags YAML 1.1 gives plain scalars that a string key should keep as written: 010 would be 8, 2024_06 202406,
# 12:30 750, yes true and 2024-06-01 a date
_RESOLVED = {"tag:yaml.org,2002:" + t for t in ("int", "float", "bool", "timestamp")}


def _construct(loader: yaml.SafeLoader, node: yaml.Node, path: list[str]):
    """node as Python data, where a plain scalar under a key that takes a string keeps its text."""
    if isinstance(node, yaml.ScalarNode):
        if node.style is None and node.tag in _RESOLVED and path and takes_string(path):
            return node.value
        return loader.construct_object(node, deep=True)
    if isinstance(node, yaml.MappingNode) and not any(k.tag == "tag:yaml.org,2002:merge" for k, _ in node.value):
        out = {}
        for k, v in node.value:
            key = loader.construct_object(k, deep=True)
            out[key] = _construct(loader, v, path + [str(key)])
        return out
    return loader.construct_object(node, deep=True)


def _load_yaml(text: str, path: list[str] = ()):
    """YAML text as Python data, as yaml.safe_load reads it, except that the strings of keys that take one (found
    below `path`, the dotted key of the whole text) are kept as written."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        return None if node is None else _construct(loader, node, list(path))
    finally:
        loader.dispose()


def _text(raw: str):
    """A string key's override as written (YAML 1.1 would read 010 as 8, 2024_06 as 202406, 12:30 as 750 and yes
    as true); quoted, or a [list] or {mapping}, it is read as YAML."""
    text = raw.strip()
    if text[:1] in ("'", '"', "[", "{"):
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError:
            pass
    return text


def parse_override(item: str) -> tuple[list[str], object]:
    """'optim.lr=1e-5' -> (['optim', 'lr'], 1e-05); the value is read as YAML (numbers, lists, booleans), but
    for a key that takes a string it is the text as written ('out_dir=010' -> '010')."""
    if "=" not in item:
        raise TrainConfigError(f"override {item!r}: expected key=value (e.g. optim.lr=1e-5)")
    key, raw = item.split("=", 1)
    if not key.strip():
        raise TrainConfigError(f"override {item!r}: the key is empty")
    path = key.strip().split(".")
    if takes_string(path):
        if path[-1] in NULLABLE and raw.strip() in ("null", "~"):
            return path, None
        return path, _text(raw)
    try:
        value = _load_yaml(raw, path) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return path, value


def _number(value):
    """A weight written as a string that is a finite number ('1e-1': YAML 1.1 wants a dot) as that number; any
    other value as it is (the checks name it)."""
    if isinstance(value, str):
        try:
            x = float(value)
        except ValueError:
            return value
        return x if math.isfinite(x) else value
    return value


def _whole(value):
    """_number for a setting that takes a whole number: a whole float ('4e5', 4.0e5) as an int; any other value as
    _number gives it (the checks name it)."""
    value = _number(value)
    return int(value) if isinstance(value, float) and value.is_integer() else value


# number lists whose items may be written as YAML 1.1 strings (9.5e-1 is a float, 95e-2 a string)
NUMBER_LISTS = {("optim", "betas")}
# data.loader (data.eval_loader) options that take a whole number, and task_options' numbers (gen.backward: a
# probability, any number; the others whole)
LOADER_WHOLE = ("max_pages", "window_chars", "epochs", "max_chars")


def _node(data: dict, path: tuple):
    for part in path:
        data = data.get(part) if isinstance(data, dict) else None
    return data


def _weights_as_numbers(data: dict) -> dict:
    """The numbers of `data` (the config as read) that YAML 1.1 leaves as strings ('1e-1', '95e-2', '4e5': it wants a
    dot and a signed exponent) as numbers: the weights, optim.betas' items and the loader's numeric options; a whole
    number's only where it is whole."""
    for path in WEIGHTS:
        node = _node(data, path[:-1])
        if isinstance(node, dict) and isinstance(node.get(path[-1]), dict):
            node[path[-1]] = {k: _number(v) for k, v in node[path[-1]].items()}
    for path in NUMBER_LISTS:
        node = _node(data, path[:-1])
        if isinstance(node, dict) and isinstance(node.get(path[-1]), list):
            node[path[-1]] = [_number(v) for v in node[path[-1]]]
    for name in ("loader", "eval_loader"):
        loader = _node(data, ("data", name))
        if not isinstance(loader, dict):
            continue
        for k in LOADER_WHOLE:
            if k in loader:
                loader[k] = _whole(loader[k])
        per_task = loader.get("task_options")
        for options in per_task.values() if isinstance(per_task, dict) else ():
            if isinstance(options, dict):
                for k, v in options.items():
                    options[k] = _number(v) if k == "backward" else _whole(v)
    return data


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    data = _merge(data, {})
    for item in overrides:
        path, value = parse_override(item)
        node, cls = data, TrainConfig
        for i, part in enumerate(path[:-1]):
            names = {f.name: f for f in dataclasses.fields(cls)} if cls else {}
            if cls is not None and part not in names:
                raise TrainConfigError(f"{'.'.join(path[:i + 1])}: unknown key")
            sub = _hints(cls)[part] if cls is not None else None
            cls = sub if dataclasses.is_dataclass(sub) else None
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise TrainConfigError(f"{'.'.join(path[:i + 1])}: is not a mapping")
        node[path[-1]] = value
    return data


def load_config(stage: str, path: str | os.PathLike | None = None, overrides: list[str] = (),
                check_paths: bool = True) -> TrainConfig:
    """The stage's defaults, with a user's YAML file merged over them, then `key=value` overrides; validated
    (check_paths: the files it names exist too)."""
    if stage not in STAGES:
        raise TrainConfigError(f"stage: {stage!r} is unknown; choose from {', '.join(STAGES)}")
    data = _read_yaml(DEFAULTS_DIR / f"{stage}.yaml")
    if path is not None:
        user = _read_yaml(Path(path))
        if user.get("stage", stage) != stage:
            raise TrainConfigError(f"stage: {path} is a {user['stage']!r} config, run as {stage!r}")
        data = _merge(data, user)
    data = _weights_as_numbers(apply_overrides(data, list(overrides)))
    data["stage"] = stage
    return validate(_build(TrainConfig, data), check_paths)


def _check(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise TrainConfigError(f"{key}: {msg}")


def _finite(x) -> bool:
    """x is a number, neither inf nor nan (both of which pass checks like lr > 0 or w >= 0 and train on NaN)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_finite(cfg, prefix: str = "") -> None:
    """Every float setting of cfg, a config dataclass, and of those in it is a finite number."""
    hints = _hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value, key = getattr(cfg, f.name), prefix + f.name
        if dataclasses.is_dataclass(value):
            _check_finite(value, key + ".")
        elif hints[f.name] is float:
            _check(_finite(value), key, f"{value} must be a finite number")


def check_task_weights(weights: dict, key: str) -> None:
    """A mapping of task name -> weight (a finite number >= 0), as data.loader.tasks and data.loss_weights take."""
    from .tasks import TASKS

    for name, w in weights.items():
        _check(name in TASKS, f"{key}.{name}", f"unknown task; choose from {', '.join(TASKS)}")
        _check(_finite(w) and w >= 0, f"{key}.{name}", f"weight {w!r} must be a number >= 0")


# rl's data: the data.loader keys it takes (RecordStream's) and what it says of the others
RL_LOADER_KEYS = ("corpus", "text_field", "window_chars", "max_chars", "epochs", "shuffle")
RL_UNUSED_LOADER = {
    "think": "rl trains on its own rollouts, not on written answers in the thinking format",
    "styles": "rl renders every prompt as its rollouts do, with data.render_config (else RenderConfig()), not a "
              "style per sample",
    "max_pages": "rl lays a prompt's context out whole (one whose prompt would overflow the model's window is "
                 "skipped and counted)",
    "render": "rl's rollouts draw their pages themselves",
    "task_options": "rl has no tasks' options (data.loader.window_chars sets a needle question's haystack)",
}
RL_UNUSED_DATA = {
    "max_tokens": "rl packs no samples (a prompt is bounded by the model's window and grpo.max_new_tokens)",
    "loss_weights": "rl's loss is GRPO's over the responses' tokens; weigh its rewards with grpo.rewards",
    "workers": "rl draws its records in the training process",
    "eval_loader": "rl has no held-out loss (it logs its rewards)",
}


def validate(cfg: TrainConfig, check_paths: bool = True) -> TrainConfig:
    """Raises TrainConfigError naming the first bad key; returns cfg."""
    m, o, d, g = cfg.model, cfg.optim, cfg.data, cfg.grpo
    _check(cfg.stage in STAGES, "stage", f"{cfg.stage!r} is unknown; choose from {', '.join(STAGES)}")
    _check_finite(cfg)
    _check(0 <= cfg.seed < 2**64, "seed", f"{cfg.seed} must be a whole number in [0, 2**64) (the data's "
           "generators and torch's take no negative seed)")
    _check(cfg.steps >= 1, "steps", f"{cfg.steps} must be >= 1")
    _check(cfg.log_every >= 1, "log_every", f"{cfg.log_every} must be >= 1")
    _check(cfg.eval_every >= 0, "eval_every", f"{cfg.eval_every} must be >= 0 (0: no held-out loss)")
    _check(cfg.eval_batches >= 1, "eval_batches", f"{cfg.eval_batches} must be >= 1")
    if cfg.eval_every:
        _check(cfg.stage != "rl", "eval_every", "a held-out loss is for cpt and sft; rl logs its rewards")
        _check(bool(cfg.data.eval_loader.get("corpus")), "data.eval_loader.corpus",
               "eval_every > 0 needs a held-out corpus (files the training corpus does not hold)")
    _check(cfg.save_every >= 0, "save_every", f"{cfg.save_every} must be >= 0 (0: only at the end)")
    _check(cfg.keep_checkpoints >= 1, "keep_checkpoints", f"{cfg.keep_checkpoints} must be >= 1")
    _check(cfg.fsdp in ("auto", "on", "off"), "fsdp", f"{cfg.fsdp!r} must be auto, on or off")
    _check(bool(cfg.out_dir), "out_dir", "is empty; give a directory for logs and checkpoints")
    _check(cfg.device == "auto" or cfg.device.split(":")[0] in ("cpu", "cuda"), "device",
           f"{cfg.device!r} must be auto, cpu or cuda[:N]")
    if check_paths:
        _check(bool(m.path), "model.path", "is empty; give a GlyphModel checkpoint directory "
               "(glyph-rt make-tiny-checkpoint DIR writes a tiny one)")
        _check(Path(m.path).is_dir(), "model.path", f"{m.path!r} is not a directory")
        _check(Path(m.path, "config.json").exists(), "model.path", f"{m.path!r} has no config.json")
    _check(m.kernels in ("auto", "off"), "model.kernels", f"{m.kernels!r} must be auto or off")
    _check(m.dtype in ("auto", "bfloat16", "float32"), "model.dtype", f"{m.dtype!r} must be auto, bfloat16 or float32")
    _check(not (m.pure_bf16 and m.dtype == "float32"), "model.pure_bf16",
           "keeps bf16 weights trainable in bf16; model.dtype is float32")
    _check(not (m.freeze_vision and m.freeze_projector and m.freeze_llm and m.lora.r == 0), "model.freeze_llm",
           "every part is frozen and LoRA is off: nothing would train")
    _check(m.lora.r >= 0, "model.lora.r", f"{m.lora.r} must be >= 0 (0: no LoRA)")
    _check(m.lora.alpha > 0, "model.lora.alpha", f"{m.lora.alpha} must be > 0")
    _check(0 <= m.lora.dropout < 1, "model.lora.dropout", f"{m.lora.dropout} must be in [0, 1)")
    _check(bool(m.lora.target_modules) and all(isinstance(t, str) for t in m.lora.target_modules),
           "model.lora.target_modules", "must be a non-empty list of module names")
    _check(o.lr > 0, "optim.lr", f"{o.lr} must be > 0")
    _check(o.schedule in ("cosine", "constant"), "optim.schedule", f"{o.schedule!r} must be cosine or constant")
    _check(o.schedule != "cosine" or 0 <= o.min_lr <= o.lr, "optim.min_lr",  # constant: min_lr is unused
           f"{o.min_lr} must be in [0, optim.lr={o.lr}]")
    _check(0 <= o.warmup_steps < cfg.steps or o.warmup_steps == 0, "optim.warmup_steps",
           f"{o.warmup_steps} must be in [0, steps={cfg.steps})")
    _check(o.weight_decay >= 0, "optim.weight_decay", f"{o.weight_decay} must be >= 0")
    _check(len(o.betas) == 2 and all(_finite(b) and 0 <= b < 1 for b in o.betas), "optim.betas",
           f"{o.betas} must be two numbers in [0, 1)")
    _check(o.eps > 0, "optim.eps", f"{o.eps} must be > 0")
    _check(o.grad_clip >= 0, "optim.grad_clip", f"{o.grad_clip} must be >= 0 (0: no clipping)")
    _check(d.micro_batch >= 1, "data.micro_batch", f"{d.micro_batch} must be >= 1")
    if cfg.stage != "rl":  # rl: global_batch counts prompts, micro_batch the sequences of one forward
        _check(d.global_batch >= d.micro_batch, "data.global_batch",
               f"{d.global_batch} must be >= data.micro_batch ({d.micro_batch})")
        _check(d.global_batch % d.micro_batch == 0, "data.global_batch",
               f"{d.global_batch} must be a multiple of data.micro_batch ({d.micro_batch})")
    _check(0 <= d.ocr_ratio <= 1, "data.ocr_ratio", f"{d.ocr_ratio} must be in [0, 1]")
    _check(cfg.stage != "cpt" or d.ocr_ratio == 0, "data.ocr_ratio",
           f"{d.ocr_ratio} is for sft and rl; cpt draws OCR by its weight in data.loader.tasks (by default "
           "{ocr: 1, lm: 1, gen: 1}, a third), e.g. data.loader.tasks={ocr: 0.2, lm: 0.4, gen: 0.4}")
    for name in ("loader", "eval_loader"):
        tasks = getattr(d, name).get("tasks")
        _check(not (cfg.stage == "sft" and d.ocr_ratio > 0 and isinstance(tasks, dict) and "ocr" in tasks),
               f"data.{name}.tasks.ocr", f"sft mixes OCR in at data.ocr_ratio ({d.ocr_ratio} of the samples), which "
               f"would replace this weight; give OCR's share as data.ocr_ratio and leave ocr out of data.{name}.tasks, "
               f"or set data.ocr_ratio=0 to weigh OCR by data.{name}.tasks")
    _check(d.max_tokens >= 0, "data.max_tokens", f"{d.max_tokens} must be >= 0 (0: no packing)")
    check_task_weights(d.loss_weights, "data.loss_weights")
    _check(d.workers >= 0, "data.workers", f"{d.workers} must be >= 0")
    if d.render_config:
        try:
            fixed_render_config(d.render_config)
        except ValueError as e:
            raise TrainConfigError(f"data.render_config: {e}") from None
    if cfg.stage != "rl":  # unused: a value given here would be written to config.yaml and do nothing
        for f in dataclasses.fields(GRPOConfig):
            _check(getattr(g, f.name) == getattr(GRPOConfig(), f.name), f"grpo.{f.name}",
                   f"{getattr(g, f.name)!r}: grpo settings are for rl, not {cfg.stage}; remove it")
    if cfg.stage == "rl":
        _check(not d.loader.get("tasks"), "data.loader.tasks",
               "rl draws its prompts from QA records (and OCR at data.ocr_ratio), not by task weights; remove it "
               "(it is for cpt and sft)")
        for k, why in RL_UNUSED_LOADER.items():
            _check(k not in d.loader, f"data.loader.{k}", f"{why}; remove it (rl's data.loader takes "
                   f"{', '.join(RL_LOADER_KEYS)})")
        for k, why in RL_UNUSED_DATA.items():
            _check(getattr(d, k) == getattr(DataConfig(), k), f"data.{k}", f"{getattr(d, k)!r}: {why}; remove it")
        _check(m.lora.dropout == 0, "model.lora.dropout",
               f"{m.lora.dropout} must be 0 for rl: the importance ratio compares the policy with the one that "
               "sampled (without dropout), and dropout in the update would make it noise")
        _check(g.group_size >= 2, "grpo.group_size", f"{g.group_size} must be >= 2 (advantages compare a group)")
        _check(d.global_batch >= 1, "data.global_batch", f"{d.global_batch} must be >= 1 (prompts per step)")
        _check(0 <= g.eps_low < 1, "grpo.eps_low", f"{g.eps_low} must be in [0, 1)")
        _check(g.eps_high >= 0, "grpo.eps_high", f"{g.eps_high} must be >= 0")
        _check(g.kl_coef >= 0, "grpo.kl_coef", f"{g.kl_coef} must be >= 0 (0: no KL)")
        _check(g.max_refills >= 0, "grpo.max_refills", f"{g.max_refills} must be >= 0")
        _check(g.mini_batches >= 1, "grpo.mini_batches", f"{g.mini_batches} must be >= 1")
        _check(g.epochs >= 1, "grpo.epochs", f"{g.epochs} must be >= 1")
        _check(g.rollout_prompts >= 0, "grpo.rollout_prompts", f"{g.rollout_prompts} must be >= 0 (0: all at once)")
        _check(g.max_new_tokens >= 1, "grpo.max_new_tokens", f"{g.max_new_tokens} must be >= 1")
        _check(g.temperature > 0, "grpo.temperature", f"{g.temperature} must be > 0")
        _check(0 < g.top_p <= 1, "grpo.top_p", f"{g.top_p} must be in (0, 1]")
        from .rewards import REWARDS, VERIFIERS

        _check(bool(g.rewards), "grpo.rewards", "is empty; give reward name -> weight")
        for name, w in g.rewards.items():
            _check(name in REWARDS, f"grpo.rewards.{name}", f"unknown reward; choose from {', '.join(REWARDS)}")
            _check(_finite(w), f"grpo.rewards.{name}", f"weight {w!r} must be a number")
        _check(g.verifier in VERIFIERS, "grpo.verifier", f"{g.verifier!r} must be one of {', '.join(VERIFIERS)}")
        if g.verifier == "judge":
            _check(bool(g.judge_base_url), "grpo.judge_base_url", "is empty; verifier=judge needs an "
                   "OpenAI-compatible endpoint (e.g. http://127.0.0.1:8000/v1)")
            _check(bool(g.judge_model), "grpo.judge_model", "is empty; name the judge model")
        _check(g.judge_concurrency >= 1, "grpo.judge_concurrency", f"{g.judge_concurrency} must be >= 1")
        _check(g.judge_max_retries >= 0, "grpo.judge_max_retries",
               f"{g.judge_max_retries} must be >= 0 (0: a failed request stops the run)")
    return cfg


def fixed_render_config(path: str):
    """The RenderConfig of data.render_config: a JSON file in glyph_rt's format or Glyph's dashed keys."""
    from ..render.config import RenderConfig

    return RenderConfig.load(path).validate()  # ConfigError (a ValueError) names what is wrong
