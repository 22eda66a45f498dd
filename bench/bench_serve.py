"""Serving under load: N concurrent streaming clients x M requests against `glyph-rt serve` (the engine on a thread
of the server's process, then in a process of its own), and the same number of requests through the offline
batch runner and straight into the engine, each vs serial generate.

    python bench/bench_serve.py [--model DIR] [--clients 32] [--requests 4] [--max-tokens 32] [--quick]

The clients run in a process of their own (LoadGenerator), as a load generator does, on aiohttp with the
OpenAI protocol parsed by hand as vLLM's benchmark_serving does; each run reports the CPU seconds they took
(client_cpu_s: on a small host, time the server did not get). Each request asks
about its own document (no cache hits; every page shape is warmed up first, and the engine
by the same load over other documents), streams,
and generates exactly --max-tokens tokens (ignore_eos; the serial baseline uses min_new_tokens).
Reports requests/s and tokens/s (of the requests that succeeded), time to first token, inter-token latency
(ITL: between the stream's chunks with text, and a chunk can carry several tokens) and time per output token
(TPOT: (latency - TTFT) / (completion_tokens - 1) per request) (p50, p99) as the clients see them, errors
(any makes the exit status 1, and a ratio with a side that had some is left out: None, and a note), and the
same model's GlyphModel.generate run one request at a time in the same
process (before and after the engine; the faster run is the baseline). Then three long documents, each asked
about twice on one warm connection: the median time to first token of the first question and of the
follow-up, served from the document cache. Last, the same number of requests about other documents as a
Batch API file through `run_batch` (`glyph-rt batch`: the engine in process, no HTTP and no client), and as
many again prepared beforehand and submitted to the engine at once (its own throughput).
Without --model a tiny random-weight checkpoint is built (CPU-sized: the ratios, not the absolute
figures, are what it shows). Writes serve-<device>.json (replaced whole after every phase: a run cut off by its
time budget keeps the phases done, its ratios against the serial runs so far) and serve-<device>.png to --out.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import add_output_args, copy_to_results, slug, write_result  # noqa: E402

# the results' rows, in this order whatever order the phases run in
ROWS = ("serial_generate", "engine", "engine_process", "document_cache", "batch_runner", "engine_alone",
        "other_server")


def pct(xs, q):
    import numpy as np

    return float(np.percentile(xs, q)) if xs else float("nan")


QUESTION = "Summarise the terms."


def chat_request(doc: str, rendered: bool = True) -> dict:
    """The request about `doc`: rendered by the server into pages (a glyph part), or sent as plain text that the
    server prefills token by token (a threshold above its length keeps it text: the text backbone's way)."""
    part = {"type": "glyph", "glyph": {"text": doc}} if rendered else {"type": "text", "text": doc}
    extra = {"ignore_eos": True} if rendered else {"ignore_eos": True, "glyph": {"threshold": len(doc) + 1}}
    return {"messages": [{"role": "user", "content": [part, {"type": "text", "text": QUESTION}]}],
            "extra_body": extra}


def request_body(doc: str, max_tokens: int) -> dict:
    """chat_request(doc) as one chat-completions body (what a Batch API line or the engine gets, not a client)."""
    req = chat_request(doc)
    return {"model": "bench", "max_tokens": max_tokens, "temperature": 0, "messages": req["messages"],
            **req["extra_body"]}


def client(clients: int = 1):
    """The load generator's HTTP client: aiohttp, as vLLM's benchmark_serving uses, with `clients` connections. The
    official openai client parses every stream chunk into pydantic objects: 5-7x the CPU per request, which on a
    small host the load generator takes from the server it measures (tests/test_serve_*.py use that client)."""
    import aiohttp

    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients),
                                 timeout=aiohttp.ClientTimeout(total=600), headers={"Authorization": "Bearer bench"})


async def events(resp):
    """The JSON objects of an OpenAI server-sent-event stream, up to `data: [DONE]`."""
    async for raw in resp.content:
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            return
        yield json.loads(data)


