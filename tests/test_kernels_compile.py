"""Every Triton kernel compiles ahead of time to cubin for A100 (sm_80) and H100 (sm_90).

This needs no GPU (Triton ships ptxas), and catches what the CPU interpreter cannot: code
that runs in the interpreter but does not lower to GPU code."""
import os
import subprocess
import sys

SCRIPT = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from glyph_rt.kernels.attention import attn_bwd_dkdv_kernel, attn_bwd_dq_kernel, attn_fwd_kernel
from glyph_rt.kernels.attention_decode import attn_decode_merge_kernel, attn_decode_split_kernel
from glyph_rt.kernels.patch_embed import aot_specs as patch_embed_specs
from glyph_rt.kernels.raster import raster_kernel

def build(fn, sig, consts):
    sig = {**sig, **{k: "constexpr" for k in consts}}
    for arch in (80, 90):
        triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=GPUTarget("cuda", arch, 32))

ptr = dict(out_ptr="*u8", ink_ptr="*i32", bgv_ptr="*fp32", lut_ptr="*fp32", meta_ptr="*i32", out_off_ptr="*i64")
for name in ("glyph_start", "glyph_items", "g_x0", "g_y0", "g_w", "g_h", "g_off", "g_rgb", "rect_start",
             "rect_items", "r_box", "r_rgb"):
    ptr[name + "_ptr"] = "*i32"
ptr.update(atlas_ptr="*u8", page0="i32", tol="fp32")
for mode, out in [(0, "*u8"), (1, "*u8"), (2, "*u8"), (3, "*fp32"), (3, "*bf16"), (4, "*u8")]:
    for gray in (False, True):
        sig = {**ptr, "out_ptr": out, "lut_ptr": out if mode == 3 else "*fp32"}
        build(raster_kernel, sig, dict(TH=14, TW=28, BH=16, BW=32, MODE=mode, INK=mode == 2, GRAY=gray))

# the patch-embedding GEMM as its launcher specializes it (every launch: tests/test_patch_embed.py, slow)
for spec in patch_embed_specs():
    if "bfloat16" in spec.name:
        sig = {**spec.signature, **{k: "constexpr" for k in spec.constexprs}}
        attrs = {(list(sig).index(a),): [["tt.divisibility", 16]] for a in spec.aligned}
        for arch in (80, 90):
            triton.compile(ASTSource(fn=spec.fn, signature=sig, constexprs=spec.constexprs, attrs=attrs),
                           target=GPUTarget("cuda", arch, 32),
                           options=dict(num_warps=spec.num_warps, num_stages=spec.num_stages))
def strides(*names):
    return {n: "i32" for n in names}

for dt, d in [("*bf16", 128), ("*fp16", 64), ("*bf16", 80)]:
    blk = dict(D=d, BLOCK_D=triton.next_power_of_2(d), CAUSAL=True, IEEE=False)
    fwd = dict(Q=dt, K=dt, V=dt, O=dt, LSE="*fp32", cu_q="*i32", cu_k="*i32", qk_scale="fp32",
               **strides("stride_qt", "stride_qh", "stride_kt", "stride_kh", "stride_vt", "stride_vh", "stride_ot",
                         "stride_oh", "stride_lh"))
    for causal in (False, True):
        build(attn_fwd_kernel, fwd, dict(GROUP=4, BM=128, BN=64, **{**blk, "CAUSAL": causal}))
    common = dict(Q=dt, K=dt, V=dt, DO=dt, LSE="*fp32", DELTA="*fp32")
    dkdv = dict(**common, DK=dt, DV=dt, cu_q="*i32", cu_k="*i32", qk_scale="fp32", sm_scale="fp32",
                **strides("stride_qt", "stride_qh", "stride_kt", "stride_kh", "stride_vt", "stride_vh", "stride_dot",
                          "stride_doh", "stride_dkt", "stride_dkh", "stride_dvt", "stride_dvh", "stride_lh"))
    build(attn_bwd_dkdv_kernel, dkdv, dict(GROUP=16, BM=64, BN=64, **blk))
    dq = dict(**common, DQ=dt, cu_q="*i32", cu_k="*i32", qk_scale="fp32", sm_scale="fp32",
              **strides("stride_qt", "stride_qh", "stride_kt", "stride_kh", "stride_vt", "stride_vh", "stride_dot",
                        "stride_doh", "stride_dqt", "stride_dqh", "stride_lh"))
    build(attn_bwd_dq_kernel, dq, dict(GROUP=16, BM=64, BN=64, **blk))
    split = dict(Q=dt, K=dt, V=dt, KSTART="*i32", PO="*fp32", PLSE="*fp32", qk_scale="fp32", Sq="i32", Sk="i32",
                 keys_per_split="i32", **strides("stride_qb", "stride_qs", "stride_qh", "stride_kb", "stride_ks",
                                                 "stride_kh", "stride_vb", "stride_vs", "stride_vh", "stride_pb",
                                                 "stride_ph", "stride_ps", "stride_pm"))
    for group, has_start in ((16, False), (4, True)):
        build(attn_decode_split_kernel, split, dict(GROUP=group, BM=16, BN=64, HAS_START=has_start,
                                                    **{k: blk[k] for k in ("D", "BLOCK_D", "CAUSAL", "IEEE")}))
    merge = dict(PO="*fp32", PLSE="*fp32", O=dt, Sq="i32", splits="i32",
                 **strides("stride_pb", "stride_ph", "stride_ps", "stride_pm", "stride_ob", "stride_os", "stride_oh"))
    build(attn_decode_merge_kernel, merge, dict(GROUP=16, D=d, BLOCK_D=blk["BLOCK_D"], BM=16))
print("compiled")
"""


def test_triton_kernels_compile_for_a100_and_h100():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0 and "compiled" in r.stdout, r.stderr[-3000:]
