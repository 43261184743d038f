"""Strategies: what a round does with each sample, which models train, and how clients weigh.

:class:`Strategy` objects, read by the round, the site function, the CLI and the Flower server
from the one registry here (:func:`get_strategy`, :func:`register_strategy`). Details:
docs/strategies.md.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from fedmix_jax import aggregation
from fedmix_jax.weak_objective import WeakSupervision
from fedmix_jax.pseudo_labels import SelectionConfig
from fedmix_jax.self_training import SelfTrainingWeights

WEAK_SAMPLE_MODES = ("pseudo_labels", "ground_truth", "unused", "self_training")


# ``weighting(reports, participating, hparams, warming_up) -> [C] float32`` weights summing to 1
# over the ``participating`` [C] clients, from the ``reports`` (fields [C]), traced ``hparams``
# and ``warming_up`` [] bool.
Weighting = Callable[..., jax.Array]


@dataclasses.dataclass(frozen=True)
class AdaptiveWeights:
    """FedMix: ``w_i ∝ n_i / Σn + λ · ℓ_i^β / Σℓ^β`` (:func:`aggregation.fedmix_weights`)."""

    def __call__(self, reports, participating, hparams, warming_up):
        return aggregation.fedmix_weights(reports.num_usable, reports.loss1, hparams.lam,
                                          hparams.beta, participating)


@dataclasses.dataclass(frozen=True)
class CountWeights:
    """FedAvg: ``w_i = n_i / Σ n_j`` over the usable samples."""

    def __call__(self, reports, participating, hparams, warming_up):
        return aggregation.fedavg_weights(reports.num_usable, participating)


@dataclasses.dataclass(frozen=True)
class Strategy:
    """One strategy: ``weak_samples`` (one of :data:`WEAK_SAMPLE_MODES`), ``trains_model2``,
    ``weighting`` (None: no aggregation), ``selection``, ``warmup_rounds``, ``weak``."""

    name: str
    weak_samples: str
    trains_model2: bool
    weighting: Weighting | None
    selection: SelectionConfig = SelectionConfig()
    warmup_rounds: int = 0
    weak: WeakSupervision | None = None   # direct weak-label losses (fedmix_plus), else None

    def warming_up(self, round_index) -> jax.Array:
        """[] bool: 0-based ``round_index`` is a warm-up round (only pixel samples train)."""
        return jnp.asarray(round_index) < self.warmup_rounds

    def __post_init__(self):
        if self.weak_samples not in WEAK_SAMPLE_MODES:
            raise ValueError(f"weak_samples must be one of {WEAK_SAMPLE_MODES}, "
                             f"got {self.weak_samples!r}")

    @property
    def aggregates(self) -> bool:
        """Whether the server averages the clients' models (False: local learning)."""
        return self.weighting is not None

    def weights(self, reports, participating: jax.Array, hparams, round_index) -> jax.Array:
        """[C] aggregation weights of 0-based round ``round_index`` (zeros without aggregation)."""
        if self.weighting is None:
            return jnp.zeros(jnp.shape(participating), jnp.float32)
        return self.weighting(reports, participating, hparams, self.warming_up(round_index))

    def with_weak(self, weak: WeakSupervision) -> "Strategy":
        """The strategy with other weak-loss weights and their ``box_fit`` in its selection
        (unchanged without weak losses)."""
        if self.weak is None:
            return self
        return dataclasses.replace(self, weak=weak, selection=dataclasses.replace(
            self.selection, box_fit=weak.box_fit))


_FACTORIES: dict[str, Callable[[SelectionConfig], Strategy]] = {
    "fedmix": lambda s: Strategy("fedmix", "pseudo_labels", True, AdaptiveWeights(), s),
    "fedmix_plus": lambda s: Strategy("fedmix_plus", "pseudo_labels", True, AdaptiveWeights(),
                                      s, weak=WeakSupervision()).with_weak(WeakSupervision()),
    "fedmix_no_adaptive": lambda s: Strategy("fedmix_no_adaptive", "pseudo_labels", True,
                                             CountWeights(), s),
    "fedmix_no_refine": lambda s: Strategy("fedmix_no_refine", "pseudo_labels", True,
                                           AdaptiveWeights(), dataclasses.replace(s, refine=False)),
    "fedavg_pixel": lambda s: Strategy("fedavg_pixel", "unused", False, CountWeights(), s),
    "fedavg_full": lambda s: Strategy("fedavg_full", "ground_truth", False, CountWeights(), s),
    "local": lambda s: Strategy("local", "unused", False, None, s),
    "fedst": lambda s: Strategy("fedst", "self_training", False, SelfTrainingWeights(0.9), s),
    "fedrgd": lambda s: Strategy("fedrgd", "self_training", False, SelfTrainingWeights(0.5), s),
}

STRATEGY_NAMES = tuple(_FACTORIES)


def register_strategy(name: str, factory: Callable[[SelectionConfig], Strategy]) -> None:
    """Add a strategy to the registry: ``factory(selection) -> Strategy``."""
    global STRATEGY_NAMES
    _FACTORIES[name] = factory
    STRATEGY_NAMES = tuple(_FACTORIES)


def get_strategy(name: str, selection: SelectionConfig = SelectionConfig()) -> Strategy:
    """The strategy called ``name`` with the given selection rules; raises ValueError if unknown."""
    if name not in _FACTORIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(_FACTORIES)}")
    return _FACTORIES[name](selection)
