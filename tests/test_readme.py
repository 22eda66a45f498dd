"""The README's Python snippets run as written, with these substitutions: a tiny random-weight
checkpoint for "path/to/Glyph", Qwen's tokenizer for "path/to/tokenizer.json", a Glyph config
file for "config_en.json", the CPU for "cuda" on a machine without a GPU, and, to keep the test
fast, 8,000 characters of the sample text and 4 new tokens."""
import json
import re
from pathlib import Path

import pytest
import torch

import glyph_rt
from glyph_rt import RenderConfig
from glyph_rt.render.tokens import default_tokenizer_path

README = Path(__file__).resolve().parents[1] / "README.md"


def snippets() -> list[tuple[str, str]]:
    """(heading above it, code) of every ```python block of the README."""
    out, heading, block = [], "", None
    for line in README.read_text(encoding="utf-8").splitlines(keepends=True):
        if block is not None:
            if line.startswith("```"):
                out.append((heading, "".join(block)))
                block = None
            else:
                block.append(line)
        elif line.startswith("```python"):
            block = []
        elif line.startswith("#"):
            heading = line.lstrip("#").strip()
    return out


SNIPPETS = snippets()


def test_the_readme_has_its_snippets():  # every ```python block runs below; these must be among them
    assert {"Python API", "Patch embedding", "Attention", "GlyphModel and apply_glyph_kernels"} <= {
        h for h, _ in SNIPPETS}


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from glyph_rt.models.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("readme") / "Glyph")


@pytest.mark.parametrize("heading,code", SNIPPETS, ids=[h for h, _ in SNIPPETS])
def test_snippet_runs(heading, code, tmp_path, monkeypatch, request):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config_en.json").write_text(json.dumps(RenderConfig().to_glyph_dict()), encoding="utf-8")
    if '"path/to/Glyph"' in code:
        code = code.replace('"path/to/Glyph"', repr(str(request.getfixturevalue("tiny_checkpoint"))))
    code = code.replace('"path/to/tokenizer.json"', repr(str(default_tokenizer_path())))
    if not torch.cuda.is_available():
        code = code.replace('device="cuda"', 'device="cpu"')
    code = re.sub(r"^text = sample_text\(\)", "text = sample_text()[:8000]", code, flags=re.M)
    code = re.sub(r"max_new_tokens=\d+", "max_new_tokens=4", code)
    exec(compile(code, f"README.md ({heading})", "exec"), {"__name__": "readme"})


def test_render_inputs_defaults_to_the_gpu_else_the_cpu():
    inputs = glyph_rt.render_inputs("A short text.", RenderConfig(page_size=(120, 90)))
    assert inputs.pixel_values.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    cpu = glyph_rt.render_inputs("A short text.", RenderConfig(page_size=(120, 90)), device="cpu")
    assert torch.equal(inputs.pixel_values.cpu(), cpu.pixel_values)
