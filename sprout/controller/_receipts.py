"""How a generation becomes a receipt: its outcome, its energy split, its carbon figures."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

from sprout.accounting import request_carbon
from sprout.chat import ChatRequest
from sprout.controller.results import PendingChat
from sprout.energy.base import EnergySample
from sprout.energy.estimate import approx_tokens
from sprout.engines.base import Generation
from sprout.engines.guards import BABBLE_CODE_BLOCK, BABBLE_REPETITION
from sprout.receipt import Receipt, metered_receipt

#: Guard rules whose cut ends a generation as ``guard_cut`` (a stop string the app asked for
#: ends it as ``completed``).
_GUARD_CUTS = frozenset({BABBLE_CODE_BLOCK, BABBLE_REPETITION})
#: Chat-template tokens per message, for the input tokens of an interrupted generation.
_TEMPLATE_TOKENS_PER_MESSAGE = 4


def outcome_of(generation: Generation) -> str:
    """``guard_cut`` when the babbling guard ended ``generation``, else ``completed``."""
    return "guard_cut" if generation.finish_reason in _GUARD_CUTS else "completed"


def split_prefill(energy: EnergySample, generation: Generation) -> EnergySample:
    """``energy`` split into prefill and decode by the first token's time, if not yet split.

    Meters that see the window split it themselves; for the others the power is taken to
    be even over the generation.
    """
    first = generation.first_token_s
    if energy.prefill_kwh is not None or first is None or generation.latency_s <= 0:
        return energy
    prefill_kwh = energy.energy_kwh * min(1.0, max(0.0, first / generation.latency_s))
    return replace(energy, prefill_kwh=prefill_kwh, decode_kwh=energy.energy_kwh - prefill_kwh)


def interrupted_generation(
    request: ChatRequest,
    outcome: str,
    *,
    text: str,
    latency_s: float,
    model: str,
    first_token_s: float | None,
    output_tokens: int | None,
) -> Generation:
    """The generation of a request that stopped early, as far as it got.

    No engine reported its tokens, so the prompt's are estimated from its messages (with
    the chat template's) and the answer's from ``text`` unless ``output_tokens`` is given.
    """
    return Generation(
        text=text,
        input_tokens=sum(
            approx_tokens(m.content) + _TEMPLATE_TOKENS_PER_MESSAGE for m in request.messages
        ),
        output_tokens=approx_tokens(text) if output_tokens is None else output_tokens,
        latency_s=latency_s,
        model=model,
        first_token_s=first_token_s,
        finish_reason=outcome,
    )


def build_receipt(
    pending: PendingChat,
    generation: Generation,
    energy: EnergySample,
    outcome: str,
    *,
    baseline: str,
    engine: str,
    embodied_g_per_s: float,
    clock: Callable[[], datetime],
) -> Receipt:
    """The receipt of ``pending``'s ``generation``.

    Args:
        pending: the request, its directive and the carbon reading it was decided on.
        generation: what the engine (or :func:`interrupted_generation`) reported.
        energy: the energy of the generation, split if it can be.
        outcome: how the generation ended (see :data:`sprout.receipt.OUTCOMES`).
        baseline: the baseline directive's name: a request served with it is its own
            baseline when the engine recorded none.
        engine: the engine's name.
        embodied_g_per_s: embodied carbon rate of the serving hardware.
        clock: the controller's clock, read once for the receipt's time.
    """
    ci = pending.signal.reading.ci_g_per_kwh
    baseline_kwh = generation.baseline_energy_kwh
    baseline_time = generation.baseline_time_s
    baseline_source: str | None = "recorded" if baseline_kwh is not None else None
    if baseline_kwh is None and pending.decision.directive.name == baseline:
        baseline_kwh, baseline_time, baseline_source = (
            energy.energy_kwh,
            generation.latency_s,
            energy.source,
        )
    baseline_g = None
    if baseline_kwh is not None and baseline_time is not None:
        baseline_g = request_carbon(baseline_kwh, baseline_time, ci, embodied_g_per_s).total_g
    return metered_receipt(
        request_id=pending.request_id,
        created_at=clock(),
        directive=pending.decision.directive.name,
        decision=pending.decision.reason,
        engine=engine,
        generation=generation,
        energy=energy,
        signal=pending.signal,
        embodied_g_per_s=embodied_g_per_s,
        variant=pending.request.variant,
        policy_version=pending.policy_version,
        tenant=pending.tenant,
        prompt_id=pending.prompt_id,
        baseline_energy_kwh=baseline_kwh,
        baseline_g=baseline_g,
        baseline_source=baseline_source,
        outcome=outcome,
    )