async def load(url: str, docs: list, clients: int, requests: int, max_tokens: int,
               rendered: bool = True, c=None, model: str = "bench") -> dict:
    """`clients` concurrent streaming clients, each sending `requests` requests in turn (request i about docs[i]: a
    document, or a request already built as chat_request builds one), over one HTTP client session (`c`, or a new
    one). A request fails on a status other than 200, an error object in its stream, or a stream cut short; the
    figures are those of the requests that succeeded. ITL is per chunk with text (glyph_rt's server sends the
    tokens queued since its last chunk as one, and a token without text sends none), TPOT per token:
    (latency to the finish_reason - TTFT) / (completion_tokens - 1), from the stream's usage."""
    own, c = c is None, c or client(clients)
    ttft, itl, tpot, errors, tokens = [], [], [], [], 0

    async def one(i: int):
        nonlocal tokens
        req = docs[i] if isinstance(docs[i], dict) else chat_request(docs[i], rendered)
        body = {"model": model, "max_tokens": max_tokens, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True}, "messages": req["messages"], **req["extra_body"]}
        t0 = time.perf_counter()
        first, last, end, gaps, used = None, None, None, [], 0
        try:
            async with c.post(url + "/chat/completions", json=body) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}: {(await resp.text())[:160]}")
                async for ch in events(resp):
                    now = time.perf_counter()
                    if "error" in ch:
                        raise RuntimeError(f"error event: {ch['error'].get('message')}")
                    if ch.get("usage"):
                        used = ch["usage"]["completion_tokens"]
                    if not ch.get("choices"):
                        continue
                    choice = ch["choices"][0]
                    if choice["delta"].get("content"):
                        if last is not None:
                            gaps.append(now - last)
                        first, last = first or now, now
                    if choice.get("finish_reason"):
                        first, end = first or now, now  # first: no token had text (all held back)
            if end is None:
                raise RuntimeError("the stream ended without a finish_reason")
        except Exception as e:  # noqa: BLE001 - counted and reported
            errors.append(f"{type(e).__name__}: {e}"[:200])
            return
        ttft.append(first - t0)
        itl.extend(gaps)
        tokens += used
        if used > 1:
            tpot.append((end - first) / (used - 1))

    async def requests_of(k: int):
        for j in range(requests):
            await one(k * requests + j)

    t = time.perf_counter()
    await asyncio.gather(*(requests_of(k) for k in range(clients)))
    wall = time.perf_counter() - t
    if own:
        await c.close()
    n = clients * requests
    return {"requests": n, "seconds": wall, "requests_per_s": (n - len(errors)) / wall, "tokens_per_s": tokens / wall,
            "ttft_p50_s": pct(ttft, 50), "ttft_p99_s": pct(ttft, 99), "itl_p50_s": pct(itl, 50),
            "itl_p99_s": pct(itl, 99), "tpot_p50_s": pct(tpot, 50), "tpot_p99_s": pct(tpot, 99),
            "errors": len(errors), "error_samples": errors[:3], "_ttft": ttft, "_itl": itl}


def _run_load(*args, **kwargs) -> dict:
    cpu = time.process_time()
    res = asyncio.run(load(*args, **kwargs))
    res["client_cpu_s"] = time.process_time() - cpu  # the load generator's own CPU time, taken from the host's
    return res


class LoadGenerator:
    """Runs load() in a process of its own, as a load generator runs apart from the server: the clients' request
    building and stream parsing do not share the server's interpreter.

        with LoadGenerator() as gen:
            result = gen(url, docs, clients, requests, max_tokens, rendered)
    """

    def __enter__(self) -> "LoadGenerator":
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        return self

    def __call__(self, *args, **kwargs) -> dict:
        return self._pool.submit(_run_load, *args, **kwargs).result()

    def __exit__(self, *exc) -> None:
        self._pool.shutdown()


