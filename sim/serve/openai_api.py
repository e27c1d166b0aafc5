"""The OpenAI-compatible request and response shapes of ``servesim serve``: parsing, the prompt's token count, bodies.

Pure functions (no web framework), so that the rules are tested on their own. What a request asks for:

- the prompt's tokens: a completions ``prompt`` given as token ids counts one token per id; text (a completions
  prompt, or a chat's message contents joined) counts ``ceil(UTF-8 bytes / 4)``, at least 1: OpenAI's rule of thumb
  of about four characters of English per token ("What are tokens and how to count them", help.openai.com). A
  simulated deployment has no tokenizer; send token ids when the count must be exact;
- the output's tokens: ``max_tokens`` (chat: or ``max_completion_tokens``), every one generated (no end-of-sequence
  stop, as with vLLM's ``ignore_eos``); absent, 16 for completions and the rest of the context for chat, as vLLM.
Each output token is the placeholder text ``PLACEHOLDER``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any

#: the text of every generated token (one word, so that word-counting clients count one token per chunk)
PLACEHOLDER = " tok"
#: bytes of text per prompt token (OpenAI's rule of thumb; see the module docstring)
BYTES_PER_TOKEN = 4
#: vLLM's default max_tokens for /v1/completions (OpenAI's too)
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
#: the largest request body read (a prompt of this many bytes is ~2.6M tokens: beyond any context)
MAX_BODY_BYTES = 10 << 20


class ApiError(Exception):
    """A refused request: HTTP ``status`` with OpenAI's error body (``error_body``)."""

    def __init__(self, message: str, status: int = 400, kind: str = "BadRequestError", param: str | None = None):
        super().__init__(message)
        self.status, self.kind, self.param = status, kind, param

    def body(self) -> dict[str, Any]:
        return error_body(str(self), self.status, self.kind, self.param)


