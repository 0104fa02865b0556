"""LiteLLM adapter: Sprout's directives and ledger inside a LiteLLM proxy.

LiteLLM's proxy calls a ``CustomLogger``'s hooks around each request. This adapter uses
them to run the two halves of :meth:`sprout.controller.Controller.chat` around LiteLLM's
own model call:

* ``async_pre_call_hook`` (the proxy) or ``async_pre_call_deployment_hook`` (the SDK's
  ``litellm.acompletion``) — :meth:`~sprout.controller.Controller.begin`: the directive is
  chosen from the grid's carbon intensity and applied to the outgoing request (its system
  prompt merged into ``messages``, ``max_tokens`` capped, ``stop`` extended, ``model``
  mapped for a variant); once per request, however many deployments LiteLLM tries;
* ``async_post_call_success_hook`` and the success log events (streams end there) —
  :meth:`~sprout.controller.Controller.finish`: the energy is estimated from the usage
  and the receipt written to the ledger (once, whichever hook comes first), on a worker
  thread so that a durable ledger's disk sync never holds LiteLLM's event loop;
* the proxy's failure hook, or the SDK's failure log event —
  :meth:`~sprout.controller.Controller.abort` (the proxy logs a failure per attempt and
  may still retry, so there only its final failure hook counts);
* ``async_post_call_response_headers_hook`` — the ``x-sprout-*`` receipt headers (for a
  stream, sent before it ends, the request id, directive and decision).

Requests are matched across hooks by LiteLLM's ``litellm_call_id`` (and
``metadata.sprout_request_id``). LiteLLM's synchronous ``litellm.completion`` offers no
hook that can change the request, so there the callback does nothing: point its
``api_base`` at ``sprout serve`` instead, or use ``litellm.acompletion``.

Use it from the proxy's ``config.yaml`` (settings from ``SPROUT_*`` variables)::

    litellm_settings:
      callbacks: sprout.integrations.litellm.proxy_handler

The tenant comes from the request's ``metadata.sprout_tenant``, the ``x-sprout-tenant``
header, or the key's team; ``metadata.sprout_opt_out`` or the ``x-sprout-opt-out`` header
forces the baseline. Requests Sprout cannot read (non-text content) pass unchanged, with
no receipt.

LiteLLM itself is optional here: without it the class still has every hook (they are
plain methods), for tests and for calling them from other proxies. Importing LiteLLM
fetches its model price map from the network unless ``LITELLM_LOCAL_MODEL_COST_MAP=True``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sprout.config import load_settings
from sprout.energy.estimate import approx_tokens
from sprout.engines.base import Engine, Generation
from sprout.errors import EngineError, RequestError
from sprout.factory import build_controller
from sprout.middleware import read_output
from sprout.server.openai import receipt_headers

if TYPE_CHECKING:
    from sprout.chat import ChatRequest
    from sprout.config import Settings
    from sprout.controller import ChatResult, Controller, PendingChat
    from sprout.receipt import Receipt

try:  # LiteLLM registers callbacks by isinstance(CustomLogger)
    from litellm.integrations.custom_logger import CustomLogger as _Base
except ImportError:  # not installed: the hooks are still callable directly
    _Base = object  # type: ignore[assignment,misc]

log = logging.getLogger("sprout.integrations.litellm")

#: Call types that are chat completions.
CHAT_CALL_TYPES = frozenset({"completion", "acompletion"})
_TRUE = frozenset({"1", "true", "yes", "on"})
#: Who began a request: its outcome arrives through that path's hooks.
_PROXY, _SDK = "proxy", "sdk"


class LiteLLMEngine(Engine):
    """Stands for LiteLLM in receipts; LiteLLM, not the controller, calls the model."""

    name = "litellm"

    def generate(self, request: ChatRequest) -> Generation:
        raise EngineError("litellm engine: LiteLLM generates; use Controller.begin/finish")


def _header(data: Mapping[str, Any], name: str) -> str | None:
    headers = (data.get("proxy_server_request") or {}).get("headers") or {}
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() == name:
            return str(value)
    return None


def _call_type(call_type: Any) -> str:
    return str(getattr(call_type, "value", call_type))


def _call_id(source: Mapping[str, Any]) -> str | None:
    value = source.get("litellm_call_id")
    return value if isinstance(value, str) and value else None


def _metadata(source: Mapping[str, Any]) -> dict[str, Any]:
    """The request metadata, in a hook's ``data`` or a log event's ``kwargs``."""
    for holder in (source, source.get("litellm_params") or {}):
        for key in ("metadata", "litellm_metadata"):
            value = holder.get(key)
            if isinstance(value, dict) and "sprout_request_id" in value:
                return value
    value = source.get("metadata")
    return value if isinstance(value, dict) else {}


class SproutLiteLLM(_Base):  # type: ignore[misc,valid-type]
    """A LiteLLM ``CustomLogger`` that applies Sprout's directives and writes receipts.

    Args:
        controller: the controller to decide with and record to (default: one built from
            ``settings`` around :class:`LiteLLMEngine`, on first use).
        settings: settings for the default controller (default: ``load_settings()``).
        variant_models: LiteLLM model name per directive variant; a variant without one
            is refused (the request fails) rather than served, and recorded, as another
            model.
        max_pending: requests awaiting their outcome that are remembered; the oldest
            beyond this are dropped (their outcome was never reported).
    """

    def __init__(
        self,
        controller: Controller | None = None,
        *,
        settings: Settings | None = None,
        variant_models: Mapping[str, str] | None = None,
        max_pending: int = 10_000,
        **kwargs: Any,
    ) -> None:
        if _Base is not object:
            super().__init__(**kwargs)
        self._controller = controller
        self._settings = settings
        self.variant_models = dict(variant_models or {})
        self.max_pending = max_pending
        # request id -> (pending chat, start, who began it)
        self._pending: OrderedDict[str, tuple[PendingChat, float, str]] = OrderedDict()
        self._receipts: OrderedDict[str, Receipt] = OrderedDict()
        # LiteLLM's call id -> request id ("" for a request passed through unchanged)
        self._calls: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def controller(self) -> Controller:
        """The controller (built on first use)."""
        if self._controller is None:
            with self._lock:
                if self._controller is None:
                    self._controller = build_controller(
                        self._settings or load_settings(), engine=LiteLLMEngine()
                    )
        return self._controller

    # -- the two halves, usable without LiteLLM -------------------------------------------

    def apply(
        self, data: dict[str, Any], user_api_key_dict: Any = None, *, origin: str = _PROXY
    ) -> dict[str, Any]:
        """Choose the directive for a chat request ``data`` and shape ``data`` by it.

        ``data`` gets ``metadata.sprout_request_id`` and ``metadata.sprout_directive``.
        Returns ``data`` (changed in place).

        Raises:
            EngineError: the directive's variant has no model in ``variant_models``.
        """
        call_id = _call_id(data)
        metadata = data.get("metadata")
        if not isinstance(metadata, dict):
            metadata = data["metadata"] = {}
        tenant = metadata.get("sprout_tenant") or _header(data, "x-sprout-tenant")
        if tenant is None and user_api_key_dict is not None:
            tenant = getattr(user_api_key_dict, "team_id", None)
        flag = metadata.get("sprout_opt_out", _header(data, "x-sprout-opt-out"))
        opt_out = flag is True or str(flag).strip().lower() in _TRUE
        stop = data.get("stop")
        cap = data.get("max_completion_tokens") or data.get("max_tokens")
        temperature = data.get("temperature")
        try:
            pending = self.controller.begin(
                data.get("messages") or [],
                max_new_tokens=cap if isinstance(cap, int) and cap > 0 else None,
                tenant=str(tenant) if tenant else None,
                opt_out=opt_out,
                stop=[stop] if isinstance(stop, str) else list(stop or []),
                temperature=float(temperature) if isinstance(temperature, int | float) else None,
            )
        except (RequestError, TypeError) as e:
            # Drop-in: what Sprout cannot read (images, tool messages) goes out unchanged.
            log.warning("request passed through without a directive: %s", e)
            self._remember_call(call_id, "")
            return data
        request = pending.request
        if request.variant is not None:
            model = self.variant_models.get(request.variant)
            if model is None:
                self.controller.abort(pending)
                raise EngineError(
                    f"sprout: directive {pending.decision.directive.name} asks for variant "
                    f"{request.variant!r}, which has no LiteLLM model; map it in variant_models"
                )
            data["model"] = model
        data["messages"] = _merge_messages(data.get("messages") or [], request)
        if request.max_new_tokens is not None:
            data.pop("max_completion_tokens", None)
            data["max_tokens"] = request.max_new_tokens
        if request.stop:
            data["stop"] = list(request.stop)
        metadata["sprout_request_id"] = pending.request_id
        metadata["sprout_directive"] = pending.decision.directive.name
        self._remember(pending, origin)
        self._remember_call(call_id, pending.request_id)
        return data

    def record(
        self,
        source: Mapping[str, Any],
        response: Any,
        latency_s: float | None = None,
    ) -> ChatResult | None:
        """Write the receipt of the request that ``source`` (hook ``data`` or log-event
        ``kwargs``) describes, answered by ``response``; None if none is pending."""
        with self._lock:
            request_id = self._request_id(source)
            entry = self._pending.pop(request_id, None) if request_id else None
        if entry is None:
            return None  # not ours, passed through, or already recorded by another hook
        pending, started, _ = entry
        try:
            text, prompt_tokens, completion_tokens, model = read_output(response)
        except EngineError as e:
            log.warning("receipt %s not written: %s", pending.request_id, e)
            self.controller.abort(pending)
            return None

        generation = Generation(
            text=text,
            input_tokens=prompt_tokens
            if prompt_tokens is not None
            else sum(approx_tokens(m.content) for m in pending.request.messages),
            output_tokens=completion_tokens
            if completion_tokens is not None
            else approx_tokens(text),
            latency_s=latency_s if latency_s is not None else time.monotonic() - started,
            model=model or str(source.get("model") or ""),
        )
        result = self.controller.finish(pending, generation)
        with self._lock:
            self._receipts[pending.request_id] = result.receipt
            while len(self._receipts) > self.max_pending:
                self._receipts.popitem(last=False)
        return result

    def discard(self, source: Mapping[str, Any], *, origin: str | None = None) -> None:
        """Forget the request ``source`` describes: it failed (no receipt). With
        ``origin``, only a request that path began."""
        with self._lock:
            request_id = self._request_id(source)
            entry = self._pending.get(request_id) if request_id else None
            if entry is None or (origin is not None and entry[2] != origin):
                return
            del self._pending[request_id]
        self.controller.abort(entry[0])

    def receipt(self, request_id: str) -> Receipt | None:
        """The receipt written for ``request_id``, while it is remembered."""
        with self._lock:
            return self._receipts.get(request_id)

    def _request_id(self, source: Mapping[str, Any]) -> str | None:
        """The request id of hook ``data`` or log-event ``kwargs`` (under the lock)."""
        call_id = _call_id(source)
        if call_id is not None and self._calls.get(call_id):
            return self._calls[call_id]
        value = _metadata(source).get("sprout_request_id")
        return value if isinstance(value, str) else None

    def _remember(self, pending: PendingChat, origin: str = _PROXY) -> None:
        dropped = []
        with self._lock:
            self._pending[pending.request_id] = (pending, time.monotonic(), origin)
            while len(self._pending) > self.max_pending:
                dropped.append(self._pending.popitem(last=False)[1][0])
        for old in dropped:
            self.controller.abort(old)

    def _remember_call(self, call_id: str | None, request_id: str) -> None:
        if call_id is None:
            return
        with self._lock:
            self._calls[call_id] = request_id
            while len(self._calls) > self.max_pending:
                self._calls.popitem(last=False)

    def _seen(self, data: Mapping[str, Any]) -> bool:
        """Whether a hook already began (or passed through) the request ``data``."""
        call_id = _call_id(data)
        with self._lock:
            if call_id is not None and call_id in self._calls:
                return True
            request_id = _metadata(data).get("sprout_request_id")
            return isinstance(request_id, str) and request_id in self._pending

    # -- LiteLLM's hooks ---------------------------------------------------------------------

    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict[str, Any], call_type: Any
    ) -> dict[str, Any]:
        """Proxy hook: apply the directive to the outgoing chat request."""
        if _call_type(call_type) not in CHAT_CALL_TYPES or self._seen(data):
            return data
        return self.apply(data, user_api_key_dict)

    async def async_pre_call_deployment_hook(
        self, kwargs: dict[str, Any], call_type: Any
    ) -> dict[str, Any] | None:
        """SDK hook (``litellm.acompletion``, and each deployment the proxy's router tries):
        apply the directive, unless a hook already did for this request."""
        if _call_type(call_type) not in CHAT_CALL_TYPES or self._seen(kwargs):
            return None
        return self.apply(kwargs, origin=_SDK)

    async def async_post_call_success_hook(
        self, data: dict[str, Any], user_api_key_dict: Any, response: Any
    ) -> Any:
        """Proxy hook: write the receipt of a non-streamed answer."""
        await asyncio.to_thread(self.record, data, response)
        return response

    async def async_post_call_failure_hook(
        self,
        request_data: dict[str, Any],
        original_exception: Exception,
        user_api_key_dict: Any,
        traceback_str: str | None = None,
    ) -> None:
        """Proxy hook: the call failed (after any retries); no receipt."""
        self.discard(request_data)

    async def async_post_call_response_headers_hook(
        self, data: dict[str, Any], user_api_key_dict: Any, response: Any, *args: Any, **kw: Any
    ) -> dict[str, str] | None:
        """Proxy hook: the receipt headers (``x-sprout-directive``, ``x-sprout-gco2e``...).

        A stream's headers leave before its end (and its receipt): they carry the request
        id, directive and decision."""
        with self._lock:
            request_id = self._request_id(data)
            entry = self._pending.get(request_id) if request_id else None
        if entry is not None:
            decision = entry[0].decision
            return {
                "x-sprout-request-id": entry[0].request_id,
                "x-sprout-directive": decision.directive.name,
                "x-sprout-decision": decision.reason,
            }
        receipt = self.receipt(request_id) if request_id else None
        if receipt is None:
            return None

        return receipt_headers(receipt)

    def log_success_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        """Log event (also for streams, with the assembled response): the receipt."""
        response = kwargs.get("complete_streaming_response") or response_obj
        self.record(kwargs, response, _seconds(start_time, end_time))

    async def async_log_success_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        await asyncio.to_thread(self.log_success_event, kwargs, response_obj, start_time, end_time)

    def log_failure_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        """Log event: an SDK request failed. (The proxy's are left to its failure hook.)"""
        self.discard(kwargs, origin=_SDK)

    async def async_log_failure_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self.log_failure_event(kwargs, response_obj, start_time, end_time)


def _seconds(start: Any, end: Any) -> float | None:
    if isinstance(start, datetime) and isinstance(end, datetime):
        return max(0.0, (end - start).total_seconds())
    if isinstance(start, int | float) and isinstance(end, int | float):
        return max(0.0, float(end) - float(start))
    return None


def _merge_messages(original: list[Any], request: ChatRequest) -> list[Any]:
    """The shaped messages, keeping the fields of the app's messages (``name``...)."""
    shaped = [m.as_dict() for m in request.messages]
    # The directive only ever merges into or prepends a system message; the rest is the app's.
    offset = len(shaped) - len(original)
    out: list[Any] = []
    for i, message in enumerate(shaped):
        j = i - offset
        if 0 <= j < len(original) and isinstance(original[j], dict):
            out.append({**original[j], **message})
        else:
            out.append(message)
    return out


#: The instance a LiteLLM proxy's ``config.yaml`` names
#: (``callbacks: sprout.integrations.litellm.proxy_handler``); its controller is built on
#: first use from ``load_settings()``, i.e. the ``SPROUT_*`` variables and config file.
proxy_handler = SproutLiteLLM()
