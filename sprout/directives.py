"""Generation directives and the policy files that define them (pure).

A directive is how one request is asked to be generated: a system prompt (e.g. "Always
answer briefly"), an optional cap on new tokens, an optional model variant and optional stop
sequences. Directives are ordered from L0 (the unconstrained baseline) to the most frugal.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sprout.chat import ChatRequest, Message
from sprout.errors import PolicyFileError

_DIRECTIVE_KEYS = frozenset(
    {"name", "system_prompt", "max_new_tokens", "variant", "stop", "babble_guard"}
)


@dataclass(frozen=True)
class Directive:
    """How one request is generated.

    Attributes:
        name: identifier, e.g. ``L0``.
        system_prompt: instruction prepended as a system message (None: none).
        max_new_tokens: cap on new tokens (None: no cap).
        variant: model variant (None: the default model).
        stop: extra stop sequences.
        babble_guard: end generation once the answer is complete (e.g. a closed code block
            followed by chatter); None leaves the engine's own setting.
    """

    name: str
    system_prompt: str | None = None
    max_new_tokens: int | None = None
    variant: str | None = None
    stop: tuple[str, ...] = ()
    babble_guard: bool | None = None

    def apply(self, request: ChatRequest) -> ChatRequest:
        """Return ``request`` shaped by this directive.

        The directive's system prompt is merged into the app's: it is appended to the app's
        first system message (never replacing it) or added as a new first message. The token
        cap is the smaller of the app's and the directive's.
        """
        messages = request.messages
        if self.system_prompt:
            messages = _merge_system_prompt(messages, self.system_prompt)
        cap = request.max_new_tokens
        if self.max_new_tokens is not None:
            cap = self.max_new_tokens if cap is None else min(cap, self.max_new_tokens)
        extra = request.extra
        if self.babble_guard is not None:
            extra = {**extra, "babble_guard": self.babble_guard}
        return replace(
            request,
            messages=messages,
            extra=extra,
            max_new_tokens=cap,
            variant=self.variant if self.variant is not None else request.variant,
            directive=self.name,
            stop=tuple(dict.fromkeys(request.stop + self.stop)),
        )


def _merge_system_prompt(messages: tuple[Message, ...], text: str) -> tuple[Message, ...]:
    if messages and messages[0].role == "system":
        first = messages[0]
        merged = f"{first.content.rstrip()}\n\n{text}" if first.content.strip() else text
        return (Message("system", merged), *messages[1:])
    return (Message("system", text), *messages)


@dataclass(frozen=True)
class DirectiveSet:
    """An ordered set of directives; the first is the baseline (L0)."""

    directives: tuple[Directive, ...]
    source: str = "<memory>"

    def __post_init__(self) -> None:
        if not self.directives:
            raise PolicyFileError(self.source, "directive", "at least one directive is required")
        names = [d.name for d in self.directives]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise PolicyFileError(self.source, "directive", f"duplicate names {dupes}")

    def __iter__(self) -> Iterator[Directive]:
        return iter(self.directives)

    def __len__(self) -> int:
        return len(self.directives)

    def __getitem__(self, index: int) -> Directive:
        return self.directives[index]

    @property
    def names(self) -> tuple[str, ...]:
        """Directive names in order."""
        return tuple(d.name for d in self.directives)

    @property
    def baseline(self) -> Directive:
        """The unconstrained directive (L0)."""
        return self.directives[0]

    def get(self, name: str) -> Directive:
        """The directive called ``name``.

        Raises:
            KeyError: with the known names, if there is none.
        """
        for directive in self.directives:
            if directive.name == name:
                return directive
        raise KeyError(f"unknown directive {name!r}; known: {', '.join(self.names)}")

    def index(self, name: str) -> int:
        """Position of the directive called ``name``."""
        return self.names.index(self.get(name).name)

    @classmethod
    def from_mapping(cls, doc: Mapping[str, Any], source: str = "<memory>") -> DirectiveSet:
        """Build from a parsed policy document (``[[directive]]`` tables)."""
        unknown = sorted(set(doc) - {"directive", "description", "version"})
        if unknown:
            raise PolicyFileError(source, unknown[0], "unknown top-level key")
        entries = doc.get("directive")
        if not isinstance(entries, list) or not entries:
            raise PolicyFileError(source, "directive", "expected one or more [[directive]] tables")
        return cls(tuple(_parse_directive(e, i, source) for i, e in enumerate(entries)), source)

    @classmethod
    def from_toml(cls, text: str, source: str = "<memory>") -> DirectiveSet:
        """Parse a policy file's TOML text."""
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise PolicyFileError(source, "", f"not valid TOML ({e})") from e
        return cls.from_mapping(doc, source)

    @classmethod
    def load(cls, path: str | Path) -> DirectiveSet:
        """Load and validate a policy file."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise PolicyFileError(str(path), "", f"cannot read file ({e.strerror or e})") from e
        except UnicodeDecodeError as e:
            raise PolicyFileError(str(path), "", "not UTF-8 text") from e
        return cls.from_toml(text, str(path))


def _parse_directive(entry: object, i: int, source: str) -> Directive:
    at = f"directive[{i}]"
    if not isinstance(entry, Mapping):
        raise PolicyFileError(source, at, "expected a table")
    unknown = sorted(set(entry) - _DIRECTIVE_KEYS)
    if unknown:
        raise PolicyFileError(
            source,
            f"{at}.{unknown[0]}",
            f"unknown key; allowed: {', '.join(sorted(_DIRECTIVE_KEYS))}",
        )
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise PolicyFileError(source, f"{at}.name", "required, a non-empty string")
    prompt = entry.get("system_prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise PolicyFileError(source, f"{at}.system_prompt", "must be a string")
    cap = entry.get("max_new_tokens")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        raise PolicyFileError(
            source, f"{at}.max_new_tokens", f"must be an integer >= 1, got {cap!r}"
        )
    variant = entry.get("variant")
    if variant is not None and (not isinstance(variant, str) or not variant.strip()):
        raise PolicyFileError(source, f"{at}.variant", "must be a non-empty string")
    stop = entry.get("stop", [])
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise PolicyFileError(source, f"{at}.stop", "must be a list of non-empty strings")
    guard = entry.get("babble_guard")
    if guard is not None and not isinstance(guard, bool):
        raise PolicyFileError(source, f"{at}.babble_guard", f"must be true or false, got {guard!r}")
    return Directive(
        name=name.strip(),
        babble_guard=guard,
        system_prompt=prompt or None,
        max_new_tokens=cap,
        variant=variant.strip() if variant else None,
        stop=tuple(stop),
    )
