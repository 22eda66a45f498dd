"""LongBench (THUDM/LongBench v1 and LongBench-E) from its published JSONL files.

Each line has input, context, answers, length, dataset, language, all_classes and _id. The text baseline gets
LongBench's own prompt (config/dataset2prompt.json); the pages get Glyph's image prompt (its
dataset2vlmprompt.json: the same instructions, the context replaced by the pages). Each dataset is scored by
its LongBench metric, with LongBench's first-line rule and generation budget (config/dataset2maxlen.json).

    items = load("data/longbench", datasets=["hotpotqa", "qasper"], limit=50)
"""
from __future__ import annotations

from pathlib import Path

from ...fileio import json_lines, text_lines
from ..item import Item
from . import make_item, read_text

# dataset -> (metric, max_new_tokens, category of the paper's Table 2)
DATASETS = {
    "narrativeqa": ("qa_f1", 128, "Single-Doc QA"),
    "qasper": ("qa_f1", 128, "Single-Doc QA"),
    "multifieldqa_en": ("qa_f1", 64, "Single-Doc QA"),
    "multifieldqa_zh": ("qa_f1_zh", 64, "Single-Doc QA"),
    "hotpotqa": ("qa_f1", 32, "Multi-Doc QA"),
    "2wikimqa": ("qa_f1", 32, "Multi-Doc QA"),
    "musique": ("qa_f1", 32, "Multi-Doc QA"),
    "dureader": ("rouge_zh", 128, "Multi-Doc QA"),
    "gov_report": ("rouge", 512, "Summarization"),
    "qmsum": ("rouge", 512, "Summarization"),
    "multi_news": ("rouge", 512, "Summarization"),
    "vcsum": ("rouge_zh", 512, "Summarization"),
    "trec": ("classification", 64, "Few-shot"),
    "triviaqa": ("qa_f1", 32, "Few-shot"),
    "samsum": ("rouge", 128, "Few-shot"),
    "lsht": ("classification", 64, "Few-shot"),
    "passage_count": ("count", 32, "Synthetic"),
    "passage_retrieval_en": ("retrieval", 32, "Synthetic"),
    "passage_retrieval_zh": ("retrieval_zh", 32, "Synthetic"),
    "lcc": ("code_sim", 64, "Code"),
    "repobench-p": ("code_sim", 64, "Code"),
}
FIELD_TYPES = {"context": (str, "a string"), "input": ((str, type(None)), "a string or null"),
               "answers": ((list, str), "a list of strings")}
CATEGORIES = ("Single-Doc QA", "Multi-Doc QA", "Summarization", "Few-shot", "Synthetic", "Code")
FIRST_LINE = ("trec", "triviaqa", "samsum", "lsht")

