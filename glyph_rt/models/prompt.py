"""The one prompt builder: chat template + one image per page, each placeholder expanded to the page's visual tokens.

GlyphModel, the training tasks, the server and the evaluation harness all build their prompts here, so a page
costs the same tokens everywhere and the model sees at training time exactly what it sees at inference:

    pb = PromptBuilder(tokenizer, image_token_id)
    ids = pb.prompt_ids(visual_tokens=[630, 630], question="Who wrote the letter?")     # generation
    sample = pb.encode(pb.messages(2, pb.escape("Read the pages."), answer="..."), [630, 630])  # training

A record's text (a question, an answer) is escape()d in both, so an added token's text in it ("<|endoftext|>")
is tokenized as plain text, and the generation prompt's ids are the training sample's before its answer.

The expansion is what the Hugging Face processors do: the template writes one image token per image and the
processor repeats it grid_h * grid_w / merge**2 times (tokens_per_image).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from ..render.tokens import _encodable

IGNORE_INDEX = -100  # labels that take no loss (transformers' and torch's cross-entropy default)
VISION_MERGE = 2  # 2x2 patches per visual token
ESCAPE_BASE = 0x10F000  # escape(): the k-th added token's text in plain text stands as chr(ESCAPE_BASE + k)
ESCAPE_END = 0x10FFFE  # (Supplementary Private Use Area-B, which text almost never holds)


def thinking_parts(text: str) -> tuple[str, str, str] | None:
    """(before, thinking, answer) of a text in the thinking format (only blank text before <think>...</think>),
    else None."""
    head, tag, rest = text.partition("<think>")
    if tag and not head.strip() and "</think>" in rest:
        inner, _, after = rest.partition("</think>")
        return head, inner, after
    return None


def split_thinking(response: str) -> tuple[str | None, str]:
    """(thoughts, answer) of a response. thoughts: those of a response in the thinking format (`<think>thoughts
    </think> answer`, thinking_parts, with a non-empty answer and no other tag after its block; what the format
    reward asks for), else None. answer (stripped): the text after the last `</think>`, as Glyph's evaluation
    scripts take it (split('</think>')[-1]), also where the chat template opened the block and the response holds
    only its end (`thoughts</think> answer`); the whole response when it holds no tag; "" when it opens a block it
    never closes (its thoughts are not its answer). GRPO's rewards and the evaluation harness score the answer."""
    parts = thinking_parts(response)
    if parts is not None:
        _, inner, after = parts
        if after.strip() and "<think>" not in after and "</think>" not in after:
            return inner, after.strip()
    if "<think>" not in response and "</think>" not in response:
        return None, response
    after = response.rpartition("</think>")[2]
    return None, "" if "<think>" in after else after.strip()


