"""Attention: the Triton kernel against an fp32 oracle, SDPA, and inside Hugging Face models."""
import math
import os

import pytest
import torch

from glyph_rt.ops.attention import attention, attention_reference, register_transformers
from glyph_rt.models.tiny import glm4v_inputs, tiny_glm4v, tiny_qwen2_5_vl

from conftest import TEST_DEVICE as TRITON_DEVICE  # cuda on a GPU unless --device cpu


def packed(lens_q, lens_k, hq, hkv, d, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    cu_q = torch.tensor([0, *torch.tensor(lens_q).cumsum(0).tolist()], dtype=torch.int32, device=device)
    cu_k = torch.tensor([0, *torch.tensor(lens_k).cumsum(0).tolist()], dtype=torch.int32, device=device)
    q = torch.randn(sum(lens_q), hq, d, generator=g).to(device, dtype)
    k = torch.randn(sum(lens_k), hkv, d, generator=g).to(device, dtype)
    v = torch.randn(sum(lens_k), hkv, d, generator=g).to(device, dtype)
    return q, k, v, cu_q, cu_k


def on_device(inputs: dict) -> dict:
    """A tiny model's inputs where the Triton kernel runs (the interpreter takes CPU tensors, a GPU its own)."""
    return {k: v.to(TRITON_DEVICE) for k, v in inputs.items()}


def run(backend, q, k, v, cu_q, cu_k, causal, do):
    q, k, v = (x.detach().requires_grad_() for x in (q, k, v))
    o = attention(q, k, v, cu_q, cu_k, causal=causal, backend=backend)
    o.backward(do)
    return o.detach(), q.grad, k.grad, v.grad


CASES = [  # ragged segments, lengths off the block size, GQA ratios 1, 4 and 16, odd head dims
    ([37, 5, 20], [37, 5, 20], 4, 4, 64, False),
    ([37, 5, 20], [37, 5, 20], 4, 1, 64, True),
    ([33, 1, 18], [33, 1, 18], 16, 1, 32, True),
    ([10, 17], [25, 17], 2, 2, 40, True),  # more keys than queries: bottom-right causal alignment
    ([12, 3], [4, 3], 2, 1, 16, True),  # more queries than keys: the first ones see nothing
    ([0, 9], [3, 9], 2, 1, 16, False),  # an empty segment
]


@pytest.mark.parametrize("lens_q,lens_k,hq,hkv,d,causal", CASES)
def test_glyph_kernel_matches_the_fp32_oracle_forward_and_backward(lens_q, lens_k, hq, hkv, d, causal):
    q, k, v, cu_q, cu_k = packed(lens_q, lens_k, hq, hkv, d, device=TRITON_DEVICE)
    do = torch.randn_like(q)
    got = run("glyph", q, k, v, cu_q, cu_k, causal, do)
    want = run("reference", q, k, v, cu_q, cu_k, causal, do)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=name)


def test_dkdv_splits_a_kv_heads_group_until_the_gpu_is_full():
    """GQA's dK/dV: programs per key block and KV head loop over the group's query heads; with few of them (GLM-4's
    2 KV heads at 8K tokens: 256 programs, each over 16 heads, for an H100's 132 SMs) the group is split in parts
    whose fp32 partial sums are added up (the CASES above take both paths)."""
    from glyph_rt.kernels.attention import dkdv_split

    assert dkdv_split(256, 16, 528, 1 << 20) == 4  # 8K tokens: 1,024 programs
    assert dkdv_split(4096, 16, 528, 1 << 20) == 1  # 128K tokens: enough already
    assert dkdv_split(9, 1, 528, 1 << 20) == 1  # no group to split
    assert dkdv_split(9, 6, 528, 1 << 20) == 6  # at most the group
    assert dkdv_split(9, 16, 528, 1 << 29) == 2  # within 1 GiB of partial sums


SDPA_CASES = CASES[:4] + [  # segments of one shape among others go in one batched call
    ([16, 7, 16, 16, 7], [16, 7, 16, 16, 7], 4, 2, 32, False),
    ([5, 9, 5], [12, 9, 12], 2, 1, 16, True),
]


@pytest.mark.parametrize("lens_q,lens_k,hq,hkv,d,causal", SDPA_CASES)
def test_sdpa_backend_matches_the_oracle(lens_q, lens_k, hq, hkv, d, causal):
    q, k, v, cu_q, cu_k = packed(lens_q, lens_k, hq, hkv, d)
    do = torch.randn_like(q)
    for a, b in zip(run("sdpa", q, k, v, cu_q, cu_k, causal, do), run("reference", q, k, v, cu_q, cu_k, causal, do)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_defaults_and_errors():
    q, k, v, cu_q, _ = packed([20], [20], 2, 1, 16)
    ref = attention(q, k, v, backend="reference", causal=True)
    torch.testing.assert_close(attention(q, k, v, causal=True, backend="sdpa"), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        attention(q, k, v, causal=True, softmax_scale=1 / math.sqrt(16), backend="sdpa"), ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="multiple of nheads_k"):
        attention(q, k.expand(-1, 3, -1), v.expand(-1, 3, -1))
    with pytest.raises(ValueError, match="int32"):
        attention(q, k, v, cu_q.long(), cu_q.long())
    with pytest.raises(ValueError, match="unknown"):
        attention(q, k, v, backend="xformers")
    short = torch.tensor([0, 12, 17], dtype=torch.int32)  # tokens 17..19 in no segment: never written
    with pytest.raises(ValueError, match="cu_seqlens_q ends at 17 but there are 20 tokens"):
        attention(q, k, v, short, torch.tensor([0, 12, 20], dtype=torch.int32), backend="glyph")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="flash_attn"):
            attention(q, k, v, backend="flash_attn")


