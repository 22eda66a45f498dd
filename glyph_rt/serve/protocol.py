"""OpenAI chat-completions objects (pydantic, as vLLM's entrypoints/openai): requests, responses, stream chunks,
errors."""
from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .engine import MAX_N, MAX_TOP_LOGPROBS, SamplingParams
from .inputs import RequestError


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    # what the openai SDK's assistant message carries back (message.model_dump()): accepted while empty
    refusal: Any = None
    tool_calls: Any = None
    function_call: Any = None
    audio: Any = None
    annotations: Any = None

    @field_validator("refusal", "tool_calls", "function_call", "audio", "annotations")
    @classmethod
    def _empty(cls, v):
        if v is not None and v != []:
            raise ValueError("not supported (no tool calls, audio or refusals here); send it null or leave it out")
        return None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI's others (include_obfuscation) change nothing here
    include_usage: bool = False


class ResponseFormat(BaseModel):
    """Only plain text: guided decoding (json_object, json_schema) is not implemented."""
    model_config = ConfigDict(extra="allow")
    type: Literal["text", "json_object", "json_schema"]


class GlyphOptions(BaseModel):
    """glyph_rt's request field: render settings for this request's long texts, and the length threshold."""
    model_config = ConfigDict(extra="forbid")
    render_config: dict[str, Any] | None = None
    threshold: int | None = Field(default=None, ge=0)


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int | None = Field(default=None, ge=1, le=MAX_N)  # an explicit null means the default, as in vLLM
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    response_format: ResponseFormat | None = None
    # OpenAI's fields that are taken when they change nothing here (the openai SDK sends a None as null): no tools
    # and no logit bias; store, metadata and service_tier are ignored
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    logit_bias: dict[str, Any] | None = None
    store: bool | None = None
    metadata: dict[str, Any] | None = None
    service_tier: str | None = None
    # vLLM's extra sampling parameters
    repetition_penalty: float | None = Field(default=None, gt=0, le=2)
    ignore_eos: bool | None = False
    # glyph_rt's rendering options
    glyph: GlyphOptions | None = None

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, v):
        if v:
            raise ValueError("tool calling is not supported here; send null or [] (or leave it out)")
        return v

    @field_validator("tool_choice")
    @classmethod
    def _no_tool_choice(cls, v):
        if v not in (None, "none"):
            raise ValueError(f"{v!r}: tool calling is not supported here; send null or \"none\" (or leave it out)")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _no_logit_bias(cls, v):
        if v:
            raise ValueError("a logit bias is not supported here; send null or {} (or leave it out)")
        return v

    def sampling(self, default_max_tokens: int) -> SamplingParams:
        if self.stream_options is not None and not self.stream:
            raise RequestError("stream_options: only with stream: true", "stream_options")
        if self.top_logprobs is not None and not self.logprobs:
            raise RequestError("top_logprobs: needs logprobs: true", "top_logprobs")
        if self.response_format is not None and self.response_format.type != "text":
            raise RequestError(f"response_format: type {self.response_format.type!r} is not supported (no guided "
                               'decoding); remove it or use {"type": "text"}', "response_format")
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return SamplingParams(
            max_tokens=self.max_completion_tokens or self.max_tokens or default_max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p, stop=stop, seed=self.seed,
            repetition_penalty=1.0 if self.repetition_penalty is None else self.repetition_penalty,
            presence_penalty=self.presence_penalty or 0.0, frequency_penalty=self.frequency_penalty or 0.0,
            ignore_eos=bool(self.ignore_eos), logprobs=bool(self.logprobs), top_logprobs=self.top_logprobs or 0,
            n=self.n or 1).validate()


def parse_request(body: dict) -> ChatCompletionRequest:
    """The request, or a RequestError naming the first bad field."""
    if not isinstance(body, dict):
        raise RequestError(f"the request body must be a JSON object, got {type(body).__name__}")
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as e:
        errors = e.errors()
    err, loc = errors[0], errors[0]["loc"]
    path = field_path(loc)
    msg = err["msg"]
    tag = next((i for i, x in enumerate(loc) if _union_tag(x)), None)
    if err["type"] == "extra_forbidden":
        parent = field_path(loc[:-1])  # the key as the client wrote it, even one that reads like a union's member
        path = f"{parent}.{loc[-1]}" if parent else str(loc[-1])
        msg = "unknown field; remove it"
    elif err["type"] == "string_unicode":  # a key that is not valid Unicode (a lone surrogate): no field's name
        key = err["input"]
        raise RequestError(f"{path or 'the request body'}: unknown field {key!r} (not valid Unicode: a lone "
                           "surrogate); remove it", f"{path}.{key}" if path else key) from None
    elif tag is not None:  # a union's members each failed: the one the value's JSON type went into, else all
        branch = [x for x in errors if x["loc"][:tag] == loc[:tag] and len(x["loc"]) > tag]
        deeper = [x for x in branch if len(x["loc"]) > tag + 1]
        if deeper:
            err = deeper[0]
            path, msg = field_path(err["loc"]), _message(err)
        else:
            kinds = dict.fromkeys(_JSON_KIND.get(x["loc"][tag].split("[")[0], x["loc"][tag]) for x in branch)
            msg = f"must be {' or '.join(kinds)}, got {_json_kind(err['input'])}"
    else:
        msg = _message(err)
    raise RequestError(f"{path}: {msg}", path) from None


