"""The engine in a process of its own, as vLLM v1 runs its EngineCore: the server's event loop (HTTP, JSON, SSE)
and the engine's scheduler and model no longer take turns on one interpreter's lock.

    backend = EngineProcess(ServeConfig(model="path/to/Glyph"))   # starts the process, returns once the model is up
    app = build_app(backend)

The server's process parses and validates each request and sends it down a pipe. The engine's process prepares it
(renders its documents and tokenizes, on a pool of threads), queues it on its Engine, and sends the request's events
back up the pipe: all events that are ready at once go as one message (a decode step's tokens for every request). The
server's process reads and writes the pipe on two threads of its own, in blocking mode, so that a message of any size
goes whole (an event loop's add_reader would make the socket non-blocking under uvloop, and a message larger than its
buffer would fail half sent or half read); the reader hands each message to the event loop, in order. The document
cache, the metrics and the GPU stay with the model. A cancelled request is cancelled over the same pipe. When the
engine's process dies, every request in flight fails with a 503 and /health says so; the process exits when its
engine's thread stops, so that holds for the thread too. When the server's process dies, the engine's process sees its
pipe close and exits.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.reduction import ForkingPickler

from .engine import QueueFull, Slot
from .inputs import RequestError
from .protocol import ChatCompletionRequest
from .service import ChatService, ServeConfig, parse_for

log = logging.getLogger("glyph_rt.serve")


def _wire_error(e: Exception) -> dict:
    if isinstance(e, QueueFull):
        return {"type": "error", "queue_full": [e.depth, e.retry_after]}
    return {"type": "error", "message": str(e), "param": e.param, "status": e.status, "code": e.code}


def _error_of(ev: dict) -> Exception:
    if "queue_full" in ev:
        return QueueFull(*ev["queue_full"])
    return RequestError(ev["message"], ev["param"], ev["status"], ev["code"])


# ---------------------------------------------------------------------------------------------- the engine's side
def _engine_main(cfg: ServeConfig, conn, workers: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the server shuts us down
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s (engine) %(message)s")
    try:
        service = ChatService.from_config(cfg)
    except BaseException as e:  # noqa: BLE001 - told to the server's process, which raises it
        conn.send(("failed", f"{type(e).__name__}: {e}"))
        raise SystemExit(1) from None
    conn.send(("ready", {"model_name": service.model_name, "max_positions": service.max_positions}))
    if not _EngineSide(service, conn, workers).run():
        raise SystemExit(1)


class _EngineSide:
    """The engine process's half: requests from the pipe to the engine, the engine's events to the pipe."""

    def __init__(self, service: ChatService, conn, workers: int):
        self.service, self.conn = service, conn
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="glyph-rt-prepare")
        self.requests: dict = {}  # id -> the engine's Request (None while it is prepared)
        self.cancelled: set[int] = set()  # cancelled while prepared
        self._out: list = []  # the outbox
        self._step: list = []  # the events of the engine's step under way, to the outbox at its end
        self._cv = threading.Condition()  # guards the above
        self._send_lock = threading.Lock()  # the outbox is taken and sent as one step: messages keep their order
        self._closed = False
        service.engine.on_step = self._step_done  # the engine's thread sends each step's events itself, at once

    def run(self, health_interval: float = 1.0) -> bool:
        """Serves the pipe until the server's process goes or says shutdown (True), or the engine's thread stops
        (False: the process then exits, so the server fails what is in flight and /health says so)."""
        sender = threading.Thread(target=self._send_loop, name="glyph-rt-sender", daemon=True)
        sender.start()
        engine_ok = True
        try:
            while True:
                if not self.service.healthy:  # checked on every turn: steady traffic must not hide it
                    log.error("the engine's thread has stopped; the engine process exits")
                    engine_ok = False
                    break
                try:
                    if not self.conn.poll(health_interval):
                        continue
                    msg = self.conn.recv()
                except (EOFError, OSError):  # the server's process is gone
                    break
                kind = msg[0]
                if kind == "submit":
                    try:  # refused at once when the queue has no room, before the request is rendered
                        slot = self.service.engine.reserve()
                    except QueueFull as e:
                        self._reply_error(msg[1], e)
                        continue
                    with self._cv:
                        self.requests[msg[1]] = None
                    self.pool.submit(self._start, msg[1], msg[2], slot)
                elif kind == "cancel":
                    self._cancel(msg[1])
                elif kind == "metrics":
                    self._post(("metrics", msg[1], self.service.exposition()))
                elif kind == "shutdown":
                    break
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.service.shutdown()  # fails what is left (503), as events
            with self._cv:
                self._closed = True
                self._cv.notify_all()
            sender.join(timeout=10)
            self.conn.close()
        return engine_ok

    def _start(self, rid: int, req: ChatCompletionRequest, slot: Slot) -> None:
        """On a worker thread: renders and tokenizes, then queues it on the engine in the place `slot` holds (let
        go on every other way out)."""
        try:
            self._prepare_and_queue(rid, req, slot)
        finally:
            slot.release()

    def _prepare_and_queue(self, rid: int, req: ChatCompletionRequest, slot: Slot) -> None:
        try:
            prompt, params = self.service.prepare(req)
        except RequestError as e:
            self._reply_error(rid, e)
            return
        except Exception as e:  # noqa: BLE001 - one bad request must not stop the server
            log.exception("preparing a request failed")
            self._reply_error(rid, RequestError(f"the server failed to prepare this request: {type(e).__name__}: "
                                                f"{e}", None, 500, "engine_error"))
            return
        stream = req.stream

        def on_event(ev):  # on the engine's thread
            kind = ev["type"]
            if kind in ("delta", "finish"):  # a choice's text, or its end (one of several)
                if stream:
                    with self._cv:
                        self._step.append(("event", rid, {k: v for k, v in ev.items() if k != "request"}))
                return
            with self._cv:
                self.requests.pop(rid, None)
                r = ev["request"]
                if kind == "done":
                    self._step.append(("event", rid, {"type": "done", "finish_reason": r.finish_reason,
                                                      "results": r.results(), "usage": r.usage(),
                                                      "stats": r.stats()}))
                else:
                    self._step.append(("event", rid, _wire_error(ev["error"])))

        with self._cv:  # "accepted" goes out before any event of the request
            if rid in self.cancelled:
                self.cancelled.discard(rid)
                self.requests.pop(rid, None)
                return
            try:
                self.requests[rid] = self.service.engine.submit(prompt, params, on_event, slot=slot)
            except (QueueFull, RequestError) as e:
                self.requests.pop(rid, None)
                self._out.append(("event", rid, _wire_error(e)))
            else:
                self._out.append(("event", rid, {"type": "accepted"}))
            self._cv.notify_all()

    def _reply_error(self, rid: int, e: Exception) -> None:
        with self._cv:
            self.requests.pop(rid, None)
            self.cancelled.discard(rid)
            self._out.append(("event", rid, _wire_error(e)))
            self._cv.notify_all()

    def _cancel(self, rid: int) -> None:
        with self._cv:
            if rid not in self.requests:
                return
            r = self.requests[rid]
            if r is None:
                self.cancelled.add(rid)
            else:
                self.service.engine.cancel(r)

    def _post(self, msg) -> None:
        with self._cv:
            self._out.append(msg)
            self._cv.notify_all()

    def _step_done(self) -> None:
        with self._cv:
            self._out += self._step
            self._step = []
        self._flush()

    def _flush(self) -> None:
        """Sends what is in the outbox as one message."""
        with self._send_lock:
            with self._cv:
                out, self._out = self._out, []
            if out:
                try:
                    self.conn.send(out)
                except (OSError, ValueError):  # the server's process is gone; the receiving loop stops
                    pass

    def _send_loop(self) -> None:
        """Sends what other threads than the engine's post (a request accepted or refused, metrics)."""
        while True:
            with self._cv:
                while not self._out and not self._closed:
                    self._cv.wait()
                if not self._out:
                    return
            self._flush()


