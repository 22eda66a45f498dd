"""Each stage's data from the config: task mix, the SFT OCR ratio, thinking answers, RL records, bad keys."""
import itertools
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from glyph_rt.train.config import TrainConfig, TrainConfigError
from glyph_rt.train.data import MixedTask, RecordStream, loader_options
from glyph_rt.train.tasks import think_answer

ROOT = Path(__file__).resolve().parent.parent


class Echo:
    def __init__(self, name):
        self.name = name

    def __call__(self, record, index):
        return self.name, record


def test_mix_follows_the_weights_and_is_reproducible():
    mix = MixedTask({"qa": Echo("qa"), "ocr": Echo("ocr")}, {"qa": 0.8, "ocr": 0.2}, seed=3)
    picks = [mix({"context": "c", "question": "q", "answer": "a"}, i) for i in range(2000)]
    share = sum(p[0] == "ocr" for p in picks) / len(picks)
    assert 0.17 < share < 0.23
    assert picks == [mix({"context": "c", "question": "q", "answer": "a"}, i) for i in range(2000)]
    ocr = next(r for n, r in picks if n == "ocr")
    qa = next(r for n, r in picks if n == "qa")
    assert ocr == {"text": "c"} and qa["answer"] == "a"  # QATask itself writes the thinking format


def test_think_answer():
    assert think_answer("42", "six times seven") == "<think>six times seven</think>\n42"
    assert think_answer("<think>x</think> 42") == "<think>x</think> 42"


@pytest.mark.parametrize("loader, key", [({"bogus": 1}, "data.loader.bogus"), ({"tasks": {"ocrr": 1}}, "data.loader.tasks.ocrr"),
                                         ({"tasks": {"ocr": -1}}, "data.loader.tasks.ocr"),
                                         ({"render": "gpu"}, "data.loader.render"), ({"tasks": []}, "data.loader.tasks")])
def test_bad_loader_keys_are_named(loader, key):
    cfg = TrainConfig(stage="cpt")
    cfg.data.loader = loader
    with pytest.raises(TrainConfigError, match=f"^{key}"):
        loader_options(cfg)


@pytest.mark.parametrize("over, key", [
    ("data.loader.window_chars=0", "data.loader.window_chars"), ("data.loader.max_pages=0", "data.loader.max_pages"),
    ("data.loader.max_pages=2.5", "data.loader.max_pages"), ("data.loader.epochs=0", "data.loader.epochs"),
    ("data.loader.epochs=true", "data.loader.epochs"), ("data.loader.shuffle=0", "data.loader.shuffle"),
    ("data.loader.styles=sometimes", "data.loader.styles"), ("data.loader.think=1", "data.loader.think"),
    ("data.eval_loader.window_chars=-3", "data.eval_loader.window_chars"),
    ("data.eval_loader.shuffle=[]", "data.eval_loader.shuffle"),
    ("data.eval_loader.task_options.lm.max_pages=0", "data.eval_loader.task_options.lm.max_pages"),
    ("data.eval_loader.render=gpu", "data.eval_loader.render")])
def test_shared_loader_options_are_checked_and_named(over, key):
    """The shared options are checked as task_options are (a window of 0 characters would make every OCR sample a
    skip), naming the mapping they were given in, before a model loads."""
    from glyph_rt.train.config import load_config

    cfg = load_config("cpt", None, ["model.path=x", over], check_paths=False)
    with pytest.raises(TrainConfigError, match=f"^{key}: "):
        loader_options(cfg, held_out=True)
    with pytest.raises(TrainConfigError, match=f"^{key}: "):
        loader_options(cfg)  # the held-out mapping too: what run() checks before the model loads


def test_good_shared_loader_options_pass():
    from glyph_rt.train.config import load_config

    over = ["data.loader.epochs=null", "data.loader.shuffle=false", "data.loader.styles=no", "data.loader.think=true",
            "data.loader.max_pages=2", "data.loader.window_chars=500", "data.eval_loader.epochs=1"]
    opts = loader_options(load_config("cpt", None, ["model.path=x", *over], check_paths=False), held_out=True)
    assert (opts["epochs"], opts["shuffle"], opts["styles"], opts["max_pages"], opts["window_chars"]) == \
        (1, False, False, 2, 500)


