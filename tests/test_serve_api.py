"""The OpenAI-compatible server over real HTTP on 127.0.0.1, driven by the official openai client; each test of the
server runs with the engine in the server's process (a thread) and in a process of its own (EngineProcess)."""
import asyncio
import base64
import io
import json
import time

import httpx
import openai
import pytest
import torch

from glyph_rt import RenderConfig
from glyph_rt.models import GlyphModel
from glyph_rt.models.tiny import tiny_glm4v_checkpoint
from glyph_rt.render.textio import sample_text
from glyph_rt.serve.app import ServerThread, build_app
from glyph_rt.serve.engine import Engine
from glyph_rt.serve.engine_process import EngineProcess
from glyph_rt.serve.inputs import RENDER_OVERRIDES, InputOptions, RequestError
from glyph_rt.serve.service import ChatService, ServeConfig

from conftest import EXACT  # fp32 on the test device: answers compared token for token

CFG = RenderConfig(page_size=(120, 90))
TEXT = sample_text()
KEY = "test-key"


@pytest.fixture(scope="module")
def gm(ckpt):
    return GlyphModel.from_pretrained(ckpt, render_config=CFG, **EXACT)


def service(gm, **engine_kw):
    return ChatService(Engine(gm, **engine_kw).start(), InputOptions(CFG, "tiny", threshold=300), 16)


def backend(kind, gm, ckpt, **engine_kw):
    """The engine on a thread of this process, or in a process of its own loading the same checkpoint."""
    if kind == "thread":
        return service(gm, **engine_kw)
    return EngineProcess(ServeConfig(model=str(ckpt), served_model_name="tiny", render_config=CFG, device="cpu",
                                     threshold=300, default_max_tokens=16, **engine_kw))


@pytest.fixture(scope="module", params=["thread", "process"])
def server(request, gm, ckpt):
    b = backend(request.param, gm, ckpt, max_batch=16, cache_bytes=64 << 20)
    with ServerThread(build_app(b, api_key=KEY, max_body_bytes=1 << 20)) as s:
        yield s
    b.shutdown()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def doc_messages(doc, question):
    return [{"role": "user", "content": [{"type": "text", "text": doc}, {"type": "text", "text": question}]}]


def metric(server, name):
    for line in httpx.get(server.url + "/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_models_health_and_metrics(server, client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    text = httpx.get(server.url + "/metrics").text
    for name in ("glyph_rt_queue_depth", "glyph_rt_running_requests", "glyph_rt_preparing_requests",
                 "glyph_rt_time_to_first_token_seconds",
                 "glyph_rt_inter_token_latency_seconds", "glyph_rt_generation_tokens_per_second",
                 "glyph_rt_pages_rendered", "glyph_rt_compression_ratio", "glyph_rt_document_cache_hits",
                 "glyph_rt_engine_busy_seconds_total"):
        assert name in text


def test_no_api_schema_or_docs_past_the_key(server):
    for path in ("/openapi.json", "/docs", "/redoc"):
        assert httpx.get(server.url + path).status_code == 404
        assert httpx.get(server.url + path, headers={"Authorization": f"Bearer {KEY}"}).status_code == 404


def test_openai_sdk_messages_and_stream_options_are_taken_as_they_are(server, client):
    """The SDK's own assistant message sent back (refusal, tool_calls, ... all null), and stream_options of OpenAI's
    that change nothing here, as vLLM takes them; a tool call itself is refused, naming the field."""
    msgs = [{"role": "user", "content": "hi"}]
    first = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=3)
    echoed = first.choices[0].message.model_dump()
    assert {"refusal", "tool_calls", "function_call", "audio", "annotations"} <= echoed.keys()
    more = {"role": "user", "content": "more"}
    again = client.chat.completions.create(model="tiny", max_tokens=3, messages=msgs + [echoed, more])
    as_object = client.chat.completions.create(model="tiny", max_tokens=3,
                                               messages=msgs + [first.choices[0].message, more])
    assert again.usage.prompt_tokens == as_object.usage.prompt_tokens > first.usage.prompt_tokens
    chunks = list(client.chat.completions.create(model="tiny", messages=msgs, max_tokens=3, stream=True,
                                                 stream_options={"include_usage": True,
                                                                 "include_obfuscation": False}))
    assert chunks[-1].usage.completion_tokens >= 1
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    with pytest.raises(openai.BadRequestError, match=r"messages\[1\]\.tool_calls: not supported"):
        client.chat.completions.create(model="tiny", max_tokens=3, messages=msgs + [
            {"role": "assistant", "content": None, "tool_calls": [call]}])


