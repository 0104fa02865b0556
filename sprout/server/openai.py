"""OpenAI's chat-completions format, mapped to and from Sprout's.

:func:`parse_chat_call` validates a request body into a :class:`ChatCall` (what the
controller is asked for); the other functions build what goes back: the completion body
and its usage, a streamed chunk, and the receipt as the ``sprout`` extension field and as
``x-sprout-*`` headers. Nothing here needs fastapi, so :mod:`sprout.integrations.litellm`
can reuse the receipt headers without the ``server`` extra.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sprout.chat import parse_messages
from sprout.errors import RequestError
from sprout.receipt import Receipt
from sprout.server._errors import ApiError, bad
from sprout.server._openapi import MAX_STOP_STRINGS, MAX_TOKENS

if TYPE_CHECKING:
    from sprout.controller import ChatResult

#: Request fields the proxy honours; other fields are ignored and named in a header.
_HANDLED = frozenset(
    {
        "messages",
        "model",
        "max_tokens",
        "max_completion_tokens",
        "stream",
        "stream_options",
        "stop",
        "temperature",
        "n",
        "tools",
        "functions",
        "tool_choice",
        "function_call",
        "response_format",
        "logprobs",
        "top_logprobs",
        "user",
    }
)
_PARAM_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_RECEIPT_FIELDS = tuple(f.name for f in dataclasses.fields(Receipt))


@dataclass(frozen=True)
class ChatCall:
    """A validated chat-completions request.

    Attributes:
        messages: the messages, content parts flattened to text.
        model: the model asked for (None: the default).
        max_tokens: the app's token cap.
        stream: answer with server-sent events.
        include_usage: send a usage chunk at the end of a stream.
        stop: the app's stop sequences.
        temperature: the app's temperature.
        ignored: names of request fields the proxy does not honour.
    """

    messages: list[dict[str, Any]]
    model: str | None = None
    max_tokens: int | None = None
    stream: bool = False
    include_usage: bool = False
    stop: tuple[str, ...] = ()
    temperature: float | None = None
    ignored: tuple[str, ...] = ()


def _is_int(value: object) -> bool:
    """An integer, as JSON Schema counts them: ``2`` or ``2.0``, never ``true``."""
    if isinstance(value, float):
        return value.is_integer()
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _text_content(content: object, at: str) -> object:
    """Message content with OpenAI's text parts joined; other content returned as is."""
    if not isinstance(content, list):
        return content
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, Mapping) or part.get("type") != "text":
            kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
            raise bad(
                f"{at}.content[{j}]: only text content parts are supported, got {kind!r}",
                f"{at}.content[{j}]",
                "unsupported_content",
            )
        text = part.get("text")
        if not isinstance(text, str):
            raise bad(f"{at}.content[{j}].text: expected a string", f"{at}.content[{j}].text")
        texts.append(text)
    return "\n".join(texts)


def parse_chat_call(body: object, served: Sequence[str] | None = None) -> ChatCall:
    """Validate a decoded ``/v1/chat/completions`` body.

    Args:
        body: the decoded JSON.
        served: the model names accepted (None: any).

    Raises:
        ApiError: 400 naming the parameter and the problem, or 404 for an unknown model.
    """
    if not isinstance(body, dict):
        raise bad(
            f"the request body must be a JSON object, got {type(body).__name__}",
            None,
            "invalid_type",
        )
    if "messages" not in body:
        raise bad("'messages' is required", "messages", "missing_required_parameter")
    raw = body["messages"]
    if not isinstance(raw, list):
        raise bad("'messages' must be a list of messages", "messages", "invalid_type")
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise bad(f"messages[{i}]: expected an object", f"messages[{i}]", "invalid_type")
        if "role" in item and not isinstance(item["role"], str):
            raise bad(
                f"messages[{i}].role: expected a string", f"messages[{i}].role", "invalid_type"
            )
        if "content" in item:
            item = {**item, "content": _text_content(item["content"], f"messages[{i}]")}
        messages.append(item)
    try:
        parse_messages(messages)
    except RequestError as e:
        text = str(e)
        param = text.split(":", 1)[0] if text.startswith("messages") else "messages"
        raise bad(text, param) from None

    model = body.get("model")
    if model is not None:
        if not isinstance(model, str):
            raise bad("'model' must be a string", "model", "invalid_type")
        if served is not None and model not in served:
            raise ApiError(
                404,
                f"The model {model!r} does not exist or is not served by this proxy "
                f"(served: {', '.join(served) or 'none'})",
                param="model",
                code="model_not_found",
            )

    max_tokens = None
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if not _is_int(value) or not 1 <= value <= MAX_TOKENS:
            raise bad(f"'{name}' must be an integer in [1, {MAX_TOKENS}]", name)
        value = int(value)
        max_tokens = value if max_tokens is None else min(max_tokens, value)

    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise bad("'stream' must be true or false", "stream", "invalid_type")
    include_usage = False
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise bad("'stream_options' must be an object", "stream_options", "invalid_type")
        usage = options.get("include_usage")
        if usage is not None and not isinstance(usage, bool):
            raise bad(
                "'stream_options.include_usage' must be true or false",
                "stream_options.include_usage",
                "invalid_type",
            )
        include_usage = bool(usage)

    stop = body.get("stop")
    stops: tuple[str, ...] = ()
    if isinstance(stop, str):
        stops = (stop,)
    elif isinstance(stop, list):
        if len(stop) > MAX_STOP_STRINGS or not all(isinstance(s, str) for s in stop):
            raise bad(f"'stop' must be a string or up to {MAX_STOP_STRINGS} strings", "stop")
        stops = tuple(stop)
    elif stop is not None:
        raise bad("'stop' must be a string or a list of strings", "stop", "invalid_type")

    temperature = body.get("temperature")
    if temperature is not None and (
        not _is_number(temperature) or not math.isfinite(temperature) or not 0 <= temperature <= 2
    ):
        raise bad("'temperature' must be a number in [0, 2]", "temperature")

    n = body.get("n")
    if n is not None and (not _is_int(n) or n < 1):
        raise bad("'n' must be an integer >= 1", "n")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise bad("'user' must be a string", "user", "invalid_type")
    # Fields that change what the answer is: refused rather than silently ignored. Checked
    # by type as well as value (``0 == False`` in Python, not in JSON).
    top_logprobs = body.get("top_logprobs")
    unsupported = {
        "n": n is not None and n != 1,
        "tools": body.get("tools") not in (None, []),
        "functions": body.get("functions") not in (None, []),
        "logprobs": not (body.get("logprobs") is None or body.get("logprobs") is False),
        "top_logprobs": top_logprobs is not None
        and (not _is_number(top_logprobs) or top_logprobs != 0),
        "response_format": body.get("response_format") not in (None, {"type": "text"}),
    }
    for name, refused in unsupported.items():
        if refused:
            raise bad(
                f"'{name}' is not supported by the Sprout proxy", name, "unsupported_parameter"
            )
    ignored = tuple(sorted(k for k in body if k not in _HANDLED))
    return ChatCall(
        messages=messages,
        model=model,
        max_tokens=max_tokens,
        stream=bool(stream),
        include_usage=include_usage,
        stop=tuple(s for s in stops if s),
        temperature=float(temperature) if temperature is not None else None,
        ignored=ignored,
    )


