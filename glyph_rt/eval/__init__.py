"""Evaluation: RULER, LongBench, MRCR and MMLongBench-Doc against a GlyphModel or an OpenAI-compatible endpoint.

    from glyph_rt.eval import evaluate, Item, make_target
    result = evaluate(RenderConfig(), items, make_target("path/to/ckpt"), out="runs/x")
    result.accuracy, result.compression, result.rows
"""
from .extract import AnswerExtractor
from .harness import EvalResult, evaluate, read_rows
from .item import Item, load_items, save_items
from .metrics import METRICS, score
from .targets import GlyphModelTarget, OpenAITarget, Reply, Target, TargetError, make_target

__all__ = ["evaluate", "EvalResult", "Item", "make_target", "Target", "GlyphModelTarget", "OpenAITarget", "Reply",
           "TargetError",
           "METRICS", "score", "load_items", "save_items", "read_rows", "AnswerExtractor"]