def test_glm4v_runs_on_glyph_attention_in_both_towers():
    name = register_transformers("glyph", backend="glyph")  # the Triton kernel, even on the CPU
    sdpa, ours = tiny_glm4v("sdpa").to(TRITON_DEVICE), tiny_glm4v(name).to(TRITON_DEVICE)
    ours.load_state_dict(sdpa.state_dict())
    kwargs = on_device(glm4v_inputs())
    mask = kwargs["attention_mask"]
    counts = {"varlen": 0, "decode": 0}
    import glyph_rt.kernels.attention_decode as kd
    import glyph_rt.ops.attention as att

    real_varlen, real_decode = att.attention, kd.decode

    def varlen(*a, **k):
        counts["varlen"] += k.get("backend") == "glyph"
        return real_varlen(*a, **k)

    def decode(*a, **k):
        counts["decode"] += 1
        return real_decode(*a, **k)

    att.attention, kd.decode = varlen, decode
    try:
        with torch.no_grad():
            want = sdpa(**kwargs).logits
            got = ours(**kwargs).logits
    finally:
        att.attention, kd.decode = real_varlen, real_decode
    # both towers went through glyph_rt: pages of up to 64 patches and the short prompt's layers
    # take the decode kernel (at most 64 query rows per KV head), the rest the varlen kernel
    assert counts["varlen"] >= 1 and sum(counts.values()) >= 4, counts
    valid = mask.bool()
    torch.testing.assert_close(got[valid], want[valid], rtol=1e-4, atol=1e-4)


def test_qwen2_5_vl_runs_on_glyph_attention_in_both_towers():
    name = register_transformers("glyph", backend="glyph")
    sdpa, ours = tiny_qwen2_5_vl("sdpa").to(TRITON_DEVICE), tiny_qwen2_5_vl(name).to(TRITON_DEVICE)
    ours.load_state_dict(sdpa.state_dict())
    ids = torch.tensor([[5, 6, 997] + [999] * 6 + [996, 7, 8]])  # one 4x6 page: window and full attention
    kw = on_device(dict(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=torch.randn(24, 1176),
                        image_grid_thw=torch.tensor([[1, 4, 6]]), mm_token_type_ids=(ids == 999).long()))
    with torch.no_grad():
        torch.testing.assert_close(ours(**kw).logits, sdpa(**kw).logits, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("hq,hkv,d,causal", [(12, 12, 128, False), (32, 2, 128, True), (16, 16, 64, True)])
def test_low_precision_error_is_at_most_twice_torch(dtype, hq, hkv, d, causal):
    # flash-attention's oracle: our error against fp32 is at most 2x that of the same math in torch
    lens = [2520, 1000, 777, 4097]
    q, k, v, cu_q, cu_k = packed(lens, lens, hq, hkv, d, dtype=dtype, device="cuda")
    do = torch.randn_like(q)
    ref = run("reference", q, k, v, cu_q, cu_k, causal, do)
    ours = run("glyph", q, k, v, cu_q, cu_k, causal, do)
    torch_ = run("sdpa", q, k, v, cu_q, cu_k, causal, do)
    for name, a, b, r in zip(("out", "dq", "dk", "dv"), ours, torch_, ref):
        assert (a.float() - r.float()).abs().max() <= 2 * (b.float() - r.float()).abs().max() + 1e-5, name


@pytest.mark.gpu
def test_chunked_causal_prefill_on_sdpa_runs_flash_not_a_dense_mask():
    """A prefill chunk against a longer cache (Lq < Lk, bottom-right causal) with GQA, as the engine sends: SDPA
    takes torch's lower-right causal bias on its flash kernel (a boolean mask would force the math kernel and
    its [H, Lq, Lk] scores); forward and backward agree with the oracle."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v, cu_q, cu_k = packed([300, 129], [1000, 129], 32, 2, 128, dtype=torch.bfloat16, device="cuda")
    do = torch.randn_like(q)
    ref = run("reference", q, k, v, cu_q, cu_k, True, do)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # fails here if SDPA had to fall back to another kernel
        got = run("sdpa", q, k, v, cu_q, cu_k, True, do)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, ref):
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-2, msg=name)


@pytest.mark.gpu
def test_a_padded_gqa_batch_on_sdpa_runs_a_fused_kernel_not_the_math_one():
    """A left-padded prefill chunk with GQA (GLM-4's 32 query heads for 2 KV heads) through transformers'
    interface on SDPA: one masked call on the memory-efficient kernel (K and V repeated to the query heads), not
    the math kernel's [B, H, S, S_k] scores."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from glyph_rt.ops.attention import glyph_attention_forward

    B, hq, hkv, d, S = 3, 32, 2, 128, 200
    g = torch.Generator().manual_seed(3)
    query = torch.randn(B, hq, S, d, generator=g).to("cuda", torch.bfloat16)
    key, value = (torch.randn(B, hkv, S, d, generator=g).to("cuda", torch.bfloat16) for _ in range(2))
    mask = torch.ones(B, S, dtype=torch.long, device="cuda")
    mask[1, :37], mask[2, :150] = 0, 0
    with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):  # fails here if SDPA had to fall back to another kernel
        got, _ = glyph_attention_forward(torch.nn.Module(), query, key, value, mask, backend="sdpa")
    want, _ = glyph_attention_forward(torch.nn.Module(), query.float(), key.float(), value.float(), mask,
                                      backend="reference")
    torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2)


