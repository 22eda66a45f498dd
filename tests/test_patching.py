"""apply_glyph_kernels on tiny GLM-4.1V / Qwen2.5-VL models: same outputs, undoable, scoped."""
import pytest
import torch
from glyph_rt.models.tiny import glm4v_inputs, tiny_glm4v, tiny_qwen2_5_vl

from glyph_rt.models import apply_glyph_kernels
from glyph_rt.models.patching import GlyphPatchEmbed, GlyphVisionAttention

from conftest import TEST_DEVICE as TRITON_DEVICE  # cuda on a GPU unless --device cpu

KERNELS = dict(patch_embed_backend="triton", attention_backend="glyph")  # the Triton kernels, even on the CPU


def glm4v(attn: str):
    return tiny_glm4v(attn).to(TRITON_DEVICE)


def inputs_of(kw: dict) -> dict:
    return {k: v.to(TRITON_DEVICE) for k, v in kw.items()}


def classes(model):
    return {type(m).__name__ for m in model.modules()}


def test_patched_glm4v_gives_the_same_logits_and_tokens_and_undoes():
    ref, model = glm4v("sdpa"), glm4v("sdpa")
    model.load_state_dict(ref.state_dict())
    inputs = inputs_of(glm4v_inputs())
    valid = inputs["attention_mask"].bool()
    with torch.no_grad():
        want = ref(**inputs).logits
        patch = apply_glyph_kernels(model, **KERNELS)
        assert patch.replaced == 1 + 2 + 1  # patch embedding, two vision blocks' attention, position table
        assert any(isinstance(m, GlyphPatchEmbed) for m in model.modules())
        assert any(isinstance(m, GlyphVisionAttention) for m in model.modules())
        assert model.model.language_model.config._attn_implementation == patch.attn_implementation == "glyph_glyph"
        assert not any(isinstance(m, (GlyphPatchEmbed, GlyphVisionAttention)) for m in ref.modules())
        got = model(**inputs).logits
        torch.testing.assert_close(got[valid], want[valid], rtol=1e-4, atol=1e-4)
        greedy = dict(max_new_tokens=4, do_sample=False)
        assert torch.equal(model.generate(**inputs, **greedy), ref.generate(**inputs, **greedy))
        assert model.model.visual.embeddings.__dict__.get("_glyph_cache")  # the position tables of this run
        patch.undo()
        assert classes(model) == classes(ref)
        assert not [(n, k) for n, m in model.named_modules() for k in vars(m) if k.startswith("_glyph")]  # freed
        assert model.model.language_model.config._attn_implementation == "sdpa"
        assert torch.equal(model(**inputs).logits, want)


def test_patching_before_the_model_is_built():
    before = glm4v("sdpa")
    patch = apply_glyph_kernels(model_type="glm4v", **KERNELS)
    try:
        after = glm4v(patch.attn_implementation)
        assert any(isinstance(m, GlyphPatchEmbed) for m in after.modules())
        assert not any(isinstance(m, GlyphPatchEmbed) for m in before.modules())  # built earlier: untouched
        after.load_state_dict(before.state_dict())  # same parameter names
        inputs = inputs_of(glm4v_inputs())
        valid = inputs["attention_mask"].bool()
        with torch.no_grad():
            torch.testing.assert_close(after(**inputs).logits[valid], before(**inputs).logits[valid],
                                       rtol=1e-4, atol=1e-4)
    finally:
        patch.undo()
    assert not any(isinstance(m, GlyphPatchEmbed) for m in tiny_glm4v("sdpa").modules())


def test_patched_qwen2_5_vl_window_and_full_attention():
    ref, model = tiny_qwen2_5_vl("sdpa").to(TRITON_DEVICE), tiny_qwen2_5_vl("sdpa").to(TRITON_DEVICE)
    model.load_state_dict(ref.state_dict())
    ids = torch.tensor([[5, 6, 997] + [999] * 6 + [996, 7, 8]])
    kw = inputs_of(dict(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=torch.randn(24, 1176),
                        image_grid_thw=torch.tensor([[1, 4, 6]]), mm_token_type_ids=(ids == 999).long()))
    patch = apply_glyph_kernels(model, **KERNELS)
    with torch.no_grad():
        torch.testing.assert_close(model(**kw).logits, ref(**kw).logits, rtol=1e-4, atol=1e-4)
    patch.undo()


def test_unsupported_models_and_backends_are_named():
    with pytest.raises(ValueError, match="'llava' is not supported"):
        apply_glyph_kernels(model_type="llava")
    with pytest.raises(ValueError, match="attention_backend 'xformers'"):
        apply_glyph_kernels(model_type="glm4v", attention_backend="xformers")


