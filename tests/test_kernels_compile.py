"""Every Triton kernel compiles ahead of time to cubin for A100 (sm_80) and H100 (sm_90) as its
launcher launches it, within the target's shared memory and without register spills.

This needs no GPU (Triton ships ptxas) and catches what the CPU interpreter cannot: code that
does not lower to GPU code, tiles that do not fit, registers that spill. The specs come from each
kernel module's aot_specs() (glyph_rt.kernels.aot); compiling runs in a subprocess because the
interpreter (TRITON_INTERPRET=1, set for the other tests) replaces the kernels."""
import json
import os
import subprocess
import sys

import pytest

from glyph_rt.kernels.aot import SHARED_LIMIT, Report, ptxas_usage


def compile_in_subprocess(script: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=timeout)


def test_every_kernel_spec_fits_a100_and_h100():
    r = compile_in_subprocess("import sys; from glyph_rt.kernels.aot import main; sys.exit(main(['-v']))")
    bad = [line for line in r.stdout.splitlines() if line.startswith("sm_") and not line.endswith(": ok")
           and "(not enforced" not in line]
    assert r.returncode == 0 and not bad, "\n".join(bad)[-6000:] + r.stdout[-500:] + r.stderr[-3000:]
    # every module's kernels were compiled, for both targets
    for name in ("attn_fwd", "attn_bwd_dkdv", "attn_bwd_dq", "attn_bwd_delta", "attn_decode_split",
                 "attn_decode_merge", "raster", "patch_embed"):
        for arch in (80, 90):
            assert f"sm_{arch} {name}" in r.stdout, (name, arch)


def test_the_default_set_compiles_the_launches_the_dispatcher_makes():
    """The default (non-slow) set compiles what auto launches most: bidirectional attention with one query head per
    KV head (the vision towers) and causal attention with GLM-4's 16 (text), forward and backward, and decoding with
    key starts (a left-padded batch) and without (one sequence, no mask)."""
    from glyph_rt.kernels import attention, attention_decode
    from glyph_rt.kernels.aot import all_specs

    specs = all_specs()
    assert len({s.name for s in specs}) == len(specs)  # the reports name them
    modes = {}
    for s in attention.aot_specs():
        if "GROUP" in s.constexprs and "bfloat16" in s.name:
            modes.setdefault((s.name.split()[0], s.constexprs["D"]), set()).add(
                (s.constexprs["CAUSAL"], s.constexprs["GROUP"], s.constexprs["SPLIT"] > 1 if "SPLIT" in s.constexprs
                 else False))
    for d in (16, 32, 64, 80, 128, 256):
        for kernel in ("attn_fwd", "attn_bwd_dq"):
            assert modes[kernel, d] == {(False, 1, False), (True, 16, False)}, (kernel, d)
        assert modes["attn_bwd_dkdv", d] == {(False, 1, False), (True, 16, False), (True, 16, True)}, d
    starts = {}
    for s in attention_decode.aot_specs():
        if s.name.startswith("attn_decode_split bfloat16"):
            starts.setdefault((s.constexprs["D"], s.constexprs["BM"]), set()).add(s.constexprs["HAS_START"])
    assert len(starts) == 5 * 3 and all(v == {True, False} for v in starts.values()), starts


def test_every_dtype_auto_sends_to_a_triton_kernel_is_compiled(monkeypatch):
    """A dtype the dispatcher routes to a Triton kernel that no spec compiles was never checked on a GPU: float64
    passed in the interpreter but does not compile (a float64 dot in a float32 accumulator)."""
    import torch

    from glyph_rt.kernels import attention, attention_decode, patch_embed
    from glyph_rt.ops import attention as ops_attention
    from glyph_rt.ops import patch_embed as ops_patch_embed

    ptr = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32", torch.float64: "*fp64",
           torch.float8_e4m3fn: "*fp8e4nv", torch.float8_e5m2: "*fp8e5"}
    compiled = {s.signature["Q"] for s in attention.aot_specs(True) + attention_decode.aot_specs(True)
                if "Q" in s.signature}
    h100 = ops_attention.DeviceInfo("NVIDIA H100 80GB HBM3", (9, 0))
    avail = {"glyph": None, "sdpa": None, "reference": None, "flash_attn": "flash_attn is not installed"}
    glyph_table = {"sm_90": {case: "glyph" for case in ops_attention.CASES}}
    for dt in ptr:
        for case in ops_attention.CASES:
            if ops_attention.choose_backend(case, h100, avail, dt, 128, table=glyph_table) == "glyph":
                assert ptr[dt] in compiled, (dt, case)
    assert {ptr[dt] for dt in attention.DTYPES} <= compiled  # what an explicit backend="glyph" takes
    gemm = {s.signature["b_ptr"] for s in patch_embed.aot_specs()}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (9, 0))  # an H100: no GPU needed
    for dt in ptr:
        if ops_patch_embed.resolve_backend("auto", torch.device("cuda"), dt) == "triton":
            assert ptr[dt] in gemm, dt
    assert {ptr[dt] for dt in ops_patch_embed.TRITON_DTYPES} <= gemm


@pytest.mark.slow
def test_every_kernel_spec_fits_exhaustive():
    r = compile_in_subprocess("import sys; from glyph_rt.kernels.aot import main; sys.exit(main(['--exhaustive']))",
                              timeout=3600)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]