def test_strided_inputs():
    q, k, v, cu_q, cu_k = packed([9, 14], [9, 14], 2, 2, 16, device=TRITON_DEVICE)
    qt = q.transpose(1, 2).contiguous().transpose(1, 2)  # last dim not contiguous
    a = attention(qt, k, v, cu_q, cu_k, backend="glyph")
    torch.testing.assert_close(a, attention(q, k, v, cu_q, cu_k, backend="reference"), rtol=1e-4, atol=1e-4)
    gaps = torch.zeros(2 * len(cu_q), dtype=torch.int32, device=TRITON_DEVICE)
    gaps[::2] = cu_q  # cu_seqlens as a strided view, zeros between its values
    torch.testing.assert_close(attention(q, k, v, gaps[::2], gaps[::2], backend="glyph"), a, rtol=1e-4, atol=1e-4)


def cache_view(B, Sk, hkv, d, cap, g):
    """k or v as transformers' cache gives it, (B, Sk, Hkv, D) through a transpose, from a larger buffer."""
    return torch.randn(B, hkv, cap, d, generator=g)[:, :, :Sk].transpose(1, 2).to(TRITON_DEVICE)


DECODE_CASES = [  # (B, Sq, Sk, Hq, Hkv, D, key starts, causal, splits)
    (3, 1, 70, 8, 2, 64, None, True, None),
    (2, 1, 53, 16, 1, 40, [0, 17], True, 3),  # left padding, MQA, chunks that start inside padding
    (2, 3, 41, 6, 2, 80, [5, 0], True, 4),  # three query rows: bottom-right causal, GQA 3
    (1, 4, 4, 4, 4, 16, [2], True, 2),  # a prefill whose first query rows see nothing
    (2, 2, 33, 4, 1, 32, [0, 3], False, 5),
]


@pytest.mark.parametrize("B,Sq,Sk,hq,hkv,d,starts,causal,splits", DECODE_CASES)
def test_decode_kernel_matches_the_fp32_oracle(B, Sq, Sk, hq, hkv, d, starts, causal, splits):
    from glyph_rt.kernels.attention_decode import decode

    g = torch.Generator().manual_seed(1)
    q = torch.randn(B, hq, Sq, d, generator=g).transpose(1, 2).to(TRITON_DEVICE)
    k, v = cache_view(B, Sk, hkv, d, Sk + 7, g), cache_view(B, Sk, hkv, d, Sk + 7, g)
    st = None if starts is None else torch.tensor(starts, dtype=torch.int32, device=TRITON_DEVICE)
    got = decode(q, k, v, st, causal, 1 / math.sqrt(d), splits=splits)
    for b in range(B):
        s0 = 0 if starts is None else starts[b]
        cu_q = torch.tensor([0, Sq], dtype=torch.int32)
        cu_k = torch.tensor([0, Sk - s0], dtype=torch.int32)
        want = attention_reference(q[b].cpu(), k[b, s0:].cpu(), v[b, s0:].cpu(), cu_q, cu_k, causal, 1 / math.sqrt(d))
        torch.testing.assert_close(got[b].cpu(), want, rtol=1e-4, atol=1e-4)


def test_decode_kernel_on_an_empty_cache_gives_zeros():
    from glyph_rt.kernels.attention_decode import decode

    q = torch.randn(2, 1, 4, 16, device=TRITON_DEVICE)
    k = torch.randn(2, 0, 2, 16, device=TRITON_DEVICE)
    assert torch.equal(decode(q, k, k, None, True, 0.25), torch.zeros_like(q))


def test_transformers_decoding_reads_the_cache_in_place():
    from glyph_rt.ops.attention import glyph_attention_forward

    g = torch.Generator().manual_seed(2)
    B, hq, hkv, d, Sk = 3, 8, 2, 32, 29
    query = torch.randn(B, hq, 1, d, generator=g).to(TRITON_DEVICE)
    key, value = (torch.randn(B, hkv, Sk, d, generator=g).to(TRITON_DEVICE) for _ in range(2))
    mask = torch.ones(B, Sk, dtype=torch.long, device=TRITON_DEVICE)
    mask[1, :4] = 0
    mask[2, :11] = 0  # left padding
    module = torch.nn.Module()
    calls = []
    import glyph_rt.kernels.attention_decode as kd

    real = kd.decode
    kd.decode = lambda *a, **k: calls.append(a[3]) or real(*a, **k)
    try:
        got, _ = glyph_attention_forward(module, query, key, value, mask, backend="glyph")
        holes = mask.clone()
        holes[0, 5] = 0  # not left padding: unpadded, through the varlen kernel
        got_holes, _ = glyph_attention_forward(module, query, key, value, holes, backend="glyph")
    finally:
        kd.decode = real
    assert len(calls) == 1 and calls[0].tolist() == [0, 4, 11]
    want, _ = glyph_attention_forward(module, query, key, value, mask, backend="reference")
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    want_holes, _ = glyph_attention_forward(module, query, key, value, holes, backend="reference")
    torch.testing.assert_close(got_holes, want_holes, rtol=1e-4, atol=1e-4)


