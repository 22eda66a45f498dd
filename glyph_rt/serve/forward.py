"""Scale past one GPU: render with glyph_rt, send the pages as PNG data URIs to OpenAI-compatible servers.

Any server that speaks the OpenAI chat API with image_url parts works: N vLLM replicas serving Glyph, or
glyph_rt's own servers. Pages travel inside the request (data URIs), never as local paths, so the servers
need no `--allowed-local-media-path`. Each request goes to the replica with the fewest requests in flight;
a document's pages are rendered once and kept (a small LRU of data URIs) for follow-up questions.

    fwd = ForwardingBackend(["http://gpu1:8000/v1", "http://gpu2:8000/v1"], model="Glyph")
    answer = fwd.chat(long_text, "Who wrote the letter?", max_tokens=256, temperature=0)
    answer = await fwd.achat(long_text, question)            # from async code
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import threading
from collections import OrderedDict

import numpy as np

from ..render.config import RenderConfig


class ForwardingBackend:
    def __init__(self, base_urls: list[str] | str, model: str, api_key: str | None = None,
                 render_config: RenderConfig | None = None, timeout: float = 600.0, max_retries: int = 2,
                 cached_documents: int = 64):
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
    def _pick(self) -> int:
        with self._lock:
            i = min(range(len(self.in_flight)), key=lambda j: (self.in_flight[j], self.sent[j]))
            self.in_flight[i] += 1
            self.sent[i] += 1
            return i

    def _done(self, i: int) -> None:
        with self._lock:
            self.in_flight[i] -= 1

    def chat(self, context: str, question: str, system: str | None = None, **sampling) -> str:
        """The answer's text (sampling: max_tokens, temperature, top_p, stop, seed, extra_body=...)."""
        msgs = self.messages(context, question, system)
        i = self._pick()
        try:
            r = self._sync[i].chat.completions.create(model=self.model, messages=msgs, **sampling)
        finally:
            self._done(i)
        return r.choices[0].message.content or ""

    async def achat(self, context: str, question: str, system: str | None = None, **sampling) -> str:
        msgs = await asyncio.to_thread(self.messages, context, question, system)
        i = self._pick()
        try:
            r = await self._async[i].chat.completions.create(model=self.model, messages=msgs, **sampling)
        finally:
            self._done(i)
        return r.choices[0].message.content or ""
