"""glyph-rt: the command line.

    glyph-rt render [INPUT|-] [--config CFG | --preset NAME] [--out DIR] [--device cpu|cuda]
    glyph-rt stats  [INPUT|-] [--config CFG | --preset NAME]
    glyph-rt generate --model DIR --context FILE --question TEXT [--config CFG | --preset NAME]
    glyph-rt styles --n 64 --seed 0 --out DIR [--config styles.yaml]
    glyph-rt make-data --task ocr|lm|gen|qa [--input PATH ...] --out DIR [--n N] [--shard-size N] [--seed S]
    glyph-rt eval --suite ruler|longbench|mrcr|mmlongbench-doc|glyph --target CKPT|openai:URL[:MODEL] --out DIR
    glyph-rt search --config search.yaml [key=value ...] [--out DIR]
    glyph-rt backends
    glyph-rt make-tiny-checkpoint DIR [--model glm4v|qwen2_5_vl]
    glyph-rt serve --model DIR [--host H --port P --api-key KEY --config CFG ...]
    glyph-rt batch --model DIR --input requests.jsonl --output results.jsonl
    glyph-rt train {cpt,sft,rl} [--config FILE] [key=value ...]   (also: torchrun ... -m glyph_rt.train)
    glyph-rt --version

Without INPUT the built-in sample text is used. Only the standard library is imported at start-up;
each command imports what it needs (torch only for `generate` and GPU devices).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import time
from pathlib import Path

from .fileio import output_dir, output_file

PROGRESS_MIN_PAGES = 16
EXIT_ERROR, EXIT_INTERRUPTED = 2, 130
DEVICE_RE = re.compile(r"cpu|cuda(:\d+)?")


class UsageError(Exception):
    """A bad argument or input: reported as one line, exit status 2."""


class StdoutError(Exception):
    """Standard output cannot be written (a full device, a closed pipe)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (a timeout, `docker stop`, a scheduler, a closed terminal), raised in the main thread so
    that what is running stops as after Ctrl-C: `render` trims its pages and writes `complete: false`."""

    def __init__(self, signum: int):
        import signal

        super().__init__(f"terminated by {signal.Signals(signum).name}")
        self.signum = signum


@contextlib.contextmanager
def _terminate_as_interrupt():
    import signal

    def stop(signum, frame):
        raise Terminated(signum)

    # a signal already ignored (SIGHUP under nohup) stays ignored
    names = [n for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n)
             and signal.getsignal(getattr(signal, n)) is not signal.SIG_IGN]
    old = {n: signal.signal(getattr(signal, n), stop) for n in names}
    try:
        yield
    finally:
        for n, h in old.items():
            signal.signal(getattr(signal, n), h)


def _print(*lines: str) -> None:
    try:
        print(*lines, sep="\n", flush=True)
    except OSError as e:
        raise StdoutError(e.strerror) from None


def _process_seconds() -> float:
    """Seconds since this process started (interpreter start-up included); 0 where /proc is missing."""
    try:
        with open("/proc/self/stat", "rb") as f:
            start_ticks = int(f.read().rsplit(b")", 1)[1].split()[19])
        with open("/proc/uptime", "rb") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


# taken when this module is imported, the earliest moment the command line runs: the wall clock, and the process's
# CPU seconds and age then (the interpreter's start and the imports before this one)
_IMPORTED_AT, _IMPORT_CPU, _IMPORT_AGE = time.perf_counter(), time.process_time(), _process_seconds()


def _startup_seconds() -> float:
    """The command's start-up: the interpreter's start and imports up to this module's, as the process's CPU seconds
    then capped by its age (a process's age counts from its fork: a shell that execs glyph-rt after other work,
    `sh -c 'sleep 3 && glyph-rt ...'`, would add its 3 s; its sleep used no CPU of the process), plus the wall
    time since this module was imported."""
    return min(_IMPORT_AGE, _IMPORT_CPU) + time.perf_counter() - _IMPORTED_AT


# ---------------------------------------------------------------- argument checks (before any work)


def _positive_int(flag: str):
    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            n = 0
        if n < 1:
            raise argparse.ArgumentTypeError(f"{flag} must be a positive whole number, got {value!r}")
        return n
    return parse


def _port(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = -1
    if not 0 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"--port must be a whole number from 0 to 65535 (0: any free port), got "
                                         f"{value!r}")
    return n


def _device(value: str) -> str:
    if not DEVICE_RE.fullmatch(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a device; use cpu, cuda or cuda:N")
    return value


def _check_input(path: str | None, flag: str = "input") -> None:
    if path is None:
        return
    if path == "-":
        if sys.stdin is None or sys.stdin.closed:
            raise UsageError(f"{flag}: standard input is closed; pipe text in or give a file")
        return
    from .render.textio import check_input

    try:  # a file, a pipe, /dev/stdin, <(command); not a device such as /dev/zero
        check_input(path, flag)
    except OSError as e:
        # check_input's own errors name the flag; the system's (a directory on the path that may not be searched)
        # carry an errno and a message that does not
        raise UsageError(f"{flag}: cannot read {path!r} ({e.strerror})" if e.strerror else str(e)) from None
    except ValueError as e:
        raise UsageError(str(e)) from None


def _check_cuda(device: str | None, flag: str = "--device") -> None:
    """A CUDA device on a torch that sees none: an error before any weight is loaded (imports torch)."""
    if device is None or device == "cpu":
        return
    import torch

    if not torch.cuda.is_available():
        raise UsageError(f"{flag} {device}: this torch ({torch.__version__}) sees no CUDA device; "
                         "use --device cpu or install a CUDA build of torch")
    try:
        index = torch.device(device).index
    except RuntimeError:
        return  # not a device name: the command's own check names it
    if index is not None and index >= torch.cuda.device_count():
        raise UsageError(f"{flag} {device}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                         f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")


def _check_listen(host: str, port: int) -> None:
    """Binds every address `host` resolves to at `port` as the server will (asyncio's create_server, which uvicorn
    calls: SO_REUSEADDR, IPv6 sockets IPv6-only, an address of a family this machine lacks skipped) and closes the
    sockets at once: a host that does not resolve or is no address of this machine, or a port in use or
    privileged, is an error before the model loads. A socket that was bound but never listened leaves nothing
    behind when closed (no TIME_WAIT), and SO_REUSEADDR lets it bind beside an earlier server's TIME_WAIT
    connections as the server's own socket does, so the probe neither blocks nor refuses what the server can do."""
    import errno
    import socket

    try:
        infos = socket.getaddrinfo(host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as e:
        why = getattr(e, "strerror", None) or str(e)
        raise UsageError(f"--host {host!r} is neither an IP address nor a name that resolves ({why}); give an "
                         "address of this machine, e.g. 127.0.0.1 or 0.0.0.0 (every interface)") from None
    socks, bound = [], 0
    try:
        for family, type_, proto, _, addr in dict.fromkeys(infos):
            try:
                s = socket.socket(family, type_, proto)
            except OSError:  # a family this machine does not run (IPv6 switched off)
                continue
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == getattr(socket, "AF_INET6", None) and hasattr(socket, "IPPROTO_IPV6"):
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                s.bind(addr)
            except OSError as e:
                if e.errno == errno.EADDRNOTAVAIL:
                    continue
                where = f"{addr[0]}:{port}" if family != getattr(socket, "AF_INET6", None) else f"[{addr[0]}]:{port}"
                if e.errno == errno.EADDRINUSE:
                    raise UsageError(f"--port {port}: {where} is in use by another program; choose another --port "
                                     "(0: any free port) or stop the server there") from None
                if e.errno == errno.EACCES:
                    raise UsageError(f"--port {port}: binding {where} is not permitted ({e.strerror}; ports below "
                                     "1024 need privileges); choose a --port from 1024 up") from None
                raise UsageError(f"--host {host!r} --port {port}: cannot listen on {where} ({e.strerror})") from None
            bound += 1
    finally:
        for s in socks:
            s.close()
    if not bound:
        raise UsageError(f"--host {host!r} is not an address of this machine (cannot listen there); give one of its "
                         "addresses, e.g. 127.0.0.1 or 0.0.0.0 (every interface)")


def _tokenizer(args):
    """The text tokenizer, loaded (and so checked) before any page is drawn."""
    from .render.tokens import get_tokenizer

    if args.tokenizer == "none":
        if args.cmd == "stats":
            raise UsageError("stats needs a tokenizer: --tokenizer none is only for render")
        return None
    source = None if args.tokenizer == "default" else args.tokenizer
    if source is not None and not Path(source).exists():
        raise UsageError(f"--tokenizer {source!r} does not exist; give a tokenizer.json or a tokenizer directory")
    return get_tokenizer(source)


def _config(args):
    from .render.config import RenderConfig

    if args.config and args.preset:
        raise UsageError("give --config or --preset, not both")
    if args.config:
        if Path(args.config).is_dir():
            raise UsageError(f"--config {args.config!r} is a directory; give a RenderConfig JSON file")
        return RenderConfig.load(args.config)
    if args.preset:
        return RenderConfig.preset(args.preset)
    return RenderConfig()


def _text(args) -> tuple[str, int, str]:
    from .render.textio import read_text, sample_text

    if args.input is None:
        return sample_text(), 0, "built-in sample"
    try:
        text, replaced = read_text(args.input, args.errors)
    except OSError as e:
        raise UsageError(f"input: cannot read {args.input!r} ({e.strerror})") from None
    return text, replaced, "stdin" if args.input == "-" else args.input


def _check_backend(args) -> None:
    """--backend against --device, before any work (a GPU device also checks that it and the backend exist,
    which imports torch)."""
    from .render.pages import BACKENDS, DEVICE_BACKENDS

    cpu_backends = ("auto", *BACKENDS)
    if args.device == "cpu":
        if args.backend in cpu_backends:
            return
        if args.backend in DEVICE_BACKENDS:
            raise UsageError(f"--backend {args.backend} draws on a GPU: add --device cuda, or with --device cpu "
                             f"choose {', '.join(cpu_backends)}")
        raise UsageError(f"--backend {args.backend!r} is not a backend: with --device cpu choose "
                         f"{', '.join(cpu_backends)}; with --device cuda {', '.join(DEVICE_BACKENDS)}")
    if args.backend not in DEVICE_BACKENDS:
        raise UsageError(f"--backend {args.backend!r} is not a backend: with --device {args.device} choose "
                         f"{', '.join(DEVICE_BACKENDS)}; with --device cpu {', '.join(cpu_backends)}")
    from .render.gpu import resolve_device_backend

    resolve_device_backend(args.device, args.backend)  # an unavailable device or backend says why


def _document(args, config):
    from .render.pages import Document

    text, replaced, name = _text(args)
    # on a GPU device --backend picks the rasterizer; layout is always the C++ engine
    backend = args.backend if args.device == "cpu" else "auto"
    doc = Document(text, config, backend=backend, max_pages=args.max_pages)
    return doc, replaced, name


# ---------------------------------------------------------------- render


def cmd_render(args) -> int:
    with _terminate_as_interrupt():  # from the start: a run stopped at any point exits as interrupted
        return _render(args)


def _render(args) -> int:
    from .render.output import PageWriter, clear_output

    t0 = time.perf_counter()
    _check_input(args.input)
    _check_backend(args)
    out = output_dir(args.out, "--out")
    config = _config(args)
    tokenizer = _tokenizer(args)
    clear_output(out)  # before the long work: a run stopped before its first page leaves no other run's summary
    doc, replaced, name = _document(args, config)
    if tokenizer is not None:
        tokenizer.count_ahead(doc.held_text)  # beside the pages, on another core when there is one
    # setup: imports, argument checks, the tokenizer and reading the input (Document() timed its layout)
    seconds = {"startup": args.startup_seconds, "setup": time.perf_counter() - t0 - doc.seconds["layout"]}
    progress = not args.quiet and doc.num_pages >= PROGRESS_MIN_PAGES
    with PageWriter(out, doc, {"input": name, "replaced_invalid_utf8": replaced}, buffers=2) as writer:
        writer.write_pages(doc.iter_chunks(progress=progress, device=args.device, backend=args.backend, buffers=2))
        summary = writer.summary(None if args.tokenizer == "none" else args.tokenizer, complete=True)
        seconds.update(summary["seconds"])
        seconds["total"] = args.startup_seconds + time.perf_counter() - t0
        seconds["cpu"] = time.process_time()  # user + system, all threads, from process start
        summary["seconds"] = {k: round(v, 6) for k, v in seconds.items()}
        writer.finish(summary)
    if not args.quiet:
        _print(human_summary(summary, out))
    return 0


def human_summary(s: dict, out: Path | None = None) -> str:
    sec = s["seconds"]
    if not s["pages"]:
        lines = [f"{s['input']}: empty input, 0 pages"]
        if out is not None:
            lines.append(f"wrote {out}/summary.json")
        return "\n".join(lines)
    vt = {m: n for m, n in s["visual_tokens"].items() if n is not None}
    lines = []
    sizes = sorted({tuple(x) for x in s["page_sizes"]})
    size_txt = ", ".join(f"{w}x{h}" for w, h in sizes[:3]) + (" ..." if len(sizes) > 3 else "")
    parts = ", ".join(f"{label} {sec[k]:.3f}" for k, label in TIME_PARTS if k in sec)
    lines.append(f"{s['input']}: {s['characters']:,} characters -> {s['pages']} page{'s' * (s['pages'] != 1)} "
                 f"({size_txt} px) "
                 f"in {sec.get('total', sec['layout'] + sec['raster']):.3f} s ({parts})"
                 + (f"; {sec['cpu']:.3f} s of CPU" if "cpu" in sec else ""))
    if s["text_tokens"] is not None:
        ratio = s["compression_ratio"]
        lines.append(f"text tokens {s['text_tokens']:,} ({s['tokenizer']}) -> visual tokens "
                     + ", ".join(f"{vt[m]:,} {m} ({ratio[m] or 0:.2f}x)" for m in vt))
    else:
        lines.append("visual tokens " + ", ".join(f"{vt[m]:,} {m}" for m in vt))
    for m, why in s.get("visual_tokens_error", {}).items():
        lines.append(f"no visual tokens for {m}: {why}")
    miss = s["missing_glyphs"]
    if miss["count"]:
        shown = " ".join(f"U+{ord(c):04X}x{n}" for c, n in list(miss["chars"].items())[:8]) + (
            f" and {len(miss['chars']) - 8} more" if len(miss["chars"]) > 8 else "")
        lines.append(f"missing glyphs: {miss['count']} drawn as boxes ({shown})")
        for script, hint in miss.get("install", {}).items():
            lines.append(f"  {script}: {hint}")
    if s.get("stripped_chars"):
        lines.append(f"removed {s['stripped_chars']} soft hyphens / zero-width spaces (as Glyph does)")
    if s.get("replaced_invalid_utf8"):
        lines.append(f"replaced {s['replaced_invalid_utf8']} invalid UTF-8 sequences with U+FFFD")
    if s.get("truncated"):
        lines.append(f"stopped at --max-pages {s['pages']}: the rest of the text was not rendered (text tokens "
                     f"count the {s['text_tokens_chars']:,} characters on the pages)")
    if out is not None:
        pngs = f"{out}/page_001.png" + (f" .. page_{s['pages']:03d}.png" if s["pages"] > 1 else "")
        lines.append(f"wrote {pngs} and {out}/summary.json")
    return "\n".join(lines)


TIME_PARTS = (("startup", "start-up"), ("setup", "setup"), ("layout", "layout"), ("raster", "raster"),
              ("write_wait", "waiting for PNG writes"), ("tokens", "text tokens"))


# ---------------------------------------------------------------- stats, generate, backends


def cmd_stats(args) -> int:
    from .render.pages import page_visual_tokens

    _check_input(args.input)
    _check_backend(args)
    tokenizer = _tokenizer(args)
    doc, _, _ = _document(args, _config(args))
    sizes = []
    for _, _, chunk_sizes in doc.iter_chunks(device=args.device, backend=args.backend, buffers=1):
        sizes.extend(chunk_sizes)
    text_tokens = tokenizer.count(doc.held_text)  # as render's summary: the text the pages hold
    per_page, why = page_visual_tokens(sizes, args.model)  # a page the model refuses: render's summary has null
    if why:
        print(f"{args.model} refuses {why}", file=sys.stderr)
    visual = None if why else sum(per_page)
    _print(f"{text_tokens / visual:.3f}" if visual and text_tokens else "n/a")  # render's summary: null
    return 0


def cmd_generate(args) -> int:
    _check_input(args.context, "--context")
    if not Path(args.model).is_dir():
        raise UsageError(f"--model {args.model!r} is not a directory; give a local checkpoint directory")
    config = _config(args)
    _check_cuda(args.device)
    from .models import GlyphModel
    from .render.textio import read_text

    context, _ = read_text(args.context, args.errors)
    if not context.strip():  # before the model loads
        raise UsageError(f"--context {args.context!r} is empty or only whitespace; give a file holding the text "
                         "to read")
    model = GlyphModel.from_pretrained(args.model, render_config=config, kernels=args.kernels, device=args.device)
    try:
        a = model.generate(context, args.question, max_new_tokens=args.max_new_tokens)[0]
    except ValueError as e:  # the Python API names its arguments (questions[0]: ...): name the option instead
        msg = str(e)
        for api, flag in (("questions[0]: ", "--question: "), ("contexts[0]: ", f"--context {args.context!r}: ")):
            if msg.startswith(api):
                raise UsageError(flag + msg[len(api):]) from None
        raise
    t = a.timings
    _print(a.text.strip())
    print(f"[{a.pages} pages, {a.visual_tokens:,} visual tokens for a context of {a.text_tokens:,} text tokens "
          f"({a.compression:.2f}x); render {t['render']:.3f} s, vision {t['vision']:.3f} s, "
          f"prefill {t['prefill']:.3f} s, decode {t['decode']:.3f} s for {len(a.token_ids)} tokens]", file=sys.stderr)
    return 0


def _require(what: str, extra: str, modules) -> None:
    """Before any compute: the modules a command will import, named with the extra that brings them."""
    import importlib.util

    missing = [m for m in modules if m and importlib.util.find_spec(m) is None]
    if missing:
        raise RuntimeError(f"{what} needs {', '.join(missing)}: pip install 'glyph_rt[{extra}]'")


def cmd_eval(args) -> int:
    def numbers(flag, text, parse):
        try:
            return [parse(x) for x in text.split(",") if x.strip()] if text else None
        except ValueError as e:
            raise UsageError(f"{flag}: {e}") from None

    from .eval.benchmarks.ruler import parse_length
    from .eval.suite import run_suite

    lengths = numbers("--lengths", args.lengths, parse_length)  # unset: RULER's 4k, or the stored run's
    if args.max_length and args.suite != "mrcr":
        raise UsageError(f"--max-length applies to --suite mrcr (its rows' lengths), not {args.suite}")
    try:
        max_length = parse_length(args.max_length) if args.max_length else None
    except ValueError as e:
        raise UsageError(f"--max-length: {e}") from None
    dpis = numbers("--dpi", args.dpi, float)
    for name in ("data", "documents", "squad", "hotpotqa", "config"):
        if getattr(args, name) and not Path(getattr(args, name)).exists():
            raise UsageError(f"--{name} {getattr(args, name)!r} does not exist")
    checks = [("--target", t) for t in args.target] + ([("--extractor", args.extractor)] if args.extractor else [])
    for flag, t in checks:
        if not t.startswith("openai:") and not Path(t).is_dir():
            raise UsageError(f"{flag} {t!r} is neither a checkpoint directory nor openai:URL[:MODEL]")
    remote = [t.startswith("openai:") for _, t in checks]  # the others are checkpoints, run on the serving engine
    # transformers: glyph_rt.models, whose prompt module splits a thinking reply's answer off (any target's)
    _require("eval", "eval", ["matplotlib", "rapidfuzz", "rouge" if args.suite in ("longbench", "glyph") else "",
                              "transformers", *(["prometheus_client"] if not all(remote) else []),
                              "openai" if any(remote) else ""])
    args.preset = None
    config = _config(args)
    from .eval.suite import configs_for

    for d in dpis or [None]:  # the render settings, before any item is generated (and kept as the run's)
        try:
            configs_for(config, None if d is None else [d])
        except ValueError as e:
            raise UsageError(f"--dpi {d:g}: {e}" if d is not None else f"--config: {e}") from None
    if not all(remote):
        _check_cuda(args.device)
    s = run_suite(args.suite, args.target, out=output_dir(args.out, "--out"), config=config, dpis=dpis,
                  as_text=args.as_ == "text", progress=not args.quiet, max_new_tokens=args.max_new_tokens,
                  max_tokens=args.max_tokens, concurrency=args.concurrency, extractor=args.extractor,
                  target_kwargs={"repetition_penalty": args.repetition_penalty,
                                 **({"device": args.device} if args.device else {})}, data=args.data, lengths=lengths,
                  limit=args.limit, seed=args.seed, tasks=args.tasks.split(",") if args.tasks else None,
                  uuid=args.uuid, squad=args.squad, hotpotqa=args.hotpotqa, documents=args.documents,
                  truncate=args.truncate, row_configs=args.row_configs, longbench_e=args.longbench_e,
                  max_length=max_length)
    for r in s["runs"]:
        dpi = f" @ {r['dpi']:g} dpi" if r["dpi"] is not None else (
            f" @ {', '.join(f'{d:g}' for d in r['dpis'])} dpi" if r.get("dpis") else "")
        parts = [f"accuracy {r['accuracy']:.2f} on {r['items']} items"]
        if r.get("paper_avg") is not None:  # LongBench: the paper's Avg, the mean of the category means
            parts.append(f"Avg {r['paper_avg']:.2f} (the mean of the category means, as the paper's Table 1)")
        if r["mode"] == "image":  # text: no pages; n/a: no item with both counts (page images only)
            parts.append("compression " + ("n/a" if r["compression"] is None else f"{r['compression']:.2f}x overall"))
        parts += [f"{r['errors']} errors"] if r["errors"] else []
        _print(f"{r['target']} ({r['mode']}{dpi}): " + ", ".join(parts))
    _print(f"wrote {args.out}/results.jsonl, summary.md, accuracy_vs_length.png, accuracy_vs_compression.png")
    return 0


def cmd_styles(args) -> int:
    from .train.style_report import write_report
    from .train.styles import StyleSampler

    if args.n < 1:
        raise UsageError(f"--n: {args.n} must be >= 1")
    output_dir(args.out, "--out")
    sampler = StyleSampler.from_file(args.config, seed=args.seed) if args.config else StyleSampler(seed=args.seed)
    r = write_report(sampler, args.n, args.out)
    rejected = ", ".join(f"{k} {v}" for k, v in r["rejections"].items() if v) or "none"
    print(f"{r['samples']} styles from {r['draws']} draws (rejected: {rejected}); {r['font_pool']}")
    print(f"wrote {', '.join(f'{args.out}/{f}' for f in r['files'])}")
    for f, why in r["skipped"].items():
        print(f"skipped {f}: {why}", file=sys.stderr)
    return 0


def cmd_make_data(args) -> int:
    try:
        import pyarrow  # noqa: F401

        from .train.export import NoSamples, make_data
        from .train.styles import StyleSampler
    except ImportError as e:
        raise RuntimeError(f"make-data needs pyarrow: pip install 'glyph_rt[train]' ({e})") from None
    if not args.text_field:
        raise UsageError("--text-field is empty; give the records' field that holds the text (default: text)")
    output_dir(args.out, "--out")
    for path in args.input or []:
        if not Path(path).exists():
            raise UsageError(f"--input {path!r} does not exist")
    styles = StyleSampler.from_file(args.styles, seed=args.seed) if args.styles else None
    try:
        r = make_data(args.task, args.out, args.input, args.n, args.shard_size, args.seed, styles, args.max_pages,
                      progress=not args.quiet, text_field=args.text_field)
    except NoSamples as e:  # the run went through and made nothing: as a failed search, status 1
        print(f"glyph-rt: error: {e}", file=sys.stderr)
        return 1
    print(f"{args.out}: {r['written']} shards written ({r['samples']} samples, {r['pages']} pages), {r['kept']} kept "
          f"from an earlier run, {r['skipped']} records skipped"
          + "".join(f", {r[k]} {what}" for k, what in (
              ("missing_glyphs", "of them for glyphs no font draws"),
              ("placeholders_escaped", "literal <image> and special-token texts escaped")) if r.get(k)))
    return 0


def cmd_search(args) -> int:
    from .search import SearchError, load_settings, make_critic, run_search
    from .search.objective import make_objective

    try:
        settings = load_settings(args.config, args.overrides)
        ev = settings["evaluator"]
        if ev.get("kind") == "eval" and ev.get("target"):  # glyph_rt.eval's scoring, on an endpoint or in process
            remote = str(ev["target"]).startswith("openai:")
            _require("search with evaluator.kind eval", "search",
                     ["rapidfuzz", *(["openai"] if remote else ["transformers", "prometheus_client"])])
        out = output_dir(args.out, "--out")
        if ev.get("kind", "synthetic") == "synthetic":  # the default: say what its accuracy is not
            print("evaluator: synthetic, a closed-form stand-in with a known optimum (for tests): its accuracy says "
                  "nothing about a model; set evaluator.kind=legibility (CPU, no model) or eval", file=sys.stderr)
        objective = make_objective(settings)
        items = getattr(objective, "items", None)
        if ev.get("kind") == "eval" and items:
            from .eval.metrics import check_packages

            check_packages({it.metric for it in items})  # rouge, jieba: before any config is scored
        r = run_search(settings, objective, out, make_critic(settings), progress=not args.quiet)
    except SearchError as e:
        raise UsageError(str(e)) from None
    b = r.best
    floor = float(settings["objective"]["floor"])
    print(f"stopped ({r.stop_reason}) after {r.generations + 1} generations, {r.evaluations} configs evaluated; best "
          + (f"{b['hash']}: accuracy {b['accuracy']:.4f}, compression {b['compression']:.3f}"
             + ("" if r.feasible else f", below objective.floor {floor:g} (no config reached it)")
             if b and b["accuracy"] is not None else "none"))
    counts = ", ".join(f"{k} {v}" for k, v in r.counts.items() if v) or "none"
    print(f"repairs, rejections and failures: {counts}")
    print(f"wrote {', '.join(f'{out}/{f}' for f in r.files)} and {r.history}")
    for f, why in r.skipped.items():
        print(f"skipped {f}: {why}", file=sys.stderr)
    for w in r.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if b is None or b["accuracy"] is None:  # every evaluation failed: no config was scored
        print(f"glyph-rt: error: no config was scored: {_first_search_error(r)}", file=sys.stderr)
        return 1
    return 0


def _first_search_error(r) -> str:
    """The first failed evaluation's error in a search's history (read, not changed)."""
    from .search.history import History

    failed = [e for e in History(r.history).of_type("eval") if e.get("error")] if r.history else []
    if not failed:
        return f"{r.evaluations} configs evaluated, none scored"
    return (f"{'all ' if len(failed) == r.evaluations else ''}{len(failed)} of {r.evaluations} evaluations failed; "
            f"the first ({failed[0].get('hash')}): {failed[0]['error']}")


def cmd_backends(args) -> int:
    from ._ext import backends

    for name, info in backends().items():
        _print(f"{name:10s} {'yes' if info['available'] else 'no ':3s}  {info['why']}")
    return 0


def cmd_make_tiny_checkpoint(args) -> int:
    try:
        from .models.tiny import make_tiny_checkpoint
    except ImportError as e:
        raise RuntimeError(f"make-tiny-checkpoint needs the models extra: pip install 'glyph_rt[models]' ({e})") from None
    if args.dir and Path(args.dir).is_dir() and any(Path(args.dir).iterdir()):
        raise UsageError(f"{args.dir!r} is not empty; give a new or empty directory (nothing was written)")
    output_dir(args.dir, "DIR")
    out = make_tiny_checkpoint(args.dir, args.model)
    print(f"wrote a tiny random-weight {args.model} checkpoint to {out} (for dry runs: its answers are noise); "
          f"try: glyph-rt generate --model {out} --context FILE --question TEXT --max-new-tokens 8")
    return 0


def cmd_serve(args) -> int:
    """`serve` runs the OpenAI-compatible server; `batch` answers a Batch API file (same engine and options)."""
    if not Path(args.model).is_dir():
        raise UsageError(f"--model {args.model!r} is not a directory; give a local checkpoint directory")
    if args.cmd == "batch":
        _check_input(args.input, "--input")
        output_file(args.output, "--output")
    for flag, v in (("--timeout", args.timeout), ("--max-queue-mb", args.max_queue_mb),
                    *([("--max-body-mb", args.max_body_mb)] if args.cmd == "serve" else [])):
        if not 0 < v < float("inf"):  # NaN too
            raise UsageError(f"{flag} must be a positive number, got {v:g} (--cache-mb, --threshold and "
                             "--kv-cache-mb may be 0)")
    for flag, v, zero in (("--cache-mb", args.cache_mb, "the document cache off"),
                          ("--threshold", args.threshold, "every text rendered"),
                          ("--kv-cache-mb", args.kv_cache_mb, "70% of the GPU's free memory at start, no limit on "
                           "the CPU")):
        if not 0 <= v < float("inf"):  # NaN too; -0.5 as well (it was checked as v + 1 > 0)
            raise UsageError(f"{flag} must be a number, 0 or more (0: {zero}), got {v:g}")
    media = args.allowed_media_dir
    if media is not None and not Path(media).is_dir():
        raise UsageError(f"--allowed-media-dir {media!r} must be an existing directory (file:// image URLs are read "
                         "under it)")
    # before any weight is loaded: every package of the serve extra that the command imports, the server's
    # (fastapi, starlette, uvicorn: imported once the model has loaded) included; `batch` runs without them
    _require(args.cmd, "serve", ["transformers", "pydantic", "prometheus_client",
                                 *(["fastapi", "starlette", "uvicorn"] if args.cmd == "serve" else [])])
    try:
        from .serve.service import ChatService, ServeConfig
    except ImportError as e:
        raise RuntimeError(f"{args.cmd} needs the serve extra: pip install 'glyph_rt[serve]' ({e})") from None
    requests = None
    if args.cmd == "batch":  # a file that is not a Batch API file's fails here, not after the model has loaded
        from .serve.batch import check_output, read_requests

        requests = read_requests(args.input)
        check_output(args.output)
    cfg = ServeConfig(model=args.model, served_model_name=args.served_model_name, render_config=_config(args),
                      device=args.device, kernels=args.kernels, max_batch=args.max_batch, max_queue=args.max_queue,
                      max_queue_bytes=int(args.max_queue_mb * 2**20), prefill_chunk=args.prefill_chunk,
                      kv_cache_bytes=int(args.kv_cache_mb * 2**20) if args.kv_cache_mb else None,
                      timeout=args.timeout, cache_bytes=int(args.cache_mb * 2**20), threshold=args.threshold,
                      max_pages=args.max_pages, default_max_tokens=args.max_tokens,
                      allowed_media_dir=media)
    _check_cuda(args.device)  # before any weight is loaded
    if args.cmd == "serve":
        _check_listen(args.host, args.port)  # released again before uvicorn binds it, after the model loads
    if args.cmd == "serve" and not args.engine_in_process:
        from .serve.engine_process import EngineProcess

        backend = EngineProcess(cfg)
    else:
        backend = ChatService.from_config(cfg)
    try:
        if args.cmd == "batch":
            from .serve.batch import run_batch

            c = run_batch(backend, args.input, args.output, progress=not args.quiet, requests=requests)
            again = f"; {c['retried']} run again after the server failed them" if c["retried"] else ""
            before = f", {c['failed_before']} of them failed" if c["failed_before"] else ""
            print(f"{c['ok']} answered, {c['failed']} failed, {c['skipped']} already in {args.output}{before} "
                  f"(of {c['total']}){again}", file=sys.stderr)
            return 0 if not (c["failed"] or c["failed_before"]) else 1  # 1 while the output holds an error line
        import uvicorn

        from .serve.app import build_app

        app = build_app(backend, api_key=args.api_key or os.environ.get("GLYPH_RT_API_KEY"),
                        max_body_bytes=int(args.max_body_mb * 2**20))
        uvicorn.run(app, host=args.host, port=args.port, log_level="info")
        return 0
    finally:
        backend.shutdown()


def cmd_train(args) -> int:
    from .train.config import load_config

    rest, config, overrides, show = list(args.overrides), args.config, [], args.print_config
    while rest:  # the options may come after the overrides too
        a = rest.pop(0)
        if a == "--config" and rest:
            config = rest.pop(0)
        elif a.startswith("--config="):
            config = a.split("=", 1)[1]
        elif a == "--print-config":
            show = True
        elif a.startswith("-"):
            raise UsageError(f"train: unknown option {a!r}; give --config FILE, --print-config and key=value "
                             "overrides")
        else:
            overrides.append(a)
    cfg = load_config(args.stage, config, overrides, check_paths=not show)  # every check before any compute
    if show:
        sys.stdout.write(cfg.to_yaml())
        return 0
    _require(f"train {cfg.stage}", "train", ["transformers", "rapidfuzz" if cfg.stage == "rl" else "",
                                              "peft" if cfg.model.lora.r else "", "tensorboard" if cfg.tensorboard
                                              else "", "matplotlib" if cfg.plot else ""])
    for name, opts in (("data.loader", cfg.data.loader), ("data.eval_loader", cfg.data.eval_loader)):
        corpus = opts.get("corpus") if isinstance(opts, dict) else None  # null: the bundled corpus
        for path in [corpus] if isinstance(corpus, (str, os.PathLike)) else corpus or []:
            if isinstance(path, (str, os.PathLike)) and not Path(path).exists():  # before the model loads
                raise UsageError(f"{name}.corpus: {str(path)!r} does not exist")
    output_dir(cfg.out_dir, "out_dir")
    from .train.trainer import run

    r = run(cfg)
    if r.get("loss") is not None:
        print(f"{cfg.stage}: {r['step']} steps, last loss {r['loss']:.4f}; logs, checkpoints in {cfg.out_dir}")
    return 0


# ---------------------------------------------------------------- parser and entry point


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(prog="glyph-rt", description="glyph_rt: render text into pages for VLMs")
    p.add_argument("--version", action="version", version=f"glyph-rt {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp):
        sp.add_argument("input", nargs="?", default=None, help="text file, '-' for stdin (default: built-in sample)")
        sp.add_argument("--config", help="RenderConfig JSON (glyph_rt's format or Glyph's dashed keys)")
        sp.add_argument("--preset", help="glyph, document_style, web_style, dark_mode, code_style, artistic_pixel")
        sp.add_argument("--device", default="cpu", type=_device, help="where pages are drawn: cpu, cuda or cuda:N")
        sp.add_argument("--backend", default="auto",
                        help="on cpu: auto, cpu or reference; on cuda: auto, cuda, triton or cpu")
        sp.add_argument("--tokenizer", default="default", help="tokenizer.json or HF tokenizer dir for the text-token count "
                        "(default: Qwen's; render: 'none' skips counting)")
        sp.add_argument("--errors", default="strict", choices=["strict", "replace"], help="invalid UTF-8 handling")
        sp.add_argument("--max-pages", type=_positive_int("--max-pages"), default=None,
                        help="stop after this many pages")

    r = sub.add_parser("render", help="render text to PNG pages and a JSON summary")
    common(r)
    r.add_argument("--out", default="glyph_pages",
                   help="output directory (default: glyph_pages); page files and summary.json of an earlier "
                        "run there are removed first")
    r.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    r.set_defaults(func=cmd_render)
    s = sub.add_parser("stats", help="print the compression ratio (text tokens / visual tokens)")
    common(s)
    s.add_argument("--model", default="glm4v", choices=["glm4v", "qwen2_5_vl"])
    s.set_defaults(func=cmd_stats)
    g = sub.add_parser("generate", help="answer a question about a long text read as pages by a Glyph checkpoint")
    g.add_argument("--model", required=True, help="local checkpoint directory (GLM-4.1V / Qwen2.5-VL)")
    g.add_argument("--context", required=True, help="text file to read as pages, '-' for stdin")
    g.add_argument("--question", required=True, help="the question, kept as text")
    g.add_argument("--config", help="RenderConfig JSON (glyph_rt's format or Glyph's dashed keys)")
    g.add_argument("--preset", help="a RenderConfig preset")
    g.add_argument("--max-new-tokens", type=_positive_int("--max-new-tokens"), default=None,
                   help="answer length at most (default: the checkpoint's generation_config.json max_new_tokens, "
                        "else 128)")
    g.add_argument("--kernels", default="auto", choices=["auto", "off"], help="glyph_rt kernels or stock HF")
    g.add_argument("--device", default=None, type=_device, help="cuda or cpu (default: cuda when available)")
    g.add_argument("--errors", default="strict", choices=["strict", "replace"], help="invalid UTF-8 handling")
    g.set_defaults(func=cmd_generate)
    ev = sub.add_parser("eval", help="score a checkpoint or an OpenAI-compatible endpoint on RULER, LongBench, MRCR, "
                        "MMLongBench-Doc or Glyph's evaluation data; resumable")
    ev.add_argument("--suite", required=True, choices=["ruler", "longbench", "mrcr", "mmlongbench-doc", "glyph"])
    ev.add_argument("--target", required=True, action="append", help="checkpoint directory or openai:URL[:MODEL]; "
                    "repeat to compare targets")
    ev.add_argument("--out", required=True, help="results directory (a rerun resumes there)")
    ev.add_argument("--lengths", help="RULER context lengths in tokens, e.g. 4k,8k,128k (default: 4k, or the "
                    "resumed run's)")
    ev.add_argument("--config", help="RenderConfig JSON (glyph_rt's format or Glyph's dashed keys)")
    ev.add_argument("--dpi", help="render at each of these dpi, e.g. 72,96,120 (test-time scaling)")
    ev.add_argument("--limit", type=_positive_int("--limit"), help="items per task (RULER, default 10), dataset or file")
    ev.add_argument("--as", dest="as_", choices=["image", "text"], default="image",
                    help="send contexts as pages (default) or as text (the text-only baseline)")
    ev.add_argument("--data", help="local benchmark data: LongBench dir, MRCR parquet/JSONL, samples.json, Glyph's")
    ev.add_argument("--documents", help="MMLongBench-Doc: directory of the PDFs")
    ev.add_argument("--tasks", help="comma-separated RULER tasks, LongBench datasets or MRCR needle counts")
    ev.add_argument("--uuid", action="store_true", help="RULER: include the UUID-needle tasks (left out by default)")
    ev.add_argument("--row-configs", action="store_true", help="glyph: render each row with its own config (Glyph's "
                    "dashed keys) over --config, as Glyph's rendering scripts do (default: --config for every row)")
    ev.add_argument("--squad", help="RULER qa_1: a SQuAD JSON file")
    ev.add_argument("--hotpotqa", help="RULER qa_2: a HotpotQA JSON file")
    ev.add_argument("--seed", type=int, help="RULER generation seed (default: 0, or the resumed run's)")
    ev.add_argument("--truncate", type=_positive_int("--truncate"), help="LongBench: a token budget as LongBench's "
                    "pred.py: a text prompt over N keeps its first and last N/2 tokens; the pages' context gets N less "
                    "the image prompt's tokens")
    ev.add_argument("--longbench-e", action="store_true", help="LongBench: LongBench-E's <dataset>_e.jsonl files of "
                    "--data instead of LongBench's <dataset>.jsonl")
    ev.add_argument("--max-new-tokens", type=_positive_int("--max-new-tokens"), help="cap each task's generation budget")
    ev.add_argument("--max-tokens", type=_positive_int("--max-tokens"), help="every item's generation budget instead of "
                    "its task's, for a model that reasons before it answers (Glyph's evaluation scripts use 8192; "
                    "answers are scored after the </think> of a thinking block); rows of another budget are not "
                    "reused")
    ev.add_argument("--max-length", help="MRCR: keep the rows whose context has at most this many text tokens, e.g. "
                    "128k (the paper's Table 2 range; the published files go to 1M), counted as the length bins are")
    ev.add_argument("--repetition-penalty", type=float, default=1.0, help="of the greedy decoding (default: 1.0; "
                    "Glyph's official evaluation scripts use 1.1); an endpoint receives it as vLLM's extension")
    ev.add_argument("--device", type=_device, help="in-process targets: cuda or cpu (default: cuda when available)")
    ev.add_argument("--concurrency", type=_positive_int("--concurrency"), default=1,
                    help="items in flight at once: requests to an endpoint, or answers an in-process checkpoint's "
                         "engine batches together (default: 1)")
    ev.add_argument("--extractor", help="MMLongBench-Doc: a target (openai:URL[:MODEL] or a checkpoint) that extracts "
                    "the short answer from each response before scoring, as the benchmark's reference does with "
                    "GPT-4o (default: score the response as given)")
    ev.add_argument("--quiet", action="store_true", help="no progress bars")
    ev.set_defaults(func=cmd_eval)
    st = sub.add_parser("styles", help="sample rendering styles: contact sheet, distribution plot, configs")
    st.add_argument("--n", type=int, default=64, help="number of styles (default: 64)")
    st.add_argument("--seed", type=int, default=0, help="sampler seed (default: 0)")
    st.add_argument("--out", default="glyph_styles", help="output directory (default: glyph_styles)")
    st.add_argument("--config", help="styles YAML (default: the built-in glyph_rt/data/styles.yaml)")
    st.set_defaults(func=cmd_styles)
    md = sub.add_parser("make-data", help="training samples as Parquet shards (PNG pages + messages)")
    md.add_argument("--task", required=True, choices=["ocr", "lm", "gen", "qa"], help="the task family")
    md.add_argument("--input", nargs="+", help="text files or directories, .jsonl, .parquet or a datasets "
                    "directory (default: the bundled corpus)")
    md.add_argument("--out", required=True, help="output directory (shards kept there are not rewritten)")
    md.add_argument("--n", type=_positive_int("--n"), help="samples (default: one per record)")
    md.add_argument("--shard-size", type=_positive_int("--shard-size"), default=256, help="samples per shard")
    md.add_argument("--seed", type=int, default=0, help="seed of the styles and the task choices (default: 0)")
    md.add_argument("--max-pages", type=_positive_int("--max-pages"), default=4, help="pages per sample at most")
    md.add_argument("--styles", help="styles YAML (default: the built-in glyph_rt/data/styles.yaml)")
    md.add_argument("--text-field", default="text", help="the records' field that holds the text (.jsonl, .json, "
                    ".parquet, datasets; default: text)")
    md.add_argument("--quiet", action="store_true", help="no progress bar")
    md.set_defaults(func=cmd_make_data)
    se = sub.add_parser("search", help="genetic (optionally LLM-guided) search over rendering configs")
    se.add_argument("overrides", nargs="*", help="key=value settings over the file's (e.g. objective.floor=0.9)")
    se.add_argument("--config", help="search YAML (default: built-in defaults)")
    se.add_argument("--out", default="glyph_search", help="output directory; its history.jsonl is resumed")
    se.add_argument("--quiet", action="store_true", help="no progress bar")
    se.set_defaults(func=cmd_search)
    b = sub.add_parser("backends", help="list the available backends")
    b.set_defaults(func=cmd_backends)
    t = sub.add_parser("make-tiny-checkpoint", help="write a tiny random-weight checkpoint for offline dry runs")
    t.add_argument("dir", help="new or empty directory to write it to")
    t.add_argument("--model", default="glm4v", choices=["glm4v", "qwen2_5_vl"], help="model type (default: glm4v)")
    t.set_defaults(func=cmd_make_tiny_checkpoint)
    for name, text in (("serve", "serve a checkpoint over HTTP with the OpenAI API (chat completions, SSE)"),
                       ("batch", "answer an OpenAI Batch API file (JSONL) offline; resumable")):
        sv = sub.add_parser(name, help=text)
        sv.add_argument("--model", required=True, help="local checkpoint directory (GLM-4.1V / Qwen2.5-VL)")
        if name == "serve":
            sv.add_argument("--host", default="127.0.0.1")
            sv.add_argument("--port", type=_port, default=8000, help="0 to 65535 (0: any free port; default: 8000)")
            sv.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (or set GLYPH_RT_API_KEY)")
            sv.add_argument("--max-body-mb", type=float, default=64, help="largest request body (default: 64)")
            sv.add_argument("--engine-in-process", action="store_true",
                            help="run the engine on a thread of the server's process instead of a process of its own")
        else:
            sv.add_argument("--input", required=True, help="requests.jsonl in the OpenAI Batch API format")
            sv.add_argument("--output", required=True, help="results.jsonl; ids already in it are skipped")
            sv.add_argument("--quiet", action="store_true", help="no progress bar")
        sv.add_argument("--served-model-name", help="the model id clients use (default: the directory's name)")
        sv.add_argument("--config", help="RenderConfig JSON for long texts (requests may override within limits)")
        sv.add_argument("--preset", help="a RenderConfig preset")
        sv.add_argument("--device", default=None, type=_device, help="cuda or cpu (default: cuda when available)")
        sv.add_argument("--kernels", default="auto", choices=["auto", "off"], help="glyph_rt kernels or stock HF")
        sv.add_argument("--max-batch", type=_positive_int("--max-batch"), default=32, help="running requests")
        sv.add_argument("--max-queue", type=_positive_int("--max-queue"), default=256, help="waiting requests")
        sv.add_argument("--max-queue-mb", type=float, default=4096,
                        help="rendered pages (pixel_values) that waiting requests may hold, MiB (default: 4096)")
        sv.add_argument("--kv-cache-mb", type=float, default=0,
                        help="KV cache of the running batch at its longest, MiB; a request waits until it fits "
                             "(default 0: 70%% of the GPU's free memory at start, no limit on the CPU)")
        sv.add_argument("--prefill-chunk", type=_positive_int("--prefill-chunk"), default=2048,
                        help="prompt tokens per step while other requests decode (default: 2048)")
        sv.add_argument("--timeout", type=float, default=600, help="seconds per request (default: 600)")
        sv.add_argument("--cache-mb", type=float, default=1024, help="document cache budget, MiB (0: off)")
        sv.add_argument("--threshold", type=int, default=4000, help="text longer than this (characters) is rendered")
        sv.add_argument("--max-pages", type=_positive_int("--max-pages"), default=256, help="pages per request")
        sv.add_argument("--max-tokens", type=_positive_int("--max-tokens"), default=256,
                        help="max_tokens when a request gives none")
        sv.add_argument("--allowed-media-dir", help="image_url file:// URLs may read under this directory "
                        "(default: none may)")
        sv.set_defaults(func=cmd_serve)
    tr = sub.add_parser("train", help="train a stage (cpt, sft, rl) from a YAML config with key=value overrides")
    tr.add_argument("stage", choices=["cpt", "sft", "rl"])
    tr.add_argument("--config", help="YAML config (default: the stage's paper defaults)")
    tr.add_argument("--print-config", action="store_true", help="print the resolved config (every key, as YAML "
                    "that --config reads) and exit")
    tr.add_argument("overrides", nargs=argparse.REMAINDER, help="dotted key=value overrides, e.g. optim.lr=1e-5 model.path=DIR")
    tr.set_defaults(func=cmd_train)
    return p


def _stdout_failed(why: str | None) -> int:
    print(f"glyph-rt: error: cannot write to standard output ({why})", file=sys.stderr)
    # nothing more can reach it: point the descriptor at /dev/null so the exit-time flush is quiet
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, AttributeError, ValueError):
        pass
    return 1


def _parse_args(parser: argparse.ArgumentParser, argv) -> argparse.Namespace:
    """parse_args, except that `search`'s key=value overrides may also follow its options (argparse gives a
    positional list only its first run of arguments; parse_intermixed_args refuses subcommands)."""
    args, extra = parser.parse_known_args(argv)
    if extra and getattr(args, "cmd", None) == "search" and not any(a.startswith("-") for a in extra):
        args.overrides = [*args.overrides, *extra]  # load_settings refuses what is not key=value
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv=None) -> int:
    startup = _startup_seconds()
    if sys.stdout is None:  # started with stdout closed (>&-): its output would be lost, or land in a file it opens
        print("glyph-rt: error: cannot write to standard output (it is closed)", file=sys.stderr)
        return 1
    try:
        args = _parse_args(build_parser(), argv)
        args.startup_seconds = startup if argv is None else 0.0
        rc = args.func(args)
        try:
            if sys.stdout is not None:
                sys.stdout.flush()
        except OSError as e:
            raise StdoutError(e.strerror) from None
        return rc
    except Terminated as e:
        print(f"glyph-rt: {e}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("glyph-rt: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except StdoutError as e:
        return _stdout_failed(str(e))
    except MemoryError as e:
        why = str(e) if str(e) not in ("", "std::bad_alloc") else "out of memory; give it less at once (a shorter " \
            "input, fewer pages or samples) or run it on a machine with more memory"
        print(f"glyph-rt: error: {why}", file=sys.stderr)
    except (UsageError, ValueError, FileNotFoundError, RuntimeError, ImportError) as e:
        print(f"glyph-rt: error: {e}", file=sys.stderr)
    except OSError as e:  # e.g. a full disk under --out: the message names the file
        print(f"glyph-rt: error: {e}", file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