# LongBench's prompts (config/dataset2prompt.json)
PROMPTS = {
    "narrativeqa": "You are given a story, which can be either a novel or a movie script, and a question. Answer the question as concisely as you can, using a single phrase if possible. Do not provide any explanation.\n\nStory: {context}\n\nNow, answer the question based on the story as concisely as you can, using a single phrase if possible. Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:",
    "qasper": "You are given a scientific article and a question. Answer the question as concisely as you can, using a single phrase or sentence if possible. If the question cannot be answered based on the information in the article, write \"unanswerable\". If the question is a yes/no question, answer \"yes\", \"no\", or \"unanswerable\". Do not provide any explanation.\n\nArticle: {context}\n\n Answer the question based on the above article as concisely as you can, using a single phrase or sentence if possible. If the question cannot be answered based on the information in the article, write \"unanswerable\". If the question is a yes/no question, answer \"yes\", \"no\", or \"unanswerable\". Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:",
    "multifieldqa_en": "Read the following text and answer briefly.\n\n{context}\n\nNow, answer the following question based on the above text, only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "multifieldqa_zh": "阅读以下文字并用中文简短回答：\n\n{context}\n\n现在请基于上面的文章回答下面的问题，只告诉我答案，不要输出任何其他字词。\n\n问题：{input}\n回答：",
    "hotpotqa": "Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "2wikimqa": "Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "musique": "Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "dureader": "请基于给定的文章回答下述问题。\n\n文章：{context}\n\n请基于上述文章回答下面的问题。\n\n问题：{input}\n回答：",
    "gov_report": "You are given a report by a government agency. Write a one-page summary of the report.\n\nReport:\n{context}\n\nNow, write a one-page summary of the report.\n\nSummary:",
    "qmsum": "You are given a meeting transcript and a query containing a question or instruction. Answer the query in one or more sentences.\n\nTranscript:\n{context}\n\nNow, answer the query based on the above meeting transcript in one or more sentences.\n\nQuery: {input}\nAnswer:",
    "multi_news": "You are given several news passages. Write a one-page summary of all news. \n\nNews:\n{context}\n\nNow, write a one-page summary of all the news.\n\nSummary:",
    "vcsum": "下面有一段会议记录，请你阅读后，写一段总结，总结会议的内容。\n会议记录：\n{context}\n\n会议总结：",
    "trec": "Please determine the type of the question below. Here are some examples of questions.\n\n{context}\n{input}",
    "triviaqa": "Answer the question based on the given passage. Only give me the answer and do not output any other words. The following are some examples.\n\n{context}\n\n{input}",
    "samsum": "Summarize the dialogue into a few short sentences. The following are some examples.\n\n{context}\n\n{input}",
    "lsht": "请判断给定新闻的类别，下面是一些例子。\n\n{context}\n{input}",
    "passage_count": "There are some paragraphs below sourced from Wikipedia. Some of them may be duplicates. Please carefully read these paragraphs and determine how many unique paragraphs there are after removing duplicates. In other words, how many non-repeating paragraphs are there in total?\n\n{context}\n\nPlease enter the final count of unique paragraphs after removing duplicates. The output format should only contain the number, such as 1, 2, 3, and so on.\n\nThe final answer is: ",
    "passage_retrieval_en": "Here are 30 paragraphs from Wikipedia, along with an abstract. Please determine which paragraph the abstract is from.\n\n{context}\n\nThe following is an abstract.\n\n{input}\n\nPlease enter the number of the paragraph that the abstract is from. The answer format must be like \"Paragraph 1\", \"Paragraph 2\", etc.\n\nThe answer is: ",
    "passage_retrieval_zh": "以下是若干段落文字，以及其中一个段落的摘要。请确定给定的摘要出自哪一段。\n\n{context}\n\n下面是一个摘要\n\n{input}\n\n请输入摘要所属段落的编号。答案格式必须是\"段落1\"，\"段落2\"等格式\n\n答案是：",
    "lcc": "Please complete the code given below. \n{context}Next line of code:\n",
    "repobench-p": "Please complete the code given below. \n{context}{input}Next line of code:\n",
}

# Glyph's image prompts (evaluation/longbench/config/dataset2vlmprompt.json): the context is in the pages
VLM_PROMPTS = {
    "narrativeqa": "You are given a story, which can be either a novel or a movie script, and a question. Answer the question asconcisely as you can, using a single phrase if possible. Do not provide any explanation.\n\nStory is shown in the images.\n\nNow, answer the question based on the story asconcisely as you can, using a single phrase if possible. Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:",
    "qasper": "You are given a scientific article and a question. Answer the question as concisely as you can, using a single phrase or sentence if possible. If the question cannot be answered based on the information in the article, write \"unanswerable\". If the question is a yes/no question, answer \"yes\", \"no\", or \"unanswerable\". Do not provide any explanation.\n\nArticle is shown in the images.\n\n Answer the question based on the above article as concisely as you can, using a single phrase or sentence if possible. If the question cannot be answered based on the information in the article, write \"unanswerable\". If the question is a yes/no question, answer \"yes\", \"no\", or \"unanswerable\". Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:",
    "multifieldqa_en": "Read the text and answer in the images briefly.\n\nNow, answer the following question based on the above text, only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "multifieldqa_zh": "阅读图中文字并用中文简短回答。请基于图中的文章回答下面的问题，只告诉我答案，不要输出任何其他字词。\n\n问题：{input}\n回答：",
    "hotpotqa": "Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "2wikimqa": "Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "musique": "Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "dureader": "请基于图中的文章回答下述问题。\n\n问题：{input}\n回答：",
    "gov_report": "You are given a report by a government agency. Write a one-page summary of the report.\n\nReport is shown in images.\n\nNow, write a one-page summary of the report.\n\nSummary:",
    "qmsum": "You are given a meeting transcript and a query containing a question or instruction. Answer the query in one or more sentences.\n\nTranscript is shown in images.\n\nNow, answer the query based on the meeting transcript in one or more sentences.\n\nQuery: {input}\nAnswer:",
    "multi_news": "You are given several news passages in the images. Write a one-page summary of all news. \n\nNow, write a one-page summary of all the news.\n\nSummary:",
    "vcsum": "图中有一段会议记录，请你阅读后，写一段总结，总结会议的内容。\n会议总结：",
    "trec": "Please determine the type of the question below. Some examples of questions are shown in the images.\n\n{input}",
    "triviaqa": "Answer the question based on the given passage. Only give me the answer and do not output any other words. Some examples are shown in the images.\n\n{input}",
    "samsum": "Summarize the dialogue into a few short sentences. Some examples are shown in the images.\n\n{input}",
    "lsht": "请判断给定新闻的类别，图中是一些例子。\n\n{input}",
    "passage_count": "There are some paragraphs sourced from Wikipedia in the images. Some of them may be duplicates. Please carefully read these paragraphs and determine how many unique paragraphs there are after removing duplicates. In other words, how many non-repeating paragraphs are there in total?\n\nPlease enter the final count of unique paragraphs after removing duplicates. The output format should only contain the number, such as 1, 2, 3, and so on.\n\nThe final answer is: ",
    "passage_retrieval_en": "Here are 30 paragraphs from Wikipedia, along with an abstract. Please determine which paragraph the abstract is from.\n\nThe following is an abstract.\n\n{input}\n\nPlease enter the number of the paragraph that the abstract is from. The answer format must be like \"Paragraph 1\", \"Paragraph 2\", etc.\n\nThe answer is: ",
    "passage_retrieval_zh": "图中展示了若干段落。请判断以下摘要出自哪一段。摘要：\n\n{input}\n\n请输入摘要所属段落的编号。答案格式必须是\"段落1\"，\"段落2\"等格式\n\n答案是：",
    "lcc": "Please complete the code. Only give me the next line of code.\nNext line of code:\n",
    "repobench-p": "Please complete the code. Only give me the next line of code.\n{input}Next line of code:\n",
}


