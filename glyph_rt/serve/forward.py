"""Scale past one GPU: render with glyph_rt, send the pages as PNG data URIs to OpenAI-compatible servers.

Any server that speaks the OpenAI chat API with image_url parts works: N vLLM replicas serving Glyph, or
glyph_rt's own servers. Pages travel inside the request (data URIs), never as local paths, so the servers
need no `--allowed-local-media-path`. Each request goes to the replica with the fewest requests in flight;
a document's pages are rendered once and kept (a small LRU of data URIs) for follow-up questions.
A request that meets a connection error or a 5xx goes on to another replica (each replica at most once per
request; a stream only before its first text reaches the caller), and the replica that failed is passed over
for a backoff (`backoff` seconds, doubling up to `max_backoff` each time it fails again after one, cleared by
an answer); a request still goes to a backed-off replica when no other is left to try. When every replica
failed, the last error is raised.

    fwd = ForwardingBackend(["http://gpu1:8000/v1", "http://gpu2:8000/v1"], model="Glyph")
    answer = fwd.chat(long_text, "Who wrote the letter?", max_tokens=256, temperature=0)
    answer = await fwd.achat(long_text, question)            # from async code
    for text in fwd.chat_stream(long_text, question): ...    # async for ... in fwd.achat_stream(...)
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import threading
import time
from collections import OrderedDict

import numpy as np

from ..render.config import RenderConfig


class ForwardingBackend:
    def __init__(self, base_urls: list[str] | str, model: str, api_key: str | None = None,
                 render_config: RenderConfig | None = None, timeout: float = 600.0, max_retries: int = 2,
                 cached_documents: int = 64, backoff: float = 2.0, max_backoff: float = 60.0):
        import openai

        urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
        if not urls:
            raise ValueError("base_urls: give at least one server URL (http://host:port/v1)")
        self.model = model
        self.render_config = (render_config or RenderConfig()).validate()
        key = api_key or "EMPTY"
        self._sync = [openai.OpenAI(base_url=u, api_key=key, timeout=timeout, max_retries=max_retries) for u in urls]
        self._async = [openai.AsyncOpenAI(base_url=u, api_key=key, timeout=timeout, max_retries=max_retries)
                       for u in urls]
        self.in_flight = [0] * len(urls)
        self.sent = [0] * len(urls)
        self.backoff, self.max_backoff = backoff, max_backoff
        self._wait = [0.0] * len(urls)  # a failed replica's backoff (0: none) and when it ends
        self._down_until = [0.0] * len(urls)
        self._lock = threading.Lock()
        self._pages: OrderedDict[str, list[str]] = OrderedDict()
        self._max_docs = cached_documents

    # ------------------------------------------------------------------ rendering
    def page_urls(self, text: str) -> list[str]:
        """The text's pages as PNG data URIs (rendered by glyph_rt on the CPU, cached per document)."""
        from ..render.pages import render
        from ..render.png import encode_png

        config = json.dumps(self.render_config.to_dict(), sort_keys=True)
        key = hashlib.sha256((config + "\0" + text).encode()).hexdigest()
        with self._lock:
            if key in self._pages:
                self._pages.move_to_end(key)
                return self._pages[key]
        pages = render(text, self.render_config)
        urls = ["data:image/png;base64," + base64.b64encode(encode_png(np.ascontiguousarray(p.cpu().numpy()))).decode()
                for p in pages]
        with self._lock:
            self._pages[key] = urls
            while len(self._pages) > self._max_docs:
                self._pages.popitem(last=False)
        return urls

    def messages(self, context: str, question: str, system: str | None = None) -> list[dict]:
        """Glyph's layout: the pages, then the question as text."""
        content = [{"type": "image_url", "image_url": {"url": u}} for u in self.page_urls(context)]
        content.append({"type": "text", "text": question})
        msgs = [{"role": "system", "content": system}] if system else []
        return msgs + [{"role": "user", "content": content}]

    # ------------------------------------------------------------------ requests
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

    def _done(self, i: int, failed: bool) -> None:
        with self._lock:
            self.in_flight[i] -= 1
            now = time.monotonic()
            if not failed:  # only an answer clears a backoff
                self._wait[i], self._down_until[i] = 0.0, 0.0
            elif now >= self._down_until[i]:  # a failure inside the window (a request sent before) keeps it
                self._wait[i] = min(self.max_backoff, 2 * self._wait[i] or self.backoff)
                self._down_until[i] = now + self._wait[i]

    def _request(self, msgs: list[dict], sampling: dict) -> dict:
        if "stream" in sampling:
            raise ValueError("stream: not a sampling argument here; use chat_stream / achat_stream for a stream")
        return {"model": self.model, "messages": msgs, **sampling}

    def chat(self, context: str, question: str, system: str | None = None, **sampling) -> str:
        """The answer's text (sampling: max_tokens, temperature, top_p, stop, seed, extra_body=...)."""
        kw = self._request(self.messages(context, question, system), sampling)
        tried, last = set(), None
        while (i := self._pick(tried)) is not None:
            try:
                r = self._sync[i].chat.completions.create(**kw)
            except Exception as e:
                self._done(i, _replica_failed(e))
                if not _replica_failed(e):
                    raise
                last = e
                continue
            self._done(i, False)
            return r.choices[0].message.content or ""
        raise last

    async def achat(self, context: str, question: str, system: str | None = None, **sampling) -> str:
        kw = self._request(await asyncio.to_thread(self.messages, context, question, system), sampling)
        tried, last = set(), None
        while (i := self._pick(tried)) is not None:
            try:
                r = await self._async[i].chat.completions.create(**kw)
            except Exception as e:
                self._done(i, _replica_failed(e))
                if not _replica_failed(e):
                    raise
                last = e
                continue
            self._done(i, False)
            return r.choices[0].message.content or ""
        raise last

    def chat_stream(self, context: str, question: str, system: str | None = None, **sampling):
        """The answer's text as it comes, piece by piece (a generator)."""
        kw = self._request(self.messages(context, question, system), sampling)
        tried, last = set(), None
        while (i := self._pick(tried)) is not None:
            started, failed = False, False
            try:
                with self._sync[i].chat.completions.create(**kw, stream=True) as stream:
                    for ch in stream:
                        text = ch.choices[0].delta.content if ch.choices else None
                        if text:
                            started = True
                            yield text
                return
            except Exception as e:
                failed = _replica_failed(e)
                if started or not failed:
                    raise
                last = e
            finally:
                self._done(i, failed)
        raise last

    async def achat_stream(self, context: str, question: str, system: str | None = None, **sampling):
        """The answer's text as it comes, piece by piece (an async generator)."""
        kw = self._request(await asyncio.to_thread(self.messages, context, question, system), sampling)
        tried, last = set(), None
        while (i := self._pick(tried)) is not None:
            started, failed = False, False
            try:
                async with await self._async[i].chat.completions.create(**kw, stream=True) as stream:
                    async for ch in stream:
                        text = ch.choices[0].delta.content if ch.choices else None
                        if text:
                            started = True
                            yield text
                return
            except Exception as e:
                failed = _replica_failed(e)
                if started or not failed:
                    raise
                last = e
            finally:
                self._done(i, failed)
        raise last


def _replica_failed(e: Exception) -> bool:
    """The replica, not the request, failed: no connection (or a timeout, or a connection cut mid-stream), or a 5xx.
    Another replica may answer."""
    import httpx
    import openai

    return isinstance(e, (openai.APIConnectionError, httpx.TransportError)) or (
        isinstance(e, openai.APIStatusError) and e.status_code >= 500)
