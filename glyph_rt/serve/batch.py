"""Offline runs in the OpenAI Batch API file format (as vLLM's run_batch), on the serving engine.

Each input line: {"custom_id": "...", "method": "POST", "url": "/v1/chat/completions", "body": {...}}.
Each output line: {"id": ..., "custom_id": ..., "response": {"status_code": 200, "request_id": ..., "body": {...}},
"error": null}; a request the server would refuse gets its status and OpenAI error body, and a request it cannot
serve (another url or method than POST /v1/chat/completions) a line {"id", "custom_id", "response": null, "error":
{"code": "unsupported_url" or "unsupported_method", "message"}} (as OpenAI's Batch API writes a request that failed
without an HTTP response); either way the file goes on.
Lines are appended one write each, as requests finish. A rerun skips the custom_ids already in the output
(a last line cut short by a kill is removed first), so a killed run resumes with no duplicate and no lost line.
A rerun also runs again the requests whose lines say the server failed them (5xx, 408, 429), replacing those
lines; a request the server refused (other 4xx, or response null) keeps its answer.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import uuid
from pathlib import Path

from ..fileio import cut_torn_tail, json_line, json_lines, text_lines, write_atomic
from .engine import QueueFull
from .inputs import RequestError
from .protocol import completion_id, error, response
from .service import ChatService

log = logging.getLogger("glyph_rt.serve")

URL = "/v1/chat/completions"


class BatchFileError(ValueError):
    """The input file is not a Batch API file; the message names the line."""


def unsupported(d: dict) -> dict | None:
    """The error object of a request line the server cannot serve (its url or method), else None."""
    url, method = d.get("url", URL), d.get("method", "POST")
    if url != URL:
        return {"code": "unsupported_url", "message": f"url {url!r} is not supported: only POST {URL} is"}
    if method != "POST":
        return {"code": "unsupported_method", "message": f"method {method!r} is not supported: only POST {URL} is"}
    return None


def read_requests(path: str | os.PathLike) -> list[dict]:
    """The request lines of a Batch API file; BatchFileError, naming the line, for a file that is not one (not
    UTF-8, a line not JSON, a custom_id missing or twice, a chat completions request without a body object). A
    line for another url or method is returned: run_batch answers it with an error line (unsupported)."""
    out, seen = [], set()
    try:
        lines = text_lines(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise BatchFileError(f"--input {str(path)!r}: cannot read it ({e})") from None
    for n, d in json_lines(lines, str(path), BatchFileError):
        if not isinstance(d, dict) or not isinstance(d.get("custom_id"), str) or not d["custom_id"]:
            raise BatchFileError(f"{path}:{n}: each line needs a non-empty string custom_id")
        if unsupported(d) is None and not isinstance(d.get("body"), dict):
            raise BatchFileError(f"{path}:{n}: body must be a JSON object (a chat completions request)")
        if d["custom_id"] in seen:
            raise BatchFileError(f"{path}:{n}: custom_id {d['custom_id']!r} appears twice; make them unique")
        seen.add(d["custom_id"])
        out.append(d)
    return out


def retryable(status: int) -> bool:
    """A failure of the server's, not of the request (an engine error, a shutdown, a timeout, a full queue): the
    request may well succeed when run again."""
    return status >= 500 or status in (408, 429)


def _results(path: Path, data: bytes) -> list[tuple[str, int | None, str]]:
    """(custom_id, status code or None for a line without a response, line) of each line of an output file."""
    out = []
    for n, line in enumerate(text_lines(data.decode("utf-8", "replace")), 1):
        try:
            rec = json.loads(line)
            cid, resp = rec["custom_id"], rec["response"]
            if resp is None and not isinstance(rec["error"], dict):
                raise TypeError("neither a response nor an error")
            out.append((cid, None if resp is None else int(resp["status_code"]), line))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise BatchFileError(f"--output {str(path)!r} line {n} is not a batch result; give a new output file "
                                 "or the one an earlier run wrote") from None
    return out


def check_output(path) -> None:
    """BatchFileError when an existing output file is not one a batch run wrote; reads it, changes nothing (a
    last line cut short is left for done_ids)."""
    path = Path(path)
    if path.is_file():
        data = path.read_bytes()
        _results(path, data[:data.rfind(b"\n") + 1])


def done_ids(path: Path) -> tuple[dict[str, int | None], int]:
    """custom_ids already answered in the output (with their status codes, None for a request the server cannot
    serve), and how many of its lines were dropped to run again. A partial
    last line (a killed write) is cut off; lines of failures `retryable` says may succeed now are removed (the
    file is rewritten atomically), so their requests run again and the output never holds an id twice."""
    ids, keep, dropped = {}, [], 0
    for cid, status, line in _results(path, cut_torn_tail(path)):
        if status is not None and retryable(status):
            dropped += 1
            continue
        ids[cid] = status
        keep.append(line)
    if dropped:
        write_atomic(path, "".join(x + "\n" for x in keep))
    return ids, dropped


def _unserved_line(custom_id: str, err: dict) -> bytes:
    return json_line({"id": f"batch_req_{uuid.uuid4().hex}", "custom_id": custom_id, "response": None,
                      "error": err}).encode()


def _line(custom_id: str, status: int, body: dict) -> bytes:
    rec = {"id": f"batch_req_{uuid.uuid4().hex}", "custom_id": custom_id,
           "response": {"status_code": status, "request_id": uuid.uuid4().hex, "body": body},
           "error": None}
    return json_line(rec).encode()  # a lone surrogate as its \u escape: the line reads back the same (and resumes)


def run_batch(service: ChatService, input_path, output_path, progress: bool = True,
              max_in_flight: int | None = None, requests: list[dict] | None = None) -> dict:
    """Answers every request of input_path not yet in output_path; returns counts. requests: read_requests's of
    input_path, when read already (the batch command reads them before the model loads)."""
    from tqdm import tqdm

    if requests is None:
        requests = read_requests(input_path)
    out = Path(output_path)
    done, retried = done_ids(out)
    todo = [r for r in requests if r["custom_id"] not in done]
    engine = service.engine
    limit = max_in_flight or max(1, engine.max_batch) * 2
    results: queue.Queue = queue.Queue()
    counts = {"total": len(requests), "skipped": len(requests) - len(todo), "retried": retried, "ok": 0,
              "failed": 0, "failed_before": sum(done.get(r["custom_id"], 200) != 200 for r in requests)}
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    bar = tqdm(total=len(todo), desc="batch", unit="req", disable=not progress)
    in_flight = 0

    def write(line: bytes, ok: bool) -> None:
        n = os.write(fd, line)  # one write per line: a kill leaves whole lines (or a cut last one, removed on resume)
        if n != len(line):  # a full disk: the line is cut, so stop here (a rerun removes it and goes on)
            raise OSError(f"wrote {n} of {len(line)} bytes of a result line (disk full?); rerun to resume")
        counts["ok" if ok else "failed"] += 1
        bar.update(1)

    def collect(block: bool, everything: bool = False) -> None:
        nonlocal in_flight
        while in_flight:
            try:
                line, ok = results.get(block=block or everything)
            except queue.Empty:
                return
            in_flight -= 1
            write(line, ok)
            block = False

    try:
        for item in todo:
            cid = item["custom_id"]
            err = unsupported(item)
            if err is not None:  # a request for another endpoint: its error line, and the file goes on
                write(_unserved_line(cid, err), False)
                continue
            try:
                req = service.parse(item["body"])
                if req.stream:
                    raise RequestError("stream: not supported in batch files; remove it", "stream")
                prompt, params = service.prepare(req)
            except RequestError as e:
                write(_line(cid, e.status, error(str(e), e.status, e.param, e.code)), False)
                continue
            except Exception as e:  # noqa: BLE001 - a line nothing checked for: answered, and the file goes on
                log.exception("request %s could not be prepared", cid)
                msg = f"the server could not prepare this request: {type(e).__name__}: {e}"
                write(_line(cid, 500, error(msg, 500)), False)
                continue
            while in_flight >= limit:
                collect(block=True)

            def on_event(ev, cid=cid):  # on the engine's thread: each request puts exactly one line
                if ev["type"] not in ("done", "error"):
                    return
                try:
                    if ev["type"] == "done":
                        r = ev["request"]
                        body = response(completion_id(), service.model_name, r.results(), r.usage(), r.stats())
                        item = (_line(cid, 200, body), True)
                    else:
                        e = ev["error"]
                        item = (_line(cid, e.status, error(str(e), e.status, e.param, e.code)), False)
                except Exception as e:  # noqa: BLE001 - a line not put would leave collect() waiting for ever
                    log.exception("request %s: its result line could not be built", cid)
                    msg = f"the server could not write this request's result: {type(e).__name__}: {e}"
                    item = (_line(cid, 500, error(msg, 500)), False)
                results.put(item)

            while True:
                try:
                    engine.submit(prompt, params, on_event)
                    break
                except QueueFull:
                    collect(block=True)
            in_flight += 1
            collect(block=False)
        collect(block=True, everything=True)
    finally:
        os.close(fd)
        bar.close()
    return counts
