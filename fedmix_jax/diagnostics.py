"""Pseudo-label diagnostics: the round's pseudo-labels against the true masks, where they exist.

Per client and weak level (box, image, none): keys ``pl_<level>_<figure>`` [C] (``n``, ``sel``,
``sel_lesion``, ``dice``, ``dice_all``, ``precision``, ``recall``, ``area``); local only.
Details: docs/weak_supervision.md ("Diagnostics"), docs/main_job.md.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fedmix_jax.data.federation import BOX, IMAGE, NONE, float_labels, unpack_split_labels
from fedmix_jax.losses import dice_coefficient
from fedmix_jax.pseudo_labels import site_pseudo_labels
from fedmix_jax.round import client_data, client_rows

LEVELS = {"box": BOX, "image": IMAGE, "none": NONE}
GOOD_DICE = 0.8     # a pseudo-label at least this close to the truth counts as good


def site_diagnostics(model: nn.Module, config, global_params, data) -> dict[str, jax.Array]:
    """The diagnostics of one site (leaves [N, ...], masks unpacked): dict of [] float32."""
    pl = site_pseudo_labels(model, global_params, data, config)
    truth = float_labels(data.masks)
    pseudo = float_labels(pl.pseudo2)
    dice = dice_coefficient(pseudo, truth)                                      # [N]
    lesion = jnp.sum(truth, axis=(1, 2, 3)) > 0
    good = dice >= GOOD_DICE
    out = {}
    for name, level in LEVELS.items():
        mine = data.valid & (data.levels == level)
        sel = mine & pl.selected
        f = lambda m: jnp.sum(m.astype(jnp.float32))     # noqa: E731
        mean_over = lambda v, m: jnp.where(f(m) > 0, jnp.sum(v * m) / jnp.maximum(f(m), 1),  # noqa
                                           jnp.nan)
        sel_lesion = sel & lesion
        out[f"pl_{name}_n"] = f(mine)
        out[f"pl_{name}_sel"] = f(sel)
        out[f"pl_{name}_sel_lesion"] = f(sel_lesion)
        out[f"pl_{name}_dice"] = mean_over(dice, sel)
        out[f"pl_{name}_dice_all"] = mean_over(dice, mine & lesion)
        out[f"pl_{name}_precision"] = mean_over(good.astype(jnp.float32), sel)
        out[f"pl_{name}_recall"] = mean_over(sel.astype(jnp.float32), mine & good)
        area = lambda x: jnp.sum(x * sel_lesion[:, None, None, None])   # noqa: E731
        out[f"pl_{name}_area"] = jnp.where(area(truth) > 0,
                                           area(pseudo) / jnp.maximum(area(truth), 1), jnp.nan)
    return out


@functools.lru_cache(maxsize=16)
def _program(model: nn.Module, config):
    @jax.jit
    def run(global_params, data):
        rows, pool = client_rows(data)
        return jax.lax.map(lambda r: site_diagnostics(
            model, config, global_params, unpack_split_labels(client_data(pool, r))), rows)

    return run


def pseudo_label_diagnostics(model: nn.Module, config, global_params, data) -> dict[str, list]:
    """``{key: [C] floats (None for NaN)}`` of the pseudo-labels of ``global_params`` on the
    training split ``data`` (padded [C, N, ...] or compact), for the levels it holds; empty when
    the strategy trains on no pseudo-label."""
    if config.strategy.weak_samples != "pseudo_labels":
        return {}
    out = jax.device_get(_program(model, config)(global_params, data))
    absent = [name for name in LEVELS if not np.any(out[f"pl_{name}_n"])]
    return {k: [None if not np.isfinite(v) else float(v) for v in np.asarray(x)]
            for k, x in out.items() if k.split("_")[1] not in absent}


def diagnostics_of_run(run, state) -> dict[str, list]:
    """The job ``run``'s :func:`pseudo_label_diagnostics` of ``state``'s pair when its settings
    ask for them and the training split is in memory, else empty."""
    if not run.settings.diagnostics or run.streamed:
        return {}
    return pseudo_label_diagnostics(run.model, run.round_config, state.global_params,
                                    run.train_data)


def summarize(diagnostics: dict[str, list]) -> dict[str, float | None]:
    """The same keys pooled over clients (sums, selected- or count-weighted means)."""
    out = {}
    for name in LEVELS:
        n = np.asarray(diagnostics.get(f"pl_{name}_n", []), float)
        sel = np.asarray(diagnostics.get(f"pl_{name}_sel", []), float)
        if n.size == 0 or n.sum() == 0:
            continue
        for key in ("n", "sel", "sel_lesion"):
            out[f"pl_{name}_{key}"] = float(np.sum(diagnostics[f"pl_{name}_{key}"]))
        for key, weight in (("dice", sel), ("precision", sel), ("area", sel),
                            ("dice_all", n), ("recall", n)):
            v = np.asarray(diagnostics[f"pl_{name}_{key}"], float)     # None: NaN
            ok = np.isfinite(v) & (weight > 0)
            out[f"pl_{name}_{key}"] = (float(np.sum(v[ok] * weight[ok]) / weight[ok].sum())
                                       if ok.any() else None)
    return out
