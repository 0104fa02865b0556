"""Stop sequences and the babbling guard: when a generated answer is complete (pure).

Engines feed the text generated so far to :meth:`TextGuard.check` after each token (the
transformers engine from a ``StoppingCriteria``, the OpenAI-compatible engine while reading
a stream) and stop generating as soon as it says so; :meth:`TextGuard.finish` cuts the
final text at the same place. Suppressing babble — the chatter a model appends to a
finished answer — is reported to save 44-89% of the energy of code generation.

Rules, earliest cut wins:

* **stop sequence**: the text is cut before the first occurrence of any stop string;
* **closed code block** (:attr:`BabbleGuard.trailing_chars`): once a fenced code block
  (```` ``` ````) has been opened and closed, more than ``trailing_chars`` non-blank
  characters of prose after it (before any next block opens) mean the model is chatting
  on ("Hope this helps! Let me know..."); the answer is cut right after the closing fence.
  A short lead-in to another block ("Usage:") is not babble: several blocks may follow;
* **repetition** (:attr:`BabbleGuard.max_repeats`): the text ends with the same passage of
  at least ``min_period_chars`` characters repeated ``max_repeats`` times in a row, a
  degenerate loop; one copy is kept.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

#: A fence line: up to three spaces, then three or more backticks (CommonMark).
_FENCE = re.compile(r"^ {0,3}```", re.MULTILINE)

STOP_SEQUENCE = "stop-sequence"
BABBLE_CODE_BLOCK = "babble-code-block"
BABBLE_REPETITION = "babble-repetition"


@dataclass(frozen=True)
class GuardDecision:
    """What a guard decided about the text so far.

    Attributes:
        stop: whether generation should end now.
        cut: the answer is ``text[:cut]`` (None: keep the whole text).
        reason: which rule fired (``stop-sequence``, ``babble-code-block``,
            ``babble-repetition``), or None.
    """

    stop: bool
    cut: int | None = None
    reason: str | None = None


CONTINUE = GuardDecision(False)


@dataclass(frozen=True)
class BabbleGuard:
    """Ends a generation once its answer is complete.

    Attributes:
        trailing_chars: non-blank characters allowed after a closed code block before the
            rest is taken for chatter (a one-line remark fits; an essay does not).
        max_repeats: a passage repeated this many times in a row ends the answer (0: off).
        min_period_chars: shortest passage the repetition rule looks for, so that short
            legitimate repeats (``| --- | --- |``, ``0, 0, 0``) are not taken for a loop.
        max_period_chars: longest passage it looks for (bounds the work per check).
    """

    trailing_chars: int = 80
    max_repeats: int = 4
    min_period_chars: int = 16
    max_period_chars: int = 200

    def __post_init__(self) -> None:
        if self.trailing_chars < 0:
            raise ValueError(f"trailing_chars must be >= 0, got {self.trailing_chars}")
        if self.max_repeats < 0 or self.max_repeats == 1:
            raise ValueError(f"max_repeats must be 0 (off) or >= 2, got {self.max_repeats}")
        if not 1 <= self.min_period_chars <= self.max_period_chars:
            raise ValueError("need 1 <= min_period_chars <= max_period_chars")

    def check(self, text: str) -> GuardDecision:
        """Whether ``text`` is a complete answer followed by babble, and where to cut."""
        cuts = [d for d in (self._code_block(text), self._repetition(text)) if d.stop]
        return min(cuts, key=lambda d: d.cut if d.cut is not None else len(text), default=CONTINUE)

    def _code_block(self, text: str) -> GuardDecision:
        fences = [m.start() for m in _FENCE.finditer(text)]
        # Fences alternate open, close. After each closed block, the prose up to the next
        # opening fence (or the end) is a lead-in to more code if short, babble if long.
        for k in range(1, len(fences), 2):
            line_end = text.find("\n", fences[k])
            if line_end < 0:
                return CONTINUE  # the closing fence's line is still being written
            gap_end = fences[k + 1] if k + 1 < len(fences) else len(text)
            if sum(not c.isspace() for c in text[line_end:gap_end]) > self.trailing_chars:
                return GuardDecision(True, line_end, BABBLE_CODE_BLOCK)
        return CONTINUE

    def _repetition(self, text: str) -> GuardDecision:
        n = self.max_repeats
        if n == 0 or len(text) < n * self.min_period_chars:
            return CONTINUE
        longest = min(self.max_period_chars, len(text) // n)
        for period in range(self.min_period_chars, longest + 1):
            unit = text[-period:]
            if text.endswith(unit * n):
                if _root_len(unit) < self.min_period_chars:
                    return CONTINUE  # a short repeat ("| --- | --- |"), not a loop
                return GuardDecision(True, len(text) - (n - 1) * period, BABBLE_REPETITION)
        return CONTINUE


def _root_len(unit: str) -> int:
    """Length of the shortest string that ``unit`` is a repetition of."""
    size = len(unit)
    for d in range(1, size // 2 + 1):
        if size % d == 0 and unit[:d] * (size // d) == unit:
            return d
    return size


@dataclass(frozen=True)
class TextGuard:
    """Stop sequences plus an optional babbling guard.

    Attributes:
        stop: stop strings; the answer ends before the first one found.
        babble: the babbling guard, or None for none.
    """

    stop: tuple[str, ...] = ()
    babble: BabbleGuard | None = None

    @classmethod
    def build(cls, stop: Iterable[str] = (), babble: BabbleGuard | None = None) -> TextGuard:
        """A guard with the non-empty, de-duplicated ``stop`` strings."""
        return cls(tuple(dict.fromkeys(s for s in stop if s)), babble)

    @property
    def active(self) -> bool:
        """Whether any rule can fire (an inactive guard needs no checks)."""
        return bool(self.stop) or self.babble is not None

    def check(self, text: str) -> GuardDecision:
        """Whether generation should end after ``text``, and where the answer ends."""
        decisions = []
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if hits:
            decisions.append(GuardDecision(True, min(hits), STOP_SEQUENCE))
        if self.babble is not None:
            babble = self.babble.check(text)
            if babble.stop:
                decisions.append(babble)
        if not decisions:
            return CONTINUE
        return min(decisions, key=lambda d: d.cut if d.cut is not None else len(text))

    def finish(self, text: str) -> tuple[str, str | None]:
        """The final answer for ``text`` and the rule that cut it (None: uncut)."""
        decision = self.check(text)
        if not decision.stop or decision.cut is None:
            return text, None
        return text[: decision.cut], decision.reason