def test_task_options_give_cpt_long_windows_and_ocr_short_ones(tmp_path):
    """cpt's defaults: LM and generation over long windows (the paper's long-context pre-training), OCR over a
    few pages; one option changes by its dotted key; a bad task or option is named."""
    from glyph_rt.train.config import load_config
    from glyph_rt.train.tasks import make_task

    cfg = load_config("cpt", None, ["model.path=x", "data.loader.task_options.lm.max_pages=16"], check_paths=False)
    own = loader_options(cfg)["task_options"]
    assert own == {"lm": {"window_chars": 400000, "max_pages": 16}, "gen": {"window_chars": 400000, "max_pages": 64}}
    lm, ocr = make_task("lm", None, **own["lm"]), make_task("ocr", None)
    assert (lm.window_chars, lm.max_pages, ocr.window_chars, ocr.max_pages) == (400000, 16, 12000, 4)
    for over, key in (("data.loader.task_options.lm.max_span=3", "data.loader.task_options.lm.max_span"),
                      ("data.loader.task_options.chat.max_pages=3", "data.loader.task_options.chat"),
                      ("data.loader.task_options.gen.max_pages=0", "data.loader.task_options.gen.max_pages"),
                      ("data.loader.task_options.lm.max_pages=2.5", "data.loader.task_options.lm.max_pages"),
                      ("data.loader.task_options.gen.backward=1.5", "data.loader.task_options.gen.backward")):
        with pytest.raises(TrainConfigError, match=f"^{key}"):
            loader_options(load_config("cpt", None, ["model.path=x", over], check_paths=False))


def test_rl_records_per_rank_and_resume():
    corpus = [{"text": "\n".join(f"line {i} of text {j}" for i in range(30))} for j in range(5)]
    a, b = RecordStream(corpus, seed=1, rank=0, world=2), RecordStream(corpus, seed=1, rank=1, world=2)
    ra, rb = iter(a), iter(b)
    first = [next(ra) for _ in range(3)]
    assert all({"context", "question", "answer"} <= r.keys() and r["answer"] in r["context"] for r in first)
    assert next(rb) != first[0]
    c = RecordStream(corpus, seed=1, rank=0, world=2)
    c.load_state_dict(a.state_dict())
    assert next(iter(c)) == next(ra)


def test_rl_haystacks_reach_the_texts_last_character():
    text = "\n".join(f"line {i:03d}" for i in range(40))
    stream = RecordStream([{"text": text}], seed=0, window_chars=len(text) - 1)
    contexts = [r["context"] for r in itertools.islice(iter(stream), 40)]
    assert any("line 039" in c for c in contexts)


def test_rl_records_that_make_no_prompt_are_skipped_and_counted():
    good = {"context": "red fox", "question": "What colour?", "answer": "red"}
    corpus = [good, {"context": "x", "question": "q"}, {"content": "no text field"}, "not a dict",
              {"text": "\n".join(f"line {i}" for i in range(30))}]
    stream = RecordStream(corpus, seed=3)
    recs = list(itertools.islice(iter(stream), 4))  # two of each epoch's five records make a prompt
    assert recs.count(good) == 2 and all("answer" in r for r in recs)
    state = stream.state_dict()
    assert 4 < state["pos"] <= 10 and state["skipped"] == state["pos"] - 4
    with pytest.raises(ValueError, match="records in a row made no rl prompt .*needs a non-empty 'text'"):
        next(iter(RecordStream([{"content": "x"}], seed=0)))


def test_rl_records_the_rollout_could_not_run_are_skipped_and_counted(tmp_path):
    """A QA record whose pages and max_new_tokens overflow the model's window, or whose question holds the image
    token, is skipped and counted before its rollout (it would stop the run there)."""
    from glyph_rt.models import GlyphModel
    from glyph_rt.models.tiny import tiny_glm4v_checkpoint
    from glyph_rt.render.config import RenderConfig
    from glyph_rt.render.textio import sample_text
    from glyph_rt.train.data import rollout_check
    from glyph_rt.train.grpo import GlyphRollout

    gm = GlyphModel.from_pretrained(tiny_glm4v_checkpoint(tmp_path, max_positions=512), device="cpu",
                                    render_config=RenderConfig(page_size=(120, 90)))
    good = {"context": sample_text()[:300], "question": "What?", "answer": "x"}
    long = {"context": sample_text()[:20000], "question": "What?", "answer": "x"}
    image = {"context": "red fox", "question": "What is <|image|>?", "answer": "red"}
    stream = RecordStream([good, long, image], seed=0, check=rollout_check(gm, max_new_tokens=16))
    recs = list(itertools.islice(iter(stream), 3))
    assert recs == [good] * 3 and stream.state_dict()["skipped"] == 6
    assert len(GlyphRollout(gm, max_new_tokens=16)(recs[:1], 2)) == 1  # what the check lets through runs
    with pytest.raises(ValueError, match="over the model's 512"):
        GlyphRollout(gm, max_new_tokens=16)([long], 2)


