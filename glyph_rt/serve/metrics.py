"""Prometheus metrics of the engine and the server (one registry per engine, served at /metrics)."""
from __future__ import annotations

import threading
import time
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        p = "glyph_rt_"
        self.queue_depth = Gauge(p + "queue_depth", "requests waiting for a slot in the running batch", registry=r)
        self.running = Gauge(p + "running_requests", "requests in the running batch", registry=r)
        self.preparing = Gauge(p + "preparing_requests", "requests being prepared (rendered) with a place held in the "
                               "queue, counted against its limit with the waiting ones", registry=r)
        self.ttft = Histogram(p + "time_to_first_token_seconds", "from arrival to the first token", registry=r,
                              buckets=LATENCY_BUCKETS)
        self.itl = Histogram(p + "inter_token_latency_seconds", "between two tokens of a request", registry=r,
                             buckets=LATENCY_BUCKETS)
        self.requests = Counter(p + "requests", "finished requests by outcome", ["outcome"], registry=r)
        self.prompt_tokens = Counter(p + "prompt_tokens", "prompt tokens (visual tokens included)", registry=r)
        self.generated_tokens = Counter(p + "generated_tokens", "tokens generated", registry=r)
        self.tokens_per_s = Gauge(p + "generation_tokens_per_second", "generated tokens/s, mean over the last 10 s",
                                  registry=r)
        self.pages = Counter(p + "pages_rendered", "pages rendered from text", registry=r)
        self.visual_tokens = Counter(p + "visual_tokens", "visual tokens of the pages in prompts", registry=r)
        self.text_tokens = Counter(p + "document_text_tokens", "text tokens of the rendered documents", registry=r)
        self.compression = Gauge(p + "compression_ratio", "document text tokens / visual tokens, cumulative",
                                 registry=r)
        self.cache_hits = Counter(p + "document_cache_hits", "document cache lookups that found their entry (kind: "
                                  "document, for a document's or an image's embeddings, or prefix, for a prompt "
                                  "prefix's KV)", ["kind"], registry=r)
        self.cache_misses = Counter(p + "document_cache_misses", "document cache lookups that did not", ["kind"],
                                    registry=r)
        for kind in ("document", "prefix"):  # both series from the start, so hit ratios can be computed
            self.cache_hits.labels(kind)
            self.cache_misses.labels(kind)
        self.cache_bytes = Gauge(p + "document_cache_bytes", "bytes held by the document cache", registry=r)
        self.busy = Counter(p + "engine_busy_seconds", "seconds the engine spent stepping (its rate: the busy share; "
                            "near 1, requests queue for the model)", registry=r)
        self._lock = threading.Lock()
        self._recent: deque = deque()  # [time, tokens] in 100 ms bins over the last 10 s
        self._sum = 0
        self._vt = self._tt = 0

    def tokens(self, n: int) -> None:
        self.generated_tokens.inc(n)
        now = time.monotonic()
        with self._lock:
            if self._recent and self._recent[-1][0] > now - 0.1:  # 100 ms bins
                self._recent[-1][1] += n
            else:
                self._recent.append([now, n])
            self._sum += n

    def _rate(self) -> None:
        now = time.monotonic()
        with self._lock:
            while self._recent and self._recent[0][0] < now - 10:
                self._sum -= self._recent.popleft()[1]
            self.tokens_per_s.set(self._sum / 10.0)

    def cache_lookup(self, kind: str, hit: bool) -> None:
        (self.cache_hits if hit else self.cache_misses).labels(kind).inc()

    def rendered(self, pages: int, visual_tokens: int, text_tokens: int) -> None:
        self.pages.inc(pages)
        with self._lock:
            self._vt += visual_tokens
            self._tt += text_tokens
            if self._vt:
                self.compression.set(self._tt / self._vt)
        self.visual_tokens.inc(visual_tokens)
        self.text_tokens.inc(text_tokens)

    def exposition(self) -> bytes:
        self._rate()  # decays to 0 when idle
        return generate_latest(self.registry)
