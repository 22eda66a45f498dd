"""What each Triton launcher really launches, for ahead-of-time compilation checks.

Every kernel module exposes ``aot_specs() -> list[AotSpec]`` built from the same tile/warp/stage
choices its launcher makes, for every head dim, dtype and mode the dispatcher can send it.

    python -m glyph_rt.kernels.aot [--exhaustive] [--arch 80,90] [--jobs N]

compiles every spec of every module in glyph_rt.kernels for A100 (sm_80) and H100 (sm_90) (--arch: any of
SHARED_LIMIT's targets, 75, 80, 86, 89, 90; others are refused before anything compiles) with Triton's own
compiler and ptxas (no GPU needed) and fails when a kernel needs more shared memory than the target has or when
ptxas spills registers."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import importlib.util
import io
import os
import pkgutil
import re
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

# the most shared memory one block may use (the opt-in maximum, cudaDevAttrMaxSharedMemoryPerBlockOptin), in bytes,
# per compute capability, from the CUDA programming guide: sm_75 (T4, Turing) 64 KB; sm_80 (A100) 163 KB; sm_86
# (A10, A40, RTX 30xx) and sm_89 (L4, L40S, RTX 40xx) 99 KB; sm_90 (H100, H200) 227 KB
SHARED_LIMIT = {75: 65_536, 80: 166_912, 86: 101_376, 89: 101_376, 90: 232_448}


def parse_archs(text: str) -> tuple[int, ...]:
    """--arch's comma-separated compute capabilities ("80,90"; "sm_86" and "8.6" read as 86), each one whose
    shared-memory limit is known (SHARED_LIMIT); otherwise a ValueError naming it."""
    out = []
    for part in (p.strip() for p in text.split(",")):
        digits = part.lower().removeprefix("sm_").replace(".", "")
        if not digits.isdigit():
            raise ValueError(f"--arch {part!r} is not a compute capability: give numbers such as 80,86,90")
        out.append(int(digits))
    check_archs(out)
    return tuple(out)


def check_archs(archs) -> None:
    unknown = [a for a in archs if a not in SHARED_LIMIT]
    if unknown:
        raise ValueError(f"no shared-memory limit is known for {', '.join(f'sm_{a}' for a in unknown)}: the check "
                         f"knows {', '.join(f'sm_{a}' for a in SHARED_LIMIT)} (glyph_rt.kernels.aot.SHARED_LIMIT)")


@dataclass(frozen=True)
class AotSpec:
    name: str            # shown in failure messages, e.g. "attn_fwd bf16 d=128 causal"
    fn: object           # the @triton.jit function
    signature: dict      # runtime argument -> Triton type: "*bf16", "*u8", "i32", "i64", "fp32"
    constexprs: dict     # constexpr argument -> value
    num_warps: int
    num_stages: int
    aligned: tuple = ()  # arguments the runtime specializes as divisible by 16 (pointers, strides, sizes)
    enforce: bool = True  # False: a variant the dispatcher never sends to the kernel: it must compile,
    # its shared memory and spills are reported


@dataclass(frozen=True)
class Report:
    name: str
    arch: int
    shared: int = 0      # bytes of shared memory per block
    regs: int = 0        # registers per thread
    spill_stores: int = 0
    spill_loads: int = 0
    error: str = ""      # compiler failure
    enforced: bool = True  # False: only compiling counts (AotSpec.enforce)

    @property
    def problems(self) -> list[str]:
        """What fails the check: a compiler error, and for enforced specs shared memory or spills."""
        out = [self.error] if self.error else []
        return out + (self.limits if self.enforced else [])

    @property
    def limits(self) -> list[str]:
        out = []
        if self.shared > SHARED_LIMIT[self.arch]:
            out.append(f"needs {self.shared:,} B of shared memory, sm_{self.arch} has {SHARED_LIMIT[self.arch]:,} B")
        if self.spill_stores or self.spill_loads:
            out.append(f"spills registers ({self.spill_stores} B stores, {self.spill_loads} B loads, "
                       f"{self.regs} registers)")
        return out

    def line(self) -> str:
        state = "; ".join(self.problems) or "ok"
        if not self.enforced and self.limits:
            state += " (not enforced: the dispatcher never sends this variant here: " + "; ".join(self.limits) + ")"
        return f"sm_{self.arch} {self.name}: {self.shared:,} B shared, {self.regs} regs: {state}"


def ptx_types(dtype) -> str:
    """A torch dtype as a Triton pointer type: torch.bfloat16 -> "*bf16"."""
    import torch

    return {torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32", torch.uint8: "*u8",
            torch.int32: "*i32", torch.int64: "*i64"}[dtype]


def _attrs(spec: AotSpec, backend) -> dict:
    """The runtime's specialization: {(argument index,): [["tt.divisibility", 16]]} for aligned arguments."""
    names = spec.fn.arg_names
    desc = backend.parse_attr("D") if hasattr(backend, "parse_attr") else [["tt.divisibility", 16]]
    unknown = set(spec.aligned) - set(spec.signature)
    if unknown:
        raise ValueError(f"{spec.name}: aligned names {sorted(unknown)} are not runtime arguments")
    return {(names.index(a),): desc for a in spec.aligned}


