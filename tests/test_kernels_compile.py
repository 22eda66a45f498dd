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
