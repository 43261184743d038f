"""What runs at a hospital: its data, its compiled site function, its state between rounds.

:class:`LocalSite` (driven by :mod:`fedmix_jax.flower.client_app`) holds a site's data from its
node config (:func:`load_site_data`: ``folders`` or ``synthetic``); the model and round settings
come from the coordinator as the JSON of :data:`SHARED_GROUPS`. Details: docs/across_sites.md.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fedmix_jax.data.federation import LEVEL_NAMES, FederatedSplit
from fedmix_jax.flower import round_core
from fedmix_jax.flower.array_records import REPORT_FIELDS
# Evaluation reply keys: fedmix_jax.evaluation.evaluate's figures, "_" written "-".
from fedmix_jax.flower.validation import EVAL_FIGURES, PER_CLASS_FIGURES

# The config groups a site needs (``num_rounds``: the default warm-up of FedST / FedRGD).
SHARED_GROUPS = ("seed", "num_rounds", "strategy", "model", "train", "selection", "data")


def shared_config_json(config) -> str:
    """The JSON string of the groups of ``config`` that every site needs (:data:`SHARED_GROUPS`)."""
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return json.dumps({k: d[k] for k in SHARED_GROUPS if k in d}, sort_keys=True, default=list)


def config_from_json(text: str) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(json.loads(text))


_SPLITS = ("train", "val", "test")


@dataclasses.dataclass
class SiteData:
    """One site's splits, leaves without client axis ([N, ...])."""

    name: str
    index: int            # position in the federation's client order (-1: not known here)
    train: FederatedSplit
    val: FederatedSplit
    test: FederatedSplit

    def info(self) -> dict[str, Any]:
        """What a site declares when it joins: sizes, shapes, the training split's supervision
        levels (``"box+pixel"``); no sample."""
        lv = np.asarray(self.train.levels)[np.asarray(self.train.valid)]
        return {"site-name": self.name, "site-index": int(self.index),
                **{f"num-{k}": int(np.asarray(getattr(self, k).valid).sum()) for k in _SPLITS},
                "image-shape": [int(s) for s in np.shape(self.train.images)[1:]],
                "num-classes": int(np.shape(self.train.masks)[-1]),
                "levels": "+".join(sorted({LEVEL_NAMES[int(x)] for x in np.unique(lv)})) or "-"}


def _take(split: FederatedSplit, c: int, trim: bool) -> FederatedSplit:
    one = jax.tree.map(lambda x: np.asarray(x[c]), split)
    if trim:
        n = max(int(one.valid.sum()), 1)
        one = jax.tree.map(lambda x: x[:n], one)
    return one


def site_from_federation(federation, index: int, trim: bool = False) -> SiteData:
    """Client ``index`` of a :class:`~fedmix_jax.data.federation.Federation` as a site
    (``trim=False``: with the federation's padding, the shapes of its in-process slice)."""
    return SiteData(name=str(federation.client_names[index]), index=int(index),
                    **{k: _take(getattr(federation, k), index, trim) for k in _SPLITS})


# The coordinator's data settings a folders site applies (each combination: its own cache).
FOLDERS_DATA_KEYS = ("image_size", "channels", "pack_labels", "seed", "val_fraction",
                     "test_fraction", "on_bad_input", "box_mode", "max_per_client")


def data_settings(node_config: dict, shared: ml_collections.ConfigDict | None) -> dict:
    """What decides a site's data: ``{"node": [(key, value)], "data": {...}}``, its node config
    but ``state-dir`` and the coordinator's data settings that apply to it."""
    kind = str(node_config.get("data", "synthetic")).strip().lower()
    data = {}
    if shared is not None and "data" in shared:
        group = shared.data.to_dict() if hasattr(shared.data, "to_dict") else dict(shared.data)
        data = group if kind == "synthetic" else {k: group[k] for k in FOLDERS_DATA_KEYS
                                                 if k in group}
    return {"node": sorted((str(k), str(v)) for k, v in node_config.items() if k != "state-dir"),
            "data": data}


def data_key(node_config: dict, shared_json: str | None) -> str:
    """A key equal for two (node config, shared JSON) pairs exactly when they give the same data."""
    shared = config_from_json(shared_json) if shared_json else None
    return json.dumps(data_settings(node_config, shared), sort_keys=True, default=str)


