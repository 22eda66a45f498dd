"""Scale past one GPU: render with glyph_rt, send the pages as PNG data URIs to OpenAI-compatible servers.

Any server that speaks the OpenAI chat API with image_url parts works: N vLLM replicas serving Glyph, or
glyph_rt's own servers. Pages travel inside the request (data URIs), never as local paths, so the servers
need no `--allowed-local-media-path`. Each request goes to the replica with the fewest requests in flight;
a document's pages are rendered once and kept (an LRU of data URIs, at most `cached_documents` documents and
`cache_mb` MB) for follow-up questions.

A request that meets a connection error, a timeout or a 5xx (an HTTP status, or an error event in a stream)
goes on to another replica, and the replica that failed is passed over for a backoff (`backoff` seconds,
doubling up to `max_backoff` each time it fails again after one, cleared by an answer). A 429 (queue full) or
a 408 (timed out waiting) also goes on to another replica; that one is passed over for its Retry-After (else
`backoff`) seconds, not counted as a failure. A reply that says not to retry (the header x-should-retry: false, or
an error of type "timeout": a glyph_rt server's 504, the request's compute past its --timeout) is the request's own
outcome: raised, not tried elsewhere. A 200 reply that is not the protocol's (a body that is not JSON, an
HTML page from a proxy, no choices, a stream with a bad event or that ends before its first chunk) is a failure
too: BadReplyError, naming the replica. A stream goes on only before its first text reaches the caller; it is an
answer once a chunk gives its finish_reason, or it ends after at least one chunk.
A request still goes to a backed-off replica when no other is left to try. The SDK's clients do not retry on
their own: a request makes at most len(base_urls) x (1 + max_retries) attempts, each replica once per pass, a
pass after the first once the first backoff window ends (at most `max_backoff` s later). When every attempt
failed, the last error is raised.

    fwd = ForwardingBackend(["http://gpu1:8000/v1", "http://gpu2:8000/v1"], model="Glyph")
    answer = fwd.chat(long_text, "Who wrote the letter?", max_tokens=256, temperature=0)
    answer = await fwd.achat(long_text, question)            # from async code
    for text in fwd.chat_stream(long_text, question): ...    # async for ... in fwd.achat_stream(...)
    reply = fwd.chat_response(long_text, question, logprobs=True)   # the ChatCompletion: finish_reason, usage, ...
    replies = fwd.chat_response(long_text, question, n=4).choices  # n choices (a stream gives one: n=1)
"""
from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections import OrderedDict

import numpy as np

from ..render.config import RenderConfig
from .doc_cache import text_hash

# what a request's end says of its replica (see _done)
ANSWERED, FAILED, BUSY = "answered", "failed", "busy"


class BadReplyError(RuntimeError):
    """A replica's 200 reply that is not the OpenAI protocol's: the replica's fault (another one is tried, and it is
    backed off)."""


