"""Patch embedding against the Hugging Face modules, forward and backward."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers.models.glm4v.configuration_glm4v import Glm4vVisionConfig
from transformers.models.glm4v.modeling_glm4v import Glm4vVisionPatchEmbed
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionPatchEmbed

from glyph_rt.models.patch_embed import PatchEmbed
from glyph_rt.ops.patch_embed import expand_uint8, fold_weight, patch_embed, patch_embed_reference
from glyph_rt.ops.pixel_values import padded_rows, uint8_rows

from conftest import TEST_DEVICE as TRITON_DEVICE  # cuda on a GPU unless --device cpu
BACKENDS = ["torch", "triton"]


def hf_glm(dim=64, device="cpu", dtype=torch.float32):
    torch.manual_seed(0)
    return Glm4vVisionPatchEmbed(Glm4vVisionConfig(hidden_size=dim)).to(device, dtype)


def hf_qwen(dim=48, device="cpu", dtype=torch.float32):
    torch.manual_seed(1)
    return Qwen2_5_VisionPatchEmbed(embed_dim=dim).to(device, dtype)


def device_of(backend):
    return TRITON_DEVICE if backend == "triton" else "cpu"


def grads(module, x, upstream):
    module.zero_grad()
    x = x.detach().requires_grad_(x.is_floating_point())
    y = module(x)
    y.backward(upstream)
    out = {"y": y.detach(), "weight": module.proj.weight.grad.clone()}
    if module.proj.bias is not None:
        out["bias"] = module.proj.bias.grad.clone()
    if x.requires_grad:
        out["x"] = x.grad.clone()
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("make", [hf_glm, hf_qwen], ids=["glm4v", "qwen2_5_vl"])
@pytest.mark.parametrize("n", [123, 7])
def test_forward_and_backward_match_the_hf_module(backend, make, n):
    dev = device_of(backend)
    hf = make(device=dev)
    ours = PatchEmbed.from_hf(hf, backend=backend)
    torch.manual_seed(n)
    x = torch.randn(n, 1176, device=dev)
    up = torch.randn(n, hf.proj.out_channels, device=dev)
    want, got = grads(hf, x, up), grads(ours, x, up)
    assert set(want) == set(got)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-4, msg=k)
    torch.testing.assert_close(patch_embed_reference(x, hf.proj.weight, hf.proj.bias), want["y"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("make", [hf_glm, hf_qwen], ids=["glm4v", "qwen2_5_vl"])
def test_uint8_patches_equal_normalize_then_embed(backend, make):
    dev = device_of(backend)
    hf = make(device=dev)
    ours = PatchEmbed.from_hf(hf, backend=backend)
    torch.manual_seed(2)
    u8 = torch.randint(0, 256, (77, 588), dtype=torch.uint8, device=dev)
    up = torch.randn(77, hf.proj.out_channels, device=dev)
    want = grads(hf, expand_uint8(u8), up)  # the processor's pixel_values, then the HF module
    got = grads(ours, u8, up)  # gradients reach the Conv3d weight through the fold
    for k in ("y", "weight", "bias"):
        if k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=2e-3, msg=k)
    # inference folds on every forward: the same answer each time, and weights changed in place are seen, through
    # the parameter or through .data (peft's merge_and_unload, EMA updates: no new address, no new version)
    with torch.no_grad():
        a = ours(u8)
        assert ours(u8).equal(a)
        hf.proj.weight.mul_(2)
        torch.testing.assert_close(ours(u8), hf(expand_uint8(u8)), rtol=1e-4, atol=2e-3)
        hf.proj.weight.data.mul_(0.5)
        if hf.proj.bias is not None:
            hf.proj.bias.data.add_(0.25)
        torch.testing.assert_close(ours(u8), hf(expand_uint8(u8)), rtol=1e-4, atol=2e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("with_bias", [True, False])
def test_inference_fold_equals_the_autograd_fold_bit_for_bit(dtype, with_bias):
    """Without gradients fold_weight writes the folded weight in place (divided, transposed and cast in one
    pass): the same bits as the differentiable fold that training uses."""
    hf = hf_glm(dtype=dtype)
    w, b = hf.proj.weight, hf.proj.bias if with_bias else None
    with torch.no_grad():
        fast = fold_weight(w, b)
    slow = fold_weight(w, b)
    assert slow[0].requires_grad and not fast[0].requires_grad
    for x, y in zip(fast, slow):
        assert x.dtype == y.dtype == dtype and x.is_contiguous() and torch.equal(x, y.detach())
    assert not fast[0][588:].any()
    with torch.inference_mode():
        assert all(torch.equal(x, y) for x, y in zip(fold_weight(w, b), fast))


def test_checkpoint_weights_load_as_they_are():
    hf = hf_glm()
    ours = PatchEmbed(64, bias=True)
    ours.load_state_dict(hf.state_dict())
    x = torch.randn(5, 1176)
    torch.testing.assert_close(ours(x), hf(x), rtol=1e-5, atol=1e-5)
    assert set(ours.state_dict()) == set(hf.state_dict())


def test_folded_weights_are_592_rows_contiguous_with_zero_padding():
    hf = hf_glm()
    w, b = fold_weight(hf.proj.weight, hf.proj.bias)
    assert w.shape == (592, 64) and w.is_contiguous() and b.shape == (64,)
    assert not w[588:].any() and w[:588].abs().min() > 0
    w, b = fold_weight(hf_qwen().proj.weight, None)
    assert w.shape == (592, 48) and b.shape == (48,)


def test_uint8_rows_are_views_of_592_byte_rows():
    u = uint8_rows(5)
    assert u.shape == (5, 588) and u.stride() == (592, 1)
    full = padded_rows(u)
    assert full.shape == (5, 592) and full.data_ptr() == u.data_ptr()  # no copy
    c = torch.randint(0, 256, (3, 588), dtype=torch.uint8)
    p = padded_rows(c)  # other input is padded by a copy, with zeros
    assert p.shape == (3, 592) and torch.equal(p[:, :588], c) and not p[:, 588:].any()
    assert padded_rows(c[1:2]).shape == (1, 592)  # a one-row view of 588-byte rows is not a padded view


@pytest.mark.parametrize("backend", BACKENDS)
def test_uint8_padded_contiguous_and_garbage_pads_give_the_same_embedding(backend):
    dev = device_of(backend)
    hf = hf_glm(device=dev)
    torch.manual_seed(4)
    c = torch.randint(0, 256, (37, 588), dtype=torch.uint8, device=dev)
    u = uint8_rows(37, dev)
    u.copy_(c)
    padded_rows(u)[:, 588:] = 255  # pad bytes meet the weight's zero rows
    with torch.no_grad():
        want = hf(expand_uint8(c))
        a = patch_embed(c, hf.proj.weight, hf.proj.bias, backend)
        b = patch_embed(u, hf.proj.weight, hf.proj.bias, backend)
    torch.testing.assert_close(a, want, rtol=1e-4, atol=2e-3)
    torch.testing.assert_close(b, a, rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["triton", "cuda_host", "cpu"])
def test_rendered_uint8_patches_come_in_zero_padded_592_byte_rows(backend):
    import glyph_rt
    from glyph_rt.render.gpu import inputs_of_batch

    cfg = glyph_rt.RenderConfig(page_size=(120, 90), font_size=8.75, line_height=10)
    docs = [glyph_rt.Document("Patch rows " * 40, cfg), glyph_rt.Document("second text " * 25, cfg)]
    items = [(d, 0, d.num_pages) for d in docs]
    dev = TRITON_DEVICE if backend == "triton" else "cpu"
    u8, _, _ = inputs_of_batch(items, dev, backend, "glm4v", torch.uint8, None)
    ref, _, _ = inputs_of_batch(items, "cpu", "cpu", "glm4v", torch.uint8, None)
    assert u8.shape == (len(ref), 588) and u8.stride() == (592, 1) and ref.stride() == (592, 1)
    assert torch.equal(u8.cpu(), ref)
    assert not padded_rows(u8)[:, 588:].any() and not padded_rows(ref)[:, 588:].any()


def test_gemm_launch_tells_triton_the_row_alignment():
    from glyph_rt.kernels.patch_embed import plan

    # HF pixel_values [N, 1176] bf16 @ the weight's [1176, D] view: 2352-byte rows are 16-byte aligned,
    # but 1176 is not a multiple of 16: the launch passes 1176 = 147 * 8 with the 8 as a constexpr
    ints, consts, _, _ = plan(torch.bfloat16, torch.bfloat16, 123, 1536, 1176, (1176, 1, 1, 1176, 1536, 1), True)
    assert (ints["K"], consts["D_K"], ints["stride_am"], consts["D_AM"], ints["stride_bn"], consts["D_BN"]) == \
        (147, 8, 147, 8, 147, 8)
    assert ints["stride_ak"] == ints["stride_bk"] == 1 and consts["D_AK"] == consts["D_BK"] == 1
    ints, consts, _, _ = plan(torch.uint8, torch.bfloat16, 7, 1536, 592, (592, 1, 1536, 1, 1536, 1), True)
    assert (ints["K"] * consts["D_K"], ints["stride_am"] * consts["D_AM"]) == (592, 592) and consts["D_K"] == 16


AOT = """
import re, subprocess, sys, tempfile
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from glyph_rt.kernels import patch_embed, raster