_USAGE = re.compile(r"Used (\d+) registers")
_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def ptxas_usage(log: str) -> tuple[int, int, int]:
    """(registers, spill store bytes, spill load bytes) from a ptxas -v log."""
    regs = [int(x) for x in _USAGE.findall(log)]
    if not regs:
        raise RuntimeError(f"no ptxas -v report in the compiler's output: {log[-500:]!r}")
    spills = _SPILLS.findall(log)
    return max(regs), sum(int(a) for a, _ in spills), sum(int(b) for _, b in spills)


def compile_spec(spec: AotSpec, arch: int) -> Report:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend

    target = GPUTarget("cuda", arch, 32)
    try:
        sig = {**spec.signature, **{k: "constexpr" for k in spec.constexprs}}
        src = ASTSource(fn=spec.fn, signature=sig, constexprs=spec.constexprs,
                        attrs=_attrs(spec, make_backend(target)))
        log = io.StringIO()
        with contextlib.redirect_stdout(log):  # Triton prints ptxas -v's log (TRITON_DUMP_PTXAS_LOG, set by check())
            k = triton.compile(src, target=target,
                               options=dict(num_warps=spec.num_warps, num_stages=spec.num_stages))
        regs, st, ld = ptxas_usage(log.getvalue())
        return Report(spec.name, arch, int(k.metadata.shared), regs, st, ld)
    except Exception as e:  # reported, with the spec's name, as a failure
        return Report(spec.name, arch, error=f"{type(e).__name__}: {str(e)[-1500:]}")


# Kernels whose modules have no aot_specs() yet, compiled as their launchers launch them today.
def all_specs(exhaustive: bool = False) -> list[AotSpec]:
    """Every spec of every module in this package that has aot_specs()."""
    pkg = importlib.import_module(__package__)
    specs = []
    for m in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if m.name == "aot":
            continue
        mod = importlib.import_module(f"{__package__}.{m.name}")
        if hasattr(mod, "aot_specs"):
            specs += mod.aot_specs(exhaustive=exhaustive)
    return specs


_SPECS: list[AotSpec] = []


def _job(i_arch):
    i, arch = i_arch
    rep = compile_spec(_SPECS[i], arch)
    return dataclasses.replace(rep, enforced=_SPECS[i].enforce)


def check(specs: list[AotSpec], archs=(80, 90), jobs: int | None = None) -> list[Report]:
    """Compiles every spec for every arch (in `jobs` forked processes) and returns the reports."""
    check_archs(archs)  # before compiling anything: a report on an unknown target could not be judged
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("unset TRITON_INTERPRET: the interpreter replaces the kernels that are to be compiled")
    _SPECS[:] = specs
    work = [(i, a) for a in archs for i in range(len(specs))]
    jobs = jobs or os.cpu_count() or 1
    saved = {k: os.environ.get(k) for k in ("TRITON_DUMP_PTXAS_LOG", "TRITON_CACHE_DIR")}
    with tempfile.TemporaryDirectory() as cache:  # an empty cache: ptxas runs (and logs) for every spec
        os.environ.update(TRITON_DUMP_PTXAS_LOG="1", TRITON_CACHE_DIR=cache)
        try:
            if jobs == 1:
                return [_job(w) for w in work]
            import multiprocessing

            with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as ex:
                return list(ex.map(_job, work, chunksize=1))
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exhaustive", action="store_true", help="every dtype and mode, not one spec per config")
    ap.add_argument("--arch", default="80,90", help="compute capabilities, comma-separated, each one of "
                    f"{', '.join(map(str, SHARED_LIMIT))} (the targets whose shared memory per block is known)")
    ap.add_argument("--jobs", type=int, default=None, help="compiler processes (default: one per CPU)")
    ap.add_argument("--only", default="", help="compile only specs whose name contains this")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every report, not only failures")
    args = ap.parse_args(argv)
    try:
        archs = parse_archs(args.arch)
    except ValueError as e:
        ap.error(str(e))
    if importlib.util.find_spec("triton") is None:
        ap.error("Triton is not installed: pip install 'glyph_rt[triton]' (CUDA builds of torch bring it)")
    specs = [s for s in all_specs(args.exhaustive) if args.only in s.name]
    reports = check(specs, archs, args.jobs)
    bad = [r for r in reports if r.problems]
    for r in reports if args.verbose else bad:
        print(r.line())
    print(f"{len(reports)} compiled, {len(bad)} failed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
