"""GlyphCache: the same keys, values and generations as transformers' DynamicCache, without a copy per step."""
import pytest
import torch
from transformers import DynamicCache

from glyph_rt.models.kv_cache import GlyphCache, cache_kwarg
from glyph_rt.models.tiny import glm4v_inputs, tiny_glm4v


def states(B, n, g):
    return torch.randn(B, 2, n, 8, generator=g), torch.randn(B, 2, n, 8, generator=g)


def test_updates_match_dynamic_cache_and_write_in_place():
    g = torch.Generator().manual_seed(0)
    ours, ref = GlyphCache(reserve=3), DynamicCache()
    ptrs = set()
    for step, n in enumerate([5, 1, 1, 1, 1, 1, 300]):  # the prompt, steps within the reserve, then growth
        k, v = states(2, n, g)
        for layer in range(2):
            a = ours.update(k, v, layer)
            b = ref.update(k, v, layer)
            for x, y in zip(a, b):
                assert torch.equal(x, y)
        if 1 <= step <= 3:
            ptrs.add(ours.layers[0].keys.data_ptr())
    assert len(ptrs) == 1  # no reallocation while the reserve lasts
    assert ours.get_seq_length() == ref.get_seq_length() == 310


def test_replaced_tensors_are_adopted():
    g = torch.Generator().manual_seed(1)
    ours, ref = GlyphCache(reserve=8), DynamicCache()
    for c in (ours, ref):
        c.update(*states(1, 4, torch.Generator().manual_seed(2)), 0)
        c.batch_repeat_interleave(3)  # tensors replaced behind the layer's back
    k, v = states(3, 1, g)
    for x, y in zip(ours.update(k, v, 0), ref.update(k, v, 0)):
        assert torch.equal(x, y)
    for c in (ours, ref):
        c.crop(-2)
    k, v = states(3, 2, g)
    for x, y in zip(ours.update(k, v, 0), ref.update(k, v, 0)):
        assert torch.equal(x, y)


def test_from_cache_repeats_requests():
    g = torch.Generator().manual_seed(3)
    src = DynamicCache()
    k, v = states(1, 6, g)
    src.update(k, v, 0)
    out = GlyphCache.from_cache(src, batch=4, reserve=2)
    assert out.layers[0].keys.shape == (4, 2, 6, 8) and torch.equal(out.layers[0].keys[3], k[0])


def test_from_cache_repeats_each_request_in_a_row_as_transformers_does():
    """A batch of requests [a, b] repeated twice is [a, a, b, b], the order of batch_repeat_interleave and of
    generate's expansion (num_beams, num_return_sequences)."""
    g = torch.Generator().manual_seed(4)
    src, ref = DynamicCache(), DynamicCache()
    for layer in range(2):
        k, v = states(2, 5, g)
        src.update(k, v, layer)
        ref.update(k, v, layer)
    ref.batch_repeat_interleave(3)
    out = GlyphCache.from_cache(src, batch=3, reserve=2)
    for ours, want in zip(out.layers, ref.layers):
        assert torch.equal(ours.keys, want.keys) and torch.equal(ours.values, want.values)


@pytest.mark.filterwarnings("error::DeprecationWarning", "error::FutureWarning")
def test_generation_matches_dynamic_cache():
    model = tiny_glm4v("sdpa")
    kwargs = glm4v_inputs()  # left-padded batch with pages
    common = dict(max_new_tokens=6, do_sample=False, output_logits=True, return_dict_in_generate=True)
    with torch.no_grad():
        want = model.generate(**kwargs, **common)
        got = model.generate(**kwargs, **{cache_kwarg(model): GlyphCache(reserve=6)}, **common)
    assert torch.equal(got.sequences, want.sequences)
    for a, b in zip(got.logits, want.logits):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_beam_search_reorders_in_the_buffer():
    """Beam search reorders the rows inside each layer's buffer: the same beams as DynamicCache, and one buffer
    per layer for the whole generation."""
    from glyph_rt.models.kv_cache import GrowingLayer

    model = tiny_glm4v("sdpa")
    kwargs = glm4v_inputs()
    made = []
    allocate = GrowingLayer._allocate

    def counted(self, *args):
        made.append(self)
        return allocate(self, *args)

    beams = dict(max_new_tokens=12, num_beams=3, do_sample=False)
    with torch.no_grad(), pytest.MonkeyPatch.context() as mp:
        mp.setattr(GrowingLayer, "_allocate", counted)
        got = model.generate(**kwargs, **{cache_kwarg(model): GlyphCache(reserve=12)}, **beams)
        want = model.generate(**kwargs, **beams)
    assert torch.equal(got, want)
    assert len(made) == len(set(map(id, made))) == model.config.text_config.num_hidden_layers


def test_forwards_under_autograd_backpropagate_as_with_dynamic_cache():
    """A cache filled by two forwards with grad enabled (a prefix, then its continuation): the same outputs and
    gradients as DynamicCache (writing the second forward's keys into the first's buffer in place would break the
    first forward's backward); afterwards, without grad, the layer writes in place again."""
    from glyph_rt.models.kv_cache import GrowingLayer

    model = tiny_glm4v("sdpa")
    lm = model.model.language_model
    ids = torch.randint(0, 900, (2, 12), generator=torch.Generator().manual_seed(5))
    kw = cache_kwarg(lm)
    results = []
    for cache in (DynamicCache(), GlyphCache(reserve=8)):
        model.zero_grad()
        a = lm(input_ids=ids[:, :8], **{kw: cache}, use_cache=True).last_hidden_state
        b = lm(input_ids=ids[:, 8:11], **{kw: cache}, use_cache=True).last_hidden_state
        (a.square().sum() + b.square().sum()).backward()
        grads = {n: p.grad.clone() for n, p in lm.named_parameters() if p.grad is not None}
        with torch.no_grad():
            c = lm(input_ids=ids[:, 11:], **{kw: cache}, use_cache=True).last_hidden_state
        results.append((a.detach(), b.detach(), c, grads, cache))
    (a0, b0, c0, g0, _), (a1, b1, c1, g1, ours) = results
    assert torch.equal(a0, a1) and torch.equal(b0, b1) and torch.equal(c0, c1)
    assert g0.keys() == g1.keys() and g0
    for n in g0:
        assert torch.equal(g0[n], g1[n]), n
    layer = ours.layers[0]
    assert isinstance(layer, GrowingLayer) and layer.keys.data_ptr() == layer._k.data_ptr()  # in place again
    assert not layer.keys.requires_grad and ours.get_seq_length() == 12