OLD_DEFECTS = r"""
import dataclasses, json, torch
from glyph_rt.kernels import aot, attention

def spec(name, dtype, d, **cfg):
    base = next(s for s in attention.aot_specs() if s.name.startswith(f"attn_{name} {str(dtype)[6:]} d={d}"))
    warps, stages = cfg.pop("num_warps"), cfg.pop("num_stages")
    return dataclasses.replace(base, constexprs={**base.constexprs, **cfg}, num_warps=warps, num_stages=stages)

old = [spec("fwd", torch.bfloat16, 256, BM=128, BN=64, num_warps=8, num_stages=3),   # 262,144 B shared
       spec("fwd", torch.float32, 128, BM=128, BN=64, num_warps=8, num_stages=3)]    # FMA dots: spills
reps = aot.check(old, (80, 90), 2)
# int64 head offsets: the head index (grid axis 1) is widened before it multiplies a stride
from triton.backends.compiler import GPUTarget
import triton
fwd = next(s for s in attention.aot_specs() if s.name == "attn_fwd bfloat16 d=16 causal")
sig = {**fwd.signature, **{k: "constexpr" for k in fwd.constexprs}}
k = triton.compile(triton.compiler.ASTSource(fwd.fn, sig, fwd.constexprs), target=GPUTarget("cuda", 80, 32),
                   options=dict(num_warps=fwd.num_warps, num_stages=fwd.num_stages))
print(json.dumps({"reports": [dataclasses.asdict(r) for r in reps], "ttir": k.asm["ttir"]}))
"""


def test_the_compile_check_reports_the_old_defects_and_offsets_are_int64():
    r = compile_in_subprocess(OLD_DEFECTS)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    reps = [Report(**x) for x in out["reports"]]
    for rep in reps:
        assert rep.problems, rep.line()
        if "bfloat16" in rep.name:
            assert rep.shared > SHARED_LIMIT[rep.arch] and any("shared memory" in p for p in rep.problems), rep.line()
            assert rep.arch != 90 or rep.shared == 262_144, rep.line()
    ttir = out["ttir"]
    pid = [line.split("=")[0].strip() for line in ttir.splitlines() if "tt.get_program_id y" in line]
    assert pid and any(f"arith.extsi {pid[0]} : i32 to i64" in line for line in ttir.splitlines()), ttir[:3000]


def test_ptxas_log_parsing():
    log = ("ptxas info    : Compiling entry function 'k' for 'sm_90a'\n"
           "ptxas info    : Function properties for k\n"
           "    32 bytes stack frame, 28 bytes spill stores, 24 bytes spill loads\n"
           "ptxas info    : Used 255 registers, used 1 barriers, 384 bytes cmem[0]\n")
    assert ptxas_usage(log) == (255, 28, 24)
    assert Report("k", 90, shared=240_000, regs=255, spill_stores=28).problems == [
        "needs 240,000 B of shared memory, sm_90 has 232,448 B",
        "spills registers (28 B stores, 0 B loads, 255 registers)"]
    assert Report("k", 80, shared=100, regs=90).problems == []
    lenient = Report("k", 80, shared=10 ** 6, enforced=False)  # a variant auto never routes: reported, not failed
    assert lenient.problems == [] and "not enforced" in lenient.line() and "shared memory" in lenient.line()
    assert Report("k", 80, error="CompilationError: x", enforced=False).problems == ["CompilationError: x"]
    with pytest.raises(RuntimeError, match="no ptxas"):
        ptxas_usage("")


def test_aot_knows_the_shared_memory_of_each_target_and_refuses_others_up_front(capsys):
    """--arch is a free list: every target it takes has its opt-in shared memory per block (the CUDA programming
    guide's 64 KB for sm_75, 163 KB for sm_80, 99 KB for sm_86/89, 227 KB for sm_90); any other is refused
    before anything compiles, by name, rather than failing on a KeyError after compiling."""
    from glyph_rt.kernels import aot

    assert aot.SHARED_LIMIT == {75: 64 << 10, 80: 163 << 10, 86: 99 << 10, 89: 99 << 10, 90: 227 << 10}
    assert aot.parse_archs("80, sm_86,8.9,75") == (80, 86, 89, 75)
    assert Report("attn_fwd float16 d=128", 75, shared=81_920).limits == [
        "needs 81,920 B of shared memory, sm_75 has 65,536 B"]
    assert Report("k", 86, shared=101_376).limits == [] and Report("k", 89, shared=101_377).limits == [
        "needs 101,377 B of shared memory, sm_89 has 101,376 B"]
    for bad in ("80,70", "100"):
        with pytest.raises(ValueError, match=r"no shared-memory limit is known for sm_(70|100): the check knows "
                                             r"sm_75, sm_80, sm_86, sm_89, sm_90"):
            aot.parse_archs(bad)
    with pytest.raises(ValueError, match="is not a compute capability"):
        aot.parse_archs("ampere")
    with pytest.raises(ValueError, match="sm_70"):
        aot.check([], (80, 70))  # before compiling (and before the interpreter check)
    with pytest.raises(SystemExit) as e:
        aot.main(["--arch", "70"])
    assert e.value.code == 2 and "no shared-memory limit is known for sm_70" in capsys.readouterr().err