class ForwardingBackend:
    def __init__(self, base_urls: list[str] | str, model: str, api_key: str | None = None,
                 render_config: RenderConfig | None = None, timeout: float = 600.0, max_retries: int = 0,
                 cached_documents: int = 64, cache_mb: float = 256.0, backoff: float = 2.0,
                 max_backoff: float = 60.0):
        import openai

        urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
        if not urls:
            raise ValueError("base_urls: give at least one server URL (http://host:port/v1)")
        for name, value in (("max_retries", max_retries), ("cached_documents", cached_documents),
                            ("cache_mb", cache_mb)):
            if value < 0:
                raise ValueError(f"{name}={value}: give 0 or more")
        self.model = model
        self.render_config = (render_config or RenderConfig()).validate()
        self.max_retries = max_retries
        # the SDK retries nothing: a retry goes to another replica (ours), not to the same one 3 times
        self._client_args = {"api_key": api_key or "EMPTY", "timeout": timeout, "max_retries": 0}
        self._urls = urls
        self._sync = [openai.OpenAI(base_url=u, **self._client_args) for u in urls]
        self.in_flight = [0] * len(urls)
        self.sent = [0] * len(urls)
        self.backoff, self.max_backoff = backoff, max_backoff
        self._wait = [0.0] * len(urls)  # a failed replica's backoff (0: none) and when it ends
        self._down_until = [0.0] * len(urls)
        self._lock = threading.Lock()
        self._pages: OrderedDict[str, list[str]] = OrderedDict()
        self._page_bytes = 0
        self._max_docs, self._max_bytes = cached_documents, int(cache_mb * 1e6)

    # ------------------------------------------------------------------ rendering
    def page_urls(self, text: str) -> list[str]:
        """The text's pages as PNG data URIs (rendered by glyph_rt on the CPU, cached per document; a document
        larger than the whole cache is not kept)."""
        from ..render.pages import render
        from ..render.png import encode_png

        config = json.dumps(self.render_config.to_dict(), sort_keys=True)
        key = text_hash(config, text)
        with self._lock:
            if key in self._pages:
                self._pages.move_to_end(key)
                return self._pages[key]
        pages = render(text, self.render_config)
        urls = ["data:image/png;base64," + base64.b64encode(encode_png(np.ascontiguousarray(p.cpu().numpy()))).decode()
                for p in pages]
        size = sum(map(len, urls))
        with self._lock:
            if key not in self._pages and size <= self._max_bytes:  # (another thread may have kept it meanwhile)
                self._pages[key] = urls
                self._page_bytes += size
                while len(self._pages) > self._max_docs or self._page_bytes > self._max_bytes:
                    self._page_bytes -= sum(map(len, self._pages.popitem(last=False)[1]))
        return urls

    def messages(self, context: str, question: str, system: str | None = None) -> list[dict]:
        """Glyph's layout: the pages, then the question as text."""
        content = [{"type": "image_url", "image_url": {"url": u}} for u in self.page_urls(context)]
        content.append({"type": "text", "text": question})
        msgs = [{"role": "system", "content": system}] if system else []
        return msgs + [{"role": "user", "content": content}]

    # ------------------------------------------------------------------ replicas
    def _pick(self, tried: set[int]) -> int | None:
        """The replica to try next: not yet tried for this request, not backed off, fewest in flight. A
        backed-off one (the one whose backoff ends first) only when no other is left; None when all were tried."""
        now = time.monotonic()
        with self._lock:
            left = [j for j in range(len(self.in_flight)) if j not in tried]
            if not left:
                return None
            i = min(left, key=lambda j: (max(self._down_until[j] - now, 0.0), self.in_flight[j], self.sent[j]))
            self.in_flight[i] += 1
            self.sent[i] += 1
            tried.add(i)
            return i

    def _done(self, i: int, outcome: str | None, retry_after: float | None = None) -> None:
        """Replica i's request is over. ANSWERED clears its backoff; FAILED starts it, or doubles it when it fails
        again after one; BUSY (a 429 or 408) passes it over for retry_after (else `backoff`) seconds, not counted
        as a failure; None (cancelled, interrupted) says nothing of the replica."""
        with self._lock:
            self.in_flight[i] -= 1
            now = time.monotonic()
            if outcome == ANSWERED:  # only an answer clears a backoff
                self._wait[i], self._down_until[i] = 0.0, 0.0
            elif outcome == FAILED and now >= self._down_until[i]:  # a failure inside the window keeps it
                self._wait[i] = min(self.max_backoff, 2 * self._wait[i] or self.backoff)
                self._down_until[i] = now + self._wait[i]
            elif outcome == BUSY:
                pause = self.backoff if retry_after is None else min(retry_after, self.max_backoff)
                self._down_until[i] = max(self._down_until[i], now + pause)

    def _pause(self) -> float:
        """Seconds until the first replica's backoff ends (0 when one is not backed off), at most max_backoff."""
        with self._lock:
            return min(self.max_backoff, max(0.0, min(self._down_until) - time.monotonic()))

    def _tries(self):
        """The replicas for one request, one at a time, each taken in flight (the caller reports it to _done):
        every replica once per pass, 1 + max_retries passes, a pass after the first once a backoff ends."""
        for p in range(1 + self.max_retries):
            if p:
                time.sleep(self._pause())
            tried: set[int] = set()
            while (i := self._pick(tried)) is not None:
                yield i

    async def _atries(self):
        """_tries for async code."""
        for p in range(1 + self.max_retries):
            if p:
                await asyncio.sleep(self._pause())
            tried: set[int] = set()
            while (i := self._pick(tried)) is not None:
                yield i

    def _aclient(self, i: int):
        """A new async client of replica i, for one call and closed with it: an async client is bound to the event
        loop it runs on, and one kept for later calls would keep a finished loop's connections open."""
        import openai

        return openai.AsyncOpenAI(base_url=self._urls[i], **self._client_args)

    # ------------------------------------------------------------------ requests
    def _request(self, msgs: list[dict], sampling: dict) -> dict:
        self._check_sampling(sampling)
        return {"model": self.model, "messages": msgs, **sampling}

    @staticmethod
    def _check_sampling(sampling: dict) -> None:
        if "stream" in sampling:
            raise ValueError("stream: not a sampling argument here; use chat_stream / achat_stream for a stream")

    def _one_choice(self, sampling: dict) -> None:
        """A stream's sampling, checked at the call: one answer's text, so n > 1 is refused (its choices' pieces
        would interleave)."""
        self._check_sampling(sampling)
        if (sampling.get("n") or 1) > 1:
            raise ValueError(f"n={sampling['n']}: a stream yields one answer's text; use chat_response / "
                             "achat_response for n choices")

    def chat(self, context: str, question: str, system: str | None = None, **sampling) -> str:
        """The answer's text (sampling: max_tokens, temperature, top_p, stop, seed, extra_body=...)."""
        return self.chat_response(context, question, system, **sampling).choices[0].message.content or ""

    async def achat(self, context: str, question: str, system: str | None = None, **sampling) -> str:
        return (await self.achat_response(context, question, system, **sampling)).choices[0].message.content or ""

    def chat_response(self, context: str, question: str, system: str | None = None, **sampling):
        """The whole openai ChatCompletion (finish_reason, usage, logprobs=True's logprobs); chat() is its text."""
        kw = self._request(self.messages(context, question, system), sampling)
        last = None
        for i in self._tries():
            outcome, after = None, None  # None: cancelled or interrupted, nothing said of the replica
            try:
                reply = _completion(self._sync[i].chat.completions.create(**kw), self._urls[i])
                outcome = ANSWERED
                return reply
            except Exception as e:
                last = _named(e, self._urls[i])
                outcome, after = _outcome(last)
                if outcome == ANSWERED:  # the request's own fault: not tried elsewhere
                    raise last
            finally:
                self._done(i, outcome, after)
        raise last

    async def achat_response(self, context: str, question: str, system: str | None = None, **sampling):
        """chat_response for async code."""
        kw = self._request(await asyncio.to_thread(self.messages, context, question, system), sampling)
        last = None
        async for i in self._atries():
            outcome, after = None, None
            try:
                async with self._aclient(i) as client:
                    reply = _completion(await client.chat.completions.create(**kw), self._urls[i])
                outcome = ANSWERED
                return reply
            except Exception as e:
                last = _named(e, self._urls[i])
                outcome, after = _outcome(last)
                if outcome == ANSWERED:
                    raise last
            finally:
                self._done(i, outcome, after)
        raise last

    def chat_stream(self, context: str, question: str, system: str | None = None, **sampling):
        """The answer's text as it comes, piece by piece (a generator); one choice (n=1): the request is checked
        here, at the call, rendered and sent as the generator is read."""
        self._one_choice(sampling)
        return self._stream(context, question, system, sampling)

    def _stream(self, context: str, question: str, system: str | None, sampling: dict):
        kw = self._request(self.messages(context, question, system), sampling)
        last = None
        for i in self._tries():
            outcome, after, started, chunks = None, None, False, 0
            try:
                with self._sync[i].chat.completions.create(**kw, stream=True) as stream:
                    for ch in stream:
                        text, finished = _piece(ch, self._urls[i])
                        chunks += 1
                        if finished:
                            outcome = ANSWERED  # a caller who stops reading now got an answer
                        if text:
                            started = True
                            yield text
                _ended(chunks, self._urls[i])
                outcome = ANSWERED
                return
            except Exception as e:
                last = _named(e, self._urls[i])
                outcome, after = _outcome(last)
                if started or outcome == ANSWERED:
                    raise last
            finally:
                self._done(i, outcome, after)
        raise last

    def achat_stream(self, context: str, question: str, system: str | None = None, **sampling):
        """The answer's text as it comes, piece by piece (an async generator); one choice (n=1), checked here."""
        self._one_choice(sampling)
        return self._astream(context, question, system, sampling)

    async def _astream(self, context: str, question: str, system: str | None, sampling: dict):
        kw = self._request(await asyncio.to_thread(self.messages, context, question, system), sampling)
        last = None
        async for i in self._atries():
            outcome, after, started, chunks = None, None, False, 0
            try:
                async with self._aclient(i) as client, await client.chat.completions.create(**kw, stream=True) \
                        as stream:
                    async for ch in stream:
                        text, finished = _piece(ch, self._urls[i])
                        chunks += 1
                        if finished:
                            outcome = ANSWERED
                        if text:
                            started = True
                            yield text
                _ended(chunks, self._urls[i])
                outcome = ANSWERED
                return
            except Exception as e:
                last = _named(e, self._urls[i])
                outcome, after = _outcome(last)
                if started or outcome == ANSWERED:
                    raise last
            finally:
                self._done(i, outcome, after)
        raise last


