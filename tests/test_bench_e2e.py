"""The end-to-end benchmark's quick CPU mode: tiny shapes, the whole pipeline, a results file; its decode on the
TTFT's cache."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def test_e2e_quick_mode_runs_every_path(tmp_path, monkeypatch):
    import logging

    from bench.bench_e2e import main

    logged = []  # transformers' warning_once, without its once-per-process cache
    monkeypatch.setattr(logging.Logger, "warning_once", lambda self, msg, *a, **k: logged.append(str(msg)),
                        raising=False)
    summary = main(["--quick", "--out", str(tmp_path)])
    assert not [m for m in logged if "deprecated" in m]  # no deprecated name of transformers' is read or passed
    out = tmp_path / "e2e-cpu-quick.json"
    data = json.loads(out.read_text())
    assert data["bench"] == "e2e" and len(data["rows"]) == 2
    for key in ("prefill_speedup_128k", "decode_speedup_128k", "kv_memory_reduction", "render_fraction_of_ttft"):
        assert key in summary and key in data["summary"]
    for row in data["rows"]:
        assert row["visual_tokens"] > 0 and row["pages"] >= 1
        assert row["glyph_kv_bytes"] < row["text_kv_bytes"]  # fewer tokens in the cache
        for key in ("text_ttft_s", "glyph_hf_ttft_s", "glyph_rt_ttft_s", "glyph_rt_render_s",
                    "text_decode_s_per_sample", "glyph_hf_decode_s_per_sample", "glyph_decode_s_per_sample"):
            assert row[key] > 0


def test_stage_ranges_name_prefill_and_decode(monkeypatch):
    import torch
    from glyph_rt.models.tiny import glm4v_inputs, tiny_glm4v

    import glyph_rt.nvtx as nv
    from bench.bench_e2e import StageRanges

    names = []
    monkeypatch.setattr(nv, "_backend", lambda: (names.append, lambda: None))
    model = tiny_glm4v("sdpa")
    ranges = StageRanges(model)
    with torch.no_grad():
        model.generate(**glm4v_inputs(), max_new_tokens=3, do_sample=False)
    ranges.remove()
    assert names.count("glyph_rt.prefill") == 1 and names.count("glyph_rt.decode") == 2
    assert "glyph_rt.patch_embed" in names and "glyph_rt.vision_block.1" in names


def test_e2e_counts_mode_needs_no_model(tmp_path):
    import json

    from bench.bench_e2e import main

    rows = main(["--counts", "--tokens", "600,3000", "--out", str(tmp_path)])
    out = tmp_path / "e2e-counts.json"
    assert [r["text_tokens"] for r in rows] == [600, 3000]
    for r in rows:
        question = r["text_prompt_tokens"] - r["text_tokens"]
        assert r["glyph_prompt_tokens"] == r["visual_tokens"] + 2 * r["pages"] + question  # begin/end per page
        assert 0 < r["kv_memory_reduction"] < 1 and r["compression"] > 1
    assert json.loads(out.read_text())["summary"]["context_tokens"] == 3000


@pytest.mark.parametrize("glyph_cache", [True, False])
def test_decode_reuses_the_timed_prefill_and_decodes_the_same_tokens(glyph_cache):
    """decode_seconds_per_sample on the cache of the TTFT's last timed prefill runs no prefill of its own, leaves
    that cache as it was, and feeds the model the same tokens, step for step, as with a prefill of its own."""
    import torch
    from glyph_rt.models.tiny import glm4v_inputs, tiny_glm4v

    from bench.bench_e2e import decode_seconds_per_sample, prefill, timed

    torch.manual_seed(0)
    model = tiny_glm4v("sdpa")
    x = glm4v_inputs()  # its first prompt, alone: two pages (4x4 and 2x6 patches)
    inputs = dict(input_ids=x["input_ids"][:1], attention_mask=x["attention_mask"][:1],
                  pixel_values=x["pixel_values"][:28], image_grid_thw=x["image_grid_thw"][:2],
                  mm_token_type_ids=x["mm_token_type_ids"][:1])
    fed = []
    hook = model.register_forward_pre_hook(lambda _, a, kw: fed.append(kw["input_ids"].clone()), with_kwargs=True)
    cpu = torch.device("cpu")
    _, pre = timed(lambda: prefill(model, inputs), cpu, repeat=2)
    assert len(fed) == 3  # the warm-up and two timed prefills
    before = [(layer.keys.clone(), layer.values.clone()) for layer in pre.past_key_values.layers]
    del fed[:]
    _, batch = decode_seconds_per_sample(model, inputs, 4, cpu, 2, glyph_cache=glyph_cache, prefilled=pre)
    reused, fed[:] = list(fed), []
    decode_seconds_per_sample(model, inputs, 4, cpu, 2, glyph_cache=glyph_cache)
    hook.remove()
    assert batch == 2 and [t.shape for t in reused] == [(2, 1)] * 5  # a warm-up step and 4 timed: no prefill
    assert fed[0].shape == inputs["input_ids"].shape and len(fed) == 6  # its own prefill, then the same steps
    assert all(torch.equal(a, b) for a, b in zip(reused, fed[1:]))
    for (k, v), layer in zip(before, pre.past_key_values.layers):  # only read: the next run starts from it again
        assert torch.equal(k, layer.keys) and torch.equal(v, layer.values)
