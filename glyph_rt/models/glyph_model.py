"""GlyphModel: a GLM-4.1V / Qwen2.5-VL checkpoint answering questions over long texts it reads as pages.

    model = GlyphModel.from_pretrained("path/to/Glyph", render_config=RenderConfig())
    answers = model.generate(contexts, questions, max_new_tokens=64)
    answers[0].text, answers[0].timings, answers[0].visual_tokens, answers[0].text_tokens

Each context is rendered by glyph_rt straight into pixel_values on the model's device; the
prompt is the checkpoint's own chat template with one image per page followed by the
question (which stays text, as in Glyph's evaluation), and each image placeholder is expanded
to the page's visual tokens as the Hugging Face processor does. Loading is transformers' own
code; kernels="auto" patches the model with apply_glyph_kernels and generates with a GlyphCache
(a KV cache written in place), kernels="off" keeps it stock.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..ops.pixel_values import CLIP_MEAN, CLIP_STD
from ..render.config import RenderConfig
from ..render.tokens import VisionModel, vision_model
from .kv_cache import GlyphCache, cache_kwarg
from .patching import MODELS, apply_glyph_kernels
from .prompt import VISION_MERGE, PromptBuilder, tokens_per_image

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


def read_json(path: Path) -> dict:
    """A checkpoint's JSON file as a dict; ValueError naming the file when it is not one."""
    try:
        d = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a valid JSON file ({e}); restore it from the original checkpoint") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(d).__name__}")
    return d


def _loading(path: Path, what: str, fn):
    """Runs a transformers loader; any failure but memory becomes a ValueError naming the file."""
    try:
        return fn()
    except (MemoryError, torch.OutOfMemoryError):
        raise
    except Exception as e:  # noqa: BLE001 - loaders raise many types for a damaged file
        raise ValueError(f"{path}: cannot load the {what}: {type(e).__name__}: {str(e)[:300]}") from None


def check_checkpoint(path: Path) -> None:
    """Raises FileNotFoundError naming what a checkpoint directory lacks."""
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint directory {path} does not exist")
    missing = []
    if not (path / "config.json").exists():
        missing.append("config.json")
    if not any((path / f).exists() for f in WEIGHT_FILES):
        missing.append("weights (" + " or ".join(WEIGHT_FILES[:2]) + ")")
    else:
        index = next((path / f for f in WEIGHT_FILES if f.endswith(".index.json") and (path / f).exists()), None)
        if index is not None:
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise ValueError(f"{index}: has no weight_map of tensor name -> shard file")
            shards = sorted(set(weight_map.values()))
            missing += [s for s in shards if not (path / s).exists()]
    if not any((path / f).exists() for f in TOKENIZER_FILES):
        missing.append("tokenizer.json")
    if not (path / "chat_template.jinja").exists() and not (path / "chat_template.json").exists():
        cfg = path / "tokenizer_config.json"
        if not (cfg.exists() and "chat_template" in read_json(cfg)):
            missing.append("chat template (chat_template.jinja)")
    if not (path / "preprocessor_config.json").exists():
        missing.append("preprocessor_config.json")
    if missing:
        raise FileNotFoundError(f"checkpoint {path} is incomplete: missing {', '.join(missing)}")


@dataclass
class Answer:
    text: str
    token_ids: list[int]
    pages: int
    visual_tokens: int  # what the context cost as pages
    text_tokens: int  # what it would have cost as text, with the checkpoint's tokenizer
    prompt_tokens: int
    timings: dict = field(default_factory=dict)  # seconds: render, vision, prefill, decode (shared by a batch)

    @property
    def compression(self) -> float:
        return self.text_tokens / self.visual_tokens if self.visual_tokens else float("inf")


class _FirstToken:
    """A logits processor that notes when generation produced its first token (the end of the prefill)."""

    def __init__(self, device):
        self.device, self.first = device, None

    def __call__(self, input_ids, scores):
        if self.first is None:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.first = time.perf_counter()
        return scores


