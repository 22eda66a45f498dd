"""The LLM critic: any OpenAI-compatible chat endpoint reads the population and its scores as a
compact table and answers with JSON proposals (mutations and crossovers, each with a reason).

Expected answer (a JSON object, optionally in a ```json fence):

    {"proposals": [
      {"op": "mutate", "parent": "c3", "changes": {"font_size": 8, "dpi": 96}, "reason": "..."},
      {"op": "crossover", "parents": ["c1", "c4"], "take_from_second": ["dpi"], "changes": {}, "reason": "..."}]}

`proposal_genome` turns one proposal into a genome or raises Rejected naming why; the loop then
checks it like any operator's child (ranges, schema, exclusion rules), so an invalid proposal is
never evaluated.
"""
from __future__ import annotations

import json
import os
import re

from .operators import Rejected
from .space import SearchSpace

SYSTEM = """You tune the rendering of long text into page images that a vision-language model reads \
(Glyph-style visual-text compression). Compression = text tokens / visual tokens; accuracy = the model's \
task accuracy on the rendered pages. Propose new rendering configs that improve the objective. \
Answer with one JSON object and nothing else: {"proposals": [{"op": "mutate", "parent": ID, "changes": \
{GENE: VALUE, ...}, "reason": TEXT} | {"op": "crossover", "parents": [ID, ID], "take_from_second": \
[GENE, ...], "changes": {GENE: VALUE, ...}, "reason": TEXT}]}. Every proposal needs a short reason. \
Use only the genes and ranges listed."""


class CriticError(RuntimeError):
    """The critic could not be reached or answered with no usable JSON."""


def table(space: SearchSpace, rows: list[dict]) -> str:
    """The population as a compact pipe table: id, accuracy, compression, then each gene."""
    genes = list(space.genes)
    lines = ["|".join(["id", "acc", "comp", *genes])]
    for r in rows:
        g = r["genome"]
        acc = "fail" if r.get("accuracy") is None else f"{r['accuracy']:.3f}"
        comp = "fail" if r.get("compression") is None else f"{r['compression']:.3f}"
        lines.append("|".join([r["id"], acc, comp, *(_cell(g[n]) for n in genes)]))
    return "\n".join(lines)


def _cell(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v).replace("|", "\\|").replace("\n", "\\n")


def prompt(space: SearchSpace, rows: list[dict], goal_text: str, n: int) -> list[dict]:
    user = (f"Objective: {goal_text}\n\nGenes:\n{space.describe()}\n\n"
            f"Population (best first):\n{table(space, rows)}\n\nPropose up to {n} new configs.")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


_OPENER = re.compile(r"[{\[]")


def parse_answer(text: str) -> list:
    """The proposals list of an answer; raises CriticError when there is no JSON object with one.

    A reasoning model's thoughts (everything up to the last </think>, or an unclosed <think> block)
    are dropped; of several JSON objects with a proposals list, the last one is the answer."""
    if not isinstance(text, str) or not text.strip():
        raise CriticError("the critic's answer is empty")
    body = text.rpartition("</think>")[2] if "</think>" in text else re.sub(r"<think>.*", "", text, flags=re.S)
    decoder, found_json, found, lists, pos, unreadable = json.JSONDecoder(), False, None, [], 0, None
    while (m := _OPENER.search(body, pos)) is not None:
        pos = m.start() + 1
        try:
            obj, end = decoder.raw_decode(body, m.start())
        except json.JSONDecodeError:
            continue
        except (ValueError, RecursionError) as e:  # nested too deep, or an integer of over 4,300 digits
            unreadable = unreadable or f"{type(e).__name__}: {e}"
            continue
        found_json = True
        if isinstance(obj, dict) and isinstance(obj.get("proposals"), list):
            found, pos = obj["proposals"], end  # a draft before it is not the answer; nothing inside it is either
        elif isinstance(obj, list) and obj and all(isinstance(p, dict) for p in obj):
            lists.append(obj)
    if found is not None:
        return found
    if lists:  # a bare list of proposals
        return lists[0]
    if not found_json and unreadable:
        raise CriticError(f"the critic's answer has no JSON that can be read ({unreadable:.100}): {text[:200]!r}")
    if not found_json:
        raise CriticError(f"the critic's answer is not JSON: {text[:200]!r}")
    raise CriticError(f"the critic's answer has no 'proposals' list: {text[:200]!r}")


