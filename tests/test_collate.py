"""Collation: padded and packed batches of the same samples give the same loss and gradients on a tiny
GLM-4.1V, with transformers' sdpa and with glyph_rt's attention (no attention across samples)."""
import pytest
import torch

from glyph_rt.models.prompt import IGNORE_INDEX, PromptBuilder, tokens_per_image
from glyph_rt.models.tiny import tiny_glm4v_checkpoint
from glyph_rt.render.config import RenderConfig
from glyph_rt.render.gpu import render_inputs
from glyph_rt.render.textio import sample_text
from glyph_rt.train.collate import Collator, SamplesTooLong, attach_pixels, model_inputs
from glyph_rt.train.tasks import make_task

transformers = pytest.importorskip("transformers")
CFG = RenderConfig(dpi=30, page_size=(300, 200))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_glm4v_checkpoint(tmp_path_factory.mktemp("tiny_glm4v"))


@pytest.fixture(scope="module")
def parts(checkpoint):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(checkpoint)
    builder = PromptBuilder(tok, tok.convert_tokens_to_ids("<|image|>"))
    text = sample_text()
    rec = {"text": text, "context": text[2000:3500], "question": "Which version?", "answer": "Version 3."}
    samples = [make_task(name, builder, config=CFG, max_pages=2, window_chars=700)(rec, i)
               for i, name in enumerate(["ocr", "lm", "gen", "qa"])]
    return tok, builder, samples


def model(checkpoint, attn):
    from transformers import Glm4vForConditionalGeneration

    from glyph_rt.ops.attention import register_transformers

    register_transformers()
    register_transformers("glyph_reference", backend="reference")  # the float32 oracle, one segment at a time
    return Glm4vForConditionalGeneration.from_pretrained(checkpoint, attn_implementation=attn, dtype=torch.float32)


def test_batch_layout(checkpoint, parts):
    tok, builder, samples = parts
    m = model(checkpoint, "sdpa")
    pad = Collator(builder.image_token_id, tok.pad_token_id, mode="pad")(samples)
    pack = Collator(builder.image_token_id, tok.pad_token_id, mode="pack", model=m)(samples)
    n = sum(s.num_images for s in samples)
    ref = render_inputs([p.text for s in samples for p in s.pages], [p.config for s in samples for p in s.pages],
                        device="cpu", max_pages=2)
    for b in (pad, pack):
        assert b["image_grid_thw"].shape == (n, 3) and torch.equal(b["pixel_values"], ref.pixel_values)
        assert b["num_samples"] == 4 and b["loss_tokens"] == sum(s.loss_tokens for s in samples)
        visual = int((b["input_ids"] == builder.image_token_id).sum())
        assert visual == sum(tokens_per_image(b["image_grid_thw"])) == int(b["mm_token_type_ids"].sum())
    lens = pad["attention_mask"].sum(1)
    assert pack["input_ids"].shape == (1, int(lens.sum())) and pack["cu_seqlens"].tolist() == [0, *lens.cumsum(0)]
    assert pack["position_ids"].shape == (4, 1, int(lens.sum())) and pack["cu_seqlens"].dtype == torch.int32
    for b, (s, e) in enumerate(zip(pack["cu_seqlens"][:-1].tolist(), pack["cu_seqlens"][1:].tolist())):
        assert torch.equal(pack["input_ids"][0, s:e], pad["input_ids"][b, :e - s])
        assert pack["position_ids"][0, 0, s:e].tolist() == list(range(e - s))
    assert (pad["labels"][pad["attention_mask"] == 0] == IGNORE_INDEX).all()
    # pages rendered early (in loader workers) collate to the same batch
    attach_pixels(samples)
    early = Collator(builder.image_token_id, tok.pad_token_id, mode="pad")(samples)
    assert torch.equal(early["pixel_values"], pad["pixel_values"]) and torch.equal(early["input_ids"], pad["input_ids"])
    for s in samples:
        s.pixel_values = s.image_grid_thw = None


def test_packed_segments():
    from glyph_rt.ops.attention import packed_segments

    cu, longest = packed_segments(torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]]))
    assert cu.tolist() == [0, 3, 5, 9] and cu.dtype == torch.int32 and longest == 4
    assert packed_segments(torch.arange(6)[None] + 3) is None and packed_segments(None) is None