SMEM = {80: 166912, 90: 232448}  # opt-in shared memory per block: A100, H100
pattern = sys.argv[1]
specs = [s for m in (patch_embed, raster) for s in m.aot_specs() if re.search(pattern, s.name)]
assert specs, pattern
for s in specs:
    sig = {**s.signature, **{k: "constexpr" for k in s.constexprs}}
    names = list(sig)
    attrs = {(names.index(a),): [["tt.divisibility", 16]] for a in s.aligned}
    for arch in (80, 90):
        k = triton.compile(ASTSource(fn=s.fn, signature=sig, constexprs=s.constexprs, attrs=attrs),
                           target=GPUTarget("cuda", arch, 32), options=dict(num_warps=s.num_warps,
                                                                              num_stages=s.num_stages))
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(k.asm["cubin"])
            f.flush()
            res = subprocess.run([triton.knobs.nvidia.cuobjdump.path, "--dump-resource-usage", f.name],
                                 capture_output=True, text=True, check=True).stdout
        stack, local = (int(v) for v in re.search(r"STACK:(\\d+) SHARED:\\d+ LOCAL:(\\d+)", res).groups())
        assert k.metadata.shared <= SMEM[arch], f"{s.name} sm_{arch}: {k.metadata.shared} B of shared memory"
        assert stack == 0 and local == 0, f"{s.name} sm_{arch}: spills ({stack} B stack, {local} B local)"
        if " fwd " in s.name:  # the forward GEMMs load 16 bytes at a time, asynchronously (pipelined)
            assert re.search(r"cp\\.async\\.cg\\.shared\\.global \\[[^]]*\\], \\[[^]]*\\], 0x10", k.asm["ptx"]), \\
                f"{s.name} sm_{arch}: no 16-byte cp.async"
        print(f"sm_{arch} {s.name}: {k.metadata.shared} B shared, no spills")