def test_rl_mixes_in_ocr_records_scored_by_the_ocr_reward():
    """data.ocr_ratio in RL: that share of prompts reads a window back (the auxiliary OCR task, as in the paper's RL
    stage), scored by the OCR reward alone whatever the run's rewards; QA prompts keep the run's rewards."""
    from glyph_rt.train.grpo import Group, score_groups
    from glyph_rt.train.rewards import RewardSet

    corpus = [{"text": "\n".join(f"line {i} of text {j}" for i in range(300))} for j in range(5)]
    recs = list(itertools.islice(iter(RecordStream(corpus, seed=2, ocr_ratio=0.3, ocr_chars=200)), 400))
    ocr = [r for r in recs if r.get("task") == "ocr"]
    assert 0.24 < len(ocr) / len(recs) < 0.36
    assert all(r["answer"] == r["context"] and len(r["context"]) <= 200 and r["context"].startswith("line")
               for r in ocr)
    assert recs == list(itertools.islice(iter(RecordStream(corpus, seed=2, ocr_ratio=0.3, ocr_chars=200)), 400))
    qa = next(r for r in recs if "task" not in r)
    groups = [Group(ocr[0], [], None, None, [[1], [2]], [ocr[0]["answer"], "nothing like it"]),
              Group(qa, [], None, None, [[1], [2]], [f"<think>x</think> {qa['answer']}", "<think>x</think> 0"])]
    score_groups(groups, RewardSet({"format": 0.5, "verifiable": 1.0}))
    assert groups[0].rewards[0] == 1.0 and groups[0].rewards[1] < 0.5 and set(groups[0].parts) == {"ocr"}
    assert groups[1].rewards == [1.5, 0.5] and set(groups[1].parts) == {"format", "verifiable"}


@pytest.mark.slow  # ~15-30 s: a checkpoint, 3 steps and 3 evaluations in a fresh interpreter
def test_tiny_ocr_bench_smoke(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "train_tiny_ocr.py"), "--smoke", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "train-tiny-ocr.json").exists() and (tmp_path / "train-tiny-ocr.png").exists()
    assert "held-out CER" in r.stdout


@pytest.mark.slow  # GLM-4.1V vocabulary (151,552) on the CPU, two steps each way: ~30-80 s here
def test_bench_train_quick(tmp_path):
    pytest.importorskip("peft")
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_train.py"), "--quick", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    import json

    row = json.loads((tmp_path / "train-cpu-quick.json").read_text())["rows"][0]
    assert row["tokens"] == 256 and row["visual_tokens"] > 0 and row["text_step_s"] > 0 and row["glyph_step_s"] > 0


def test_rl_ocr_records_whose_pages_miss_glyphs_are_skipped_and_counted():
    """RL's OCR auxiliary records are read back from pages at gm.render_config: one whose pages draw a character
    as a box (no font covers it) is skipped and counted, never an answer the pages do not show."""
    from types import SimpleNamespace

    from glyph_rt.models.prompt import PromptBuilder
    from glyph_rt.models.tiny import tiny_tokenizer
    from glyph_rt.render.config import RenderConfig
    from glyph_rt.train.data import rollout_check
    from glyph_rt.train.tasks import MissingGlyphs

    tok = tiny_tokenizer()
    gm = SimpleNamespace(render_config=RenderConfig(dpi=36, page_size=(300, 260)), vision="glm4v", max_positions=0,
                         prompts=PromptBuilder(tok, tok.convert_tokens_to_ids("<|image|>")))
    check = rollout_check(gm, max_new_tokens=16)
    good = "\n".join(f"line {i} of plain text" for i in range(20))
    check({"task": "ocr", "context": good, "question": "Read it.", "answer": good}, 0)
    bad = good + "\nan unknown \x07 glyph"
    check({"context": bad, "question": "What?", "answer": "x"}, 1)  # QA: the pages need not hold every glyph
    with pytest.raises(MissingGlyphs, match=r"record 2: field 'context': .* 1 characters as boxes .*U\+0007"):
        check({"task": "ocr", "context": bad, "question": "Read it.", "answer": bad}, 2)
    stream = RecordStream([{"text": good}, {"text": bad}], seed=0, ocr_ratio=1.0, ocr_chars=2000, check=check)
    recs = list(itertools.islice(iter(stream), 4))
    assert all(r["answer"] == good for r in recs) and stream.state_dict()["skipped"] == stream.pos - 4 > 0


