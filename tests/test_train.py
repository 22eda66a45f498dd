"""Training stages on tiny random-weight checkpoints: configs, the SFT loop, checkpoints and resume, export, FSDP2."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from glyph_rt.models.prompt import IGNORE_INDEX
from glyph_rt.render.config import RenderConfig
from glyph_rt.train.config import TrainConfigError, load_config

pytest.importorskip("transformers")
ROOT = Path(__file__).resolve().parent.parent
WORDS = ["hello world", "the cat sat", "red fox", "blue sky", "open door", "cold tea"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from glyph_rt.models.tiny import make_tiny_checkpoint

    return str(make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny"))


def cfg_for(path, out, *over, stage="sft"):
    return load_config(stage, None, [f"model.path={path}", f"out_dir={out}", "optim.warmup_steps=0", "tensorboard=false",
                                     "plot=false", "model.gradient_checkpointing=false", "export=false", *over])


def worker_env(**extra) -> dict:
    """The environment of a training subprocess; a process that aborts prints every thread's Python stack."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1", **extra}


def reported_loss(r) -> float:
    """The loss a worker run printed (rank 0's `LOSS` line), or a failure showing what it printed instead."""
    lines = [x for x in r.stdout.splitlines() if x.startswith("LOSS")]
    assert lines, f"no LOSS line (exit {r.returncode})\nstdout: {r.stdout[-3000:]}\nstderr: {r.stderr[-3000:]}"
    return float(lines[0].split()[1])


PAGE = RenderConfig(page_size=(112, 112), margin_x=4, margin_y=4, font_size=20, line_height=24)


def samples(gm, texts):
    from glyph_rt.train.tasks import make_task

    task = make_task("ocr", gm.prompts, config=PAGE, max_pages=1)
    return [task({"text": t}, i) for i, t in enumerate(texts)]


def ocr_samples(gm, texts, mode="pad", per_batch=1):
    """Micro-batches of `per_batch` OCR samples (a page read back, loss on the answer), from the data engine."""
    from glyph_rt.train.collate import Collator

    col = Collator(gm.image_token_id, gm.tokenizer.pad_token_id, mode=mode, model=gm.model, vision_model=gm.vision)
    s = samples(gm, texts)
    return [col(s[i:i + per_batch]) for i in range(0, len(s), per_batch)]


class ListData:
    """A deterministic endless stream of batches with the loader's state_dict protocol."""

    def __init__(self, batches):
        self.batches, self.pos = batches, 0

    def __iter__(self):
        while True:
            b = self.batches[self.pos % len(self.batches)]
            self.pos += 1
            yield b

    def state_dict(self):
        return {"pos": self.pos}

    def load_state_dict(self, s):
        self.pos = s["pos"]


def load(cfg):
    from glyph_rt.train.model import load_for_training

    return load_for_training(cfg.model, torch.device("cpu"))


# ----------------------------------------------------------------- config
def test_stage_defaults_are_the_papers(tiny):
    cpt, sft, rl = (load_config(s, None, [f"model.path={tiny}"]) for s in ("cpt", "sft", "rl"))
    assert (cpt.optim.lr, cpt.optim.schedule, cpt.data.global_batch) == (2e-6, "cosine", 170)
    assert (sft.optim.lr, sft.optim.min_lr, sft.optim.warmup_steps, sft.data.global_batch, sft.steps) == \
        (5e-6, 2e-6, 160, 32, 1500)
    g = rl.grpo
    assert (g.group_size, g.eps_low, g.eps_high, g.kl_coef, g.dynamic_sampling) == (16, 0.2, 0.28, 0.0, True)
    assert (rl.optim.lr, rl.optim.schedule, rl.data.global_batch, rl.steps) == (1e-6, "constant", 32, 500)


def test_overrides_and_yaml(tiny, tmp_path):
    f = tmp_path / "sft.yaml"
    f.write_text(f"model:\n  path: {tiny}\n  lora: {{r: 8}}\noptim:\n  lr: 1.0e-5\n")
    c = load_config("sft", f, ["optim.lr=2e-5", "data.ocr_ratio=0.25", "model.freeze_vision=true"])
    assert (c.optim.lr, c.data.ocr_ratio, c.model.freeze_vision, c.model.lora.r) == (2e-5, 0.25, True, 8)
    assert c.optim.min_lr == 2e-6  # untouched defaults stay


def test_a_config_file_replaces_the_weight_maps_whole(tiny, tmp_path):
    """grpo.rewards, data.loss_weights and data.loader.tasks in a --config file replace the defaults (a name it
    leaves out is gone), as `key={...}` does; the other mappings merge key by key."""
    f = tmp_path / "rl.yaml"
    f.write_text("grpo:\n  rewards: {verifiable: 1.0}\n")
    rl = load_config("rl", f, [f"model.path={tiny}"])
    assert rl.grpo.rewards == {"verifiable": 1.0}
    assert rl.grpo.group_size == 16  # the rest of grpo stays
    f.write_text("data:\n  loss_weights: {qa: 1.0}\n")  # (rl refuses data.loss_weights: its loss is GRPO's)
    assert load_config("sft", f, [f"model.path={tiny}"]).data.loss_weights == {"qa": 1.0}
    f.write_text("data:\n  loader: {tasks: {lm: 1.0}, max_pages: 8}\n")
    cpt = load_config("cpt", f, [f"model.path={tiny}"])
    assert cpt.data.loader["tasks"] == {"lm": 1.0} and cpt.data.loader["max_pages"] == 8
    assert cpt.data.loader["task_options"]["lm"] == {"window_chars": 400000, "max_pages": 64}  # merged, kept
    assert load_config("rl", None, [f"model.path={tiny}", "grpo.rewards={ocr: 1.0}"]).grpo.rewards == {"ocr": 1.0}


def test_cpt_refuses_an_ocr_ratio_it_would_ignore(tiny):
    """cpt mixes OCR in by its data.loader.tasks weight: data.ocr_ratio (sft, rl) is refused, not ignored."""
    with pytest.raises(TrainConfigError, match=r"^data.ocr_ratio: 0.9 is for sft and rl; cpt .*data.loader.tasks"):
        load_config("cpt", None, [f"model.path={tiny}", "data.ocr_ratio=0.9"])
    assert load_config("sft", None, [f"model.path={tiny}", "data.ocr_ratio=0.9"]).data.ocr_ratio == 0.9


def test_sft_refuses_an_ocr_weight_that_its_ocr_ratio_would_replace(tiny):
    """sft mixes OCR in at data.ocr_ratio (0.1 by default), in place of an ocr weight in data.loader.tasks (or
    data.eval_loader.tasks): such a weight is refused, naming both settings; with data.ocr_ratio=0 it is the mix."""
    for key in ("loader", "eval_loader"):
        with pytest.raises(TrainConfigError, match=rf"^data.{key}.tasks.ocr: sft mixes OCR in at data.ocr_ratio "
                                                   rf"\(0.1 of the samples\).* data.ocr_ratio=0 to weigh OCR"):
            load_config("sft", None, [f"model.path={tiny}", f"data.{key}.tasks={{qa: 1, ocr: 0.5}}"])
    c = load_config("sft", None, [f"model.path={tiny}", "data.ocr_ratio=0", "data.loader.tasks={qa: 1, ocr: 0.5}"])
    assert c.data.loader["tasks"] == {"qa": 1, "ocr": 0.5}
    assert load_config("sft", None, [f"model.path={tiny}", "data.loader.tasks={qa: 1}"]).data.ocr_ratio == 0.1


@pytest.mark.parametrize("text", ["010", "2024_06", "12:30", "yes", "no", "on", "off", "true", "0x1F", "1e-1", "Null"])
def test_string_overrides_are_kept_as_written(tiny, text):
    """A key that takes a string gets its override's text as written, not YAML 1.1's reading of it (010 -> 8,
    2024_06 -> 202406, 12:30 -> 750, yes -> on); quoted, it is unquoted."""
    keys = ("out_dir", "data.loader.text_field", "data.loader.corpus", "data.eval_loader.corpus")
    c = load_config("sft", None, [f"model.path={tiny}", *(f"{k}={text}" for k in keys)])
    assert [c.out_dir, c.data.loader["text_field"], c.data.loader["corpus"], c.data.eval_loader["corpus"]] == \
        [text] * len(keys)
    c = load_config("rl", None, [f"model.path={tiny}", f"grpo.judge_model={text}", f"grpo.judge_api_key_env={text}"])
    assert c.grpo.judge_model == c.grpo.judge_api_key_env == text
    c = load_config("rl", None, [f"model.path={tiny}", f"grpo.judge_model='{text}'", "data.loader.corpus=[a, b]"])
    assert c.grpo.judge_model == text and c.data.loader["corpus"] == ["a", "b"]


