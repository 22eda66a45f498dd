"""ForwardingBackend against two glyph_rt servers (the same OpenAI protocol a vLLM replica speaks)."""
import asyncio
import collections
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
from glyph_rt.serve.forward import ANSWERED, FAILED, BadReplyError, ForwardingBackend
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
    one after it doubles it; an answer clears it; a cancelled request says nothing of the replica."""
    fwd = ForwardingBackend([dead_url(), dead_url()], model="m", backoff=1.0, max_backoff=4.0)
    first, second = fwd._pick({1}), fwd._pick({1})  # two requests in flight on replica 0
    assert first == second == 0
    fwd._done(0, FAILED)
    fwd._done(0, FAILED)  # the second failure came in while backed off
    assert fwd._wait[0] == 1.0 and fwd._down_until[0] > time.monotonic()
    assert fwd._pick(set()) == 1  # the dead one is still passed over
    fwd._done(1, ANSWERED)
    fwd._down_until[0] = 0.0  # the window is over
    fwd._pick({1})
    fwd._done(0, FAILED)
    assert fwd._wait[0] == 2.0  # doubled
    fwd._pick({1})
    fwd._done(0, None)  # cancelled: neither an answer nor a failure
    assert fwd._wait[0] == 2.0 and fwd.in_flight == [0, 0]
    fwd._pick({1})
    fwd._done(0, ANSWERED)
    assert fwd._wait[0] == 0.0 and fwd._down_until[0] == 0.0


def chunk(delta: dict, finish: str | None = None) -> str:
    import json

    return "data: " + json.dumps({"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
                                  "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}) + "\n\n"


def fake_replicas(hits: collections.Counter):
    """Replicas without a model, one per path, each request counted in `hits` by path: /ok/v1 answers "hello"
    (finish_reason "length", with logprobs; streamed in two pieces), /errstream/v1 fails as glyph_rt's server
    fails a request the engine dropped (a stream: the role chunk, then a 503 error event), /errlater/v1 streams
    text and then a 500 error event, /down/v1 answers 503, /busy/v1 429 with Retry-After: 30, /late/v1 408 (timed
    out in the queue), /overtime/v1 glyph_rt's 504 for a request whose compute ran past the server's timeout (a
    stream: the role chunk, then its error event), /slow/v1 answers after a second. Replies that are not the
    protocol's, each with status 200: /badjson/v1 a body (or a stream event) that is not JSON, /html/v1 a proxy's
    HTML page, /nochoices/v1 no choices (a stream of none but [DONE]), /badlater/v1 streams text, then an event
    that is not JSON."""
    import json

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response, StreamingResponse

    from glyph_rt.serve.app import _error
    from glyph_rt.serve.inputs import RequestError
    from glyph_rt.serve.protocol import error

    app = FastAPI()
    reply = {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
             "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "length",
                          "logprobs": {"content": [{"token": "hello", "logprob": -0.5, "bytes": None,
                                                    "top_logprobs": []}]}}],
             "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}

    def sse(*events: str) -> StreamingResponse:
        async def body():
            for e in events:
                yield e

        return StreamingResponse(body(), media_type="text/event-stream")

    def event(status: int) -> str:
        return "data: " + json.dumps(error("the engine process has stopped; restart the server", status)) + "\n\n"

    @app.post("/{kind}/v1/chat/completions")
    async def chat(kind: str, request: Request):
        stream = (await request.json()).get("stream")
        hits[kind] += 1
        if kind == "ok":
            if stream:
                return sse(chunk({"role": "assistant", "content": ""}), chunk({"content": "hel"}),
                           chunk({"content": "lo"}), chunk({}, "stop"), "data: [DONE]\n\n")
            return reply
        if kind == "errstream" and stream:
            return sse(chunk({"role": "assistant", "content": ""}), event(503), "data: [DONE]\n\n")
        if kind == "errlater" and stream:
            return sse(chunk({"role": "assistant", "content": ""}), chunk({"content": "partial"}), event(500),
                       "data: [DONE]\n\n")
        if kind == "busy":
            return JSONResponse(error("the queue is full", 429, None, "queue_full"), status_code=429,
                                headers={"Retry-After": "30"})
        if kind == "late":
            return JSONResponse(error("the request waited in the queue past its timeout", 408, None, "queue_timeout"),
                                status_code=408)
        if kind == "overtime":
            late = RequestError("the request took longer than its timeout of 600 s", None, 504, "timeout")
            if stream:
                return sse(chunk({"role": "assistant", "content": ""}),
                           "data: " + json.dumps(error(str(late), 504, None, "timeout")) + "\n\n", "data: [DONE]\n\n")
            return _error(late)
        if kind == "slow":
            await asyncio.sleep(1.0)
            return reply
        if kind == "badjson":
            if stream:
                return sse(chunk({"role": "assistant", "content": ""}), "data: {not json\n\n")
            return Response("{not json", media_type="application/json")
        if kind == "html":
            return Response("<html>welcome to nginx</html>", media_type="text/html")
        if kind == "nochoices":
            return sse("data: [DONE]\n\n") if stream else {**reply, "choices": []}
        if kind == "badlater" and stream:
            return sse(chunk({"content": "partial"}), "data: {not json\n\n")
        return JSONResponse(error("down", 503), status_code=503)

    return app


@pytest.fixture(scope="module")
def fake():
    """A function of paths -> their URLs, and the requests each path got, on one server for the module."""
    hits = collections.Counter()
    with ServerThread(fake_replicas(hits)) as s:
        yield (lambda *kinds: [f"{s.url}/{k}/v1" for k in kinds]), hits


def test_an_error_event_in_a_stream_is_a_replica_failure(fake):
    """glyph_rt's server sends the role chunk, then a 5xx as an error event (the SDK: a plain APIError): before any
    text the stream goes on to another replica, and either way the replica is backed off."""
    urls, _ = fake
    fwd = ForwardingBackend(urls("errstream", "ok"), model="m", render_config=CFG)
    assert "".join(fwd.chat_stream("doc", "q")) == "hello" and fwd.sent == [1, 1] and fwd._wait == [2.0, 0.0]

    async def streamed(fwd):
        return [t async for t in fwd.achat_stream("doc", "q")]

    fwd._down_until[0] = 0.0  # its window over: tried first again, and backed off for twice as long
    assert asyncio.run(streamed(fwd)) == ["hel", "lo"] and fwd.sent == [2, 2] and fwd._wait == [4.0, 0.0]
    fwd = ForwardingBackend(urls("errlater", "ok"), model="m", render_config=CFG)
    got = []
    with pytest.raises(openai.APIError, match="engine process has stopped"):  # text reached the caller: raised
        for t in fwd.chat_stream("doc", "q"):
            got.append(t)
    assert got == ["partial"] and fwd.sent == [1, 0] and fwd._wait == [2.0, 0.0] and fwd.in_flight == [0, 0]
    fwd = ForwardingBackend(urls("errlater", "ok"), model="m", render_config=CFG)
    with pytest.raises(openai.APIError, match="engine process has stopped"):
        asyncio.run(streamed(fwd))
    assert fwd.sent == [1, 0] and fwd._wait == [2.0, 0.0] and fwd.in_flight == [0, 0]


def test_a_reply_that_is_not_the_protocols_is_a_replica_failure(fake):
    """A 200 reply that is not JSON, an HTML page or one without choices: the next replica answers, the bad one is
    backed off; all bad: a BadReplyError naming the replica. A stream that breaks so after its text: raised."""
    urls, hits = fake

    async def streamed(fwd):
        return "".join([t async for t in fwd.achat_stream("doc", "q")])

    for bad in ("badjson", "html", "nochoices"):
        for call in (lambda fwd: fwd.chat("doc", "q"), lambda fwd: "".join(fwd.chat_stream("doc", "q")),
                     lambda fwd: asyncio.run(fwd.achat("doc", "q")), lambda fwd: asyncio.run(streamed(fwd))):
            hits.clear()
            fwd = ForwardingBackend(urls(bad, "ok"), model="m", render_config=CFG)
            assert call(fwd) == "hello" and hits == {bad: 1, "ok": 1}, (bad, hits)
            assert fwd._wait == [2.0, 0.0] and fwd.in_flight == [0, 0]
    fwd = ForwardingBackend(urls("html", "nochoices"), model="m", render_config=CFG)
    with pytest.raises(BadReplyError, match="/nochoices/v1 answered with no choices"):
        fwd.chat("doc", "q")
    with pytest.raises(BadReplyError, match="/nochoices/v1 ended its stream without a chat completion chunk"):
        list(fwd.chat_stream("doc", "q"))
    assert fwd.sent == [2, 2]
    fwd = ForwardingBackend(urls("badlater", "ok"), model="m", render_config=CFG)
    got = []
    with pytest.raises(BadReplyError, match="/badlater/v1 sent a reply that is not the OpenAI protocol's"):
        for t in fwd.chat_stream("doc", "q"):
            got.append(t)
    assert got == ["partial"] and fwd.sent == [1, 0] and fwd._wait == [2.0, 0.0] and fwd.in_flight == [0, 0]
    with pytest.raises(BadReplyError, match="/badlater/v1"):
        asyncio.run(streamed(ForwardingBackend(urls("badlater"), model="m", render_config=CFG)))


def test_a_stream_answers_at_its_finish_reason(fake):
    """A stream clears its replica's backoff once a chunk gives its finish_reason (or it ends after a chunk), not
    at its first text: a caller who stops reading before says nothing of the replica."""
    urls, _ = fake
    fwd = ForwardingBackend(urls("ok"), model="m", render_config=CFG)
    fwd._wait[0] = 4.0
    stream = fwd.chat_stream("doc", "q")
    assert next(stream) == "hel"
    stream.close()
    assert fwd._wait == [4.0] and fwd.in_flight == [0]
    assert list(fwd.chat_stream("doc", "q")) == ["hel", "lo"] and fwd._wait == [0.0]


def test_a_stream_of_n_choices_is_refused(fake):
    """A stream yields one answer's text: n > 1 (whose choices' pieces would interleave) is refused, nothing sent;
    chat_response gives n choices."""
    urls, hits = fake
    hits.clear()
    fwd = ForwardingBackend(urls("ok"), model="m", render_config=CFG)
    with pytest.raises(ValueError, match="n=2: a stream yields one answer's text; use chat_response"):
        fwd.chat_stream("doc", "q", n=2)  # at the call, not when the stream is first read
    with pytest.raises(ValueError, match="n=3: a stream yields one answer's text"):
        fwd.achat_stream("doc", "q", n=3)
    for stream in (fwd.chat_stream, fwd.achat_stream):
        with pytest.raises(ValueError, match="stream: not a sampling argument here"):
            stream("doc", "q", stream=True)
    assert not hits and fwd.sent == [0]
    assert "".join(fwd.chat_stream("doc", "q", n=1)) == "hello"


def test_retries_are_the_backends_not_the_sdks(fake):
    """The SDK's clients retry nothing: a 503 or a hung replica costs one attempt, then the next replica answers;
    a request makes at most len(replicas) x (1 + max_retries) attempts."""
    urls, hits = fake
    hits.clear()
    fwd = ForwardingBackend(urls("down", "ok"), model="m", render_config=CFG)
    assert fwd.chat("doc", "q") == "hello" and hits == {"down": 1, "ok": 1}
    hits.clear()
    fwd = ForwardingBackend(urls("slow", "ok"), model="m", render_config=CFG, timeout=0.3)
    fwd.page_urls("doc")
    t = time.perf_counter()
    assert fwd.chat("doc", "q") == "hello" and hits == {"slow": 1, "ok": 1}
    assert time.perf_counter() - t < 0.9  # one timeout, not three
    assert fwd._wait == [2.0, 0.0]
    hits.clear()
    for retries in (0, 2):
        fwd = ForwardingBackend(urls("down", "busy"), model="m", render_config=CFG, max_retries=retries,
                                backoff=0.01, max_backoff=0.01)  # (the 429's Retry-After: 30 s, cut to max_backoff)
        with pytest.raises(openai.APIStatusError):
            fwd.chat("doc", "q")
        assert hits == {"down": 1 + retries, "busy": 1 + retries} and fwd.in_flight == [0, 0]
        hits.clear()
    with pytest.raises(ValueError, match="max_retries=-1: give 0 or more"):
        ForwardingBackend(urls("ok"), model="m", max_retries=-1)


def test_a_busy_replica_hands_the_request_on(fake):
    """A 429 (queue full) or 408 goes on to another replica; the busy one is passed over for its Retry-After (else
    `backoff`) without counting as a failure; all busy: the last error."""
    urls, _ = fake
    fwd = ForwardingBackend(urls("busy", "ok"), model="m", render_config=CFG)
    assert fwd.chat("doc", "q") == "hello" and fwd.sent == [1, 1]
    assert fwd._wait == [0.0, 0.0] and 29 < fwd._down_until[0] - time.monotonic() <= 30  # Retry-After: 30
    assert fwd.chat("doc", "q") == "hello" and fwd.sent == [1, 2]  # passed over
    fwd = ForwardingBackend(urls("late", "ok"), model="m", render_config=CFG, backoff=5.0)
    assert "".join(fwd.chat_stream("doc", "q")) == "hello" and fwd.sent == [1, 1]
    assert fwd._wait == [0.0, 0.0] and 4 < fwd._down_until[0] - time.monotonic() <= 5
    fwd = ForwardingBackend(urls("late", "busy"), model="m", render_config=CFG)
    with pytest.raises(openai.RateLimitError):
        asyncio.run(fwd.achat("doc", "q"))
    assert fwd.sent == [1, 1] and fwd.in_flight == [0, 0]


def test_a_request_past_the_servers_timeout_is_its_own_outcome(fake):
    """glyph_rt's 504 (the request's compute ran past --timeout, x-should-retry: false), or its error event in a
    stream: raised at once, not tried on another replica nor again, and the replica is not backed off."""
    urls, hits = fake

    async def streamed(fwd):
        return [t async for t in fwd.achat_stream("doc", "q")]

    for call in (lambda fwd: fwd.chat("doc", "q"), lambda fwd: list(fwd.chat_stream("doc", "q")),
                 lambda fwd: asyncio.run(fwd.achat("doc", "q")), lambda fwd: asyncio.run(streamed(fwd))):
        hits.clear()
        fwd = ForwardingBackend(urls("overtime", "ok"), model="m", render_config=CFG, max_retries=2)
        with pytest.raises(openai.APIError, match="longer than its timeout") as e:
            call(fwd)
        assert e.value.body["type"] == "timeout" and hits == {"overtime": 1}
        assert fwd._down_until == [0.0, 0.0] and fwd.in_flight == [0, 0]


def test_a_cancelled_or_interrupted_request_leaves_nothing_in_flight(fake, monkeypatch):
    urls, _ = fake
    fwd = ForwardingBackend(urls("slow"), model="m", render_config=CFG)

    async def deadline():  # a caller's deadline (or a disconnected client) cancels achat
        for _ in range(3):
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(fwd.achat("doc", "q"), 0.2)

    asyncio.run(deadline())
    assert fwd.sent == [3] and fwd.in_flight == [0] and fwd._down_until == [0.0]  # nothing said of the replica

    def interrupted(**kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(fwd._sync[0].chat.completions, "create", interrupted)
    for call in (lambda: fwd.chat("doc", "q"), lambda: list(fwd.chat_stream("doc", "q"))):
        with pytest.raises(KeyboardInterrupt):
            call()
    assert fwd.sent == [5] and fwd.in_flight == [0] and fwd._down_until == [0.0]


def test_async_calls_from_one_event_loop_after_another(fake):
    """asyncio.run(fwd.achat(...)) again and again: each call's client is closed with it, so a finished event loop
    leaves no connection open."""
    import gc
    import os

    urls, _ = fake
    fwd = ForwardingBackend(urls("ok", "ok"), model="m", render_config=CFG)
    assert [asyncio.run(fwd.achat("doc", "q")) for _ in range(3)] == ["hello"] * 3
    assert sum(fwd.sent) == 3 and fwd._wait == [0.0, 0.0]

    async def streamed():
        return [t async for t in fwd.achat_stream("doc", "q")]

    gc.collect()
    fds = len(os.listdir("/proc/self/fd"))
    for _ in range(10):
        assert asyncio.run(fwd.achat("doc", "q")) == "hello" and "".join(asyncio.run(streamed()))
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) <= fds + 2  # before: two descriptors more for each call


def test_the_whole_response_and_the_page_cache_bounds(fake):
    urls, _ = fake
    fwd = ForwardingBackend(urls("ok"), model="m", render_config=CFG)
    for reply in (fwd.chat_response("doc", "q", logprobs=True), asyncio.run(fwd.achat_response("doc", "q"))):
        assert isinstance(reply, openai.types.chat.ChatCompletion) and reply.choices[0].finish_reason == "length"
        assert reply.choices[0].logprobs.content[0].logprob == -0.5 and reply.usage.completion_tokens == 1

    size = sum(map(len, fwd.page_urls(TEXT[:700])))  # one page of each
    fwd = ForwardingBackend(urls("ok"), model="m", render_config=CFG, cache_mb=2.5 * size / 1e6)
    docs = [TEXT[k * 100:k * 100 + 700] for k in range(3)]
    for d in docs:
        fwd.page_urls(d)
    assert len(fwd._pages) == 2 and fwd._page_bytes <= 2.5 * size  # the oldest went: over the byte bound
    fwd.page_urls(TEXT[:20000])  # larger than the whole cache: rendered, not kept
    assert len(fwd._pages) == 2
    assert ForwardingBackend(urls("ok"), model="m", render_config=CFG, cached_documents=0).page_urls("doc")
    for name in ("cached_documents", "cache_mb"):
        with pytest.raises(ValueError, match=f"{name}=-1: give 0 or more"):
            ForwardingBackend(urls("ok"), model="m", **{name: -1})


def test_a_text_with_a_lone_surrogate_is_rendered_and_cached_by_its_own_key():
    """A lone surrogate (legal in a client's JSON) hashes as the in-process server's document key hashes it
    (surrogatepass), so that its pages are rendered and cached apart from another surrogate's."""
    from glyph_rt.serve.doc_cache import document_key, text_hash

    fwd = ForwardingBackend(["http://127.0.0.1:9/v1"], model="m", render_config=CFG)  # nothing is sent
    a = fwd.page_urls("abc \ud800 def")
    assert a and all(u.startswith("data:image/png;base64,") for u in a)
    assert fwd.page_urls("abc \ud800 def") is a  # from the cache
    fwd.page_urls("abc \udc00 def")
    assert len(fwd._pages) == 2
    assert text_hash("a", "\ud800") != text_hash("a", "\udc00")
    assert document_key("t\ud800", "{}", "m") == "doc:" + text_hash("m", "{}", "t\ud800")
