"""MMLongBench-Doc: questions about long PDF documents, the PDFs turned into page images with poppler.

samples.json (a list of {doc_id, doc_type, question, answer, evidence_pages, evidence_sources, answer_format})
and a directory of the PDFs; every document is converted once with `pdftoppm -r DPI -png` into a page cache
(pages_dir/<doc>/<DPI>dpi/page-N.png, one for each dpi and max_pages, written to a temporary directory and renamed
into place). The pages are sent as
images; there is no text context (no text baseline). Scored by MMLongBench-Doc's rule-based eval_score: on the
short answer an LLM extracts from the model's response when evaluate gets an extractor (glyph_rt.eval.extract; the
reference uses GPT-4o), else on the response as given (lower scores).
The report gives the paper's Table 4 columns: single-page (SP), cross-page (CP), unanswerable (UA), Acc, F1.

    items = load("samples.json", "documents/", "cache/pages", dpi=144, limit=50)
"""
from __future__ import annotations

import ast
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..item import Item
from . import make_item, read_json

MAX_NEW_TOKENS = 256
PROMPT = ("Answer the question based on the document pages shown in the images. If it cannot be answered from the "
          "document, answer \"Not answerable\". Give the answer only.\n\nQuestion: {question}")


def pdf_pages(pdf: Path, out_dir: Path, dpi: int = 144, max_pages: int | None = None) -> list[Path]:
    """The PDF's pages as PNG files under out_dir/<pdf stem>/<dpi>dpi/ (<dpi>dpi-<max_pages>p/ with max_pages;
    converted once for each, reused afterwards)."""
    dest = out_dir / pdf.stem / (f"{dpi}dpi" + (f"-{max_pages}p" if max_pages else ""))
    if dest.is_dir() and (dest / ".complete").exists():
        return sorted(dest.glob("page-*.png"), key=lambda p: int(p.stem.split("-")[1]))
    if not pdf.is_file():
        raise FileNotFoundError(f"MMLongBench-Doc: document {str(pdf)!r} does not exist")
    if shutil.which("pdftoppm") is None:
        raise RuntimeError("MMLongBench-Doc needs poppler's pdftoppm (apt install poppler-utils)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    cmd = ["pdftoppm", "-r", str(dpi), "-png"]
    if max_pages:
        cmd += ["-l", str(max_pages)]
    r = subprocess.run(cmd + [str(pdf), str(tmp / "page")], capture_output=True, text=True)
    if r.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ValueError(f"{pdf}: pdftoppm failed: {r.stderr.strip()[:300]}")
    for f in tmp.glob("page-*.png"):  # pdftoppm zero-pads by page count: page-01.png -> page-1.png
        f.rename(tmp / f"page-{int(f.stem.split('-')[1])}.png")
    (tmp / ".complete").touch()
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return sorted(dest.glob("page-*.png"), key=lambda p: int(p.stem.split("-")[1]))


def _literal(v):
    if isinstance(v, str) and v.startswith("["):
        try:
            return ast.literal_eval(v)
        except (ValueError, SyntaxError):
            return v
    return v


def check_sample(s, where: str) -> None:
    """A sample has a doc_id and a question (strings) and an answer (a string or a number); else an error naming
    the sample and the field."""
    if not isinstance(s, dict):
        raise ValueError(f"{where}: not an object, got {type(s).__name__}")
    missing = [k for k in ("doc_id", "question", "answer") if k not in s]
    if missing:
        raise ValueError(f"{where}: missing {', '.join(missing)} (MMLongBench-Doc's samples have doc_id, question, "
                         "answer, evidence_pages, answer_format...)")
    for k, kinds, what in (("doc_id", str, "a string (the PDF's file name)"), ("question", str, "a string"),
                           ("answer", (str, int, float), "a string or a number")):
        if isinstance(s[k], bool) or not isinstance(s[k], kinds):
            raise ValueError(f"{where}: {k} must be {what}, got {s[k]!r:.40}")


def load(samples, documents, pages_dir, dpi: int = 144, limit: int | None = None,
         max_pages: int | None = None) -> list[Item]:
    """Items of samples.json whose PDFs are under `documents`, pages cached under `pages_dir`."""
    sp = Path(samples)
    if not sp.is_file():
        raise FileNotFoundError(f"MMLongBench-Doc: samples file {str(sp)!r} does not exist")
    data = read_json(sp)
    if not isinstance(data, list) or (data and not (isinstance(data[0], dict) and "doc_id" in data[0])):
        raise ValueError(f"{sp}: not MMLongBench-Doc's samples.json (a list of objects with doc_id)")
    data = data[:limit] if limit else data
    for i, s in enumerate(data):  # all checked before any PDF is converted
        check_sample(s, f"{sp}: sample {i}")
    items = []
    for i, s in enumerate(data):
        pages = pdf_pages(Path(documents) / s["doc_id"], Path(pages_dir), dpi, max_pages)
        evidence = _literal(s.get("evidence_pages", "[]"))
        n_ev = len(evidence) if isinstance(evidence, list) else 1
        answer = str(s["answer"])
        kind = "UA" if answer == "Not answerable" else ("SP" if n_ev == 1 else "CP")
        items.append(make_item(
            f"{sp}: sample {i}", id=f"mmlb-{i}", context="", question=PROMPT.format(question=s["question"]), answers=[answer],
            metric="mmlongbench", images=[str(p) for p in pages], max_new_tokens=MAX_NEW_TOKENS,
            metadata={"task": str(s.get("doc_type", "doc")), "kind": kind, "answer_format": s.get("answer_format", "Str"),
                      "doc_id": s["doc_id"], "evidence_pages": json.dumps(evidence), "question": s["question"],
                      "dpi": dpi}))  # the pages' dpi (pdftoppm's): the run's label, not its render config's
    return items
