"""RULER's synthetic tasks (NVIDIA/RULER, scripts/data/synthetic), generated here, seeded, at any length.

Task names, templates, needle formats, haystacks and generation budgets are RULER's:

    niah_single_1..3, niah_multikey_1..3, niah_multivalue, niah_multiquery   (needle in a haystack)
    vt (variable tracking), cwe (common words), fwe (frequent words), qa_1 (SQuAD), qa_2 (HotpotQA)

Lengths count the whole input (instructions, context and question) plus the generation budget with a real
tokenizer (Qwen's by default), as RULER does. The "essay" haystack is the bundled sample text (RULER uses Paul
Graham's essays, which cannot be redistributed), repeated as needed; "repeat" is RULER's noise sentences;
"needle" is distractor needles. Tasks with UUID needles (niah_single_3, niah_multikey_3) are left out unless
uuid=True, as Glyph's evaluation does, and no few-shot example is added (Glyph drops them before rendering).
As in Glyph's evaluation, only the context is rendered as pages; the instructions and the question stay text
(Item.text_prompt holds RULER's whole input for the text baseline).

    items = generate(["niah_single_1", "vt"], lengths=[4096, 8192], n=10, seed=0)
"""
from __future__ import annotations

import bisect
import functools
import random
import re
import string
import uuid as uuidlib

from ..item import Item
from . import read_json, require

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
NIAH_TEMPLATE = ("Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. "
                 "I will quiz you about the {type_needle_v} afterwards.\n{context}\nWhat are all the special magic "
                 "{type_needle_v} for {query} mentioned in the provided text?")
VT_TEMPLATE = ("Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
               "Question: Find all variables that are assigned the value {query} in the text above.")
CWE_TEMPLATE = ("Below is a numbered list of words. In these words, some appear more often than others. Memorize "
                "the ones that appear most often.\n{context}\nQuestion: What are the 10 most common words in the above "
                "list?")
FWE_TEMPLATE = ("Read the following coded text and track the frequency of each coded word. Find the three most "
                "frequently appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore "
                "the dots '....'. What are the three most frequently appeared words in the above coded text?")
QA_TEMPLATE = ("Answer the question based on the given documents. Only give me the answer and do not output any other "
               "words.\n\nThe following are given documents.\n\n{context}\n\nAnswer the question based on the given "
               "documents. Only give me the answer and do not output any other words.\n\nQuestion: {query}")

# task -> haystack, key type, value type, keys, values per key, queries (RULER's synthetic.yaml)
NIAH = {
    "niah_single_1": ("repeat", "words", "numbers", 1, 1, 1),
    "niah_single_2": ("essay", "words", "numbers", 1, 1, 1),
    "niah_single_3": ("essay", "words", "uuids", 1, 1, 1),
    "niah_multikey_1": ("essay", "words", "numbers", 4, 1, 1),
    "niah_multikey_2": ("needle", "words", "numbers", 1, 1, 1),
    "niah_multikey_3": ("needle", "uuids", "uuids", 1, 1, 1),
    "niah_multivalue": ("essay", "words", "numbers", 1, 4, 1),
    "niah_multiquery": ("essay", "words", "numbers", 4, 1, 4),
}
UUID_TASKS = ("niah_single_3", "niah_multikey_3")
TASKS = (*NIAH, "vt", "cwe", "fwe", "qa_1", "qa_2")
TOKENS_TO_GENERATE = {"niah": 128, "vt": 30, "cwe": 120, "fwe": 50, "qa": 32}
DEPTHS = [round(x * 100 / 39) for x in range(40)]  # RULER: np.linspace(0, 100, 40) rounded


def default_tasks(uuid: bool = False, qa: bool = False) -> list[str]:
    """RULER's tasks without the UUID ones (unless uuid) and without QA (unless its files are given)."""
    return [t for t in TASKS if (uuid or t not in UUID_TASKS) and (qa or not t.startswith("qa"))]