# an error event's type, for servers that name no status in it (glyph_rt's: protocol.ERROR_TYPES, not imported
# here to keep this client free of the engine's imports; vLLM's events give the status as the code)
EVENT_STATUS = {"server_error": 500, "internal_error": 500, "InternalServerError": 500, "service_unavailable": 503,
                "rate_limit_error": 429, "timeout_error": 408, "timeout": 504}
# the error type of a request that ran past the server's timeout once started (glyph_rt's 504): running it again,
# here or on another replica, would take as long
OWN_TIMEOUT = "timeout"


def _completion(reply, url: str):
    """reply, when it is a ChatCompletion with choices that hold a message; else BadReplyError."""
    from openai.types.chat import ChatCompletion, ChatCompletionMessage

    if not isinstance(reply, ChatCompletion):  # e.g. a str: a body that is not JSON (an HTML page from a proxy)
        raise BadReplyError(f"{url} answered with no chat completion: {str(reply)[:200]!r}")
    if not isinstance(reply.choices, list) or not reply.choices or not all(
            isinstance(getattr(c, "message", None), ChatCompletionMessage) for c in reply.choices):
        raise BadReplyError(f"{url} answered with no choices (or a choice without a message): "
                            f"{str(reply.choices)[:200]}")
    return reply


def _piece(chunk, url: str) -> tuple[str | None, bool]:
    """A stream chunk's text and whether its choice finished (a finish_reason); BadReplyError when it is not a
    chat completion chunk. A chunk without choices (usage) has neither."""
    from openai.types.chat import ChatCompletionChunk
    from openai.types.chat.chat_completion_chunk import ChoiceDelta

    if isinstance(chunk, ChatCompletionChunk) and isinstance(chunk.choices, list):
        if not chunk.choices:
            return None, False
        choice = chunk.choices[0]
        if isinstance(getattr(choice, "delta", None), ChoiceDelta):
            return choice.delta.content, choice.finish_reason is not None
    raise BadReplyError(f"{url} sent a stream event that is no chat completion chunk: {str(chunk)[:200]}")


