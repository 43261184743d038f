"""Hostile sites: every value a site sends is bounded before it reaches the weights or the
aggregate (issue 23, item 2). Fast: hand-made replies and declarations, no training.

Attacks covered: loss 1.0 (in range: accepted, and by design the largest FedMix weight), loss
1e6, 1e13, NaN, inf, negative; n_i beyond the declaration (1e9); counts beyond int64 / float64;
a model scaled x1000 (norm bound, robust aggregators); declarations of 10^12 samples, a missing
key, a string, a negative size, a duplicated name, a different image shape.
"""

from __future__ import annotations

import math
import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

pytest.importorskip("flwr")

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict  # noqa

from fedmix_jax.flower import round_core, array_records, robust  # noqa: E402
from fedmix_jax.flower.simulation import LocalGrid  # noqa: E402
from fedmix_jax.flower.strategy import FedMixStrategy, Site  # noqa: E402
from fedmix_jax.flower.validation import (LOCAL_RECORD, MAX_SITE_SAMPLES, REPORT_RECORD,  # noqa
                                          SITE_RECORD, ReplyRejected, check_declaration,
                                          check_loss, check_report)

DECLARED = 10


def _report(**kw):
    d = {k: (0.5 if typ is float else 2) for k, typ in array_records.REPORT_FIELDS.items()}
    d.update(num_usable=5, num_weak=4, num_selected_weak=2, round=1)
    d.update(kw)
    return d


def _check(**kw):
    return check_report(_report(**kw), round_index=1, site="s", declared_size=DECLARED)


# ------------------------------------------------------------------------------------------------
# the scalars of a train reply


@pytest.mark.parametrize("loss", [0.0, 0.3, 1.0, 1.0 + 5e-7, -5e-7])
def test_losses_in_the_dice_range_are_accepted_as_sent(loss):
    rep = _check(loss1=loss, loss2=loss)
    assert rep["loss1"] == loss and rep["loss2"] == loss           # not clipped