def load_site_data(node_config: dict, shared: ml_collections.ConfigDict | None) -> SiteData:
    """The site's data from its node config (``data``: ``synthetic`` or ``folders``)."""
    kind = str(node_config.get("data", "synthetic")).strip().lower()
    if kind == "synthetic":
        if shared is None:
            raise ValueError("a synthetic site needs the coordinator's data settings")
        from fedmix_jax.data.synthetic import synthetic_federation_from_config

        index = int(node_config.get("site-index", 0))
        fed = synthetic_federation_from_config(shared.data)
        if not 0 <= index < fed.num_clients:
            raise ValueError(f"site-index {index} is outside the synthetic federation's "
                             f"{fed.num_clients} clients")
        site = site_from_federation(fed, index, trim=False)
    elif kind == "folders":
        from fedmix_jax.data.real import default_data_config, load_federation_from_config

        data_dir = str(node_config.get("data-dir", ""))
        if not data_dir:
            raise ValueError("node config data-dir is required for data=folders")
        cache = {"cache_dir": str(node_config["cache-dir"])} if node_config.get("cache-dir") else {}
        cfg = default_data_config("folders", data_dir=data_dir, **cache,
                                  **data_settings(node_config, shared)["data"])
        fed = load_federation_from_config(cfg, verbose=False)
        wanted, names = node_config.get("client"), list(fed.client_names)
        if wanted and str(wanted) not in names:
            raise ValueError(f"client {wanted!r} not in {data_dir} (found {names})")
        if not wanted and len(names) != 1:
            raise ValueError(f"{data_dir} holds several clients {names}: set node config client")
        site = site_from_federation(fed, names.index(str(wanted)) if wanted else 0, trim=True)
        site.index = int(node_config.get("site-index", -1))
    else:
        raise ValueError(f"unknown node config data={kind!r}; use 'folders' or 'synthetic'")
    site.name = str(node_config.get("site-name", site.name))
    return site


@functools.lru_cache(maxsize=8)
def _model_and_round_config(shared_json: str, num_classes: int):
    from fedmix_jax.config import build_model, build_round_config

    cfg = config_from_json(shared_json)
    return build_model(cfg, num_classes), build_round_config(cfg)


class LocalSite:
    """A hospital's side of FedMix: holds its data, runs the compiled site function (cached per
    process: a process that lives across rounds compiles once)."""

    def __init__(self, data: SiteData):
        self.data = data
        self._device_data = None

    def setup(self, shared_json: str):
        """``(model, round_config)`` of the coordinator's config (built once per config)."""
        return _model_and_round_config(shared_json, int(np.shape(self.data.train.masks)[-1]))

    @functools.lru_cache(maxsize=8)
    def template_pair(self, shared_json: str):
        """The model pair's ShapeDtypeStructs (no computation; traced once per config)."""
        model, config = self.setup(shared_json)
        shape = tuple(np.shape(self.data.train.images)[1:])
        return jax.eval_shape(lambda: round_core.initial_server_state(model, 0, shape, config)[0])

    @functools.lru_cache(maxsize=8)
    def template_state(self, shared_json: str):
        """The :class:`~fedmix_jax.site.SiteState`'s ShapeDtypeStructs (traced once per config)."""
        _, config = self.setup(shared_json)
        return jax.eval_shape(lambda p: round_core.initial_site_state(p, config),
                              self.template_pair(shared_json))

    def train(self, shared_json: str, global_pair, state, key, hparams, round_index: int):
        """One round of the site function from ``global_pair`` and the previous ``state`` (None:
        fresh Adam moments): ``(SiteState, report dict of numpy scalars)``."""
        model, config = self.setup(shared_json)
        fn = round_core.compiled_site_fn(model, config)
        global_pair = jax.tree.map(jnp.asarray, global_pair)
        if state is None:
            state = round_core.initial_site_state(global_pair, config)
        state = jax.tree.map(jnp.asarray, state)
        if self._device_data is None:
            self._device_data = jax.device_put(self.data.train)
        new_state, report = fn(global_pair, state, self._device_data, key, hparams, round_index)
        report = jax.device_get(report)
        return new_state, {k: np.asarray(getattr(report, k)) for k in REPORT_FIELDS}

    def evaluate(self, shared_json: str, params_model1) -> dict[str, float]:
        """Model 1 on the val and test splits: ``num-{split}``, ``{split}-{figure}`` (floats; per
        class: K floats), NaN where there is nothing to measure."""
        from fedmix_jax.evaluation import evaluate

        model, config = self.setup(shared_json)
        num_classes = int(np.shape(self.data.train.masks)[-1])
        out = {}
        for name in ("val", "test"):
            split = getattr(self.data, name)
            out[f"num-{name}"] = n = int(np.asarray(split.valid).sum())
            if n:
                one = jax.tree.map(lambda x: np.asarray(x)[None], split)
                ev = evaluate(model, params_model1, one, chunk_size=config.inference_chunk)
                ev = {k: ev[k.replace("-", "_")][0] for k in (*EVAL_FIGURES, *PER_CLASS_FIGURES)}
            else:
                ev = {**{k: 0.0 if k in ("dice", "iou") else math.nan for k in EVAL_FIGURES},
                      **{k: [math.nan] * num_classes for k in PER_CLASS_FIGURES}}
            out.update({f"{name}-{k}": float(ev[k]) for k in EVAL_FIGURES})
            out.update({f"{name}-{k}": [float(v) for v in np.asarray(ev[k]).ravel()]
                        for k in PER_CLASS_FIGURES})
        return out

