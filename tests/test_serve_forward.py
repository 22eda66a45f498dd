"""ForwardingBackend against two glyph_rt servers (the same OpenAI protocol a vLLM replica speaks)."""
import asyncio

import pytest

from glyph_rt import RenderConfig
from glyph_rt.models import GlyphModel
from glyph_rt.models.tiny import tiny_glm4v_checkpoint
from glyph_rt.render.textio import sample_text
from glyph_rt.serve.app import ServerThread, build_app
from glyph_rt.serve.engine import Engine
from glyph_rt.serve.forward import ForwardingBackend
from glyph_rt.serve.inputs import InputOptions
from glyph_rt.serve.service import ChatService

from conftest import EXACT  # fp32 on the test device: answers compared token for token

CFG = RenderConfig(page_size=(120, 90))
TEXT = sample_text()


@pytest.fixture(scope="module")
def gm(tmp_path_factory):
    return GlyphModel.from_pretrained(tiny_glm4v_checkpoint(tmp_path_factory.mktemp("glm4v")), render_config=CFG,
                                      **EXACT)


def test_forwarded_pages_give_the_same_answer(gm):
    services = [ChatService(Engine(gm).start(), InputOptions(CFG, "tiny"), 16) for _ in range(2)]
    try:
        with ServerThread(build_app(services[0])) as a, ServerThread(build_app(services[1])) as b:
            fwd = ForwardingBackend([a.url + "/v1", b.url + "/v1"], model="tiny", render_config=CFG)
            doc, q = TEXT[:700], "What does it allow?"
            ref = gm.generate(doc, q, max_new_tokens=10)[0].text
            assert fwd.chat(doc, q, max_tokens=10, temperature=0) == ref  # PNG data URIs -> the same pixel_values

            async def many():
                return await asyncio.gather(*(fwd.achat(doc, q, max_tokens=10, temperature=0) for _ in range(6)))

            assert asyncio.run(many()) == [ref] * 6
            assert min(fwd.sent) >= 2 and sum(fwd.sent) == 7 and fwd.in_flight == [0, 0]  # spread over both
            assert len(fwd._pages) == 1  # rendered once
    finally:
        for s in services:
            s.shutdown()