def test_generation_on_glyph_attention_matches_sdpa():
    name = register_transformers("glyph", backend="glyph")
    sdpa, ours = tiny_glm4v("sdpa").to(TRITON_DEVICE), tiny_glm4v(name).to(TRITON_DEVICE)
    ours.load_state_dict(sdpa.state_dict())
    kwargs = on_device(glm4v_inputs())  # a left-padded batch
    with torch.no_grad():
        want = sdpa.generate(**kwargs, max_new_tokens=5, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
        got = ours.generate(**kwargs, max_new_tokens=5, do_sample=False, output_logits=True,
                            return_dict_in_generate=True)
    assert torch.equal(got.sequences, want.sequences)
    for a, b in zip(got.logits, want.logits):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_decode_low_precision_error_is_at_most_twice_torch(dtype):
    import torch.nn.functional as F

    from glyph_rt.kernels.attention_decode import decode

    B, Sk, hq, hkv, d = 4, 40_000, 32, 2, 128
    starts = [0, 5, 1000, Sk - 1]
    q = torch.randn(B, 1, hq, d, device="cuda", dtype=dtype)
    k, v = (torch.randn(B, hkv, Sk, d, device="cuda", dtype=dtype) for _ in range(2))
    ours = decode(q, k.transpose(1, 2), v.transpose(1, 2), torch.tensor(starts, dtype=torch.int32, device="cuda"),
                  True, d ** -0.5)
    for b, s0 in enumerate(starts):
        cu_k = torch.tensor([0, Sk - s0], dtype=torch.int32, device="cuda")
        ref = attention_reference(q[b], k[b, :, s0:].transpose(0, 1), v[b, :, s0:].transpose(0, 1),
                                  cu_k[:1].new_tensor([0, 1]), cu_k, True, d ** -0.5)
        torch_ = F.scaled_dot_product_attention(q[b:b + 1].transpose(1, 2), k[b:b + 1, :, s0:], v[b:b + 1, :, s0:],
                                                enable_gqa=True)[0].transpose(0, 1)
        assert (ours[b].float() - ref).abs().max() <= 2 * (torch_.float() - ref).abs().max() + 1e-5


@pytest.mark.parametrize("lens,causal", [([123, 7], True),
                                         pytest.param([769, 123], False, marks=pytest.mark.slow)])
def test_odd_lengths_match_the_oracle(lens, causal):
    q, k, v, cu_q, cu_k = packed(lens, lens, 1, 1, 16, device=TRITON_DEVICE, seed=3)
    do = torch.randn_like(q)
    got = run("glyph", q, k, v, cu_q, cu_k, causal, do)
    want = run("reference", q, k, v, cu_q, cu_k, causal, do)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=name)


def test_delta_kernel_matches_torch_on_strided_views():
    from glyph_rt.kernels.attention import delta

    g = torch.Generator().manual_seed(4)
    o = torch.randn(37, 5, 48, generator=g)[:, 1:4, :40].to(TRITON_DEVICE)  # odd head dim, head-strided
    do = torch.randn(3, 37, 40, generator=g).transpose(0, 1).to(TRITON_DEVICE)
    torch.testing.assert_close(delta(o, do), (o.float() * do.float()).sum(-1).t(), rtol=1e-5, atol=1e-5)
    assert delta(o[:0], do[:0]).shape == (3, 0)


class GridRecorder:
    """Stands in for a @triton.jit kernel: records the launch grid, runs nothing."""

    def __init__(self):
        self.grids = []

    def __getitem__(self, grid):
        self.grids.append(grid)
        return lambda *args, **kwargs: None


def test_grids_fold_segments_and_batches_onto_axis_0(monkeypatch):
    import glyph_rt.kernels.attention as ka
    import glyph_rt.kernels.attention_decode as kd

    segments = 70_000  # window attention over ~560 pages: more than grid axis y's 65,535
    cu = torch.arange(segments + 1, dtype=torch.int32) * 4
    q = torch.zeros(segments * 4, 16, 16)
    k = torch.zeros(segments * 4, 2, 16)
    for name in ("attn_fwd_kernel", "attn_bwd_dkdv_kernel", "attn_bwd_dq_kernel", "attn_bwd_delta_kernel"):
        monkeypatch.setattr(ka, name, GridRecorder())
    o, lse = ka.forward(q, k, k, cu, cu, 4, True, 0.25)
    ka.backward(o, q, k, k, o, lse, cu, cu, 4, 4, True, 0.25)
    for name, heads in (("attn_fwd_kernel", 16), ("attn_bwd_dkdv_kernel", 2), ("attn_bwd_dq_kernel", 16)):
        (grid,) = getattr(ka, name).grids
        assert grid == (segments, heads), (name, grid)  # one 16-row block per segment, x segments
    for name in ("attn_decode_split_kernel", "attn_decode_merge_kernel"):
        monkeypatch.setattr(kd, name, GridRecorder())
    batch = 70_000
    kd.decode(torch.zeros(batch, 1, 4, 16), torch.zeros(batch, 3, 2, 16), torch.zeros(batch, 3, 2, 16), None,
              True, 0.25, splits=1)
    assert kd.attn_decode_split_kernel.grids == [(batch * 2,)] and kd.attn_decode_merge_kernel.grids == [(batch * 2,)]
    assert ka.grid(3, 100_000, 32) == (300_000, 32)
    with pytest.raises(ValueError, match="heads"):
        ka.grid(1, 1, 70_000)