def dataset_name(name) -> str:
    """A dataset's name as DATASETS has it: LongBench-E's (hotpotqa_e, in its file names and rows) without the _e."""
    name = str(name)
    return name[:-2] if name.endswith("_e") and name[:-2] in DATASETS else name


def dataset_of(path: Path) -> str:
    return dataset_name(path.stem)


def item_from_row(row: dict, dataset: str, index: int, source: str = "", truncate: int | None = None) -> Item:
    """One LongBench line as an Item (errors name the source line). truncate: a token budget (Qwen's tokenizer) as
    LongBench's pred.py applies it: the text baseline's whole prompt keeps its first and last truncate / 2 tokens;
    the pages' context keeps its first and last halves of what the budget leaves after the image prompt (the
    instructions and the input, which stay text)."""
    dataset = dataset_name(dataset)
    where = f"{source}:{index + 1}" if source else f"{dataset}[{index}]"
    if not isinstance(row, dict):
        raise ValueError(f"{where}: not a LongBench line (a JSON object), got {type(row).__name__}")
    missing = [k for k in ("input", "context", "answers") if k not in row]
    if missing:
        raise ValueError(f"{where}: not a LongBench line (missing {', '.join(missing)})")
    for key, (kinds, what) in FIELD_TYPES.items():
        if not isinstance(row[key], kinds):
            raise ValueError(f"{where}: {key} must be {what}, got {type(row[key]).__name__}")
    if dataset not in DATASETS:
        raise ValueError(f"{where}: dataset {dataset!r} is not a LongBench dataset ({', '.join(DATASETS)})")
    metric, max_new, category = DATASETS[dataset]
    meta = {"task": dataset, "category": category, "first_line": dataset in FIRST_LINE}
    if row.get("length") is not None:  # LongBench's length: words (English) or characters (Chinese)
        try:
            meta["words"] = int(row["length"])
        except (TypeError, ValueError):
            raise ValueError(f"{where}: length must be a number (of words), got {row['length']!r:.40}") from None
    classes = row.get("all_classes")
    if metric == "classification" and not (isinstance(classes, list) and classes
                                           and all(isinstance(c, str) and c for c in classes)):
        raise ValueError(f"{where}: all_classes must be a non-empty list of the class names ({dataset} is scored "
                         f"by the classes its answer names), got {classes!r:.60}")
    if classes:
        meta["all_classes"] = list(classes)
    fmt = {"input": row["input"] or "", "context": row["context"]}
    context, question, text_prompt = row["context"], VLM_PROMPTS[dataset].format(**fmt), PROMPTS[dataset].format(**fmt)
    if truncate:
        text_prompt = truncate_middle(text_prompt, truncate)
        room = truncate - _tokenizer().count(question)
        if room < 2:
            raise ValueError(f"{where}: --truncate {truncate} leaves no tokens for the context after the image "
                             f"prompt's {truncate - room} (instructions and input); give a larger budget or leave "
                             f"{dataset} out")
        context = truncate_middle(context, room)
    answers = row["answers"] if isinstance(row["answers"], list) else [row["answers"]]
    uid = row.get("unique_id") or row.get("_id") or f"{dataset}-{index}"
    return make_item(where, id=f"{dataset}-{uid}" if not str(uid).startswith(dataset) else str(uid),
                     context=context, question=question, answers=[str(a) for a in answers], metric=metric,
                     max_new_tokens=max_new, text_prompt=text_prompt, metadata=meta)


