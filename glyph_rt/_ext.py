"""Loads the compiled extension and reports which backends this installation has."""
from __future__ import annotations

import functools
import importlib.util
import warnings

try:
    from . import _C  # type: ignore[attr-defined]

    IMPORT_ERROR: str | None = None
except ImportError as e:  # the package still imports; the pure-Python paths keep working
    from pathlib import Path as _Path

    _C = None
    _root = _Path(__file__).resolve().parent.parent
    if (_root / "setup.py").is_file() and (_root / "csrc").is_dir():  # a source checkout, not an installed copy
        IMPORT_ERROR = (f"{e}; glyph_rt is imported from the source tree {_root}, which has no built extension: run "
                        "`pip install -e .` there, or run from another directory to use the installed package")
    else:
        IMPORT_ERROR = f"{e}; reinstall with `pip install .` to build it"
    warnings.warn(
        f"glyph_rt: compiled extension glyph_rt._C is missing ({IMPORT_ERROR}); the C++ layout engine and "
        "rasterizers are unavailable, only the plain-Python reference backend works.",
        RuntimeWarning,
        stacklevel=2,
    )


def release(version: str) -> tuple[int, ...]:
    """(major, minor) of a version string: "5.26.0.dev0" -> (5, 26)."""
    import re

    return tuple(int(x) for x in re.findall(r"\d+", version)[:2])


def has_extension() -> bool:
    return _C is not None


def require_extension(what: str):
    if _C is None:
        raise RuntimeError(
            f"{what} needs the compiled extension glyph_rt._C, which failed to import: {IMPORT_ERROR}; or use "
            "backend='reference'."
        )
    return _C


@functools.lru_cache(maxsize=1)
def backends() -> dict[str, dict]:
    """What this installation can run: {name: {"available": bool, "why": str}} (probed once)."""
    out: dict[str, dict] = {}
    out["cpu"] = {"available": _C is not None, "why": "compiled C++ layout + CPU rasterizer" if _C else IMPORT_ERROR}
    out["reference"] = {"available": True, "why": "plain Python/numpy reference"}
    cuda_built = bool(_C is not None and getattr(_C, "with_cuda", False))
    devices, error = [], None
    if cuda_built:
        try:
            devices = _C.cuda_devices()
        except RuntimeError as e:  # e.g. a driver older than the CUDA runtime the extension was built with
            error = str(e)
    if _C is None:
        why = "the compiled extension is not loaded (see cpu)"
    elif not cuda_built:
        why = "extension built without CUDA (no nvcc at build time, or GLYPH_RT_CUDA=0)"
    elif error and _torch_sees_gpu():  # torch runs on this GPU, the extension's runtime does not: an older driver
        why = f"built with CUDA, but {error}; rebuild with a CUDA toolkit this machine's driver supports"
    elif not devices:
        why = "built with CUDA but no GPU/driver is visible" + (f" ({error})" if error else "")
    else:
        why = f"CUDA devices: {', '.join(devices)}"
        too_old = _below_built_archs(getattr(_C, "cuda_archs", ""))
        if too_old:
            why, devices = too_old, []
    out["cuda"] = {"available": cuda_built and bool(devices), "why": why}
    out["triton"] = _triton_backend()
    return out


def _below_built_archs(archs: str) -> str | None:
    """Why the extension's kernels cannot run on GPU 0, when its compute capability is below every architecture
    they were built for (a newer GPU runs the PTX of the highest one); None when they can, or when unknown."""
    import re

    built = [int(m.group()) for a in archs.replace(",", ";").split(";") if (m := re.match(r"\d+", a.strip()))]
    if not built or not _torch_sees_gpu():
        return None
    import torch

    major, minor = torch.cuda.get_device_capability(0)
    cap = 10 * major + minor
    if cap >= min(built):
        return None
    return (f"built for sm_{', sm_'.join(map(str, built))}, but {torch.cuda.get_device_name(0)} is sm_{cap}: "
            f"rebuild with GLYPH_RT_CUDA_ARCHS={cap}")


def _torch_sees_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def _triton_backend() -> dict:
    """Triton draws on a CUDA GPU, or on the CPU in its interpreter (TRITON_INTERPRET=1); installed is not enough."""
    import os

    if importlib.util.find_spec("triton") is None:
        return {"available": False, "why": "triton is not installed"}
    if os.environ.get("TRITON_INTERPRET") == "1":
        from .kernels import interpreter_problem

        if problem := interpreter_problem():
            return {"available": False, "why": problem}
        return {"available": True, "why": "installed; runs in Triton's interpreter on the CPU (TRITON_INTERPRET=1)"}
    import torch

    if torch.cuda.is_available():
        return {"available": True, "why": f"installed; GPU: {torch.cuda.get_device_name(0)}"}
    return {"available": False, "why": "installed, no GPU: runs only under TRITON_INTERPRET=1"}