def _ended(chunks: int, url: str) -> None:
    """A stream's end: an answer after at least one chunk, else BadReplyError."""
    if not chunks:
        raise BadReplyError(f"{url} ended its stream without a chat completion chunk")


def _named(e: Exception, url: str) -> Exception:
    """A reply that could not be read (not JSON, not the protocol's) as a BadReplyError naming the replica; any
    other error as it is."""
    import openai

    if not isinstance(e, (json.JSONDecodeError, openai.APIResponseValidationError)):
        return e
    err = BadReplyError(f"{url} sent a reply that is not the OpenAI protocol's: {type(e).__name__}: {e}")
    err.__cause__ = e
    return err


def _outcome(e: Exception) -> tuple[str, float | None]:
    """What an error says of the replica that sent it, and the seconds of its Retry-After (None: not sent).
    FAILED: no connection, a timeout, a connection cut mid-stream, a 5xx (an HTTP status, or an error event
    in a stream: the SDK's plain APIError), or a reply that is not the protocol's (BadReplyError); BUSY: a 429
    (queue full) or 408 (timed out waiting), which another replica may take now; ANSWERED: anything else, the
    request's own fault or outcome, a reply that says not to retry it among them (x-should-retry: false, or an
    error of type OWN_TIMEOUT: it ran past the server's timeout)."""
    import httpx
    import openai

    if isinstance(e, (openai.APIConnectionError, httpx.TransportError, BadReplyError)):
        return FAILED, None
    if isinstance(e, openai.APIError) and isinstance(e.body, dict) and e.body.get("type") == OWN_TIMEOUT:
        return ANSWERED, None
    if isinstance(e, openai.APIStatusError):
        if e.response.headers.get("x-should-retry") == "false":
            return ANSWERED, None
        status, after = e.status_code, _seconds(e.response.headers.get("retry-after"))
    elif type(e) is openai.APIError:  # an error event in a stream (its body: the event's "error" object)
        status, after = _event_status(e.body), None
    else:
        return ANSWERED, None
    if status >= 500:
        return FAILED, None
    return (BUSY, after) if status in (408, 429) else (ANSWERED, None)


def _event_status(body) -> int:
    """The HTTP status a stream's error object stands for: its code or status when a number, else its type's; 0
    when it names none."""
    if not isinstance(body, dict):
        return 0
    for key in ("code", "status"):
        value = body.get(key)
        if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
            return int(value)
    return EVENT_STATUS.get(body.get("type"), 0)


def _seconds(value: str | None) -> float | None:
    """A Retry-After header's seconds; None when absent or a date."""
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        return None
