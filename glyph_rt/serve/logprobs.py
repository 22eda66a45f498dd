"""Logprobs for OpenAI's `logprobs.content`: the model's log-probabilities of the chosen and the most likely
tokens (taken before the repetition penalty and the temperature, as vLLM's default), and each token's text
and bytes."""
from __future__ import annotations

import re

import torch


def model_logprobs(rows, logits: torch.Tensor) -> tuple[list[int], torch.Tensor] | None:
    """The rows (requests) that asked for logprobs, and their log-probabilities [rows, vocab] from `logits`,
    taken before sampling changes them in place."""
    want = [b for b, r in enumerate(rows) if r.params.logprobs]
    if not want:
        return None
    return want, torch.log_softmax(logits[torch.tensor(want, device=logits.device)], -1)


def token_logprobs(raw, rows, tokens: list[int]) -> dict[int, tuple[float, list[tuple[int, float]]]]:
    """Row -> (its token's log-probability, [(token, log-probability)] of its top_logprobs most likely tokens),
    from model_logprobs' `raw`, for the whole batch at once."""
    if raw is None:
        return {}
    want, lp = raw
    chosen = lp.gather(1, torch.tensor([tokens[b] for b in want], device=lp.device)[:, None])[:, 0].tolist()
    k = max(rows[b].params.top_logprobs for b in want)
    top_v, top_i = lp.topk(k, -1) if k else (lp[:, :0], lp[:, :0].long())
    top_v, top_i = top_v.tolist(), top_i.tolist()
    return {b: (chosen[i], list(zip(top_i[i], top_v[i]))[:rows[b].params.top_logprobs]) for i, b in enumerate(want)}


def _byte_level_alphabet() -> dict[str, int]:
    """Byte-level BPE's characters -> the bytes they stand for (printable Latin-1 bytes as themselves, the rest
    as the characters from U+0100 on, in byte order)."""
    kept = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    out, n = {}, 0
    for b in range(256):
        if b in kept:
            out[chr(b)] = b
        else:
            out[chr(0x100 + n)] = b
            n += 1
    return out


_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # SentencePiece's byte fallback


class TokenText:
    """A tokenizer's token ids -> (text, bytes), cached. The bytes are the token's own, so that the bytes of
    tokens holding parts of one character join into it (its text alone decodes to U+FFFD)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        decoder = type(getattr(backend, "decoder", None)).__name__
        self.alphabet = _byte_level_alphabet() if decoder == "ByteLevel" else None
        self.added = {int(i): str(t) for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()}
        self._cache: dict[int, tuple[str, list[int]]] = {}

    def __call__(self, ids: list[int]) -> list[tuple[str, list[int]]]:
        todo = [i for i in dict.fromkeys(ids) if i not in self._cache]
        if todo:
            texts = self.tokenizer.batch_decode([[i] for i in todo])
            pieces = self.tokenizer.convert_ids_to_tokens(todo)
            for i, text, piece in zip(todo, texts, pieces):
                self._cache[i] = (text, list(self._bytes(i, text, piece)))
        return [self._cache[i] for i in ids]

    def _bytes(self, i: int, text: str, piece) -> bytes:
        if i in self.added or not isinstance(piece, str):
            return text.encode("utf-8")
        if self.alphabet is not None and all(c in self.alphabet for c in piece):
            return bytes(self.alphabet[c] for c in piece)
        m = _BYTE_PIECE.fullmatch(piece)
        if m:
            return bytes([int(m.group(1), 16)])
        return text.encode("utf-8")


def json_logprob(v: float) -> float:
    """JSON has no -inf (or NaN): vLLM's -9999.0 stands for them."""
    return v if v > -9999.0 else -9999.0


def content_entry(token_text: TokenText, tok: int, lp: tuple) -> dict:
    """OpenAI's logprobs.content entry of `tok`: its text, bytes and log-probability, and the top tokens'."""
    chosen, top = lp
    texts = token_text([tok] + [t for t, _ in top])

    def one(tb, v):
        return {"token": tb[0], "logprob": json_logprob(v), "bytes": tb[1]}

    return {**one(texts[0], chosen), "top_logprobs": [one(tb, v) for tb, (_, v) in zip(texts[1:], top)]}