print("compiled", len(specs))
"""


def compile_aot_specs(pattern):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", AOT, pattern], capture_output=True, text=True, env=env, timeout=1800)
    assert r.returncode == 0 and "compiled" in r.stdout, r.stdout[-2000:] + r.stderr[-3000:]
    return r.stdout


def test_forward_gemms_compile_for_a100_and_h100_aligned_and_without_spills():
    # the hot launches (uint8 patches, HF's bf16 pixel_values); every launch: the slow test below
    out = compile_aot_specs(r"^patch_embed (u8 )?fwd bfloat16 .*N=4096$")
    assert "sm_90 patch_embed u8 fwd" in out and "sm_80 patch_embed fwd" in out


@pytest.mark.slow
def test_every_patch_embed_and_raster_launch_compiles_for_a100_and_h100_without_spills():
    compile_aot_specs(".")


def test_bad_inputs_name_the_problem():
    hf = hf_glm()
    w, b = hf.proj.weight, hf.proj.bias
    with pytest.raises(ValueError, match=r"\[N, 1176\]"):
        patch_embed(torch.randn(3, 1000), w, b)
    with pytest.raises(ValueError, match=r"uint8 patches must be \[N, 588\]"):
        patch_embed(torch.zeros(3, 1176, dtype=torch.uint8), w, b)
    with pytest.raises(ValueError, match="float pixel_values or uint8"):
        patch_embed(torch.zeros(3, 1176, dtype=torch.int32), w, b)
    with pytest.raises(ValueError, match="Conv3d weight"):
        patch_embed(torch.randn(3, 1176), w[:, :, :1], b)
    with pytest.raises(ValueError, match="unknown"):
        patch_embed(torch.randn(3, 1176), w, b, backend="cutlass")
    with pytest.raises(RuntimeError, match="backend 'cuda' needs CUDA tensors"):
        patch_embed(torch.randn(3, 1176), w, b, backend="cuda")
    u8 = torch.zeros(3, 588, dtype=torch.uint8)
    fw, fb = fold_weight(w, b)
    for folded in ((fw[:588], fb), (fw, fb[:-1])):  # the kernels would read past a short weight or bias
        with pytest.raises(ValueError, match="not fold_weight's"):
            patch_embed(u8, w, b, folded=folded)
    from glyph_rt.ops.patch_embed import gemm

    with pytest.raises(ValueError, match=r"need \[M, K\] @ \[K, N\] \+ \[N\]"):
        gemm(torch.zeros(3, 592, dtype=torch.uint8), fw[:588], fb, "torch", torch.float32)


def test_auto_sends_only_the_dtypes_the_gemm_compiles_for_to_triton(monkeypatch):
    """float64 weights ran in the interpreter but the GEMM does not compile for them on a GPU (a float64 dot in a
    float32 accumulator): auto takes torch's matmul for them, an explicit backend='triton' refuses by name."""
    from glyph_rt.ops.patch_embed import resolve_backend

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (9, 0))
    cuda = torch.device("cuda")  # auto's decision and the dtype check need no GPU
    for dt in (torch.float16, torch.bfloat16, torch.float32):
        assert resolve_backend("auto", cuda, dt) == "triton", dt
    for dt in (torch.float64, torch.float8_e4m3fn, torch.float8_e5m2):
        assert resolve_backend("auto", cuda, dt) == "torch", dt
        with pytest.raises(ValueError, match=rf"'triton' runs float16, bfloat16 and float32 weights, got {dt}"):
            resolve_backend("triton", cuda, dt)
    with pytest.raises(ValueError, match="got torch.float64"):
        patch_embed(torch.randn(3, 1176, dtype=torch.float64), hf_glm(dtype=torch.float64).proj.weight,
                    backend="triton")