def patched_position_embedding():
    """A tiny GLM-4.1V's patched position embedding, and the arguments a forward of the model gives it."""
    model = tiny_glm4v("sdpa")
    apply_glyph_kernels(model, attention=False, patch_embed_backend="torch")
    emb = model.model.visual.embeddings
    seen = []
    hook = emb.register_forward_pre_hook(lambda m, args: seen.append(args))
    with torch.no_grad():
        model(**glm4v_inputs())
    hook.remove()
    return emb, seen[0]


def test_position_table_is_cached_per_grid_and_bit_exact():
    emb, args = patched_position_embedding()
    original = type(emb)._glyph_base.forward
    with torch.no_grad():
        want = original(emb, *args)
        assert torch.equal(emb(*args), want)
        assert sorted(k[0] for k in emb._glyph_cache) == [(1, 2, 6), (1, 4, 4)]  # two shapes, three pages
        assert torch.equal(emb(*args), want)  # served from the cache
        emb.position_embedding.weight.mul_(1.5)  # a new weight version recomputes
        assert torch.equal(emb(*args), original(emb, *args))
        emb.GLYPH_SHAPES = 1  # a bounded cache: the most recent shapes stay, the answer is the same
        emb.position_embedding.weight.mul_(0.5)
        assert torch.equal(emb(*args), original(emb, *args)) and len(emb._glyph_cache) == 1
        emb.GLYPH_SHAPES, emb.GLYPH_BYTES = 32, 1  # bounded by bytes too
        emb.position_embedding.weight.mul_(0.5)
        assert torch.equal(emb(*args), original(emb, *args)) and len(emb._glyph_cache) == 1


def test_weights_written_without_a_new_version_are_seen():
    """FSDP2's all-gather writes new weights at the same address with the same version: the caches look at the
    values (the position table is compared bit for bit, the patch weights folded on every forward), so they need
    no help; forget_weight_caches still drops what they hold (the trainers call it after each optimizer step)."""
    from torch.autograd import _unsafe_preserve_version_counter as keep_version

    from glyph_rt.models.patch_embed import PatchEmbed
    from glyph_rt.models.patching import WEIGHT_CACHES, forget_weight_caches
    from glyph_rt.ops.patch_embed import expand_uint8
    from glyph_rt.ops.pixel_values import uint8_rows

    torch.manual_seed(0)
    pe = PatchEmbed(32, backend="torch")
    u = uint8_rows(4)
    u.copy_(torch.randint(0, 256, (4, 588), dtype=torch.uint8))
    emb, args = patched_position_embedding()
    with torch.no_grad():
        emb(*args)
        pe(u)
        for w in (pe.proj.weight, emb.position_embedding.weight):
            with keep_version(w):
                w.copy_(torch.randn_like(w))
        want = pe.proj(expand_uint8(u).view(-1, 3, 2, 14, 14)).view(-1, 32)
        torch.testing.assert_close(pe(u), want, rtol=1e-4, atol=1e-4)
        assert torch.equal(emb(*args), type(emb)._glyph_base.forward(emb, *args))
        forget_weight_caches(emb)
        assert not any(hasattr(emb, name) for name in WEIGHT_CACHES)
        assert torch.equal(emb(*args), type(emb)._glyph_base.forward(emb, *args))


def pixel_inputs(pixels: str):
    """glm4v_inputs() for the patched model and for stock HF: float pixel_values for both, or uint8 levels (cast to
    float on their way, as transformers does) and the pixel_values they stand for."""
    from glyph_rt.ops.patch_embed import expand_uint8

    inputs = glm4v_inputs()
    if pixels == "float":
        return inputs, inputs
    torch.manual_seed(5)
    u8 = torch.randint(0, 256, (inputs["pixel_values"].shape[0], 588), dtype=torch.uint8)
    return dict(inputs, pixel_values=u8.float()), dict(inputs, pixel_values=expand_uint8(u8))


@pytest.mark.parametrize("pixels", ["float", "uint8"])
def test_weights_written_through_data_are_seen(pixels):
    """`weight.data += delta` (peft's merge, EMA updates, hand-written loading) keeps the weight's address and
    version counter: the patched model must still answer as stock HF does with the new weights."""
    ref, model = tiny_glm4v("sdpa"), tiny_glm4v("sdpa")
    model.load_state_dict(ref.state_dict())
    apply_glyph_kernels(model, patch_embed_backend="torch")
    ours, theirs = pixel_inputs(pixels)
    valid = ours["attention_mask"].bool()
    with torch.no_grad():
        torch.testing.assert_close(model(**ours).logits[valid], ref(**theirs).logits[valid], rtol=1e-4, atol=1e-4)
        for m in (ref, model):
            visual = m.model.visual
            visual.patch_embed.proj.weight.data.mul_(1.5)
            visual.patch_embed.proj.bias.data += 0.25
            visual.embeddings.position_embedding.weight.data += 0.5
        torch.testing.assert_close(model(**ours).logits[valid], ref(**theirs).logits[valid], rtol=1e-4, atol=1e-4)