@pytest.mark.parametrize("loss", [1e6, 1e13, -0.5, 1.01, math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("which", ["loss1", "loss2"])
def test_losses_outside_the_dice_range_are_refused(loss, which):
    with pytest.raises(ReplyRejected, match="non-finite|outside the Dice loss range"):
        _check(**{which: loss})
    with pytest.raises(ReplyRejected):
        check_loss(which, loss)


@pytest.mark.parametrize("field, value, match", [
    ("num_usable", 10**9, "declared size"),           # n_i = 1e9 beyond the declaration
    ("num_usable", DECLARED + 1, "declared size"),
    ("num_weak", 10**12, "weak counts"),
    ("num_pixel", DECLARED + 1, "declared size"),
    ("steps", 2**40, "declared size"),                # would overflow int32 on the device
    ("num_pixel", 2**70, "declared size"),            # beyond int64
    ("num_selected_weak", 5, "weak counts"),          # more selected than weak (4)
    ("num_usable", -1, "negative"),
    ("num_usable", 3.0, "integer"),
    ("num_usable", True, "number"),
    ("loss1", 10**400, "out of range"),               # an integer beyond float64
])
def test_counts_are_bounded_by_the_declaration(field, value, match):
    with pytest.raises(ReplyRejected, match=match):
        _check(**{field: value})


def test_pixel_and_weak_together_within_the_declaration():
    _check(num_pixel=6, num_weak=4)                   # = declared size: fine
    with pytest.raises(ReplyRejected, match="num_pixel 7 \\+ num_weak 4"):
        _check(num_pixel=7, num_weak=4)


def test_weights_of_in_range_losses_stay_finite_where_unbounded_ones_overflow():
    """Why the server bounds l_i: in float32 ``1e13 ** 3`` overflows, the loss term becomes NaN
    and the in-process weights silently fall back to uniform (the sites' losses are lost); at
    the largest accepted loss they are finite and keep the loss term for any usable beta."""
    from fedmix_jax.aggregation import fedmix_weights

    counts = jnp.array([5, 5])
    bad = np.asarray(fedmix_weights(counts, jnp.array([1e13, 0.5]), 10.0, 3.0))
    np.testing.assert_array_equal(bad, [0.5, 0.5])            # silently wrong: never reached
    for beta in (1.5, 3.0, 50.0):
        w = np.asarray(fedmix_weights(counts, jnp.array([1.0 + 1e-6, 0.0]), 10.0, beta))
        assert np.all(np.isfinite(w)) and math.isclose(float(w.sum()), 1.0, rel_tol=1e-6)
        assert w[0] > 0.9


# ------------------------------------------------------------------------------------------------
# declarations


def _info(**kw):
    d = {"site-name": "a", "site-index": 0, "num-train": 8, "num-val": 4, "num-test": 4,
         "image-shape": [16, 16, 3], "num-classes": 1, "levels": "box"}
    d.update(kw)
    return d


def test_a_good_declaration_is_returned_typed():
    out = check_declaration(ConfigRecord(_info()))
    assert out == {"site-name": "a", "site-index": 0, "num-train": 8, "num-val": 4,
                   "num-test": 4, "image-shape": (16, 16, 3), "num-classes": 1, "levels": "box"}
    assert check_declaration(_info(**{"num-train": MAX_SITE_SAMPLES}))["num-train"] == 10**9


@pytest.mark.parametrize("change, match", [
    ({"num-train": 10**12}, "outside"),
    ({"num-train": -3}, "outside"),
    ({"num-val": 2**63 - 1}, "outside"),
    ({"num-train": "8"}, "expected an integer"),
    ({"num-train": 8.0}, "expected an integer"),
    ({"num-test": True}, "expected an integer"),
    ({"site-index": -2}, "outside"),
    ({"site-index": 10**7}, "outside"),
    ({"num-classes": 0}, "outside"),
    ({"image-shape": [16, 16]}, "3 integers"),
    ({"image-shape": "16x16x3"}, "3 integers"),
    ({"image-shape": [16, 0, 3]}, "outside"),
    ({"image-shape": [16, 10**9, 3]}, "outside"),
    ({"site-name": ""}, "printable"),
    ({"site-name": "a\nb"}, "printable"),
    ({"site-name": "x" * 500}, "printable"),
    ({"site-name": 7}, "string"),
    ({"levels": 3}, "string"),
])
def test_bad_declarations_are_refused(change, match):
    with pytest.raises(ReplyRejected, match=match):
        check_declaration(_info(**change))


@pytest.mark.parametrize("key", ["site-name", "site-index", "num-train", "num-val", "num-test",
                                 "image-shape", "num-classes"])
def test_a_declaration_missing_a_key_is_refused(key):
    info = _info()
    del info[key]
    with pytest.raises(ReplyRejected, match="lacks"):
        check_declaration(info)
    with pytest.raises(ReplyRejected):
        check_declaration(None)


def _info_reply(msg, info):
    reply = Message(RecordDict({"info": ConfigRecord(info)}), reply_to=msg)
    return reply


class _DeclaringGrid(LocalGrid):
    """Nodes that answer query.info with the given declarations (no ClientApp)."""

    def __init__(self, infos: dict):
        super().__init__({})
        self.infos = infos
        self.messaged: list[int] = []

    def get_node_ids(self):
        return list(self.infos)

    def _deliver(self, msg):
        self.messaged.append(msg.metadata.dst_node_id)
        info = self.infos[msg.metadata.dst_node_id]
        if isinstance(info, Exception):
            from flwr.app import Error

            reply = Message(Error(code=0, reason=str(info)), reply_to=msg)
        else:
            reply = _info_reply(msg, info)
        reply.metadata.__dict__["_src_node_id"] = msg.metadata.dst_node_id
        return reply


def test_discovery_excludes_bad_declarations_and_never_crashes(caplog):
    from fedmix_jax.flower.server_app import discover_sites

    missing = _info(**{"site-name": "m", "site-index": 3})
    del missing["num-train"]
    infos = {11: _info(**{"site-name": "good_b", "site-index": 1}),
             12: _info(**{"site-name": "huge", "site-index": 2, "num-train": 10**12}),
             13: missing,
             14: _info(**{"site-name": "text", "num-train": "many"}),
             15: _info(**{"site-name": "negative", "num-val": -1}),
             16: _info(**{"site-name": "twin", "site-index": 5}),
             17: _info(**{"site-name": "twin", "site-index": 6}),
             18: _info(**{"site-name": "other_shape", "image-shape": [32, 32, 3]}),
             19: _info(**{"site-name": "good_a", "site-index": 0}),
             20: RuntimeError("boom")}
    with caplog.at_level("WARNING", logger="fedmix_jax.flower"):
        sites, got = discover_sites(_DeclaringGrid(infos), "{}", 10, 5.0, 30.0, min_sites=1)
    assert [s.name for s in sites] == ["good_a", "good_b"]
    assert [(s.node_id, s.index, s.num_train) for s in sites] == [(19, 0, 8), (11, 1, 8)]
    assert all(isinstance(i["num-train"], int) for i in got)
    text = caplog.text
    for needle in ("node 12 excluded", "node 13 excluded", "node 14 excluded",
                   "node 15 excluded", "node 20 excluded", "'twin' declared by 2 nodes",
                   "site other_shape excluded"):
        assert needle in text, needle
    # One log line per excluded site (two for the duplicated name's pair: one line).
    assert len([r for r in caplog.records if r.levelname == "WARNING"]) == 8
    with pytest.raises(RuntimeError, match="only 2 sites declared themselves validly"):
        discover_sites(_DeclaringGrid(infos), "{}", 10, 5.0, 30.0, min_sites=3)


def test_only_the_listed_sites_take_part(caplog):
    """The coordinator lists its hospitals by node id: an extra node (registered or not) is never
    sent anything, a listed node declaring another site's name is excluded, and a bad list is
    refused before anything starts."""
    from fedmix_jax.flower.server_app import discover_sites, parse_site_list

    listed = parse_site_list("site_a=19, site_b=11 site_c=21")
    assert listed == {19: "site_a", 11: "site_b", 21: "site_c"}
    infos = {11: _info(**{"site-name": "site_b", "site-index": 1}),
             19: _info(**{"site-name": "site_a", "site-index": 0}),
             21: _info(**{"site-name": "site_a", "site-index": 2}),    # claims another's name
             30: _info(**{"site-name": "site_c", "site-index": 0})}    # not listed: an outsider
    grid = _DeclaringGrid(infos)
    with caplog.at_level("WARNING", logger="fedmix_jax.flower"):
        sites, _ = discover_sites(grid, "{}", 0, 5.0, 30.0, min_sites=1, listed=listed)
    assert [(s.name, s.node_id) for s in sites] == [("site_a", 19), ("site_b", 11)]
    assert 30 not in grid.messaged and sorted(grid.messaged) == [11, 19, 21]
    assert "node 30 is not on the coordinator's site list" in caplog.text
    assert "node 21 excluded" in caplog.text and "names it 'site_c'" in caplog.text
    # Waiting: every listed node must connect (an unlisted one does not count towards it).
    with pytest.raises(RuntimeError, match="only 1 of 2 sites joined"):
        discover_sites(_DeclaringGrid({19: infos[19], 30: infos[30]}), "{}", 0, 0.1, 30.0,
                       listed=parse_site_list("site_a=19 site_b=11"))
    for bad in ("site_a", "site_a=x", "=3", "a=1 b=1", "a=1 a=2"):
        with pytest.raises(ValueError, match="run config 'sites'"):
            parse_site_list(bad)
    assert parse_site_list("") == {}


# ------------------------------------------------------------------------------------------------
# the strategy: hostile replies among honest ones


def _strategy(n_sites=3, **kw):
    from fedmix_jax.config import HParams, RoundConfig
    from fedmix_jax.models import UNet
    from fedmix_jax.strategies import get_strategy

    pair, key = round_core.initial_server_state(UNet(width=4, num_classes=1, depth=2), 0,
                                           (16, 16, 3), RoundConfig())
    pair = jax.device_get(pair)
    sites = [Site(node_id=100 + i, index=i, name=f"s{i}", num_train=DECLARED)
             for i in range(n_sites)]
    strat = FedMixStrategy(get_strategy("fedmix"), sites, pair, key,
                           HParams.create(10.0, 3.0, 1e-3), "{}", **kw)
    return strat, pair, sites


def _round(strat, pair, sites, arrays_of, reports):
    LocalGrid({})
    msgs = list(strat.configure_train(1, array_records.pair_to_record(pair), ConfigRecord(), None))
    replies = []
    for m, site, arrays, rep in zip(msgs, sites, arrays_of, reports):
        m.metadata.__dict__["_message_id"] = f"id-{site.node_id}"
        content = RecordDict()
        rec = ArrayRecord()
        for k, v in arrays.items():
            rec[k] = Array(np.asarray(v, order="C"))
        content[LOCAL_RECORD] = rec
        content[REPORT_RECORD] = MetricRecord(_report(**rep))
        content[SITE_RECORD] = ConfigRecord({"site-name": site.name})
        reply = Message(content, reply_to=m)
        reply.metadata.__dict__["_src_node_id"] = site.node_id
        replies.append(reply)
    new, _ = strat.aggregate_train(1, replies)
    return new, strat.last_round


def _updates(pair, scales, seed=0):
    """Per site: the broadcast plus a small random update times ``scales[i]``."""
    base = {k: v.numpy() for k, v in array_records.pair_to_record(pair).items()}
    rng = np.random.default_rng(seed)
    return [{k: (v + s * 1e-3 * rng.standard_normal(v.shape)).astype(np.float32)
             for k, v in base.items()} for s in scales], base


@pytest.mark.parametrize("loss, accepted", [(1.0, True), (1e6, False), (1e13, False),
                                            (math.nan, False)])
def test_one_site_reporting_a_hostile_loss(loss, accepted, caplog):
    strat, pair, sites = _strategy()
    arrays, _ = _updates(pair, [1, 1, 1])
    reps = [dict(loss1=0.3), dict(loss1=0.4), dict(loss1=loss)]
    with caplog.at_level("WARNING", logger="fedmix_jax.flower"):
        new, out = _round(strat, pair, sites, arrays, reps)
    w = np.asarray(out.weights)
    assert out.applied and np.all(np.isfinite(w)) and math.isclose(w.sum(), 1.0, rel_tol=1e-6)
    assert out.accepted == [True, True, accepted]
    if accepted:
        # In range: by design the adaptive weight favours the highest loss (fedmix-spec.md step
        # 4); only the norm bound / a robust aggregator limit this site's influence.
        assert w[2] == w.max() and w[2] > 0.5
    else:
        assert w[2] == 0.0 and "s2" in out.rejected
        assert len([r for r in caplog.records if "s2" in r.getMessage()]) == 1
    agg = array_records.record_to_pair(new, pair)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(agg))


def test_n_beyond_the_declaration_is_refused():
    strat, pair, sites = _strategy()
    arrays, _ = _updates(pair, [1, 1, 1])
    _, out = _round(strat, pair, sites, arrays,
                    [{}, {}, dict(num_usable=10**9, loss1=1.0)])
    assert out.accepted == [True, True, False] and "declared size" in out.rejected["s2"]


def test_scaled_model_is_refused_by_the_norm_bound_only_when_it_is_on():
    for ratio, kept in ((0.0, True), (3.0, False)):
        strat, pair, sites = _strategy(max_update_norm_ratio=ratio)
        arrays, base = _updates(pair, [1, 1, 1])
        arrays[2] = {k: v * 1000 for k, v in arrays[2].items()}       # model scaled x1000
        new, out = _round(strat, pair, sites, arrays, [{}, {}, dict(loss1=1.0)])
        assert out.accepted == [True, True, kept]
        if not kept:
            assert "update norm" in out.rejected["s2"] and "median" in out.rejected["s2"]
            norms = out.update_norms
            assert norms[2] > 1e3 * max(norms[:2])
            agg = new["model1"].numpy()
            expect = out.weights[0] * arrays[0]["model1"] + out.weights[1] * arrays[1]["model1"]
            np.testing.assert_allclose(agg, expect, rtol=1e-5, atol=1e-6)
        else:
            assert out.update_norms is None


@pytest.mark.parametrize("aggregator", ["median", "trimmed_mean"])
def test_robust_aggregators_bound_a_scaled_model(aggregator):
    strat, pair, sites = _strategy(n_sites=5, aggregator=aggregator, trim_fraction=0.2)
    arrays, base = _updates(pair, [1] * 5)
    arrays[4] = {k: v * 1000 for k, v in arrays[4].items()}
    new, out = _round(strat, pair, sites, arrays, [{}] * 4 + [dict(loss1=1.0)])
    assert all(out.accepted)
    honest = np.stack([a["model1"] for a in arrays[:4]])
    agg = new["model1"].numpy()
    assert agg.dtype == np.float32
    # Every coordinate lies within the honest sites' range.
    assert np.all(agg >= honest.min(0) - 1e-6) and np.all(agg <= honest.max(0) + 1e-6)


# ------------------------------------------------------------------------------------------------
# client-level differential privacy of the aggregate


def test_privacy_accountant_against_closed_forms():
    """ε of R rounds at noise multiplier z: the exact Gaussian (ε, δ) curve solved for δ, never
    above the classical bound sqrt(2 ln(1.25/δ))/z (one round, ε < 1, Dwork & Roth Thm A.1) nor
    the RDP bound min_α R·α/(2z²) + ln(1/δ)/(α-1); growing with rounds, falling with z."""
    from fedmix_jax.flower.robust import delta_of, epsilon

    delta = 1e-5
    for z in (5.0, 20.0, 80.0):
        classic = math.sqrt(2 * math.log(1.25 / delta)) / z
        if classic < 1:
            assert epsilon(z, 1, delta) <= classic
    for z, rounds in ((0.7, 1), (1.0, 16), (3.0, 100)):
        eps = epsilon(z, rounds, delta)
        assert math.isclose(delta_of(eps, math.sqrt(rounds) / z), delta, rel_tol=1e-6)
        alphas = np.linspace(1.01, 500, 200000)
        rdp = np.min(rounds * alphas / (2 * z * z) + math.log(1 / delta) / (alphas - 1))
        assert eps <= rdp
    assert epsilon(1.0, 16, delta) > epsilon(1.0, 4, delta) > epsilon(2.0, 4, delta) > 0
    assert epsilon(1.0, 0, delta) == 0.0 and epsilon(0.0, 3, delta) == math.inf


def test_privacy_clipping_and_noise():
    from fedmix_jax.flower.robust import add_noise, clip_update

    rng = np.random.default_rng(0)
    base = {"a": rng.standard_normal(50).astype(np.float32),
            "b": rng.standard_normal(30).astype(np.float32)}
    far = {k: v + 3 * rng.standard_normal(v.shape).astype(np.float32) for k, v in base.items()}
    clipped, norm = clip_update(far, base, 1.5)
    d = np.concatenate([far[k].astype(np.float64) - base[k] for k in base])
    assert math.isclose(norm, float(np.linalg.norm(d)), rel_tol=1e-9) and norm > 1.5
    got = np.concatenate([clipped[k].astype(np.float64) - base[k] for k in base])
    assert math.isclose(float(np.linalg.norm(got)), 1.5, rel_tol=1e-5)
    np.testing.assert_allclose(got / 1.5, d / norm, atol=1e-5)       # same direction
    near = {k: v + np.float32(1e-3) for k, v in base.items()}
    kept, _ = clip_update(near, base, 1.5)
    assert all(np.array_equal(kept[k], near[k]) for k in base) and kept["a"].dtype == np.float32
    zeros = {"a": np.zeros(200000, np.float32)}
    one, two = add_noise(zeros, 0.25)["a"], add_noise(zeros, 0.25)["a"]
    assert abs(float(one.std()) - 0.25) < 0.005 and abs(float(one.mean())) < 0.005
    assert not np.array_equal(one, two) and one.dtype == np.float32   # fresh OS entropy


def test_privacy_in_the_strategy_bounds_a_scaled_model_and_adds_the_noise():
    """With privacy on, a site scaled x1000 moves the aggregate by at most C before the noise;
    the noise is there, with σ = z·2C; ε is reported; a robust aggregator is refused."""
    clip, z = 0.05, 1.0
    strat, pair, sites = _strategy(dp_clip_norm=clip, dp_noise_multiplier=z)
    arrays, base = _updates(pair, [1, 1, 1])
    arrays[2] = {k: v * 1000 for k, v in arrays[2].items()}
    new, out = _round(strat, pair, sites, arrays, [{}, {}, dict(loss1=1.0)])
    assert all(out.accepted) and out.dp_update_norms[2] > 1e3 * max(out.dp_update_norms[:2])
    assert out.dp_epsilon == pytest.approx(__import__(
        "fedmix_jax.flower.robust", fromlist=["epsilon"]).epsilon(z, 1, 1e-5))
    moved = np.concatenate([new[k].numpy().astype(np.float64) - base[k] for k in base])
    sigma = z * 2 * clip
    assert abs(float(np.std(moved)) - sigma) < 0.05 * sigma       # the update itself: <= 0.05
    # Without the noise (a second strategy, z tiny): the update is within the clip norm.
    strat2, _, _ = _strategy(dp_clip_norm=clip, dp_noise_multiplier=1e-9)
    new2, _ = _round(strat2, pair, sites, arrays, [{}, {}, dict(loss1=1.0)])
    moved2 = np.concatenate([new2[k].numpy().astype(np.float64) - base[k] for k in base])
    assert float(np.linalg.norm(moved2)) <= clip * (1 + 1e-4)
    for bad, match in ((dict(aggregator="median"), "aggregator 'weighted'"),
                       (dict(dp_noise_multiplier=0.0), "dp-noise-multiplier"),
                       (dict(dp_delta=1.0), "dp-delta")):
        with pytest.raises(ValueError, match=match):
            _strategy(dp_clip_norm=clip, **{"dp_noise_multiplier": z, **bad})


def test_robust_functions():
    x = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0], [1000.0, -1000.0]],
                 np.float32)
    np.testing.assert_array_equal(robust.coordinate_median(x), [3.0, 20.0])
    np.testing.assert_allclose(robust.trimmed_mean(x, 0.2), [3.0, 20.0])   # 2,3,4 / 10,20,30
    np.testing.assert_array_equal(robust.trimmed_mean(x[:2], 0.49), [1.5, 15.0])   # t = 0
    np.testing.assert_array_equal(robust.robust_average(x, [1, 1, 1, 0, 0], "median"),
                                  [2.0, 20.0])
    np.testing.assert_array_equal(robust.robust_average(x, [0] * 5, "median"), x[0])
    np.testing.assert_allclose(robust.update_norms(x[:2], np.zeros(2)), [math.hypot(1, 10),
                                                                         math.hypot(2, 20)])
    norms, trained = np.array([1.0, 1.2, 1000.0, 5.0]), np.array([True, True, True, False])
    # The median is over the sites that trained (1.2); one that did not is held to the bound too.
    np.testing.assert_array_equal(robust.norm_outliers(norms, trained, 3.0),
                                  [False, False, True, True])
    assert not robust.norm_outliers(norms, trained, 0.0).any()                     # off
    assert not robust.norm_outliers(np.zeros(3), np.ones(3, bool), 3.0).any()      # median 0
    assert not robust.norm_outliers(norms, np.zeros(4, bool), 3.0).any()           # no trainer
    for bad in (("mean", 0.0, 0.1), ("median", -1.0, 0.1), ("trimmed_mean", 0.0, 0.5)):
        with pytest.raises(ValueError):
            robust.check_options(*bad)


