"""``config.eval_local_models``: each client's local model evaluated beside the global one."""

import jax
import numpy as np
import pytest

from fedmix_jax.records import read_metrics
from fedmix_jax.rundir import METRICS_FILE
from fedmix_jax.summary import format_summary


def test_local_models_are_evaluated_beside_the_global_one(tmp_path, monkeypatch):
    """``eval_local_models``: each client's local (pre-aggregation) model 1 on its own test split,
    ``local_test_*`` keys beside the global model's ``test_*``."""
    from fedmix_jax import train
    from fedmix_jax.evaluation import evaluate
    from test_main import tiny_config

    from fedmix_jax.consensus import ConsensusModel
    from fedmix_jax.round import broadcast

    oracle, consensus = {}, {}
    finish = train._Run.finish

    def capture(self, state, *args, **kwargs):
        local = jax.device_get(state.client_params[0])
        oracle.update(evaluate(self.model, local, self.test, per_client_params=True))
        pair = (broadcast(jax.device_get(state.global_params[0]), 4), local)
        consensus.update(evaluate(ConsensusModel(self.model), pair, self.test,
                                  per_client_params=True))
        return finish(self, state, *args, **kwargs)

    monkeypatch.setattr(train._Run, "finish", capture)
    cfg = tiny_config(strategy="fedavg_pixel", eval_local_models=True)
    summary = train.train_and_evaluate(cfg, str(tmp_path / "run"), quiet=True, write_plots=False)
    last = read_metrics(str(tmp_path / "run" / METRICS_FILE))[-1]
    np.testing.assert_allclose(last["local_test_dice"], oracle["dice"], rtol=1e-6)
    assert last["local_test_mean_dice"] == pytest.approx(float(oracle["mean_dice"]), rel=1e-6)
    assert len(last["local_test_dice"]) == len(last["test_dice"]) == 4
    # the clients without pixel masks did not train: their local model is the broadcast one,
    # the global model differs from it after aggregation
    assert last["local_test_dice"] != last["test_dice"]
    assert summary["final"]["local_test"]["mean_dice"] == last["local_test_mean_dice"]
    # each client's consensus model of the global and its local model
    np.testing.assert_allclose(last["consensus_test_dice"], consensus["dice"], rtol=1e-6)
    np.testing.assert_allclose(last["consensus_test_false_positive_rate"],
                               consensus["false_positive_rate"], rtol=1e-6)
    assert summary["final"]["consensus_test"]["mean_dice"] == last["consensus_test_mean_dice"]
    assert "consensus model" in format_summary(summary)
    assert "local_test" in summary["best"] and "test Dice of each client's local" in \
        format_summary(summary)
    off = train.train_and_evaluate(tiny_config(strategy="fedavg_pixel"), str(tmp_path / "off"),
                                   quiet=True, write_plots=False)
    assert "local_test" not in off["final"] and "local_test" not in off["best"]
    assert "consensus_test" not in off["best"]
    assert not any(k.startswith(("local_test", "consensus_test")) for k in
                   read_metrics(str(tmp_path / "off" / METRICS_FILE))[-1])


def test_fine_tuned_consensus_after_the_last_round_and_on_an_existing_run(tmp_path, monkeypatch):
    """``fine_tune_epochs``: rerunning a finished run's command with it set trains no round (the
    field may change on resume) and writes ``fine_tuned_consensus`` into summary.json: the
    sites' choices and test figures of :func:`fine_tuned_consensus` from the last round's state
    (recomputed here from the state the job holds)."""
    from fedmix_jax import train
    from fedmix_jax.consensus import ConsensusModel
    from fedmix_jax.errors import ConfigError
    from fedmix_jax.evaluation import evaluate
    from fedmix_jax.fine_tuning import fine_tuned_consensus
    from fedmix_jax.round import broadcast
    from test_main import tiny_config

    work = str(tmp_path / "run")
    first = train.train_and_evaluate(tiny_config(strategy="fedmix_plus"), work, quiet=True,
                                     write_plots=False)
    assert "fine_tuned_consensus" not in first
    oracle = {}
    finish = train._Run.finish

    def capture(self, state, *args, **kwargs):
        g = jax.device_get(state.global_params[0])
        tuned = fine_tuned_consensus(self.model, self.round_config, g,
                                     jax.device_get(state.client_params),
                                     jax.device_get(state.opt_state), self.train_data, self.val,
                                     jax.random.fold_in(jax.random.PRNGKey(0), 2),
                                     self.round_config.hparams(), 2, max_epochs=2)
        params = (broadcast(g, 4), jax.device_get(state.client_params[0]), tuned.thresholds,
                  tuned.mask_params)
        oracle.update(tuned=tuned, test=evaluate(ConsensusModel(self.model), params, self.test,
                                                 per_client_params=True))
        return finish(self, state, *args, **kwargs)

    monkeypatch.setattr(train._Run, "finish", capture)
    again = train.train_and_evaluate(tiny_config(strategy="fedmix_plus", fine_tune_epochs=2),
                                     work, quiet=True, write_plots=False)
    assert again["rounds_completed"] == 2 and again["timing"]["rounds_this_process"] == 0
    ft = again["fine_tuned_consensus"]
    assert ft["round"] == 2 and ft["epochs"] == [int(e) for e in oracle["tuned"].epochs]
    assert all(0 <= e <= 2 for e in ft["epochs"])
    np.testing.assert_allclose(ft["thresholds"], oracle["tuned"].thresholds, atol=1e-3)
    np.testing.assert_allclose(ft["test"]["dice"], oracle["test"]["dice"], rtol=1e-5)
    np.testing.assert_allclose(ft["test"]["false_positive_rate"],
                               oracle["test"]["false_positive_rate"], rtol=1e-5)
    assert ft["test"]["mean_dice"] == pytest.approx(float(oracle["test"]["mean_dice"]), rel=1e-5)
    assert "fine-tuned after round 2" in format_summary(again)
    for bad, match in (("local", "aggregates"), (-1, "fine_tune_epochs must be")):
        cfg = (tiny_config(strategy=bad, fine_tune_epochs=1) if isinstance(bad, str)
               else tiny_config(fine_tune_epochs=bad))
        with pytest.raises(ConfigError, match=match):
            train.train_and_evaluate(cfg, str(tmp_path / f"bad{bad}"), quiet=True,
                                     write_plots=False)