def parse_length(s) -> int:
    """4096, '4k' (4096), '128K' (131072), '1m' (1048576)."""
    if isinstance(s, int):
        n = s
    else:
        m = re.fullmatch(r"\s*(\d+)\s*([kKmM]?)\s*", str(s))
        if not m:
            raise ValueError(f"length {s!r}: expected a number of tokens like 4096, 4k or 128k")
        n = int(m.group(1)) * {"": 1, "k": 1024, "m": 1 << 20}[m.group(2).lower()]
    if n < 256:
        raise ValueError(f"length {s!r}: at least 256 tokens")
    return n


class _Tok:
    """Token counts of small pieces (cached), a per-sentence sum for long texts."""

    def __init__(self, tokenizer):
        from ...render.tokens import get_tokenizer

        self.t = get_tokenizer(None if tokenizer in (None, "default") else tokenizer)
        self._cache: dict[str, int] = {}

    def n(self, s: str) -> int:
        c = self._cache.get(s)
        if c is None:
            c = self._cache[s] = self.t.count(s)
        return c

    def distractors(self, tv: str, tk: str, size: int) -> tuple[list[str], list[int]]:
        """A pool of at least `size` (at least 1024) distractor needles and their token counts, line break
        included; drawn once with a fixed seed and kept (counting them is most of a needle haystack's cost)."""
        pools = self.__dict__.setdefault("_pools", {})
        lines, costs = pools.get((tv, tk), ([], []))
        want = max(size, 1024)
        if len(lines) < want:
            rng = random.Random(f"distractors-{tv}-{tk}-{len(lines)}")
            new = [NEEDLE.format(type_needle_v=tv, key=_random(tk, rng), value=_random(tv, rng))
                   for _ in range(want - len(lines))]
            lines, costs = lines + new, costs + self.many([x + "\n" for x in new], cache=False)
            pools[(tv, tk)] = (lines, costs)
        return lines, costs

    def many(self, pieces: list[str], cache: bool = True) -> list[int]:
        if not cache:
            return [len(e.ids) for e in self.t._tok.encode_batch(pieces, add_special_tokens=False)]
        new = [p for p in set(pieces) if p not in self._cache]
        if new:
            for p, e in zip(new, self.t._tok.encode_batch(new, add_special_tokens=False)):
                self._cache[p] = len(e.ids)
        return [self._cache[p] for p in pieces]


@functools.lru_cache(maxsize=1)
def essay_sentences() -> tuple[str, ...]:
    from ...render.textio import sample_text

    text = " ".join(sample_text().split())
    return tuple(s for s in re.split(r"(?<=[.!?])\s+", text) if s)


@functools.lru_cache(maxsize=1)
def vocabulary() -> tuple[str, ...]:
    """Lower-case words of the sample text (RULER draws keys and words from wonderwords' lists)."""
    from ...render.textio import sample_text

    return tuple(sorted({w for w in re.findall(r"[a-z]{4,12}", sample_text()) if w.isalpha()}))


@functools.lru_cache(maxsize=1)
def word_pool(n: int = 60000) -> tuple[str, ...]:
    """n distinct pronounceable words, always the same (RULER draws from wonderwords' lists, not bundled here)."""
    rng = random.Random(1234)
    cons, vows = "bcdfghjklmnprstvz", "aeiou"
    out: set[str] = set()
    while len(out) < n:
        out.add("".join(rng.choice(cons) + rng.choice(vows) for _ in range(rng.randint(2, 4))))
    return tuple(sorted(out))


def _random(kind: str, rng: random.Random) -> str:
    if kind == "numbers":
        return str(rng.randint(1000000, 9999999))
    if kind == "words":
        v = vocabulary()
        return f"{rng.choice(v)}-{rng.choice(v)}"
    if kind == "uuids":
        return str(uuidlib.UUID(int=rng.getrandbits(128), version=4))
    raise ValueError(kind)


def _split(template: str, **fmt) -> tuple[str, str]:
    """The template's text before and after {context}, filled in."""
    head, tail = template.split("{context}")
    return head.format(**fmt), tail.format(**fmt)


def _budget(tok: _Tok, template: str, length: int, gen: int, **fmt) -> int:
    """Tokens left for the context once the instructions, the question and the generation budget are counted."""
    head, tail = _split(template, **fmt)
    used = tok.n(head) + tok.n(tail) + gen + 2
    left = length - used
    if left < 32:
        raise ValueError(f"length {length}: too short for this task's instructions ({used} tokens)")
    return left


