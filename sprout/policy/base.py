"""The policy base class: choose a directive for one request."""

from __future__ import annotations

import abc
import random
from dataclasses import dataclass

from sprout.directives import Directive

# The kinds of stored policy versions (the ledger's ``policy_versions.kind``), in one place:
# a receipt names the version its policy was, and each kind's reader and writer agree here.
#: Sprout's LP policy: its per-directive statistics.
LP_KIND = "sprout-lp"
#: The per-request policy: the contextual model and its reference predictions.
CONTEXTUAL_KIND = "contextual"
#: The quality loop's estimate: per-directive quality and the guard's share.
QUALITY_KIND = "judge-quality"

# The per-request policy's training data (see sprout.training.sources.choose_sources). Kept
# here, in a light module, so that the CLI's parser can offer them without importing the
# model.

#: Judged live requests (with a verdict) from which the ledger's verdicts alone are trained
#: on; below this the bundled recordings are added, so that a young deployment starts from
#: what the recordings teach rather than from a handful of verdicts.
MIN_LEDGER_EXAMPLES = 1000
#: The default bound on one request's loss of predicted preference under the per-request
#: policy (the ``policy_max_loss`` setting, ``sprout simulate --max-loss``; None: no bound);
#: see :func:`sprout.policy.assign.bounded_cost`.
DEFAULT_MAX_LOSS: float | None = 0.2


def parse_max_loss(text: str) -> float | None:
    """A bound on one request's loss of predicted preference as written on a command line:
    a number, or ``none`` for no bound (the range is checked where it is used).

    Raises:
        ValueError: neither (the message says what is expected).
    """
    if text.strip().lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"expected a number in [0, 1] or 'none', got {text!r}") from None


#: ``sprout retrain --data`` choices.
DATA_CHOICES: tuple[str, ...] = ("auto", "ledger", "bundled", "both")


@dataclass(frozen=True)
class CarbonContext:
    """What a policy knows about the grid when it decides.

    Attributes:
        ci_g_per_kwh: the carbon intensity now.
        ci_min, ci_max, ci_mean: over the history window the policy is told to use.
    """

    ci_g_per_kwh: float
    ci_min: float
    ci_max: float
    ci_mean: float


@dataclass(frozen=True)
class Decision:
    """A policy's choice for one request.

    Attributes:
        directive: the directive to apply.
        reason: short machine-readable tag (``lp-mix``, ``opt-out``, ``fallback``...).
        mix: the population mix the directive was drawn from, if any.
    """

    directive: Directive
    reason: str
    mix: tuple[float, ...] | None = None


class Policy(abc.ABC):
    """Chooses a directive per request from the prompt and the carbon context."""

    #: Name recorded in receipts and policy versions.
    kind: str = "abstract"

    @abc.abstractmethod
    def decide(self, prompt: str, carbon: CarbonContext, rng: random.Random) -> Decision:
        """Choose the directive for ``prompt``."""

    def take_over(self, previous: Policy) -> None:
        """Carry on from ``previous``, the policy this one replaces in service (a retrained
        version): whatever state the serving history built that this kind of policy can
        use. The default keeps nothing."""
        del previous  # stateless policies carry nothing over
