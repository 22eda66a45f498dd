"""Every preset compresses prose at least 1.5x and stays inside the paper's style space (Table 8)."""
import pytest

import glyph_rt
from glyph_rt import PRESETS, RenderConfig
from glyph_rt.render.textio import sample_text
from glyph_rt.render.tokens import get_tokenizer, visual_tokens

MIN_COMPRESSION = 1.5


@pytest.fixture(scope="module")
def text_tokens():
    return get_tokenizer().count(sample_text())


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_compresses_prose(name, text_tokens):
    pages = glyph_rt.render(sample_text(), RenderConfig.preset(name))
    for model in ("glm4v", "qwen2_5_vl"):
        ratio = text_tokens / sum(visual_tokens(pages.sizes, model))
        assert ratio >= MIN_COMPRESSION, f"preset {name}: {ratio:.2f}x on prose for {model}"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_is_in_the_papers_style_space(name):
    c = RenderConfig.preset(name)
    assert 45 <= c.dpi <= 600 and 0.75 <= c.horizontal_scale <= 1.0
    assert 10 <= c.margin_x <= 40 and 10 <= c.margin_y <= 40
    assert c.line_height >= c.font_size and c.first_line_indent <= 2.5 * c.font_size
    assert c.border_width == 0  # borders: optional, disabled by default