def error_body(message: str, status: int, kind: str, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape, with vLLM's type names: ``{"error": {message, type, param, code}}``."""
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


@dataclass(frozen=True)
class Ask:
    """What one request asks of the deployment."""

    chat: bool
    model: str | None
    prompt_tokens: int
    max_tokens: int | None  # None: the rest of the context (chat without a limit)
    stream: bool
    include_usage: bool


def parse_json(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or ``ApiError`` (malformed JSON, not an object, too large)."""
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(f"request body of {len(raw)} bytes exceeds {MAX_BODY_BYTES}", 413, "RequestTooLarge")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, an integer over 4,300 digits
        raise ApiError(f"malformed JSON in the request body: {e}") from None
    if not isinstance(body, dict):
        raise ApiError(f"the request body must be a JSON object, got {type(body).__name__}")
    return body


def text_tokens(text: str) -> int:
    """Prompt tokens of ``text``: ceil(UTF-8 bytes / 4), at least 1."""
    return max(1, math.ceil(len(text.encode("utf-8", "surrogatepass")) / BYTES_PER_TOKEN))


def _int_field(body: dict, name: str, low: int = 1) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ApiError(f"'{name}' must be an integer >= {low}, got {json.dumps(v)[:40]}", param=name)
    return v


def _prompt_tokens(prompt: Any) -> int:
    """A completions ``prompt``: text, token ids, or a list holding one of them."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return text_tokens(prompt)
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0
                                                   for t in prompt):
        return len(prompt)
    raise ApiError("'prompt' must be a string, a non-empty list of token ids, or a list of one of them "
                   "(one prompt per request)", param="prompt")


def _message_text(messages: Any) -> str:
    """The text of a chat's ``messages``: each content string, or its ``text`` parts, joined by newlines."""
    if not isinstance(messages, list) or not messages:
        raise ApiError("'messages' must be a non-empty list of {role, content} objects", param="messages")
    parts: list[str] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ApiError(f"messages[{i}] must be an object with a 'role' string", param="messages")
        content = m.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            for p in content:
                if not isinstance(p, dict) or p.get("type") != "text" or not isinstance(p.get("text"), str):
                    raise ApiError(f"messages[{i}].content: only text parts are served", param="messages")
                parts.append(p["text"])
        elif content is not None:
            raise ApiError(f"messages[{i}].content must be a string or a list of text parts", param="messages")
    return "\n".join(parts)


def parse_ask(body: dict[str, Any], chat: bool) -> Ask:
    """What a /v1/completions (``chat`` False) or /v1/chat/completions body asks; ``ApiError`` when malformed."""
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError("'model' must be a string", param="model")
    if _int_field(body, "n") not in (None, 1):
        raise ApiError("only n=1 is served", param="n")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError("'stream' must be true or false", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ApiError("'stream_options' must be an object", param="stream_options")
    if chat:
        if "prompt" in body:
            raise ApiError("a chat request gives 'messages', not 'prompt' (use /v1/completions)", param="prompt")
        prompt = text_tokens(_message_text(body.get("messages")))
        limit = _int_field(body, "max_completion_tokens")
        max_tokens = limit if limit is not None else _int_field(body, "max_tokens")
    else:
        if "prompt" not in body:
            raise ApiError("'prompt' is required", param="prompt")
        prompt = _prompt_tokens(body["prompt"])
        max_tokens = _int_field(body, "max_tokens")
        if max_tokens is None:
            max_tokens = COMPLETIONS_DEFAULT_MAX_TOKENS
    return Ask(chat, model, prompt, max_tokens, stream, bool(options.get("include_usage", False)))


def context_error(ask: Ask, max_model_len: int) -> ApiError | None:
    """vLLM's refusal of a request over the context (its message), or None when it fits."""
    if ask.prompt_tokens >= max_model_len:
        return ApiError(f"This model's maximum context length is {max_model_len} tokens. However, your request has "
                        f"{ask.prompt_tokens} input tokens. Please reduce the length of the input messages.",
                        param="messages" if ask.chat else "prompt")
    if ask.max_tokens is not None and ask.prompt_tokens + ask.max_tokens > max_model_len:
        where = "messages" if ask.chat else "prompt"
        return ApiError(f"This model's maximum context length is {max_model_len} tokens. However, you requested "
                        f"{ask.prompt_tokens + ask.max_tokens} tokens ({ask.prompt_tokens} in the {where}, "
                        f"{ask.max_tokens} in the completion). Please reduce the length of the {where} or "
                        f"completion.", param="max_tokens")
    return None


# ---- response bodies ---------------------------------------------------------------------------------------------

def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def response_id(chat: bool, n: int) -> str:
    """``cmpl-N`` or ``chatcmpl-N``: the server's request number, so that a client's record joins the server's."""
    return f"{'chatcmpl' if chat else 'cmpl'}-{n}"


def chunk(chat: bool, rid: str, model: str, created: int, text: str | None, finish: str | None,
          first: bool = False) -> dict[str, Any]:
    """One streamed chunk: a token's text (``text``), or the final one with ``finish`` reason."""
    if chat:
        delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
        if text is not None:
            delta["content"] = text
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [choice]}
    choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
    return {"id": rid, "object": "text_completion", "created": created, "model": model, "choices": [choice]}


def usage_chunk(chat: bool, rid: str, model: str, created: int, prompt_tokens: int, completion_tokens: int
                ) -> dict[str, Any]:
    """The last chunk when ``stream_options.include_usage``: no choices, the usage."""
    return {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion", "created": created,
            "model": model, "choices": [], "usage": usage(prompt_tokens, completion_tokens)}


def completion(chat: bool, rid: str, model: str, created: int, n_tokens: int, finish: str, prompt_tokens: int
               ) -> dict[str, Any]:
    """A whole (non-streamed) answer of ``n_tokens`` placeholder tokens."""
    text = PLACEHOLDER * n_tokens
    if chat:
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                                  "finish_reason": finish}
        kind = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        kind = "text_completion"
    return {"id": rid, "object": kind, "created": created, "model": model, "choices": [choice],
            "usage": usage(prompt_tokens, n_tokens)}


def models_list(name: str, max_model_len: int, created: int | None = None) -> dict[str, Any]:
    """/v1/models: the one served model, with its context length (as vLLM lists it)."""
    return {"object": "list", "data": [{"id": name, "object": "model", "created": created or int(time.time()),
                                        "owned_by": "servesim", "root": name, "parent": None,
                                        "max_model_len": max_model_len}]}


def sse(obj: Any) -> bytes:
    """One server-sent event carrying ``obj`` as JSON (``data: [DONE]`` for the string ``"[DONE]"``)."""
    data = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
    return f"data: {data}\n\n".encode()