def test_chat_equals_generate_streaming_and_not(gm, server, client):
    doc, q = TEXT[:900], "What does it allow?"  # over the 300-character threshold: rendered
    ref = gm.generate(doc, q, max_new_tokens=12)[0]
    r = client.chat.completions.create(model="tiny", messages=doc_messages(doc, q), max_tokens=12, temperature=0)
    assert r.choices[0].message.content == ref.text
    assert r.usage.completion_tokens == len(ref.token_ids) and r.usage.prompt_tokens == ref.prompt_tokens
    assert r.glyph["pages"] == ref.pages and r.glyph["visual_tokens"] == ref.visual_tokens
    stream = client.chat.completions.create(model="tiny", messages=doc_messages(doc, q), max_tokens=12, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ref.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == r.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == len(ref.token_ids)
    # the same document again: served from the document cache, same answer
    hits = metric(server, 'glyph_rt_document_cache_hits_total{kind="prefix"}')
    again = client.chat.completions.create(model="tiny", messages=doc_messages(doc, q), max_tokens=12, temperature=0)
    assert again.choices[0].message.content == ref.text and again.glyph["cache_hit"] == "prefix"
    assert metric(server, 'glyph_rt_document_cache_hits_total{kind="prefix"}') >= hits + 1


def test_cache_metrics_count_each_lookup_as_the_cache_does(gm):
    svc = service(gm, cache_bytes=64 << 20)
    doc = TEXT[2000:2700]
    try:
        with ServerThread(build_app(svc)) as s:
            c = openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0, timeout=60)
            hits = []
            for system in ("A", "A", "B", "B"):  # none, prefix, document (a new prefix), prefix
                msgs = [{"role": "system", "content": system}] + doc_messages(doc, "Q?")
                hits.append(c.chat.completions.create(model="tiny", messages=msgs, max_tokens=2).glyph["cache_hit"])
            assert hits == ["none", "prefix", "document", "prefix"]
            cache = svc.engine.cache
            assert cache.hits == {"document": 3, "prefix": 2} and cache.misses == {"document": 1, "prefix": 2}
            for kind in ("document", "prefix"):
                assert metric(s, f'glyph_rt_document_cache_hits_total{{kind="{kind}"}}') == cache.hits[kind]
                assert metric(s, f'glyph_rt_document_cache_misses_total{{kind="{kind}"}}') == cache.misses[kind]
    finally:
        svc.shutdown()