def header_list(names: Sequence[str]) -> str:
    """Field names safe for a header (latin-1, no controls); others counted."""
    safe = [n for n in names if _PARAM_NAME.fullmatch(n)][:20]
    rest = len(names) - len(safe)
    return ", ".join(safe + ([f"+{rest} more"] if rest else []))


def _float(value: float) -> str:
    return f"{value:.6g}"


def receipt_json(receipt: Receipt) -> dict[str, Any]:
    """The ``sprout`` field: the receipt (as :meth:`Receipt.to_json_dict` gives it), with
    its total and saving."""
    # A shallow copy: the receipt holds only scalars, and asdict's deep copy costs ~0.1 ms.
    out = {name: getattr(receipt, name) for name in _RECEIPT_FIELDS}
    for key in ("created_at", "ci_time"):
        out[key] = out[key].isoformat()
    out["total_g"] = receipt.total_g
    out["saving_g"] = receipt.saving_g
    return out


def receipt_headers(receipt: Receipt) -> dict[str, str]:
    """The ``x-sprout-*`` headers of an answered request."""
    headers = {
        "x-sprout-request-id": receipt.request_id,
        "x-sprout-directive": receipt.directive,
        "x-sprout-decision": receipt.decision,
        "x-sprout-gco2e": _float(receipt.total_g),
        "x-sprout-kwh": _float(receipt.energy_kwh),
        "x-sprout-energy-source": receipt.energy_source,
        "x-sprout-ci-g-per-kwh": _float(receipt.ci_g_per_kwh),
        "x-sprout-ci-fallback": receipt.ci_fallback,
    }
    if receipt.saving_g is not None:
        headers["x-sprout-saving-gco2e"] = _float(receipt.saving_g)
    return headers


def finish_reason(reason: str | None) -> str:
    """OpenAI's finish reason for an engine's."""
    # Guard rules (``stop-sequence``, ``babble-...``) end an answer as a stop string does.
    return "length" if reason == "length" else "stop"


def usage(result: ChatResult) -> dict[str, int]:
    """The ``usage`` object: the generation's token counts."""
    g = result.generation
    return {
        "prompt_tokens": g.input_tokens,
        "completion_tokens": g.output_tokens,
        "total_tokens": g.input_tokens + g.output_tokens,
    }


def completion(call: ChatCall, result: ChatResult, created: int) -> dict[str, Any]:
    """The ``chat.completion`` body of a non-streamed answer, its receipt in ``sprout``."""
    generation, receipt = result.generation, result.receipt
    return {
        "id": f"chatcmpl-{receipt.request_id}",
        "object": "chat.completion",
        "created": created,
        "model": generation.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.text},
                "finish_reason": finish_reason(generation.finish_reason),
                "logprobs": None,
            }
        ],
        "usage": usage(result),
        "sprout": receipt_json(receipt),
    }


def completion_chunk(
    request_id: str, created: int, model: str, delta: dict[str, Any], reason: str | None
) -> dict[str, Any]:
    """One ``chat.completion.chunk`` of a streamed answer."""
    return {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": reason}],
    }


def dumps(payload: object) -> bytes:
    """Compact UTF-8 JSON, as every body is sent."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