class GlyphModel:
    def __init__(self, model, tokenizer, render_config: RenderConfig, model_type: str, patch=None,
                 vision: VisionModel | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.render_config = render_config
        self.model_type = model_type
        self.vision = vision or vision_model(model_type)  # page geometry within the checkpoint's resize limits
        self.patch = patch
        cfg = model.config
        self.prompts = PromptBuilder.for_model(model, tokenizer)
        self.image_token_id = self.prompts.image_token_id
        self.image_token = self.prompts.image_token
        text_cfg = getattr(cfg, "text_config", cfg)
        self.max_positions = getattr(text_cfg, "max_position_embeddings", None)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @classmethod
    def from_pretrained(cls, path, render_config: RenderConfig | None = None, kernels: str = "auto",
                        dtype: torch.dtype | None = None, device=None) -> "GlyphModel":
        """Loads a local checkpoint directory (config, weights, tokenizer, chat template, processor config)."""
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoTokenizer

        path = Path(path)
        check_checkpoint(path)
        if kernels not in ("auto", "off"):
            raise ValueError(f"kernels must be 'auto' or 'off', got {kernels!r}")
        read_json(path / "config.json")
        if (path / "generation_config.json").exists():  # transformers falls back to its defaults on a broken one
            read_json(path / "generation_config.json")
        config = _loading(path / "config.json", "model config", lambda: AutoConfig.from_pretrained(path))
        model_type = getattr(config, "model_type", None)
        if model_type not in MODELS:
            raise ValueError(f"model type {model_type!r} in {path / 'config.json'} is not supported; "
                             f"GlyphModel runs {', '.join(MODELS)}")
        vision = check_processor(path / "preprocessor_config.json", model_type)
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if kernels == "auto":
            from ..ops.attention import register_transformers

            register_transformers()
        weights = next(path / f for f in WEIGHT_FILES if (path / f).exists())
        model = _loading(weights, "weights", lambda: AutoModelForImageTextToText.from_pretrained(
            path, dtype=dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32),
            attn_implementation="glyph" if kernels == "auto" else "sdpa"))
        model = model.to(device).eval()
        patch = apply_glyph_kernels(model) if kernels == "auto" else None
        if (path / "tokenizer_config.json").exists():
            read_json(path / "tokenizer_config.json")
        tok_file = next((path / f for f in TOKENIZER_FILES if (path / f).exists()), path / TOKENIZER_FILES[0])
        tokenizer = _loading(tok_file, "tokenizer", lambda: AutoTokenizer.from_pretrained(path))
        if tokenizer.chat_template is None and (path / "chat_template.json").exists():
            # a processor's template file, which AutoTokenizer does not read
            template = read_json(path / "chat_template.json").get("chat_template")
            if not isinstance(template, str) or not template.strip():
                raise ValueError(f"{path / 'chat_template.json'}: has no \"chat_template\" string")
            tokenizer.chat_template = template
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        vocab = min(len(tokenizer), model.get_input_embeddings().num_embeddings)
        if not 0 <= model.config.image_token_id < vocab:
            raise ValueError(f"{path / 'config.json'}: image_token_id {model.config.image_token_id} is outside the "
                             f"vocabulary (0..{vocab - 1}); the config does not match the tokenizer")
        gm = cls(model, tokenizer, (render_config or RenderConfig()).validate(), model_type, patch, vision)
        template = next((path / f for f in ("chat_template.jinja", "chat_template.json") if (path / f).exists()),
                        path / "tokenizer_config.json")
        one = _loading(template, "chat template", lambda: gm.prompts.template(gm.prompts.messages(1, "?"), True))
        if one.count(gm.image_token) != 1:
            raise ValueError(f"{template}: the chat template does not write one {gm.image_token} per image")
        return gm

    # ------------------------------------------------------------------ inputs
    def build_inputs(self, contexts: list[str], questions: list[str]) -> tuple[dict, list, float]:
        """Model inputs for a batch (left-padded), each request's page count, and the render seconds."""
        from ..render.gpu import render_inputs

        t = time.perf_counter()
        dtype = self.model.dtype if self.model.dtype in (torch.float32, torch.bfloat16) else torch.float32
        rendered = render_inputs(contexts, self.render_config, model=self.vision, device=self.device, dtype=dtype)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        render_s = time.perf_counter() - t
        per_image = tokens_per_image(rendered.image_grid_thw.cpu())
        rows, i = [], 0
        for n, question in zip(rendered.images_per_text, questions):
            # the training prompt's ids: the question's added-token texts are plain text (PromptBuilder.prompt)
            rows.append(self.prompts.prompt_ids(per_image[i:i + n], question))
            i += n
        # left-padded whatever the tokenizer's own padding_side (a tokenizer given to __init__ may pad right)
        pad = next((t for t in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id) if t is not None), 0)
        width = max(map(len, rows))
        input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], dtype=torch.long)
        attention_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
        input_ids = input_ids.to(self.device)
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask.to(self.device),
                      pixel_values=rendered.pixel_values, image_grid_thw=rendered.image_grid_thw.to(self.device),
                      mm_token_type_ids=(input_ids == self.image_token_id).long())
        return inputs, rendered, render_s

    def check_pages_fit(self, contexts: list[str]) -> None:
        """Before any page is drawn: a context whose pages alone cannot fit the model's window (every page takes at
        least the visual tokens of the vision model's min_pixels) is refused, from its layout, where check_window
        would refuse it only after drawing them (a long context would first fill memory with its pixel_values)."""
        from ..render.pages import Document

        if not self.max_positions:
            return
        # a page resized to at least min_pixels (GLM-4.1V: its two temporal frames' area, so half of it for one), or
        # shrunk to within max_pixels, where rounding down may take up to about three quarters of it away
        least = max(1, min(self.vision.min_pixels, self.vision.max_pixels // 4)
                    // (2 * (self.vision.patch * self.vision.merge) ** 2))
        cap = self.max_positions // least + 1  # pages that cannot fit whatever their size
        for i, c in enumerate(contexts):
            pages = Document(c, self.render_config, max_pages=cap).num_pages
            if pages * least > self.max_positions:
                raise ValueError(
                    f"contexts[{i}]: lays out to {'at least ' if pages == cap else ''}{pages} pages of at least "
                    f"{least} visual tokens each, over the model's {self.max_positions} positions; render denser "
                    "pages (lower dpi, a smaller font_size, or a larger page_size) or shorten the context")

    def check_window(self, inputs: dict, rendered, max_new_tokens: int) -> None:
        if not self.max_positions:
            return
        need = int(inputs["attention_mask"].sum(1).max()) + max_new_tokens
        if need > self.max_positions:
            worst = max(rendered.visual_tokens)
            raise ValueError(
                f"a request needs {need} positions ({worst} visual tokens for its pages, the prompt and "
                f"{max_new_tokens} new tokens), over the model's {self.max_positions} by {need - self.max_positions}; "
                "render denser pages (lower dpi, a smaller font_size, or a larger page_size) or shorten the context")

    # ------------------------------------------------------------------ generation
    def _setting(self, name: str, generate_kwargs: dict, default=None):
        """A generation setting as transformers' generate resolves it: the keyword, else the given generation_config's
        value, else the model's generation_config's, else `default`."""
        if name in generate_kwargs:
            return generate_kwargs[name]
        for config in (generate_kwargs.get("generation_config"), getattr(self.model, "generation_config", None)):
            value = getattr(config, name, None)
            if value is not None:
                return value
        return default

    def _answer_ids(self, row: list[int], generate_kwargs: dict) -> list[int]:
        """The tokens a row generated: up to its first stop id (excluded, as the serving engine does), or without
        the padding transformers appends to a row that stopped otherwise (stop strings) before the others."""
        eos = self._setting("eos_token_id", generate_kwargs)
        stops = [] if eos is None else torch.as_tensor(eos).flatten().tolist()
        cut = next((i for i, t in enumerate(row) if t in stops), None)
        if cut is not None:
            return row[:cut]
        pad = self._setting("pad_token_id", generate_kwargs)
        pad = stops[0] if pad is None and stops else pad  # transformers pads with eos_token_id[0] when it has no pad
        while row and pad is not None and row[-1] == pad:
            row = row[:-1]
        return row

    @torch.no_grad()
    def generate(self, contexts, questions, max_new_tokens: int | None = None, **generate_kwargs) -> list[Answer]:
        """Answers each question about its context (one str each, lists of equal length, or one question for a
        list of contexts). One answer per context: num_return_sequences other than 1 is refused.
        A question is text, tokenized as the training tasks tokenize theirs: an added token's text in it
        ("<|endoftext|>") is plain text, and a question holding the image token is refused. A lone surrogate
        ("\\ud800", which JSON allows and UTF-8 does not) is read as '?' in a question, and counted as '?' in a
        context's text_tokens (the page draws it as a box).
        max_new_tokens: this keyword, else the given generation_config's, else the model's generation_config's,
        else 128."""
        import copy

        from transformers import LogitsProcessorList

        contexts = [contexts] if isinstance(contexts, str) else _as_list(contexts, "contexts")
        if not contexts:
            raise ValueError("contexts is empty: give at least one context (a str or a list of str)")
        questions = [questions] * len(contexts) if isinstance(questions, str) else _as_list(questions, "questions")
        n = self._setting("num_return_sequences", generate_kwargs) or 1
        if n != 1:
            raise ValueError(f"num_return_sequences={n}: GlyphModel.generate returns one answer per context; give a "
                             "context n times for n samples")
        if len(contexts) != len(questions):
            raise ValueError(f"{len(contexts)} contexts for {len(questions)} questions")
        if max_new_tokens is None:
            max_new_tokens = self._setting("max_new_tokens", generate_kwargs, 128)
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: {max_new_tokens!r} must be an integer >= 1")
        for i, (c, q) in enumerate(zip(contexts, questions)):
            if not isinstance(c, str) or not c.strip():
                raise ValueError(f"contexts[{i}]: {c!r:.40} is empty or not a str; give the text to read")
            if not isinstance(q, str):
                raise ValueError(f"questions[{i}]: expected a str, got {type(q).__name__}")
            self.prompts.check_text(q, f"questions[{i}]")
            try:
                self.prompts.escape(q)  # as the prompt will (PromptBuilder.prompt)
            except ValueError as e:
                raise ValueError(f"questions[{i}]: {e}") from None
        # what each context would cost as text, counted before generating: nothing after it can fail on a context
        text_tokens = [len(self.prompts.ids(c)) for c in contexts]
        self.check_pages_fit(contexts)
        inputs, rendered, render_s = self.build_inputs(list(contexts), list(questions))
        self.check_window(inputs, rendered, max_new_tokens)
        vision = {"s": 0.0}
        visual = getattr(getattr(self.model, "model", self.model), "visual", None)

        def pre(*_):
            vision["t"] = time.perf_counter()

        def post(*_):
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            vision["s"] += time.perf_counter() - vision["t"]

        hooks = [visual.register_forward_pre_hook(pre), visual.register_forward_hook(post)] if visual else []
        cache_implementation = self._setting("cache_implementation", generate_kwargs)
        if cache_implementation == "hybrid":  # transformers drops it too: such models now default to a dynamic cache
            cache_implementation = None
        if self.patch is not None and not {"cache", "past_key_values"} & generate_kwargs.keys() and \
                cache_implementation is None and self._setting("use_cache", generate_kwargs, True):
            generate_kwargs[cache_kwarg(self.model)] = GlyphCache(reserve=max_new_tokens)  # no copy per step
        generate_kwargs.setdefault("tokenizer", self.tokenizer)  # for stop_strings
        if generate_kwargs.get("generation_config") is not None:  # the limit goes in it: no keyword beside a config
            generate_kwargs["generation_config"] = copy.deepcopy(generate_kwargs["generation_config"])
            generate_kwargs["generation_config"].max_new_tokens = max_new_tokens
        else:
            generate_kwargs["max_new_tokens"] = max_new_tokens
        first = _FirstToken(self.device)
        processors = LogitsProcessorList(generate_kwargs.pop("logits_processor", None) or [])
        processors.append(first)  # after the caller's: it only notes when the first token comes
        t0 = time.perf_counter()
        try:
            out = self.model.generate(**inputs, logits_processor=processors, **generate_kwargs)
        finally:
            for h in hooks:
                h.remove()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t1 = time.perf_counter()
        first_t = first.first or t1
        timings = {"render": render_s, "vision": vision["s"], "prefill": first_t - t0 - vision["s"],
                   "decode": t1 - first_t}
        new = getattr(out, "sequences", out)[:, inputs["input_ids"].shape[1]:]  # return_dict_in_generate=True
        answers = []
        for b in range(len(contexts)):
            ids = self._answer_ids(new[b].tolist(), generate_kwargs)
            answers.append(Answer(
                text=self.tokenizer.decode(ids, skip_special_tokens=True), token_ids=ids,
                pages=rendered.images_per_text[b], visual_tokens=rendered.visual_tokens[b],
                text_tokens=text_tokens[b],
                prompt_tokens=int(inputs["attention_mask"][b].sum()), timings=timings))
        return answers


def _as_list(items, what: str) -> list:
    """A list of a generate() argument's items; TypeError naming the argument when it is not a str or a sequence."""
    if items is None or isinstance(items, (bytes, dict)) or not hasattr(items, "__iter__"):
        raise TypeError(f"{what}: expected a str or a list of str, got {type(items).__name__}")
    return list(items)


# The resize limits (min_pixels, max_pixels) of each model's Hugging Face image processor class, which a checkpoint
# whose preprocessor_config.json gives none gets: Glm4vImageProcessor's size {"shortest_edge": 112 * 112,
# "longest_edge": 28 * 28 * 15000}; Qwen2VLImageProcessor's (Qwen2.5-VL's processor) {"shortest_edge": 56 * 56,
# "longest_edge": 28 * 28 * 1280}, not the 12,845,056 that Qwen2.5-VL checkpoints write in their config.
PROCESSOR_DEFAULT_LIMITS = {"glm4v": (112 * 112, 28 * 28 * 15000), "qwen2_5_vl": (56 * 56, 28 * 28 * 1280)}


def check_processor(path: Path, model_type: str = "glm4v") -> VisionModel:
    """glyph_rt renders for 14-px patches, 2x2 merges, 2 frames and CLIP normalization: the checkpoint must agree.
    Returns the model's page geometry with the checkpoint's resize limits (`size` or min/max_pixels, else the
    processor class's defaults), so that pages get the grids the checkpoint's own image processor would give them."""
    p = read_json(path)
    size = p.get("size") if isinstance(p.get("size"), dict) else {}
    given = [size.get("shortest_edge"), size.get("longest_edge")]
    if model_type == "qwen2_5_vl":  # its processor lets the older min_pixels / max_pixels keys override `size`
        given = [p.get(k) if p.get(k) is not None else g for k, g in zip(("min_pixels", "max_pixels"), given)]
    defaults = PROCESSOR_DEFAULT_LIMITS.get(model_type, (None, None))
    given = [d if g is None else g for g, d in zip(given, defaults)]
    try:
        vision = vision_model(model_type).with_limits(*given)
    except ValueError as e:
        raise ValueError(f"{path}: the image processor's resize limits are not usable ({e})") from None
    want = {"patch_size": 14, "merge_size": VISION_MERGE, "temporal_patch_size": 2}
    bad = [f"{k}={p[k]} (glyph_rt renders for {v})" for k, v in want.items() if k in p and p[k] != v]
    for k, v in (("image_mean", CLIP_MEAN), ("image_std", CLIP_STD)):
        if k not in p:
            continue
        got = p[k]
        if isinstance(got, (int, float)) and not isinstance(got, bool):
            got = [got] * 3  # one value for every channel, as the image processor takes it
        if not isinstance(got, list) or len(got) != 3 or \
                not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in got):
            bad.append(f"{k}={p[k]!r} (expected a number or a list of 3 numbers, one per channel; "
                       f"glyph_rt normalizes with CLIP's {list(v)})")
        elif any(abs(a - b) > 1e-6 for a, b in zip(got, v)):
            bad.append(f"{k}={p[k]} (glyph_rt normalizes with CLIP's {list(v)})")
    # the steps glyph_rt's pixel_values always take: RGB, scaled by 1/255, normalized
    for k in ("do_convert_rgb", "do_rescale", "do_normalize"):
        if p.get(k) is False:
            bad.append(f"{k}=false (glyph_rt's pixel_values are always converted to RGB, rescaled and normalized)")
    factor = p.get("rescale_factor")
    if factor is not None and (isinstance(factor, bool) or not isinstance(factor, (int, float))
                               or abs(factor - 1 / 255) > 1e-9):
        bad.append(f"rescale_factor={factor!r} (glyph_rt rescales by 1/255)")
    if bad:
        raise ValueError(f"{path}: the checkpoint's image processor differs from glyph_rt's: {'; '.join(bad)}")
    return vision