_JSON_KIND = {"str": "a string", "list": "a list", "dict": "an object", "int": "an integer", "float": "a number",
              "bool": "a boolean"}


def _json_kind(value) -> str:
    if value is None:
        return "null"
    return _JSON_KIND.get(type(value).__name__, type(value).__name__)


def _union_tag(x) -> bool:
    """Whether a pydantic error location's element names a union's member (str, list[str], ...), not a field."""
    return isinstance(x, str) and (x in _JSON_KIND or "[" in x)


def _message(err: dict) -> str:
    return str(err["ctx"]["error"]) if err["type"] == "value_error" else err["msg"]


def field_path(loc) -> str:
    """A pydantic error location as OpenAI names a field: messages[0].content, union members left out."""
    out = ""
    for x in loc:
        if isinstance(x, int):
            out += f"[{x}]"
        elif not _union_tag(x):
            out += f".{x}" if out else str(x)
    return out


def completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex


class UsageInfo(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None


class GlyphInfo(BaseModel):
    """What the request's documents cost: pages, visual tokens, their text tokens, and the cache's part."""
    pages: int
    visual_tokens: int
    text_tokens: int
    cache_hit: Literal["none", "document", "prefix"]


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: UsageInfo
    glyph: GlyphInfo | None = None


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class StreamChoice(BaseModel):
    index: int = 0
    delta: DeltaMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionStreamResponse(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[StreamChoice]
    usage: UsageInfo | None = None


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


def response(rid: str, model: str, results: list[dict], usage: dict, glyph: dict | None = None) -> dict:
    """A chat.completion; results: each choice's text, finish_reason and logprobs (the logprobs.content entries
    of its tokens, or None when not asked for), by index."""
    choices = [Choice(index=i, message=AssistantMessage(content=c["text"]), finish_reason=c["finish_reason"],
                      logprobs=None if c["logprobs"] is None else ChoiceLogprobs(content=c["logprobs"]))
               for i, c in enumerate(results)]
    out = ChatCompletionResponse(id=rid, model=model, usage=UsageInfo(**usage), glyph=glyph, choices=choices)
    d = out.model_dump()
    return d if glyph else _without(d, "glyph")


def chunk(rid: str, model: str, created: int, delta: dict, finish_reason: str | None = None,
          usage: dict | None = None, logprobs: list[dict] | None = None, index: int = 0,
          include_usage: bool = False) -> dict:
    """A stream chunk: a choice's delta, or (usage given) the usage chunk; with include_usage, the others carry
    "usage": null, as OpenAI's do."""
    lp = None if logprobs is None else ChoiceLogprobs(content=logprobs)
    choices = [] if usage is not None else [StreamChoice(index=index, delta=DeltaMessage(**delta), logprobs=lp,
                                                         finish_reason=finish_reason)]
    out = ChatCompletionStreamResponse(id=rid, created=created, model=model, choices=choices,
                                       usage=None if usage is None else UsageInfo(**usage)).model_dump()
    for c in out["choices"]:  # a delta names only what it carries
        c["delta"] = {k: v for k, v in c["delta"].items() if v is not None}
    return out if usage is not None or include_usage else _without(out, "usage")


def _without(d: dict, key: str) -> dict:
    d.pop(key, None)
    return d


ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               408: "timeout_error", 413: "invalid_request_error", 429: "rate_limit_error", 500: "server_error",
               503: "service_unavailable", 504: "timeout"}


def error(message: str, status: int, param: str | None = None, code: str | None = None) -> dict:
    info = ErrorInfo(message=message, type=ERROR_TYPES.get(status, "invalid_request_error"), param=param, code=code)
    return ErrorResponse(error=info).model_dump()
