"""Strategies: what a round does with each sample, which models train, and how clients weigh.

A strategy is an object with named parts, not a new loop: the round core
(:mod:`fedmix_jax.round`), the site function (:mod:`fedmix_jax.site`), the CLI and the Flower
server all read the same object from the one registry here.

* ``weak_samples`` — what a non-pixel sample (box / image / none) trains on:
  ``"pseudo_labels"`` (FedMix: the selected samples train with cross pseudo-supervision),
  ``"ground_truth"`` (the fully supervised upper bound: every sample is treated as pixel-labelled),
  ``"unused"`` (only pixel samples train), ``"self_training"`` (FedST / FedRGD: after
  ``warmup_rounds`` every weak sample trains on its own confident pixels, see
  :mod:`fedmix_jax.self_training`).
* ``trains_model2`` — whether model 2 trains (cross pseudo-supervision needs it); otherwise
  model 2 stays as initialised and only model 1 is trained and evaluated.
* ``weighting`` — the aggregation weights from the sites' reports ([C] -> [C]), or ``None`` for no
  aggregation (each client keeps its own models: local learning).
* ``selection`` — the pseudo-label rules (:class:`~fedmix_jax.pseudo_labels.SelectionConfig`).

Adding a strategy is one entry in :data:`_FACTORIES` (or :func:`register_strategy` from user code).
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


def _fedmix(sel: SelectionConfig) -> Strategy:
    return Strategy("fedmix", "pseudo_labels", True, AdaptiveWeights(), sel)


def _fedmix_plus(sel: SelectionConfig) -> Strategy:
    return Strategy("fedmix_plus", "pseudo_labels", True, AdaptiveWeights(), sel,
                    weak=WeakSupervision()).with_weak(WeakSupervision())


def _fedmix_no_adaptive(sel: SelectionConfig) -> Strategy:
    return Strategy("fedmix_no_adaptive", "pseudo_labels", True, CountWeights(), sel)


def _fedmix_no_refine(sel: SelectionConfig) -> Strategy:
    return Strategy("fedmix_no_refine", "pseudo_labels", True, AdaptiveWeights(),
                    dataclasses.replace(sel, refine=False))


def _fedavg_pixel(sel: SelectionConfig) -> Strategy:
    return Strategy("fedavg_pixel", "unused", False, CountWeights(), sel)


def _fedavg_full(sel: SelectionConfig) -> Strategy:
    return Strategy("fedavg_full", "ground_truth", False, CountWeights(), sel)


def _local(sel: SelectionConfig) -> Strategy:
    return Strategy("local", "unused", False, None, sel)


def _fedst(sel: SelectionConfig) -> Strategy:
    return Strategy("fedst", "self_training", False, SelfTrainingWeights(pixel_share=0.9), sel)


def _fedrgd(sel: SelectionConfig) -> Strategy:
    return Strategy("fedrgd", "self_training", False, SelfTrainingWeights(pixel_share=0.5), sel)


_FACTORIES: dict[str, Callable[[SelectionConfig], Strategy]] = {
    "fedmix": _fedmix,
    "fedmix_plus": _fedmix_plus,
    "fedmix_no_adaptive": _fedmix_no_adaptive,
    "fedmix_no_refine": _fedmix_no_refine,
    "fedavg_pixel": _fedavg_pixel,
    "fedavg_full": _fedavg_full,
    "local": _local,
    "fedst": _fedst,
    "fedrgd": _fedrgd,
}

STRATEGY_NAMES = tuple(_FACTORIES)


def register_strategy(name: str, factory: Callable[[SelectionConfig], Strategy]) -> None:
    """Add a strategy to the registry: ``factory(selection) -> Strategy``."""
    global STRATEGY_NAMES
    _FACTORIES[name] = factory
    STRATEGY_NAMES = tuple(_FACTORIES)


def get_strategy(name: str, selection: SelectionConfig = SelectionConfig()) -> Strategy:
    """The strategy called ``name`` (see :data:`STRATEGY_NAMES`) with the given selection rules.

    * ``fedmix`` — adaptive weights, both models, cross pseudo-supervision;
    * ``fedmix_plus`` — FedMix plus the box and image labels used directly as losses
      (:class:`~fedmix_jax.weak_objective.WeakSupervision`: box emptiness, box tightness, image-level
      multiple-instance learning) on every box / image sample, selected or not;
    * ``fedmix_no_adaptive`` — FedMix pseudo-labels with count-only FedAvg weights;
    * ``fedmix_no_refine`` — FedMix without box / class refinement of the pseudo-labels;
    * ``fedavg_pixel`` — FedAvg by counts over the pixel-labelled samples only (clients without
      any take no part: zero count, zero weight);
    * ``fedavg_full`` — every client trains on its ground truth (the upper bound);
    * ``local`` — no aggregation: each client trains alone on its own pixel samples;
    * ``fedst`` / ``fedrgd`` — federated self-training (one model, warm-up on the pixel clients,
      then confident-pixel BCE on an intensity-shifted view; fixed weights 0.9 / 0.5 on the pixel
      client). Their warm-up length is ``warmup_rounds`` (the job sets it from
      ``config.train.warmup_rounds``; unset, half the rounds, resolved once per run by
      :func:`fedmix_jax.config.resolve_warmup_rounds`).
    """
    if name not in _FACTORIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(_FACTORIES)}")
    return _FACTORIES[name](selection)