def test_tile_configs_are_one_table_for_launchers_and_aot_specs():
    from glyph_rt.kernels import attention as ka
    from glyph_rt.kernels import attention_decode as kd

    for d in (1, 64, 65, 128, 129, 256):
        for dt in (torch.bfloat16, torch.float16, torch.float32):
            for kernel in ka.KERNELS:
                cfg = ka.config(kernel, d, dt)
                assert {"num_warps", "num_stages"} <= set(cfg)
            for rows in (16, 32, 64):
                assert {"BN", "num_warps", "num_stages", "merge_warps"} == set(kd.config(d, dt, rows))
    # fwd at 129-256 in 16-bit: BM=128, BN=64, 3 stages needed 262,144 B of shared memory
    assert ka.config("fwd", 200, torch.bfloat16) != dict(BM=128, BN=64, num_warps=8, num_stages=3)
    specs = ka.aot_specs()
    for s in specs:
        kernel = s.name.split()[0][len("attn_"):]
        dt = {"bfloat16": torch.bfloat16, "float32": torch.float32}[s.name.split()[1]]
        cfg = ka.config(kernel, s.constexprs["D"], dt)
        assert (s.num_warps, s.num_stages) == (cfg.pop("num_warps"), cfg.pop("num_stages"))
        assert all(s.constexprs[key] == val for key, val in cfg.items()), s.name
    buckets = {(s.name.split()[0], s.name.split()[1], s.constexprs["BLOCK_D"]) for s in specs}
    assert len(buckets) == 4 * 2 * 5  # every kernel x {16-bit, fp32} x head-dim bucket 16..256
    with pytest.raises(ValueError, match="unknown"):
        ka.config("fwd2", 64, torch.bfloat16)


@pytest.mark.parametrize("backend", ["glyph", "reference", "sdpa"])
def test_cu_seqlens_must_start_at_0_never_decrease_and_end_at_the_total(backend):
    """lens.cumsum(0) without the leading 0 ends at the total and passed the old end-only check: the Triton path
    then returned uninitialized memory for the first segment's rows. Each argument is checked, in the host sync
    that finds the longest segment (glyph) or reads the segments (sdpa, reference), max_seqlen given or not, and
    named (boundaries past the tokens made the Triton path write outside its tensors)."""
    q, k, v, cu, _ = packed([5, 7], [5, 7], 2, 1, 16, device=TRITON_DEVICE)
    i32 = dict(dtype=torch.int32, device=TRITON_DEVICE)
    no_zero = torch.tensor([5, 7], **i32).cumsum(0, dtype=torch.int32)  # [5, 12]: ends at the total
    whole = torch.tensor([0, 12], **i32)
    with pytest.raises(ValueError, match=r"^cu_seqlens_q must start at 0, got 5 \(cumulative lengths need"):
        attention(q, k, v, no_zero, no_zero, backend=backend)
    with pytest.raises(ValueError, match=r"^cu_seqlens_k must start at 0, got 5"):
        attention(q, k, v, whole, no_zero, backend=backend)
    three = torch.tensor([0, 4, 9, 12], **i32)
    down = torch.tensor([0, 9, 4, 12], **i32)  # a negative segment
    with pytest.raises(ValueError, match=r"^cu_seqlens_k must be non-decreasing, but entry 2 \(4\) is below "
                                         r"entry 1 \(9\)"):
        attention(q, k, v, three, down, backend=backend)
    with pytest.raises(ValueError, match=r"^cu_seqlens_q must be non-decreasing, but entry 2 \(4\) is below"):
        attention(q, k, v, down, three, backend=backend)
    with pytest.raises(ValueError, match=r"^cu_seqlens_k ends at 11 but there are 12 tokens"):
        attention(q, k, v, cu, torch.tensor([0, 5, 11], **i32), backend=backend)
    with pytest.raises(ValueError, match="cu_seqlens_q must start at 0"):  # a given max_seqlen skips no check
        attention(q, k, v, no_zero, no_zero, 7, 7, backend=backend)
    with pytest.raises(ValueError, match="cu_seqlens_k ends at 20 but there are 12 tokens"):
        attention(q, k, v, whole, torch.tensor([0, 20], **i32), 12, 20, backend=backend)
    ok = attention(q, k, v, three, three, backend=backend)  # valid boundaries (an empty segment too) still run
    want = attention_reference(q, k, v, three, three, False, 1 / math.sqrt(16))
    torch.testing.assert_close(ok.float(), want, rtol=1e-4, atol=1e-4)
    empty = torch.tensor([0, 5, 5, 12], **i32)
    torch.testing.assert_close(attention(q, k, v, empty, empty, backend=backend).float(),
                               attention_reference(q, k, v, empty, empty, False, 1 / math.sqrt(16)),
                               rtol=1e-4, atol=1e-4)


def test_max_seqlen_below_the_longest_segment_is_refused():
    """The kernels size their grids from max_seqlen: one below the longest segment left that segment's later rows
    (and dK/dV rows) unwritten. One above it is fine."""
    q, k, v, cu, _ = packed([5, 7], [5, 7], 2, 1, 16, device=TRITON_DEVICE)
    with pytest.raises(ValueError, match=r"^max_seqlen_q=4 is below the longest segment of cu_seqlens_q \(7\)"):
        attention(q, k, v, cu, cu, 4, 7, backend="glyph")
    with pytest.raises(ValueError, match=r"^max_seqlen_k=6 is below the longest segment of cu_seqlens_k \(7\)"):
        attention(q, k, v, cu, cu, 7, 6, backend="glyph")
    want = attention_reference(q, k, v, cu, cu, False, 1 / math.sqrt(16))
    torch.testing.assert_close(attention(q, k, v, cu, cu, 64, 64, backend="glyph").float(), want, rtol=1e-4,
                               atol=1e-4)


LATE_INTERPRETER = """
import os, torch
import glyph_rt.kernels.attention
os.environ["TRITON_INTERPRET"] = "1"
from glyph_rt.ops.attention import attention, available_backends
print(available_backends(torch.device("cpu"))["glyph"])
q = torch.randn(8, 2, 16)
try:
    attention(q, q, q, backend="glyph")
except RuntimeError as e:
    print(e)
"""


