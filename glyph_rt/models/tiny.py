"""Tiny random-weight GLM-4.1V and Qwen2.5-VL models and checkpoints, built from configs (no downloads).

They exercise the whole pipeline (rendering, prompt, vision tower, prefill, decode) offline in
seconds; their answers are noise. `glyph-rt make-tiny-checkpoint DIR` writes one.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch


def tiny_glm4v(attn):
    from transformers import Glm4vConfig, Glm4vForConditionalGeneration

    cfg = Glm4vConfig(
        text_config=dict(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=512,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000, "partial_rotary_factor": 0.5,
                                          "mrope_section": [2, 1, 1]}),
        vision_config=dict(hidden_size=64, depth=2, num_heads=4, intermediate_size=128, out_hidden_size=64,
                           image_size=56, patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=999, video_token_id=998, image_start_token_id=997, image_end_token_id=996,
        video_start_token_id=995, video_end_token_id=994)
    cfg._attn_implementation = attn
    cfg.text_config._attn_implementation = attn
    cfg.vision_config._attn_implementation = attn
    torch.manual_seed(0)
    return Glm4vForConditionalGeneration(cfg).eval()


def tiny_qwen2_5_vl(attn):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=512, bos_token_id=1,
                         eos_token_id=2, rope_parameters={"rope_type": "default", "rope_theta": 10000,
                                                          "mrope_section": [2, 3, 3]}),
        vision_config=dict(hidden_size=64, depth=2, num_heads=4, intermediate_size=128, out_hidden_size=64,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                           fullatt_block_indexes=[1]),
        image_token_id=999, video_token_id=998, vision_start_token_id=997, vision_end_token_id=996)
    for c in (cfg, cfg.text_config, cfg.vision_config):
        c._attn_implementation = attn
    torch.manual_seed(0)
    return Qwen2_5_VLForConditionalGeneration(cfg).eval()


def glm4v_inputs(seed: int = 1) -> dict:
    """A left-padded batch of 2 prompts with pages of two sizes (grids 4x4 and 2x6)."""
    img = [997] + [999] * 4 + [996]
    img2 = [997] + [999] * 3 + [996]
    first = [5, 6] + img + [7] + img2 + [8, 9, 10]
    second = [5] + img + [7, 8, 9]
    pad = len(first) - len(second)
    input_ids = torch.tensor([first, [0] * pad + second])
    mask = torch.tensor([[1] * len(first), [0] * pad + [1] * len(second)])
    torch.manual_seed(seed)
    grid = torch.tensor([[1, 4, 4], [1, 2, 6], [1, 4, 4]])
    return dict(input_ids=input_ids, attention_mask=mask, pixel_values=torch.randn(16 + 12 + 16, 1176),
                image_grid_thw=grid, mm_token_type_ids=(input_ids == 999).long())


GLM_SPECIAL = ["<|endoftext|>", "[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|begin_of_image|>",
               "<|image|>", "<|end_of_image|>", "<|begin_of_video|>", "<|video|>", "<|end_of_video|>"]
GLM_TEMPLATE = (
    "[gMASK]<sop>{% for m in messages %}<|{{ m['role'] }}|>\n{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<|begin_of_image|><|image|><|end_of_image|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                "<|video_pad|>"]
QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_tokenizer(special=GLM_SPECIAL, template=GLM_TEMPLATE):
    """A small byte-level BPE trained on the sample text, with a model's special tokens and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from glyph_rt.render.textio import sample_text

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([sample_text()[:20000]], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.chat_template = template
    return fast


def glm4v_token_ids(tok) -> dict:
    """Glm4vConfig's special-token ids (image, video and their start/end markers) from a tokenizer with GLM's tokens."""
    return {name: tok.convert_tokens_to_ids(t) for name, t in [
        ("image_token_id", "<|image|>"), ("video_token_id", "<|video|>"), ("image_start_token_id", "<|begin_of_image|>"),
        ("image_end_token_id", "<|end_of_image|>"), ("video_start_token_id", "<|begin_of_video|>"),
        ("video_end_token_id", "<|end_of_video|>")]}


def tiny_glm4v_checkpoint(path, max_positions: int = 4096):
    """A complete local checkpoint directory: config, weights, tokenizer, chat template, processor config."""
    from transformers import Glm4vConfig, Glm4vForConditionalGeneration
    from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil

    tok = tiny_tokenizer()
    ids = glm4v_token_ids(tok)
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    cfg = Glm4vConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=max_positions,
                         eos_token_id=eos, pad_token_id=eos,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000, "partial_rotary_factor": 0.5,
                                          "mrope_section": [2, 1, 1]}),
        vision_config=dict(hidden_size=64, depth=2, num_heads=4, intermediate_size=128, out_hidden_size=64,
                           image_size=56, patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
        **ids)
    torch.manual_seed(0)
    Glm4vForConditionalGeneration(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    Glm4vImageProcessorPil().save_pretrained(path)
    return path


def tiny_qwen2_5_vl_checkpoint(path):
    """A complete local Qwen2.5-VL checkpoint directory with a Qwen-style tokenizer and template."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tok = tiny_tokenizer(QWEN_SPECIAL, QWEN_TEMPLATE)
    ids = {name: tok.convert_tokens_to_ids(t) for name, t in [
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")]}
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=4096, bos_token_id=eos,
                         eos_token_id=eos, pad_token_id=eos,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000, "mrope_section": [2, 3, 3]}),
        vision_config=dict(hidden_size=64, depth=2, num_heads=4, intermediate_size=128, out_hidden_size=64,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                           fullatt_block_indexes=[1]),
        **ids)
    torch.manual_seed(0)
    Qwen2_5_VLForConditionalGeneration(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    # the pixel range of Qwen2.5-VL's checkpoints (3136..12845056), over the class default of Qwen2-VL's
    Qwen2VLImageProcessorPil(size={"shortest_edge": 56 * 56, "longest_edge": 12845056}).save_pretrained(path)
    return path


TINY_CHECKPOINTS = {"glm4v": tiny_glm4v_checkpoint, "qwen2_5_vl": tiny_qwen2_5_vl_checkpoint}


def make_tiny_checkpoint(path: str | os.PathLike, model: str = "glm4v") -> Path:
    """Writes a tiny random-weight checkpoint of `model` (glm4v or qwen2_5_vl) into a new or empty directory."""
    if model not in TINY_CHECKPOINTS:
        raise ValueError(f"model: {model!r} is unknown; choose from {', '.join(TINY_CHECKPOINTS)}")
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{str(p)!r} is a file; give a new or empty directory")
    if p.is_dir() and any(p.iterdir()):
        raise ValueError(f"{str(p)!r} is not empty; give a new or empty directory (nothing was written)")
    p.mkdir(parents=True, exist_ok=True)
    TINY_CHECKPOINTS[model](p)
    return p