@pytest.mark.parametrize("text", ["010", "2024_06", "12:30", "yes", "off", "0x1F", "1e-1", "2024-06-01"])
def test_strings_in_config_files_and_mappings_are_kept_as_written(tiny, tmp_path, text):
    """In a --config file, and in a mapping given whole as an override, a key that takes a string gets its text
    as written too; other keys keep YAML's reading (numbers, booleans, null)."""
    f = tmp_path / "rl.yaml"  # rl: the stage that takes grpo settings
    f.write_text(f"out_dir: {text}\ngrpo:\n  judge_model: {text}\ndata:\n  loader:\n    corpus: {text}\n"
                 "  ocr_ratio: 0.25\ntensorboard: off\nmodel:\n  path: null\n")
    with pytest.raises(TrainConfigError, match="^model.path: expected a string, got None"):
        load_config("rl", f)  # null is no text: named, not read as 'null'
    c = load_config("rl", f, [f"model.path={tiny}"])
    assert [c.out_dir, c.grpo.judge_model, c.data.loader["corpus"]] == [text] * 3
    assert c.data.ocr_ratio == 0.25 and c.tensorboard is False
    c = load_config("rl", None, [f"model.path={tiny}", f"data.loader={{corpus: {text}, text_field: {text}}}",
                                 f"grpo={{judge_model: {text}, group_size: 4}}"])
    assert c.data.loader["corpus"] == c.data.loader["text_field"] == c.grpo.judge_model == text
    assert c.grpo.group_size == 4


def test_rl_refuses_task_weights_it_would_ignore(tiny):
    with pytest.raises(TrainConfigError, match=r"data.loader.tasks: rl draws its prompts from QA records"):
        load_config("rl", None, [f"model.path={tiny}", "data.loader.tasks={qa: 1, ocr: 0.5}"])
    assert load_config("rl", None, [f"model.path={tiny}"]).data.ocr_ratio == 0.1


def test_a_null_corpus_override_is_the_bundled_corpus(tiny):
    for text in ("null", "~"):
        c = load_config("sft", None, [f"model.path={tiny}", "data.loader.corpus=[a]", f"data.loader.corpus={text}"])
        assert c.data.loader["corpus"] is None


def test_weights_in_scientific_notation_are_numbers(tiny, tmp_path):
    """YAML 1.1 reads 1e-1 (no dot) as a string: in data.loss_weights, grpo.rewards and the task weights, from an
    override or a --config file, it is the number; a weight that is no number is still named."""
    c = load_config("sft", None, [f"model.path={tiny}", "data.loss_weights={ocr: 1e-1, qa: 5e-1}", "data.ocr_ratio=0",
                                  "data.loader.tasks={qa: 1, ocr: 5e-1}", "data.loader.tasks.lm=2E0"])
    assert c.data.loss_weights == {"ocr": 0.1, "qa": 0.5} and c.data.loader["tasks"] == {"qa": 1, "ocr": 0.5, "lm": 2.0}
    f = tmp_path / "rl.yaml"
    f.write_text("grpo:\n  rewards: {format: 5e-1, verifiable: 1}\n")
    assert load_config("rl", f, [f"model.path={tiny}"]).grpo.rewards == {"format": 0.5, "verifiable": 1}
    assert load_config("rl", None, [f"model.path={tiny}", "grpo.rewards.format=1e-1"]).grpo.rewards["format"] == 0.1
    for over, key in (("grpo.rewards={format: fast}", "grpo.rewards.format: weight 'fast' must be a number"),
                      ("data.loss_weights={ocr: 1e-1x}", "data.loss_weights.ocr: weight '1e-1x' must be a number"),
                      ("data.loss_weights={ocr: nan}", "data.loss_weights.ocr: weight 'nan' must be a number")):
        with pytest.raises(TrainConfigError, match=f"^{key}"):
            load_config("rl", None, [f"model.path={tiny}", over])


@pytest.mark.parametrize("over, key", [
    (["optim.lr=-1"], "optim.lr"), (["optim.lrr=1"], "optim.lrr"), (["steps=abc"], "steps"),
    (["data.global_batch=3", "data.micro_batch=2"], "data.global_batch"), (["model.path=/nonexistent"], "model.path"),
    (["data.ocr_ratio=2"], "data.ocr_ratio"), (["model.lora.r=-1"], "model.lora.r"), (["bogus.key=1"], "bogus"),
    (["model.freeze_vision=maybe"], "model.freeze_vision"), (["optim.schedule=linear"], "optim.schedule"),
    (["model.dtype=float32", "model.pure_bf16=true"], "model.pure_bf16"),
])
def test_bad_config_names_the_key(tiny, over, key):
    with pytest.raises(TrainConfigError, match=f"^{key}"):
        load_config("sft", None, [f"model.path={tiny}", *over])


def test_bad_rl_config_names_the_key(tiny):
    for over, key in ((["grpo.rewards.speed=1"], "grpo.rewards.speed"), (["grpo.eps_low=1.5"], "grpo.eps_low"),
                      (["model.lora.r=8", "model.lora.dropout=0.1"], "model.lora.dropout"),
                      (["grpo.verifier=judge"], "grpo.judge_base_url"), (["grpo.group_size=1"], "grpo.group_size")):
        with pytest.raises(TrainConfigError, match=f"^{key}"):
            load_config("rl", None, [f"model.path={tiny}", *over])



@pytest.mark.parametrize("stage, over, key", [
    ("sft", "optim.lr=.inf", "optim.lr: inf must be a finite number"), ("sft", "optim.lr=inf", "optim.lr"),
    ("sft", "optim.min_lr=.nan", "optim.min_lr"), ("sft", "optim.eps=.inf", "optim.eps"),
    ("sft", "optim.grad_clip=.inf", "optim.grad_clip"), ("sft", "optim.weight_decay=.inf", "optim.weight_decay"),
    ("sft", "optim.betas=[0.9, .nan]", "optim.betas"), ("sft", "model.lora.alpha=.inf", "model.lora.alpha"),
    ("sft", "data.ocr_ratio=.nan", "data.ocr_ratio"),
    ("sft", "data.loss_weights={ocr: .inf}", "data.loss_weights.ocr: weight inf must be a number >= 0"),
    ("sft", "data.loss_weights={ocr: .nan}", "data.loss_weights.ocr"),
    ("rl", "grpo.rewards={ocr: .nan}", "grpo.rewards.ocr: weight nan must be a number"),
    ("rl", "grpo.rewards={ocr: -.inf}", "grpo.rewards.ocr"), ("rl", "grpo.temperature=.inf", "grpo.temperature"),
    ("rl", "grpo.top_p=.nan", "grpo.top_p"), ("rl", "grpo.eps_low=.nan", "grpo.eps_low"),
    ("rl", "grpo.eps_high=.inf", "grpo.eps_high"), ("rl", "grpo.kl_coef=.inf", "grpo.kl_coef"),
])
def test_numbers_that_are_not_finite_are_refused(tiny, stage, over, key):
    """inf and nan pass comparisons such as lr > 0 and w >= 0, and train on a NaN loss; every float is checked."""
    with pytest.raises(TrainConfigError, match=f"^{key}"):
        load_config(stage, None, [f"model.path={tiny}", over])


def test_min_lr_is_checked_only_where_the_schedule_uses_it(tiny):
    """rl's schedule is constant: an lr under the stage's min_lr (1e-6) is no error there, while cosine decays to
    min_lr and refuses it."""
    c = load_config("rl", None, [f"model.path={tiny}", "optim.lr=5e-7"])
    assert (c.optim.lr, c.optim.schedule) == (5e-7, "constant")
    with pytest.raises(TrainConfigError, match=r"^optim\.min_lr: 1e-06 must be in \[0, optim\.lr=5e-07\]"):
        load_config("rl", None, [f"model.path={tiny}", "optim.lr=5e-7", "optim.schedule=cosine"])

def test_global_batch_that_does_not_split_over_the_ranks_is_named_before_the_model_loads(tiny):
    from glyph_rt.train.trainer import per_rank

    cpt = load_config("cpt", None, [f"model.path={tiny}"])  # the paper's 170
    assert per_rank(cpt, 2) == 85
    with pytest.raises(ValueError, match=r"data.global_batch: 170 samples .* over 8 ranks; use 168 or 176"):
        per_rank(cpt, 8)
    rl = load_config("rl", None, [f"model.path={tiny}", "data.global_batch=3"])
    with pytest.raises(ValueError, match=r"3 prompts .* over 2 ranks; use 2 or 4"):
        per_rank(rl, 2)
    for bad in ("grpo.rollout_prompts=-1",):
        with pytest.raises(TrainConfigError, match="^grpo.rollout_prompts"):
            load_config("rl", None, [f"model.path={tiny}", bad])