def test_interpreter_set_after_the_kernels_were_imported_is_named():
    """triton.jit reads TRITON_INTERPRET when a module is imported: kernels imported before it was set are built for
    a GPU, and the CPU dispatch said glyph was available, then failed inside Triton ("0 active drivers")."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", LATE_INTERPRETER], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    why = ("glyph_rt.kernels.attention was imported before TRITON_INTERPRET=1 was set, so its kernels were built for "
           "a GPU: set TRITON_INTERPRET=1 before importing glyph_rt")
    assert r.stdout.splitlines() == [why, f"attention backend 'glyph' is not available: {why}"]


# --------------------------------------------------------------------------- auto's choice per case
def _device(name="NVIDIA H100 80GB HBM3", cap=(9, 0)):
    from glyph_rt.ops.attention import DeviceInfo

    return DeviceInfo(name, cap)


ALL = {"glyph": None, "flash_attn": None, "sdpa": None, "reference": None}
NO_FA = {**ALL, "flash_attn": "flash_attn is not installed"}


def _installed(monkeypatch, *kinds):
    """flash_attn packages as if installed: ("fa4",), ("fa2",) or both (FA4 first, as they are looked up)."""
    from glyph_rt.ops import attention as ops_attention

    fns = tuple((lambda *a, _k=k, **kw: _k, k) for k in kinds)
    monkeypatch.setattr(ops_attention, "_flash_modules", lambda: fns)


@pytest.fixture
def fa2(monkeypatch):
    _installed(monkeypatch, "fa2")


def test_fa4_is_chosen_only_on_hopper_or_newer_at_its_head_dims(monkeypatch):
    """FA4 (flash_attn.cute) asserts sm_90+ and runs head dims 64/96/128: elsewhere FA2 when installed, else
    not flash_attn at all."""
    from glyph_rt.ops.attention import choose_backend, flash_attn_varlen

    bf16, a100 = torch.bfloat16, _device("NVIDIA A100-SXM4-80GB", (8, 0))
    _installed(monkeypatch, "fa4")
    assert choose_backend("prefill", _device(), ALL, bf16, 128, table={}) == "flash_attn"
    assert choose_backend("prefill", a100, ALL, bf16, 128, table={}) == "sdpa"
    assert choose_backend("prefill", _device(), ALL, bf16, 256, table={}) == "sdpa"
    assert choose_backend("vision", a100, ALL, bf16, 72, table={"sm_80": {"vision": "flash_attn"}}) == "sdpa"
    assert flash_attn_varlen((8, 0), 128) == (None, None)
    _installed(monkeypatch, "fa4", "fa2")
    assert flash_attn_varlen((9, 0), 128)[1] == "fa4" and flash_attn_varlen((8, 0), 128)[1] == "fa2"
    assert flash_attn_varlen((9, 0), 256)[1] == "fa2"
    assert choose_backend("prefill", a100, ALL, bf16, 128, table={}) == "flash_attn"


def test_auto_defaults_where_nothing_was_measured(fa2):
    from glyph_rt.ops.attention import choose_backend

    bf16 = torch.bfloat16
    assert choose_backend("vision", _device(), ALL, bf16, 128, table={}) == "glyph"
    assert choose_backend("decode", _device(), ALL, bf16, 128, table={}) == "glyph"
    assert choose_backend("prefill", _device(), ALL, bf16, 128, table={}) == "flash_attn"
    assert choose_backend("prefill", _device(), NO_FA, bf16, 128, table={}) == "sdpa"
    # fp32 (FMA tiles) and head dims over 256 never take the Triton kernel on a GPU
    assert choose_backend("vision", _device(), ALL, torch.float32, 128, table={}) == "sdpa"
    assert choose_backend("decode", _device(), ALL, bf16, 512, table={}) == "sdpa"
    assert choose_backend("vision", _device(), ALL, bf16, 72, table={}) == "flash_attn"  # unaligned rows spill
    with pytest.raises(ValueError, match="case"):
        choose_backend("training", _device(), ALL, bf16, 128, table={})


def test_auto_never_picks_glyph_or_flash_attn_below_compute_capability_8(monkeypatch, fa2):
    """A T4 (sm_75): FA2 has no kernels for it and the Triton tiles need more than its 64 KiB of shared memory per
    block (an fp16 d=128 forward block 81,920 B): auto takes sdpa for every case, even where the measured table
    names another backend; naming glyph or flash_attn there is an error. sm_80 and newer keep the defaults."""
    from types import SimpleNamespace

    from glyph_rt.ops import attention as ops_attention
    from glyph_rt.ops.attention import CASES, choose_backend, resolve_backend

    t4 = _device("Tesla T4", (7, 5))
    for case in CASES:
        for table in ({}, {"sm_75": {case: "glyph"}}, {"Tesla T4": {case: "flash_attn"}}):
            for dt in (torch.float16, torch.bfloat16):
                assert choose_backend(case, t4, ALL, dt, 128, table=table) == "sdpa", (case, table, dt)
    for gpu in (_device("NVIDIA A100-SXM4-80GB", (8, 0)), _device("NVIDIA L4", (8, 9)), _device()):
        got = {case: choose_backend(case, gpu, ALL, torch.float16, 128, table={}) for case in CASES}
        assert got == {"vision": "glyph", "prefill": "flash_attn", "decode": "glyph"}, gpu
    # the whole dispatch of a CUDA q (a stand-in: no GPU here), with the device query choose_backend's caller makes
    monkeypatch.setattr(ops_attention, "available_backends", lambda device: dict(ALL))  # triton and FA2 installed
    q = SimpleNamespace(device=torch.device("cuda", 0), dtype=torch.float16, shape=(10, 4, 128))
    monkeypatch.setattr(ops_attention, "_device_info", lambda index: t4)
    assert {case: resolve_backend("auto", q, case) for case in CASES} == dict.fromkeys(CASES, "sdpa")
    for name in ("glyph", "flash_attn"):
        with pytest.raises(RuntimeError, match=rf"backend '{name}' needs compute capability 8.0 or newer; Tesla T4 "
                                               r"is 7.5: use backend 'sdpa'"):
            resolve_backend(name, q)
    monkeypatch.setattr(ops_attention, "_device_info", lambda index: _device("NVIDIA A100-SXM4-80GB", (8, 0)))
    assert resolve_backend("auto", q, "vision") == resolve_backend("glyph", q) == "glyph"
    assert resolve_backend("auto", q, "prefill") == "flash_attn"


def test_auto_sends_only_16_bit_inputs_to_the_kernel(fa2):
    """fp64 (and fp8) ran in the interpreter but the kernels do not compile for them on a GPU (a float64 dot in a
    float32 accumulator): auto sends them to SDPA, even where the measured table names glyph."""
    from glyph_rt.ops.attention import CASES, choose_backend

    glyph_everywhere = {"sm_90": {case: "glyph" for case in CASES}}
    for dt in (torch.float64, torch.float8_e4m3fn, torch.float8_e5m2, torch.float32):
        for case in CASES:
            for table in ({}, glyph_everywhere):
                assert choose_backend(case, _device(), ALL, dt, 128, table=table) == "sdpa", (dt, case, table)
    for dt in (torch.float16, torch.bfloat16):
        for case in CASES:
            assert choose_backend(case, _device(), ALL, dt, 128, table=glyph_everywhere) == "glyph", (dt, case)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float8_e4m3fn])
def test_glyph_backend_refuses_dtypes_its_kernels_do_not_compile_for(dtype):
    from glyph_rt.ops.attention import glyph_attention_forward

    q, k, v, cu_q, cu_k = packed([9, 5], [9, 5], 2, 1, 16, device=TRITON_DEVICE)
    q, k, v = (x.to(dtype) for x in (q, k, v))
    with pytest.raises(ValueError, match=rf"'glyph'.*float16, bfloat16 and float32, got {dtype}.*'sdpa'"):
        attention(q, k, v, cu_q, cu_k, backend="glyph")
    with pytest.raises(ValueError, match=rf"got {dtype}"):  # a decode step, which takes the split-key kernel
        glyph_attention_forward(torch.nn.Module(), q[None, :1].transpose(1, 2), k[None].transpose(1, 2),
                                v[None].transpose(1, 2), None, backend="glyph")


def test_raw_pointer_launches_check_devices_and_dtypes_first():
    """The kernels take raw pointers: k or v on another device, or a dtype other than q's, is refused by name
    before a launch (a float32 q on a float16 KV cache failed deep in Triton with an AssertionError)."""
    from glyph_rt.kernels.attention_decode import decode
    from glyph_rt.ops.attention import check_inputs, glyph_attention_forward

    q, k, v, cu_q, cu_k = packed([9, 5], [9, 5], 2, 1, 16)
    with pytest.raises(ValueError, match="one device, got cpu, meta, cpu"):
        check_inputs(q, k.to("meta"), v, cu_q, cu_k)
    with pytest.raises(ValueError, match="one device, got cpu, cpu, meta"):
        attention(q, k, v.to("meta"), cu_q, cu_k, backend="reference")
    qd = torch.randn(2, 1, 4, 16, device=TRITON_DEVICE)
    kd = torch.randn(2, 9, 2, 16, device=TRITON_DEVICE)
    with pytest.raises(ValueError, match="one dtype, got torch.float32, torch.float16, torch.float16"):
        decode(qd, kd.half(), kd.half(), None, True, 0.25)
    module = torch.nn.Module()
    module.is_causal = True
    with pytest.raises(ValueError, match="one dtype"):  # transformers' path, as the reviewer's fp32 q on a fp16 cache
        glyph_attention_forward(module, qd.transpose(1, 2), kd.half().transpose(1, 2), kd.half().transpose(1, 2),
                                None, backend="glyph")
    with pytest.raises(ValueError, match="one device"):
        decode(qd, kd.to("meta"), kd, None, True, 0.25)
    with pytest.raises(ValueError, match="float16, bfloat16 and float32, got torch.float64"):
        decode(qd.double(), kd.double(), kd.double(), None, True, 0.25)
    for bad in (torch.zeros(2, dtype=torch.int64, device=TRITON_DEVICE),
                torch.zeros(3, dtype=torch.int32, device=TRITON_DEVICE), torch.zeros(2, dtype=torch.int32,
                                                                                     device="meta")):
        with pytest.raises(ValueError, match=r"key_start must be an int32 \[2\]"):
            decode(qd, kd, kd, bad, True, 0.25)
    with pytest.raises(ValueError, match="do not match"):
        decode(qd, kd[..., :8], kd[..., :8], None, True, 0.25)


def test_auto_follows_the_measured_table_by_gpu_name_then_capability(fa2):
    from glyph_rt.ops.attention import choose_backend

    table = {"NVIDIA H100 80GB HBM3": {"prefill": "sdpa", "vision": "flash_attn"},
             "sm_90": {"prefill": "glyph", "decode": "sdpa"}, "sm_80": {"vision": "flash_attn"}}
    bf16 = torch.bfloat16
    assert choose_backend("prefill", _device(), ALL, bf16, 128, table) == "sdpa"  # by name
    assert choose_backend("decode", _device(), ALL, bf16, 128, table) == "sdpa"  # by capability
    assert choose_backend("prefill", _device("NVIDIA H100 PCIe"), ALL, bf16, 128, table) == "glyph"
    assert choose_backend("vision", _device("NVIDIA A100-SXM4-80GB", (8, 0)), ALL, bf16, 128, table) == "flash_attn"
    # a measured backend that is not installed here is never chosen: the defaults take over
    assert choose_backend("vision", _device("NVIDIA A100-SXM4-80GB", (8, 0)), NO_FA, bf16, 128, table) == "glyph"
    assert choose_backend("vision", _device("NVIDIA L4", (8, 9)), ALL, bf16, 128, table) == "glyph"


def test_the_committed_table_names_known_backends_and_cases():
    from glyph_rt.ops.attention import BACKENDS, CASES, measured_choices

    for gpu, cases in measured_choices().items():
        assert set(cases) <= set(CASES) and set(cases.values()) <= set(BACKENDS), gpu


def test_bench_writes_the_fastest_dispatchable_backend_per_case(tmp_path):
    import json

    from bench.bench_attention import choices, write_choices

    def row(backend, case, ms=None):
        return {"backend": backend, "case": case, **({"fwd_ms": ms} if ms else {"error": "OOM"})}

    rows = {"vision": [row("glyph", "v", 2.0), row("sdpa", "v", 3.0),
                       row("sdpa_cudnn", "v", 1.0)],  # a pinned SDPA kernel: the dispatcher cannot pick it
            "prefill": [row("glyph", "p", 9.0), row("flash_attn", "p", 7.0), row("sdpa", "p")]}
    table = choices(rows)
    assert {c: t["backend"] for c, t in table.items()} == {"vision": "glyph", "prefill": "flash_attn"}
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"gpus": {}}))
    write_choices("NVIDIA H100 80GB HBM3", (9, 0), table, path)
    data = json.loads(path.read_text())["gpus"]
    assert data["sm_90"]["prefill"]["backend"] == "flash_attn" and set(data) == {"NVIDIA H100 80GB HBM3", "sm_90"}


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("S,Sk,hq,hkv", [(7, 7, 4, 2), (3, 11, 4, 1), (1, 9, 2, 2)])
def test_padded_rows_on_sdpa_equal_the_unpadded_oracle_forward_and_backward(S, Sk, hq, hkv, causal):
    """A 2D padding mask (left padding as the serving engine's batches, right padding as training's) runs as one
    batched SDPA call; it equals the oracle on the unpadded rows, and padded query rows are zero."""
    from glyph_rt.ops.attention import glyph_attention_forward

    class Module:
        is_causal = causal
        training = True

    g = torch.Generator().manual_seed(S * 100 + Sk)
    B, D = 3, 16
    q0, k0, v0 = (torch.randn(B, h, n, D, generator=g) for h, n in ((hq, S), (hkv, Sk), (hkv, Sk)))
    mask = torch.ones(B, Sk, dtype=torch.long)
    mask[0, :2] = 0  # left padding
    if S == Sk:
        mask[2, -2:] = 0  # right padding
    do = torch.randn(B, S, hq, D, generator=g)
    grads = {}
    for backend in ("sdpa", "reference"):
        q, k, v = (x.clone().requires_grad_() for x in (q0, k0, v0))
        out, _ = glyph_attention_forward(Module(), q, k, v, mask, backend=backend)
        (out * do).sum().backward()
        grads[backend] = (out.detach(), q.grad, k.grad, v.grad)
    for a, b in zip(grads["sdpa"], grads["reference"]):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
    assert not grads["sdpa"][0][~mask[:, -S:].bool()].any()


def test_large_padded_batches_are_unpadded_not_masked(monkeypatch):
    """Above PADDED_SDPA_MAX no [B, S, S_k] mask is built: the rows are unpadded (and give the same result)."""
    from glyph_rt.ops import attention as att

    class Module:
        is_causal = True
        training = False

    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 2, 9, 8, generator=g) for _ in range(3))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :3] = 0
    small, _ = att.glyph_attention_forward(Module(), q, k, v, mask, backend="sdpa")
    monkeypatch.setattr(att, "PADDED_SDPA_MAX", 2 * 9 * 9 - 1)
    monkeypatch.setattr(att, "_sdpa_padded", lambda *a: pytest.fail("built a mask above the limit"))
    large, _ = att.glyph_attention_forward(Module(), q, k, v, mask, backend="sdpa")
    torch.testing.assert_close(small, large, atol=1e-5, rtol=1e-4)


def test_autocast_brings_q_k_v_to_one_dtype():
    """Under a bf16 autocast, rotary embeddings in fp32 leave q and k in fp32 beside a bf16 v (as transformers'
    attention modules hand them over); attention takes them in autocast's dtype, as SDPA does."""
    from glyph_rt.ops.attention import attention, glyph_attention_forward

    torch.manual_seed(0)
    q, k = torch.randn(7, 4, 16), torch.randn(7, 2, 16)
    v = torch.randn(7, 2, 16).bfloat16()
    want = attention(q.bfloat16(), k.bfloat16(), v, causal=True, backend="reference")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = attention(q, k, v, causal=True, backend="reference")
        out, _ = glyph_attention_forward(torch.nn.Module(), q.transpose(0, 1)[None], k.transpose(0, 1)[None],
                                         v.transpose(0, 1)[None], None, backend="reference")
    assert got.dtype == out.dtype == torch.bfloat16
    torch.testing.assert_close(got, want, atol=1e-2, rtol=2e-2)  # the reference's matmuls run in bf16 there
    torch.testing.assert_close(out[0], got)