def files(path, e: bool = False) -> list[Path]:
    """The JSONL files of `path`: the file itself, or a directory's <dataset>.jsonl (LongBench's data/ folder,
    which also holds LongBench-E's <dataset>_e.jsonl: those instead with e)."""
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise FileNotFoundError(f"LongBench data: {str(p)!r} is neither a .jsonl file nor a directory of them")
    out = sorted(f for f in p.glob("*.jsonl") if dataset_of(f) in DATASETS and f.stem.endswith("_e") == e)
    if not out:
        want = "<dataset>_e.jsonl (LongBench-E)" if e else "<dataset>.jsonl"
        raise FileNotFoundError(f"LongBench data: {p} has no {want} files ({', '.join(list(DATASETS)[:4])}, ...)")
    return out


def _tokenizer(tokenizer: str | None = "default"):
    from ...render.tokens import get_tokenizer

    return get_tokenizer(None if tokenizer == "default" else tokenizer)


def truncate_middle(text: str, max_tokens: int, tokenizer: str | None = "default") -> str:
    """LongBench's truncation (pred.py): over max_tokens, keep the first and the last max_tokens / 2 tokens."""
    tok = _tokenizer(tokenizer)._tok
    ids = tok.encode(text, add_special_tokens=False).ids
    if len(ids) <= max_tokens:
        return text
    half = max_tokens // 2
    return tok.decode(ids[:half], skip_special_tokens=True) + tok.decode(ids[-half:], skip_special_tokens=True)


def load(path, datasets=None, limit: int | None = None, truncate: int | None = None, e: bool = False) -> list[Item]:
    """Items of the LongBench JSONL files under `path` (a file or a directory of <dataset>.jsonl; with e,
    LongBench-E's <dataset>_e.jsonl), at most `limit` per dataset; `datasets` picks some (names of DATASETS).
    truncate: a budget of this many tokens (Qwen's tokenizer) for a model's window, as LongBench's pred.py keeps
    it (item_from_row): the text baseline's whole prompt over it keeps its first and last halves; the pages'
    context, the budget less the image prompt's tokens."""
    if datasets:
        bad = [d for d in datasets if d not in DATASETS]
        if bad:
            raise ValueError(f"LongBench datasets {bad} are unknown; choose from {', '.join(DATASETS)}")
    items: list[Item] = []
    for f in files(path, e):
        if DATASETS.get(dataset_of(f), ("",))[0] in ("qa_f1_zh", "rouge_zh") and (not datasets or dataset_of(f) in datasets):
            from ..metrics import _jieba

            try:
                _jieba()
            except RuntimeError as e:
                raise RuntimeError(f"{f}: {e}") from None
        counted = 0
        for line, row in json_lines(text_lines(read_text(f)), str(f)):
            if not isinstance(row, dict):
                raise ValueError(f"{f}:{line}: not a LongBench line (a JSON object), got {type(row).__name__}")
            dataset = dataset_name(row.get("dataset") or dataset_of(f))  # LongBench-E's rows say hotpotqa_e
            if datasets and dataset not in datasets:
                continue
            it = item_from_row(row, dataset, line - 1, str(f), truncate)
            if e or f.stem.endswith("_e"):  # LongBench-E: the report adds its length buckets
                it.metadata["longbench_e"] = True
            items.append(it)
            counted += 1
            if limit and counted >= limit:
                break
    return items