def test_held_out_loss_config(tiny):
    with pytest.raises(TrainConfigError, match="^data.eval_loader.corpus"):
        load_config("sft", None, [f"model.path={tiny}", "eval_every=10"])
    with pytest.raises(TrainConfigError, match="^eval_every"):
        load_config("rl", None, [f"model.path={tiny}", "eval_every=10", "data.eval_loader={corpus: x.txt}"])
    with pytest.raises(TrainConfigError, match="^data.eval_loader.bogus"):
        from glyph_rt.train.data import loader_options

        loader_options(load_config("sft", None, [f"model.path={tiny}", "data.eval_loader={bogus: 1}"]), True)


def test_held_out_loss_is_logged_and_plotted(tiny, tmp_path):
    """eval_every: the loss on the same held-out micro-batches every N steps (and at the end), in metrics.jsonl
    and beside the training loss in curves.png; it falls while the model fits those very batches."""
    from glyph_rt.train.metrics import read_jsonl
    from glyph_rt.train.trainer import Trainer, label_tokens, token_loss_sum

    cfg = cfg_for(tiny, tmp_path / "run", "data.global_batch=1", "optim.lr=3e-3", "steps=5", "eval_every=2",
                  "eval_batches=2", "data.eval_loader={corpus: held.txt}", "plot=true", "optim.schedule=constant")
    gm = load(cfg)
    batches = ocr_samples(gm, WORDS[:2])
    t = Trainer(cfg, gm, progress=False, eval_data=ListData(batches))
    with torch.no_grad():
        want = sum(float(token_loss_sum(gm.model, b, torch.device("cpu"))) for b in batches)
    assert t.eval_loss() == pytest.approx(want / sum(label_tokens(b) for b in batches), rel=1e-5)
    t.fit(ListData(batches))
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    held = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    assert [s for s, _ in held] == [2, 4, 5] and held[-1][1] < held[0][1]
    assert (tmp_path / "run" / "curves.png").exists()


def test_cli_trains_with_a_held_out_corpus(tiny, tmp_path):
    from glyph_rt.cli import main

    held = tmp_path / "held.txt"
    held.write_text("A held-out paragraph the training corpus does not hold. " * 20, encoding="utf-8")
    out = tmp_path / "sft"
    assert main(["train", "sft", f"model.path={tiny}", f"out_dir={out}", "steps=2", "optim.warmup_steps=0",
                 "tensorboard=false", "model.gradient_checkpointing=false", "data.global_batch=1", "eval_every=1",
                 "eval_batches=1", "data.loader={max_pages: 1, window_chars: 300}",
                 f"data.eval_loader={{corpus: {held}}}"]) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["eval_loss"] > 0 for r in rows)


def test_cli_bad_config_exits_2_before_compute(tiny, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "glyph_rt.train", "sft", f"model.path={tiny}", "optim.lr=fast",
                        f"out_dir={tmp_path}"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2 and "optim.lr: expected a number" in r.stderr and "Traceback" not in r.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("stage", ["sft", "rl"])
def test_cli_trains_on_the_built_in_corpus(tiny, tmp_path, stage):
    """`glyph-rt train sft|rl` end to end on the data engine's default corpus: steps, metrics, checkpoint, export."""
    from glyph_rt.cli import main

    over = {"sft": ["data.global_batch=2", "data.loader={max_pages: 1, window_chars: 300}"],
            "rl": ["data.global_batch=2", "grpo.group_size=2", "grpo.max_new_tokens=4", "grpo.rewards={ocr: 1.0}",
                   "grpo.epochs=2", "grpo.max_refills=1", "data.loader={window_chars: 300}",
                   f"data.render_config={tmp_path / 'best.json'}"]}[stage]  # the rollouts render with it
    RenderConfig(dpi=60).save(tmp_path / "best.json")
    out = tmp_path / stage
    assert main(["train", stage, f"model.path={tiny}", f"out_dir={out}", "steps=2", "optim.warmup_steps=0",
                 "tensorboard=false", "model.gradient_checkpointing=false", *over]) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["loss"] == r["loss"] for r in rows)  # not NaN
    assert all(r["skipped"] >= r.get("too_long", 0) >= 0 for r in rows)  # the data's skipped samples, counted
    if stage == "sft":  # each task's own loss and share of the loss tokens
        assert all(any(k.startswith("loss_") and k != "loss_tokens" for k in r) for r in rows)
        assert all(sum(v for k, v in r.items() if k.startswith("token_share_")) == pytest.approx(1.0) for r in rows)
    if stage == "rl":  # a random-weight model's answers often all score the same: such groups are dropped
        assert all(r["groups"] + r["dropped_groups"] >= 2 and r["updates"] in (0, 2) for r in rows)
    assert (out / "checkpoints" / "step_00000002").is_dir() and (out / "export" / "model.safetensors").exists()
    saved = load_config(stage, out / "config.yaml")  # the run's resolved config, every key
    assert saved.steps == 2 and saved.model.path == tiny and saved.data.global_batch == 2


def test_print_config_reads_back(tiny, tmp_path, capsys):
    """`glyph-rt train STAGE --print-config` prints every key as YAML (no model needed) that --config reads back
    to the same config."""
    from glyph_rt.cli import main

    assert main(["train", "rl", "optim.lr=3e-6", "--print-config", "grpo.group_size=8"]) == 0
    (tmp_path / "c.yaml").write_text(capsys.readouterr().out)
    back = load_config("rl", tmp_path / "c.yaml", [f"model.path={tiny}"])
    assert back == load_config("rl", None, ["optim.lr=3e-6", "grpo.group_size=8", f"model.path={tiny}"])
    assert back.optim.lr == 3e-6 and back.grpo.group_size == 8 and back.model.pure_bf16 is False