LORA_TARGETS = r".*visual\.(patch_embed\.proj|embeddings\.position_embedding)"  # the weights the patch caches read


@pytest.mark.parametrize("pixels", ["float", "uint8"])
def test_peft_lora_before_and_after_merge_and_unload_matches_hf(pixels):
    """A LoRA on the vision patch embedding and position table: unmerged (peft wraps the Conv3d; the patched
    forward must not skip its delta) and after merge_and_unload (`weight.data += delta`, after a forward that
    filled the patched model's caches), the patched GLM-4.1V gives stock HF's logits."""
    peft = pytest.importorskip("peft")
    ours, theirs = pixel_inputs(pixels)
    valid = ours["attention_mask"].bool()
    logits = {}
    for patched, inputs in ((False, theirs), (True, ours)):
        m = tiny_glm4v("sdpa")
        if patched:
            apply_glyph_kernels(m, patch_embed_backend="torch")
        torch.manual_seed(1)
        pm = peft.get_peft_model(m, peft.LoraConfig(r=4, target_modules=LORA_TARGETS, init_lora_weights=False))
        with torch.no_grad():
            unmerged = pm(**inputs).logits
            merged = pm.merge_and_unload()
            logits[patched] = (unmerged, merged(**inputs).logits)
    for got, want in zip(logits[True], logits[False]):
        torch.testing.assert_close(got[valid], want[valid], rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        plain = tiny_glm4v("sdpa")(**theirs).logits
    assert all((x - plain)[valid].abs().max() > 1e-2 for x in logits[False])  # the LoRA counts, merged or not


def test_static_cache_generation_matches_sdpa():
    """A StaticCache hands attention its whole buffer: only the keys filled so far count (batch 1, where generate
    drops the all-ones mask, and a left-padded batch)."""
    ref, model = glm4v("sdpa"), glm4v("sdpa")
    model.load_state_dict(ref.state_dict())
    apply_glyph_kernels(model, patch_embed_backend="torch")
    both = inputs_of(glm4v_inputs())
    one = {k: v[:1] for k, v in both.items() if k not in ("pixel_values", "image_grid_thw")}
    rows = int(both["image_grid_thw"][:2].prod(1).sum())  # the first sample's two images
    one.update(pixel_values=both["pixel_values"][:rows], image_grid_thw=both["image_grid_thw"][:2])
    greedy = dict(max_new_tokens=4, do_sample=False, cache_implementation="static", output_logits=True,
                  return_dict_in_generate=True)
    with torch.no_grad():
        for inputs in (one, both):
            want, got = ref.generate(**inputs, **greedy), model.generate(**inputs, **greedy)
            assert torch.equal(got.sequences, want.sequences)
            torch.testing.assert_close(torch.stack(got.logits), torch.stack(want.logits), rtol=1e-4, atol=1e-4)


def test_attention_features_glyph_lacks_are_refused():
    from glyph_rt.ops.attention import glyph_attention_forward

    q = torch.randn(1, 4, 6, 16)
    kv = torch.randn(1, 1, 6, 16)
    with pytest.raises(NotImplementedError, match="no sliding_window .*sliding_window=8.*'sdpa'"):
        glyph_attention_forward(torch.nn.Module(), q, kv, kv, None, sliding_window=8)


@pytest.mark.parametrize("model_type", ["glm4v", "qwen2_5_vl"])
def test_uint8_patches_through_the_patched_model(model_type):
    """transformers' get_image_features casts pixel_values to the tower's dtype before the patch embedding: the
    uint8 levels come back exactly, so the whole model takes render_inputs(dtype=uint8)."""
    import glyph_rt
    from glyph_rt import RenderConfig
    from glyph_rt.models.prompt import tokens_per_image

    model = (tiny_glm4v if model_type == "glm4v" else tiny_qwen2_5_vl)("sdpa")
    apply_glyph_kernels(model, patch_embed_backend="torch")
    cfg, logits, c = RenderConfig(page_size=(120, 90)), [], model.config
    image = c.image_token_id
    start = getattr(c, "image_start_token_id", None) or c.vision_start_token_id
    end = getattr(c, "image_end_token_id", None) or c.vision_end_token_id
    for dtype in (torch.float32, torch.uint8):
        r = glyph_rt.render_inputs(["hello world " * 30], cfg, model=model_type, device="cpu", dtype=dtype)
        ids = [5]
        for n in tokens_per_image(r.image_grid_thw):
            ids += [start] + [image] * n + [end]
        ids = torch.tensor([ids + [7]])
        with torch.no_grad():
            logits.append(model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=r.pixel_values,
                                image_grid_thw=r.image_grid_thw, mm_token_type_ids=(ids == image).long()).logits)
    torch.testing.assert_close(logits[1], logits[0], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="not uint8 levels"):
        model.model.visual.patch_embed(torch.randn(8, 588))