class Critic:
    """A chat client for any OpenAI-compatible endpoint (glyph_rt's server, vLLM, a hosted API). `api_key` None:
    $OPENAI_API_KEY, or no key ("EMPTY") when it is unset; make_critic passes the one critic.api_key_env names."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout: float = 60.0,
                 temperature: float = 0.7, max_tokens: int = 2048, max_retries: int = 2):
        try:
            import openai
        except ImportError:
            raise RuntimeError("the LLM critic needs the openai client: pip install 'glyph_rt[search]'") from None
        key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        self.client = openai.OpenAI(base_url=base_url, api_key=key, timeout=timeout,
                                    max_retries=max_retries)  # the client's backoff on 429, 5xx and lost connections
        self.model, self.temperature, self.max_tokens = model, temperature, max_tokens
        self.base_url = base_url

    def ask(self, messages: list[dict]) -> str:
        """The answer's text; raises CriticError on any failure of the endpoint or of its response
        (an error status, a connection lost, a body cut short, no message)."""
        import openai

        try:
            r = self.client.chat.completions.create(model=self.model, messages=messages,
                                                    temperature=self.temperature, max_tokens=self.max_tokens)
            content = r.choices[0].message.content or ""
        except openai.OpenAIError as e:
            hint = ""
            if isinstance(e, openai.BadRequestError) and (getattr(e, "code", None) == "context_length_exceeded"
                                                          or "context length" in str(e).lower()):
                hint = (f" (the prompt plus critic.max_tokens={self.max_tokens} does not fit the critic model's "
                        "context: lower critic.max_tokens)")
            raise CriticError(f"critic endpoint {self.base_url}: {type(e).__name__}: {e}{hint}") from None
        except (AttributeError, IndexError, TypeError):
            raise CriticError(f"critic endpoint {self.base_url}: the response has no message") from None
        except Exception as e:  # e.g. a 200 whose JSON body was cut short
            raise CriticError(f"critic endpoint {self.base_url}: unreadable response: {type(e).__name__}: {e}") \
                from None
        if isinstance(content, list):  # content parts
            content = "".join(p.get("text") or "" for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            raise CriticError(f"critic endpoint {self.base_url}: the message content is not text: {content!r:.200}")
        return content


def proposal_genome(space: SearchSpace, p, parents: dict[str, dict]) -> tuple[dict, list[str], str]:
    """(genome, parent ids, reason) of one proposal; raises Rejected (malformed, no_reason,
    unknown_op, unknown_parent, unknown_gene, bad_value) before anything is evaluated."""
    if not isinstance(p, dict):
        raise Rejected("malformed", f"a proposal must be an object, got {type(p).__name__}")
    reason = p.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise Rejected("no_reason")
    op = p.get("op")
    changes = p.get("changes") or {}
    if not isinstance(changes, dict):
        raise Rejected("malformed", "changes must be an object")
    if op == "mutate":
        ids = [p.get("parent")]
    elif op == "crossover":
        ids = p.get("parents")
        if not isinstance(ids, list) or len(ids) != 2:
            raise Rejected("malformed", "crossover needs two parents")
    else:
        raise Rejected("unknown_op", repr(op))
    for i in ids:
        if not isinstance(i, str) or i not in parents:
            raise Rejected("unknown_parent", repr(i))
    genome = dict(parents[ids[0]])
    if op == "crossover":
        take = p.get("take_from_second") or []
        if not isinstance(take, list):
            raise Rejected("malformed", "take_from_second must be a list of genes")
        for name in take:
            if not isinstance(name, str):
                raise Rejected("malformed", f"take_from_second: {name!r} is not a gene name")
            if name not in space.genes:
                raise Rejected("unknown_gene", repr(name))
            genome[name] = parents[ids[1]][name]
    for name, v in changes.items():
        if not isinstance(name, str):
            raise Rejected("malformed", f"changes: {name!r} is not a gene name")
        if name not in space.genes:
            raise Rejected("unknown_gene", repr(name))
        try:
            genome[name] = space.genes[name].coerce(v)
        except ValueError as e:
            raise Rejected("bad_value", str(e)) from None
    return genome, ids, reason.strip()
