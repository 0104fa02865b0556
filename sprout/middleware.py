"""Carbon-aware wrapping of an app's own ``generate(messages, **kw)`` function.

:func:`carbon_aware` turns any function that answers OpenAI-style messages into a
carbon-aware one, in three lines::

    @carbon_aware(settings=load_settings(db_url="sqlite:///ledger.db"))
    def generate(messages, **kw):
        return my_llm(messages, **kw)

Every call then goes through :meth:`sprout.controller.Controller.chat`: the function is
the controller's engine (:class:`FunctionEngine`), so the directive, energy, receipt and
ledger are the controller's own, with no second copy of its logic. The function receives
the messages as the directive shaped them (its system prompt merged in) and the
directive's ``max_tokens``, ``stop`` and ``model`` (for a variant), as far as its signature
accepts them. The wrapped call returns what the function returned, so callers need no
change; ``generate.chat(...)`` returns the :class:`~sprout.controller.ChatResult` with the
receipt.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sprout.config import load_settings
from sprout.energy.estimate import approx_tokens
from sprout.engines.base import Engine, Generation
from sprout.errors import EngineError
from sprout.factory import build_controller

if TYPE_CHECKING:
    from sprout.chat import ChatRequest
    from sprout.config import Settings
    from sprout.controller import ChatResult, Controller
    from sprout.receipt import Receipt

#: Keyword arguments the wrapper itself takes (recorded in the receipt, not passed on).
SPROUT_KWARGS = ("tenant", "opt_out", "request_id", "prompt_id")


@dataclass
class _Call:
    """One wrapped call: the app's keyword arguments in, the function's return value out."""

    kwargs: dict[str, Any]
    loop: asyncio.AbstractEventLoop | None = None
    raw: Any = None


_CALL: contextvars.ContextVar[_Call | None] = contextvars.ContextVar("sprout_call", default=None)


def _field(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)


def read_output(raw: Any) -> tuple[str, int | None, int | None, str | None]:
    """Text, prompt and completion tokens, and model of a generate function's return value.

    Accepts a string, an OpenAI-style response dict or an object shaped like one (the
    ``openai`` client's ``ChatCompletion``, LiteLLM's ``ModelResponse``).

    Raises:
        EngineError: the value has none of these shapes.
    """
    if isinstance(raw, str):
        return raw, None, None, None
    try:
        text = _field(_field(_field(raw, "choices")[0], "message"), "content")
    except (TypeError, IndexError, KeyError):
        text = False  # no choices[0].message
    if text is not None and not isinstance(text, str):
        raise EngineError(
            f"generate function returned {type(raw).__name__}; expected a string or an "
            "OpenAI-style chat completion with choices[0].message.content"
        )
    usage = _field(raw, "usage")
    prompt, completion = _field(usage, "prompt_tokens"), _field(usage, "completion_tokens")
    model = _field(raw, "model")
    return (
        text or "",
        prompt if isinstance(prompt, int) and not isinstance(prompt, bool) else None,
        completion if isinstance(completion, int) and not isinstance(completion, bool) else None,
        model if isinstance(model, str) and model else None,
    )


class FunctionEngine(Engine):
    """An engine that answers with the app's own ``generate(messages, **kw)`` function.

    Args:
        fn: the function (sync or ``async``); it gets a list of ``{"role", "content"}``
            dicts and, when its signature accepts them, ``max_tokens``, ``stop``,
            ``temperature`` and ``model`` keyword arguments. It returns a string or an
            OpenAI-style chat completion (dict or object).
        model: the model recorded when the function reports none.
        variant_models: model name per directive variant, passed as ``model=``; a
            directive whose variant is not listed fails rather than being served, and
            recorded, as another model.
        runs_locally: whether the function generates on this machine (lets measuring
            energy meters see it).
        max_tokens_arg: the name of the function's token-cap argument.
        clock: monotonic clock for latencies.
    """

    name = "function"

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        model: str = "",
        variant_models: Mapping[str, str] | None = None,
        runs_locally: bool = False,
        max_tokens_arg: str = "max_tokens",
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"FunctionEngine: expected a function, got {fn!r}")
        self.fn = fn
        self.model = model or getattr(fn, "__name__", "function")
        self.variant_models = dict(variant_models or {})
        self.runs_locally = runs_locally
        self.max_tokens_arg = max_tokens_arg
        self.is_async = inspect.iscoroutinefunction(fn)
        self._clock = clock
        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):  # a builtin without a signature: pass everything
            params = ()
        self._any_kwargs = not params or any(p.kind is p.VAR_KEYWORD for p in params)
        self._accepts = frozenset(p.name for p in params)

    def _accepted(self, name: str) -> bool:
        return self._any_kwargs or name in self._accepts

    def model_for(self, variant: str | None) -> str | None:
        """The ``model=`` argument for ``variant`` (None: leave the app's own).

        Raises:
            EngineError: the variant has no model configured.
        """
        if variant is None:
            return None
        try:
            return self.variant_models[variant]
        except KeyError:
            raise EngineError(
                f"function engine: no model configured for variant {variant!r}; "
                "map it in variant_models"
            ) from None

    def generate(self, request: ChatRequest) -> Generation:
        """Call the function with the shaped request."""
        call = _CALL.get()
        kwargs = dict(call.kwargs) if call is not None else {}
        shaped: dict[str, Any] = {}
        if request.max_new_tokens is not None:
            shaped[self.max_tokens_arg] = request.max_new_tokens
        if request.stop:
            shaped["stop"] = list(request.stop)
        if request.temperature is not None:
            shaped["temperature"] = request.temperature
        model = self.model_for(request.variant)
        if model is not None:
            shaped["model"] = model
        kwargs.update((k, v) for k, v in shaped.items() if self._accepted(k))
        messages = [m.as_dict() for m in request.messages]
        started = self._clock()
        raw = self._invoke(messages, kwargs, call)
        latency_s = self._clock() - started
        if call is not None:
            call.raw = raw
        text, prompt_tokens, completion_tokens, served = read_output(raw)

        if prompt_tokens is None:
            prompt_tokens = sum(approx_tokens(m["content"]) for m in messages)
        if completion_tokens is None:
            completion_tokens = approx_tokens(text)
        return Generation(
            text=text,
            input_tokens=prompt_tokens,
            output_tokens=completion_tokens,
            latency_s=latency_s,
            model=served or str(kwargs.get("model") or self.model),
            finish_reason=_finish_reason(raw),
        )

    def _invoke(
        self, messages: list[dict[str, str]], kwargs: dict[str, Any], call: _Call | None
    ) -> Any:
        if not self.is_async:
            return self.fn(messages, **kwargs)
        coroutine = self.fn(messages, **kwargs)
        loop = call.loop if call is not None else None
        if loop is None:
            return asyncio.run(coroutine)
        # The controller runs on a worker thread; the coroutine belongs to the app's loop.
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result()


def _finish_reason(raw: Any) -> str | None:
    if isinstance(raw, str):
        return None
    try:
        reason = _field(_field(raw, "choices")[0], "finish_reason")
    except (TypeError, IndexError, KeyError):
        return None
    return reason if isinstance(reason, str) else None


class CarbonAwareFunction:
    """A ``generate(messages, **kw)`` function made carbon-aware (see :func:`carbon_aware`).

    Calling it returns what the function returns. Keyword arguments ``tenant``,
    ``opt_out``, ``request_id`` and ``prompt_id`` go to the receipt; ``max_tokens``,
    ``stop`` and ``temperature`` are the app's own, which the directive may tighten or
    extend; the rest are passed to the function unchanged.

    Attributes:
        engine: the :class:`FunctionEngine` around the function.
        controller: the controller (built on first use).
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        settings: Settings | None = None,
        controller_factory: Callable[[Engine], Controller] | None = None,
        on_receipt: Callable[[Receipt], None] | None = None,
        **engine_options: Any,
    ) -> None:
        self.engine = FunctionEngine(fn, **engine_options)
        self._settings = settings
        self._factory = controller_factory
        self._on_receipt = on_receipt
        self._controller: Controller | None = None
        self._lock = threading.Lock()
        functools.update_wrapper(self, fn)

    @property
    def controller(self) -> Controller:
        """The controller, built on first use so that decorating has no side effects."""
        if self._controller is None:
            with self._lock:
                if self._controller is None:
                    self._controller = self._build()
        return self._controller

    def _build(self) -> Controller:
        if self._factory is not None:
            return self._factory(self.engine)

        return build_controller(self._settings or load_settings(), engine=self.engine)

    def _split(self, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(controller options, the function's own keyword arguments)."""
        options: dict[str, Any] = {}
        passed = dict(kwargs)
        for name in SPROUT_KWARGS:
            if name in passed:
                value = passed.pop(name)
                options[name] = value
                if name in self.engine._accepts:  # the function has a parameter of this name
                    passed[name] = value
        cap = passed.pop(self.engine.max_tokens_arg, None)
        if cap is not None:
            options["max_new_tokens"] = cap
        stop = passed.pop("stop", None)
        if stop:
            options["stop"] = (stop,) if isinstance(stop, str) else tuple(stop)
        temperature = passed.pop("temperature", None)
        if temperature is not None:
            options["temperature"] = temperature
        return options, passed

    def chat(self, messages: Sequence[Mapping[str, Any]], **kwargs: Any) -> ChatResult:
        """Answer ``messages``; the :class:`ChatResult` carries the receipt."""
        result, _ = self._run(messages, kwargs, None)
        return result

    def _run(
        self,
        messages: Sequence[Mapping[str, Any]],
        kwargs: dict[str, Any],
        loop: asyncio.AbstractEventLoop | None,
    ) -> tuple[ChatResult, Any]:
        options, passed = self._split(kwargs)
        call = _Call(passed, loop)
        token = _CALL.set(call)
        try:
            result = self.controller.chat(list(messages), **options)
        finally:
            _CALL.reset(token)
        if self._on_receipt is not None:
            self._on_receipt(result.receipt)
        return result, call.raw

    def __call__(self, messages: Sequence[Mapping[str, Any]], **kwargs: Any) -> Any:
        if self.engine.is_async:
            return self._acall(messages, kwargs)
        return self._run(messages, kwargs, None)[1]

    async def _acall(self, messages: Sequence[Mapping[str, Any]], kwargs: dict[str, Any]) -> Any:
        loop = asyncio.get_running_loop()
        # The controller blocks (the ledger, a meter); it runs on a thread while the app's
        # coroutine runs on the app's loop.
        _, raw = await asyncio.to_thread(self._run, messages, kwargs, loop)
        return raw

    def close(self) -> None:
        """Close the controller (flushes the ledger), if it was built."""
        if self._controller is not None:
            self._controller.close()

    def __enter__(self) -> CarbonAwareFunction:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def carbon_aware(
    fn: Callable[..., Any] | None = None,
    *,
    settings: Settings | None = None,
    controller_factory: Callable[[Engine], Controller] | None = None,
    on_receipt: Callable[[Receipt], None] | None = None,
    model: str = "",
    variant_models: Mapping[str, str] | None = None,
    runs_locally: bool = False,
    max_tokens_arg: str = "max_tokens",
) -> Any:
    """Make a ``generate(messages, **kw)`` function carbon-aware; use as a decorator.

    Args:
        fn: the function (or omit it and decorate with ``@carbon_aware(...)``).
        settings: settings of the controller (default: :func:`~sprout.config.load_settings`).
        controller_factory: builds the controller from the engine instead (e.g.
            ``lambda engine: build_controller(settings, engine=engine, ledger=shared)``).
        on_receipt: called with each request's receipt.
        model, variant_models, runs_locally, max_tokens_arg: see :class:`FunctionEngine`.

    Returns:
        A :class:`CarbonAwareFunction` (or a decorator making one).
    """

    def wrap(function: Callable[..., Any]) -> CarbonAwareFunction:
        return CarbonAwareFunction(
            function,
            settings=settings,
            controller_factory=controller_factory,
            on_receipt=on_receipt,
            model=model,
            variant_models=variant_models,
            runs_locally=runs_locally,
            max_tokens_arg=max_tokens_arg,
        )

    return wrap if fn is None else wrap(fn)