# ----------------------------------------------------------------- the loop
def test_lr_schedule():
    from glyph_rt.train.trainer import lr_factor

    from glyph_rt.train.config import TrainConfig

    c = TrainConfig(steps=100)
    c.optim.warmup_steps, c.optim.lr, c.optim.min_lr = 10, 5e-6, 2e-6
    lrs = [5e-6 * lr_factor(s, c) for s in range(101)]
    assert lrs[0] == pytest.approx(5e-7) and lrs[9] == pytest.approx(5e-6) and lrs[10] == pytest.approx(5e-6)
    assert lrs[100] == pytest.approx(2e-6) and all(a >= b - 1e-18 for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[99] > 2e-6  # HF's convention: min_lr at step `steps`, the one after the last step (99) trains


def test_labels_only_on_the_answer(tiny, tmp_path):
    gm = load(cfg_for(tiny, tmp_path))
    b = ocr_samples(gm, ["red fox"])[0]
    learned = [t for t in b["labels"][0].tolist() if t != IGNORE_INDEX]
    assert gm.tokenizer.decode(learned) == "red fox<|endoftext|>"
    assert b["loss_tokens"] == len(learned)
    assert not (b["labels"][b["input_ids"] == gm.image_token_id] != IGNORE_INDEX).any()


def test_overfit_fixed_batch(tiny, tmp_path):
    from glyph_rt.train.trainer import Trainer

    cfg = cfg_for(tiny, tmp_path, "data.global_batch=1", "optim.lr=3e-3", "optim.schedule=constant", "steps=40",
                  "optim.min_lr=3e-3")
    gm = load(cfg)
    batches = ocr_samples(gm, ["hello"])
    t = Trainer(cfg, gm, progress=False)
    emb = gm.model.model.visual.embeddings
    emb._glyph_cache_version = "from the weights before the step"
    losses = [t.train_step(batches)["loss"]]
    assert not hasattr(emb, "_glyph_cache_version")  # each optimizer step forgets the patched modules' caches
    while losses[-1] >= 0.1 * losses[0] and len(losses) < 60:
        losses.append(t.train_step(batches)["loss"])
    assert losses[-1] < 0.1 * losses[0], losses


def test_kernels_on_off_same_loss_and_grads(tiny, tmp_path):
    from glyph_rt.train.trainer import token_loss_sum

    res = []
    for k in ("auto", "off"):
        gm = load(cfg_for(tiny, tmp_path, f"model.kernels={k}"))
        b = ocr_samples(gm, ["blue sky"])[0]
        loss = token_loss_sum(gm.model, b, torch.device("cpu"))
        loss.backward()
        res.append((float(loss.detach()), {n: p.grad.clone() for n, p in gm.model.named_parameters()}))
    assert res[0][0] == pytest.approx(res[1][0], rel=1e-4)
    for n, g in res[0][1].items():
        torch.testing.assert_close(g, res[1][1][n], rtol=2e-3, atol=2e-5, msg=n)


def test_gradient_accumulation_matches_one_batch(tiny, tmp_path):
    from glyph_rt.train.trainer import Trainer

    params = []
    for micro in (1, 2):
        cfg = cfg_for(tiny, tmp_path, "data.global_batch=2", f"data.micro_batch={micro}")
        gm = load(cfg)
        bs = ocr_samples(gm, WORDS[:2], per_batch=micro)
        m = Trainer(cfg, gm, progress=False).train_step(bs)
        params.append((m["loss"], [p.detach().clone() for p in gm.model.parameters()]))
    assert params[0][0] == pytest.approx(params[1][0], rel=1e-4)
    for a, b in zip(params[0][1], params[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_resume_is_exact_and_logs(tiny, tmp_path):
    from glyph_rt.train.trainer import Trainer

    def train(out, steps, *over):
        cfg = cfg_for(tiny, out, "data.global_batch=2", "steps=4", "save_every=2", "optim.lr=1e-3", *over)
        gm = load(cfg)
        data = ListData(ocr_samples(gm, WORDS[:3]))
        t = Trainer(cfg, gm, progress=False)
        t.fit(data, steps=steps)
        return t, gm, data

    straight, _, _ = train(tmp_path / "a", 4)
    train(tmp_path / "b", 2)
    resumed, _, data = train(tmp_path / "b", 4)
    assert resumed.step == 4 and data.pos == 8
    for (n, a), b in zip(straight.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(a, b), n
    assert resumed.scheduler.state_dict() == straight.scheduler.state_dict()
    rows = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert {"loss", "lr", "tokens_per_s", "samples_per_s", "pages", "visual_tokens"} <= rows[0].keys()
    ckpts = sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir())
    assert ckpts == ["step_00000002", "step_00000004"]
    # resume=false beside them: the earlier run's step 4 would outrank (and prune) the new run's step 2
    with pytest.raises(TrainConfigError, match="^resume=false, but .*checkpoints holds an earlier run's checkpoints "
                                               r"\(step_00000004\): resume=true continues"):
        train(tmp_path / "b", 4, "resume=false")
    from glyph_rt.train.trainer import run

    with pytest.raises(TrainConfigError, match="^resume=false"):  # before the model loads
        run(cfg_for(tiny, tmp_path / "b", "resume=false"))


def test_resume_is_exact_with_dropout_through_the_data_engine(tiny, tmp_path, monkeypatch):
    """LoRA dropout on, the data engine's loader: 4 steps straight give the loss and grad norm of 2 steps and a run
    resumed to 4, at every step. The loader's DataLoader draws its iterator's base seed from a generator of its own,
    not from the global RNG the resumed run has just restored (the dropout masks after it would differ)."""
    from glyph_rt.train import trainer
    from glyph_rt.train.metrics import read_jsonl

    fit = trainer.Trainer.fit

    def train(out, stop):
        monkeypatch.setattr(trainer.Trainer, "fit", lambda self, data, steps=None: fit(self, data, steps=stop))
        trainer.run(cfg_for(tiny, out, "steps=4", "save_every=2", "optim.lr=1e-3", "data.global_batch=2",
                            "model.lora.r=4", "model.lora.dropout=0.5",
                            "data.loader={styles: false, max_pages: 1, window_chars: 300}"), progress=False)
        return [(r["step"], r["loss"], r["grad_norm"]) for r in read_jsonl(out / "metrics.jsonl")]

    straight = train(tmp_path / "a", 4)
    assert train(tmp_path / "b", 2) == straight[:2]
    assert train(tmp_path / "b", 4) == straight


def test_the_loaders_iterators_leave_the_global_rng_alone(tiny, tmp_path):
    """Making a GlyphLoader's iterator (its DataLoader's) and drawing from it leaves torch's global RNG as it was, for
    the training and the held-out loader."""
    from glyph_rt.models import GlyphModel
    from glyph_rt.train.data import build_data

    held = tmp_path / "held.txt"
    held.write_text("A held-out paragraph the training corpus does not hold. " * 20, encoding="utf-8")
    cfg = load_config("sft", None, [f"model.path={tiny}", "data.loader={styles: false, max_pages: 1, window_chars: 300}",
                                    "eval_every=1", f"data.eval_loader={{corpus: {held}}}"])
    gm = GlyphModel.from_pretrained(tiny, device="cpu")
    for held_out in (False, True):
        data = build_data(cfg, gm, 0, 1, held_out=held_out)
        state = torch.get_rng_state()
        next(iter(data))
        assert torch.equal(torch.get_rng_state(), state), held_out


@pytest.mark.parametrize("launched", ["torchrun", "caller"])
def test_run_destroys_only_the_process_group_it_initialised(tiny, tmp_path, monkeypatch, launched):
    """Under torchrun, run() initialises the process group and destroys it after a barrier once training and export
    are done, before the interpreter exits; a group its caller initialised is left to the caller."""
    import socket

    import torch.distributed as dist

    from glyph_rt.train.trainer import run

    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    for k, v in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1",
                 "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(k, v)
    if launched == "caller":
        dist.init_process_group("gloo")
    try:
        cfg = cfg_for(tiny, tmp_path, "fsdp=on", "steps=1", "export=true")
        r = run(cfg, data=ListData(ocr_samples(load(cfg), WORDS)), progress=False)
        assert r["step"] == 1 and (tmp_path / "export" / "model.safetensors").exists()
        assert dist.is_initialized() == (launched == "caller")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_resume_takes_the_configs_optimizer_settings(tiny, tmp_path):
    """A run resumed with another optim.lr / min_lr / weight_decay / betas / eps trains with them (config.yaml's),
    not with the checkpoint's; its Adam moments and schedule position come from the checkpoint."""
    from glyph_rt.train.trainer import Trainer

    def train(steps, *over):
        cfg = cfg_for(tiny, tmp_path, "data.global_batch=1", "steps=4", "save_every=2", "optim.schedule=cosine", *over)
        gm = load(cfg)
        t = Trainer(cfg, gm, progress=False)
        t.fit(ListData(ocr_samples(gm, WORDS[:2])), steps=steps)
        return t

    first = train(2, "optim.lr=1e-3", "optim.min_lr=1e-3", "optim.weight_decay=0")
    moments = [s["exp_avg"].clone() for s in first.optimizer.state.values()]
    t = train(2, "optim.lr=1e-5", "optim.min_lr=2e-6", "optim.weight_decay=0.1", "optim.betas=[0.8, 0.9]",
              "optim.eps=1e-6")
    assert t.step == 2  # resumed, nothing left to train
    decay, other = t.optimizer.param_groups
    want = 2e-6 + 8e-6 * 0.5 * (1 + math.cos(math.pi * 2 / 4))  # the new lr -> min_lr cosine at step 2 of 4
    assert decay["lr"] == other["lr"] == pytest.approx(want) and t.scheduler.get_last_lr() == [decay["lr"]] * 2
    assert (decay["weight_decay"], other["weight_decay"]) == (0.1, 0.0) and t.scheduler.base_lrs == [1e-5, 1e-5]
    assert decay["betas"] == (0.8, 0.9) and decay["eps"] == 1e-6 and decay["initial_lr"] == 1e-5
    for a, s in zip(moments, t.optimizer.state.values()):
        assert torch.equal(a, s["exp_avg"])
    t = train(4, "optim.lr=1e-5", "optim.min_lr=2e-6", "optim.weight_decay=0.1")
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows] == pytest.approx([1e-3, 1e-3, want, 2e-6 + 8e-6 * 0.5 * (1 + math.cos(math.pi * 3 / 4))])


def test_grpo_settings_outside_rl_are_refused_by_name():
    """cpt and sft ignore grpo.*: a value given there (grpo.rewards.speed=1, a reward that does not exist) was
    accepted, written to config.yaml and did nothing."""
    for stage in ("cpt", "sft"):
        for over in ("grpo.rewards.speed=1", "grpo.group_size=0"):
            with pytest.raises(TrainConfigError, match=rf"^grpo\.\w+: .*grpo settings are for rl, not {stage}"):
                load_config(stage, None, ["model.path=x", over], check_paths=False)
    load_config("rl", None, ["model.path=x", "grpo.group_size=4"], check_paths=False)


def test_a_held_out_corpus_sharing_training_files_is_refused_before_the_model_loads(tiny, tmp_path, monkeypatch):
    from glyph_rt.render.textio import sample_text
    from glyph_rt.train import model, trainer

    (tmp_path / "texts").mkdir()
    for name in ("a.txt", "b.txt"):
        (tmp_path / "texts" / name).write_text(sample_text()[:3000])
    monkeypatch.setattr(model, "load_for_training", lambda *a, **k: pytest.fail("the model loaded"))
    for train, held in ((tmp_path / "texts" / "a.txt", tmp_path / "texts" / "a.txt"),
                        (tmp_path / "texts", tmp_path / "texts" / "b.txt")):
        with pytest.raises(TrainConfigError, match=r"^data.eval_loader.corpus: holds 1 of the training corpus's "):
            trainer.run(cfg_for(tiny, tmp_path / "o", "eval_every=1", f"data.loader.corpus={train}",
                                f"data.eval_loader={{corpus: {held}}}"), progress=False)
    assert not trainer.check_held_out_apart(cfg_for(tiny, tmp_path / "o", "eval_every=1",
                                                    f"data.loader.corpus={tmp_path / 'texts' / 'a.txt'}",
                                                    f"data.eval_loader={{corpus: {tmp_path / 'texts' / 'b.txt'}}}"))


def test_a_resume_under_other_model_settings_is_refused_by_name_before_the_model_loads(tiny, tmp_path, monkeypatch):
    """A checkpoint's state fits the model it was written under: a resume with another LoRA rank (or frozen part,
    or model) used to fail deep in DCP's load with a traceback after the model had loaded."""
    from glyph_rt.train import model, trainer
    from glyph_rt.train.trainer import Trainer

    cfg = cfg_for(tiny, tmp_path, "data.global_batch=1", "steps=1")
    gm = load(cfg)
    Trainer(cfg, gm, progress=False).fit(ListData(ocr_samples(gm, WORDS[:1])), steps=1)
    monkeypatch.setattr(model, "load_for_training", lambda *a, **k: pytest.fail("the model loaded"))
    for over, key in (("model.lora.r=4", "model.lora.r: 4, but"), ("model.freeze_vision=true", "model.freeze_vision")):
        with pytest.raises(TrainConfigError, match=f"^{key}.* was written with .*give .* or another out_dir"):
            trainer.run(cfg_for(tiny, tmp_path, "data.global_batch=1", "steps=2", over), progress=False)
    # the same model under another spelling of its path, and LoRA targets without LoRA, are no other settings
    trainer.check_resume(cfg_for(f"{tiny}/", tmp_path, "data.global_batch=1", "steps=2",
                                 "model.lora.target_modules=[q_proj]"))
    with pytest.warns(UserWarning, match=r"other data settings .*data.global_batch 1 -> 2; the data goes on"):
        trainer.check_resume(cfg_for(tiny, tmp_path, "data.global_batch=2", "steps=2"))


def test_fsdp_on_in_one_process_without_torchrun_is_named_before_the_model_loads(tiny, tmp_path, monkeypatch):
    from glyph_rt.train import model, trainer

    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.setattr(model, "load_for_training", lambda *a, **k: pytest.fail("the model loaded"))
    with pytest.raises(TrainConfigError, match=r"^fsdp: 'on' shards over a process group.* torchrun .* fsdp=auto"):
        trainer.run(cfg_for(tiny, tmp_path, "fsdp=on"))


@pytest.mark.parametrize("over, want", [
    ([], (torch.float32, True)), (["model.dtype=bfloat16"], (torch.float32, True)),
    (["model.dtype=float32"], (torch.float32, False)),
    (["model.dtype=bfloat16", "model.pure_bf16=true"], (torch.bfloat16, False)),
], ids=["auto", "bfloat16", "float32", "pure_bf16"])
def test_fsdp_on_a_gpu_loads_and_shards_in_model_dtype(tiny, tmp_path, monkeypatch, over, want):
    """Sharded on a GPU, bf16 (auto) loads fp32 master weights under FSDP's bf16 mixed precision; model.dtype=float32
    loads fp32 and model.pure_bf16 bf16, each sharded without mixed precision. (Loading and sharding are stubbed:
    this machine may have no GPU.)"""
    from types import SimpleNamespace

    from glyph_rt.train import model, trainer

    class Sharded(Exception):
        pass

    def shard(m, mixed_precision, device=None):
        seen["mixed"] = mixed_precision
        raise Sharded

    seen = {}
    monkeypatch.setattr(trainer, "use_fsdp", lambda cfg, world: True)
    monkeypatch.setattr(model, "load_for_training",
                        lambda cfg, device, dtype=None: seen.update(dtype=dtype) or SimpleNamespace(model=None))
    monkeypatch.setattr(model, "shard", shard)
    with pytest.raises(Sharded):
        trainer._run(cfg_for(tiny, tmp_path, *over), None, False, 0, 1, torch.device("cuda"))
    assert (seen["dtype"], seen["mixed"]) == want
    cpu = model.fsdp_precision(load_config("sft", None, [f"model.path={tiny}", *over]).model, torch.device("cpu"))
    assert cpu == (want if over else (torch.float32, False))  # auto is float32 on the CPU


def test_loss_weights_below_one_give_the_weighted_mean(tiny, tmp_path):
    """data.loss_weights: the loss is sum(w * ce) / sum(w) whatever the weights' scale, also when they sum below 1
    (one task weighted 0.01 gives the plain token mean and the same step)."""
    from glyph_rt.train.collate import Collator
    from glyph_rt.train.trainer import Trainer

    res = []
    for w in (1.0, 0.01):
        cfg = cfg_for(tiny, tmp_path, "data.global_batch=1", f"data.loss_weights={{ocr: {w}}}")
        torch.manual_seed(0)
        gm = load(cfg)
        col = Collator(gm.image_token_id, gm.tokenizer.pad_token_id, model=gm.model, vision_model=gm.vision,
                       loss_weights=cfg.data.loss_weights)
        b = col(samples(gm, ["cold tea"]))
        assert w == 1.0 or float(b["label_weights"][..., 1:].sum()) < 1
        t = Trainer(cfg, gm, progress=False, eval_data=ListData([b]))
        t.cfg.eval_batches = 1
        m = t.train_step([b])
        res.append((m["loss"], m["grad_norm"], t.eval_loss(), [p.detach().clone() for p in gm.model.parameters()]))
    assert res[1][:3] == pytest.approx(res[0][:3], rel=1e-5)
    for a, b in zip(res[0][3], res[1][3]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_lora_on_embeddings_and_convs_exports_the_trained_model(tiny, tmp_path):
    """Adapters on the token embedding (peft's lora_embedding_A/B), the downsample Conv2d, the patch-embedding
    Conv3d (kernels=off: a conv the adapter joins) and q_proj: the export holds the weights peft's own
    merge_and_unload makes, and its logits are the trained model's."""
    import copy

    from glyph_rt.models import GlyphModel
    from glyph_rt.train.trainer import Trainer, model_inputs

    targets = "[embed_tokens, downsample, patch_embed.proj, q_proj]"
    cfg = cfg_for(tiny, tmp_path, "data.global_batch=1", "model.lora.r=4", f"model.lora.target_modules={targets}",
                  "model.freeze_vision=true", "model.freeze_projector=true", "optim.lr=1e-2", "model.kernels=off")
    gm = load(cfg)
    lora = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, p in gm.model.named_parameters() if p.requires_grad}
    assert lora == {"embed_tokens", "downsample", "proj", "q_proj"}
    b = ocr_samples(gm, ["cold tea"])[0]
    t = Trainer(cfg, gm, progress=False)
    t.train_step([b])
    out = t.export(tmp_path / "export")
    from safetensors.torch import load_file

    got = load_file(out / "model.safetensors")
    want = copy.deepcopy(gm.model).merge_and_unload().state_dict()
    for k, v in want.items():
        torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-6, msg=k)
    base = load_file(Path(tiny) / "model.safetensors")
    assert not torch.equal(got["model.language_model.embed_tokens.weight"],
                           base["model.language_model.embed_tokens.weight"])
    gm.model.eval()
    with torch.no_grad():
        trained = gm.model(**model_inputs(b, torch.device("cpu"))).logits
        back = GlyphModel.from_pretrained(out, device="cpu").model(**model_inputs(b, torch.device("cpu"))).logits
    torch.testing.assert_close(back, trained, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("target, why", [("patch_embed.proj", "reads its weight directly.*model.kernels=off"),
                                         ("position_embedding", "reads its weight directly")])
def test_lora_target_that_would_not_train_is_refused_before_training(tiny, tmp_path, target, why):
    """glyph_rt's patch-embedding GEMM (kernels=auto) and GLM's position table read their weight themselves: an
    adapter there would never join a forward; the run stops before training, naming the module."""
    cfg = cfg_for(tiny, tmp_path, "model.lora.r=4", f"model.lora.target_modules=[{target}]")
    with pytest.raises(TrainConfigError, match=f"^model.lora.target_modules: model.visual.*{target}: .*{why}"):
        load(cfg)


def test_merge_lora_refuses_what_it_cannot_fold():
    from glyph_rt.train.checkpoint import merge_lora

    w = {"m.base_layer.weight": torch.zeros(2, 2), "m.lora_A.default.weight": torch.zeros(1, 2),
         "m.lora_B.default.weight": torch.zeros(2, 1)}
    assert merge_lora(w, 1.0).keys() == {"m.weight"}
    with pytest.raises(ValueError, match="m.lora_magnitude_vector.default.weight is a LoRA weight that cannot"):
        merge_lora({**w, "m.lora_magnitude_vector.default.weight": torch.ones(2)}, 1.0)
    with pytest.raises(ValueError, match="m's LoRA update is \\(2, 2\\), its weight \\(3, 2\\)"):
        merge_lora({**w, "m.base_layer.weight": torch.zeros(3, 2)}, 1.0)


def test_export_loads_in_glyph_model(tiny, tmp_path):
    from glyph_rt.models import GlyphModel
    from glyph_rt.train.trainer import Trainer, model_inputs

    cfg = cfg_for(tiny, tmp_path, "data.global_batch=1", "model.lora.r=4", "model.freeze_vision=true", "optim.lr=1e-2")
    gm = load(cfg)
    names = [n for n, p in gm.model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n or ".visual.merger" in n or ".visual.downsample" in n
                         or ".post_conv_layernorm" in n for n in names), names[:5]
    b = ocr_samples(gm, ["cold tea"])[0]
    t = Trainer(cfg, gm, progress=False)
    t.train_step([b])
    out = t.export(tmp_path / "export")
    gm.model.eval()
    with torch.no_grad():
        want = gm.model(**model_inputs(b, torch.device("cpu"))).logits
        back = GlyphModel.from_pretrained(out, device="cpu")
        got = back.model(**model_inputs(b, torch.device("cpu"))).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert back.generate("hello", "?", max_new_tokens=2)


def test_export_config_says_the_tensors_dtype_and_the_sources_use_cache(tiny, tmp_path):
    """A bf16 run's export: config.json says bfloat16 (not its fp32 master weights' dtype), at the top and in each
    sub-config, so transformers' dtype="auto" loads it in bf16; use_cache is the source's (gradient checkpointing
    turned it off in training), left out where the source had none."""
    from transformers import AutoModelForImageTextToText

    from glyph_rt.train.checkpoint import export_config
    from glyph_rt.train.trainer import Trainer

    cfg = cfg_for(tiny, tmp_path, "model.dtype=bfloat16", "model.gradient_checkpointing=true", "data.global_batch=1")
    gm = load(cfg)
    t = Trainer(cfg, gm, progress=False)
    t.train_step(ocr_samples(gm, ["cold tea"]))
    out = t.export(tmp_path / "export")
    config, source = (json.loads(Path(d, "config.json").read_text()) for d in (out, tiny))
    assert [config["dtype"], config["text_config"]["dtype"], config["vision_config"]["dtype"]] == ["bfloat16"] * 3
    assert "use_cache" not in source and "use_cache" not in config
    assert config["text_config"]["use_cache"] == source["text_config"]["use_cache"]
    assert {p.dtype for p in AutoModelForImageTextToText.from_pretrained(out, dtype="auto").parameters()} == \
        {torch.bfloat16}
    written = {"dtype": "float32", "use_cache": False, "text_config": {"use_cache": False}, "vision_config": {}}
    assert export_config(written, {"use_cache": True, "text_config": {}}, torch.bfloat16) == \
        {"dtype": "bfloat16", "use_cache": True, "text_config": {"dtype": "bfloat16"},
         "vision_config": {"dtype": "bfloat16"}}
    assert export_config(written, {}, None)["dtype"] == "float32"  # tensors of mixed dtypes: as save_pretrained said


def test_qwen2_5_vl_trains(tmp_path):
    from glyph_rt.models.tiny import make_tiny_checkpoint
    from glyph_rt.train.trainer import Trainer

    path = make_tiny_checkpoint(tmp_path / "q", "qwen2_5_vl")
    cfg = cfg_for(path, tmp_path / "run", "data.global_batch=1", "optim.lr=3e-3", "model.gradient_checkpointing=true")
    gm = load(cfg)
    b = ocr_samples(gm, ["open door"])
    t = Trainer(cfg, gm, progress=False)
    losses = [t.train_step(b)["loss"] for _ in range(5)]
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("mode", ["pad", "pack"])
def test_loss_on_kept_logits_equals_hf_loss(tiny, tmp_path, mode):
    """token_loss_sum makes logits only before label tokens: the same summed loss and gradients as the model's own
    loss over full logits (transformers' ForCausalLMLoss, a token mean, times the label count)."""
    from glyph_rt.train.trainer import label_tokens, model_inputs, token_loss_sum

    res = []
    for ours in (True, False):
        gm = load(cfg_for(tiny, tmp_path))
        batch = ocr_samples(gm, WORDS[:3], mode=mode, per_batch=3)[0]
        if ours:
            loss = token_loss_sum(gm.model, batch, torch.device("cpu"))
        else:
            out = gm.model(**model_inputs(batch, torch.device("cpu")), labels=batch["labels"])
            assert out.logits.shape[-2] == batch["input_ids"].shape[-1]  # every position's logits
            loss = out.loss * label_tokens(batch)
        loss.backward()
        res.append((loss.item(), [p.grad.clone() for p in gm.model.parameters()]))
    assert res[0][0] == pytest.approx(res[1][0], rel=1e-5)
    for a, b in zip(res[0][1], res[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_packed_step_equals_unpacked(tiny, tmp_path):
    from glyph_rt.train.trainer import label_tokens, token_loss_sum

    res = []
    for mode in ("pad", "pack"):
        gm = load(cfg_for(tiny, tmp_path))
        batch = ocr_samples(gm, WORDS[:3], mode=mode, per_batch=3)[0]
        loss = token_loss_sum(gm.model, batch, torch.device("cpu"))
        loss.backward()
        res.append((loss.item(), label_tokens(batch), [p.grad.clone() for p in gm.model.parameters()]))
    assert res[1][0] == pytest.approx(res[0][0], rel=1e-5) and res[1][1] == res[0][1]
    for a, b in zip(res[0][2], res[1][2]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.slow  # three interpreters and two training runs: ~50 s on a busy 2-core machine
def test_fsdp2_two_processes_match_one(tiny, tmp_path):
    """2 real gloo processes with fully_shard against 1 process: same loss, same exported weights."""
    from safetensors.torch import load_file

    worker = str(ROOT / "tests" / "train_fsdp_worker.py")
    env = worker_env()
    runs = {"one": [sys.executable, worker], "two": [sys.executable, "-m", "torch.distributed.run",
                                                     "--standalone", "--nproc-per-node", "2", worker]}
    out = {}
    for name, cmd in runs.items():
        r = subprocess.run([*cmd, "sft", tiny, str(tmp_path / name), "2"], capture_output=True, text=True, env=env,
                           timeout=240)
        assert r.returncode == 0, r.stderr[-6000:]
        loss = reported_loss(r)
        out[name] = (loss, load_file(tmp_path / name / "export" / "model.safetensors"))
    assert out["two"][0] == pytest.approx(out["one"][0], rel=1e-5)
    assert out["one"][1].keys() == out["two"][1].keys()
    for k, v in out["one"][1].items():
        torch.testing.assert_close(out["two"][1][k], v, rtol=1e-4, atol=1e-5, msg=k)
    ckpt = tmp_path / "two" / "checkpoints" / "step_00000002"
    assert (ckpt / "rank_0.pt").exists() and (ckpt / "rank_1.pt").exists() and (ckpt / ".metadata").exists()


@pytest.mark.slow  # an interpreter under torchrun: ~15-30 s
def test_fsdp_on_under_torchrun_with_one_rank_shards_on_a_one_rank_group(tiny, tmp_path):
    worker = str(ROOT / "tests" / "train_fsdp_worker.py")
    env = worker_env()
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", worker,
                        "sft", tiny, str(tmp_path / "one"), "1", "fsdp=on"], capture_output=True, text=True, env=env,
                       timeout=240)
    assert r.returncode == 0, r.stderr[-6000:]
    assert (tmp_path / "one" / "export" / "model.safetensors").exists()


def test_data_that_runs_out_ends_the_run_after_its_last_whole_step(tiny, tmp_path):
    """Finite data that ends within step 3 of 5: the run ends after step 2, which is logged and saved (log_every and
    save_every would not have), with a warning; resumed, it ends there again; with no data at all it is an error."""
    from glyph_rt.train.trainer import Trainer

    cfg = cfg_for(tiny, tmp_path, "steps=5", "data.global_batch=2", "save_every=0", "log_every=3")
    gm = load(cfg)
    batches = ocr_samples(gm, WORDS[:5])  # 5 micro-batches of 1: two steps, and one of the third
    t = Trainer(cfg, gm, progress=False)
    with pytest.warns(UserWarning, match="the data ran out in step 3 of 5: training ends after step 2, which is saved"):
        m = t.fit(iter(batches))
    assert t.step == 2 and t.ran_out and math.isfinite(m["loss"])
    assert [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [2]
    assert t.ckpt.latest().name == "step_00000002"
    assert all(p.grad is None for p in gm.model.parameters())  # the unfinished step's gradients are dropped
    again = Trainer(cfg, gm, progress=False)
    with pytest.warns(UserWarning, match="training ends after step 2"):
        assert again.fit(iter([])) == {}
    assert again.step == 2
    fresh = Trainer(cfg_for(tiny, tmp_path / "fresh", "steps=5", "data.global_batch=2"), gm, progress=False)
    with pytest.raises(ValueError, match="the data ran out in step 1 of 5: nothing to train"):
        fresh.fit(iter(batches[:1]))


class FiniteData(ListData):
    """The batches once, in order, with the loader's state_dict protocol."""

    def __iter__(self):
        while self.pos < len(self.batches):
            self.pos += 1
            yield self.batches[self.pos - 1]


def test_a_run_the_data_ends_saves_the_data_position_of_its_last_whole_step(tiny, tmp_path):
    """The data ends in step 3, whose first micro-batch was drawn: step 2's checkpoint holds the data's position as
    of step 2 (4 micro-batches), not 5, so a resume with more data trains the micro-batch the unfinished step drew
    (it used to skip it)."""
    from glyph_rt.train.trainer import Trainer

    cfg = cfg_for(tiny, tmp_path, "steps=3", "data.global_batch=2", "save_every=0")
    gm = load(cfg)
    batches = ocr_samples(gm, WORDS)
    t = Trainer(cfg, gm, progress=False)
    with pytest.warns(UserWarning, match="the data ran out in step 3 of 3"):
        t.fit(FiniteData(batches[:5]))
    assert t.step == 2
    assert torch.load(t.ckpt.latest() / "rank_0.pt", weights_only=False)["data"] == {"pos": 4}
    data = FiniteData(batches)
    again = Trainer(cfg, gm, progress=False)
    again.fit(data)
    assert again.step == 3 and data.pos == 6  # step 3: micro-batches 4 and 5


def test_data_that_ends_names_what_it_drew_and_why_it_skipped_every_sample(tiny, tmp_path):
    """The run-out message gives the data engine's counts; where every sample was skipped it gives the last one's
    reason instead of blaming data.loader.epochs. The checkpoint of a run that ends early holds the loader's
    position as of its last whole step."""
    from glyph_rt.train.collate import Collator
    from glyph_rt.train.loader import GlyphLoader, TaskDataset
    from glyph_rt.train.tasks import make_task
    from glyph_rt.train.trainer import Trainer

    cfg = cfg_for(tiny, tmp_path / "a", "steps=5", "data.global_batch=2", "save_every=0", "data.loader.epochs=1")
    gm = load(cfg)
    task = make_task("ocr", gm.prompts, config=PAGE, max_pages=1)
    col = Collator(gm.image_token_id, gm.tokenizer.pad_token_id, vision_model=gm.vision)

    def loader(corpus):
        return GlyphLoader(TaskDataset(corpus, task, epochs=1, shuffle=False), col, batch_size=1)

    with pytest.raises(ValueError, match=r"^the data ran out in step 1 of 5 \(5 samples drawn, 5 of them skipped\): "
                                         r"nothing to train; every one was skipped \(the last: record 4: field 'text' "
                                         r"must be a non-empty string, got None\)") as e:
        Trainer(cfg, gm, progress=False).fit(loader([{"body": w} for w in WORDS[:5]]))
    assert "epochs" not in str(e.value)
    corpus = [{"text": WORDS[0]}, {"body": "x"}, {"text": WORDS[1]}, {"text": WORDS[2]}, {"body": "x"}]
    t = Trainer(cfg_for(tiny, tmp_path / "b", "steps=5", "data.global_batch=2", "save_every=0",
                        "data.loader.epochs=1"), gm, progress=False)
    with pytest.warns(UserWarning, match=r"in step 2 of 5 \(5 samples drawn, 2 of them skipped\): training ends "
                                         r"after step 1, which is saved; data.loader.epochs=1 ends it"):
        t.fit(loader(corpus))
    state = torch.load(t.ckpt.latest() / "rank_0.pt", weights_only=False)["data"]
    assert (state["consumed"], state["skipped"]) == (3, 1)  # step 1: samples 0 and 2


def test_compression_is_logged(tiny, tmp_path):
    """The tasks count the text tokens their pages stand for and the collator sums them: each step logs
    `compression`, text tokens per visual token."""
    from glyph_rt.train.trainer import Trainer

    cfg = cfg_for(tiny, tmp_path, "data.global_batch=2")
    gm = load(cfg)
    batches = ocr_samples(gm, WORDS[:2])
    assert all(b["text_tokens"] > 0 for b in batches)
    m = Trainer(cfg, gm, progress=False).train_step(batches)
    visual = sum(int((b["input_ids"] == gm.image_token_id).sum()) for b in batches)
    assert m["compression"] == pytest.approx(sum(b["text_tokens"] for b in batches) / visual)


def test_data_that_runs_out_on_one_rank_ends_every_rank_together(tiny, tmp_path):
    """2 gloo processes with fully_shard whose finite data ends unevenly (rank 1's in the second micro-batch of step 2,
    rank 0's not at all): both end after step 1, saved and exported, instead of rank 1 raising while rank 0 waits in
    the next forward's collectives (until the process group's timeout)."""
    worker = str(ROOT / "tests" / "train_fsdp_worker.py")
    out = tmp_path / "two"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", worker,
                        "sft", tiny, str(out), "4", "data.global_batch=4", "save_every=0"], capture_output=True,
                       text=True, env=worker_env(DATA_LIMITS="9,3"), timeout=240)
    assert r.returncode == 0, r.stderr[-6000:]
    assert "RANK 0 STEP 1" in r.stdout and "RANK 1 STEP 1" in r.stdout
    assert "the data ran out in step 2 of 4 on 1 of 2 ranks: training ends after step 1, which is saved" in r.stderr
    assert (out / "checkpoints" / "step_00000001").is_dir() and (out / "export" / "model.safetensors").exists()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


@pytest.mark.slow  # an interpreter under torchrun: ~15-20 s
def test_held_out_data_that_runs_out_on_one_rank_fails_on_every_rank(tiny, tmp_path):
    """The held-out micro-batches run out on rank 1 alone: every rank raises naming it, rather than rank 0 going on
    into the held-out forwards' collectives."""
    worker = str(ROOT / "tests" / "train_fsdp_worker.py")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", worker,
                        "sft", tiny, str(tmp_path / "two"), "2", "data.global_batch=2", "eval_every=1",
                        "eval_batches=2", "data.eval_loader.corpus=unused"], capture_output=True, text=True,
                       env=worker_env(EVAL_LIMITS="4,1"), timeout=240)
    assert r.returncode != 0
    for rank in (0, 1):
        assert f"[rank{rank}]: ValueError: the held-out data ran out before eval_batches=2 micro-batches on 1 of 2 " \
               "ranks" in r.stderr, r.stderr[-6000:]


