"""GlyphModel on a tiny random-weight GLM-4.1V checkpoint saved to disk and loaded back offline."""
import json
import shutil
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from glyph_rt.models.tiny import tiny_glm4v_checkpoint
from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil
from transformers.models.glm4v.processing_glm4v import Glm4vProcessor

import glyph_rt
from glyph_rt import RenderConfig
from glyph_rt.models import GlyphModel
from glyph_rt.render.textio import sample_text

from conftest import EXACT  # fp32 on the test device: answers compared token for token

CFG = RenderConfig(page_size=(120, 90))
CONTEXTS = [sample_text()[:500], sample_text()[2000:2200]]
QUESTIONS = ["What does the license allow?", "Who may copy it?"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_glm4v_checkpoint(tmp_path_factory.mktemp("glm4v"))


@pytest.fixture(scope="module")
def models(checkpoint):
    return (GlyphModel.from_pretrained(checkpoint, render_config=CFG, **EXACT),
            GlyphModel.from_pretrained(checkpoint, render_config=CFG, kernels="off", **EXACT))


class Script:
    """A logits processor forcing row b's i-th new token to rows[b][i] (its last one from then on)."""

    def __init__(self, *rows):
        self.rows, self.start = rows, None

    def __call__(self, input_ids, scores):
        self.start = input_ids.shape[1] if self.start is None else self.start
        i = input_ids.shape[1] - self.start
        forced = torch.full_like(scores, -float("inf"))
        for b, row in enumerate(self.rows):
            forced[b, row[min(i, len(row) - 1)]] = 0
        return forced


def hf_inputs(model: GlyphModel):
    """What the Hugging Face pipeline builds for the same pages: its image processor, the checkpoint's chat
    template, and Glm4vProcessor's own rule for expanding each image placeholder."""
    images, texts = [], []
    proc = Glm4vImageProcessorPil()
    for context, question in zip(CONTEXTS, QUESTIONS):
        pages = glyph_rt.render(context, CFG)
        imgs = [pages.to_pil(i) for i in range(len(pages))]
        grid = proc(imgs, return_tensors="pt")["image_grid_thw"]
        fake = SimpleNamespace(image_processor=SimpleNamespace(merge_size=2), image_token="<|image|>")
        parts = model.prompts.template(model.prompts.messages(len(imgs), question), True).split("<|image|>")
        text = parts[0] + "".join(Glm4vProcessor.replace_image_token(fake, {"image_grid_thw": grid}, i) + parts[i + 1]
                                  for i in range(len(imgs)))
        texts.append(text)
        images += imgs
    enc = model.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    px = proc(images, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"], px["pixel_values"], px["image_grid_thw"]


def test_inputs_equal_the_hugging_face_pipeline(models):
    ours, _ = models
    inputs, rendered, _ = ours.build_inputs(CONTEXTS, QUESTIONS)
    ids, mask, pv, grid = hf_inputs(ours)
    assert torch.equal(inputs["input_ids"].cpu(), ids) and torch.equal(inputs["attention_mask"].cpu(), mask)
    assert torch.equal(inputs["image_grid_thw"].cpu(), grid)
    assert np.array_equal(inputs["pixel_values"].float().cpu().numpy(), pv.numpy())
    assert torch.equal(inputs["mm_token_type_ids"], (inputs["input_ids"] == ours.image_token_id).long())
    assert rendered.images_per_text == [len(glyph_rt.render(c, CFG)) for c in CONTEXTS]


def test_generation_is_the_same_with_kernels_on_and_off(models):
    on, off = models
    a = on.generate(CONTEXTS, QUESTIONS, max_new_tokens=6)
    b = off.generate(CONTEXTS, QUESTIONS, max_new_tokens=6)
    assert [x.token_ids for x in a] == [x.token_ids for x in b]
    inputs, _, _ = on.build_inputs(CONTEXTS, QUESTIONS)
    valid = inputs["attention_mask"].bool()
    with torch.no_grad():
        torch.testing.assert_close(on.model(**inputs).logits[valid], off.model(**inputs).logits[valid],
                                   rtol=1e-4, atol=1e-4)
    for ans, context in zip(a, CONTEXTS):
        assert ans.pages >= 1 and ans.visual_tokens > 0 and ans.prompt_tokens > ans.visual_tokens
        assert ans.text_tokens == len(on.tokenizer(context, add_special_tokens=False)["input_ids"])
        assert set(ans.timings) == {"render", "vision", "prefill", "decode"} and ans.timings["vision"] > 0
    assert type(on.model.model.visual.patch_embed).__name__.startswith("Glyph")
    assert not type(off.model.model.visual.patch_embed).__name__.startswith("Glyph")


def test_generate_takes_one_question_for_many_contexts_and_the_callers_processors(models):
    from transformers import LogitsProcessor, LogitsProcessorList

    on, _ = models
    one = on.generate(CONTEXTS, QUESTIONS[0], max_new_tokens=3)
    assert [a.token_ids for a in one] == [a.token_ids for a in on.generate(CONTEXTS, QUESTIONS[:1] * 2,
                                                                         max_new_tokens=3)]

    class Force(LogitsProcessor):
        def __call__(self, input_ids, scores):
            forced = torch.full_like(scores, -float("inf"))
            forced[:, 7] = 0
            return forced

    forced = on.generate(CONTEXTS[:1], QUESTIONS[:1], max_new_tokens=3,
                         logits_processor=LogitsProcessorList([Force()]))
    assert forced[0].token_ids == [7, 7, 7] and forced[0].timings["decode"] >= 0
    with pytest.raises(ValueError, match="num_return_sequences=2: .*one answer per context"):
        on.generate(CONTEXTS, QUESTIONS, max_new_tokens=2, num_beams=2, num_return_sequences=2)
    from transformers import GenerationConfig

    with pytest.raises(ValueError, match="num_return_sequences=3"):
        on.generate(CONTEXTS, QUESTIONS, max_new_tokens=2,
                    generation_config=GenerationConfig(num_beams=3, num_return_sequences=3))


def test_max_new_tokens_comes_from_the_keyword_then_the_generation_configs_then_128(models, monkeypatch):
    from transformers import GenerationConfig

    on, _ = models

    def count(**kwargs):  # a forced token that is no stop: each answer is as long as its limit
        return len(on.generate(CONTEXTS[0], QUESTIONS[0], logits_processor=[Script([12])], **kwargs)[0].token_ids)

    assert count(generation_config=GenerationConfig(max_new_tokens=3)) == 3
    assert count(generation_config=GenerationConfig(max_new_tokens=3), max_new_tokens=2) == 2
    monkeypatch.setattr(on.model.generation_config, "max_new_tokens", 4)
    assert count() == 4
    assert count(generation_config=GenerationConfig(max_new_tokens=3)) == 3
    with pytest.raises(ValueError, match="the prompt and 100000 new tokens"):  # the window is checked for that limit
        count(generation_config=GenerationConfig(max_new_tokens=100_000))


def test_generate_takes_hugging_face_generate_options(models):
    """A cache the caller asks for (or none) replaces the GlyphCache; return_dict_in_generate and stop_strings work."""
    from transformers import GenerationConfig

    on, _ = models
    want = [a.token_ids for a in on.generate(CONTEXTS, QUESTIONS, max_new_tokens=3)]
    for kwargs in (dict(cache_implementation="static"), dict(use_cache=False), dict(return_dict_in_generate=True),
                   dict(generation_config=GenerationConfig(cache_implementation="static", return_dict_in_generate=True,
                                                           output_scores=True))):
        assert [a.token_ids for a in on.generate(CONTEXTS, QUESTIONS, max_new_tokens=3, **kwargs)] == want, kwargs
    # row 0 writes "#!" and stops on the stop string; row 1 goes on; transformers pads row 0 with pad_token_id 13
    a, b = on.generate(CONTEXTS, QUESTIONS, max_new_tokens=4, stop_strings=["!"], pad_token_id=13,
                       logits_processor=[Script([14, 12], [14])])
    assert (a.token_ids, a.text, b.token_ids) == ([14, 12], "#!", [14] * 4)


def test_answers_end_before_the_first_stop_id_without_padding(models, monkeypatch):
    """transformers pads a finished row with the generation config's pad id, or eos_token_id[0] when it has none;
    neither need be the tokenizer's pad token. An answer ends before its first stop id, as the serving engine's."""
    on, _ = models
    monkeypatch.setattr(on.model.generation_config, "eos_token_id", [15, 0])
    monkeypatch.setattr(on.model.generation_config, "pad_token_id", None)
    a, b = on.generate(CONTEXTS, QUESTIONS, max_new_tokens=4, logits_processor=[Script([14, 15], [14, 14, 0])])
    assert (a.token_ids, b.token_ids) == ([14], [14, 14])
    c, d = on.generate(CONTEXTS, QUESTIONS, max_new_tokens=4, eos_token_id=16, pad_token_id=17,
                       logits_processor=[Script([14, 16, 15], [17, 14])])
    assert (c.token_ids, d.token_ids) == ([14], [17, 14, 14, 14])  # a row keeps what it generated before its stop


def test_a_model_built_directly_pads_on_the_left(models, checkpoint):
    from transformers import AutoTokenizer

    on, _ = models
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    tokenizer.padding_side = "right"
    gm = GlyphModel(on.model, tokenizer, CFG.validate(), "glm4v")
    got, _, _ = gm.build_inputs(CONTEXTS, QUESTIONS)
    want, _, _ = on.build_inputs(CONTEXTS, QUESTIONS)
    assert not want["attention_mask"].all() and bool(want["attention_mask"][:, -1].all())  # some left padding
    assert torch.equal(got["input_ids"], want["input_ids"]) and torch.equal(got["attention_mask"], want["attention_mask"])
    assert tokenizer.padding_side == "right"  # the caller's tokenizer is left as it was


def test_generate_refuses_an_empty_or_missing_batch_naming_the_argument(models):
    on, _ = models
    for contexts, questions in (([], []), ([], "q")):
        with pytest.raises(ValueError, match="contexts is empty"):
            on.generate(contexts, questions)
    with pytest.raises(TypeError, match="questions: expected a str or a list of str, got NoneType"):
        on.generate(["abc"], None)
    with pytest.raises(TypeError, match="contexts: expected a str or a list of str, got int"):
        on.generate(3, "q")


def test_a_chat_template_in_chat_template_json(checkpoint, models, tmp_path):
    """A processor's chat_template.json, which AutoTokenizer does not read, gives the tokenizer its template."""
    _, off = models
    ckpt = tmp_path / "ckpt"
    shutil.copytree(checkpoint, ckpt)
    template = (ckpt / "chat_template.jinja").read_text(encoding="utf-8")
    (ckpt / "chat_template.jinja").unlink()
    assert "chat_template" not in json.loads((ckpt / "tokenizer_config.json").read_text())
    (ckpt / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    gm = GlyphModel.from_pretrained(ckpt, render_config=CFG, kernels="off", **EXACT)
    assert gm.tokenizer.chat_template == template
    assert torch.equal(gm.build_inputs(CONTEXTS, QUESTIONS)[0]["input_ids"],
                       off.build_inputs(CONTEXTS, QUESTIONS)[0]["input_ids"])
    (ckpt / "chat_template.json").write_text(json.dumps({"template": template}))
    with pytest.raises(ValueError, match='chat_template.json: has no "chat_template" string'):
        GlyphModel.from_pretrained(ckpt, render_config=CFG, kernels="off", **EXACT)


@pytest.mark.filterwarnings("error::DeprecationWarning", "error::FutureWarning")
def test_generate_uses_no_deprecated_transformers_arguments(models):
    for model in models:  # kernels on (a GlyphCache is passed) and off
        model.generate(CONTEXTS[:1], QUESTIONS[:1], max_new_tokens=2)


def test_clear_errors(checkpoint, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(checkpoint, partial)
    (partial / "model.safetensors").unlink()
    (partial / "preprocessor_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="missing weights .*preprocessor_config.json"):
        GlyphModel.from_pretrained(partial)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        GlyphModel.from_pretrained(tmp_path / "nowhere")
    other = tmp_path / "other"
    shutil.copytree(checkpoint, other)
    cfg = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**cfg["text_config"], "model_type": "glm4"}))
    with pytest.raises(ValueError, match="model type 'glm4' .* is not supported"):
        GlyphModel.from_pretrained(other)
    broken = tmp_path / "broken"
    shutil.copytree(checkpoint, broken)
    assert (broken / "generation_config.json").exists()
    (broken / "generation_config.json").write_text('{"eos_token_id": [1, 2')  # transformers would use its defaults
    with pytest.raises(ValueError, match="generation_config.json: not a valid JSON file"):
        GlyphModel.from_pretrained(broken)


def test_a_context_over_the_window_says_by_how_much(tmp_path):
    small = GlyphModel.from_pretrained(tiny_glm4v_checkpoint(tmp_path / "small", max_positions=96), render_config=CFG,
                                       **EXACT)
    with pytest.raises(ValueError, match=r"over the model's 96 by \d+; render denser pages"):
        small.generate(sample_text()[:600], "What is this?", max_new_tokens=4)  # 8 pages: drawn, then refused


def test_a_context_whose_pages_cannot_fit_is_refused_before_any_page_is_drawn(tmp_path, monkeypatch):
    """Every page is at least the vision model's min_pixels (GLM-4.1V: 8 visual tokens or more): a context that lays
    out to more pages than the window holds at 8 tokens each is refused from its layout, before pixel_values fill
    memory."""
    import importlib

    gpu = importlib.import_module("glyph_rt.render.gpu")
    small = GlyphModel.from_pretrained(tiny_glm4v_checkpoint(tmp_path / "small", max_positions=96), render_config=CFG,
                                       **EXACT)
    monkeypatch.setattr(gpu, "render_inputs", lambda *a, **k: pytest.fail("pages were drawn"))
    with pytest.raises(ValueError, match=r"^contexts\[1\]: lays out to at least 13 pages of at least 8 visual "
                                         r"tokens each, over the model's 96 positions; render denser pages"):
        small.generate(["short", sample_text() * 3], "What is this?", max_new_tokens=4)


def test_cli_generate(checkpoint, tmp_path, capsys):
    from glyph_rt.cli import main

    ctx = tmp_path / "context.txt"
    ctx.write_text(CONTEXTS[0], encoding="utf-8")
    assert main(["generate", "--model", str(checkpoint), "--context", str(ctx), "--question", QUESTIONS[0],
                 "--max-new-tokens", "3", "--device", "cpu"]) == 0
    out = capsys.readouterr()
    assert out.out.strip() and "visual tokens for a context of" in out.err and "decode" in out.err
    assert main(["generate", "--model", str(tmp_path / "none"), "--context", str(ctx), "--question", "q"]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_cli_make_tiny_checkpoint_then_generate(tmp_path, capsys):
    from glyph_rt.cli import main

    ckpt = tmp_path / "tiny"
    assert main(["make-tiny-checkpoint", str(ckpt)]) == 0
    assert "tiny random-weight glm4v checkpoint" in capsys.readouterr().out
    assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"} <= {
        p.name for p in ckpt.iterdir()}
    ctx = tmp_path / "context.txt"
    ctx.write_text(CONTEXTS[1], encoding="utf-8")
    assert main(["generate", "--model", str(ckpt), "--context", str(ctx), "--question", "Who?",
                 "--max-new-tokens", "2", "--device", "cpu"]) == 0
    assert "visual tokens for a context of" in capsys.readouterr().err
    assert main(["make-tiny-checkpoint", str(ckpt)]) == 2  # never overwrites
    assert "is not empty" in capsys.readouterr().err
    assert main(["make-tiny-checkpoint", str(ctx)]) == 2
    assert "is a file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["make-tiny-checkpoint", str(tmp_path / "x"), "--model", "llama"])


def test_cli_make_tiny_checkpoint_without_transformers(tmp_path, capsys, monkeypatch):
    from glyph_rt.cli import main

    monkeypatch.setitem(sys.modules, "glyph_rt.models.tiny", None)  # as if transformers were missing
    assert main(["make-tiny-checkpoint", str(tmp_path / "t")]) == 2
    assert "pip install 'glyph_rt[models]'" in capsys.readouterr().err and not (tmp_path / "t").exists()


def test_qwen2_5_vl_checkpoint(tmp_path):
    from glyph_rt.models.tiny import tiny_qwen2_5_vl_checkpoint
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    path = tiny_qwen2_5_vl_checkpoint(tmp_path / "qwen")
    on = GlyphModel.from_pretrained(path, render_config=CFG, **EXACT)
    off = GlyphModel.from_pretrained(path, render_config=CFG, kernels="off", **EXACT)
    assert on.model_type == "qwen2_5_vl" and on.image_token == "<|image_pad|>"
    inputs, rendered, _ = on.build_inputs(CONTEXTS[:1], QUESTIONS[:1])
    pages = glyph_rt.render(CONTEXTS[0], CFG)
    hf = Qwen2VLImageProcessorPil.from_pretrained(path)([pages.to_pil(i) for i in range(len(pages))],
                                                        return_tensors="pt")
    assert torch.equal(inputs["image_grid_thw"].cpu(), hf["image_grid_thw"])
    assert torch.equal(inputs["pixel_values"].cpu(), hf["pixel_values"])
    assert int((inputs["input_ids"] == on.image_token_id).sum()) == int(hf["image_grid_thw"].prod(1).sum() // 4)
    a = on.generate(CONTEXTS, QUESTIONS, max_new_tokens=5)
    b = off.generate(CONTEXTS, QUESTIONS, max_new_tokens=5)
    assert [x.token_ids for x in a] == [x.token_ids for x in b]


def test_pages_get_the_grids_of_the_checkpoints_own_resize_limits(checkpoint, tmp_path):
    """A checkpoint's processor may resize within other limits than the class default (GLM checkpoints
    typically use 12544..9633792): glyph_rt resizes within the checkpoint's, as its processor does."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(checkpoint, ckpt)
    limits = {"shortest_edge": 112 * 112, "longest_edge": 2 * 28 * 28 * 100}
    Glm4vImageProcessorPil(size=limits).save_pretrained(ckpt)
    cfg = RenderConfig(page_size=(120, 90), dpi=300)  # 448 x 364 pages: over the checkpoint's 78,400 pixels a frame
    gm = GlyphModel.from_pretrained(ckpt, render_config=cfg, **EXACT)
    assert (gm.vision.min_pixels, gm.vision.max_pixels) == (112 * 112, 2 * 28 * 28 * 100)
    inputs, rendered, _ = gm.build_inputs(CONTEXTS[:1], QUESTIONS[:1])
    pages = glyph_rt.render(CONTEXTS[0], cfg)
    imgs = [pages.to_pil(i) for i in range(len(pages))]
    hf = Glm4vImageProcessorPil.from_pretrained(ckpt)(imgs, return_tensors="pt")
    assert torch.equal(inputs["image_grid_thw"].cpu(), hf["image_grid_thw"])
    assert np.array_equal(inputs["pixel_values"].float().cpu().numpy(), hf["pixel_values"].numpy())
    default = Glm4vImageProcessorPil()(imgs, return_tensors="pt")["image_grid_thw"]
    assert int(hf["image_grid_thw"].prod(1).sum()) < int(default.prod(1).sum())  # the limits mattered
    assert rendered.visual_tokens == [int(hf["image_grid_thw"].prod(1).sum()) // 4]


def test_check_processor_reads_the_resize_limits(tmp_path):
    from glyph_rt.models.glyph_model import check_processor
    from glyph_rt.render.tokens import VISION_MODELS

    p = tmp_path / "preprocessor_config.json"
    p.write_text(json.dumps({"patch_size": 14}))
    assert check_processor(p, "glm4v") == VISION_MODELS["glm4v"]  # the class defaults
    p.write_text(json.dumps({"size": {"shortest_edge": 12544, "longest_edge": 9633792}}))
    assert (check_processor(p, "glm4v").min_pixels, check_processor(p, "glm4v").max_pixels) == (12544, 9633792)
    # Qwen2-VL's processor lets the older keys override `size`; GLM-4.1V's reads `size` only
    p.write_text(json.dumps({"size": {"shortest_edge": 3136, "longest_edge": 12845056}, "max_pixels": 1003520}))
    assert check_processor(p, "qwen2_5_vl").max_pixels == 1003520
    assert check_processor(p, "glm4v").max_pixels == 12845056
    # no limits in the file: the Hugging Face processor class's own (Qwen2VLImageProcessor's max is 28 * 28 * 1280,
    # not the 12,845,056 of Qwen2.5-VL checkpoints)
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    p.write_text(json.dumps({"patch_size": 14}))
    for model_type, cls in (("qwen2_5_vl", Qwen2VLImageProcessorPil), ("glm4v", Glm4vImageProcessorPil)):
        hf = cls.from_pretrained(tmp_path).size
        got = check_processor(p, model_type)
        assert (got.min_pixels, got.max_pixels) == (hf.shortest_edge, hf.longest_edge), model_type
    assert check_processor(p, "qwen2_5_vl").max_pixels == 28 * 28 * 1280 != VISION_MODELS["qwen2_5_vl"].max_pixels
    p.write_text(json.dumps({"max_pixels": 2_000_000}))
    assert (check_processor(p, "qwen2_5_vl").min_pixels, check_processor(p, "qwen2_5_vl").max_pixels) == (56 * 56,
                                                                                                          2_000_000)
    for bad in ({"size": {"shortest_edge": 0, "longest_edge": 100}}, {"size": {"shortest_edge": 900, "longest_edge": 100}},
                {"size": {"shortest_edge": "a", "longest_edge": 100}}):
        p.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match="resize limits are not usable"):
            check_processor(p, "glm4v")


def test_check_processor_reads_image_mean_and_std_as_the_processor_does(tmp_path):
    """A scalar is one value for every channel; a list must have 3; the error names the file."""
    from glyph_rt.models.glyph_model import check_processor
    from glyph_rt.ops.pixel_values import CLIP_MEAN, CLIP_STD

    p = tmp_path / "preprocessor_config.json"
    p.write_text(json.dumps({"image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD)}))
    check_processor(p)
    for value, message in ((0.5, r"image_mean=0.5 \(glyph_rt normalizes"),
                           (None, r"image_mean=None \(expected a number or a list of 3"),
                           ([CLIP_MEAN[0]], r"image_mean=\[0.48145466\] \(expected a number or a list of 3"),
                           (list(CLIP_MEAN) + [0.5], "expected a number or a list of 3"),
                           (["a", "b", "c"], "expected a number or a list of 3")):
        p.write_text(json.dumps({"image_mean": value, "image_std": list(CLIP_STD)}))
        with pytest.raises(ValueError, match=f"preprocessor_config.json: .*{message}"):
            check_processor(p)
    p.write_text(json.dumps({"image_std": 0.27}))
    with pytest.raises(ValueError, match=r"image_std=0.27 \(glyph_rt normalizes"):
        check_processor(p, "qwen2_5_vl")


def test_check_processor_refuses_a_processor_that_skips_a_step_glyph_rt_takes(tmp_path):
    """pixel_values are always RGB, rescaled by 1/255 and normalized: a checkpoint whose processor turns one off
    would see other pixels than glyph_rt gives it."""
    from glyph_rt.models.glyph_model import check_processor

    p = tmp_path / "preprocessor_config.json"
    p.write_text(json.dumps({"do_convert_rgb": True, "do_rescale": True, "do_normalize": True,
                             "rescale_factor": 0.00392156862745098}))
    check_processor(p)
    for bad, message in (({"do_normalize": False}, "do_normalize=false"), ({"do_rescale": False}, "do_rescale=false"),
                         ({"do_convert_rgb": False}, "do_convert_rgb=false"),
                         ({"rescale_factor": 1.0}, r"rescale_factor=1.0 \(glyph_rt rescales by 1/255\)")):
        p.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=f"preprocessor_config.json: .*{message}"):
            check_processor(p)


def test_a_questions_special_token_text_is_plain_text_as_in_training(models):
    """GlyphModel's prompt is the training sample's before its answer (the tasks escape the question): an added
    token's text in a question is plain text, not the end-of-text or turn token."""
    on, _ = models
    question = "What do <|endoftext|> and <|user|> mean?"
    inputs, rendered, _ = on.build_inputs(CONTEXTS[:1] * 2, [QUESTIONS[0], question])
    vt = [int(x) for x in (rendered.image_grid_thw.prod(-1) // 4).tolist()]
    n = rendered.images_per_text[1]
    enc = on.prompts.encode(on.prompts.messages(n, on.prompts.escape(question), answer="x"), vt[n:])
    first = enc.labels.index(next(x for x in enc.labels if x != -100))
    row = inputs["input_ids"][1][inputs["attention_mask"][1].bool()].tolist()
    assert row == enc.input_ids[:first]
    eos, user = on.tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|user|>"])
    plain = inputs["input_ids"][0][inputs["attention_mask"][0].bool()].tolist()
    assert row.count(eos) == plain.count(eos) == 0 and row.count(user) == plain.count(user)
    assert on.generate(CONTEXTS[0], question, max_new_tokens=2)[0].prompt_tokens == len(row)
    with pytest.raises(ValueError, match=r"questions\[1\]: the text holds U\+10F000"):
        on.generate(CONTEXTS, ["fine", "\U0010f000"], max_new_tokens=2)


def test_a_lone_surrogate_in_a_context_or_question_is_read_as_a_question_mark(models):
    """"\\ud800" (legal JSON, not UTF-8): a context holding it is drawn (a box) and counted as '?', a question
    reads it as '?'; no answer of the batch is lost."""
    on, _ = models
    odd, same = ["The fox \ud800 jumps.", CONTEXTS[0]], ["The fox ? jumps.", CONTEXTS[0]]
    a = on.generate(odd, ["What?", "Who\udfff is it?"], max_new_tokens=3)
    b = on.generate(same, ["What?", "Who? is it?"], max_new_tokens=3)
    assert [x.text_tokens for x in a] == [x.text_tokens for x in b]
    assert a[0].text_tokens == len(on.tokenizer("The fox ? jumps.", add_special_tokens=False)["input_ids"])
    assert a[1].token_ids == b[1].token_ids and a[1].prompt_tokens == b[1].prompt_tokens