# ------------------------------------------------------------------------------------------------
# a site's data follows the run's config (issue 23, item 5)


def test_a_site_data_follows_the_coordinators_data_settings(monkeypatch):
    import json

    from fedmix_jax.flower import local_site

    node = {"data": "folders", "data-dir": "/data/a", "site-name": "a", "state-dir": "/s/x"}
    shared = {"num_rounds": 3, "data": {"name": "folders", "seed": 7, "val_fraction": 0.2,
                                        "test_fraction": 0.3, "image_size": 32,
                                        "levels": ["box"]}}
    key = local_site.data_key(node, json.dumps(shared))
    # num_rounds, the state directory and settings a folders site does not read leave it alone
    same = dict(shared, num_rounds=9, data=dict(shared["data"], levels=["pixel"]))
    assert local_site.data_key(dict(node, **{"state-dir": "/s/y"}), json.dumps(same)) == key
    for change in ({"seed": 8}, {"val_fraction": 0.1}, {"image_size": 64}):
        other = dict(shared, data=dict(shared["data"], **change))
        assert local_site.data_key(node, json.dumps(other)) != key, change
    assert local_site.data_key(dict(node, client="b"), json.dumps(shared)) != key
    # A synthetic site: its whole data group.
    syn = {"data": "synthetic", "site-index": 0}
    assert (local_site.data_key(syn, json.dumps(same))
            != local_site.data_key(syn, json.dumps(shared)))

    # The folders loader gets the coordinator's seed and fractions (they key its cache).
    seen = {}

    def fake_load(cfg, verbose=True):
        seen.update(cfg.to_dict())
        raise RuntimeError("stop here")

    import fedmix_jax.data.real as real

    monkeypatch.setattr(real, "load_federation_from_config", fake_load)
    with pytest.raises(RuntimeError, match="stop here"):
        local_site.load_site_data(node, local_site.config_from_json(json.dumps(shared)))
    assert (seen["seed"], seen["val_fraction"], seen["test_fraction"], seen["image_size"]) == (
        7, 0.2, 0.3, 32)
    assert seen["data_dir"] == "/data/a" and seen["name"] == "folders"