EXPORT_FAILS_ON_RANK_0 = """
import os, torch.distributed as dist
from glyph_rt.models.tiny import tiny_glm4v
from glyph_rt.train.checkpoint import export_hf

class FullDisk:
    def save_pretrained(self, path):
        raise OSError(28, "No space left on device")

dist.init_process_group("gloo")
tok = FullDisk() if dist.get_rank() == 0 else None
try:
    export_hf(tiny_glm4v("sdpa"), tok, os.environ["OUT"], os.environ["OUT"] + "/export")
except Exception as e:
    print(f"RANK {dist.get_rank()} RAISED {type(e).__name__}: {e}", flush=True)
dist.barrier()  # as glyph_rt.train.run ends: no collective's tensors left in gloo's threads at exit
dist.destroy_process_group()
"""


def test_an_export_that_fails_on_rank_0_fails_on_every_rank(tmp_path):
    """Rank 0 writes the export; when it fails, the other ranks raise too, naming why, instead of waiting for it
    at a barrier until the process group's timeout."""
    script = tmp_path / "export_fails.py"
    script.write_text(EXPORT_FAILS_ON_RANK_0)
    env = worker_env(OUT=str(tmp_path))
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-6000:]
    assert "RANK 0 RAISED OSError: [Errno 28] No space left on device" in r.stdout
    assert "RANK 1 RAISED RuntimeError: rank 0 failed to export the checkpoint" in r.stdout
    assert "No space left on device" in r.stdout.split("RANK 1 RAISED", 1)[1]
    assert not (tmp_path / "export").exists()