def test_glyph_part_render_config_and_images(gm, server, client):
    from PIL import Image

    part = {"type": "glyph", "glyph": {"text": TEXT[:400], "render_config": {"font_size": 12, "line_height": 13}}}
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": [part]}], max_tokens=3)
    small = client.chat.completions.create(model="tiny", max_tokens=3, messages=[
        {"role": "user", "content": [{"type": "glyph", "glyph": {"text": TEXT[:400]}}]}])
    assert r.glyph["pages"] > small.glyph["pages"]  # a larger font takes more pages
    buf = io.BytesIO()
    Image.new("RGB", (120, 90), "white").save(buf, "PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    r = client.chat.completions.create(model="tiny", max_tokens=3, messages=[
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "?"}]}])
    assert r.glyph["pages"] == 1
    for bad in ("file:///etc/passwd", "http://127.0.0.1/x.png"):
        with pytest.raises(openai.BadRequestError, match="data URL"):
            client.chat.completions.create(model="tiny", max_tokens=3, messages=[
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": bad}}]}])
    with pytest.raises(openai.BadRequestError, match="cannot be set per request"):
        client.chat.completions.create(model="tiny", max_tokens=3, messages=doc_messages(TEXT[:400], "?"),
                                       extra_body={"glyph": {"render_config": {"font_path": "/etc/passwd"}}})


def test_logprobs_are_the_models_streaming_and_not(gm, server, client):
    doc, q = TEXT[:900], "Who is it for?"
    inputs, _, _ = gm.build_inputs([doc], [q])
    out = gm.model.generate(**inputs, max_new_tokens=8, do_sample=False, output_logits=True,
                            return_dict_in_generate=True)
    want = [torch.log_softmax(step[0].float(), -1) for step in out.logits]
    kw = dict(model="tiny", messages=doc_messages(doc, q), max_tokens=8, temperature=0, logprobs=True, top_logprobs=3)
    r = client.chat.completions.create(**kw)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens and "".join(t.token for t in content) == \
        r.choices[0].message.content
    for t, lp, tok in zip(content, want, out.sequences[0, inputs["input_ids"].shape[1]:].tolist()):
        assert t.token == gm.tokenizer.decode([tok]) and (bytes(t.bytes) == t.token.encode() or t.token == "\ufffd")
        assert t.logprob == pytest.approx(lp[tok].item(), abs=1e-4)
        top = lp.topk(3)
        assert [x.token for x in t.top_logprobs] == [gm.tokenizer.decode([i]) for i in top.indices.tolist()]
        assert [x.logprob for x in t.top_logprobs] == pytest.approx(top.values.tolist(), abs=1e-4)
    chunks = list(client.chat.completions.create(**kw, stream=True))
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [(t.token, t.top_logprobs[0].token) for t in streamed] == \
        [(t.token, t.top_logprobs[0].token) for t in content]
    plain = client.chat.completions.create(model="tiny", messages=doc_messages(doc, q), max_tokens=2)
    assert plain.choices[0].logprobs is None


def test_n_choices_streaming_and_not(server, client):
    """n=3 with a seed: the JSON response's choices equal the stream's, reassembled by index; each stream choice
    starts with the assistant role and ends with its finish_reason; usage counts every choice's tokens."""
    doc, q = TEXT[:900], "What does it allow?"
    kw = dict(model="tiny", messages=doc_messages(doc, q), max_tokens=6, temperature=1.0, seed=5, n=3, logprobs=True)
    r = client.chat.completions.create(**kw)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert r.usage.completion_tokens == sum(len(c.logprobs.content) for c in r.choices) >= 3
    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    text, role, finish = {}, {}, {}
    for ch in chunks:
        for c in ch.choices:
            text[c.index] = text.get(c.index, "") + (c.delta.content or "")
            if c.delta.role:
                role[c.index] = c.delta.role
            if c.finish_reason:
                finish[c.index] = c.finish_reason
    assert text == {c.index: c.message.content for c in r.choices}
    assert role == {0: "assistant", 1: "assistant", 2: "assistant"}
    assert finish == {c.index: c.finish_reason for c in r.choices}
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    assert len({c.message.content for c in r.choices}) > 1  # sampled on their own (seed + index)


def test_bad_requests_get_the_right_status_and_the_server_stays_up(server, client):
    url, auth = server.url + "/v1/chat/completions", {"Authorization": f"Bearer {KEY}"}
    ok = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    cases = [
        (b"{not json", auth, 400, "not valid JSON"),
        (json.dumps({**ok, "frobnicate": 1}).encode(), auth, 400, "frobnicate: unknown field"),
        (json.dumps({**ok, "temperature": 9}).encode(), auth, 400, "temperature"),
        (json.dumps({**ok, "max_tokens": 100000}).encode(), auth, 400, "over the model's context of 4096"),
        (json.dumps({**ok, "model": "gpt-4"}).encode(), auth, 404, "not served here"),
        (json.dumps({**ok, "messages": [{"role": "user", "content": "a <|image|> b"}]}).encode(), auth, 400,
         "image token"),
        (json.dumps({**ok, "messages": [{"role": "user", "content": [{"type": "audio"}]}]}).encode(), auth, 400,
         "'audio' is not supported"),
        (json.dumps(ok).encode(), {}, 401, "API key"),
        (json.dumps(ok).encode(), {"Authorization": "Bearer nope"}, 401, "API key"),
        (json.dumps({**ok, "messages": [{"role": "user", "content": "x" * (2 << 20)}]}).encode(), auth, 413,
         "--max-body-mb"),
        (json.dumps({**ok, "seed": 2**70}).encode(), auth, 400, "seed"),
        (json.dumps({**ok, "n": 129}).encode(), auth, 400, "n: Input should be less than or equal to 128"),
        (json.dumps({**ok, "presence_penalty": 2.5}).encode(), auth, 400, "presence_penalty: Input should be less"),
        (json.dumps({**ok, "top_logprobs": 2}).encode(), auth, 400, "top_logprobs: needs logprobs: true"),
        (json.dumps({**ok, "stream_options": {"include_usage": True}}).encode(), auth, 400,
         "stream_options: only with stream: true"),
        (json.dumps({**ok, "logprobs": True, "top_logprobs": 21}).encode(), auth, 400, "top_logprobs"),
        (json.dumps({**ok, "response_format": {"type": "json_object"}}).encode(), auth, 400,
         "response_format: type 'json_object' is not supported"),
        (json.dumps({**ok, "response_format": {"type": "json_schema", "json_schema": {"name": "a"}}}).encode(), auth,
         400, "response_format: type 'json_schema'"),
        (json.dumps({**ok, "response_format": {"type": "xml"}}).encode(), auth, 400, "response_format.type"),
        (b"[" * 200_000, auth, 400, "nested too deeply"),  # past json.loads' recursion
    ]
    bad_parts = [  # parts of the wrong shape (a string image_url is a common client mistake)
        ({"type": "image_url", "image_url": "data:image/png;base64,AAAA"}, "image_url: must be an object"),
        ({"type": "glyph", "glyph": ["x"]}, ".glyph: must be an object"),
        ({"type": "glyph", "glyph": {"text": ["x"]}}, ".glyph.text: must be a string"),
        ({"type": "text", "text": {"a": 1}}, ".text: must be a string"),
        ("just a string", "Input should be"),  # the protocol's own check
    ]
    cases += [(json.dumps({**ok, "messages": [{"role": "user", "content": [part]}]}).encode(), auth, 400, words)
              for part, words in bad_parts]
    for body, headers, status, words in cases:
        r = httpx.post(url, content=body, headers={**headers, "Content-Type": "application/json"}, timeout=60)
        assert r.status_code == status, r.text
        err = r.json()["error"]
        assert words in err["message"] and {"message", "type", "param", "code"} <= err.keys()
    # nested less deeply than json.loads refuses, more than pickle takes (to the engine's process): a 400 too
    deep = json.loads("[" * 900 + "]" * 900)
    r = httpx.post(url, json={**ok, "glyph": {"render_config": {"font_size": deep}}}, headers=auth, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["message"], r.text
    # explicit nulls mean the defaults and a plain-text response_format is what the server does anyway (as vLLM)
    nulls = {"n": None, "stream": None, "logprobs": None, "presence_penalty": None, "frequency_penalty": None,
             "stop": None, "seed": None, "response_format": {"type": "text"}}
    r = httpx.post(url, json={**ok, **nulls}, headers=auth, timeout=60)
    assert r.status_code == 200 and r.json()["object"] == "chat.completion", r.text
    assert client.chat.completions.create(model="tiny", response_format={"type": "text"}, **ok).choices
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).models.list()
    assert httpx.get(server.url + "/health").status_code == 200
    assert client.chat.completions.create(model="tiny", **ok).choices[0].finish_reason in ("length", "stop")


def test_a_lone_surrogate_in_a_render_config_key_is_a_400(server, client):
    """A lone surrogate is legal JSON ("\ud800"): as a render_config key it is refused (400, an OpenAI error object
    quoting it), not a 500 from the error's own encoding, and the server goes on."""
    url, headers = server.url + "/v1/chat/completions", {"Authorization": f"Bearer {KEY}",
                                                         "Content-Type": "application/json"}
    bodies = {  # raw JSON: the escape reaches the server as the client wrote it
        "messages[0].content[0].glyph.render_config":
            r'{"messages":[{"role":"user","content":[{"type":"glyph","glyph":{"text":"hi","render_config":'
            r'{"\ud800":1}}}]}],"max_tokens":2}',
        "glyph.render_config": r'{"messages":[{"role":"user","content":"hi"}],"glyph":{"render_config":'
                               r'{"\ud800":1}},"max_tokens":2}',
    }
    for param, body in bodies.items():
        for stream in (False, True):
            r = httpx.post(url, content=body[:-1] + f',"stream":{json.dumps(stream)}}}', headers=headers, timeout=60)
            assert r.status_code == 400, r.text
            err = r.json()["error"]
            assert err["param"] == param and {"message", "type", "param", "code"} <= err.keys()
            assert err["message"] == f"{param}: '\\ud800' cannot be set per request; allowed: " + ", ".join(
                RENDER_OVERRIDES)
    assert httpx.get(server.url + "/health").status_code == 200
    assert client.chat.completions.create(model="tiny", max_tokens=2, messages=[
        {"role": "user", "content": "hi"}]).choices[0].finish_reason in ("length", "stop")


class ErrorBackend:
    """A backend whose every request fails with `message`: before it is queued, or in its stream of events."""

    healthy, model_name, max_positions = True, "tiny", 4096

    def __init__(self, message: str):
        self.message = message

    def parse(self, body):
        from glyph_rt.serve.protocol import parse_request

        if not body.get("stream"):
            raise RequestError(self.message, "messages")
        return parse_request(body)

    async def submit(self, req, events):
        await events.put({"type": "error", "error": RequestError(self.message, "messages", 400, "bad")})
        return object()

    def cancel(self, r):
        pass


@pytest.mark.parametrize("message", ["lone \ud800 and \udfff", "quote \" \\ \n \u2028 \x00 \U0001F600 done"])
def test_any_error_text_reaches_the_client_as_json(message):
    """An error message of any text, lone surrogates included, is written as JSON: in a response and in a stream's
    error chunk."""
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    with ServerThread(build_app(ErrorBackend(message))) as s:
        r = httpx.post(s.url + "/v1/chat/completions", json=body, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["message"] == message, r.text
        r = httpx.post(s.url + "/v1/chat/completions", json={**body, "stream": True}, timeout=30)
        # SSE lines end at CR or LF only (httpx's iter_lines would also split at U+2028)
        lines = [line for line in r.content.decode("utf-8").split("\n") if line.startswith("data: ")]
        assert r.status_code == 200 and lines[-1] == "data: [DONE]"
        err = json.loads(lines[-2][len("data: "):])["error"]
        assert err["message"] == message and err["code"] == "bad"


def test_64_concurrent_clients(server):
    async def run():
        c = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)

        async def one(i):
            stream = i % 2 == 0
            r = await c.chat.completions.create(model="tiny", max_tokens=4 + i % 5, temperature=0, stream=stream,
                                                messages=doc_messages(TEXT[i * 50:i * 50 + 400], f"Question {i}?"))
            if stream:
                return [x async for x in r][-1].choices[0].finish_reason
            return r.choices[0].finish_reason

        return await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(64)), return_exceptions=True), 240)

    t = time.monotonic()
    results = asyncio.run(run())
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors[:3]
    assert all(r in ("length", "stop") for r in results) and time.monotonic() - t < 240


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_queue_full_is_429_with_retry_after(gm, ckpt, kind):
    """429 with Retry-After once the queue (--max-queue 1, --max-batch 1) is full: with one request running and one
    waiting, a document request is refused at once, its document never looked up nor rendered. A request refused
    while it is prepared gives its place back."""
    svc = backend(kind, gm, ckpt, max_batch=1, max_queue=1)
    try:
        with ServerThread(build_app(svc)) as s:
            url, hi = s.url + "/v1/chat/completions", [{"role": "user", "content": "hi"}]

            async def run():
                async with httpx.AsyncClient(timeout=120) as h:
                    body = {"messages": hi, "max_tokens": 200, "ignore_eos": True}
                    return await asyncio.gather(*(h.post(url, json=body) for _ in range(6)))

            rs = asyncio.run(run())
            full = [r for r in rs if r.status_code == 429]
            assert full and all(r.headers["Retry-After"].isdigit() and "queue is full" in r.json()["error"]["message"]
                                for r in full)
            assert any(r.status_code == 200 for r in rs)
            empty = [{"role": "user", "content": [{"type": "glyph", "glyph": {"text": " "}}]}]
            for _ in range(2):
                assert httpx.post(url, json={"messages": empty}, timeout=60).status_code == 400
            assert httpx.post(url, json={"messages": hi, "max_tokens": 1}, timeout=60).status_code == 200
            long = {"messages": hi, "max_tokens": 3000, "ignore_eos": True, "stream": True}
            with httpx.stream("POST", url, json=long, timeout=60), httpx.stream("POST", url, json=long, timeout=60):
                deadline = time.monotonic() + 30
                while metric(s, "glyph_rt_running_requests") != 1 or metric(s, "glyph_rt_queue_depth") != 1:
                    assert time.monotonic() < deadline, "the two requests did not start"
                    time.sleep(0.05)
                lookups = metric(s, 'glyph_rt_document_cache_misses_total{kind="document"}')
                doc = [{"role": "user", "content": [{"type": "glyph", "glyph": {"text": TEXT[:3000]}}]}]
                r = httpx.post(url, json={"messages": doc, "max_tokens": 1}, timeout=60)
                assert r.status_code == 429 and r.headers["Retry-After"].isdigit(), r.text
                assert metric(s, 'glyph_rt_document_cache_misses_total{kind="document"}') == lookups
    finally:
        svc.shutdown()