def test_cpt_default_max_tokens_is_the_papers_128k():
    """cpt's long LM / generation windows can make samples far over 128K tokens at a high dpi: data.max_tokens
    defaults to 131072, so the collator leaves those out and counts them (too_long) rather than training on them."""
    from glyph_rt.train.config import load_config

    cfg = load_config("cpt", None, ["model.path=x"], check_paths=False)
    assert cfg.data.max_tokens == 131072
    assert load_config("cpt", None, ["model.path=x", "data.max_tokens=0"], check_paths=False).data.max_tokens == 0


def test_cpt_samples_over_max_tokens_are_left_out_and_counted(tmp_path):
    """cpt's data with its default packing (data.max_tokens > 0) on a tiny GLM-4.1V: a sample longer than
    max_tokens is left out of its micro-batch and counted (too_long, among skipped); the loader goes on."""
    from glyph_rt.models import GlyphModel
    from glyph_rt.models.tiny import tiny_glm4v_checkpoint
    from glyph_rt.render.textio import sample_text
    from glyph_rt.train.config import load_config
    from glyph_rt.train.data import build_data

    (tmp_path / "doc.txt").write_text(sample_text()[:20000])
    gm = GlyphModel.from_pretrained(tiny_glm4v_checkpoint(tmp_path / "ckpt"), device="cpu")
    short = {"window_chars": 3000, "max_pages": 2}
    got = {}
    for limit in (None, 680):
        cfg = load_config("cpt", None, ["model.path=x"] + ([f"data.max_tokens={limit}"] if limit else []),
                          check_paths=False)
        cfg.data.loader = {**cfg.data.loader, "corpus": [str(tmp_path / "doc.txt")], "styles": False,
                           "max_pages": 1, "window_chars": 1500, "task_options": {"lm": short, "gen": short}}
        data = build_data(cfg, gm, 0, 1)
        assert data.collator.mode == "pack" and data.collator.max_length == (limit or 131072)
        assert {t.max_tokens for t in data.dataset.task.tasks.values()} == {limit or 131072}  # the tasks' page budget
        got[limit] = [b["input_ids"].shape[1] for b in itertools.islice(iter(data), 6)], data.state_dict()
    (full, state), (kept, cut) = got[None], got[680]
    assert state["too_long"] == 0 and max(full) > 680
    assert len(kept) == 6 and max(kept) <= 680 and cut["too_long"] == cut["skipped"] > 0


@pytest.fixture
def machine_fonts(monkeypatch):
    """machine_fonts(paths): a StyleSampler (seed 0, default parameters) on a machine whose installed fonts are
    `paths` (the bundled ones beside them); the font pool cache is cleared before and after."""
    from glyph_rt.train import styles

    def sampler(paths):
        monkeypatch.setattr(styles, "system_fonts", lambda: [(str(f), [(0x20, 0x7E)]) for f in paths])
        styles.build_font_pool.cache_clear()
        return styles.StyleSampler(seed=0)

    yield sampler
    styles.build_font_pool.cache_clear()


def font_copies(tmp_path, name="ExtraSans-Regular.ttf"):
    """The same font file (a copy of a bundled one, under a name of its own) in two directories: one font installed
    on two machines."""
    import shutil

    from glyph_rt.render.fonts import BUILTIN_FONTS

    out = []
    for d in ("machine_a", "machine_b"):
        (tmp_path / d).mkdir()
        out.append(shutil.copy(BUILTIN_FONTS["sans"], tmp_path / d / name))
    return out


