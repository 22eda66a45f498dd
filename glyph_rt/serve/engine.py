"""The serving engine: a waiting queue, a running batch, continuous batching on GlyphModel.

One thread owns the model. Each turn of its loop it drops cancelled and timed-out requests, prefills
up to `prefill_chunk` prompt tokens (a chunk of a long prompt, or several short prompts, taking
requests in order), then runs one decode step for the whole running batch: a left-padded KV cache
(GlyphCache, written in place) and a 2D padding mask, which glyph_rt's attention reads as per-row
starts in its decode kernel. Positions are passed explicitly (M-RoPE: each request's offset after its
pages), so requests of any length share a step, and a long prompt delays the others' next token by
one chunk at most.

Prefill is batched: each request in progress takes its next piece of prompt within the budget, and
the pieces run as one forward, rows left-padded (the new tokens and the KV each row already has, each
padded to the longest), with a 2D mask that glyph_rt's attention unpads into varlen segments; each
row's KV then goes back to its request. Pieces whose padding would more than double the work (a long
prompt beside short ones) go to separate forwards.

The vision tower runs first, a few pages per step (their visual tokens count against the same
budget), the pages of all requests that take some in one forward; then the prompt is prefilled up to
the last page (vision embeddings in place of the pages' placeholders), then the rest (the question).
That first part's KV and the pages' embeddings go to the DocumentCache; a later request with the same
documents and the same prefix starts at the question, its positions counted on from the prefix's.

A request for n > 1 choices is prefilled once; its KV is then copied into n rows of the running batch, each
sampled on its own. Events carry the choice's `index`: deltas, a "finish" for each choice, then one "done"
for the request (one "error" when any choice fails: the others go with it).

    engine = Engine(GlyphModel.from_pretrained(path)).start()
    done = engine.complete(prompt, SamplingParams(max_tokens=64, temperature=0))   # blocking
    req = engine.submit(prompt, params, on_event)                                    # events from the engine thread
"""
from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field

import torch

from ..models.kv_cache import GlyphCache, cache_kwarg, kv_bytes
from ..models.prompt import VISION_MERGE
from .doc_cache import DocumentCache, DocumentEntry, PrefixEntry
from .inputs import Prompt, RequestError
from .logprobs import TokenText, content_entry, model_logprobs, token_logprobs
from .metrics import Metrics

log = logging.getLogger("glyph_rt.serve")


class QueueFull(Exception):
    """The waiting queue is at its limit; retry after `retry_after` seconds."""

    def __init__(self, depth: int, retry_after: int = 1):
        super().__init__(f"the server's queue is full ({depth} requests waiting or being prepared); retry in "
                         f"{retry_after} s")
        self.depth, self.retry_after = depth, retry_after


class Slot:
    """A place in the engine's queue held for a request while it is prepared (Engine.reserve): it counts against
    max_queue until the request is queued with it (Engine.submit) or it is released; release() is a no-op then."""

    def __init__(self, engine: "Engine"):
        self._engine, self.held = engine, True

    def release(self) -> None:
        with self._engine._cv:
            if self.held:
                self.held = False
                self._engine.preparing -= 1


MAX_TOP_LOGPROBS = 20  # as OpenAI's API
MAX_N = 128  # choices per request, as OpenAI's API (and at most the engine's max_batch)


@dataclass
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0  # OpenAI's: subtracted from the logit of each token already in the output
    frequency_penalty: float = 0.0  # and times the number of times it is there
    ignore_eos: bool = False
    logprobs: bool = False  # each output token's log-probability (the model's, before penalty and temperature)
    top_logprobs: int = 0  # and the most likely tokens' at each position (up to MAX_TOP_LOGPROBS)
    n: int = 1  # choices: one prefill, then n rows decoded from its KV (choice i sampled with seed + i)

    def validate(self) -> "SamplingParams":
        def bad(name, why):
            raise RequestError(f"{name}: {getattr(self, name)!r} {why}", name)

        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            bad("max_tokens", "must be an integer >= 1")
        if not 0 <= self.temperature <= 2:
            bad("temperature", "must be between 0 and 2")
        if not 0 < self.top_p <= 1:
            bad("top_p", "must be in (0, 1]")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not -2**63 <= self.seed < 2**64):
            bad("seed", "must be an integer in [-2^63, 2^64)")
        if not 0 < self.repetition_penalty <= 2:
            bad("repetition_penalty", "must be in (0, 2]")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                bad(name, "must be between -2 and 2")
        if isinstance(self.top_logprobs, bool) or not isinstance(self.top_logprobs, int) \
                or not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            bad("top_logprobs", f"must be an integer in [0, {MAX_TOP_LOGPROBS}]")
        if self.top_logprobs and not self.logprobs:
            bad("top_logprobs", "needs logprobs: true")
        if isinstance(self.n, bool) or not isinstance(self.n, int) or not 1 <= self.n <= MAX_N:
            bad("n", f"must be an integer in [1, {MAX_N}]")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if len(self.stop) > 4 or any(not isinstance(s, str) or not s for s in self.stop):
            bad("stop", "must be up to 4 non-empty strings")
        return self