# ------------------------------------------------------------------------------------------------
# evaluation replies


def _eval_reply(**kw):
    m = {"round": 2, "num-val": 4, "num-test": 4}
    for split in ("val", "test"):
        m.update({f"{split}-dice": 0.5, f"{split}-iou": 0.4, f"{split}-hd95": 3.5,
                  f"{split}-dice-present": 0.6, f"{split}-false-positive-rate": 0.25})
    m.update(kw)
    LocalGrid({})
    msg = Message(RecordDict(), dst_node_id=1, message_type="evaluate")
    return Message(RecordDict({"eval": MetricRecord(m)}), reply_to=msg)


def test_evaluation_replies_are_bounded():
    from fedmix_jax.flower.validation import check_eval_reply

    ok = check_eval_reply(_eval_reply(), round_index=2, site="s")
    assert ok["val-hd95"] == 3.5 and ok["test-false-positive-rate"] == 0.25
    # Nothing to measure: HD95 / dice-present / FP rate may be NaN; Dice and IoU may not.
    nan = check_eval_reply(_eval_reply(**{"val-hd95": math.nan, "val-dice-present": math.nan,
                                          "val-false-positive-rate": math.nan}),
                           round_index=2, site="s")
    assert math.isnan(nan["val-hd95"])
    for bad in ({"val-dice": math.nan}, {"val-dice": 1.5}, {"test-iou": -0.1},
                {"val-hd95": math.inf}, {"val-hd95": 1e9}, {"val-hd95": -1.0},
                {"val-dice-present": 2.0}, {"test-false-positive-rate": -0.5},
                {"num-val": 10**12}, {"num-test": -1}, {"val-dice": [0.5]}, {"round": 3}):
        with pytest.raises(ReplyRejected):
            check_eval_reply(_eval_reply(**bad), round_index=2, site="s")
    reply = _eval_reply()
    del reply.content.metric_records["eval"]["test-hd95"]
    with pytest.raises(ReplyRejected, match="missing"):
        check_eval_reply(reply, round_index=2, site="s")
    # Per-class lists: one value per class, each NaN (class absent) or in [0, 1].
    per_class = {"val-dice-per-class": [0.5, 0.25, 1.0], "val-dice-present-per-class":
                 [0.5, math.nan, 0.75]}
    got = check_eval_reply(_eval_reply(**per_class), round_index=2, site="s", num_classes=3)
    assert got["val-dice-per-class"] == [0.5, 0.25, 1.0]
    assert "test-dice-per-class" not in got           # optional (a site of an earlier version)
    for bad in ({"val-dice-per-class": [0.5, 0.25]}, {"val-dice-per-class": [0.5, 2.0, 0.1]},
                {"val-dice-present-per-class": [0.5, -1.0, 0.1]},
                {"val-dice-per-class": [0.1] * 300}):
        with pytest.raises(ReplyRejected):
            check_eval_reply(_eval_reply(**bad), round_index=2, site="s", num_classes=3)