def test_a_request_past_its_timeout_is_a_504_the_sdk_does_not_retry(gm):
    """A request whose compute runs past --timeout: 504, type "timeout" and x-should-retry: false, so the official
    client (with its default 2 retries) runs it once; streamed, its error event says the same."""
    b = service(gm, timeout=1)
    try:
        with ServerThread(build_app(b)) as s:
            c = openai.OpenAI(base_url=s.url + "/v1", api_key="x", timeout=60)  # the SDK's default retries
            kw = dict(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4000,
                      extra_body={"ignore_eos": True})
            with pytest.raises(openai.InternalServerError) as e:
                c.chat.completions.create(**kw)
            assert e.value.status_code == 504 and e.value.response.headers["x-should-retry"] == "false"
            assert e.value.body["type"] == e.value.body["code"] == "timeout"
            assert "longer than its timeout of 1 s" in e.value.body["message"]
            assert metric(s, 'glyph_rt_requests_total{outcome="timeout"}') == 1
            with pytest.raises(openai.APIError) as e:
                list(c.chat.completions.create(**kw, stream=True))
            assert e.value.body["type"] == e.value.body["code"] == "timeout"
            assert metric(s, 'glyph_rt_requests_total{outcome="timeout"}') == 2
    finally:
        b.shutdown()