def test_the_loader_state_holds_the_font_pool_and_a_resume_under_other_fonts_warns(tmp_path, machine_fonts):
    """The style draws depend on the machine's installed fonts: the data engine's loader keeps the key of its styles
    (parameters and font pool, by file name and size) in its state, and a resume whose pool differs warns; the same
    fonts elsewhere give the same key, and a state from before the key resumes without a word."""
    import warnings

    from glyph_rt.train.data import StageLoader
    from glyph_rt.train.loader import TaskDataset

    def loader(fonts):
        return StageLoader(TaskDataset([{"text": "x"}], Echo("ocr")), None, 1, styles=machine_fonts(fonts))

    a, b = font_copies(tmp_path)
    state = loader([]).state_dict()
    assert state["styles"] and state["fonts"]
    other = loader([a])
    assert other.state_dict()["fonts"] != state["fonts"] and other.state_dict()["styles"] != state["styles"]
    assert loader([b]).state_dict()["styles"] == other.state_dict()["styles"]  # the same font on another machine
    with pytest.warns(UserWarning, match="other styles than this run's .*the style sampler's font pool differs"):
        other.load_state_dict(state)
    assert other.consumed == state["consumed"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loader([]).load_state_dict(state)
        other.load_state_dict({k: v for k, v in state.items() if k not in ("styles", "fonts")})
    assert StageLoader(TaskDataset([{"text": "x"}], Echo("ocr")), None, 1).state_dict()["styles"] is None


def test_make_data_refuses_to_go_on_under_another_font_pool(tmp_path, machine_fonts):
    """make-data's saved arguments hold the styles' key with the font pool: a rerun on a machine with other fonts is
    refused, naming the font pool, rather than mixing two distributions in one directory."""
    from glyph_rt.train.export import make_data

    (tmp_path / "doc.txt").write_text("A short line of text to render.\n" * 3)
    a, _ = font_copies(tmp_path)
    args = dict(inputs=[str(tmp_path / "doc.txt")], num_samples=1, max_pages=1, progress=False)
    make_data("ocr", tmp_path / "out", styles=machine_fonts([]), **args)
    assert make_data("ocr", tmp_path / "out", styles=machine_fonts([]), **args)["kept"] == 1
    with pytest.raises(ValueError, match="other arguments \\(styles, fonts.*the style sampler's font pool differs"):
        make_data("ocr", tmp_path / "out", styles=machine_fonts([a]), **args)


def test_a_dotted_task_weight_changes_one_weight_of_the_stage_mix():
    """data.loader.tasks.ocr=0.5 weighs OCR down within cpt's mix (the stage YAML holds the mix, so the override
    merges into it as grpo.rewards.x does, and --print-config shows it); it used to leave OCR alone in the mix."""
    from glyph_rt.train.config import load_config

    cpt = load_config("cpt", None, ["model.path=x", "data.loader.tasks.ocr=0.5"], check_paths=False)
    assert loader_options(cpt)["tasks"] == {"ocr": 0.5, "lm": 1.0, "gen": 1.0}
    assert "tasks:\n      ocr: 0.5\n      lm: 1.0\n      gen: 1.0" in cpt.to_yaml()
    sft = load_config("sft", None, ["model.path=x", "data.ocr_ratio=0", "data.loader.tasks.ocr=0.25"],
                      check_paths=False)
    assert loader_options(sft)["tasks"] == {"qa": 1.0, "ocr": 0.25}
    assert load_config("sft", None, ["model.path=x"], check_paths=False).data.loader["tasks"] == {"qa": 1.0}
    whole = load_config("cpt", None, ["model.path=x", "data.loader={styles: false}"], check_paths=False)
    assert loader_options(whole)["tasks"] == {"ocr": 1.0, "lm": 1.0, "gen": 1.0}  # a whole loader: the defaults


def test_held_out_keys_change_the_training_mix_weight_by_weight():
    """data.eval_loader holds what the held-out data changes: a dotted data.eval_loader.tasks.ocr=0.5 weighs OCR down
    in cpt's whole mix (it used to build a mix of OCR alone), task_options merge option by option, and a held-out
    mix whose every weight ends at 0 is refused."""
    from glyph_rt.train.config import load_config

    def held(*over):
        return loader_options(load_config("cpt", None, ["model.path=x", *over], check_paths=False), held_out=True)

    assert held("data.eval_loader.tasks.ocr=0.5")["tasks"] == {"ocr": 0.5, "lm": 1.0, "gen": 1.0}
    assert held("data.eval_loader.tasks={lm: 0, gen: 0}")["tasks"] == {"ocr": 1.0, "lm": 0, "gen": 0}
    opts = held("data.loader.task_options.lm.window_chars=500", "data.eval_loader.task_options.lm.max_pages=2")
    assert opts["task_options"]["lm"] == {"window_chars": 500, "max_pages": 2}
    assert opts["task_options"]["gen"] == {"window_chars": 400000, "max_pages": 64}
    train = loader_options(load_config("cpt", None, ["model.path=x", "data.eval_loader.tasks.ocr=0"],
                                       check_paths=False))
    assert train["tasks"] == {"ocr": 1.0, "lm": 1.0, "gen": 1.0}  # the training mix is the training mix
    with pytest.raises(TrainConfigError, match="^data.eval_loader.tasks: every weight is 0"):
        held("data.loader.tasks={ocr: 1}", "data.eval_loader.tasks={ocr: 0}")


def test_text_files_are_cut_into_records_that_hold_the_longest_window(tmp_path, ckpt):
    """A plain-text corpus file is cut into records at least as long as the stage's longest window (cpt's 400,000
    characters; it used to be 50,000 whatever the window); data.loader.max_chars sets it, and one below a window
    warns."""
    from glyph_rt.models import GlyphModel
    from glyph_rt.train.config import load_config
    from glyph_rt.train.data import build_data

    book = tmp_path / "book.txt"
    book.write_text("\n\n".join(f"Paragraph {i}. " + "word " * 80 for i in range(1500)))  # ~630,000 characters
    gm = GlyphModel.from_pretrained(ckpt, device="cpu")
    got = {}
    for extra in ([], ["data.loader.max_chars=100000"]):
        cfg = load_config("cpt", None, ["model.path=x", f"data.loader.corpus={book}", *extra], check_paths=False)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            corpus = build_data(cfg, gm, 0, 1).dataset.corpus
        got[bool(extra)] = max(len(corpus[i]["text"]) for i in range(len(corpus))), [str(x.message) for x in w]
    (default, quiet), (cut, warned) = got[False], got[True]
    assert 200000 < default <= 400000 and not any("max_chars" in m for m in quiet)
    assert cut <= 100000 and any(m.startswith("data.loader.max_chars=100000 cuts") and "lm's 400000" in m
                                 for m in warned)
    with pytest.raises(TrainConfigError, match="^data.loader.max_chars"):
        loader_options(load_config("cpt", None, ["model.path=x", "data.loader.max_chars=0"], check_paths=False))


def test_rl_takes_a_numeric_answer_as_its_text():
    """A QA record's numeric answer ("answer": 1900) is an RL prompt whose answer is "1900" (the rewards read a
    number so), not a skipped record; a boolean is still no answer."""
    corpus = [{"context": "It was 1900.", "question": "When?", "answer": 1900},
              {"context": "It was 2.5 m.", "question": "How long?", "answer": 2.5},
              {"context": "x", "question": "q", "answer": True}]
    stream = RecordStream(corpus, seed=0, epochs=1, shuffle=False)
    assert [r["answer"] for r in stream] == ["1900", "2.5"] and stream.skipped == 1
    assert corpus[0]["answer"] == 1900  # the corpus's record is left as it is


def test_rl_ocr_answers_are_what_the_pages_show():
    """RL's OCR records are scored against the text their pages show at the rollout's render config (ocr_target,
    as SFT's OCR targets): CRLF line ends as LF, soft hyphens and zero-width spaces left out. A transcription of the
    pages scores 1; it scored 0.87-0.96 against the raw window."""
    from types import SimpleNamespace

    from glyph_rt.models.prompt import PromptBuilder
    from glyph_rt.models.tiny import tiny_tokenizer
    from glyph_rt.render.config import RenderConfig
    from glyph_rt.render.pages import Document
    from glyph_rt.train.data import rollout_check
    from glyph_rt.train.rewards import ocr_reward
    from glyph_rt.train.tasks import ocr_target

    tok = tiny_tokenizer()
    cfg = RenderConfig(dpi=36, page_size=(600, 800))
    gm = SimpleNamespace(render_config=cfg, vision="glm4v", max_positions=0,
                         prompts=PromptBuilder(tok, tok.convert_tokens_to_ids("<|image|>")))
    texts = ["The quick brown fox\r\njumps over the lazy dog.\r\nA second line here.\r\n" * 8,
             "super\u00adcali\u00adfragi\u00adlistic\u200bexpi\u00adali\u00addocious words. " * 10]
    stream = RecordStream([{"text": t} for t in texts], seed=0, ocr_ratio=1.0, ocr_chars=1500, epochs=1,
                          shuffle=False, check=rollout_check(gm, max_new_tokens=16))
    recs = list(stream)
    assert len(recs) == 2
    for rec in recs:
        doc = Document(rec["context"], cfg)
        spans = doc.page_spans()
        shown = ocr_target(rec["context"], doc, spans[0][0], spans[-1][1], doc.num_pages)
        assert rec["answer"] == shown != rec["context"] and "\r" not in shown and "\u00ad" not in shown
        assert ocr_reward([shown], [rec["answer"]]) == [1.0]


def test_rl_records_honour_epochs_and_shuffle_and_resume_exactly():
    """data.loader.epochs and shuffle in RL: epochs=N ends this rank's records after its share of N passes (it used
    to stream forever), shuffle=false keeps the corpus order; a resume goes on at the next record."""
    corpus = [{"context": f"item {i}", "question": f"q{i}", "answer": "a"} for i in range(5)]
    plain = RecordStream(corpus, seed=0, epochs=2, shuffle=False)
    assert [r["question"] for r in plain] == [f"q{i}" for i in range(5)] * 2
    mixed = [r["question"] for r in RecordStream(corpus, seed=0, epochs=1)]
    assert sorted(mixed) == [f"q{i}" for i in range(5)] and mixed != [f"q{i}" for i in range(5)]
    ranks = [[r["question"] for r in RecordStream(corpus, seed=0, rank=k, world=2, epochs=1, shuffle=False)]
             for k in range(2)]
    assert ranks == [["q0", "q2"], ["q1", "q3"]]  # an equal share each
    a = RecordStream(corpus, seed=3, epochs=2)
    it = iter(a)
    head = [next(it)["question"] for _ in range(4)]
    b = RecordStream(corpus, seed=3, epochs=2)
    b.load_state_dict(a.state_dict())
    assert head + [r["question"] for r in b] == [r["question"] for r in RecordStream(corpus, seed=3, epochs=2)]


@pytest.mark.parametrize("over, key", [
    ("data.loader.max_pages=1", "data.loader.max_pages"), ("data.loader.styles=false", "data.loader.styles"),
    ("data.loader.render=batch", "data.loader.render"), ("data.loader.think=true", "data.loader.think"),
    ("data.loader.task_options.qa.max_pages=2", "data.loader.task_options"), ("data.max_tokens=64", "data.max_tokens"),
    ("data.loss_weights={qa: 2}", "data.loss_weights"), ("data.workers=2", "data.workers"),
    ("data.eval_loader.corpus=x", "data.eval_loader")])
def test_rl_refuses_the_data_keys_it_would_ignore(over, key):
    from glyph_rt.train.config import load_config

    with pytest.raises(TrainConfigError, match=f"^{key}: .*remove it"):
        load_config("rl", None, ["model.path=x", over], check_paths=False)
    ok = load_config("rl", None, ["model.path=x", "data.loader={corpus: x, text_field: t, window_chars: 900, "
                                  "max_chars: 90000, epochs: 2, shuffle: false}"], check_paths=False)
    assert loader_options(ok)["epochs"] == 2


def test_numbers_in_scientific_notation_and_a_negative_seed():
    """YAML 1.1 leaves 1e-1, 95e-2 and 1e3 as strings: task_options' numbers, optim.betas and whole-number settings
    take them (a whole number only when whole); seed=-1 is named before the data's generators refuse it."""
    from glyph_rt.train.config import load_config

    def cfg(stage, *over):
        return load_config(stage, None, ["model.path=x", *over], check_paths=False)

    c = cfg("cpt", "data.loader.task_options.gen.backward=1e-1", "data.loader.task_options.lm.window_chars=4e5",
            "data.loader.max_pages=2e0", "steps=1e3", "optim.betas=[0.9, 95e-2]", "seed=7E0")
    own = loader_options(c)["task_options"]
    assert own["gen"]["backward"] == 0.1 and own["lm"]["window_chars"] == 400000
    assert isinstance(own["lm"]["window_chars"], int) and loader_options(c)["max_pages"] == 2
    assert (c.steps, c.optim.betas, c.seed) == (1000, [0.9, 0.95], 7)
    for over, key in (("steps=1.5e0", "steps"), ("data.loader.task_options.lm.max_pages=25e-1",
                                                  "data.loader.task_options.lm.max_pages"),
                      ("optim.betas=[0.9, 1e0]", "optim.betas"), ("seed=-1", "seed")):
        with pytest.raises(TrainConfigError, match=f"^{key}: "):
            loader_options(cfg("cpt", over))
