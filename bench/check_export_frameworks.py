"""Loads `glyph-rt make-data` shards with LLaMA-Factory's or ms-swift's own data pipeline and checks the result.

    python bench/check_export_frameworks.py --framework llamafactory|swift --model CKPT --data DIR [DIR ...]
                                            [--out DIR] [--results]

Run it in an environment that has the framework (LLaMA-Factory or ms-swift); glyph_rt need not be installed
there, their version pins conflict with ours. DIR: a `make-data --out` directory. CKPT: a GLM-4.1V checkpoint
directory (tokenizer + preprocessor config; `glyph-rt make-tiny-checkpoint CKPT` writes a tiny one).

The shards go through the path a user's training run takes, with the "glm4v" template of each framework:
LLaMA-Factory: a dataset_info.json entry (sharegpt formatting, our columns and tags, file_name = DIR), then
`get_dataset` (load, align, tokenize) and the GLM-4.1V plugin's `get_mm_inputs` (what its collator calls);
ms-swift: `swift.dataset.load_dataset([DIR])` (its messages preprocessor), then the glm4v template's `encode`.
Every sample must come out with
  - the roles and contents of the shard (ms-swift's rows are compared as they are; LLaMA-Factory's as tokens:
    the user's text before "<|assistant|>", in order),
  - its pages as images, pixel for pixel, each turned into a [1, h/14, w/14] grid (no resize),
  - one image block per page: as many "<|begin_of_image|>" as pages, h*w/784 image tokens per page,
  - the loss on the assistant turn only: the labelled tokens are one span after the last image, and decode to
    the assistant's content plus template markup (the end token, an empty <think></think>).
Exit status 0 when every sample passes, 1 otherwise; the results (a row per directory) go to --out as
export-<framework>.json.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.machinery
import io
import json
import os
import sys
import tempfile
import types
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import add_output_args, write_result  # noqa: E402

PLACEHOLDER = "<image>"
GLM_MAX_PIXELS = 28 * 28 * 15000  # Glm4vImageProcessor's longest_edge (a pixel count); LLaMA-Factory's default: 768**2
MARKUP = ("<think>", "</think>", "<|endoftext|>", "<|user|>", "<|observation|>")
NOTES: list[str] = []


def read_shards(d: Path) -> list[dict]:
    """The samples of a make-data directory, read with pyarrow alone (the reference)."""
    files = sorted(d.glob("*.parquet"))
    if not files:
        raise SystemExit(f"--data {str(d)!r}: no *.parquet shards there; give a `glyph-rt make-data --out` directory")
    return [r for f in files for r in pq.read_table(f).to_pylist()]


def to_pil(image) -> Image.Image:
    """A page as each framework may hand it over: PIL image, PNG bytes, {"bytes", "path"} or a path."""
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, dict):
        image = image["bytes"] if image.get("bytes") is not None else image["path"]
    return Image.open(io.BytesIO(image) if isinstance(image, bytes) else image)


def pages_key(images) -> str:
    """Identifies a sample by its pages' pixels (framework order need not be the shards' order)."""
    h = hashlib.sha1()
    for im in images:
        im = to_pil(im).convert("RGB")
        h.update(repr(im.size).encode())
        h.update(im.tobytes())
    return h.hexdigest()


def check_encoded(row: dict, input_ids, labels, grids, ids: dict, tok) -> list[str]:
    """Problems with one encoded sample: image blocks, grids, roles as tokens, where the loss goes."""
    errs = []
    input_ids, labels = list(map(int, input_ids)), list(map(int, labels))
    sizes = [to_pil(im).size for im in row["images"]]
    tags = sum(m["content"].count(PLACEHOLDER) for m in row["messages"])
    if tags != len(sizes):
        errs.append(f"the shard row has {tags} {PLACEHOLDER} for {len(sizes)} pages")
    want_grids = [[1, h // 14, w // 14] for w, h in sizes]
    if [list(map(int, g)) for g in grids] != want_grids:
        errs.append(f"image grids {[list(map(int, g)) for g in grids]} != {want_grids} (pages resized?)")
    n_begin = input_ids.count(ids["begin"])
    if n_begin != len(sizes):
        errs.append(f"{n_begin} image blocks for {len(sizes)} pages")
    want_tokens = sum(w * h // 784 for w, h in sizes)
    if input_ids.count(ids["image"]) != want_tokens:
        errs.append(f"{input_ids.count(ids['image'])} image tokens, expected {want_tokens}")
    loss = [i for i, t in enumerate(labels) if t != -100]
    if not loss:
        return errs + ["no labelled token"]
    if loss != list(range(loss[0], loss[-1] + 1)) or any(labels[i] != input_ids[i] for i in loss):
        errs.append("labels are not one span of the input ids")
    last_image = max((i for i, t in enumerate(input_ids) if t in (ids["image"], ids["end"])), default=-1)
    if loss[0] <= last_image:
        errs.append("labels start before the last image token")
    vocab = len(tok)
    skip = {ids["image"], ids["begin"], ids["end"]}
    prompt = tok.decode([t for t in input_ids[:loss[0]] if t not in skip and t < vocab])
    user, answer = row["messages"][0]["content"], row["messages"][1]["content"]
    at = prompt.find("<|user|>")
    if at < 0 or "<|assistant|>" not in prompt[at:]:
        errs.append("no <|user|> ... <|assistant|> turn in the prompt")
    for piece in filter(None, (p.strip() for p in user.split(PLACEHOLDER))):
        found = prompt.find(piece, at)
        if found < 0:
            errs.append(f"user text {piece[:40]!r} missing from the prompt (or out of order)")
            break
        at = found + len(piece)
    response = tok.decode(labels[loss[0]:])
    rest = response.replace(answer.strip(), "", 1) if answer.strip() in response else None
    if rest is None:
        errs.append(f"the labelled tokens do not hold the assistant's content: {response[:60]!r}")
    else:
        for m in MARKUP:
            rest = rest.replace(m, "")
        if rest.strip():
            errs.append(f"labelled tokens beyond the assistant's content: {rest.strip()[:60]!r}")
    return errs


def stub_torchaudio() -> None:
    """LLaMA-Factory imports torchaudio at start-up but needs it only for audio inputs; a CPU-only torch from a
    local wheel has no matching torchaudio build, so a placeholder stands in when the import fails."""
    try:
        import torchaudio  # noqa: F401
    except (ImportError, OSError):
        m = types.ModuleType("torchaudio")
        m.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)
        sys.modules["torchaudio"] = m
        NOTES.append("torchaudio missing: a placeholder module stands in (used by LLaMA-Factory for audio only)")


def image_only_processor_fallback() -> None:
    """Glm4vProcessor needs torchvision for its video processor; where torchvision is missing (no CPU build of it
    for this torch), AutoProcessor returns a Glm4vProcessor with the real PIL image processor and no video one."""
    import transformers

    if getattr(transformers.AutoProcessor.from_pretrained, "image_only", False):
        return
    try:
        import torchvision  # noqa: F401
        return
    except (ImportError, OSError, RuntimeError):
        pass
    from transformers import AutoTokenizer, Glm4vProcessor
    from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil

    def from_pretrained(path, *args, **kwargs):
        p = Glm4vProcessor.__new__(Glm4vProcessor)
        p.tokenizer = AutoTokenizer.from_pretrained(path)
        p.image_processor = Glm4vImageProcessorPil.from_pretrained(path)
        p.image_token, p.video_token = "<|image|>", "<|video|>"
        p.image_token_id = p.tokenizer.convert_tokens_to_ids(p.image_token)
        p.video_token_id = p.tokenizer.convert_tokens_to_ids(p.video_token)
        return p

    from_pretrained.image_only = True
    transformers.AutoProcessor.from_pretrained = from_pretrained
    NOTES.append("torchvision missing: AutoProcessor gives a Glm4vProcessor with Glm4vImageProcessorPil, no video")


def dataset_info(d: Path) -> dict:
    """The dataset_info.json entry that points LLaMA-Factory at a make-data directory."""
    return {"file_name": str(d), "formatting": "sharegpt", "columns": {"messages": "messages", "images": "images"},
            "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                     "system_tag": "system"}}


def run_llamafactory(d: Path, model: str, rows: list[dict], image_max_pixels: int) -> dict:
    stub_torchaudio()
    image_only_processor_fallback()
    import llamafactory
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "dataset_info.json").write_text(json.dumps({"glyph": dataset_info(d.resolve())}))
        model_args, data_args, training_args, *_ = get_train_args(dict(
            stage="sft", model_name_or_path=model, template="glm4v", dataset="glyph", dataset_dir=tmp,
            cutoff_len=1_000_000, do_train=True, finetuning_type="full", output_dir=str(Path(tmp, "out")),
            overwrite_cache=True, report_to="none", image_max_pixels=image_max_pixels))
        tm = load_tokenizer(model_args)
        if tm["processor"] is None:
            raise SystemExit(f"LLaMA-Factory loaded no processor from {model!r}: it needs preprocessor_config.json")
        template = get_template_and_fix_tokenizer(tm["tokenizer"], data_args)
        with contextlib.redirect_stdout(sys.stderr):  # it prints the first example's ids and text
            data = get_dataset(template, model_args, data_args, training_args, stage="sft", **tm)["train_dataset"]
        tok, proc = tm["tokenizer"], tm["processor"]
        ids = {k: tok.convert_tokens_to_ids(t) for k, t in
               [("image", "<|image|>"), ("begin", "<|begin_of_image|>"), ("end", "<|end_of_image|>")]}
        def check(ex, row):
            mm = template.mm_plugin.get_mm_inputs(ex["images"], [], [], [len(ex["images"])], [0], [0], [0], proc)
            return check_encoded(row, ex["input_ids"], ex["labels"], mm["image_grid_thw"].tolist(), ids, tok)

        results = check_each(data, rows, check)
    return {"framework": "llamafactory", "version": llamafactory.__version__, "samples": len(data), "errors": results}


def check_each(data, rows: list[dict], check) -> list[list[str]]:
    """check(example, shard row) for every example the framework made, matched to its shard row by its pages."""
    by_key = {pages_key(r["images"]): r for r in rows}
    results = []
    for ex in data:
        row = by_key.get(pages_key(ex["images"]))
        results.append(["a sample whose pages match no shard row"] if row is None else check(ex, row))
    return results


def run_swift(d: Path, model: str, rows: list[dict], image_max_pixels: int) -> dict:
    image_only_processor_fallback()
    import swift
    from swift.dataset import load_dataset
    from swift.model import get_processor
    from swift.template import get_template

    data, _ = load_dataset([str(d)], num_proc=1, load_from_cache_file=False)
    proc = get_processor(model, model_type="glm4v")
    template = get_template(proc, template_type="glm4v", max_length=1_000_000)  # max_pixels None: no resize
    template.set_mode("train")
    tok = template.tokenizer
    ids = {"image": template.image_token, "begin": template.begin_of_image_token, "end": template.end_of_image_token}

    def check(ex, row):
        errs = []
        got = [{"role": m["role"], "content": m["content"]} for m in ex["messages"]]
        if got != row["messages"]:
            errs.append(f"messages differ: {[m['role'] for m in got]} vs {[m['role'] for m in row['messages']]}")
        enc = template.encode(dict(ex))
        errs += check_encoded(row, enc["input_ids"], enc["labels"], enc["image_grid_thw"].tolist(), ids, tok)
        return errs

    results = check_each(data, rows, check)
    return {"framework": "ms-swift", "version": swift.__version__, "samples": len(data), "errors": results}


RUNNERS = {"llamafactory": run_llamafactory, "swift": run_swift}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--framework", required=True, choices=sorted(RUNNERS))
    ap.add_argument("--model", required=True, help="GLM-4.1V checkpoint dir (tokenizer + preprocessor config)")
    ap.add_argument("--data", required=True, nargs="+", type=Path, help="make-data output directories")
    ap.add_argument("--image-max-pixels", type=int, default=GLM_MAX_PIXELS,
                    help=f"LLaMA-Factory's image_max_pixels (default {GLM_MAX_PIXELS}, the GLM-4.1V processor's "
                         "own limit; LLaMA-Factory's default 768*768 shrinks larger pages); ms-swift resizes nothing")
    add_output_args(ap)
    a = ap.parse_args(argv)
    if not os.path.isdir(a.model):
        raise SystemExit(f"--model {a.model!r} is not a directory; give a GLM-4.1V checkpoint directory")
    import datasets
    import transformers

    rows, failed, version = [], 0, "?"
    for d in a.data:
        want = read_shards(d)
        try:
            r = RUNNERS[a.framework](d, a.model, want, a.image_max_pixels)
        except Exception as e:  # the framework refused the data: that is the finding
            r = {"framework": a.framework, "version": "?", "samples": 0, "errors": [[f"{type(e).__name__}: {e}"]]}
        bad = [e for e in r.pop("errors") if e]
        if r["samples"] != len(want):
            bad.append([f"{r['samples']} samples came out of {len(want)} in the shards"])
        version = r["version"] if r["version"] != "?" else version
        r.update(data=d.name, rows=len(want), pages=sum(len(x["images"]) for x in want), ok=not bad,
                 problems=["; ".join(e) for e in bad])
        failed += bool(bad)
        rows.append(r)
        print(f"{r['framework']} {r['version']}  {d}: {r['samples']}/{len(want)} samples, {r['pages']} pages: "
              + ("OK" if not bad else "FAILED\n  " + "\n  ".join(r["problems"])))
    for n in NOTES:
        print("note:", n)
    summary = {"framework": a.framework, "version": version, "transformers": transformers.__version__,
               "datasets": datasets.__version__, "ok": not failed,
               "image_max_pixels": a.image_max_pixels if a.framework == "llamafactory" else None,
               "notes": NOTES}
    path = write_result(a, f"export-{a.framework}.json", "check_export_frameworks", rows, summary)
    print(f"{a.framework} {version}, transformers {transformers.__version__}, datasets {datasets.__version__}: "
          f"{len(rows) - failed}/{len(rows)} directories pass; {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