# ---------------------------------------------------------------------------------------------- the server's side
@dataclass(eq=False)
class RemoteRequest:
    """A request in the engine's process, as the server's process sees it (what the app reads at its end)."""
    id: int
    events: asyncio.Queue = field(repr=False)
    accepted: asyncio.Future = field(repr=False)
    finish_reason: str | None = None
    _results: list[dict] = field(default_factory=list)
    _usage: dict = field(default_factory=dict)
    _stats: dict = field(default_factory=dict)

    def results(self) -> list[dict]:
        return self._results

    def usage(self) -> dict:
        return self._usage

    def stats(self) -> dict:
        return self._stats


class EngineProcess:
    """The serving backend (see service.py) whose ChatService runs in a child process (spawned)."""

    def __init__(self, cfg: ServeConfig, workers: int | None = None, start_timeout: float = 1800.0):
        """Starts the process and waits until its model is loaded. `workers`: threads that render and tokenize."""
        workers = workers or min(8, os.cpu_count() or 2)
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_engine_main, args=(cfg, child, workers), name="glyph-rt-engine",
                                   daemon=True)
        self.process.start()
        child.close()
        deadline = time.monotonic() + start_timeout
        while not self._conn.poll(0.2):
            if not self.process.is_alive():
                raise RuntimeError(f"the engine process exited (code {self.process.exitcode}) while loading "
                                   f"{cfg.model}; see its log on standard error")
            if time.monotonic() > deadline:
                self.process.kill()
                raise RuntimeError(f"the engine process did not load {cfg.model} within {start_timeout:.0f} s")
        try:
            kind, info = self._conn.recv()
        except (EOFError, OSError):  # it died as it answered (or just before): the pipe closed with no message
            self.process.join(timeout=30)
            raise RuntimeError(f"the engine process exited (code {self.process.exitcode}) while loading "
                               f"{cfg.model}; see its log on standard error") from None
        if kind == "failed":
            self.process.join(timeout=30)
            raise RuntimeError(f"the engine process could not start: {info}")
        self.model_name, self.max_positions = info["model_name"], info["max_positions"]
        self._pending: dict[int, RemoteRequest] = {}
        self._metrics: dict[int, asyncio.Future] = {}
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()  # pickled messages for the writer; None stops it
        self._threads: list[threading.Thread] = []
        self._closing = False
        self._dead = False

    @property
    def healthy(self) -> bool:
        return not self._dead and self.process.is_alive()

    def parse(self, body) -> ChatCompletionRequest:
        return parse_for(body, self.model_name)

    async def submit(self, req: ChatCompletionRequest, events: asyncio.Queue) -> RemoteRequest:
        loop = self._attach()
        r = RemoteRequest(next(self._ids), events, loop.create_future())
        try:
            self._send(("submit", r.id, req))
        except RecursionError:  # json.loads takes deeper nesting than pickle does
            raise RequestError("the request body is nested too deeply") from None
        self._pending[r.id] = r
        try:
            await r.accepted
        except asyncio.CancelledError:  # the client went away while it was prepared
            self.cancel(r)
            raise
        return r

    def cancel(self, r: RemoteRequest) -> None:
        if self._pending.pop(r.id, None) is not None and not self._dead:
            self._send(("cancel", r.id))

    async def metrics_text(self) -> bytes:
        loop = self._attach()
        token = next(self._ids)
        fut = self._metrics[token] = loop.create_future()
        self._send(("metrics", token))
        try:
            return await asyncio.wait_for(fut, 30)
        except asyncio.TimeoutError:
            raise RequestError("the engine process did not answer for its metrics within 30 s", None, 503,
                               "engine_busy") from None
        finally:
            self._metrics.pop(token, None)

    def shutdown(self, timeout: float = 30.0) -> None:
        self._closing = True
        if self.process.is_alive():
            if self._threads:
                self._send(("shutdown",))  # after what is queued
            else:
                try:
                    self._conn.send(("shutdown",))
                except OSError:
                    pass
            self.process.join(timeout)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(5)
        self._outbox.put(None)
        for t in self._threads:  # the process is gone: its end of the pipe is closed, so neither blocks
            t.join(10)
        self._loop = None
        self._conn.close()

    # -------------------------------------------------------------- plumbing
    def _attach(self) -> asyncio.AbstractEventLoop:
        """Delivers the engine's messages to the running loop (the first loop that asks; a later one takes over)."""
        if self._dead:
            raise RequestError(f"the engine process has stopped (exit code {self.process.exitcode}); restart the "
                               "server", None, 503, "engine_stopped")
        self._loop = asyncio.get_running_loop()
        if not self._threads:
            os.set_blocking(self._conn.fileno(), True)
            self._threads = [threading.Thread(target=f, name=f"glyph-rt-pipe-{name}", daemon=True)
                             for f, name in ((self._read_loop, "reader"), (self._write_loop, "writer"))]
            for t in self._threads:
                t.start()
        return self._loop

    def _send(self, msg) -> None:
        """Queues `msg` for the writer (pickled here: a message that cannot be pickled is the caller's error)."""
        self._outbox.put(ForkingPickler.dumps(msg))

    def _write_loop(self) -> None:
        while (data := self._outbox.get()) is not None:
            try:
                self._conn.send_bytes(data)
            except (OSError, ValueError) as e:
                if not self._closing and self.process.is_alive():  # given up: the reader then sees the pipe close
                    log.error("sending to the engine process failed (%s: %s); stopping it", type(e).__name__, e)
                    self.process.kill()
                while self._outbox.get() is not None:
                    pass
                return

    def _read_loop(self) -> None:
        """Reads until the engine's process closes the pipe (it exits), then has the loop fail what is in flight.
        Anything else that stops the reading (a broken pipe or message) gives the process up: it is killed."""
        while True:
            try:
                msgs = self._conn.recv()
            except EOFError:
                self.process.join(5)  # it closed its end as it exits
                break
            except Exception as e:  # noqa: BLE001 - the pipe cannot be read on from here
                if not self._closing:
                    log.error("reading from the engine process failed (%s: %s); stopping it", type(e).__name__, e)
                break
            self._to_loop(self._dispatch_all, msgs)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        if not self._to_loop(self._died):
            self._dead = True

    def _to_loop(self, fn, *args) -> bool:
        """Calls `fn` on the loop; False when there is none (or it is closed): no request waits on it then."""
        loop = self._loop
        if loop is None:
            return False
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            return False
        return True

    def _dispatch_all(self, msgs: list) -> None:
        for msg in msgs:
            self._dispatch(msg)

    def _dispatch(self, msg) -> None:
        kind, key, body = msg
        if kind == "metrics":
            fut = self._metrics.get(key)
            if fut is not None and not fut.done():
                fut.set_result(body)
            return
        r = self._pending.get(key)
        if r is None:  # cancelled here already
            return
        t = body["type"]
        if t == "accepted":
            if not r.accepted.done():
                r.accepted.set_result(None)
        elif t in ("delta", "finish"):
            r.events.put_nowait(body)
        else:
            del self._pending[key]
            if t == "done":
                r.finish_reason, r._results, r._usage, r._stats = body["finish_reason"], body["results"], \
                    body["usage"], body["stats"]
                r.events.put_nowait({"type": "done", "finish_reason": r.finish_reason})
            else:
                self._fail(r, _error_of(body))

    @staticmethod
    def _fail(r: RemoteRequest, err: Exception) -> None:
        """Refused before it was queued (submit raises `err`), or failed after (an error event)."""
        r.finish_reason = "error"
        if r.accepted.done():
            r.events.put_nowait({"type": "error", "error": err})
        else:
            r.accepted.set_exception(err)

    def _died(self) -> None:
        """On the loop, once the engine's process is gone: what is in flight fails with a 503."""
        self._dead = True
        err = RequestError(f"the engine process stopped (exit code {self.process.exitcode}); restart the server",
                           None, 503, "engine_stopped")
        if not self._closing:
            log.error("%s", err)
        for r in self._pending.values():
            self._fail(r, err)
        self._pending.clear()
        for fut in self._metrics.values():
            if not fut.done():
                fut.set_exception(err)