def _item(task, length, i, template, context, answers, metric, gen, meta, **fmt) -> Item:
    """Glyph's split: the context alone is rendered; instructions and question stay text. text_prompt is
    RULER's whole input, for the text baseline."""
    head, tail = _split(template, **fmt)
    return Item(id=f"{task}-{length}-{i}", context=context, question=f"{head.strip()}\n{tail.strip()}",
                answers=answers, metric=metric, max_new_tokens=gen, text_prompt=head + context + tail,
                metadata={"task": task, "length": length, **meta})


# ------------------------------------------------------------------ NIAH
def essay_fill(tok: _Tok, left: int) -> tuple[list[str], list[int]]:
    """The essay's sentences in order, repeated, up to `left` tokens, and their costs. A sentence that does not fit
    is skipped for the next ones that do (a short text would otherwise stop well short of its length), until a
    whole round of the essay adds nothing."""
    sents = essay_sentences()
    counts = tok.many([" " + s for s in sents])
    smallest = min(counts)
    chosen, costs, total, j, misses = [], [], 0, 0, 0
    while total + smallest <= left and misses < len(sents):
        c = counts[j % len(sents)]
        if total + c <= left:
            chosen.append(sents[j % len(sents)])
            costs.append(c)
            total += c
            misses = 0
        else:
            misses += 1
        j += 1
    return chosen, costs