async def followups(url: str, text: str, chars: int, warm_doc: str, documents: int = 3) -> tuple[float, float, int]:
    """Median TTFT of a first question about a document and of a follow-up about it (the document cache's case),
    over `documents` distinct documents, on one warm client connection as a deployed client keeps; and how many of
    the questions failed (the warm-up's included)."""
    c = client()
    errors = (await load(url, [warm_doc], 1, 1, 1, c=c))["errors"]
    first, follow = [], []
    for k in range(documents):
        doc = text[k * 997:k * 997 + chars]
        for times in (first, follow):
            res = await load(url, [doc], 1, 1, 4, c=c)
            times.append(res["ttft_p50_s"])
            errors += res["errors"]
    await c.close()
    return statistics.median(first), statistics.median(follow), errors


def offline_batch(svc, docs: list[str], max_tokens: int, workdir: Path) -> dict:
    """The requests about `docs` as a Batch API file through run_batch, timed: requests/s and tokens/s."""
    from glyph_rt.serve.batch import URL, run_batch

    inp, out = workdir / "requests.jsonl", workdir / "results.jsonl"
    with inp.open("w", encoding="utf-8") as f:
        for i, d in enumerate(docs):
            line = {"custom_id": f"r{i}", "method": "POST", "url": URL, "body": request_body(d, max_tokens)}
            f.write(json.dumps(line) + "\n")
    t = time.perf_counter()
    counts = run_batch(svc, inp, out, progress=False)
    wall = time.perf_counter() - t
    tokens = sum(json.loads(line)["response"]["body"].get("usage", {}).get("completion_tokens", 0)
                 for line in out.read_text(encoding="utf-8").splitlines())
    return {"requests": len(docs), "seconds": wall, "requests_per_s": (len(docs) - counts["failed"]) / wall,
            "tokens_per_s": tokens / wall, "errors": counts["failed"]}


def engine_alone(svc, docs: list[str], max_tokens: int) -> dict:
    """The requests about `docs` prepared (rendered, tokenized) first, untimed, then all submitted to the engine at
    once and timed to the last answer: the engine's own throughput, without HTTP or rendering beside it."""
    import threading

    prepared = [svc.prepare(svc.parse(request_body(d, max_tokens))) for d in docs]
    done, failed = threading.Semaphore(0), []

    def on_event(ev):
        if ev["type"] in ("done", "error"):
            if ev["type"] == "error":
                failed.append(ev["error"])
            done.release()

    t = time.perf_counter()
    for prompt, params in prepared:
        svc.engine.submit(prompt, params, on_event)
    for _ in prepared:
        done.acquire()
    wall = time.perf_counter() - t
    ok = len(docs) - len(failed)
    return {"requests": len(docs), "seconds": wall, "requests_per_s": ok / wall, "tokens_per_s": ok * max_tokens / wall,
            "errors": len(failed)}


def page_requests(docs: list[str], render_config) -> list[dict]:
    """The requests about `docs` with their pages as PNG data URIs, as a client of a server that does not render
    (vLLM serving Glyph) sends them: the forwarding backend's messages, built before any timing."""
    from glyph_rt.serve.forward import ForwardingBackend

    fwd = ForwardingBackend("http://unused/v1", "bench", render_config=render_config)
    return [{"messages": fwd.messages(d, QUESTION), "extra_body": {"ignore_eos": True}} for d in docs]


def public(res: dict) -> dict:
    """A load run's figures without its samples (_ttft, _itl: the plot's)."""
    return {k: v for k, v in res.items() if not k.startswith("_")}


# the summary's ratios: key, (the row and its figure) over (the row and its figure)
RATIOS = (("throughput_vs_serial", ("engine_process", "requests_per_s"), ("serial_generate", "requests_per_s")),
          ("engine_thread_vs_serial", ("engine", "requests_per_s"), ("serial_generate", "requests_per_s")),
          ("batch_vs_serial", ("batch_runner", "requests_per_s"), ("serial_generate", "requests_per_s")),
          ("engine_alone_vs_serial", ("engine_alone", "requests_per_s"), ("serial_generate", "requests_per_s")),
          ("ttft_followup_fraction", ("document_cache", "ttft_followup_s"), ("document_cache", "ttft_first_s")),
          ("engine_vs_other_server", ("engine_process", "requests_per_s"), ("other_server", "requests_per_s")))