def test_render_overrides_are_refused_past_40_megapixels_a_page(server, client):
    """dpi and page_size within their ranges may still make a page of 100 Mpx: refused (400) before any render,
    naming both and the limit an image has too, as the request's field and as a glyph part's."""
    big = {"dpi": 300, "page_size": [2400, 2400]}
    part = {"type": "glyph", "glyph": {"text": TEXT[:400], "render_config": big}}
    for messages, extra, param in (
            (doc_messages(TEXT[:400], "?"), {"glyph": {"render_config": big}}, "glyph.render_config"),
            ([{"role": "user", "content": [part]}], None, "messages[0].content[0].glyph.render_config")):
        t = time.monotonic()
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="tiny", max_tokens=1, messages=messages, extra_body=extra)
        assert time.monotonic() - t < 10 and e.value.body["param"] == param
        msg = e.value.body["message"]
        assert "page_size" in msg and "dpi 300" in msg and "100,000,000 pixels" in msg and "40,000,000" in msg
    ok = {"glyph": {"render_config": {"dpi": 300, "page_size": [200, 150]}}}
    assert client.chat.completions.create(model="tiny", max_tokens=1, messages=doc_messages(TEXT[:400], "?"),
                                          extra_body=ok).glyph["pages"] >= 1


def test_openai_fields_sent_as_null_or_that_change_nothing_are_taken(server, client):
    """The openai SDK sends a None as null: tools, tool_choice, logit_bias, metadata, store, parallel_tool_calls and
    service_tier are taken null and when they change nothing; a tool or a logit bias is a 400 naming the field."""
    msgs = [{"role": "user", "content": "hi"}]
    for kw in (dict(tools=None), dict(tool_choice=None), dict(logit_bias=None), dict(metadata=None), dict(store=None),
               dict(parallel_tool_calls=None), dict(service_tier=None), dict(user=None),
               dict(tools=[], tool_choice="none", logit_bias={}, parallel_tool_calls=False, store=True,
                    metadata={"run": "a"}, service_tier="auto")):
        assert client.chat.completions.create(model="tiny", messages=msgs, max_tokens=1, **kw).choices, kw
    tool = {"type": "function", "function": {"name": "f", "parameters": {}}}
    for kw, param in ((dict(tools=[tool]), "tools"), (dict(tool_choice="auto"), "tool_choice"),
                      (dict(tool_choice={"type": "function", "function": {"name": "f"}}), "tool_choice"),
                      (dict(logit_bias={"1": 5}), "logit_bias")):
        with pytest.raises(openai.BadRequestError, match="not supported") as e:
            client.chat.completions.create(model="tiny", messages=msgs, max_tokens=1, **kw)
        assert e.value.body["param"] == param