@dataclass(eq=False)
class Request:
    prompt: Prompt
    params: SamplingParams
    on_event: object  # callable(dict), called on the engine thread
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    arrival: float = field(default_factory=time.monotonic)
    deadline: float = math.inf
    started: float = math.inf  # when it left the queue
    output_ids: list[int] = field(default_factory=list)
    text: str = ""
    sent: int = 0  # characters of text already sent
    committed: str = ""  # text of output_ids[:seg_start]
    seg_start: int = 0
    finish_reason: str | None = None
    cancelled: bool = False
    cache_hit: str = "none"  # none | document | prefix
    # decoding state
    length: int = 0  # tokens of this request in the KV cache
    next_pos: int = 0
    last_token: int = 0
    kv: list | None = field(default=None, repr=False)  # own cache after prefill, until it joins the batch
    pf: dict | None = field(default=None, repr=False)  # prefill progress
    seen: torch.Tensor | None = field(default=None, repr=False)
    counts: torch.Tensor | None = field(default=None, repr=False)  # output tokens' counts [vocab], for penalties
    generator: torch.Generator | None = field(default=None, repr=False)
    first_token_t: float | None = None
    last_token_t: float | None = None
    pixel_bytes: int = 0  # its pages' pixel_values counted against the engine's max_queue_bytes
    logprobs: list[dict] | None = None  # OpenAI's logprobs.content entries of output_ids, when asked for
    logprobs_sent: int = 0  # entries already sent with a delta
    # n > 1: the request is choice 0 and, once its prompt is in, holds every choice (its own sampling state, KV
    # rows copied from its prompt's); the others point back to it
    index: int = 0
    choices: list["Request"] | None = field(default=None, repr=False)
    head: "Request | None" = field(default=None, repr=False)
    open_choices: int = 0

    @property
    def group(self) -> "Request":
        """The request the client sent: itself, or the request whose choice this is."""
        return self.head or self

    @property
    def stopped(self) -> bool:
        """Cancelled, itself or through the request whose choice it is."""
        return self.cancelled or self.group.cancelled

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def usage(self) -> dict:
        """Its prompt's tokens, once, and the tokens of all its choices."""
        n = len(self.prompt.input_ids)
        out = sum(len(c.output_ids) for c in self.choices or [self])
        return {"prompt_tokens": n, "completion_tokens": out, "total_tokens": n + out}

    def results(self) -> list[dict]:
        """Each choice's text, finish_reason and logprobs entries (None unless asked for), by index."""
        return [{"text": c.text, "finish_reason": c.finish_reason, "logprobs": c.logprobs}
                for c in self.choices or [self]]

    def stats(self) -> dict:
        """The response's `glyph` field: what the prompt became and what the document cache held."""
        p = self.prompt
        return {"pages": p.pages, "visual_tokens": p.visual_tokens, "text_tokens": p.text_tokens,
                "cache_hit": self.cache_hit}


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str
    usage: dict
    cache_hit: str
    ttft: float | None
    logprobs: list[dict] | None = None
    choices: list["Completion"] = field(default_factory=list)  # every choice (n of them), this one first


@dataclass
class Piece:
    """Prompt tokens [at, end) of a request for the next prefill forward, and the vision embeddings of their pages."""
    r: Request
    at: int
    end: int
    embeds: torch.Tensor | None = None


def _groups(pieces: list[Piece]) -> list[list[Piece]]:
    """Pieces grouped for batched forwards: longest first, a group growing while its padded new tokens and padded
    KV stay within twice their real counts (a long prompt does not make short ones pad to its length)."""
    groups: list[list[Piece]] = []
    for pc in sorted(pieces, key=lambda pc: (pc.end - pc.at, pc.at), reverse=True):
        for g in groups:
            rows = g + [pc]
            T, W = max(x.end - x.at for x in rows), max(x.at for x in rows)
            if (len(rows) * T <= 2 * sum(x.end - x.at for x in rows)
                    and len(rows) * (W + T) <= 2 * sum(x.end for x in rows)):
                g.append(pc)
                break
        else:
            groups.append([pc])
    return groups


DECODE_RESERVE = 1024  # most tokens of room a batch cache is built with (rebuilt when it is used up)
GREEDY_BELOW = 1e-5  # temperatures below this decode greedily (as vLLM's): logits / 1e-40 overflow to NaN


def next_tokens(rows: list[Request], logits: torch.Tensor) -> list[int]:
    """Each row's next token from its logits [rows, vocab] (float32), on the logits' device with one host sync
    for the whole batch: repetition penalty (over prompt and output), presence and frequency penalties (over the
    output, as OpenAI's), then greedy, or temperature and top-p sampled by the exponential race (argmax of
    p / Exp(1) noise), the noise drawn from the request's own generator (a seed gives the same tokens whichever
    requests share the batch)."""
    for b, r in enumerate(rows):
        pen = r.params.repetition_penalty
        if pen != 1.0:
            s = logits[b, r.seen]
            logits[b, r.seen] = torch.where(s < 0, s * pen, s / pen)
        if r.counts is not None:
            logits[b] -= r.params.frequency_penalty * r.counts + r.params.presence_penalty * (r.counts > 0)
    tokens = logits.argmax(-1)
    hot = [b for b, r in enumerate(rows) if r.params.temperature >= GREEDY_BELOW]
    if hot:
        dev = logits.device
        idx = torch.tensor(hot, device=dev)
        x = logits[idx] / torch.tensor([rows[b].params.temperature for b in hot], device=dev)[:, None]
        top_p = [rows[b].params.top_p for b in hot]
        if min(top_p) < 1.0:
            sorted_x, order = torch.sort(x, -1, descending=True)
            probs = torch.softmax(sorted_x, -1)
            drop = probs.cumsum(-1) - probs > torch.tensor(top_p, device=dev)[:, None]
            x = torch.full_like(x, -math.inf).scatter(-1, order, sorted_x.masked_fill(drop, -math.inf))
        probs = torch.softmax(x, -1)
        noise = torch.empty_like(probs)
        for i, b in enumerate(hot):
            noise[i].exponential_(generator=rows[b].generator)
        tokens[idx] = (probs / noise.clamp_min_(torch.finfo(noise.dtype).tiny)).argmax(-1)
    for b, r in enumerate(rows):
        if r.params.repetition_penalty != 1.0:
            r.seen = torch.cat([r.seen, tokens[b:b + 1]])
        if r.counts is not None:
            r.counts.index_add_(0, tokens[b:b + 1], r.counts.new_ones(1))
    return tokens.tolist()