def niah(task: str, length: int, i: int, rng: random.Random, tok: _Tok, depth: float | None = None) -> Item:
    haystack, tk, tv, nk, nv, nq = NIAH[task]
    keys, values, needles = [], [], []
    for _ in range(nk):
        keys.append(_random(tk, rng))
        vals = [_random(tv, rng) for _ in range(nv)]
        values.append(vals)
        needles += [NEEDLE.format(type_needle_v=tv, key=keys[-1], value=v) for v in vals]
    rng.shuffle(needles)
    queries = [keys[j] for j in rng.sample(range(nk), nq)]
    answers = [a for q in queries for a in values[keys.index(q)]]
    query = ", ".join(queries[:-1]) + ", and " + queries[-1] if len(queries) > 1 else queries[0]
    template, type_v = NIAH_TEMPLATE, tv
    if nq * nv == 1:  # RULER's singular wording
        template = template.replace("Some", "A").replace("are all", "is").replace("are", "is").replace("answers", "answer")
        type_v = tv[:-1]
    gen = TOKENS_TO_GENERATE["niah"]
    left = _budget(tok, template, length, gen, type_needle_v=type_v, query=query) - sum(tok.n(" " + n) for n in needles)
    if left < 0:
        raise ValueError(f"{task}: length {length} is too short for its {len(needles)} needles ({-left} tokens "
                         f"over); use a longer length or leave {task} out")
    depths = [depth] * len(needles) if depth is not None else sorted(rng.sample(DEPTHS, len(needles)))
    if haystack == "essay":
        chosen, costs = essay_fill(tok, left)
        joiner = " "
    else:
        if haystack == "repeat":
            per = tok.n(NOISE + "\n")
            chosen = [NOISE] * max(1, left // per)
        else:
            chosen, total, k = [], 0, 0
            lines, costs = tok.distractors(tv, tk, 0)
            order = rng.sample(range(len(lines)), len(lines))
            while True:  # distractor needles in a random order; the pool grows for very long contexts
                if k == len(order):
                    lines, costs = tok.distractors(tv, tk, 2 * len(lines))
                    order += rng.sample(range(k, len(lines)), len(lines) - k)
                j = order[k]
                k += 1
                if any(k_ in lines[j] for k_ in keys) or any(v in lines[j] for vals in values for v in vals):
                    continue
                if total + costs[j] > left:
                    break
                chosen.append(lines[j])
                total += costs[j]
        joiner = "\n"
    if haystack == "essay":  # at a sentence boundary, the stated fraction of the haystack's tokens before it
        cum, acc = [], 0
        for c in costs:
            cum.append(acc)
            acc += c
        positions = [bisect.bisect_left(cum, acc * d / 100) for d in depths]
    else:
        positions = [int(len(chosen) * d / 100) for d in depths]
    parts = []
    prev = 0
    for pos, needle in zip(positions, needles):
        parts += chosen[prev:pos] + [needle]
        prev = pos
    parts += chosen[prev:]
    context = joiner.join(parts)
    first = context.index(needles[0])
    meta = {"depth": depths[0], "depth_chars": round(first / max(1, len(context)), 4), "haystack": haystack,
            "needles": len(needles)}
    return _item(task, length, i, template, context, answers, "string_match_all", gen, meta,
                 type_needle_v=type_v, query=query)


# ------------------------------------------------------------------ variable tracking
def vt(length: int, i: int, rng: random.Random, tok: _Tok, num_chains: int = 1, num_hops: int = 4) -> Item:
    names: list[str] = []
    while len(set(names)) < num_chains * (num_hops + 1):
        names.append("".join(rng.choices(string.ascii_uppercase, k=5)))
    names = list(dict.fromkeys(names))
    chains, value = [], None
    for c in range(num_chains):
        v = names[c * (num_hops + 1):(c + 1) * (num_hops + 1)]
        val = rng.randint(10000, 99999)
        if c == 0:
            value, answers = val, v
        chains.append([f"VAR {v[0]} = {val}"] + [f"VAR {v[j + 1]} = VAR {v[j]} " for j in range(num_hops)])
    gen = TOKENS_TO_GENERATE["vt"]
    stmts = [s for ch in chains for s in ch]
    left = _budget(tok, VT_TEMPLATE, length, gen, query=value) - sum(tok.n(s + ".\n") for s in stmts)
    n = max(len(stmts), left // tok.n(NOISE + "\n"))
    sentences = [NOISE] * n
    # each chain's statements in order, at sorted random positions
    for ch in chains:
        pos = sorted(rng.sample(range(len(sentences) + 1), len(ch)))
        for k, (p, s) in enumerate(zip(pos, ch)):
            sentences.insert(p + k, s + ".")
    context = "\n".join(sentences)
    return _item("vt", length, i, VT_TEMPLATE, context, answers, "string_match_all", gen,
                 {"depth": round(100 * context.index(chains[0][0]) / len(context)), "chains": num_chains,
                  "hops": num_hops}, query=value)


# ------------------------------------------------------------------ common words
def cwe_frequencies(length: int) -> tuple[int, int]:
    """RULER's repeats of each common and each uncommon word (common_words_extraction.py): 30 and 3, but 6 and 1
    below 4096 tokens, where 300 common entries would not fit."""
    return (6, 1) if length < 4096 else (30, 3)


def cwe(length: int, i: int, rng: random.Random, tok: _Tok, freq_cw: int | None = None, freq_ucw: int | None = None,
        num_cw: int = 10) -> Item:
    gen = TOKENS_TO_GENERATE["cwe"]
    left = _budget(tok, CWE_TEMPLATE, length, gen)
    if freq_cw is None or freq_ucw is None:
        freq_cw, freq_ucw = cwe_frequencies(length)
    pool = word_pool()
    words = rng.sample(pool, 20000)
    cost = tok.many([" " + w for w in words])
    common, ucw = words[:num_cw], []
    entries = num_cw * freq_cw
    total = sum(freq_cw * (c + 2) for c in cost[:num_cw]) + sum(len(str(k)) for k in range(1, entries + 1))
    if total > left:
        raise ValueError(f"cwe: length {length} is too short for its {num_cw} common words {freq_cw} times each "
                         f"({total} tokens, {left} left for the list); use a longer length or leave cwe out")
    for w, c in zip(words[num_cw:], cost[num_cw:]):
        add = sum(c + 2 + len(str(entries + k)) for k in range(1, freq_ucw + 1))
        if total + add > left:
            break
        ucw.append(w)
        total += add
        entries += freq_ucw
    lst = common * freq_cw + ucw * freq_ucw
    rng.shuffle(lst)
    context = " ".join(f"{k + 1}. {w}" for k, w in enumerate(lst))
    return _item("cwe", length, i, CWE_TEMPLATE, context, common, "string_match_all", gen,
                 {"words": len(lst), "uncommon": len(ucw), "freq_cw": freq_cw, "freq_ucw": freq_ucw})


# ------------------------------------------------------------------ frequent words
def fwe(length: int, i: int, rng: random.Random, tok: _Tok, alpha: float = 2.0, vocab_size: int = 2000,
        coded_wordlen: int = 6) -> Item:
    gen = TOKENS_TO_GENERATE["fwe"]
    left = _budget(tok, FWE_TEMPLATE, length, gen)
    vocab: set[str] = set()
    while len(vocab) < vocab_size:
        vocab.add("".join(rng.choices(string.ascii_lowercase, k=coded_wordlen)))
    vocab_l = sorted(vocab)
    rng.shuffle(vocab_l)
    vocab_l[0] = "..."  # the top-ranked word is noise, as in RULER
    zeta = sum(k ** -alpha for k in range(1, 100000)) + 100000 ** (1 - alpha) / (alpha - 1)
    cost = tok.many([" " + w for w in vocab_l])
    weights = [(k + 1) ** -alpha / zeta for k in range(len(vocab_l))]

    def tokens(n):
        return sum(int(n * w) * c for w, c in zip(weights, cost))

    lo, hi = 1, max(2, left)
    while tokens(hi) <= left:
        hi *= 2
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if tokens(mid) <= left else (lo, mid - 1)
    words = [w for w, wt in zip(vocab_l, weights) for _ in range(int(lo * wt))]
    rng.shuffle(words)
    return _item("fwe", length, i, FWE_TEMPLATE, " ".join(words), vocab_l[1:4], "string_match_all", gen,
                 {"words": len(words), "alpha": alpha})


# ------------------------------------------------------------------ QA
def read_squad(path) -> list[dict]:
    """SQuAD v1/v2 JSON -> [{question, answers, golden, docs}] (answerable questions; docs: all paragraphs). A
    field missing or of another type is an error naming the file, the question (or paragraph) and the field."""
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise ValueError(f"{path}: not a SQuAD file (a JSON object with a 'data' list)")
    docs, out = [], []
    for i, article in enumerate(data["data"]):
        require(article, f"{path}: data[{i}]", "a SQuAD article", {"paragraphs": (list,)})
        for j, para in enumerate(article["paragraphs"]):
            where = f"{path}: data[{i}].paragraphs[{j}]"
            require(para, where, "a SQuAD paragraph", {"context": (str,), "qas": (list,)})
            docs.append(para["context"])
            for k, qa in enumerate(para["qas"]):
                qid = qa.get("id") if isinstance(qa, dict) else None
                tag = f" (question {qid})" if qid is not None else ""
                require(qa, f"{where}.qas[{k}]{tag}", "a SQuAD question", {"question": (str,), "answers": (list,)})
                if qa.get("is_impossible") or not qa["answers"]:
                    continue
                for n, a in enumerate(qa["answers"]):
                    require(a, f"{where}.qas[{k}].answers[{n}]{tag}", "a SQuAD answer", {"text": (str,)})
                out.append({"question": qa["question"], "answers": sorted({a["text"] for a in qa["answers"]}),
                            "golden": [len(docs) - 1]})
    return [dict(q, docs=docs) for q in out]


def read_hotpotqa(path) -> list[dict]:
    """HotpotQA JSON (a list of {question, answer, context: [[title, sentences]]}) -> [{question, answers, golden,
    docs}]. A field missing or of another type is an error naming the file, the row and the field."""
    data = read_json(path)
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path}: not a HotpotQA file (a JSON list of objects with 'context')")
    docs: list[str] = []
    index: dict[str, int] = {}
    out = []
    for i, d in enumerate(data):
        rid = d.get("_id") if isinstance(d, dict) else None
        where = f"{path}: row {i + 1}" + (f" (_id {rid})" if rid is not None else "")
        require(d, where, "a HotpotQA row", {"question": (str,), "answer": (str,), "context": (list,)})
        golden = []
        for k, doc in enumerate(d["context"]):
            if not (isinstance(doc, list) and len(doc) == 2 and isinstance(doc[0], str) and isinstance(doc[1], list)
                    and all(isinstance(x, str) for x in doc[1])):
                raise ValueError(f"{where}: context[{k}] must be [title, [sentences]] (strings), got {doc!r:.60}")
            title, sents = doc
            text = f"{title}\n{''.join(sents)}"
            if text not in index:
                index[text] = len(docs)
                docs.append(text)
            golden.append(index[text])
        out.append({"question": d["question"], "answers": [d["answer"]], "golden": golden})
    return [dict(q, docs=docs) for q in out]


def qa(task: str, length: int, i: int, rng: random.Random, tok: _Tok, data: list[dict]) -> Item:
    q = data[i % len(data)]
    docs = q["docs"]
    gen = TOKENS_TO_GENERATE["qa"]
    left = _budget(tok, QA_TEMPLATE, length, gen, query=q["question"])
    chosen = list(q["golden"])
    used = sum(tok.n(docs[j]) + 6 for j in chosen)
    if used > left:
        raise ValueError(f"{task}: length {length} is too short for the golden documents ({used} tokens)")
    others = [j for j in range(len(docs)) if j not in set(chosen)]
    rng.shuffle(others)
    for j in others:
        c = tok.n(docs[j]) + 6
        if used + c > left:
            break
        chosen.append(j)
        used += c
    if used < 0.9 * left:
        raise ValueError(f"{task}: the documents of the data file hold {used} tokens, under 90% of the {left} a "
                         f"{length}-token item needs; give a larger file or shorter lengths")
    rng.shuffle(chosen)
    context = "\n\n".join(f"Document {k + 1}:\n{docs[j]}" for k, j in enumerate(chosen))
    return _item(task, length, i, QA_TEMPLATE, context, list(q["answers"]), "string_match_part", gen,
                 {"documents": len(chosen)}, query=q["question"])


# ------------------------------------------------------------------ entry point
def generate(tasks=None, lengths=(4096,), n: int = 10, seed: int = 0, *, uuid: bool = False, squad=None,
             hotpotqa=None, tokenizer: str | None = "default", depths=None) -> list[Item]:
    """n items per (task, length). tasks: names of TASKS (default: default_tasks()); qa_1 needs `squad` (a SQuAD
    JSON file), qa_2 `hotpotqa`. depths: needle depths in percent cycled over the items of single-needle tasks
    (default: RULER's random depth per item). Each item's seed derives from (seed, task, length, index), so an
    item does not change with the other tasks or lengths asked for."""
    if tasks is None:
        tasks = default_tasks(uuid, qa=False) + (["qa_1"] if squad else []) + (["qa_2"] if hotpotqa else [])
    tasks = list(tasks)
    for t in tasks:
        if t not in TASKS:
            raise ValueError(f"RULER task {t!r} is unknown; choose from {', '.join(TASKS)}")
        if t in UUID_TASKS and not uuid:
            raise ValueError(f"RULER task {t} has UUID needles, left out as in Glyph's evaluation; pass uuid=True "
                             "(CLI: --uuid) to run it")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: {n!r} must be an integer >= 1")
    lengths = [parse_length(x) for x in lengths]
    qa_data = {}
    if "qa_1" in tasks:
        if not squad:
            raise ValueError("qa_1 needs a SQuAD JSON file (squad=..., CLI: --squad FILE)")
        qa_data["qa_1"] = read_squad(squad)
    if "qa_2" in tasks:
        if not hotpotqa:
            raise ValueError("qa_2 needs a HotpotQA JSON file (hotpotqa=..., CLI: --hotpotqa FILE)")
        qa_data["qa_2"] = read_hotpotqa(hotpotqa)
    tok = _Tok(tokenizer)
    items = []
    for task in tasks:
        for length in lengths:
            for i in range(n):
                rng = random.Random(f"{seed}-{task}-{length}-{i}")
                if task in NIAH:
                    d = None
                    if depths and NIAH[task][3] * NIAH[task][4] == 1:
                        d = float(list(depths)[i % len(depths)])
                    items.append(niah(task, length, i, rng, tok, d))
                elif task == "vt":
                    items.append(vt(length, i, rng, tok))
                elif task == "cwe":
                    items.append(cwe(length, i, rng, tok))
                elif task == "fwe":
                    items.append(fwe(length, i, rng, tok))
                else:
                    items.append(qa(task, length, i, rng, tok, qa_data[task]))
    return items