def test_saving_a_step_again_replaces_it_whole(tmp_path):
    from glyph_rt.train.checkpoint import CheckpointManager

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ckpt = CheckpointManager(tmp_path, keep=2)
    ckpt.save(5, model, opt, extra={"v": 1})
    with torch.no_grad():
        model.weight.fill_(7.0)
    ckpt.save(5, model, opt, extra={"v": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000005"]
    with torch.no_grad():
        model.weight.zero_()
    step, extra = ckpt.load(ckpt.latest(), model, opt)
    assert step == 5 and extra["v"] == 2 and bool((model.weight == 7.0).all())
    # a kill between the two renames of saving step 5 again: the old step 5 is moved aside, the new one not in
    (tmp_path / "step_00000005").rename(tmp_path / "step_00000005.replaced")
    assert ckpt.latest() == tmp_path / "step_00000005.replaced"
    assert ckpt.load(ckpt.latest(), model, opt)[0] == 5
    ckpt.save(6, model, opt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000005", "step_00000006"]


def test_bf16_weights_train_through_fp32_master_weights(tiny, tmp_path):
    """model.dtype=bfloat16 on one process: frozen weights bf16, trainable ones fp32 under bf16 autocast, so an
    Adam step at lr 1e-6 moves (nearly) every trainable weight (per tensor, on average; rows of tokens the batch
    lacks get no gradient); model.pure_bf16 keeps them bf16, where most such steps round away. The export is
    written in bf16."""
    from safetensors.torch import load_file

    from glyph_rt.train.trainer import Trainer

    moved = {}
    for pure in (False, True):
        cfg = cfg_for(tiny, tmp_path / str(pure), "model.dtype=bfloat16", f"model.pure_bf16={pure}", "optim.lr=1e-6",
                      "optim.min_lr=1e-6", "steps=1", "data.global_batch=2", "model.freeze_vision=true",
                      f"export={not pure}")
        gm = load(cfg)
        kinds = {(p.requires_grad, p.dtype) for p in gm.model.parameters()}
        assert kinds == {(False, torch.bfloat16), (True, torch.bfloat16 if pure else torch.float32)}
        before = [p.detach().clone() for p in gm.model.parameters() if p.requires_grad]
        t = Trainer(cfg, gm, progress=False)
        m = t.fit(ListData(ocr_samples(gm, WORDS)))
        assert math.isfinite(m["loss"])
        after = [p.detach() for p in gm.model.parameters() if p.requires_grad]
        moved[pure] = sum(float((a != b).float().mean()) for a, b in zip(before, after)) / len(before)
        if not pure:
            t.export()
            exported = load_file(tmp_path / str(pure) / "export" / "model.safetensors")
            assert {v.dtype for v in exported.values()} == {torch.bfloat16}
    assert moved[False] > 0.9 and moved[True] < 0.5


def test_fsdp_bf16_compute(tiny, tmp_path):
    """The mixed-precision policy of CUDA runs (bf16 compute, fp32 master weights and reductions), on 2 gloo
    processes: SFT within bf16's rounding of the fp32 run, GRPO (two epochs: the pages' embeddings taken through the
    root's registered get_image_features) to a finite loss."""
    worker = str(ROOT / "tests" / "train_fsdp_worker.py")
    two = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", worker]
    loss = {}
    for name, stage, bf16, over in (("sft32", "sft", "0", []), ("sft16", "sft", "1", []),
                                    ("rl16", "rl", "1", ["grpo.epochs=2"])):
        r = subprocess.run([*two, stage, tiny, str(tmp_path / name), "1", "data.global_batch=2", *over],
                           capture_output=True, text=True, env=worker_env(BF16_COMPUTE=bf16), timeout=300)
        assert r.returncode == 0, r.stderr[-6000:]
        assert "returned a view tensor" not in r.stderr  # the loops' forwards leave out FSDP2's warning
        loss[name] = reported_loss(r)
    assert loss["sft16"] == pytest.approx(loss["sft32"], rel=2e-2) and loss["sft16"] != loss["sft32"]
    assert math.isfinite(loss["rl16"])


@pytest.mark.parametrize("frozen", [False, True], ids=["vision-trained", "vision-frozen-kl"])
def test_grpo_under_fsdp_keeps_ranks_in_step_and_resumes(tiny, tmp_path, frozen):
    """GRPO on 2 gloo processes with fully_shard, where rank 1's groups are all dropped (it pads its forwards at
    weight 0), two epochs of two mini-batches per rollout, stopped after step 1 and resumed: the same weights as one
    process running rank 0's prompts for 2 steps without a stop. Frozen: the vision tower and projector frozen (the
    pages' embeddings taken once per step, no vision tower in the training forwards) and a KL term to a reference."""
    from safetensors.torch import load_file

    worker = str(ROOT / "tests" / "train_fsdp_worker.py")
    env = worker_env(RECORD_STRIDE="2", UNIFORM_RANKS="1")
    over = ["grpo.epochs=2", "grpo.mini_batches=2", "grpo.max_refills=0"]
    if frozen:
        over += ["model.freeze_vision=true", "model.freeze_projector=true", "grpo.kl_coef=0.1"]
    two = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", worker]
    runs = [("one", [sys.executable, worker], "2", "data.global_batch=1"),
            ("two", two, "1", "data.global_batch=2"), ("two", two, "2", "data.global_batch=2")]
    rows = []
    for name, cmd, steps, batch in runs:
        r = subprocess.run([*cmd, "rl", tiny, str(tmp_path / name), steps, batch, *over], capture_output=True,
                           text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stderr[-6000:]
        metrics = eval(next(x for x in r.stdout.splitlines() if x.startswith("METRICS"))[8:])  # noqa: S307
        assert metrics["step"] == int(steps) and metrics["updates"] == 4
        rows.append((tmp_path / name / "metrics.jsonl").read_text().splitlines())
    assert len(rows[2]) == 2 and rows[2][0] == rows[1][0]  # resumed: step 1's row (its timings) is the first run's
    a, b = (load_file(tmp_path / name / "export" / "model.safetensors") for name in ("one", "two"))
    assert a.keys() == b.keys()
    for k, v in a.items():
        torch.testing.assert_close(b[k], v, rtol=1e-4, atol=5e-5, msg=k)


@pytest.mark.parametrize("mode", ["pad", "pack"])
def test_training_step_on_glyph_kernels_matches_sdpa(tiny, tmp_path, device, mode):
    """The trainer's loss and gradients on glyph_rt's kernels (Triton patch-embedding GEMM and attention, forward
    and backward; compiled on CUDA, interpreted on the CPU) equal those on PyTorch's SDPA, for padded rows and
    for packed ones (attention within each sample from the position ids)."""
    from glyph_rt.models import apply_glyph_kernels
    from glyph_rt.train.model import load_for_training
    from glyph_rt.train.trainer import token_loss_sum

    res = []
    for kernels in (False, True):
        gm = load_for_training(cfg_for(tiny, tmp_path, "model.dtype=float32").model, torch.device(device))
        gm.patch.undo()
        gm.patch = apply_glyph_kernels(gm.model, patch_embed_backend="triton" if kernels else "torch",
                                       attention_backend="glyph" if kernels else "sdpa")
        batch = ocr_samples(gm, WORDS[:3], mode=mode, per_batch=3)[0]
        loss = token_loss_sum(gm.model, batch, torch.device(device))
        loss.backward()
        res.append((float(loss.detach()), {n: p.grad.clone() for n, p in gm.model.named_parameters() if p.grad is not None}))
    (want, want_grads), (got, got_grads) = res
    assert got == pytest.approx(want, rel=1e-4) and got_grads.keys() == want_grads.keys()
    for name, g in got_grads.items():
        torch.testing.assert_close(g, want_grads[name], rtol=1e-3, atol=1e-4, msg=name)


def test_the_searched_render_config_renders_every_post_training_sample(tiny, tmp_path):
    """data.render_config (the search's best config, here in Glyph's dashed keys): every SFT task renders with it
    and samples no styles; rl's rollouts take it too; a missing file is named before anything loads."""
    from glyph_rt.train.data import build_data
    from glyph_rt.train.model import load_for_training

    best = RenderConfig(dpi=60, page_size=(300, 400))
    best.save(tmp_path / "best_config_glyph.json", glyph_format=True)
    want = RenderConfig.load(tmp_path / "best_config_glyph.json")
    cfg = load_config("sft", None, [f"model.path={tiny}", f"data.render_config={tmp_path / 'best_config_glyph.json'}",
                                    "data.ocr_ratio=0.5"])
    gm = load_for_training(cfg.model, torch.device("cpu"))
    tasks = build_data(cfg, gm, 0, 1).dataset.task.tasks
    assert set(tasks) == {"qa", "ocr"} and all(t.styles is None and t.config == want for t in tasks.values())
    with pytest.raises(TrainConfigError, match="^data.render_config: .*does not exist"):
        load_config("sft", None, [f"model.path={tiny}", f"data.render_config={tmp_path / 'nope.json'}"])


def test_a_resumed_run_logs_each_step_once_in_tensorboard_too(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from glyph_rt.train.metrics import MetricsLogger

    first = MetricsLogger(tmp_path, plot=False)
    for step in range(1, 5):
        first.log(step, {"loss": float(step)})
    first.close()
    resumed = MetricsLogger(tmp_path, plot=False)
    resumed.truncate(2)  # the checkpoint was at step 2: steps 3 and 4 run again
    for step in (3, 4):
        resumed.log(step, {"loss": 10.0 * step})
    resumed.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]
    assert [r["step"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())] == [1, 2, 3, 4]
    assert len(list((tmp_path / "tensorboard").iterdir())) == 2  # one event file per run, no empty one
    fresh = MetricsLogger(tmp_path / "fresh", plot=False)
    fresh.truncate(0)  # a fresh start truncates at step 0
    fresh.log(1, {"loss": 1.0})
    fresh.close()
    assert len(list((tmp_path / "fresh" / "tensorboard").iterdir())) == 1
