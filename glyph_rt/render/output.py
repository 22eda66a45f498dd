"""An output directory of page PNGs and summary.json that is consistent whatever stops the writer.

Pages are encoded and written by a thread pool beside the rasterizer (both release the GIL).
Every file goes through a temporary name and a rename. An earlier run's summary.json and page
files are removed before the first new page is written, so no stale summary survives. If the run
stops early (Ctrl-C, a full disk, any error), the pages after the first one missing are removed and
summary.json describes the pages left on disk with "complete": false.
"""
from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .png import check_level, page_name, summary_json, temp_path, write_atomic, write_png

SUMMARY = "summary.json"
# the writer's own files (page_name's pattern and their temporary names): the only ones it ever removes
OWN_FILES = re.compile(r"\.?page_(\d{3}|[1-9]\d{3,})\.png(\.tmp)?|\.?summary\.json(\.tmp)?")  # png.page_name's


def writer_threads() -> int:
    """One PNG writer per CPU this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def clear_output(out: Path) -> None:
    """Removes an earlier run's output from `out`: summary.json first, so it never describes other pages. Only the
    writer's own names go (page_001.png, ...; a page_cover.png stays)."""
    for pattern in (SUMMARY, f".{SUMMARY}.tmp", "page_*.png", ".page_*.png.tmp"):
        for p in Path(out).glob(pattern):
            if OWN_FILES.fullmatch(p.name):
                p.unlink()


class PageWriter:
    """with PageWriter(out, doc, extra) as w: w.write_pages(chunks); w.finish(tokenizer)

    `chunks` yields (first page index, [n, H, W, 3] buffer, sizes) as `Document.iter_chunks` does;
    a chunk's buffer may be reused `buffers` chunks later (the writer waits for its pages first)."""

    def __init__(self, out: Path, doc, extra: dict | None = None, buffers: int = 2, threads: int | None = None,
                 level: int = 1):
        self.out, self.doc, self.extra, self.buffers = Path(out), doc, dict(extra or {}), buffers
        self.level = check_level(level)  # before any page is drawn
        self.threads = threads or writer_threads()
        self.grey = doc.grey  # every colour of the config is grey: greyscale PNGs
        self.sizes: list[tuple[int, int]] = []
        self.done: set[int] = set()
        self.seconds = {"write_wait": 0.0, "encode_write_threads": 0.0}
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    def __enter__(self) -> "PageWriter":
        clear_output(self.out)
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="glyph-rt-png")
        return self

    def _write(self, index: int, image) -> None:
        t0 = time.perf_counter()
        write_png(self.out / page_name(index), image, self.grey, self.level)
        with self._lock:
            self.done.add(index)
            self.seconds["encode_write_threads"] += time.perf_counter() - t0

    def write_pages(self, chunks) -> list[tuple[int, int]]:
        pending: deque[list] = deque()
        for start, buf, sizes in chunks:
            pending.append([self._pool.submit(self._write, start + i, buf[i, :h, :w])
                            for i, (w, h) in enumerate(sizes)])
            self.sizes.extend(sizes)
            # the next chunk may be drawn into the buffer of the oldest pending one: finish it first
            while len(pending) >= max(1, self.buffers):
                self._wait(pending.popleft())
        while pending:
            self._wait(pending.popleft())
        return self.sizes

    def _wait(self, jobs: list) -> None:
        t0 = time.perf_counter()
        for f in jobs:
            f.result()
        self.seconds["write_wait"] += time.perf_counter() - t0

    def summary(self, tokenizer, complete: bool) -> dict:
        """The summary of the pages written; an incomplete one's character counts end at the last of them."""
        t0 = time.perf_counter()
        s = self.doc.summary(self.sizes, tokenizer=tokenizer, pages=None if complete else len(self.sizes))
        s.update(self.extra)
        s["complete"] = complete
        s["seconds"].update(self.seconds)
        s["seconds"]["tokens"] = time.perf_counter() - t0
        return s

    def finish(self, summary: dict) -> None:
        write_atomic(self.out / SUMMARY, summary_json(summary))

    def __exit__(self, kind, error, tb) -> None:
        if self._pool is None:
            return
        if error is None:
            self._pool.shutdown(wait=True)
            return
        # Stopped early: a second Ctrl-C (or SIGTERM) must not interrupt the clean-up.
        main = threading.current_thread() is threading.main_thread()
        stops = [getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n)] if main else []
        old = {s: signal.signal(s, signal.SIG_IGN) for s in stops}
        try:
            self._pool.shutdown(wait=True, cancel_futures=True)  # running writes finish (milliseconds)
            n = 0
            while n in self.done:
                n += 1
            for i in sorted(self.done):
                if i >= n:
                    (self.out / page_name(i)).unlink(missing_ok=True)
            for p in self.out.glob(".page_*.png.tmp"):
                if OWN_FILES.fullmatch(p.name):
                    p.unlink(missing_ok=True)
            self.sizes = self.sizes[:n]
            s = self.summary(None, complete=False)
            if isinstance(error, KeyboardInterrupt):
                s["stopped_by"] = str(error) or "interrupted"  # Ctrl-C, or the CLI's "terminated by SIGTERM"
            else:
                s["stopped_by"] = f"{kind.__name__}: {error}"
            try:
                self.finish(s)
            except OSError:
                (self.out / SUMMARY).unlink(missing_ok=True)
                temp_path(self.out / SUMMARY).unlink(missing_ok=True)
        finally:
            for s, h in old.items():
                signal.signal(s, h)
