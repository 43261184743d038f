"""The server side of a FedMix round as a Flower strategy (``flwr.serverapp.strategy.Strategy``).

:class:`FedMixStrategy` wraps a strategy of the project's registry: it checks every reply
(:mod:`~fedmix_jax.flower.validation`; a rejected or missing site gets weight 0), weighs the
sites and averages **both** models. Site ``c`` (declared order, never node ids) gets the
in-process round's key. Details: docs/across_sites.md.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Iterable

import jax
import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy as FlowerStrategy

from fedmix_jax.flower import round_core, array_records, robust
from fedmix_jax.flower.protocol import CONFIG_RECORD, GLOBAL_RECORD
from fedmix_jax.flower.validation import (EVAL_FIGURES, PER_CLASS_FIGURES, ReplyRejected,
                                          check_eval_reply, check_train_reply)
from fedmix_jax.round import round_keys
from fedmix_jax.site import ModelPair

log = logging.getLogger("fedmix_jax.flower")


@dataclasses.dataclass(frozen=True)
class Site:
    """A registered site: its Flower node, its position in the federation, its declared sizes."""

    node_id: int
    index: int
    name: str
    num_train: int
    num_val: int = 0
    num_test: int = 0


@dataclasses.dataclass
class RoundOutcome:
    """What the server kept of one round (all lists in site order)."""

    round: int
    reports: dict[str, list]                 # REPORT_FIELDS -> [C] (0 for sites left out)
    weights: list[float]
    accepted: list[bool]
    rejected: dict[str, str]                  # site name -> reason
    applied: bool                             # False: fewer than min_sites accepted
    update_norms: list[float] | None = None   # ||local - broadcast||_2 (norm bound on; 0: out)
    dp_update_norms: list[float] | None = None  # before clipping (privacy on; 0: no reply)
    dp_epsilon: float | None = None           # (ε, δ) spent by rounds 1..round (privacy on)


class FedMixStrategy(FlowerStrategy):
    """A Flower strategy running ``strategy`` (:class:`fedmix_jax.strategies.Strategy`) over
    ``sites`` (in federation order); every reply must match ``template_pair``; ``key`` is split
    once per round; ``min_sites``: the fewest accepted replies for a round to be applied;
    ``num_classes``: the length of per-class figures (None: any). The robust and DP options:
    :mod:`~fedmix_jax.flower.robust` (0 / "weighted": off).
    """

    def __init__(self, strategy, sites: list[Site], template_pair, key, hparams,
                 shared_json: str, *, min_sites: int = 1, run_name: str = "run",
                 max_update_norm_ratio: float = 0.0, aggregator: str = "weighted",
                 trim_fraction: float = 0.1, dp_clip_norm: float = 0.0,
                 dp_noise_multiplier: float = 0.0, dp_delta: float = 1e-5,
                 num_classes: int | None = None):
        robust.check_options(aggregator, float(max_update_norm_ratio), float(trim_fraction))
        robust.check_dp_options(float(dp_clip_norm), float(dp_noise_multiplier), float(dp_delta),
                              aggregator)
        self.dp = ((float(dp_clip_norm), float(dp_noise_multiplier), float(dp_delta))
                   if dp_clip_norm > 0 else None)
        self.strategy, self.sites, self.template_pair = strategy, list(sites), template_pair
        self.key, self.hparams, self.shared_json = key, hparams, shared_json
        self.min_sites, self.run_name = int(min_sites), run_name
        self.max_update_norm_ratio = float(max_update_norm_ratio)
        self.aggregator, self.trim_fraction = aggregator, float(trim_fraction)
        self.num_classes = None if num_classes is None else int(num_classes)
        self.by_node = {s.node_id: s for s in self.sites}
        self.spec = array_records.pair_spec(template_pair) if strategy.aggregates else None
        self.last_round: RoundOutcome | None = None
        self.last_eval: dict[str, Any] | None = None
        self._next_key = None
        self._sent: dict[str, np.ndarray] | None = None   # the round's broadcast pair [P]
        self._dp_norms: list[float] | None = None
        #: The coordinator's oldest checkpoint round (0: none): the sites keep states from it on.
        self.kept_round = 0

    def _config(self, server_round: int, config: ConfigRecord) -> dict:
        h = self.hparams
        return dict(config) | {"round": int(server_round), "config-json": self.shared_json,
                "run-name": self.run_name, "lam": float(h.lam), "beta": float(h.beta),
                "learning-rate": float(h.learning_rate),
                "send-model": bool(self.strategy.aggregates), "kept-round": int(self.kept_round)}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """One message per registered site: the global pair, its key of the round, the config."""
        self._next_key, site_keys = round_keys(self.key, len(self.sites))
        # decoded once, for the aggregate and the update-norm bound (both need the spec)
        self._sent = None if self.spec is None else {k: arrays[k].numpy() for k in self.spec}
        out = []
        for site in self.sites:
            cfg = self._config(server_round, config)
            cfg["site-key"] = [int(x) for x in round_core.key_to_numpy(site_keys[site.index])]
            content = RecordDict({GLOBAL_RECORD: arrays, CONFIG_RECORD: ConfigRecord(cfg)})
            out.append(Message(content=content, dst_node_id=site.node_id, message_type="train",
                               group_id=str(server_round)))
        return out

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Check every reply, weigh the accepted sites, average both models: ``(arrays,
        metrics)``, arrays None when fewer than ``min_sites`` were accepted (not applied)."""
        c = len(self.sites)
        accepted: dict[int, Any] = {}      # site index -> AcceptedReply
        rejected: dict[str, str] = {}      # site name -> reason
        for reply in replies:
            site = self.by_node.get(reply.metadata.src_node_id)
            if site is None:
                log.warning("round %d: reply from unregistered node %s ignored", server_round,
                            reply.metadata.src_node_id)
                continue
            if site.index in accepted:
                rejected[site.name] = "duplicate reply"
                accepted.pop(site.index)
                continue
            try:
                accepted[site.index] = check_train_reply(
                    reply, round_index=server_round, site=site.name,
                    declared_size=site.num_train, spec=self.spec)
            except ReplyRejected as e:
                rejected[site.name] = str(e)
        norms = self._bound_updates(accepted, rejected)
        rejected.update({s.name: "no reply within the round's timeout" for s in self.sites
                         if s.index not in accepted and s.name not in rejected})
        for name, reason in rejected.items():
            log.warning("round %d: reply of site %s rejected: %s", server_round, name, reason)
        # The key advances whatever happens (as the in-process round's).
        if self._next_key is not None:
            self.key, self._next_key = self._next_key, None
        ok = [i in accepted for i in range(c)]
        reports = {k: [accepted[i].report[k] if ok[i] else 0 for i in range(c)]
                   for k in array_records.REPORT_FIELDS}
        applied = sum(ok) >= self.min_sites
        weights, new_arrays, self._dp_norms = [0.0] * c, None, None
        if applied:
            participating = np.array([ok[i] and self.sites[i].num_train > 0 for i in range(c)])
            w = round_core.site_weights(self.strategy, reports, participating, self.hparams,
                                        round_core.round_index(server_round))
            if np.all(np.isfinite(w)) and np.all(w >= 0):
                weights = [float(x) for x in w]
            else:       # the checked reports make this unreachable; never average with it
                log.error("round %d: non-finite weights %s: round not applied", server_round, w)
                applied = False
            if applied and self.strategy.aggregates:
                new_arrays = self._aggregate(accepted, weights)
        else:
            log.error("round %d: only %d of %d sites accepted (min_sites %d): round not "
                      "applied", server_round, sum(ok), c, self.min_sites)
        self.last_round = RoundOutcome(
            round=server_round, reports=reports, weights=weights, accepted=ok, rejected=rejected,
            applied=applied, update_norms=norms, dp_update_norms=self._dp_norms,
            dp_epsilon=None if self.dp is None else robust.epsilon(self.dp[1],
                                                                    server_round, self.dp[2]))
        return new_arrays, MetricRecord({"num-accepted": int(sum(ok)), "applied": int(applied),
                                         "weights": [float(w) for w in weights]})

    def _bound_updates(self, accepted: dict, rejected: dict) -> list[float] | None:
        """Move the update-norm outliers from ``accepted`` to ``rejected``; the norms [C] (0: no
        reply), None when the bound is off."""
        if self.max_update_norm_ratio <= 0 or self.spec is None or not accepted:
            return None
        idx = sorted(accepted)
        sq = sum(robust.update_norms(np.stack([accepted[i].arrays[k] for i in idx]), b) ** 2
                 for k, b in self._sent.items())
        norms = np.sqrt(sq)
        trained = np.array([accepted[i].report["num_usable"] > 0 for i in idx])
        flagged = robust.norm_outliers(norms, trained, self.max_update_norm_ratio)
        median = float(np.median(norms[trained])) if trained.any() else 0.0
        for i, norm, bad in zip(idx, norms, flagged):
            if bad:
                site = accepted.pop(i).site
                rejected[site] = (f"update norm {norm:.4g} is above {self.max_update_norm_ratio:g}"
                                  f" x the round's median {median:.4g}")
        norm_of = dict(zip(idx, norms))
        return [float(norm_of.get(i, 0.0)) for i in range(len(self.sites))]

    def _aggregate(self, accepted: dict, weights: list[float]) -> ArrayRecord:
        # Sites left out send the broadcast with weight 0: [C, ...] every round, one compilation.
        sent = self._sent
        src = [accepted[i].arrays if i in accepted else sent for i in range(len(self.sites))]
        trained = array_records.PAIR_PREFIXES[:2 if self.strategy.trains_model2 else 1]
        if self.dp is not None:     # each update clipped to norm C over the models that train
            norms = [0.0] * len(self.sites)
            for i in accepted:
                clipped, norms[i] = robust.clip_update(
                    src[i], {k: sent[k] for k in trained}, self.dp[0])
                src[i] = dict(src[i]) | clipped
            self._dp_norms = norms
        if self.aggregator != "weighted":
            out = ArrayRecord({k: Array(robust.robust_average(
                np.stack([a[k] for a in src]), weights, self.aggregator, self.trim_fraction))
                for k in self.spec})
        else:
            # Leaf by leaf, exactly as in-process (one long packed vector may round differently).
            like = ModelPair(*tuple(self.template_pair))
            rows = [ModelPair(*(array_records.unpack_model(a[k], m)
                                for k, m in zip(array_records.PAIR_PREFIXES, like))) for a in src]
            stacked = jax.tree.map(lambda *xs: np.stack(xs), *rows)
            out = array_records.pair_to_record(
                jax.device_get(round_core.aggregate(stacked, weights)))
        if self.dp is not None:     # noise from the OS's entropy, never from the run's seed
            noisy = robust.add_noise({k: out[k].numpy() for k in trained},
                                      robust.noise_std(self.dp[0], self.dp[1]))
            out.update({k: Array(a) for k, a in noisy.items()})
        if not self.strategy.trains_model2:     # model 2 stays as broadcast (as in-process)
            out["model2"] = Array(sent["model2"])
        return out

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Global model 1 to every site (``local``: no model; each site scores its own)."""
        model1 = ({GLOBAL_RECORD: ArrayRecord({"model1": arrays["model1"]})}
                  if self.strategy.aggregates else {})
        return [Message(content=RecordDict({CONFIG_RECORD: ConfigRecord(
                    self._config(server_round, config)), **model1}), dst_node_id=site.node_id,
                        message_type="evaluate", group_id=f"eval-{server_round}")
                for site in self.sites]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        """Per-site val / test figures (``{split}_{figure}``: [C], NaN where missing) and their
        means over the sites with data (``{split}_mean_{figure}``, NaNs skipped, as in-process)."""
        c = len(self.sites)
        rows: dict[int, dict] = {}
        rejected = {}
        for reply in replies:
            site = self.by_node.get(reply.metadata.src_node_id)
            if site is None:
                continue
            try:
                rows[site.index] = check_eval_reply(reply, round_index=server_round,
                                                    site=site.name, num_classes=self.num_classes)
            except ReplyRejected as e:
                rejected[site.name] = str(e)
                log.warning("round %d: evaluation of site %s rejected: %s", server_round,
                            site.name, e)
        out: dict[str, Any] = {}
        for split in ("val", "test"):
            for k in EVAL_FIGURES:
                name = k.replace("-", "_")
                vals = [rows[i][f"{split}-{k}"] if i in rows else math.nan for i in range(c)]
                out[f"{split}_{name}"] = vals
                have = [v for i, v in enumerate(vals) if i in rows
                        and rows[i][f"num-{split}"] > 0 and not math.isnan(v)]
                out[f"{split}_mean_{name}"] = float(np.mean(have)) if have else math.nan
            out.update(_per_class_scores(rows, split, c))
        self.last_eval = {"scores": out, "rejected": rejected, "answered": sorted(rows)}
        # (a MetricRecord holds numbers and flat lists: the per-site per-class rows stay out)
        return MetricRecord({k: v for k, v in out.items()
                             if not (isinstance(v, list) and v and isinstance(v[0], list))})

    def summary(self) -> None:
        log.info("FedMixStrategy: %s over %d sites (%s), min_sites %d", self.strategy.name,
                 len(self.sites), ", ".join(s.name for s in self.sites), self.min_sites)


def _per_class_scores(rows: dict[int, dict], split: str, c: int) -> dict[str, Any]:
    """``{split}_{figure}`` ([C][K], NaN rows for sites without a reply) and their mean over the
    sites with data, ``{split}_mean_{figure}`` ([K]); nothing when a reply lacks them."""
    from fedmix_jax.hd95 import nanmean

    out: dict[str, Any] = {}
    for k in PER_CLASS_FIGURES:
        if not rows or any(f"{split}-{k}" not in r for r in rows.values()):
            continue
        width = len(next(iter(rows.values()))[f"{split}-{k}"])
        per_site = [rows[i][f"{split}-{k}"] if i in rows else [math.nan] * width for i in range(c)]
        with_data = np.array([per_site[i] for i in sorted(rows)
                              if rows[i][f"num-{split}"] > 0], np.float64).reshape(-1, width)
        if not len(with_data):
            mean = np.full(width, math.nan)
        elif "present" in k:
            mean = nanmean(with_data, axis=0)
        else:
            mean = with_data.mean(axis=0)
        name = k.replace("-", "_")
        out[f"{split}_{name}"] = per_site
        out[f"{split}_mean_{name}"] = [float(v) for v in mean]
    return out