# ------------------------------------------------------------------------------------------------
# python -m fedmix_jax.flower.run: the run's outcome as the exit code

_FAKE_FLWR = r'''#!/usr/bin/env python3
import json, os, sys
state = os.environ["FAKE_FLWR_DIR"]
cmd = sys.argv[1]
open(os.path.join(state, "calls"), "a").write(" ".join(sys.argv[1:]) + "\n")
if cmd == "run":
    if os.environ.get("FAKE_FLWR_REFUSE"):
        print("Failed to start run", file=sys.stderr); sys.exit(1)
    print("Successfully started run 42"); print(json.dumps({"success": True, "run-id": "42"}))
elif cmd == "ls":
    seq = os.environ["FAKE_FLWR_STATES"].split(",")
    path = os.path.join(state, "n")
    n = int(open(path).read()) if os.path.exists(path) else 0
    open(path, "w").write(str(n + 1))
    s = seq[min(n, len(seq) - 1)]
    if os.environ.get("FAKE_FLWR_LOG_SECONDS") and not os.path.exists(os.path.join(state, "ended")):
        s = "running"                        # the run finishes when its log stream ends
    print(json.dumps({"success": True, "runs": [{"run-id": "42", "status": s,
                                                 "status-details": "ServerApp raised"}]}))
elif cmd == "log":
    print("log line of run", sys.argv[2], flush=True)
    import time; time.sleep(float(os.environ.get("FAKE_FLWR_LOG_SECONDS", "0")))
    open(os.path.join(state, "ended"), "w").close()
'''