def test_models_pinned_to_different_attention_backends_keep_theirs():
    from transformers import AttentionInterface

    a, b = tiny_glm4v("sdpa"), tiny_glm4v("sdpa")
    pa = apply_glyph_kernels(a, attention_backend="reference")
    pb = apply_glyph_kernels(b, attention_backend="sdpa")
    names = (a.model.language_model.config._attn_implementation, b.model.language_model.config._attn_implementation)
    assert names == (pa.attn_implementation, pb.attn_implementation) == ("glyph_reference", "glyph_sdpa")
    assert AttentionInterface._global_mapping["glyph_reference"].keywords["backend"] == "reference"
    pb.undo()
    assert AttentionInterface._global_mapping["glyph_reference"].keywords["backend"] == "reference"
    assert a.model.language_model.config._attn_implementation == "glyph_reference"
    pa.undo()


def attn_implementations(model) -> tuple:
    c = model.config
    return c._attn_implementation, c.text_config._attn_implementation, c.vision_config._attn_implementation


def test_each_config_keeps_or_gets_back_its_own_attn_implementation():
    """transformers' _attn_implementation setter sets every sub-config too: patching sets the model's and the
    language model's configs only, the vision config keeps its own, and undo() restores each config's value."""
    model = tiny_glm4v("sdpa")
    model.config.vision_config._attn_implementation = "eager"
    model.config.text_config._attn_implementation = "eager"
    before = attn_implementations(model)
    assert before == ("sdpa", "eager", "eager")
    patch = apply_glyph_kernels(model, patch_embed_backend="torch", attention_backend="sdpa")
    assert attn_implementations(model) == ("glyph_sdpa", "glyph_sdpa", "eager")
    patch.undo()
    assert attn_implementations(model) == before


@pytest.mark.parametrize("order", ["oldest first", "newest first"])
@pytest.mark.parametrize("second", [dict(attention_backend="sdpa"), {}])  # other backends, or the same again
def test_patches_undo_in_any_order(order, second):
    """Two patches of one model: undoing one leaves the other's changes; undoing both gives back the model as
    built, whichever goes first."""
    ref, model = tiny_glm4v("sdpa"), tiny_glm4v("sdpa")
    first = apply_glyph_kernels(model, patch_embed_backend="torch")
    later = apply_glyph_kernels(model, patch_embed_backend="torch", **second)
    patched = (classes(model), attn_implementations(model))
    assert patched[1][:2] == (later.attn_implementation,) * 2
    a, b = (first, later) if order == "oldest first" else (later, first)
    a.undo()
    if a is first:  # the later patch's changes stand
        assert (classes(model), attn_implementations(model)) == patched
    else:
        assert attn_implementations(model)[:2] == (first.attn_implementation,) * 2
        assert any(isinstance(m, GlyphPatchEmbed) for m in model.modules())
    b.undo()
    assert classes(model) == classes(ref) and attn_implementations(model) == attn_implementations(ref)


def test_class_patches_undo_in_any_order():
    import importlib

    from glyph_rt.models.patching import MODELS

    mod = importlib.import_module(MODELS["glm4v"].module)
    original = mod.Glm4vVisionPatchEmbed
    first = apply_glyph_kernels(model_type="glm4v", patch_embed_backend="torch")
    later = apply_glyph_kernels(model_type="glm4v", patch_embed_backend="torch", attention_backend="sdpa")
    try:
        first.undo()
        assert issubclass(mod.Glm4vVisionPatchEmbed, GlyphPatchEmbed)
        later.undo()
        assert mod.Glm4vVisionPatchEmbed is original
    finally:
        mod.Glm4vVisionPatchEmbed = original  # whatever happened, later tests build stock models
        for name in ("Glm4vVisionAttention", "Glm4vVisionEmbeddings"):
            setattr(mod, name, getattr(getattr(mod, name), "_glyph_base", getattr(mod, name)))