def test_error_params_name_fields_as_openai_does(server):
    """One path style (messages[0].content), no pydantic union members in it; a key that is not valid Unicode is
    an unknown field with its own param."""
    url, headers = server.url + "/v1/chat/completions", {"Authorization": f"Bearer {KEY}"}
    hi = [{"role": "user", "content": "hi"}]
    cases = [({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", "must be a string or a list"),
             ({"messages": [{"role": "user", "content": ["hi"]}]}, "messages[0].content[0]", "valid dictionary"),
             ({"messages": [{"role": "bob", "content": "hi"}]}, "messages[0].role", "Input should be"),
             ({"messages": hi, "stop": 5}, "stop", "must be a string or a list, got an integer"),
             ({"messages": hi, "stop": [5]}, "stop[0]", "valid string"),
             ({"messages": [{"role": "user", "content": [{"type": "glyph", "glyph": {}}]}]},
              "messages[0].content[0].glyph.text", "empty")]
    for body, param, words in cases:
        r = httpx.post(url, json=body, headers=headers, timeout=60)
        err = r.json()["error"]
        assert r.status_code == 400 and err["param"] == param and words in err["message"], r.text
        assert err["message"].startswith(param + ": ")
    raw = r'{"messages":[{"role":"user","content":"hi"}],"\ud800":1}'
    r = httpx.post(url, content=raw, headers={**headers, "Content-Type": "application/json"}, timeout=60)
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] == "\ud800" and "unknown field" in err["message"], r.text


def test_stream_chunks_carry_usage_null_with_include_usage(server):
    url, headers = server.url + "/v1/chat/completions", {"Authorization": f"Bearer {KEY}"}
    for n in (1, 2):
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "n": n, "stream": True}
        for include in (True, False):
            r = httpx.post(url, json={**body, "stream_options": {"include_usage": include}}, headers=headers,
                           timeout=60)
            chunks = [json.loads(line[6:]) for line in r.text.split("\n") if line.startswith("data: {")]
            if include:
                assert all(c["usage"] is None for c in chunks[:-1]) and chunks[-1]["usage"]["completion_tokens"]
                assert chunks[-1]["choices"] == [] and all(c["choices"] for c in chunks[:-1])
            else:
                assert all("usage" not in c for c in chunks)


