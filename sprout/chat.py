"""Chat request types shared by directives, engines and the controller (pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sprout.errors import RequestError

ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})


@dataclass(frozen=True)
class Message:
    """One chat message."""

    role: str
    content: str

    def as_dict(self) -> dict[str, str]:
        """The OpenAI-style ``{"role", "content"}`` dict."""
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class ChatRequest:
    """A chat request as an engine receives it, after a directive was applied.

    Attributes:
        messages: the conversation, system prompt(s) first.
        max_new_tokens: cap on generated tokens, or None for the engine's default.
        variant: model variant name (e.g. ``int8``, ``7b``), or None for the default model.
        directive: name of the directive that shaped this request (``L0``...), for engines
            that replay recordings and for the receipt.
        stop: stop sequences.
        temperature: sampling temperature, or None for the engine's default.
    """

    messages: tuple[Message, ...]
    max_new_tokens: int | None = None
    variant: str | None = None
    directive: str | None = None
    stop: tuple[str, ...] = ()
    temperature: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        """The last user message: what the request asks."""
        return last_user_content(self.messages)


def last_user_content(messages: Sequence[Message]) -> str:
    """Content of the last ``user`` message."""
    for message in reversed(messages):
        if message.role == "user":
            return message.content
    raise RequestError("messages: no message with role 'user'")


def parse_messages(raw: object) -> tuple[Message, ...]:
    """Validate OpenAI-style messages (dicts or :class:`Message`) into a tuple.

    Raises:
        RequestError: naming the message index and what is wrong with it.
    """
    if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence):
        raise RequestError(f"messages: expected a list of messages, got {type(raw).__name__}")
    if not raw:
        raise RequestError("messages: the list is empty")
    out: list[Message] = []
    for i, item in enumerate(raw):
        if isinstance(item, Message):
            role, content = item.role, item.content
        elif isinstance(item, Mapping):
            if "role" not in item:
                raise RequestError(f"messages[{i}]: missing 'role'")
            if "content" not in item:
                raise RequestError(f"messages[{i}]: missing 'content'")
            role, content = item["role"], item["content"]
        else:
            raise RequestError(
                f"messages[{i}]: expected a mapping with 'role' and 'content', "
                f"got {type(item).__name__}"
            )
        if not isinstance(role, str) or role not in ROLES:  # unhashable roles fail `in`
            raise RequestError(f"messages[{i}].role: unknown role {role!r}")
        if not isinstance(content, str):
            raise RequestError(
                f"messages[{i}].content: expected a string, got {type(content).__name__}"
            )
        out.append(Message(role, content))
    last_user_content(out)
    return tuple(out)