def test_bias_and_folded_weights_must_be_on_the_weights_device():
    """The GEMM kernels take raw pointers: a bias (or cached folded weights) on another device is refused by name."""
    hf = hf_glm()
    w, b = hf.proj.weight, hf.proj.bias
    with pytest.raises(ValueError, match="bias is on meta but weight is on cpu"):
        patch_embed(torch.randn(3, 1176), w, b.to("meta"))
    fw, fb = fold_weight(w, b)
    with pytest.raises(ValueError, match="folded: weight on meta and bias on cpu, patches on cpu"):
        patch_embed(torch.zeros(3, 588, dtype=torch.uint8), w, b, folded=(fw.to("meta"), fb))


@pytest.mark.parametrize("backend", BACKENDS)
def test_gemm_custom_op_passes_opcheck(backend):
    from glyph_rt.ops.patch_embed import gemm

    dev = device_of(backend)
    a = torch.randint(0, 256, (37, 40), dtype=torch.uint8, device=dev)
    b = torch.randn(40, 24, device=dev)
    torch.library.opcheck(gemm, (a, b, torch.randn(24, device=dev), backend, torch.float32),
                          test_utils=("test_schema", "test_faketensor"))


def rel_err(a, ref):
    return ((a.float() - ref).norm() / ref.norm()).item()


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("make", [hf_glm, hf_qwen], ids=["glm4v", "qwen2_5_vl"])
def test_bf16_on_gpu_is_as_accurate_as_hf(make, backend):
    # flash-attention's rule: our bf16 error against an fp32 reference is at most 2x that of HF in bf16
    ref = make(dim=1536, device="cuda")
    hf = make(dim=1536, device="cuda", dtype=torch.bfloat16)
    ours = PatchEmbed.from_hf(make(dim=1536, device="cuda", dtype=torch.bfloat16), backend=backend)
    torch.manual_seed(3)
    x = torch.randn(4097, 1176, device="cuda")
    up = torch.randn(4097, 1536, device="cuda")
    r = grads(ref, x, up)
    h = grads(hf, x.bfloat16(), up.bfloat16())
    o = grads(ours, x.bfloat16(), up.bfloat16())
    for k in r:
        assert rel_err(o[k], r[k]) <= 2 * rel_err(h[k], r[k]) + 1e-3, k
    u8 = torch.randint(0, 256, (4097, 588), dtype=torch.uint8, device="cuda")
    with torch.no_grad():
        want = ref(expand_uint8(u8))
        assert rel_err(ours(u8), want) <= 2 * rel_err(hf(expand_uint8(u8, torch.bfloat16)), want) + 1e-3


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_cuda_gemm_compiles_for_a100_and_h100_without_warnings_or_spills(tmp_path):
    src = Path(__file__).resolve().parent.parent / "csrc" / "vision" / "patch_embed.cu"
    r = subprocess.run(["nvcc", "-std=c++17", "-c", str(src), "-o", str(tmp_path / "gemm.o"), "-Xptxas", "-v",
                        "-Werror", "all-warnings", "-gencode", "arch=compute_80,code=sm_80",
                        "-gencode", "arch=compute_90,code=sm_90"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    kernels = re.findall(r"Compiling entry function '\S*(gemm_\w+?)I\S*' for '(sm_\d+)'", r.stderr)
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", r.stderr)
    assert len(kernels) == len(spills) == 16, r.stderr[-3000:]  # 2 kernels x 2 A types x 2 C types x 2 archs
    for (name, arch), counts in zip(kernels, spills):
        assert counts == ("0", "0"), f"{name} {arch} spills: {counts}"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_cuda_gemm_builds_for_an_architecture_without_bf16_tensor_cores(tmp_path):
    """sm_75 in the build list (TORCH_CUDA_ARCH_LIST "7.5;8.0;...") must not fail the build, which would drop every
    CUDA kernel, the rasterizer's too: there the GEMM compiles to a trap, and the launchers refuse such a GPU."""
    src = Path(__file__).resolve().parent.parent / "csrc" / "vision" / "patch_embed.cu"
    r = subprocess.run(["nvcc", "-std=c++17", "-c", str(src), "-o", str(tmp_path / "gemm.o"), "-Xptxas", "-v",
                        "-Werror", "all-warnings", "-gencode", "arch=compute_75,code=sm_75"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(re.findall(r"Compiling entry function '\S*gemm_", r.stderr)) == 8


def test_cuda_backend_refuses_a_gpu_without_bf16_tensor_cores(monkeypatch):
    from glyph_rt import _ext
    from glyph_rt.ops.patch_embed import resolve_backend

    monkeypatch.setattr(_ext, "backends", lambda: {"cuda": {"available": True, "why": None}})
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Tesla T4")
    with pytest.raises(RuntimeError, match=r"compute capability 8.0 or newer\); Tesla T4 is 7.5: use backend"):
        resolve_backend("cuda", torch.device("cuda"), torch.bfloat16)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (9, 0))
    assert resolve_backend("cuda", torch.device("cuda"), torch.bfloat16) == "cuda"


def test_auto_takes_the_plain_matmul_below_compute_capability_8(monkeypatch):
    """On a T4 (sm_75) the Triton GEMM's fp16/bf16 tiles spill registers (the aot check compiled for 75): auto
    takes torch there, as the 'cuda' GEMM refuses it; from sm_80 on it takes triton."""
    from glyph_rt.ops.patch_embed import resolve_backend

    for cap, want in (((7, 5), "torch"), ((8, 0), "triton"), ((8, 6), "triton"), ((9, 0), "triton")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None, _c=cap: _c)
        for dt in (torch.float16, torch.bfloat16, torch.float32):
            assert resolve_backend("auto", torch.device("cuda", 0), dt) == want, (cap, dt)


def test_benchmark_quick_mode_runs_and_reports_both_baselines(tmp_path):
    import json

    from bench.bench_patch_embed import main

    main(["--quick", "--dim", "32", "--sizes", "48", "--out", str(tmp_path)])
    out, = tmp_path.glob("patch-embed-*-quick.json")
    res = json.loads(out.read_text())
    row = res["rows"][0]
    for k in ("hf_conv3d", "linear", "linear_u8", "ours_uint8", "ours_pixel_values"):
        assert row[k]["ms"] > 0 and row[k]["tflops"] > 0 and row[k]["gbps"] > 0
    assert {"speedup_vs_conv3d", "speedup_vs_linear_u8", "speedup_vs_linear"} <= set(res["summary"])


@pytest.mark.parametrize("uint8", [False, True])
def test_autocast_runs_fp32_master_weights_in_its_dtype(uint8):
    """A training run's fp32 weights under a bf16 autocast: the GEMM takes them in bf16 (as a Conv3d's would be)
    and the gradients reach the fp32 weights."""
    from glyph_rt.models.patch_embed import PatchEmbed
    from glyph_rt.ops.patch_embed import expand_uint8, patch_embed_reference

    torch.manual_seed(0)
    pe = PatchEmbed(48)
    u8 = torch.randint(0, 256, (5, 588), dtype=torch.uint8)
    x = u8 if uint8 else expand_uint8(u8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = pe(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert pe.proj.weight.grad.dtype == torch.float32 and bool(pe.proj.weight.grad.abs().sum() > 0)
    want = patch_embed_reference(expand_uint8(u8), pe.proj.weight.detach(), pe.proj.bias.detach())
    torch.testing.assert_close(y.float(), want, atol=0.05, rtol=0.02)