class Engine:
    def __init__(self, gm, max_batch: int = 32, max_queue: int = 256, cache_bytes: int = 1 << 30,
                 timeout: float = 600.0, metrics: Metrics | None = None, prefill_chunk: int = 2048,
                 max_queue_bytes: int = 4 << 30, kv_cache_bytes: int | None = None):
        self.gm = gm
        self.model = gm.model
        self.max_batch, self.max_queue, self.timeout = max_batch, max_queue, timeout
        # rendered pages (on the model's device) of requests whose pages have not been through the vision tower
        self.max_queue_bytes, self.queued_bytes = max_queue_bytes, 0
        # the running requests' KV at their longest (prompt + max_tokens, the batch padded to its longest row);
        # None: on a GPU 70% of its memory free when the engine starts, else no limit
        self.kv_cache_bytes = kv_cache_bytes
        self.kv_token_bytes = kv_bytes(self.model.config, 1, self.model.dtype.itemsize)
        self.metrics = metrics or Metrics()
        self.cache = DocumentCache(cache_bytes, on_lookup=self.metrics.cache_lookup)
        self.max_positions = gm.max_positions
        self.stop_ids = set(gm.prompts.stop_ids)
        self._cache_kw = cache_kwarg(self.model)
        self.token_text = TokenText(gm.tokenizer)  # logprobs' token texts and bytes
        self.waiting: deque[Request] = deque()
        self.preparing = 0  # Slots held: requests being prepared, counted against max_queue with the waiting
        self.metrics.preparing.set_function(lambda: self.preparing)
        self.running: list[Request] = []
        self._batch: GlyphCache | None = None
        self._batch_rows: list[Request] = []
        self._width = 0
        self._room = 0  # tokens the batch cache holds before it is rebuilt
        self._prefilling: list[Request] = []  # started, not yet in the running batch (in order)
        self.prefill_chunk = prefill_chunk
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.on_step = None  # called on the engine's thread after each step (to send the step's events at once)
        # counters, and busy_s: seconds the loop spent stepping (not waiting for requests)
        self.steps = {"prefill": 0, "prefill_forwards": 0, "prefill_rows": 0, "decode": 0, "decode_rows": 0,
                      "busy_s": 0.0}

    # ------------------------------------------------------------------ public
    def start(self) -> "Engine":
        if self.kv_cache_bytes is None and self.gm.device.type == "cuda":
            self.kv_cache_bytes = int(0.7 * torch.cuda.mem_get_info(self.gm.device)[0])
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="glyph-rt-engine", daemon=True)
            self._thread.start()
        return self

    def shutdown(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def check(self, prompt: Prompt, params: SamplingParams) -> None:
        """Refuses, before any compute, a request that cannot fit the model's window (or its choices the batch)."""
        if params.n > self.max_batch:
            raise RequestError(f"n: {params.n} choices are more than this server's batch of {self.max_batch} rows; "
                               "ask for fewer (or raise --max-batch)", "n")
        n = len(prompt.input_ids)
        if self.max_positions and n + params.max_tokens > self.max_positions:
            raise RequestError(
                f"this request needs {n + params.max_tokens} positions ({n} prompt tokens, {prompt.visual_tokens} of "
                f"them visual tokens for {prompt.pages} pages, plus max_tokens={params.max_tokens}), over the model's "
                f"context of {self.max_positions}; lower max_tokens, shorten the text, or render denser pages "
                "(a smaller font_size or dpi)", "messages", 400, "context_length_exceeded")

    def _queue_full(self, depth: int) -> QueueFull:
        return QueueFull(depth, retry_after=max(1, depth // max(1, self.max_batch)))

    def reserve(self) -> Slot:
        """A place in the queue for a request about to be prepared (rendered), or QueueFull at once: a server
        checks for room before the render, not after it."""
        with self._cv:
            depth = len(self.waiting) + self.preparing
            if depth >= self.max_queue:
                raise self._queue_full(depth)
            self.preparing += 1
        return Slot(self)

    def submit(self, prompt: Prompt, params: SamplingParams, on_event, timeout: float | None = None,
               slot: Slot | None = None) -> Request:
        """Queues the request (QueueFull when there is no room: in `slot`, when given, a place reserve() held for
        it, which it then takes)."""
        params.validate()
        self.check(prompt, params)
        for s in prompt.segments:  # a prompt served before: its pages' embeddings were let go after its prefill
            if s.pixel_values is None and s.embeddings is None:
                hit = self.cache.get(s.key)
                if hit is None or hit.embeddings is None:
                    raise RequestError("this prompt was served before and its pages' embeddings let go (the "
                                       "document cache no longer holds them): build the prompt again", "messages")
                s.embeddings, s.cached = hit.embeddings, True
        req = Request(prompt, params, on_event, pixel_bytes=prompt.pixel_bytes,
                      logprobs=[] if params.logprobs else None)
        req.deadline = req.arrival + (timeout or self.timeout)
        with self._cv:
            held = slot is not None and slot.held
            others = len(self.waiting) + self.preparing - held
            if others >= self.max_queue or (
                    self.waiting and self.queued_bytes + req.pixel_bytes > self.max_queue_bytes):
                raise self._queue_full(others)
            if held:
                slot.release()  # its place is now the request's in the queue (_cv is re-entrant)
            self.queued_bytes += req.pixel_bytes
            self.waiting.append(req)
            self.metrics.queue_depth.set(len(self.waiting))
            self._cv.notify_all()
        return req

    def cancel(self, req: Request) -> None:
        if not req.finished or req.open_choices:
            req.cancelled = True
            with self._cv:
                self._cv.notify_all()

    def complete(self, prompt: Prompt, params: SamplingParams, timeout: float | None = None) -> Completion:
        """Blocking: submits and waits; RequestError when the engine fails the request."""
        done = threading.Event()
        box: dict = {}

        def on_event(ev):
            if ev["type"] in ("done", "error"):
                box.update(ev)
                done.set()

        req = self.submit(prompt, params, on_event, timeout)
        done.wait()
        if box["type"] == "error":
            raise box["error"]
        ttft = None if req.first_token_t is None else req.first_token_t - req.arrival
        choices = [Completion(c.text, list(c.output_ids), c.finish_reason, None, c.cache_hit, ttft, c.logprobs)
                   for c in req.choices or [req]]
        return dataclasses.replace(choices[0], usage=req.usage(), choices=choices)

    # ------------------------------------------------------------------ loop
    def _loop(self) -> None:
        if self.gm.device.type == "cuda":  # Triton launches on the thread's current device
            torch.cuda.set_device(self.gm.device)
        while True:
            with self._cv:
                while not self._stopping and not self.waiting and not self.running and not self._prefilling:
                    self._cv.wait(0.5)
                if self._stopping:
                    break
            t0 = time.perf_counter()
            try:
                self._step()
            except Exception as e:  # noqa: BLE001 - what no request's guard caught: those in flight fail, not the loop
                log.exception("an engine step failed")
                err = RequestError(f"the engine failed: {type(e).__name__}: {e}", None, 500, "engine_error")
                for r in list(self.running) + list(self._prefilling):
                    self._fail(r, err)  # the batch's KV goes with its last row
            self._stepped()
            busy = time.perf_counter() - t0
            self.steps["busy_s"] += busy
            self.metrics.busy.inc(busy)
        for r in list(self.waiting) + list(self.running) + list(self._prefilling):
            self._fail(r, RequestError("the server is shutting down", None, 503))
        self._stepped()

    def _step(self) -> None:
        self._reap()
        budget = self.prefill_chunk or math.inf  # prompt tokens this step: short prompts share it
        while budget > 0:
            pieces: list[Piece] = []
            pages: list[tuple] = []
            budget -= self._collect(budget, pieces, pages)
            if not pieces and not pages:
                break
            self._run_vision(pages)
            self._run_pieces(pieces)
        if self.running:
            self._decode_step()

    @property
    def alive(self) -> bool:
        """Whether the engine's thread runs (started and not shut down)."""
        return self._thread is not None and self._thread.is_alive()

    def _stepped(self) -> None:
        if self.on_step is not None:
            try:
                self.on_step()
            except Exception:  # noqa: BLE001 - a listener's failure must not stop the engine
                log.exception("the engine's on_step callback failed")

    def _guard(self, r: Request, step):
        try:
            return step(r)
        except Exception as e:  # noqa: BLE001 - one bad request must not stop the engine
            self._fail_on(r, e, "prefill")

    def _fail_on(self, r: Request, e: Exception, what: str) -> None:
        """Fails `r` for `e`, raised while running `what`: a RequestError as it is, anything else logged (call it
        in the except block) and answered as a 500."""
        if not isinstance(e, RequestError):
            log.exception("%s failed", what)
            e = RequestError(f"the engine failed on this request: {type(e).__name__}: {e}", None, 500, "engine_error")
        self._fail(r, e)

    def _reap(self) -> None:
        now = time.monotonic()
        with self._cv:
            gone = [r for r in self.waiting if r.stopped or now > r.deadline]
            for r in gone:
                self.waiting.remove(r)
            self.metrics.queue_depth.set(len(self.waiting))
        for r in gone:
            if r.stopped:
                self._finish(r, "cancelled")
            else:  # it waited its whole timeout in the queue: the server is busy, another try may be served
                self._fail(r, RequestError(f"the request waited in the queue past its timeout of "
                                           f"{r.deadline - r.arrival:.0f} s", None, 408, "queue_timeout"))
        for r in [r for r in self.running + self._prefilling if r.stopped or now > r.deadline]:
            if r.stopped:
                self._finish(r, "cancelled")
            elif now - r.started >= r.started - r.arrival:  # mostly compute: its own outcome, a retry would repeat
                self._fail(r, RequestError(f"the request took longer than its timeout of "
                                           f"{r.deadline - r.arrival:.0f} s", None, 504, "timeout"))
            else:  # mostly queue time: the server was busy, another try may be served
                self._fail(r, RequestError(f"the request waited {r.started - r.arrival:.0f} s in the queue and ran "
                                           f"past its timeout of {r.deadline - r.arrival:.0f} s", None, 408,
                                           "queue_timeout"))

    # ------------------------------------------------------------------ prefill
    def _positions(self, ids: torch.Tensor, grids: torch.Tensor | None) -> tuple[torch.Tensor, int]:
        L = ids.shape[1]
        if grids is None:
            return torch.arange(L, device=ids.device).view(1, 1, L).expand(3, 1, L), 0
        inner = self.model.model
        pos, delta = inner.get_rope_index(input_ids=ids, mm_token_type_ids=(ids == self.gm.image_token_id).long(),
                                          image_grid_thw=grids, attention_mask=torch.ones_like(ids))
        return pos, int(delta.reshape(-1)[0])

    @staticmethod
    def _vision_work(prompt: Prompt) -> list[tuple]:
        """The pages whose embeddings are not cached: (segment, page, first pixel row, rows, visual tokens) each."""
        work = []
        for s in prompt.segments:
            if s.embeddings is None:
                s.parts = []
                row = 0
                for i, (t, h, w) in enumerate(s.grids.tolist()):
                    work.append((s, i, row, t * h * w, t * h * w // VISION_MERGE ** 2))
                    row += t * h * w
        return work

    @staticmethod
    def _take_pages(r: Request, limit: float, pages: list[tuple]) -> int:
        """Moves the request's next pages (at least one, up to `limit` visual tokens) to `pages`, the vision
        tower's next forward. Returns the visual tokens taken."""
        work, used, first = r.pf["vision"], 0, True
        while work and (first or used + work[0][4] <= limit):
            pages.append((r, *work.pop(0)))
            used += pages[-1][5]
            first = False
        return used

    @torch.no_grad()
    def _run_vision(self, pages: list[tuple]) -> None:
        """One vision-tower forward over the pages of every request that took some; a segment whose pages are all
        done gets its embeddings (and the document cache an entry)."""
        if not pages:
            return
        try:
            pv = torch.cat([s.pixel_values[row:row + n].to(self.gm.device) for _, s, _, row, n, _ in pages])
            grids = torch.stack([s.grids[i] for _, s, i, _, _, _ in pages]).to(self.gm.device)
            out = self.model.model.get_image_features(pv, grids, return_dict=True).pooler_output
        except Exception as e:  # noqa: BLE001 - the request at fault fails, the engine goes on
            requests = list({id(pg[0]): pg[0] for pg in pages}.values())
            if len(requests) > 1:  # each request's pages alone, so that only the one at fault fails
                log.warning("a vision forward over %d requests failed (%s: %s); running them one by one",
                            len(requests), type(e).__name__, e)
                for r in requests:
                    self._run_vision([pg for pg in pages if pg[0] is r])
                return
            self._fail_on(requests[0], e, "vision tower")
            return
        for (r, s, _, _, _, _), emb in zip(pages, out):
            if r.finished:
                continue
            s.parts.append(emb)
            if len(s.parts) == s.pages:
                s.embeddings, s.parts = torch.cat(s.parts), None
                s.pixel_values = None  # not needed again (a prompt submitted again reads the document cache)
                self.cache.put(s.key, DocumentEntry(s.grids, s.embeddings, s.text_tokens))

    def _forward(self, ids, pos, cache, mask=None, embeds=None):
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        kw = {self._cache_kw: cache}
        if embeds is not None:
            kw["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=(embeds,))}
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1, **kw)
        return out.logits[:, -1].float()

    @torch.no_grad()
    def _start_prefill(self, r: Request) -> None:
        """Positions and the document cache lookup; the vision tower and the prompt then go in chunks."""
        p = r.prompt
        dev = self.gm.device
        ids = torch.tensor([p.input_ids], device=dev)
        # a cached prefix's KV and room for the rest of the prompt (no cached prefix: made at the first piece), never
        # more than the prompt: the request decodes in the batch cache
        cache = GlyphCache(reserve=len(p.input_ids) - p.prefix_len)
        at, vision, pos = 0, None, None
        if p.prefix_len:
            entry = self.cache.get(p.prefix_key)
            if entry is not None:
                for i, (k, v) in enumerate(entry.layers):
                    cache.update(k, v, i)
                r.cache_hit, at = "prefix", p.prefix_len
                for s in p.segments:  # the prefix's KV holds what the pages gave (rendered again when the
                    s.pixel_values = None  # document cache had let their embeddings go): not needed
                if not bool((ids[0, at:] == self.gm.image_token_id).any()):  # text after the prefix: no rope index
                    pos = torch.zeros(3, 1, ids.shape[1], dtype=torch.long, device=dev)  # [0, at) is never read
                    pos[:, 0, at:] = torch.arange(entry.next_pos, entry.next_pos + ids.shape[1] - at, device=dev)
                    delta = entry.next_pos - at
            else:
                if any(s.cached for s in p.segments):
                    r.cache_hit = "document"
                vision = self._vision_work(p)
            new_pages = [s for s in p.segments if not s.cached and s.text_tokens]
            if new_pages:
                self.metrics.rendered(sum(s.pages for s in new_pages), sum(s.visual_tokens for s in new_pages),
                                      sum(s.text_tokens for s in new_pages))
        if pos is None:  # on the CPU: the rope index walks the pages with host syncs
            grids = torch.cat([s.grids for s in p.segments]) if p.segments else None
            pos, delta = self._positions(torch.tensor([p.input_ids]), grids)
            pos = pos.to(dev)
        r.pf = {"ids": ids, "pos": pos, "delta": delta, "cache": cache, "at": at, "vision": vision, "embeds": None,
                "images_before": 0}
        self._prefilling.append(r)

    def _collect(self, budget: float, pieces: list[Piece], pages: list[tuple]) -> int:
        """One piece of prompt (or some pages for the vision tower) from each request in progress, then from
        waiting requests while slots and the budget last. Returns the tokens taken, visual tokens included."""
        used = 0
        for r in list(self._prefilling):
            if used >= budget:
                return used
            used += self._guard(r, lambda r: self._next_piece(r, budget - used, pieces, pages)) or 0
        while used < budget and self.waiting:
            with self._cv:
                req = self.waiting[0] if self.waiting else None
                if req is None or not (req.cancelled or self._rows_free(req) and self._kv_fits(req)):
                    break  # in order: the first waits until the batch's rows and KV leave it room
                self.waiting.popleft()
                self.metrics.queue_depth.set(len(self.waiting))
            req.started = time.monotonic()
            if req.cancelled:
                self._finish(req, "cancelled")
                continue
            self._guard(req, self._start_prefill)
            if req in self._prefilling:
                used += self._guard(req, lambda r: self._next_piece(r, budget - used, pieces, pages)) or 0
        return used

    def _rows(self) -> int:
        """The batch's rows: those decoding, and those prefilling with the choices they will decode."""
        return len(self.running) + sum(r.params.n for r in self._prefilling)

    def _rows_free(self, req: Request) -> bool:
        return self._rows() + req.params.n <= self.max_batch

    def _kv_fits(self, req: Request) -> bool:
        """Whether the batch's KV at its longest, with `req`'s choices joining it, stays within kv_cache_bytes (a
        request alone always starts)."""
        rows = self.running + self._prefilling
        if self.kv_cache_bytes is None or not rows:
            return True
        longest = max(len(r.prompt.input_ids) + r.params.max_tokens for r in rows + [req])
        return (self._rows() + req.params.n) * longest * self.kv_token_bytes <= self.kv_cache_bytes

    @torch.no_grad()
    def _next_piece(self, r: Request, limit: float, pieces: list[Piece], pages: list[tuple]) -> int:
        """The request's next piece (at most `limit` tokens): pages for the vision tower (added to `pages`) until
        all have embeddings, then the prompt up to the end of the prefix (whose KV then goes to the cache), or to
        the end (added to `pieces`). Returns the tokens it took."""
        pf, p = r.pf, r.prompt
        if pf["vision"] is not None:  # first the pages' embeddings, a few pages per step
            if pf["vision"]:
                return self._take_pages(r, limit, pages)
            pf["vision"], pf["embeds"] = None, torch.cat([s.embeddings for s in p.segments])
        self._release_pixels(r)
        k, L, at = p.prefix_len, len(p.input_ids), pf["at"]
        target = k if at < k else L
        end = int(min(target, at + limit))
        embeds = None
        if pf["embeds"] is not None:
            n = int((pf["ids"][:, at:end] == self.gm.image_token_id).sum())
            if n:
                embeds = pf["embeds"][pf["images_before"]:pf["images_before"] + n]
                pf["images_before"] += n
        pieces.append(Piece(r, at, end, embeds))
        return end - at

    def _run_pieces(self, pieces: list[Piece]) -> None:
        """The pieces in as few forwards as padding allows; then each request's next step."""
        for group in _groups(pieces):
            self._run_group(group)

    def _run_group(self, group: list[Piece]) -> None:
        try:
            logits = self._forward_pieces(group)
        except Exception as e:  # noqa: BLE001 - the request at fault fails, the engine goes on
            if len(group) > 1:  # each piece alone (their caches are as before), so that only the one at fault fails
                log.warning("a prefill forward over %d requests failed (%s: %s); running them one by one",
                            len(group), type(e).__name__, e)
                for pc in group:
                    self._run_group([pc])
                return
            self._fail_on(group[0].r, e, "prefill")
            return
        for b, pc in enumerate(group):
            self._guard(pc.r, lambda r: self._piece_done(r, pc.at, pc.end, logits[b]))

    @torch.no_grad()
    def _forward_pieces(self, group: list[Piece]) -> torch.Tensor:
        """One forward over the pieces; logits [rows, vocab]. One piece runs on its request's own cache; several
        run left-padded on a batch cache of their KV so far, which is split back into their caches."""
        self.steps["prefill_forwards"] += 1
        self.steps["prefill_rows"] += len(group)
        if len(group) == 1:
            pc = group[0]
            pf = pc.r.pf
            if not pc.at:  # the request's first piece: its cache made with room for the rest of its prompt
                pf["cache"] = GlyphCache(reserve=pf["ids"].shape[1] - pc.end)
            return self._forward(pf["ids"][:, pc.at:pc.end], pf["pos"][:, :, pc.at:pc.end], pf["cache"],
                                 embeds=pc.embeds)
        dev = self.gm.device
        B, T, W = len(group), max(pc.end - pc.at for pc in group), max(pc.at for pc in group)
        pad = self.gm.tokenizer.pad_token_id or 0
        ids = torch.full((B, T), pad, dtype=group[0].r.pf["ids"].dtype, device=dev)
        pos = torch.zeros(3, B, T, dtype=group[0].r.pf["pos"].dtype, device=dev)
        mask = torch.zeros(B, W + T, dtype=torch.long, device=dev)
        for b, pc in enumerate(group):
            n, pf = pc.end - pc.at, pc.r.pf
            ids[b, T - n:] = pf["ids"][0, pc.at:pc.end]
            pos[:, b, T - n:] = pf["pos"][:, 0, pc.at:pc.end]
            mask[b, W - pc.at:W] = 1
            mask[b, W + T - n:] = 1
        batch = GlyphCache(reserve=T if W else 0)  # room for the new tokens after the KV copied in
        if W:
            past = next(pc.r.pf["cache"] for pc in group if pc.at)
            for li, lay in enumerate(past.layers):
                K = lay.keys.new_zeros(B, lay.keys.shape[1], W, lay.keys.shape[-1])
                V = lay.values.new_zeros(B, lay.values.shape[1], W, lay.values.shape[-1])
                for b, pc in enumerate(group):
                    if pc.at:
                        own = pc.r.pf["cache"].layers[li]
                        K[b, :, W - pc.at:] = own.keys[0]
                        V[b, :, W - pc.at:] = own.values[0]
                batch.update(K, V, li)
        embeds = [pc.embeds for pc in group if pc.embeds is not None]
        logits = self._forward(ids, pos, batch, None if bool(mask.all()) else mask,
                               torch.cat(embeds) if embeds else None)
        # every row's cache made before any is given back: if one fails (out of memory), the group is run again
        # piece by piece on the caches as they were
        own = [self._own_cache(batch, b, pc, W, T) for b, pc in enumerate(group)]
        for pc, cache in zip(group, own):
            pc.r.pf["cache"] = cache
        return logits

    @staticmethod
    def _own_cache(batch: GlyphCache, b: int, pc: Piece, W: int, T: int) -> GlyphCache:
        """Row b of a batched prefill's cache (left-padded: KV so far in [W - at, W), the new tokens at the end of
        [W, W + T)) as the request's own, with room for the rest of its prompt."""
        n = pc.end - pc.at
        own = GlyphCache(reserve=pc.r.pf["ids"].shape[1] - pc.end)
        for li, lay in enumerate(batch.layers):
            own.update(torch.cat([lay.keys[b:b + 1, :, W - pc.at:W], lay.keys[b:b + 1, :, W + T - n:]], 2),
                       torch.cat([lay.values[b:b + 1, :, W - pc.at:W], lay.values[b:b + 1, :, W + T - n:]], 2), li)
        return own

    def _piece_done(self, r: Request, at: int, end: int, logits: torch.Tensor) -> None:
        """After a piece: the prefix's KV to the document cache when the piece ended there; at the prompt's end, the
        request joins the running batch with its first token."""
        pf, p = r.pf, r.prompt
        k, L = p.prefix_len, len(p.input_ids)
        pf["at"] = end
        cache = pf["cache"]
        if end == k and at < k and self.cache.max_bytes:
            layers = [(lay.keys[:, :, :k].clone(), lay.values[:, :, :k].clone()) for lay in cache.layers]
            self.cache.put(p.prefix_key, PrefixEntry(k, layers, int(pf["pos"][:, 0, :k].max()) + 1))
            self.metrics.cache_bytes.set(self.cache.nbytes)
        if end < L:
            return
        self._prefilling.remove(r)
        r.pf = None
        for s in p.segments:  # not needed while it decodes (about 430 MB for a 128K-token document at 9B shapes);
            s.embeddings = None  # the document cache keeps its own reference, within its budget
        self.steps["prefill"] += 1
        self.metrics.prompt_tokens.inc(L)
        r.kv = [(lay.keys, lay.values) for lay in cache.layers]
        r.length, r.next_pos = L, L + pf["delta"]
        if r.params.repetition_penalty != 1.0:
            V = logits.shape[-1]
            r.seen = torch.tensor(sorted(t for t in set(p.input_ids) if 0 <= t < V), device=logits.device)
        if r.params.presence_penalty or r.params.frequency_penalty:
            r.counts = torch.zeros(logits.shape[-1], device=logits.device)
        seed = r.params.seed if r.params.seed is not None else int.from_bytes(uuid.uuid4().bytes[:6], "little")
        if r.params.temperature >= GREEDY_BELOW:
            r.generator = torch.Generator(logits.device).manual_seed(seed)
        rows = [r] + [self._choice(r, i, (seed + i) % 2**64) for i in range(1, r.params.n)]
        if len(rows) > 1:
            r.choices, r.open_choices = rows, len(rows)
        self.running += rows
        self.metrics.running.set(len(self.running))
        for c, (tok, lp) in zip(rows, self._sample(rows, logits[None].expand(len(rows), -1).clone())):
            self._accept(c, tok, lp)

    @staticmethod
    def _choice(r: Request, i: int, seed: int) -> Request:
        """Choice i of `r`, whose prompt just went in: its own copy of r's sampling state, r's KV to start from."""
        c = Request(r.prompt, r.params, r.on_event, id=f"{r.id}-{i}", arrival=r.arrival, deadline=r.deadline,
                    started=r.started, cache_hit=r.cache_hit, length=r.length, next_pos=r.next_pos, index=i, head=r,
                    logprobs=[] if r.logprobs is not None else None)
        c.kv = list(r.kv)  # the same tensors: the batch copies them when its rows are rebuilt
        if r.seen is not None:
            c.seen = r.seen.clone()
        if r.counts is not None:
            c.counts = torch.zeros_like(r.counts)
        if r.generator is not None:
            c.generator = torch.Generator(r.generator.device).manual_seed(seed)
        return c

    # ------------------------------------------------------------------ decode
    def _rebuild(self) -> None:
        """The batch cache for the running requests: rows left-padded to the longest (what lies in a row's padding
        is never read: the mask hides it). The rows already in the batch move with one gather per layer, a joining
        request's own KV with one copy. Built layer by layer, each old layer (and the joining requests' own) let go
        once copied: the peak is one layer over the KV, not twice it.

        Its room is the fewest tokens any row has left (at most DECODE_RESERVE): the batch is rebuilt when a row
        finishes, or when the room is used up, so it never holds more than the longest row's prompt + max_tokens
        for each row, what _kv_fits counts."""
        for r in [r for r in self.running if r.kv is not None]:  # a joining request whose KV is not its length
            have = {t.shape[-2] for kv in r.kv or () for t in kv}  # (a bug) fails alone, not the batch
            if r.kv is not None and have != {r.length}:
                log.error("request %s: its KV holds %s tokens, not its length %d; failing it", r.id, have, r.length)
                self._fail(r, RequestError(f"the engine failed on this request: its KV cache holds {sorted(have)} "
                                           f"tokens, not its {r.length}", None, 500, "engine_error"))
        if not self.running:
            return
        old, W = self._batch, self._width
        index = {id(r): b for b, r in enumerate(self._batch_rows)}
        rows = [r for r in self.running if r.kv is None] + [r for r in self.running if r.kv is not None]
        kept = torch.tensor([index[id(r)] for r in rows if r.kv is None], dtype=torch.long)
        joining = [r for r in rows if r.kv is not None]
        width = max(r.length for r in rows)
        reserve = min(min(r.params.max_tokens - len(r.output_ids) for r in rows), DECODE_RESERVE)
        reserve = max(reserve, 1)  # room for the next token
        new = GlyphCache(reserve=reserve)
        nl = len(joining[0].kv) if joining else len(old.layers)
        if len(kept):
            kept = kept.to(old.layers[0].keys.device)
        for li in range(nl):
            parts = []
            for which in (0, 1):  # keys, values
                src = (old.layers[li].keys, old.layers[li].values)[which] if len(kept) else None
                ref = joining[0].kv[li][which] if joining else src
                T = ref.new_zeros(len(rows), ref.shape[1], width, ref.shape[-1])
                if len(kept):
                    n = min(W, width)
                    T[:len(kept), :, width - n:] = src.index_select(0, kept)[:, :, W - n:W]
                for b, r in enumerate(joining, start=len(kept)):
                    x = r.kv[li][which][0]
                    T[b, :, width - x.shape[1]:] = x
                parts.append(T)
            if old is not None and li < len(old.layers):
                old.layers[li].release()
            for r in joining:
                r.kv[li] = None
            new.update(parts[0], parts[1], li)
            del parts
        for r in rows:
            r.kv = None
        self.running[:] = rows
        self._batch, self._batch_rows, self._width, self._room = new, list(rows), width, width + reserve

    @torch.no_grad()
    def _decode_step(self) -> None:
        if [id(r) for r in self._batch_rows] != [id(r) for r in self.running] or self._width >= self._room:
            self._rebuild()
            if not self.running:
                return
        rows, W = self.running, self._width
        dev = self.gm.device
        B = len(rows)
        ids = torch.tensor([[r.last_token] for r in rows], device=dev)
        pos = torch.tensor([r.next_pos for r in rows], device=dev).view(1, B, 1).expand(3, B, 1)
        mask = None
        if any(r.length != W for r in rows):
            lengths = torch.tensor([r.length + 1 for r in rows], device=dev)
            mask = (torch.arange(W + 1, device=dev)[None, :] >= (W + 1 - lengths)[:, None]).long()
        logits = self._forward(ids, pos, self._batch, mask)
        self._width += 1
        self.steps["decode"] += 1
        self.steps["decode_rows"] += B
        for r, (tok, lp) in zip(list(rows), self._sample(rows, logits)):
            r.length += 1
            r.next_pos += 1
            self._accept(r, tok, lp)

    # ------------------------------------------------------------------ sampling and output
    @staticmethod
    def _sample(rows: list[Request], logits: torch.Tensor) -> list[tuple[int, tuple | None]]:
        """Each row's next token, and its logprobs when the row asked for them."""
        raw = model_logprobs(rows, logits)
        tokens = next_tokens(rows, logits)
        lps = token_logprobs(raw, rows, tokens)
        return [(t, lps.get(b)) for b, t in enumerate(tokens)]

    def _accept(self, r: Request, tok: int, lp: tuple | None = None) -> None:
        now = time.monotonic()
        if r.first_token_t is None:
            r.first_token_t = now
            if r.index == 0:  # one time to first token a request
                self.metrics.ttft.observe(now - r.arrival)
        else:
            self.metrics.itl.observe(now - r.last_token_t)
        r.last_token_t = now
        if tok in self.stop_ids and not r.params.ignore_eos:
            self._finish(r, "stop")
            return
        r.output_ids.append(tok)
        r.last_token = tok
        if r.logprobs is not None:
            r.logprobs.append(content_entry(self.token_text, tok, lp))
        self.metrics.tokens(1)
        # incremental detokenization: the ids since the last commit point are decoded again, not all of them
        seg = self.gm.tokenizer.decode(r.output_ids[r.seg_start:], skip_special_tokens=True)
        text = r.committed + seg
        if len(r.output_ids) - r.seg_start >= 64 and not seg.endswith("\ufffd"):
            r.committed, r.seg_start = text, len(r.output_ids)
        stops = r.params.stop
        if stops:
            hits = [i for i in (text.find(s, max(0, r.sent - len(s))) for s in stops) if i >= 0]
            if hits:
                r.text = text[:min(hits)]
                self._finish(r, "stop")
                return
        r.text = text
        if len(r.output_ids) >= r.params.max_tokens or r.length + 1 >= (self.max_positions or math.inf):
            self._finish(r, "length")
            return
        hold = max((len(s) for s in stops), default=1) - 1  # a stop may start in the last hold characters
        end = len(text) - text.endswith("\ufffd") - hold  # a character half decoded is not one of them
        if end > r.sent:
            self._delta(r, text[r.sent:end])
            r.sent = end

    def _release_pixels(self, r: Request) -> None:
        """The request's pages no longer count against max_queue_bytes (through the vision tower, or finished)."""
        if r.pixel_bytes:
            with self._cv:
                self.queued_bytes -= r.pixel_bytes
                r.pixel_bytes = 0

    def _remove(self, r: Request) -> None:
        self._release_pixels(r)
        if r in self._prefilling:
            self._prefilling.remove(r)
        r.pf = None
        if r in self.running:
            self.running.remove(r)
            self.metrics.running.set(len(self.running))
            if not self.running:  # the batch's KV goes with its last row, not at the next decode step
                self._batch, self._batch_rows = None, []
        r.kv = None

    def _finish(self, r: Request, reason: str) -> None:
        self._remove(r)
        g = r.group
        if g.choices is not None and g.finish_reason == "error":  # the request failed: its choices are gone
            return
        r.finish_reason = reason
        if reason != "cancelled" and (len(r.text) > r.sent or r.logprobs_sent < len(r.logprobs or ())):
            self._delta(r, r.text[r.sent:])
            r.sent = len(r.text)
        if g.choices is not None:  # a choice of several: "finish" for it, "done" once all have finished
            self._emit(r, {"type": "finish", "index": r.index, "finish_reason": reason, "request": r})
            g.open_choices -= 1
            if g.open_choices:
                return
            reason = "cancelled" if g.cancelled else g.finish_reason
        self.metrics.requests.labels(reason).inc()
        self._emit(g, {"type": "done", "finish_reason": reason, "request": g})

    def _fail(self, r: Request, err: RequestError) -> None:
        g = r.group
        if g.choices is not None:  # one error for the request: its other choices go without a word
            if g.finish_reason == "error" and not g.open_choices:
                self._remove(r)
                return
            for c in g.choices:
                self._remove(c)
                if c.finish_reason is None:
                    c.finish_reason = "error"
            g.open_choices = 0
        self._remove(r)
        r.finish_reason = g.finish_reason = "error"
        self.metrics.requests.labels(err.code or "error").inc()
        self._emit(g, {"type": "error", "error": err, "request": g})

    def _delta(self, r: Request, text: str) -> None:
        """A delta event: the text, and the logprobs entries of the tokens accepted since the last delta."""
        ev = {"type": "delta", "index": r.index, "text": text, "request": r}
        if r.logprobs is not None:
            ev["logprobs"] = r.logprobs[r.logprobs_sent:]
            r.logprobs_sent = len(r.logprobs)
        self._emit(r, ev)

    def _emit(self, r: Request, ev: dict) -> None:
        try:
            r.on_event(ev)
        except Exception:  # noqa: BLE001 - a listener that went away (a closed event loop) cancels its request
            log.warning("request %s: its listener failed; cancelling it", r.id, exc_info=True)
            r.group.cancelled = True