ITL_NOTE = ("itl_*: between a stream's chunks with text, and a chunk can carry several tokens; tpot_*: per token, "
            "(latency - TTFT) / (completion_tokens - 1) per request")


def summarise(done: dict[str, dict]) -> dict:
    """The summary of the phases done (their rows by path), against the faster serial run so far. The headline is
    what `glyph-rt serve` runs: the engine in a process of its own. A ratio with a side whose requests failed is
    None, and `notes` says why; `errors` counts every run's failed requests."""
    summary, notes = {}, []
    for key, (top, top_figure), (bottom, bottom_figure) in RATIOS:
        if top not in done or bottom not in done:
            continue
        failed = [f"{path} had {done[path]['errors']} failed requests" for path in dict.fromkeys((top, bottom))
                  if done[path].get("errors")]
        summary[key] = None if failed else done[top][top_figure] / done[bottom][bottom_figure]
        if failed:
            notes.append(f"{key}: left out, {' and '.join(failed)}")
    summary["errors"] = sum(row.get("errors", 0) for row in done.values())
    summary["itl_note"] = ITL_NOTE
    return summary | ({"notes": notes} if notes else {})


def ratio_text(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def served_model(url: str) -> str:
    import urllib.request

    req = urllib.request.Request(url + "/models", headers={"Authorization": "Bearer bench"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)["data"][0]["id"]


class VLLMServer:
    """`vllm serve MODEL` on 127.0.0.1 in a process of its own, for as long as the with-block runs; its log goes to
    `log`. Needs vLLM and a CUDA GPU."""

    def __init__(self, model: str, log: Path, port: int = 8765, max_images: int = 64):
        self.cmd = [sys.executable, "-c", "from vllm.entrypoints.cli.main import main; main()",  # `vllm` itself
                    "serve", model, "--host", "127.0.0.1", "--port", str(port), "--served-model-name", "bench",
                    "--limit-mm-per-prompt", f'{{"image": {max_images}}}']
        self.url, self.log = f"http://127.0.0.1:{port}/v1", log

    def __enter__(self) -> "VLLMServer":
        import urllib.request

        self._log = open(self.log, "w")
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited with {self.proc.returncode}; see {self.log}")
            try:
                with urllib.request.urlopen(self.url.removesuffix("/v1") + "/health", timeout=5):
                    return self
            except OSError:
                time.sleep(2)
        self.__exit__()
        raise RuntimeError(f"vllm serve did not answer /health in 900 s; see {self.log}")

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


def vllm_available() -> bool:
    import importlib.util

    import torch

    return torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="checkpoint directory (default: a tiny random-weight GLM-4.1V)")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=4, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--doc-chars", type=int, default=3000, help="characters per document")
    ap.add_argument("--serial", type=int, default=16,
                    help="requests for the serial generate baseline (at most clients x requests: the same documents)")
    ap.add_argument("--cache-doc-chars", type=int, default=40000, help="document for the cache follow-up test")
    ap.add_argument("--device", default=None)
    ap.add_argument("--compare-url", help="another OpenAI-compatible server of the same model (vLLM serving Glyph) "
                    "to load with the same requests, their pages rendered by this benchmark and sent as PNG data URIs")
    ap.add_argument("--vllm", choices=["auto", "on", "off"], default="auto",
                    help="start `vllm serve` on the model and compare with it (auto: when vLLM and a GPU are present "
                         "and no --compare-url is given)")
    ap.add_argument("--quick", action="store_true", help="2 clients x 2 requests, 4 tokens (a smoke test)")
    add_output_args(ap)
    args = ap.parse_args(argv)
    if args.quick:
        args.clients, args.requests, args.max_tokens, args.serial = 2, 2, 4, 2
        args.doc_chars, args.cache_doc_chars = 1500, 6000

    import torch

    if str(args.device).startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("bench_serve --device cuda needs a CUDA GPU")
    if args.vllm == "on" and not vllm_available():
        raise SystemExit("bench_serve --vllm on needs vLLM installed and a CUDA GPU")
    use_vllm = args.vllm == "on" or (args.vllm == "auto" and not args.compare_url and vllm_available())
    from glyph_rt import RenderConfig
    from glyph_rt.models import GlyphModel
    from glyph_rt.models.tiny import tiny_glm4v_checkpoint
    from glyph_rt.render.textio import sample_text
    from glyph_rt.serve.app import ServerThread, build_app
    from glyph_rt.serve.engine import Engine
    from glyph_rt.serve.engine_process import EngineProcess
    from glyph_rt.serve.inputs import InputOptions
    from glyph_rt.serve.service import ChatService, ServeConfig

    tmp = None
    if args.model is None:
        tmp = tempfile.TemporaryDirectory()
        args.model = str(tiny_glm4v_checkpoint(Path(tmp.name) / "tiny"))
    gm = GlyphModel.from_pretrained(args.model, render_config=RenderConfig(), device=args.device)
    text = sample_text()
    while len(text) < args.doc_chars * 2 + args.cache_doc_chars + 3 * 997:
        text += "\n" + text
    n = args.clients * args.requests
    step = max(1, (len(text) - args.doc_chars) // max(1, 6 * n))
    docs = [text[i * step:i * step + args.doc_chars] for i in range(6 * n)]
    # the HTTP load and its warm-up, the same for the engine process, the batch file, the engine alone
    docs, warm_docs, proc_docs, proc_warm_docs, batch_docs, alone_docs = (docs[k * n:(k + 1) * n] for k in range(6))
    device = gm.device.type
    dev_name = torch.cuda.get_device_name(gm.device) if device == "cuda" else "cpu"
    print(f"{dev_name}: {args.clients} clients x {args.requests} requests, {args.max_tokens} tokens, "
          f"{args.doc_chars:,}-character documents")
    name = f"serve-{slug(dev_name)}"
    done: dict[str, dict] = {}  # each phase's row, by its path

    def save() -> Path:
        return write_result(args, name + ".json", "bench_serve",
                            [{"path": path, **done[path]} for path in ROWS if path in done], summarise(done),
                            device=gm.device)

    # serial baseline: GlyphModel.generate one request at a time
    # warm-up: every page shape once (the first pass over a new shape pays one-off costs in both paths)
    for d in docs:
        gm.generate(d, QUESTION, max_new_tokens=1)
    gm.generate(text[:args.cache_doc_chars], QUESTION, max_new_tokens=1)

    def run_serial() -> dict:
        ttft, reqs = [], docs[:args.serial]  # fewer than --serial when clients x requests is smaller
        t = time.perf_counter()
        for d in reqs:
            a = gm.generate(d, QUESTION, max_new_tokens=args.max_tokens,
                            min_new_tokens=args.max_tokens)[0]
            ttft.append(a.timings["render"] + a.timings["vision"] + a.timings["prefill"])
        wall = time.perf_counter() - t
        out = {"requests": len(reqs), "seconds": wall, "requests_per_s": len(reqs) / wall,
               "tokens_per_s": len(reqs) * args.max_tokens / wall, "ttft_p50_s": pct(ttft, 50)}
        print(f"serial generate: {out['requests_per_s']:.2f} req/s, {out['tokens_per_s']:.1f} tok/s, "
              f"TTFT p50 {out['ttft_p50_s'] * 1e3:.1f} ms")
        return out

    serial = run_serial()  # run again after the engine; the faster run is the baseline (a shared machine is noisy)
    done["serial_generate"] = serial
    save()

    svc = ChatService(Engine(gm, max_batch=max(32, args.clients)).start(),
                      InputOptions(gm.render_config, "bench"), args.max_tokens)
    with ServerThread(build_app(svc)) as server:
        url = server.url + "/v1"
        with LoadGenerator() as gen:
            gen(url, warm_docs, args.clients, args.requests, args.max_tokens)  # the same load on other documents
            steps = dict(svc.engine.steps)
            res = gen(url, docs, args.clients, args.requests, args.max_tokens)
        res["prefill_rows_per_forward"] = ((svc.engine.steps["prefill_rows"] - steps["prefill_rows"])
                                           / max(1, svc.engine.steps["prefill_forwards"] - steps["prefill_forwards"]))
        res["engine_busy"] = (svc.engine.steps["busy_s"] - steps["busy_s"]) / res["seconds"]
        print(f"engine, {args.clients} clients: {res['requests_per_s']:.2f} req/s "
              f"({res['requests_per_s'] / serial['requests_per_s']:.2f}x the first serial run), "
              f"{res['tokens_per_s']:.1f} tok/s, "
              f"TTFT p50 {res['ttft_p50_s'] * 1e3:.1f} ms p99 {res['ttft_p99_s'] * 1e3:.1f} ms, "
              f"ITL (per chunk) p50 {res['itl_p50_s'] * 1e3:.1f} ms p99 {res['itl_p99_s'] * 1e3:.1f} ms, "
              f"TPOT p50 {res['tpot_p50_s'] * 1e3:.1f} ms p99 {res['tpot_p99_s'] * 1e3:.1f} ms, errors {res['errors']}; "
              f"{res['prefill_rows_per_forward']:.1f} requests per prefill forward, the engine busy "
              f"{res['engine_busy']:.0%} of the time, the clients' CPU {res['client_cpu_s']:.2f} s")
        done["engine"] = {"clients": args.clients, **public(res)}
        save()
        first, follow, failed = asyncio.run(followups(url, text, args.cache_doc_chars, docs[0]))
        print(f"document cache, {args.cache_doc_chars:,} characters: TTFT first {first * 1e3:.1f} ms, "
              f"follow-up {follow * 1e3:.1f} ms ({follow / first:.1%} of the first; medians of 3 documents), "
              f"errors {failed}")
        done["document_cache"] = {"doc_chars": args.cache_doc_chars, "ttft_first_s": first, "ttft_followup_s": follow,
                                  "errors": failed}
        save()
    # the same load with the engine in a process of its own (what `glyph-rt serve` runs)
    proc = EngineProcess(ServeConfig(model=args.model, served_model_name="bench", render_config=gm.render_config,
                                     device=args.device, max_batch=max(32, args.clients),
                                     default_max_tokens=args.max_tokens))
    try:
        with ServerThread(build_app(proc)) as server, LoadGenerator() as gen:
            gen(server.url + "/v1", proc_warm_docs, args.clients, args.requests, args.max_tokens)
            res_proc = gen(server.url + "/v1", proc_docs, args.clients, args.requests, args.max_tokens)
    finally:
        proc.shutdown()
    print(f"engine process, {args.clients} clients: {res_proc['requests_per_s']:.2f} req/s "
          f"({res_proc['requests_per_s'] / serial['requests_per_s']:.2f}x the first serial run), TTFT p50 "
          f"{res_proc['ttft_p50_s'] * 1e3:.1f} ms, ITL (per chunk) p50 {res_proc['itl_p50_s'] * 1e3:.1f} ms, "
          f"TPOT p50 {res_proc['tpot_p50_s'] * 1e3:.1f} ms, "
          f"errors {res_proc['errors']}")
    done["engine_process"] = {"clients": args.clients, **public(res_proc)}
    save()
    with tempfile.TemporaryDirectory() as work:
        batch = offline_batch(svc, batch_docs, args.max_tokens, Path(work))
    print(f"batch runner, {n} requests: {batch['requests_per_s']:.2f} req/s "
          f"({batch['requests_per_s'] / serial['requests_per_s']:.2f}x the first serial run), "
          f"{batch['tokens_per_s']:.1f} tok/s, errors {batch['errors']}")
    done["batch_runner"] = batch
    save()
    alone = engine_alone(svc, alone_docs, args.max_tokens)
    print(f"engine alone, {n} requests prepared beforehand: {alone['requests_per_s']:.2f} req/s "
          f"({alone['requests_per_s'] / serial['requests_per_s']:.2f}x the first serial run), errors {alone['errors']}")
    done["engine_alone"] = alone
    save()
    svc.shutdown()
    serial = max(serial, run_serial(), key=lambda s: s["requests_per_s"])
    done["serial_generate"] = serial
    path = save()
    print(f"vs the faster serial run: `glyph-rt serve` (engine process) over HTTP "
          f"{res_proc['requests_per_s'] / serial['requests_per_s']:.2f}x, "
          f"engine thread over HTTP {res['requests_per_s'] / serial['requests_per_s']:.2f}x, "
          f"batch runner {batch['requests_per_s'] / serial['requests_per_s']:.2f}x, "
          f"engine alone {alone['requests_per_s'] / serial['requests_per_s']:.2f}x")
    other = None
    if args.compare_url or use_vllm:  # the same requests against another server, pages rendered by this process
        bodies = page_requests(docs, gm.render_config)
        warm_bodies = page_requests(warm_docs[:args.clients], gm.render_config)
        if use_vllm:
            del svc, gm  # the GPU's memory to vLLM
            gc.collect()
            torch.cuda.empty_cache()
            Path(args.out).mkdir(parents=True, exist_ok=True)
            other_server = VLLMServer(args.model, Path(args.out) / "vllm-serve.log")
        else:
            other_server = contextlib.nullcontext(SimpleNamespace(url=args.compare_url))
        with other_server as srv, LoadGenerator() as gen:
            model = served_model(srv.url)
            gen(srv.url, warm_bodies, args.clients, 1, args.max_tokens, model=model)
            other = gen(srv.url, bodies, args.clients, args.requests, args.max_tokens, model=model)
        other = {"server": "vllm" if use_vllm else args.compare_url, **public(other)}
        done["other_server"] = other
        path = save()
        print(f"{other['server']}, {args.clients} clients, pages as PNG data URIs: "
              f"{other['requests_per_s']:.2f} req/s, TTFT p50 {other['ttft_p50_s'] * 1e3:.1f} ms, TPOT p50 "
              f"{other['tpot_p50_s'] * 1e3:.1f} ms, errors {other['errors']}; glyph_rt's server "
              f"{ratio_text(summarise(done)['engine_vs_other_server'])} its requests/s")
    summary = summarise(done)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(1, 3, figsize=(15, 3.8))
        bars = {"serial\ngenerate": serial, f"HTTP,\n{args.clients} clients": res,
                "HTTP, engine\nprocess": res_proc, "batch\nrunner": batch, "engine\nalone": alone}
        if other:
            bars[other["server"] if other["server"] == "vllm" else "other\nserver"] = other
        ax[0].bar(list(bars), [b["requests_per_s"] for b in bars.values()],
                  color=["grey", "tab:blue", "tab:cyan", "tab:green", "tab:purple", "tab:orange"][:len(bars)])
        ax[0].set_ylabel("requests/s")
        for a, key, title in ((ax[1], "_ttft", "time to first token"), (ax[2], "_itl", "inter-token latency")):
            for r, label in ((res, "engine thread"), (res_proc, "engine process")):
                xs = sorted(v * 1e3 for v in r[key])
                a.plot(xs, [i / max(1, len(xs)) for i in range(len(xs))], label=label)
            a.legend()
            a.set_xlabel("ms")
            a.set_title(title)
        ax[1].set_ylabel("fraction of requests")
        fig.suptitle(f"bench_serve on {dev_name}")
        fig.tight_layout()
        png = path.with_suffix(".png")
        fig.savefig(png, dpi=100)
        copy_to_results(args, png)
    except ImportError:
        pass
    print(f"wrote {path}")
    if tmp is not None:
        tmp.cleanup()
    if summary["errors"]:
        failed = ", ".join(f"{p} {done[p]['errors']}" for p in ROWS if done.get(p, {}).get("errors"))
        print(f"bench_serve: {summary['errors']} requests failed ({failed}; their error_samples are in {path})",
              file=sys.stderr)
        for note in summary.get("notes", []):
            print(f"  {note}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