@pytest.mark.parametrize("states, code, said", [
    ("pending,running,finished:completed", 0, "finished:completed"),
    ("running,finished:failed", 1, "ended finished:failed: ServerApp raised"),
    ("starting,finished:stopped", 1, "ended finished:stopped"),
    ("refuse", 2, "did not start the run")])
def test_flower_run_exits_with_the_runs_outcome(tmp_path, states, code, said):
    """``flwr run`` exits 0 even when the run fails; ``python -m fedmix_jax.flower.run`` polls
    the run's status and exits 0 only for finished:completed (a fake ``flwr`` plays Flower)."""
    import subprocess
    import sys

    fake = tmp_path / "flwr"
    fake.write_text(_FAKE_FLWR)
    fake.chmod(0o755)
    env = dict(os.environ, FAKE_FLWR_DIR=str(tmp_path), FAKE_FLWR_STATES=states)
    if states == "refuse":
        env["FAKE_FLWR_REFUSE"] = "1"
    res = subprocess.run([sys.executable, "-m", "fedmix_jax.flower.run", "app_dir", "fed",
                          "--run-config", "x=1", "--poll", "0.05", "--flwr", str(fake)],
                         capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == code, res.stderr
    assert said in res.stderr, res.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls[0] == "run app_dir fed --format json --run-config x=1"
    if code != 2:
        assert "log 42 fed --stream" in calls and any(c.startswith("ls fed --run-id 42") for c in calls)


def test_flower_run_asks_for_the_status_when_the_log_stream_ends(tmp_path):
    """Each ``flwr ls`` is a Python process of ~2 core-seconds: while the logs stream (the
    SuperLink ends the stream when the run finishes) the status is read once at the start, then
    once when the stream ends, not every ``--poll`` seconds."""
    import subprocess
    import sys

    fake = tmp_path / "flwr"
    fake.write_text(_FAKE_FLWR)
    fake.chmod(0o755)
    env = dict(os.environ, FAKE_FLWR_DIR=str(tmp_path), FAKE_FLWR_LOG_SECONDS="2",
               FAKE_FLWR_STATES="finished:completed")
    res = subprocess.run([sys.executable, "-m", "fedmix_jax.flower.run", "app_dir", "fed",
                          "--poll", "0.05", "--flwr", str(fake)],
                         capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert sum(c.startswith("ls ") for c in calls) == 2, calls