@pytest.mark.parametrize("attn", ["sdpa", "glyph", "glyph_reference"])
def test_packed_equals_padded(checkpoint, parts, attn):
    tok, builder, samples = parts
    m = model(checkpoint, attn)
    losses, grads = {}, {}
    for mode in ("pad", "pack"):
        batch = Collator(builder.image_token_id, tok.pad_token_id, mode=mode, model=m)(samples)
        m.zero_grad()
        out = m(**model_inputs(batch))
        out.loss.backward()
        losses[mode] = out.loss.detach()
        grads[mode] = [p.grad.clone() for p in m.parameters() if p.grad is not None]
    torch.testing.assert_close(losses["pack"], losses["pad"], rtol=1e-5, atol=1e-6)
    for a, b in zip(grads["pack"], grads["pad"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # and the padded batch equals the samples one at a time
    total = 0.0
    with torch.no_grad():
        for s in samples:
            b1 = Collator(builder.image_token_id, tok.pad_token_id)([s])
            total += m(**model_inputs(b1)).loss * b1["loss_tokens"]
    torch.testing.assert_close(losses["pad"], total / sum(s.loss_tokens for s in samples), rtol=1e-5, atol=1e-6)


def test_loss_weights_weigh_each_tasks_label_tokens(checkpoint, parts):
    """data.loss_weights: label_weights beside labels, padded and packed alike; the weighted token mean is
    sum(w * ce) / sum(w), so a task at weight 0 leaves the loss of the others, and weight 1 changes nothing."""
    from glyph_rt.train.trainer import label_tokens, token_loss_sum

    tok, builder, samples = parts
    m = model(checkpoint, "sdpa")
    cpu = torch.device("cpu")
    with torch.no_grad():
        for mode in ("pad", "pack"):
            col = dict(mode=mode, model=m)
            plain = Collator(builder.image_token_id, tok.pad_token_id, **col)(samples)
            same = Collator(builder.image_token_id, tok.pad_token_id, loss_weights={"ocr": 1.0}, **col)(samples)
            assert "label_weights" not in plain and "label_weights" not in same
            half = Collator(builder.image_token_id, tok.pad_token_id, loss_weights={"ocr": 0.5, "lm": 0}, **col)
            b = half(samples)
            assert b["label_weights"].shape == b["labels"].shape
            rest = Collator(builder.image_token_id, tok.pad_token_id, **col)([samples[2], samples[3]])
            ocr = Collator(builder.image_token_id, tok.pad_token_id, **col)([samples[0]])
            want = (token_loss_sum(m, rest, cpu) + 0.5 * token_loss_sum(m, ocr, cpu)) / (
                label_tokens(rest) + 0.5 * label_tokens(ocr))
            got = token_loss_sum(m, b, cpu) / label_tokens(b)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
            # the loss per task (unweighted), as the metrics log it
            by_task = torch.zeros(2, 4, dtype=torch.float64)
            token_loss_sum(m, b, cpu, by_task)
            ocr_only = torch.zeros(2, 4, dtype=torch.float64)
            token_loss_sum(m, ocr, cpu, ocr_only)
            one = Collator(builder.image_token_id, tok.pad_token_id, **col)
            assert by_task[1].tolist() == [label_tokens(one([s])) for s in samples]  # ocr, lm, gen, qa: TASKS
            torch.testing.assert_close(by_task[:, 0], ocr_only[:, 0], rtol=1e-6, atol=1e-6)


def test_collator_errors(parts):
    tok, builder, samples = parts
    with pytest.raises(ValueError, match="needs the model"):
        Collator(builder.image_token_id, tok.pad_token_id, mode="pack")
    with pytest.raises(ValueError, match="mode"):
        Collator(builder.image_token_id, tok.pad_token_id, mode="flat")
    with pytest.raises(SamplesTooLong, match="max_length=10") as e:
        Collator(builder.image_token_id, tok.pad_token_id, max_length=10)(samples)
    assert e.value.indices == list(range(len(samples)))


def test_samples_that_fit_keep_the_pages_rendered_before_a_too_long_one_was_found(parts, monkeypatch):
    """The loader collates a batch again without its too-long samples: the others' pages are not drawn twice."""
    import dataclasses

    from glyph_rt.train import collate

    tok, builder, samples = parts

    def bare(xs):  # not rendered yet
        return [dataclasses.replace(s, pixel_values=None, image_grid_thw=None) for s in xs]

    lengths = [int(Collator(builder.image_token_id, tok.pad_token_id)([s])["attention_mask"].sum())
               for s in bare(samples)]
    drawn = []
    real = collate.render_samples

    def counting(batch, *a, **kw):
        drawn.extend(s.index for s in batch)
        return real(batch, *a, **kw)

    monkeypatch.setattr(collate, "render_samples", counting)
    col = Collator(builder.image_token_id, tok.pad_token_id, max_length=max(lengths) - 1)
    batch = bare(samples)
    with pytest.raises(SamplesTooLong) as e:
        col(batch)
    kept = [s for k, s in enumerate(batch) if k not in e.value.indices]
    short = lengths.index(min(lengths))
    out = col(kept + bare(samples[short:short + 1]))  # the next sample of the stream fills the batch
    assert sorted(drawn) == sorted([s.index for s in samples] + [short])  # each drawn once
    want = Collator(builder.image_token_id, tok.pad_token_id)(bare(
        [s for k, s in enumerate(samples) if k not in e.value.indices] + samples[short:short + 1]))
    for key in ("pixel_values", "image_grid_thw", "input_ids"):
        assert torch.equal(out[key], want[key])


def test_packed_equals_padded_qwen2_5_vl(tmp_path):
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    from glyph_rt.models.tiny import tiny_qwen2_5_vl_checkpoint

    path = tiny_qwen2_5_vl_checkpoint(tmp_path)
    m = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, attn_implementation="sdpa", dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(path)
    builder = PromptBuilder.for_model(m, tok)
    text = sample_text()
    samples = [make_task(name, builder, config=CFG, max_pages=2, window_chars=500)({"text": text}, i)
               for i, name in enumerate(["ocr", "gen", "lm"])]
    losses = {}
    for mode in ("pad", "pack"):
        batch = Collator(builder.image_token_id, tok.pad_token_id, mode=mode, model=m, vision_model="qwen2_5_vl")(
            samples)
        losses[mode] = m(**model_inputs(batch)).loss
    torch.testing.assert_close(losses["pack"], losses["pad"], rtol=1e-5, atol=1e-6)
