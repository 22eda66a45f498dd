"""Patch embedding against the Hugging Face modules, forward and backward."""
import pytest
import torch
from transformers.models.glm4v.configuration_glm4v import Glm4vVisionConfig
from transformers.models.glm4v.modeling_glm4v import Glm4vVisionPatchEmbed
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionPatchEmbed

from glyph_rt.models.patch_embed import PatchEmbed
from glyph_rt.ops.patch_embed import expand_uint8, fold_weight, patch_embed, patch_embed_reference

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
    # inference reuses the folded weights until the parameters change
    with torch.no_grad():
        a = ours(u8)
        assert ours._folded is not None and ours(u8).equal(a)
        hf.proj.weight.mul_(2)
        torch.testing.assert_close(ours(u8), hf(expand_uint8(u8)), rtol=1e-4, atol=2e-3)


def test_checkpoint_weights_load_as_they_are():
    hf = hf_glm()
    ours = PatchEmbed(64, bias=True)
    ours.load_state_dict(hf.state_dict())
    x = torch.randn(5, 1176)
    torch.testing.assert_close(ours(x), hf(x), rtol=1e-5, atol=1e-5)
    assert set(ours.state_dict()) == set(hf.state_dict())


def test_folded_weights_shapes():
    hf = hf_glm()
    w, b = fold_weight(hf.proj.weight, hf.proj.bias)
    assert w.shape == (588, 64) and b.shape == (64,)
    w, b = fold_weight(hf_qwen().proj.weight, None)
    assert b.shape == (48,)


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