def tokens_per_image(grid_thw) -> list[int]:
    """Visual tokens of each image from its [t, h, w] patch grid (a tensor or a list of triples)."""
    return [int(t) * int(h) * int(w) // VISION_MERGE ** 2 for t, h, w in (list(map(int, g)) for g in grid_thw)]


@dataclass
class Encoded:
    """Token ids of one sample and its labels: the id where the token takes loss, IGNORE_INDEX elsewhere."""
    input_ids: list[int]
    labels: list[int]

    @property
    def loss_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


class PromptBuilder:
    def __init__(self, tokenizer, image_token_id: int, stop_ids: Sequence[int] | None = None):
        self.tokenizer = tokenizer
        self.image_token_id = int(image_token_id)
        self.image_token = tokenizer.convert_ids_to_tokens(self.image_token_id)
        if not isinstance(self.image_token, str):
            raise ValueError(f"image_token_id {image_token_id} is not in the tokenizer's vocabulary")
        eos = tokenizer.eos_token_id
        self.stop_ids = set(stop_ids or ([] if eos is None else [eos]))
        self._bpe = False  # not looked up yet; then tiktoken's BPE on the vocabulary, or None (render.bpe)
        added = sorted({t.content if hasattr(t, "content") else str(t)
                        for t in getattr(tokenizer, "added_tokens_decoder", {}).values()}, key=lambda t: (-len(t), t))
        if len(added) > ESCAPE_END - ESCAPE_BASE:
            raise ValueError(f"the tokenizer has {len(added)} added tokens, more than escape() can stand in for")
        self._added = added  # the texts the tokenizer matches as added tokens, longest first
        self._added_re = re.compile("|".join(map(re.escape, added))) if added else None
        self._escaped_re = re.compile(f"[{chr(ESCAPE_BASE)}-{chr(ESCAPE_BASE + max(len(added), 1) - 1)}]")

    @classmethod
    def for_model(cls, model, tokenizer) -> "PromptBuilder":
        """The builder for a transformers VLM: its image token and the ids its generation stops on."""
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        stops = [eos] if isinstance(eos, int) else list(eos or [])
        return cls(tokenizer, model.config.image_token_id, stops or None)

    # ------------------------------------------------------------------ messages
    @staticmethod
    def messages(pages: int, question: str = "", answer: str | None = None, system: str | None = None,
                 text_after: str = "") -> list[dict]:
        """A user turn of `pages` images then the question (Glyph's layout), and the assistant's answer if given."""
        if isinstance(pages, bool) or not isinstance(pages, int) or pages < 0:
            raise ValueError(f"pages: {pages!r} must be an integer >= 0")
        content = [{"type": "image"} for _ in range(pages)]
        if question:
            content.append({"type": "text", "text": question})
        if text_after:
            content.append({"type": "text", "text": text_after})
        msgs = [{"role": "system", "content": system}] if system else []
        msgs.append({"role": "user", "content": content})
        if answer is not None:
            msgs.append({"role": "assistant", "content": answer})
        return msgs

    def template(self, messages: list[dict], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def expand(self, text: str, visual_tokens: Sequence[int]) -> str:
        """Repeats the k-th image placeholder of `text` visual_tokens[k] times."""
        parts = text.split(self.image_token)
        if len(parts) != len(visual_tokens) + 1:
            raise ValueError(f"the chat template wrote {len(parts) - 1} image placeholders for "
                             f"{len(visual_tokens)} pages")
        out = [parts[0]]
        for n, rest in zip(visual_tokens, parts[1:]):
            out += [self.image_token * int(n), rest]
        return "".join(out)

    def expand_ids(self, ids: Sequence[int], visual_tokens: Sequence[int]) -> list[int]:
        """Token ids of a template holding one image token per image, each repeated visual_tokens[k] times: the
        ids of expand()'s text (the image token is a special token, so text never merges across it), without
        tokenizing the long runs of image tokens."""
        n = sum(1 for t in ids if t == self.image_token_id)
        if n != len(visual_tokens):
            raise ValueError(f"the chat template wrote {n} image placeholders for {len(visual_tokens)} pages")
        out: list[int] = []
        k = 0
        for t in ids:
            if t == self.image_token_id:
                out += [t] * int(visual_tokens[k])
                k += 1
            else:
                out.append(t)
        return out

    def check_text(self, text: str, what: str = "text") -> None:
        if self.image_token in text:
            raise ValueError(f"{what}: contains the image token {self.image_token!r}, which only rendered pages may "
                             "use; remove it")

    # ------------------------------------------------------------------ inference
    def prompt(self, visual_tokens: Sequence[int], question: str, system: str | None = None) -> str:
        """The generation prompt for pages costing visual_tokens[k] tokens each, followed by the question.

        The question and the system text are escape()d, as the training tasks escape theirs: an added token's text
        in them ("<|endoftext|>", "<|user|>") is plain text, not the control token. So the prompt is to be
        tokenized with ids(text, escaped=True), as prompt_ids() does; a question holding the image token is
        refused (check_text), as the server and GRPO's record check refuse it."""
        return self.expand(self._generation_text(len(visual_tokens), question, system), visual_tokens)

    def prompt_ids(self, visual_tokens: Sequence[int], question: str, system: str | None = None) -> list[int]:
        """Token ids of prompt(): the ids of a training sample before its answer (encode()), without tokenizing
        the long runs of image tokens."""
        text = self._generation_text(len(visual_tokens), question, system)
        return self.expand_ids(self.ids(text, escaped=True), visual_tokens)

    def _generation_text(self, pages: int, question: str, system: str | None) -> str:
        """The template of `pages` image placeholders and the question, the texts escaped, before expansion."""
        self.check_text(question, "question")
        system = None if system is None else self.escape(system)
        return self.template(self.messages(pages, self.escape(question), system=system), True)

    # ------------------------------------------------------------------ training
    def escape(self, text: str) -> str:
        """`text` (a record's, not the template's) with each added token's text in it ("<|endoftext|>",
        "<|image|>", ...) made to stand for itself: encode() and encode_pieces() then tokenize it as plain text
        (no added token matched, special or not), where the template's own markup is matched as its tokens. A
        ValueError when the text holds the characters escape() uses."""
        clash = self._escaped_re.search(text)
        if clash:
            raise ValueError(f"the text holds U+{ord(clash.group()):X}, a private-use character the prompt builder "
                             "uses to escape added tokens' texts")
        if self._added_re is None or not self._added_re.search(text):
            return text
        return self._added_re.sub(lambda m: chr(ESCAPE_BASE + self._added.index(m.group())), text)

    def escape_answer(self, text: str) -> str:
        """An assistant's answer escape()d as the training tasks escape theirs: the thinking format's tags stay the
        tokens they are."""
        parts = thinking_parts(text)
        if parts is None:
            return self.escape(text)
        head, inner, after = parts
        return f"{head}<think>{self.escape(inner)}</think>{self.escape(after)}"

    def _unescape(self, text: str) -> str:
        return self._escaped_re.sub(lambda m: self._added[ord(m.group()) - ESCAPE_BASE], text)

    def ids(self, text: str, escaped: bool = False) -> list[int]:
        """Token ids of `text`, no special tokens added (added tokens written in it are matched), as the tokenizer
        gives them; through tiktoken's BPE when the tokenizer's shape allows (~10x faster). escaped: the text
        holds pieces escape() made, tokenized as plain text (no added token matched in them). A lone surrogate
        (a legal JSON escape such as "\\ud800", which UTF-8 and the tokenizers refuse) is tokenized as '?', as the
        renderer's token counter counts it (render.tokens)."""
        if not text:
            return []
        text = _encodable(text)
        if self._bpe is False:
            from ..render.bpe import for_tokenizer

            self._bpe = for_tokenizer(self.tokenizer)
        if escaped and self._added and self._escaped_re.search(text):
            return self._ids_escaped(text)
        if self._bpe is not None:  # the same ids (tests/test_prompt.py, tests/test_bpe.py)
            return self._bpe.encode(text)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _ids_escaped(self, text: str) -> list[int]:
        """ids() of a text holding escaped pieces: split at the added tokens written as such, as the tokenizer
        splits first, and each stretch between them, unescaped, tokenized with no added token matched."""
        out: list[int] = []
        pos = 0
        for m in self._added_re.finditer(text):
            out += self._plain_ids(self._unescape(text[pos:m.start()]))
            out += self.tokenizer.convert_tokens_to_ids([m.group()])
            pos = m.end()
        return out + self._plain_ids(self._unescape(text[pos:]))

    def _plain_ids(self, text: str) -> list[int]:
        """Ids of `text` with no added token matched (special or not), as the tokenizer's model tokenizes it."""
        if not text:
            return []
        if self._bpe is not None:
            return self._bpe.encode(text, match_added=False)
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:  # a slow tokenizer: its own switch, which covers the special tokens
            return self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        if backend.normalizer is not None:
            text = backend.normalizer.normalize_str(text)
        pieces = backend.pre_tokenizer.pre_tokenize_str(text) if backend.pre_tokenizer is not None else [(text, None)]
        return [t.id for piece, _ in pieces for t in backend.model.tokenize(piece)]

    def __getstate__(self) -> dict:  # the tiktoken BPE does not pickle: a DataLoader worker builds its own
        return {**self.__dict__, "_bpe": False}

    def encode(self, messages: list[dict], visual_tokens: Sequence[int]) -> Encoded:
        """Ids and labels of a conversation: loss on every assistant turn (its end marker included), nowhere else.

        Each assistant turn's span is what the template adds after the generation prompt of the turns before it;
        a turn the template does not close with a stop token gets the tokenizer's eos appended, so the model
        learns to stop.
        """
        pieces: list[tuple[str, bool]] = []
        done = ""
        for i, m in enumerate(messages):
            if m.get("role") != "assistant":
                continue
            before = self.template(messages[:i], add_generation_prompt=True)
            upto = self.template(messages[:i + 1], add_generation_prompt=False)
            if not before.startswith(done) or not upto.startswith(before):
                raise ValueError("the chat template does not render a conversation as a prefix of its continuation; "
                                 "cannot mark the assistant's tokens")
            pieces += [(before[len(done):], False), (upto[len(before):], True)]
            done = upto
        if not pieces:
            raise ValueError("the conversation has no assistant turn to learn")
        last = done if messages[-1].get("role") == "assistant" else self.template(messages, add_generation_prompt=False)
        pieces.append((last[len(done):], False))
        expanded, used = [], 0
        for text, train in pieces:
            n = text.count(self.image_token)
            expanded.append((self.expand(text, visual_tokens[used:used + n]), train))
            used += n
        if used != len(visual_tokens):
            raise ValueError(f"the chat template wrote {used} image placeholders for {len(visual_tokens)} pages")
        return self.encode_pieces(expanded, close=True)

    def _stop_ahead(self, ids: list[int]) -> int:
        """How many first tokens of `ids` end a turn: whitespace then a stop token (a template that ends an
        assistant turn with the next turn's <|user|>, as GLM's does), or 0."""
        at = next((i for i, t in enumerate(ids) if t in self.stop_ids), None)
        if at is None or self.tokenizer.decode(ids[:at]).strip():
            return 0
        return at + 1

    def encode_pieces(self, pieces: Sequence[tuple[str, bool]], close: bool = False) -> Encoded:
        """Ids and labels of text pieces tokenized one by one; pieces marked True take loss.

        The interleaved language-modelling task uses it directly (pages and text in order, loss on the text).
        With close=True a trained piece holding no stop token learns to stop: on the next piece's first stop token
        when only whitespace comes before it (a turn the template ends with the next turn's <|user|>), else on an
        appended eos.
        """
        ids: list[int] = []
        labels: list[int] = []
        eos = self.tokenizer.eos_token_id
        tokens = [self.ids(text, escaped=True) for text, _ in pieces]
        learnt = 0  # the previous trained piece's end: this many first tokens of this piece, its stop the last
        for k, ((_, train), piece) in enumerate(zip(pieces, tokens)):
            if close and train and not self.stop_ids.intersection(piece):
                learnt = self._stop_ahead(tokens[k + 1]) if k + 1 < len(tokens) and not pieces[k + 1][1] else 0
                if not learnt and eos is not None:
                    piece = piece + [eos]
            ids += piece
            if not train:
                labels += piece[:learnt] + [IGNORE_INDEX] * (len(piece) - learnt)
                learnt = 0
            elif self.image_token_id in piece:
                labels += [IGNORE_INDEX if t == self.image_token_id else t for t in piece]
            else:
                labels += piece
        return Encoded(ids, labels)
