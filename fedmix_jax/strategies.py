"""Strategies: what a round does with each sample, which models train, and how clients weigh.

A strategy is an object with named parts, not a new loop: the round core, the site function, the
CLI and the Flower server all read the same object from the one registry here. Its parts:
``weak_samples`` (what a non-pixel sample trains on: ``"pseudo_labels"``, ``"ground_truth"``,
``"unused"`` or ``"self_training"``), ``trains_model2``, ``weighting`` (the aggregation weights
from the sites' reports, [C] -> [C]; ``None``: no aggregation), ``selection``
(:class:`~fedmix_jax.pseudo_labels.SelectionConfig`), ``warmup_rounds`` and ``weak``. The
strategies: docs/strategies.md. Adding one is an entry in :data:`_FACTORIES` (or
:func:`register_strategy` from user code).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Protocol

import jax
import jax.numpy as jnp

from fedmix_jax import aggregation
from fedmix_jax.weak_objective import WeakSupervision
from fedmix_jax.pseudo_labels import SelectionConfig
from fedmix_jax.self_training import SelfTrainingWeights

WEAK_SAMPLE_MODES = ("pseudo_labels", "ground_truth", "unused", "self_training")


class Weighting(Protocol):
    """Aggregation weights of a round from the sites' reports.

    Args:
      reports: a :class:`~fedmix_jax.site.SiteReport` whose fields are [C].
      participating: [C] bool, clients that take part (they hold at least one valid sample).
      hparams: the traced :class:`~fedmix_jax.config.HParams` (λ, β, learning rate).
      warming_up: [] bool, the round is one of the strategy's warm-up rounds.
    Returns: [C] float32 weights, non-negative, summing to 1 over the participants.
    """

    def __call__(self, reports, participating: jax.Array, hparams,
                 warming_up: jax.Array) -> jax.Array: ...


@dataclasses.dataclass(frozen=True)
class AdaptiveWeights:
    """FedMix: ``w_i ∝ n_i / Σn + λ · ℓ_i^β / Σℓ^β`` (:func:`~fedmix_jax.aggregation.fedmix_weights`)."""

    def __call__(self, reports, participating, hparams, warming_up):
        return aggregation.fedmix_weights(reports.num_usable, reports.loss1, hparams.lam,
                                          hparams.beta, participating)


@dataclasses.dataclass(frozen=True)
class CountWeights:
    """FedAvg: ``w_i = n_i / Σ n_j`` over the usable samples (:func:`~fedmix_jax.aggregation.fedavg_weights`)."""

    def __call__(self, reports, participating, hparams, warming_up):
        return aggregation.fedavg_weights(reports.num_usable, participating)


@dataclasses.dataclass(frozen=True)
class Strategy:
    """One federated strategy (see the module docstring for the fields)."""

    name: str
    weak_samples: str
    trains_model2: bool
    weighting: Weighting | None
    selection: SelectionConfig = SelectionConfig()
    warmup_rounds: int = 0
    weak: WeakSupervision | None = None   # direct weak-label losses (fedmix_plus), else None

    def warming_up(self, round_index) -> jax.Array:
        """[] bool: round ``round_index`` (0-based, traced) is a warm-up round (only pixel
        samples train)."""
        return jnp.asarray(round_index) < self.warmup_rounds

    def __post_init__(self):
        if self.weak_samples not in WEAK_SAMPLE_MODES:
            raise ValueError(f"weak_samples must be one of {WEAK_SAMPLE_MODES}, "
                             f"got {self.weak_samples!r}")

    @property
    def aggregates(self) -> bool:
        """Whether the server averages the clients' models (False: local learning)."""
        return self.weighting is not None

    def weights(self, reports, participating: jax.Array, hparams,
                round_index) -> jax.Array:
        """[C] aggregation weights of round ``round_index`` (0-based, may be traced; required)
        (zeros when the strategy does not aggregate)."""
        if self.weighting is None:
            return jnp.zeros(jnp.shape(participating), jnp.float32)
        return self.weighting(reports, participating, hparams, self.warming_up(round_index))

    def with_weak(self, weak: WeakSupervision) -> "Strategy":
        """The strategy with other weak-loss weights (unchanged if it uses no weak losses). Its
        pseudo-label selection then fits boxes with ``weak.box_fit`` (in place of the
        selection's ``box_fit``: see :class:`~fedmix_jax.weak_objective.WeakSupervision`)."""
        if self.weak is None:
            return self
        return dataclasses.replace(self, weak=weak, selection=dataclasses.replace(
            self.selection, box_fit=weak.box_fit))


_FACTORIES: dict[str, Callable[[SelectionConfig], Strategy]] = {
    "fedmix": lambda sel: Strategy("fedmix", "pseudo_labels", True, AdaptiveWeights(), sel),
    "fedmix_plus": lambda sel: Strategy("fedmix_plus", "pseudo_labels", True, AdaptiveWeights(),
                                        sel, weak=WeakSupervision()).with_weak(WeakSupervision()),
    "fedmix_no_adaptive": lambda sel: Strategy("fedmix_no_adaptive", "pseudo_labels", True,
                                               CountWeights(), sel),
    "fedmix_no_refine": lambda sel: Strategy("fedmix_no_refine", "pseudo_labels", True,
                                             AdaptiveWeights(),
                                             dataclasses.replace(sel, refine=False)),
    "fedavg_pixel": lambda sel: Strategy("fedavg_pixel", "unused", False, CountWeights(), sel),
    "fedavg_full": lambda sel: Strategy("fedavg_full", "ground_truth", False, CountWeights(), sel),
    "local": lambda sel: Strategy("local", "unused", False, None, sel),
    "fedst": lambda sel: Strategy("fedst", "self_training", False,
                                  SelfTrainingWeights(pixel_share=0.9), sel),
    "fedrgd": lambda sel: Strategy("fedrgd", "self_training", False,
                                   SelfTrainingWeights(pixel_share=0.5), sel),
}

STRATEGY_NAMES = tuple(_FACTORIES)


def register_strategy(name: str, factory: Callable[[SelectionConfig], Strategy]) -> None:
    """Add a strategy to the registry: ``factory(selection) -> Strategy``."""
    global STRATEGY_NAMES
    _FACTORIES[name] = factory
    STRATEGY_NAMES = tuple(_FACTORIES)


def get_strategy(name: str, selection: SelectionConfig = SelectionConfig()) -> Strategy:
    """The strategy called ``name`` (see :data:`STRATEGY_NAMES`; what each does:
    docs/strategies.md) with the given selection rules. The job sets ``warmup_rounds`` of
    ``fedst`` / ``fedrgd`` (:func:`fedmix_jax.config.resolve_warmup_rounds`)."""
    if name not in _FACTORIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(_FACTORIES)}")
    return _FACTORIES[name](selection)