def test_an_unexpected_failure_is_a_500_of_type_server_error():
    class Broken(ErrorBackend):
        def parse(self, body):
            raise RuntimeError("boom")

    with ServerThread(build_app(Broken("x"))) as s:
        r = httpx.post(s.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]},
                       timeout=30)
        assert r.status_code == 500 and r.json()["error"]["type"] == "server_error", r.text


def test_disconnected_client_is_cancelled(server):
    before = metric(server, 'glyph_rt_requests_total{outcome="cancelled"}')
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3000, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {KEY}"}) as r:
        lines = r.iter_lines()
        for _ in range(6):
            next(lines)
    deadline = time.monotonic() + 30
    while metric(server, 'glyph_rt_requests_total{outcome="cancelled"}') < before + 1:
        assert time.monotonic() < deadline, "the request was not cancelled"
        time.sleep(0.1)
    assert metric(server, "glyph_rt_running_requests") == 0


def test_cli_serve(tmp_path, gm):
    import os
    import signal
    import subprocess
    import sys

    from glyph_rt.cli import main

    assert main(["serve", "--model", str(tmp_path / "missing")]) == 2
    ckpt = tiny_glm4v_checkpoint(tmp_path / "ckpt")
    p = subprocess.Popen([sys.executable, "-m", "glyph_rt.cli", "serve", "--model", str(ckpt), "--port", "0",
                          "--api-key", KEY, "--device", "cpu", "--served-model-name", "tiny"],
                         stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        url = None
        for line in p.stderr:
            if "Uvicorn running on" in line:
                url = line.split("Uvicorn running on ")[1].split()[0]
                break
        assert url, "the server did not start"
        c = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=60)
        r = c.chat.completions.create(model="tiny", max_tokens=3, messages=[{"role": "user", "content": "hi"}])
        assert r.usage.completion_tokens <= 3
    finally:
        p.send_signal(signal.SIGINT)
        assert p.wait(60) == 0
        p.stderr.close()


