"""The pipe between the server's process and the engine's: messages of any size, both ways, under uvicorn on uvloop
(its add_reader makes a socket non-blocking, where a message larger than the socket's buffer went half sent or half
read and the engine was taken for dead)."""
import asyncio
import base64
import io
import json
import signal

import httpx
import numpy as np
import pytest
from PIL import Image

from glyph_rt import RenderConfig
from glyph_rt.serve.app import ServerThread, build_app
from glyph_rt.serve.engine_process import EngineProcess
from glyph_rt.serve.service import ServeConfig

pytest.importorskip("uvloop")

CFG = RenderConfig(page_size=(120, 90))


@pytest.fixture
def engine(ckpt):
    ep = EngineProcess(ServeConfig(model=str(ckpt), served_model_name="tiny", render_config=CFG, device="cpu"))
    yield ep
    ep.shutdown()


def uvloop_server(backend) -> ServerThread:
    s = ServerThread(build_app(backend, max_body_bytes=64 << 20))
    s.server.config.loop = "uvloop"
    return s


def hi(**kw) -> dict:
    return {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **kw}


def test_multi_mb_requests_and_responses_cross_the_pipe_under_uvloop(engine):
    noise = np.random.default_rng(0).integers(0, 256, (1000, 1000, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "PNG")
    image = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    assert len(image) > 3 << 20
    big_request = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}},
                                                             {"type": "text", "text": "What is it?"}]}],
                   "max_tokens": 2}
    big_response = hi(max_tokens=400, n=4, ignore_eos=True, logprobs=True, top_logprobs=20)
    with uvloop_server(engine) as s:
        url = s.url + "/v1/chat/completions"

        async def run():
            async with httpx.AsyncClient(timeout=300) as h:
                small = [h.post(url, json=hi(max_tokens=8, stream=True)) for _ in range(3)]
                return await asyncio.gather(h.post(url, json=big_request), h.post(url, json=big_response), *small)

        image_r, big_r, *small_rs = asyncio.run(run())
        assert image_r.status_code == 200 and image_r.json()["glyph"]["pages"] == 1, image_r.text[:300]
        assert big_r.status_code == 200, big_r.text[:300]
        assert len(big_r.content) > 2 << 20
        choices = big_r.json()["choices"]
        assert len(choices) == 4 and all(len(c["logprobs"]["content"]) == 400 for c in choices)
        assert all(len(t["top_logprobs"]) == 20 for c in choices for t in c["logprobs"]["content"])
        for r in small_rs:  # each stream's events in order: the role first, [DONE] last
            lines = [x for x in r.text.splitlines() if x.startswith("data: ")]
            assert r.status_code == 200 and lines[-1] == "data: [DONE]"
            assert json.loads(lines[0][len("data: "):])["choices"][0]["delta"]["role"] == "assistant"
        assert httpx.get(s.url + "/health").status_code == 200
        assert httpx.post(url, json=hi(), timeout=60).status_code == 200
        assert type(engine._loop).__module__.startswith("uvloop")  # (the loop the pipe's messages go to)
    assert engine.process.is_alive()


def test_a_pipe_that_cannot_be_read_stops_the_engine_process_not_only_the_server(engine):
    """A read that fails other than at the pipe's end gives the engine's process up: it is killed, not left running
    orphaned, and what is in flight and what comes after get a 503."""
    with uvloop_server(engine) as s:
        url = s.url + "/v1/chat/completions"
        assert httpx.post(url, json=hi(), timeout=60).status_code == 200
        recv = engine._conn.recv

        def broken():
            recv()
            raise ConnectionResetError("as a corrupt message would")

        engine._conn.recv = broken
        assert httpx.get(s.url + "/metrics").status_code == 200  # its answer ends the reader's read under way
        r = httpx.post(url, json=hi(), timeout=60)
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_stopped", r.text
        assert not engine.process.is_alive() and engine.process.exitcode == -signal.SIGKILL
        assert httpx.get(s.url + "/health").status_code == 503
        assert httpx.post(url, json=hi(), timeout=60).status_code == 503

