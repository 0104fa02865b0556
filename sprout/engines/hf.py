"""The transformers engine: a local model directory, with variants.

A request's messages go through the tokenizer's chat template; generation is greedy, or
sampled when the request has a temperature > 0; ``max_new_tokens`` comes from the directive
(or the engine's default). Variants, each loaded on first use and then kept:

* ``None`` — the model in ``model_dir`` at its stored precision;
* ``int8`` — the *same weights*, with every linear layer's weight quantized to int8
  (per-channel scales) by torchao's ``quantize_(model, Int8WeightOnlyConfig())``. That is
  the path PyTorch recommends now that ``torch.ao.quantization`` (``quantize_dynamic``) is
  deprecated; it runs on CPU and on CUDA, and weight-only int8 suits decoding, which is
  bound by reading the weights;
* any other name — a separate (e.g. smaller) model directory.

Stop sequences and the babbling guard (:mod:`sprout.engines.guards`) run as a
transformers ``StoppingCriteria`` after every token, so a guarded generation really stops
early; the same criteria note when the first token came, which lets the receipt split
energy into prefill and decode.

Models are read with ``local_files_only``: the engine never downloads. torch, transformers
and torchao are imported on first use (``pip install 'sprout[hf]'``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sprout.chat import ChatRequest
from sprout.engines.base import Engine, Generation
from sprout.engines.guards import BabbleGuard, TextGuard
from sprout.engines.settings import babble_guard, required, variant_models
from sprout.errors import ConfigError, EngineError

if TYPE_CHECKING:
    import torch

    from sprout.config import Settings

INT8: Literal["int8"] = "int8"


@dataclass(frozen=True)
class ModelVariant:
    """Where a variant's weights come from and how they are transformed.

    Attributes:
        path: the model directory (``config.json``, weights, tokenizer with a chat template).
        quantization: ``int8`` to quantize the weights on load, or None.
    """

    path: str
    quantization: Literal["int8"] | None = None

    def __post_init__(self) -> None:
        if self.quantization not in (None, INT8):
            raise ConfigError(
                f"model variant {self.path}: unknown quantization {self.quantization!r} "
                f"(supported: {INT8})"
            )


@dataclass
class _Loaded:
    model: Any
    tokenizer: Any
    name: str
    eos_ids: frozenset[int]


class HFEngine(Engine):
    """Generates with a local transformers causal LM.

    Args:
        model_dir: the default model's directory.
        variants: variant name to :class:`ModelVariant` (or a model directory path). By
            default ``int8`` is the default model quantized, plus ``small`` when
            ``small_model_dir`` is given.
        small_model_dir: directory of a smaller model, served as variant ``small``.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        dtype: weights' dtype (``auto``: as stored; ``float16``, ``bfloat16``...).
        max_new_tokens: cap for requests that carry none.
        temperature: default temperature (None or 0: greedy decoding).
        guard: babbling guard for every request (a request's ``extra["babble_guard"]``
            may turn it off, or on with the default guard).
        clock: monotonic clock for latencies.

    Raises:
        ConfigError: an unknown variant spec or a non-positive ``max_new_tokens``.
    """

    name = "hf"
    runs_locally = True

    def __init__(
        self,
        model_dir: str | Path,
        *,
        variants: Mapping[str, ModelVariant | str | Path] | None = None,
        small_model_dir: str | Path | None = None,
        device: str = "cpu",
        dtype: str = "auto",
        max_new_tokens: int = 256,
        temperature: float | None = None,
        guard: BabbleGuard | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if max_new_tokens < 1:
            raise ConfigError(f"hf engine: max_new_tokens must be >= 1, got {max_new_tokens}")
        self.model_dir = str(model_dir)
        if variants is None:
            variants = {INT8: ModelVariant(self.model_dir, INT8)}
            if small_model_dir is not None:
                variants = {**variants, "small": ModelVariant(str(small_model_dir))}
        self.variants: dict[str | None, ModelVariant] = {None: ModelVariant(self.model_dir)}
        for key, spec in variants.items():
            self.variants[key] = spec if isinstance(spec, ModelVariant) else ModelVariant(str(spec))
        self.device = device
        self.dtype = dtype
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.guard = guard
        self._clock = clock
        self._cache: dict[str | None, _Loaded] = {}
        self._locks: dict[str | None, threading.Lock] = {k: threading.Lock() for k in self.variants}
        self._seed_lock = threading.Lock()

    @property
    def loaded_variants(self) -> tuple[str | None, ...]:
        """Variants loaded so far (they stay loaded until :meth:`close`)."""
        return tuple(self._cache)

    def _spec(self, variant: str | None) -> ModelVariant:
        try:
            return self.variants[variant]
        except KeyError:
            known = ", ".join(sorted(k for k in self.variants if k is not None)) or "none"
            raise EngineError(
                f"hf engine: unknown variant {variant!r} (configured variants: {known})"
            ) from None

    def load(self, variant: str | None = None) -> _Loaded:
        """The model and tokenizer of ``variant``, loading them on first use.

        Raises:
            EngineError: the directory is missing or unreadable, or quantization failed.
        """
        loaded = self._cache.get(variant)
        if loaded is not None:
            return loaded
        spec = self._spec(variant)
        with self._locks[variant]:  # two first requests for a variant load it once
            loaded = self._cache.get(variant)
            if loaded is None:
                loaded = self._load(spec)
                self._cache[variant] = loaded
        return loaded

    def _load(self, spec: ModelVariant) -> _Loaded:
        path = Path(spec.path)
        if not (path / "config.json").is_file():
            raise EngineError(f"hf engine: no model at {path} (config.json not found)")
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as e:
            raise EngineError(
                "hf engine: torch and transformers are needed (pip install 'sprout[hf]')"
            ) from e
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(
                path, dtype=self.dtype, local_files_only=True
            )
        except (OSError, ValueError) as e:
            raise EngineError(f"hf engine: cannot load the model at {path}: {e}") from e
        if not getattr(tokenizer, "chat_template", None):
            raise EngineError(f"hf engine: the tokenizer at {path} has no chat template")
        model.to(self.device)
        model.eval()
        name = path.name
        if spec.quantization == INT8:
            _quantize_int8(model, path)
            name += ":int8"
        eos = model.generation_config.eos_token_id
        eos_ids = {eos} if isinstance(eos, int) else set(eos or ())
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        return _Loaded(model, tokenizer, name, frozenset(eos_ids))

    def _text_guard(self, request: ChatRequest) -> TextGuard:
        babble: Any = request.extra.get("babble_guard", self.guard)
        if babble is True:
            babble = self.guard or BabbleGuard()
        elif not isinstance(babble, BabbleGuard):
            babble = None
        return TextGuard.build(request.stop, babble)

    def generate(self, request: ChatRequest) -> Generation:
        """Answer ``request`` with the variant it names.

        Times (latency, first token) run from this call's start, like the controller's
        energy window, so a variant's first request includes loading it: call
        :meth:`load` at start-up to keep that off the request path.

        Raises:
            EngineError: unknown variant, unloadable model, or generation failed.
        """
        import torch

        started = self._clock()
        loaded = self.load(request.variant)
        tokenizer = loaded.tokenizer
        try:
            encoded = tokenizer.apply_chat_template(
                [m.as_dict() for m in request.messages],
                add_generation_prompt=True,
                return_tensors="pt",
                return_dict=True,
            )
        except Exception as e:  # a template may raise anything (jinja errors, bad roles)
            raise EngineError(f"hf engine: chat template failed for {loaded.name}: {e}") from e
        input_ids = encoded["input_ids"].to(self.device)
        prompt_len = int(input_ids.shape[1])
        guard = self._text_guard(request)
        criteria = _criteria(tokenizer, prompt_len, guard, self._clock)
        temperature = self.temperature if request.temperature is None else request.temperature
        kwargs: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": encoded["attention_mask"].to(self.device),
            "max_new_tokens": request.max_new_tokens or self.max_new_tokens,
            "stopping_criteria": [criteria],
            "pad_token_id": tokenizer.pad_token_id
            if tokenizer.pad_token_id is not None
            else next(iter(loaded.eos_ids), None),
        }
        if temperature:
            kwargs.update(do_sample=True, temperature=float(temperature), top_k=0, top_p=1.0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_k=None, top_p=None)
        seed = request.extra.get("seed")
        try:
            with torch.inference_mode():
                if seed is None or not temperature:
                    output = loaded.model.generate(**kwargs)
                else:
                    # Seeded sampling uses the global generator: serialise and isolate it.
                    with self._seed_lock, torch.random.fork_rng(devices=[]):
                        torch.manual_seed(int(seed))
                        output = loaded.model.generate(**kwargs)
        except Exception as e:  # torch raises RuntimeError, ValueError, IndexError...
            raise EngineError(f"hf engine: generation with {loaded.name} failed: {e}") from e
        latency_s = self._clock() - started
        new_ids = output[0, prompt_len:].tolist()
        n_generated = len(new_ids)
        finish = "length"
        if new_ids and new_ids[-1] in loaded.eos_ids:
            finish = "stop"
        text = tokenizer.decode(new_ids, skip_special_tokens=True)
        text, cut_by = guard.finish(text)
        first = criteria.first_token_at
        return Generation(
            text=text,
            input_tokens=prompt_len,
            output_tokens=n_generated,
            latency_s=latency_s,
            model=loaded.name,
            first_token_s=None if first is None else first - started,
            finish_reason=cut_by or finish,
        )

    def close(self) -> None:
        """Drop the loaded models."""
        self._cache.clear()


def _quantize_int8(model: Any, path: Path) -> None:
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError as e:
        raise EngineError(
            "hf engine: the int8 variant needs torchao (pip install 'sprout[hf]')"
        ) from e
    try:
        quantize_(model, Int8WeightOnlyConfig())
    except Exception as e:  # torchao raises assorted errors for unsupported layers
        raise EngineError(f"hf engine: int8 quantization of {path} failed: {e}") from e


class _GuardCriteria:
    """Stops generation when the guard says the answer is complete; notes the first token.

    Wrapped into a transformers ``StoppingCriteria`` subclass by :func:`_criteria`.
    """

    def __init__(
        self, tokenizer: Any, prompt_len: int, guard: TextGuard, clock: Callable[[], float]
    ) -> None:
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len
        self.guard = guard
        self.clock = clock
        self.first_token_at: float | None = None

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        import torch

        # Called once per generated token, after it is appended: the first call marks the
        # end of the prefill.
        if self.first_token_at is None:
            self.first_token_at = self.clock()
        stop = False
        if self.guard.active:
            text = self.tokenizer.decode(input_ids[0, self.prompt_len :], skip_special_tokens=True)
            stop = self.guard.check(text).stop
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


_CRITERIA_CLASS: type | None = None


def _criteria(
    tokenizer: Any, prompt_len: int, guard: TextGuard, clock: Callable[[], float]
) -> _GuardCriteria:
    global _CRITERIA_CLASS
    if _CRITERIA_CLASS is None:
        from transformers import StoppingCriteria

        _CRITERIA_CLASS = type("GuardStoppingCriteria", (_GuardCriteria, StoppingCriteria), {})
    return _CRITERIA_CLASS(tokenizer, prompt_len, guard, clock)


def from_settings(settings: Settings) -> HFEngine:
    """``settings.engine_model`` on ``settings.engine_device``, with its int8 variant and any
    ``engine_variants``.

    Raises:
        ConfigError: the model is missing, or the variants are malformed.
    """
    variants = variant_models(settings)
    model = required(settings, "engine_model", "engine='hf'")
    return HFEngine(
        model,
        variants={INT8: ModelVariant(model, INT8), **variants},
        device=settings.engine_device,
        max_new_tokens=settings.engine_max_new_tokens,
        guard=babble_guard(settings),
    )