def test_random_bodies_never_break_the_server(server):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    scalar = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=False, allow_infinity=False),
                       st.text(max_size=20))
    part = st.fixed_dictionaries({"type": st.sampled_from(["text", "glyph", "image_url", "video"])},
                                 optional={"text": st.text(max_size=50), "glyph": st.dictionaries(
                                     st.sampled_from(["text", "render_config"]), scalar),
                                     "image_url": st.dictionaries(st.just("url"), st.text(max_size=30))})
    message = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool"])},
                                    optional={"content": st.one_of(scalar, st.lists(part, max_size=3))})
    body = st.fixed_dictionaries({"messages": st.lists(message, max_size=3)}, optional={
        "max_tokens": st.integers(-1, 3), "temperature": scalar, "top_p": scalar, "stop": scalar,
        "stream": st.booleans(), "seed": scalar, "repetition_penalty": scalar, "glyph": st.dictionaries(
            st.sampled_from(["render_config", "threshold", "other"]), scalar), "extra": scalar})
    h = httpx.Client(timeout=60, headers={"Authorization": f"Bearer {KEY}"})

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(body)
    def check(b):
        b.setdefault("max_tokens", 2)
        r = h.post(server.url + "/v1/chat/completions", json=b)
        assert r.status_code in (200, 400, 404, 413), (r.status_code, r.text)
        if r.status_code != 200:
            assert r.json()["error"]["message"]

    check()
    assert h.get(server.url + "/health").status_code == 200


def test_engine_events_reach_the_loop_in_order_with_few_wakeups():
    """The engine's thread posts each request's events; the loop gets them all, in order, and wakes once per
    burst rather than once per event."""
    import asyncio
    import threading

    from glyph_rt.serve.service import LoopMailbox

    async def main():
        loop = asyncio.get_running_loop()
        box = LoopMailbox(loop)
        wakeups = 0
        deliver = box._deliver

        def counted():
            nonlocal wakeups
            wakeups += 1
            deliver()

        box._deliver = counted
        queues = [asyncio.Queue() for _ in range(8)]
        sent = threading.Event()

        def engine():
            for step in range(50):
                for q in queues:
                    box.post(q, {"step": step})
            sent.set()

        threading.Thread(target=engine).start()
        got = []
        for q in queues:  # (an async comprehension inside another is Python 3.11+)
            got.append([(await q.get())["step"] for _ in range(50)])
        assert sent.is_set() and got == [list(range(50))] * 8
        assert wakeups < 8 * 50
        loop_closed = LoopMailbox(asyncio.new_event_loop())
        loop_closed.loop.close()
        with pytest.raises(RuntimeError, match="closed"):
            loop_closed.post(queues[0], {})

    asyncio.run(main())
