"""ForwardingBackend against two glyph_rt servers (the same OpenAI protocol a vLLM replica speaks)."""
import asyncio
import socket
import time

import openai
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


def dead_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connections are refused)."""
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sk.getsockname()[1]}/v1"


def broken_replica():
    """An app on two paths: /down/v1 answers 503, /cut/v1 streams one piece of text and then breaks off."""
    import json

    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, StreamingResponse

    app = FastAPI()

    @app.post("/down/v1/chat/completions")
    async def down():
        return JSONResponse({"error": {"message": "down", "type": "service_unavailable"}}, status_code=503)

    @app.post("/cut/v1/chat/completions")
    async def cut():
        async def body():
            piece = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "tiny",
                     "choices": [{"index": 0, "delta": {"content": "partial"}, "finish_reason": None}]}
            yield f"data: {json.dumps(piece)}\n\n"
            raise RuntimeError("the replica died mid-stream")

        return StreamingResponse(body(), media_type="text/event-stream")

    return app


def test_a_dead_replica_is_retried_elsewhere_and_passed_over(gm):
    svc = ChatService(Engine(gm).start(), InputOptions(CFG, "tiny"), 16)
    try:
        with ServerThread(build_app(svc)) as live:
            # a backoff no loaded machine outlasts; a window is ended by hand where the test needs it over
            fwd = ForwardingBackend([dead_url(), live.url + "/v1"], model="tiny", render_config=CFG, max_retries=0,
                                    backoff=60.0, max_backoff=600.0)
            doc, q = TEXT[:700], "What does it allow?"
            ref = gm.generate(doc, q, max_new_tokens=6)[0].text
            answers = [fwd.chat(doc, q, max_tokens=6, temperature=0) for _ in range(4)]
            assert answers == [ref] * 4 and fwd.sent == [1, 4]  # the dead one tried once, then backed off

            assert "".join(fwd.chat_stream(doc, q, max_tokens=6, temperature=0)) == ref and fwd.sent == [1, 5]
            fwd._down_until[0] = 0.0  # the backoff is over: the dead one is tried again (once), then backed off
            assert "".join(fwd.chat_stream(doc, q, max_tokens=6, temperature=0)) == ref and fwd.sent == [2, 6]

            async def from_async():  # one event loop: the async clients stay on the loop they started on
                calls = [fwd.achat(doc, q, max_tokens=6, temperature=0) for _ in range(3)]
                answers = await asyncio.gather(*calls)
                streamed = "".join([t async for t in fwd.achat_stream(doc, q, max_tokens=6, temperature=0)])
                return answers + [streamed]

            assert asyncio.run(from_async()) == [ref] * 4 and fwd.sent == [2, 10]
            assert fwd._wait[0] == 120.0  # the backoff doubled: still passed over
            assert fwd.chat(doc, q, max_tokens=6, temperature=0) == ref and fwd.sent == [2, 11]
            assert fwd.in_flight == [0, 0]
            with pytest.raises(openai.BadRequestError):  # the request's fault: not tried elsewhere
                fwd.chat(doc, q, max_tokens=6, temperature=7)
            assert fwd.sent == [2, 12]
            with ServerThread(broken_replica()) as broken:
                fwd = ForwardingBackend([broken.url + "/down/v1", live.url + "/v1"], model="tiny", render_config=CFG,
                                        max_retries=0)
                assert fwd.chat(doc, q, max_tokens=6, temperature=0) == ref and fwd.sent == [1, 1]  # a 5xx
                fwd = ForwardingBackend([broken.url + "/cut/v1", live.url + "/v1"], model="tiny", render_config=CFG,
                                        max_retries=0)
                got = []
                with pytest.raises(openai.APIConnectionError):  # text already reached the caller: not run elsewhere
                    for t in fwd.chat_stream(doc, q, max_tokens=6, temperature=0):
                        got.append(t)
                assert got == ["partial"] and fwd.sent == [1, 0] and fwd.in_flight == [0, 0]
        down = ForwardingBackend([dead_url(), dead_url()], model="tiny", render_config=CFG, max_retries=0)
        for call in (lambda: down.chat(doc, q), lambda: list(down.chat_stream(doc, q))):
            with pytest.raises(openai.APIConnectionError):  # all down: the last error
                call()

        async def from_async():
            with pytest.raises(openai.APIConnectionError):
                await down.achat(doc, q)
            with pytest.raises(openai.APIConnectionError):
                [t async for t in down.achat_stream(doc, q)]

        asyncio.run(from_async())
        assert down.sent == [4, 4] and down.in_flight == [0, 0]
    finally:
        svc.shutdown()


def test_only_an_answer_clears_a_backoff():
    """Failures inside a replica's backoff (requests sent before it, or tried when every replica is down) keep it;
    one after it doubles it; an answer clears it."""
    fwd = ForwardingBackend([dead_url(), dead_url()], model="m", backoff=1.0, max_backoff=4.0)
    first, second = fwd._pick({1}), fwd._pick({1})  # two requests in flight on replica 0
    assert first == second == 0
    fwd._done(0, True)
    fwd._done(0, True)  # the second failure came in while backed off
    assert fwd._wait[0] == 1.0 and fwd._down_until[0] > time.monotonic()
    assert fwd._pick(set()) == 1  # the dead one is still passed over
    fwd._done(1, False)
    fwd._down_until[0] = 0.0  # the window is over
    fwd._pick({1})
    fwd._done(0, True)
    assert fwd._wait[0] == 2.0  # doubled
    fwd._pick({1})
    fwd._done(0, False)
    assert fwd._wait[0] == 0.0 and fwd._down_until[0] == 0.0
