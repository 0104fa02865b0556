"""Stand-ins for an engine and a policy: engines that answer at once or token by token, and a
policy that always picks one directive."""

from __future__ import annotations

import random
import time

from sprout.chat import ChatRequest
from sprout.directives import Directive
from sprout.engines.base import Engine, Generation
from sprout.errors import EngineError
from sprout.policy.base import CarbonContext, Decision, Policy

#: A chat to send to :class:`TokenEngine`, and the tokens it streams.
ASK = [{"role": "user", "content": "Tell me about the Eiffel Tower."}]
WORDS = [f"word{i} " for i in range(50)]


class FixedPolicy(Policy):
    """Always the same directive (so tests can see its effect upstream)."""

    kind = "fixed"

    def __init__(self, directive: Directive) -> None:
        self.directive = directive

    def decide(self, prompt: str, carbon: CarbonContext, rng: random.Random) -> Decision:
        return Decision(self.directive, "fixed")


class EchoEngine(Engine):
    """Answers "Paris." to anything, at once (5 input tokens, 2 output tokens)."""

    name = "echo"

    def generate(self, request: ChatRequest) -> Generation:
        return Generation("Paris.", 5, 2, 0.001, "echo-1", finish_reason="stop")


class TokenEngine(Engine):
    """Generates ``tokens`` one at a time through the request's guard, like a streaming
    server; may fail after ``fail_after`` tokens, or before any (``reached``: whether the
    failure came after the model had accepted the request)."""

    name = "tokens"

    def __init__(
        self,
        tokens: list[str],
        *,
        delay_s: float = 0.0,
        fail_after: int | None = None,
        reached: bool = True,
        finish_reason: str = "stop",
    ) -> None:
        self.tokens = tokens
        self.delay_s = delay_s
        self.fail_after = fail_after
        self.reached = reached
        self.finish_reason = finish_reason
        self.generated = 0

    def model_for(self, variant: str | None) -> str:
        return "token-model" if variant is None else f"token-model-{variant}"

    def generate(self, request: ChatRequest) -> Generation:
        started = time.perf_counter()
        guard = request.extra.get("babble_guard")
        text = ""
        for i, token in enumerate(self.tokens):
            if self.fail_after is not None and i == self.fail_after:
                raise EngineError("upstream dropped the stream", reached_model=self.reached)
            time.sleep(self.delay_s)
            text += token
            self.generated += 1
            if hasattr(guard, "check") and guard.check(text).stop:
                break
        if self.fail_after is not None:
            raise EngineError("upstream failed at the end", reached_model=self.reached)
        return Generation(
            text, 12, self.generated, time.perf_counter() - started, "token-model",
            finish_reason=self.finish_reason,
        )  # fmt: skip
