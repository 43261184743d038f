"""Seeded FedMix runs for the benchmark scripts: one compiled round per configuration, its seeds
reuse it; each run reports the test figures of its best-validation round."""

from __future__ import annotations

import time

import jax

import fedmix_jax as fm
from fedmix_jax.config import build_model, build_round_config
from fedmix_jax.evaluation import evaluate


def run_variant(config, federation, seeds, rounds, hd95=False, round_times=None):
    """Best-validation test figures of each seed: list of dicts (with ``hd95``: HD95 and the
    per-class Dice too). ``round_times``, if a list, gets each round's seconds (the round alone,
    to its results on the host; the first one compiles)."""
    model = build_model(config, federation.num_classes)
    round_config = build_round_config(config)
    round_fn = fm.make_round_fn(model, round_config)
    train = jax.device_put(federation.train)
    image_shape = federation.train.images.shape[2:]
    out = []
    for seed in seeds:
        state = fm.init_state(model, jax.random.PRNGKey(seed), image_shape,
                              federation.num_clients, round_config)
        best = (-1.0, None)
        for _ in range(rounds):
            t0 = time.perf_counter()
            state, metrics = round_fn(state, train)
            jax.block_until_ready(metrics)
            if round_times is not None:
                round_times.append(time.perf_counter() - t0)
            params = state.global_params[0]
            val = evaluate(model, params, federation.val, hd95=False)["mean_dice"]
            if val > best[0]:
                test = evaluate(model, params, federation.test, hd95=hd95)
                best = (val, dict(round=int(state.round), val_dice=float(val),
                                  dice=float(test["mean_dice"]),
                                  dice_lesion=float(test["mean_dice_present"]),
                                  fp_rate=float(test["mean_false_positive_rate"]),
                                  fp_rate_per_client=[float(x) for x in
                                                      test["false_positive_rate"]],
                                  dice_per_class=[float(x) for x in
                                                  test["mean_dice_per_class"]],
                                  **({"hd95": float(test["mean_hd95"])} if hd95 else {})))
        out.append(dict(seed=seed, **best[1]))
    return out
