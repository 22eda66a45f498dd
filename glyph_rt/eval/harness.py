"""evaluate(config, items, target) -> EvalResult: accuracy and compression of a target on items at a render config.

Each finished item is one JSON row appended to `out` (flushed and fsynced) the moment it is scored, so a killed
run loses at most the items in flight; a second call with the same `out` skips the items already there (matched by
id, item content, target, mode, render config, generation budget, repetition penalty and answer extractor, over
every row of the file) and re-runs nothing. A torn last line from a kill is cut off before appending.

A reply in glyph_rt's thinking format (`<think>...</think>\nanswer`, as its SFT data and GRPO's format reward teach)
is scored on its answer after the thinking block (split_thinking, the helper GRPO's rewards use): the text after
the last `</think>`, as Glyph's evaluation scripts take it, also where the chat template opened the block and the
reply holds only its end (`thoughts</think>\nanswer`); the row keeps the whole reply as `prediction` and the text
scored as `answer`; a thinking block opened and left unclosed (the budget ran out) answers nothing. Rows scored
by an older rule are scored again on resume (asked again where an extractor read the answer). A model that
reasons first needs a larger generation budget than the tasks' own: evaluate's max_tokens (`glyph-rt eval
--max-tokens N`) gives every item that budget.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..fileio import cut_torn_tail, json_line
from ..render.config import RenderConfig
from .extract import FAILED, PROMPT_ID, AnswerExtractor
from .item import Item
from .metrics import check_packages, score
from .targets import Reply, Target, make_target

RESULTS_FILE = "results.jsonl"
# the fields evaluate writes in each row: an item's metadata key of the same name is not copied into its row (it
# stays in the item), so it can never change a row's id, scores or run keys
ROW_FIELDS = frozenset({"id", "metric", "target", "target_id", "mode", "config_key", "max_new_tokens",
                        "repetition_penalty", "item_hash", "prediction", "answer", "score", "answers", "text_tokens",
                        "visual_tokens", "pages", "compression", "latency_s", "error", "extractor",
                        "extraction_prompt", "extracted"})
THINK_TAGS = ("<think>", "</think>")
_COUNTS: dict = {}  # (tokenizer, context) -> text tokens: repeated evaluations of the same items count once


def count_tokens(tok, text: str) -> int:
    key = (tok.path, text)
    n = _COUNTS.get(key)
    if n is None:
        if len(_COUNTS) > 4096:
            _COUNTS.clear()
        n = _COUNTS[key] = tok.count(text)
    return n


def config_key(config: RenderConfig) -> str:
    """A short stable hash of a render config (rows of different configs never mix)."""
    blob = json.dumps(config.to_dict(), sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:12]


def item_hash(it: Item) -> str:
    """A short hash of what an item asks and how it is scored (RULER's ids do not hold its seed); the generation
    budget is matched on its own."""
    d = it.to_dict()
    del d["id"], d["max_new_tokens"]
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def same_item(row: dict, it: Item, hashed: str | None = None) -> bool:
    """Whether a results row is of this very item (`hashed`: its item_hash, when known): by its item hash, or for
    a row of an older file (no hash) by its answers and metric."""
    if "item_hash" in row:
        return row["item_hash"] == (hashed or item_hash(it))
    return row.get("metric") == it.metric and row.get("answers") == json.loads(json.dumps(it.answers, default=str))


def row_key(row: dict) -> tuple:
    """(item, target, mode, render config, repetition penalty): one row of each in a report."""
    return (row.get("id"), row.get("target_id", row.get("target")), row.get("mode"), row.get("config_key"),
            row.get("repetition_penalty"))


def thinks(text: str) -> bool:
    """Whether a reply holds a thinking format's tag (its answer is not the whole reply)."""
    return any(t in text for t in THINK_TAGS)


def reply_answer(text: str) -> str:
    """The answer a reply gives, which its score reads: the text after its last `</think>` (split_thinking, as
    GRPO's rewards read it), with or without the `<think>` the chat template may have written; the whole reply when
    it does not think; empty when it thinks without answering or opens a block it never closes (its thoughts are
    not its answer)."""
    if not thinks(text):
        return text  # split_thinking's answer too, without importing glyph_rt.models (transformers, torch)
    from ..models.prompt import split_thinking

    return split_thinking(text)[1]


def _score(it: Item, text: str, extracted: bool) -> float:
    """The item's score of the text scored; 0 for an extraction that failed (FAILED), as the reference's."""
    return 0.0 if extracted and text == FAILED else score(it, text)


def _rescored(row: dict, it: Item) -> dict | None:
    """A row scored again from its saved reply without asking again: one whose metric failed, or one whose answer
    was split off its thinking block by another rule (an older row: without `answer`, or with another one). None
    while its metric still fails."""
    answer = reply_answer(row.get("prediction") or "")
    err = row.get("error") or ""
    if "scoring failed:" in err:
        err = err.rpartition("scoring failed:")[0].rstrip("; ")  # an extraction failure before it stays
    new = {k: v for k, v in row.items() if k != "error"}
    new["answer"] = answer
    try:
        ext = bool(row.get("extractor"))
        new["score"] = _score(it, (row.get("extracted") if ext else answer) or "", ext)
    except Exception as e:  # noqa: BLE001 - the reply is kept: recorded, scored 0
        if "scoring failed:" in (row.get("error") or ""):
            return None  # still failing: the row stays as it was
        new["score"] = 0.0
        err = "; ".join(filter(None, [err, f"scoring failed: {type(e).__name__}: {e}"]))
    if err:
        new["error"] = err
    return new


@dataclass
class EvalResult:
    rows: list[dict]  # one per item, in the order of the items
    target: str
    mode: str  # "image" or "text"
    config: dict = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        """Mean score over the items, in percent (0-100): the tables' Avg where every task has as many items
        (RULER); LongBench's Avg is the mean of its category means instead (report.longbench_scores)."""
        return 100.0 * sum(r["score"] for r in self.rows) / len(self.rows) if self.rows else 0.0

    @property
    def compression(self) -> float | None:
        """Text tokens / visual tokens over the items answered from pages that have a text count (1.0 for the text
        baseline); an item that failed (too long for the model, ...) has no visual tokens, and one with page images
        and no text (MMLongBench-Doc) no text tokens: neither counts in either sum. None when no item counts."""
        if self.mode == "text":
            return 1.0
        seen = [r for r in self.rows if r["visual_tokens"] and r.get("text_tokens") is not None]
        vis = sum(r["visual_tokens"] for r in seen)
        return sum(r["text_tokens"] for r in seen) / vis if vis else None

    @property
    def by_task(self) -> dict[str, float]:
        tasks: dict[str, list[float]] = {}
        for r in self.rows:
            tasks.setdefault(str(r.get("task", "all")), []).append(r["score"])
        return {t: 100.0 * sum(v) / len(v) for t, v in tasks.items()}

    @property
    def errors(self) -> int:
        return sum(1 for r in self.rows if r.get("error"))

    def summary(self) -> dict:
        return {"target": self.target, "mode": self.mode, "items": len(self.rows), "accuracy": round(self.accuracy, 3),
                "compression": None if self.compression is None else round(self.compression, 4), "errors": self.errors,
                "by_task": {k: round(v, 3) for k, v in self.by_task.items()}}


def read_rows(path) -> list[dict]:
    """The rows a report of a results file shows: of each item in each run (row_key), the latest complete row, in
    the place of the first (an item scored again with another extractor or generation budget; evaluate appends
    the older rows it reuses again, so these are the last call's). A torn last line is ignored."""
    return latest_rows(all_rows(path))


def latest_rows(rows: list[dict]) -> list[dict]:
    """Of each item in each run (row_key), the latest of `rows` (in file order), in the place of the first."""
    latest = {}
    for r in rows:
        latest[row_key(r)] = r
    return list(latest.values())


def rows_of_items(path, items: list[Item]) -> tuple[list[dict], int]:
    """read_rows of a results file, of `items` only: rows of an item no longer among them, or of another version
    of it (its id with other content: other lengths, seed or data), are left out; and how many rows were left out
    that way (they stay in the file)."""
    by_id, hashes = {it.id: it for it in items}, {it.id: item_hash(it) for it in items}
    every = all_rows(path)
    mine = [r for r in every if r.get("id") in by_id and same_item(r, by_id[r["id"]], hashes[r["id"]])]
    rows = latest_rows(mine)
    return rows, len(every) - len(mine)


def all_rows(path) -> list[dict]:
    """Every complete row of a results file, in file order (a torn last line is ignored)."""
    p = Path(path)
    if not p.exists():
        return []
    data = p.read_bytes()
    try:  # up to the last b"\n": a line torn by a kill, even inside a character, is left out before decoding
        text = data[:data.rfind(b"\n") + 1].decode("utf-8")
    except UnicodeDecodeError as e:
        n = data[:e.start].count(b"\n") + 1
        raise ValueError(f"{p}:{n}: not UTF-8 ({e.reason}); the file is not a results file") from None
    rows = []
    # split at "\n" only (text_lines); the piece after the last "\n" is empty
    for line in text.split("\n")[:-1]:
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            raise ValueError(f"{p}: a line is not JSON ({line[:60]!r}); the file is not a results file") from None
    return rows


def _results_path(out) -> Path | None:
    if out is None:
        return None
    p = Path(out)
    if p.suffix != ".jsonl":
        p = p / RESULTS_FILE
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def evaluate(config: RenderConfig | None, items: list[Item], target, *, as_text: bool = False, out=None,
             tokenizer: str | None = "default", progress: bool = True, extra: dict | None = None,
             max_new_tokens: int | None = None, concurrency: int = 1, extractor=None,
             max_tokens: int | None = None) -> EvalResult:
    """Scores `target` (a Target or a spec for make_target) on `items`, rendering contexts with `config`
    (or sending them as text with as_text). out: a .jsonl file or a directory (results.jsonl in it) that
    receives one row per item and makes the run resumable. tokenizer: counts each context's text tokens
    (default: Qwen's; None skips). extra: fields added to every row (e.g. dpi). max_tokens: every item's
    generation budget instead of its task's (a model that reasons before it answers: Glyph's evaluation scripts
    use 8192). max_new_tokens: caps each item's generation budget (quick runs). The budget is one of the keys a
    resume matches rows by. Replies are scored on their answer after a thinking block (reply_answer); the
    row's `prediction` is the whole reply. concurrency: items in flight at once (an endpoint's requests, an
    in-process checkpoint's batch). extractor: an AnswerExtractor (or a make_target spec of one): items whose
    metric needs it (MMLongBench-Doc) are scored on the short answer it extracts from the prediction; rows
    scored with another extractor, or none, are run again; an extraction its server rejects scores 0 (as the
    reference's "Failed to extract") in a row with an error, and a resume extracts the saved reply again. A metric
    that fails on a prediction scores it 0 in a row with an error."""
    from tqdm import tqdm

    from ..render.tokens import get_tokenizer

    config = (config or RenderConfig()).validate()
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise ValueError(f"max_tokens {max_tokens!r} must be an integer >= 1")
    items = list(items)
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:3]
        raise ValueError(f"item ids must be unique; repeated: {', '.join(dup)}")
    if as_text:
        no_text = [it.id for it in items if not it.context and not it.text_prompt and not it.messages]
        if no_text:
            raise ValueError(f"{len(no_text)} items have page images and no text (e.g. {no_text[0]}): they cannot be "
                             "sent as text")
    target = make_target(target) if not isinstance(target, Target) else target
    own_extractor = extractor is not None and not isinstance(extractor, AnswerExtractor)
    if own_extractor:
        extractor = AnswerExtractor(extractor)
    by_id = {it.id: it for it in items}

    def extractor_of(it: Item) -> AnswerExtractor | None:
        return extractor if extractor is not None and extractor.applies(it) else None
    mode = "text" if as_text else "image"
    ckey = "text" if as_text else config_key(config)  # text rows do not depend on the render config

    def budget(it: Item) -> int:
        n = max_tokens or it.max_new_tokens
        return min(n, max_new_tokens) if max_new_tokens else n

    hashes = {it.id: item_hash(it) for it in items}
    path = _results_path(out)
    done: dict[str, dict] = {}
    reextract: dict[str, dict] = {}  # rows whose saved reply is extracted again
    reused = []  # matched rows hidden from reports by a later row of their item and run (another budget, ...)
    if path is not None:
        cut_torn_tail(path)
        rows = all_rows(path)

        for r in rows:
            it = by_id.get(r.get("id"))
            if (it is not None and same_item(r, it, hashes[it.id]) and r.get("target_id") == target.key
                    and r.get("mode") == mode
                    and r.get("config_key") == ckey and r.get("max_new_tokens") == budget(it)
                    and r.get("repetition_penalty") == target.repetition_penalty
                    and r.get("extractor") == getattr(extractor_of(it), "name", None)
                    and r.get("extraction_prompt") == (PROMPT_ID if extractor_of(it) else None)):
                done[r["id"]] = r
        for i, r in list(done.items()):
            # a thinking reply whose answer an older rule split off (the whole reply, before rows had `answer`; none
            # where the chat template opened the block): scored again on its answer, or extracted again where the
            # extractor read the old one; an extraction the extractor's server rejected: extracted again
            pred = r.get("prediction") or ""
            stale = thinks(pred) and r.get("answer") != reply_answer(pred)
            if r.get("extractor") and (stale or "extraction failed:" in (r.get("error") or "")):
                reextract[i] = done.pop(i)  # the saved reply is extracted again, the target not asked
            elif stale or "scoring failed:" in (r.get("error") or ""):  # or a metric that failed (a package
                done[i] = _rescored(r, by_id[i]) or r                     # installed since): scored again
        latest = {row_key(r): r for r in rows}
        reused = [r for r in done.values() if latest[row_key(r)] is not r]
    todo = [it for it in items if it.id not in done]
    check_packages({it.metric for it in todo})  # before any item is asked
    tok = get_tokenizer(None if tokenizer == "default" else tokenizer) if tokenizer else None
    rows_by_id = dict(done)

    def run_one(it: Item) -> dict:
        meta = {k: v for k, v in it.metadata.items()
                if isinstance(v, (str, int, float, bool)) and k not in ROW_FIELDS and k not in (extra or {})}
        row = {"id": it.id, **meta, "metric": it.metric, "target": target.name, "target_id": target.key,
               "mode": mode, "config_key": ckey, "max_new_tokens": budget(it),
               "repetition_penalty": target.repetition_penalty, "item_hash": hashes[it.id], **(extra or {})}
        if "dpi" in row and it.images and not it.context and "dpi" in it.metadata:
            row["dpi"] = it.metadata["dpi"]  # pages made elsewhere (a PDF's): their dpi, the render config draws none
        text_tokens = count_tokens(tok, it.context) if tok is not None and it.context else None
        t0 = time.perf_counter()
        try:
            ask = it if budget(it) == it.max_new_tokens else dataclasses.replace(it, max_new_tokens=budget(it))
            own = config.with_glyph_overrides(it.render_config) if it.render_config and not as_text else config
            if own is not config and "dpi" in row:
                row["dpi"] = own.dpi  # the dpi the item's own config draws at, not the run's
            old = reextract.get(it.id)
            reply = (target.answer(ask, own, as_text=as_text) if old is None else
                     Reply(old["prediction"], old["pages"], old["visual_tokens"], old["latency_s"]))
        except ValueError as e:  # this item cannot be run (too long for the model, ...): recorded, scored 0
            row.update(prediction="", answer="", score=0.0, text_tokens=text_tokens, visual_tokens=0, pages=0,
                       compression=None, latency_s=time.perf_counter() - t0, error=str(e))
        else:
            vis = reply.visual_tokens
            scored = answer = reply_answer(reply.text)
            ext = extractor_of(it)
            if ext is not None:
                try:
                    scored = ext(it, answer)  # the answer, not the thoughts before it
                except ValueError as e:  # the extractor's server rejected the request: 0 (the reference's "Failed"),
                    row["error"] = f"extraction failed: {e}"  # and a resume extracts again
                    scored = FAILED
                row.update(extractor=ext.name, extraction_prompt=PROMPT_ID, extracted=scored)
            try:
                s = _score(it, scored, ext is not None)
            except Exception as e:  # noqa: BLE001 - the answer is kept: recorded, scored 0
                s = 0.0
                row["error"] = "; ".join(filter(None, [row.get("error"), f"scoring failed: {type(e).__name__}: {e}"]))
            row.update(prediction=reply.text, answer=answer, score=s, answers=it.answers,
                       text_tokens=text_tokens, visual_tokens=vis, pages=reply.pages,
                       compression=(text_tokens / vis if vis and text_tokens else (1.0 if as_text else None)),
                       latency_s=round(reply.latency_s, 6))
        return row

    workers = max(1, int(concurrency)) if target.concurrent else 1
    f = open(path, "a", encoding="utf-8") if path is not None else None
    bar = tqdm(total=len(items), initial=len(items) - len(todo), desc=f"{target.name} ({mode})", unit="item",
               disable=not progress or not todo)
    try:
        def keep(row: dict) -> None:
            rows_by_id[row["id"]] = row
            if f is not None:
                f.write(json_line(row))
                f.flush()
                os.fsync(f.fileno())
            bar.update()

        if reused:  # appended again: the latest rows, which reports show, are this call's
            f.write("".join(json_line(r) for r in reused))
            f.flush()
            os.fsync(f.fileno())

        if workers == 1:
            for it in todo:
                keep(run_one(it))
        else:  # requests in flight at once; rows land in completion order
            from concurrent.futures import ThreadPoolExecutor, as_completed

            pool = ThreadPoolExecutor(workers)
            futures = [pool.submit(run_one, it) for it in todo]
            kept = set()
            try:
                for fut in as_completed(futures):
                    row = fut.result()
                    kept.add(fut)
                    keep(row)
            except BaseException:
                # a failure or Ctrl-C stops the run: nothing new starts, and the answers of the items in flight
                # are still saved as they finish (a second Ctrl-C stops waiting for them)
                for fut in futures:
                    fut.cancel()
                flying = [f for f in futures if f not in kept and not f.cancelled()]
                running = sum(1 for f in flying if not f.done())
                if running:
                    tqdm.write(f"stopping: saving the answers of {running} items in flight (Ctrl-C to drop them)")
                with contextlib.suppress(KeyboardInterrupt):
                    for fut in as_completed(flying):
                        if fut.exception() is None:
                            keep(fut.result())
                raise
            finally:
                pool.shutdown(wait=False, cancel_futures=True)
    finally:
        bar.close()
        if f is not None:
            f.close()
        if own_extractor:
            extractor.close()
    return EvalResult([rows_by_id[i] for i in ids], target.name, mode, config.to_dict())
