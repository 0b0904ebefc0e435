"""The runner (glocalk.protocol): one run with resume state and epoch log, and multi-seed experiments
(aggregation, ensembles, summary.json, interrupted runs)."""

from __future__ import annotations

import json
import math
import shutil
import sys
from dataclasses import replace

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from conftest import tiny_ratings

from glocalk.data.matrix import RatingMatrix
from glocalk.errors import CheckpointError, TrainingError
from glocalk.presets import split_config
from glocalk.protocol import (
    ExperimentOptions,
    RunOptions,
    aggregate,
    ensemble_metrics,
    run_experiment,
    saved_state,
    train_run,
)
from glocalk.store import load_dir, save_dir
from glocalk.train import Trainer

pytestmark = [pytest.mark.filterwarnings("ignore:Sparse"), pytest.mark.usefixtures("one_torch_thread")]
TINY = {"n_hid": 8, "epoch_p": 2, "epoch_f": 3, "iter_p": 2, "iter_f": 2}


def tiny_data(seed: int = 0) -> RatingMatrix:
    return tiny_ratings(seed=seed)


# --------------------------------------------------------------------------- one run: resume state, log


RUN = {**TINY, "epoch_p": 3, "epoch_f": 3, "iter_p": 3, "iter_f": 3, "seed": 4, "path": "sparse"}


def run_setup(**changes):
    model_config, train_config = split_config({**RUN, **changes})
    return tiny_data().with_validation(0.15, seed=1), model_config, train_config


def strip_times(history):
    return [{k: v for k, v in r.items() if k not in ("seconds", "eval_seconds")} for r in history]


def interrupt_at(epoch):
    def on_epoch(rec):
        if rec["epoch"] == epoch:
            raise KeyboardInterrupt
    return on_epoch


def no_training(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("an epoch was trained")

    monkeypatch.setattr(sys.modules["glocalk.train"], "lbfgs_epoch", fail)


@pytest.mark.parametrize("stop_after", [2, 3, 5])
def test_resume_after_an_interrupt_equals_the_uninterrupted_run(tmp_path, stop_after):
    data, mc, tc = run_setup()
    full = train_run(data, mc, tc, RunOptions(predict_test=True))
    opts = RunOptions(state_dir=tmp_path / "state", log_path=tmp_path / "epochs.jsonl", predict_test=True)
    with pytest.raises(KeyboardInterrupt):
        train_run(data, mc, tc, replace(opts, on_epoch=interrupt_at(stop_after)))
    logged = [json.loads(line)["epoch"] for line in (tmp_path / "epochs.jsonl").read_text().splitlines()]
    assert logged == list(range(1, stop_after + 1))
    trained = []
    res = train_run(data, mc, tc, replace(opts, resume=True, on_epoch=lambda r: trained.append(r["epoch"])))
    assert trained == list(range(stop_after + 1, 7)), "resume continues after the last saved epoch"
    assert [json.loads(line)["epoch"] for line in (tmp_path / "epochs.jsonl").read_text().splitlines()] == [
        1, 2, 3, 4, 5, 6]
    for a, b in zip(strip_times(full.history), strip_times(res.history), strict=True):
        for k in a:
            assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-7), f"epoch {a['epoch']} {k}: {b[k]} vs {a[k]}"
    assert (res.model.stage, res.model.epoch) == (full.model.stage, full.model.epoch) == (
        2, full.val_selected["epoch"])
    for k, v in full.model.state.items():
        torch.testing.assert_close(res.model.state[k], v, rtol=1e-4, atol=1e-6, msg=f"handed-over weight {k}")
    np.testing.assert_allclose(res.model.test_predictions, full.model.test_predictions, rtol=1e-4)
    assert res.best == pytest.approx(full.best) and res.final == pytest.approx(full.final)
    assert load_dir(saved_state(tmp_path / "state"))[1]["finished"] is True


def test_a_finished_run_is_not_retrained(tmp_path, monkeypatch):
    data, mc, tc = run_setup()
    opts = RunOptions(state_dir=tmp_path / "state", log_path=tmp_path / "epochs.jsonl", predict_test=True)
    first = train_run(data, mc, tc, opts)
    (tmp_path / "epochs.jsonl").unlink()
    no_training(monkeypatch)
    again = train_run(data, mc, tc, replace(opts, resume=True))
    assert again.finished_before and again.history == first.history
    assert (again.best, again.final, again.val_selected) == (first.best, first.final, first.val_selected)
    assert (again.model.stage, again.model.epoch) == (first.model.stage, first.model.epoch)
    for k, v in first.model.state.items():
        assert torch.equal(again.model.state[k], v), k
    np.testing.assert_allclose(again.model.test_predictions, first.model.test_predictions, rtol=1e-6)
    logged = [json.loads(line) for line in (tmp_path / "epochs.jsonl").read_text().splitlines()]
    assert logged == first.history, "the log is rewritten from the finished state"


def test_a_mismatched_configuration_refuses_to_resume(tmp_path):
    data, mc, tc = run_setup()
    state = tmp_path / "state"
    with pytest.raises(KeyboardInterrupt):
        train_run(data, mc, tc, RunOptions(state_dir=state, on_epoch=interrupt_at(2)))
    before = (saved_state(state) / "weights.safetensors").read_bytes()
    other_data, other_mc, other_tc = run_setup(lambda_2=3.0)
    with pytest.raises(CheckpointError, match="cannot resume from .*model_config"):
        train_run(other_data, other_mc, other_tc, RunOptions(state_dir=state, resume=True))
    with pytest.raises(CheckpointError, match="cannot resume from .*val_fingerprint"):
        _other_val_split(state, mc, tc)
    assert (saved_state(state) / "weights.safetensors").read_bytes() == before, "the state is left untouched"


def _other_val_split(state, mc, tc):
    """Same training ratings, another validation split: only the validation fingerprint differs."""
    data = tiny_data().with_validation(0.15, seed=1)
    moved = RatingMatrix(data.train, data.test, val=data.val[::-1], rating_scale=data.rating_scale, name=data.name)
    train_run(moved, mc, tc, RunOptions(state_dir=state, resume=True))


def test_a_fresh_run_discards_an_old_state(tmp_path):
    data, mc, tc = run_setup()
    with pytest.raises(KeyboardInterrupt):
        train_run(data, mc, tc, RunOptions(state_dir=tmp_path, on_epoch=interrupt_at(2)))
    trained = []
    train_run(data, mc, tc, RunOptions(state_dir=tmp_path, on_epoch=lambda r: trained.append(r["epoch"])))
    assert trained == [1, 2, 3, 4, 5, 6]


def test_states_of_earlier_versions_and_interrupted_saves_resume(tmp_path, monkeypatch):
    """A state without ``finished``/``val_fingerprint`` (glocalk train before the runner), left as
    ``.last.old`` by a kill between save_dir's two renames, resumes from its epoch."""
    data, mc, tc = run_setup()
    state = tmp_path / "state"
    with pytest.raises(KeyboardInterrupt):
        train_run(data, mc, tc, RunOptions(state_dir=state, on_epoch=interrupt_at(4)))
    tensors, meta = load_dir(state / "last")
    save_dir(state / ".last.old", tensors, {k: v for k, v in meta.items() if k not in ("finished", "val_fingerprint")})
    shutil.rmtree(state / "last")
    trained = []
    res = train_run(data, mc, tc, RunOptions(state_dir=state, resume=True, on_epoch=lambda r: trained.append(
        r["epoch"])))
    assert trained == [5, 6] and len(res.history) == 6


class Scripted:
    """A validation curve fed to Trainer.evaluate, continuing across a resume."""

    def __init__(self, curve):
        self.curve = list(curve)

    def __call__(self, trainer, stage):
        v = self.curve.pop(0)
        return {"val_rmse": v, "test_rmse": v + 0.1, "test_mae": v, "test_ndcg": 0.9}


@pytest.mark.parametrize("how", ["completed", "interrupted-at-stop-epoch"])
def test_resume_of_an_early_stopped_run_trains_no_further(tmp_path, monkeypatch, how):
    data, mc, tc = run_setup(epoch_p=2, epoch_f=8, iter_p=1, iter_f=1, patience=2)
    curve = [1.0, 1.0] + [1.0, 0.9, 0.95, 0.96, 0.97, 0.98, 0.99, 1.0]  # best at epoch 4; stop at 6
    first_script = Scripted(curve)
    monkeypatch.setattr(Trainer, "evaluate", lambda self, stage: first_script(self, stage))
    full = train_run(data, mc, tc)
    assert [r["epoch"] for r in full.history] == [1, 2, 3, 4, 5, 6], "test setup: patience stops at epoch 6"
    script = Scripted(curve)
    monkeypatch.setattr(Trainer, "evaluate", lambda self, stage: script(self, stage))
    opts = RunOptions(state_dir=tmp_path, on_epoch=interrupt_at(6) if how != "completed" else None)
    if how == "completed":
        train_run(data, mc, tc, opts)
    else:
        with pytest.raises(KeyboardInterrupt):
            train_run(data, mc, tc, opts)
    resumed = train_run(data, mc, tc, RunOptions(state_dir=tmp_path, resume=True))  # the rest of the same curve
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4, 5, 6]
    assert resumed.val_selected["epoch"] == 4 and resumed.model.epoch == 4


def test_a_non_finite_loss_keeps_the_log_and_points_at_it(tmp_path, monkeypatch):
    data, mc, tc = run_setup()
    real = sys.modules["glocalk.train"].lbfgs_epoch
    calls = []

    def diverging(*args, **kwargs):
        calls.append(1)
        out = real(*args, **kwargs)
        return {**out, "loss": float("nan")} if len(calls) == 4 else out

    monkeypatch.setattr(sys.modules["glocalk.train"], "lbfgs_epoch", diverging)
    log = tmp_path / "epochs.jsonl"
    with pytest.raises(TrainingError) as info:
        train_run(data, mc, tc, RunOptions(state_dir=tmp_path / "state", log_path=log))
    msg = str(info.value)
    assert "non-finite loss" in msg and "stage 2 epoch 1" in msg and str(log) in msg, msg
    assert [json.loads(line)["epoch"] for line in log.read_text().splitlines()] == [1, 2, 3]
    assert load_dir(saved_state(tmp_path / "state"))[1]["epoch"] == 3


# --------------------------------------------------------------------------- several seeds


def test_aggregate_by_hand():
    runs = [{"best": {"rmse": 1.0, "epoch": 3}, "final": {"rmse": 2.0}},
            {"best": {"rmse": 2.0, "epoch": 5}, "final": {"rmse": 2.0}},
            {"best": {"rmse": 4.0, "epoch": 7}, "final": None}]
    out = aggregate(runs)
    assert out["best"]["rmse"] == pytest.approx(7 / 3)
    # sample std (ddof 1): sqrt(((1-7/3)^2 + (2-7/3)^2 + (4-7/3)^2) / 2) = sqrt(7/3)
    assert out["std"]["best"]["rmse"] == pytest.approx(math.sqrt(7 / 3))
    assert out["best"]["epoch"] == pytest.approx(5.0) and out["std"]["best"]["epoch"] == pytest.approx(2.0)
    assert "final" not in out  # one run has no final entry: no mean over a subset
    assert aggregate(runs[:1])["std"]["best"]["rmse"] == 0.0


def test_ensemble_metrics_by_hand():
    # Two items x two users; test ratings 4 at (item 0, user 1) and 2 at (item 1, user 0).
    test = sp.csr_matrix(np.array([[0.0, 4.0], [2.0, 0.0]]))
    data = RatingMatrix(sp.csr_matrix(np.array([[3.0, 0.0], [0.0, 5.0]])), test, rating_scale=(1.0, 5.0))
    # CSR order: (0, 1) then (1, 0). Means: 4.5 and 2.0 -> errors 0.5 and 0.
    out = ensemble_metrics(data, [np.array([5.0, 1.0]), np.array([4.0, 3.0])], "final")
    assert out["rmse"] == pytest.approx(math.sqrt(0.25 / 2))
    assert out["mae"] == pytest.approx(0.25)
    assert out["n_models"] == 2 and out["selection"] == "final"
    # A mean outside the scale is clipped before scoring: (6 + 6) / 2 -> 5, error 1.
    assert ensemble_metrics(data, [np.array([6.0, 2.0])])["mae"] == pytest.approx(1.0 / 2)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    out = tmp_path_factory.mktemp("exp")
    data = tiny_data()
    summary = run_experiment(data, TINY, [1, 2], out, ExperimentOptions(val_frac=0.1, ensemble=True, command=["test"]))
    return data, out, summary


def test_summary_holds_every_seed_and_their_means(experiment):
    data, out, summary = experiment
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == summary
    assert summary["complete"] and summary["seeds"] == [1, 2] and summary["val_frac"] == 0.1
    assert summary["data"]["fingerprint"] == data.fingerprint() and summary["command"] == ["test"]
    assert len(summary["runs"]) == 2
    for protocol in ("best", "final", "val_selected"):
        values = [r[protocol]["rmse"] for r in summary["runs"]]
        assert summary[protocol]["rmse"] == pytest.approx(np.mean(values))
        assert summary["std"][protocol]["rmse"] == pytest.approx(np.std(values, ddof=1))
    for seed, run in zip([1, 2], summary["runs"], strict=True):
        log = [json.loads(line) for line in (out / run["epoch_log"]).read_text().splitlines()]
        assert [r["epoch"] for r in log] == list(range(1, 6))
        # The val-selected entry is the fine-tuning epoch with the lowest validation RMSE.
        chosen = min((r for r in log if r["stage"] == 2), key=lambda r: r["val_rmse"])
        assert run["val_selected"]["epoch"] == chosen["epoch"]
        assert run["val_selected"]["rmse"] == pytest.approx(chosen["test_rmse"])
        assert run["seed"] == seed


def test_ensemble_is_the_mean_of_the_selected_models(experiment, tmp_path):
    data, out, summary = experiment
    ens = summary["ensemble"]
    assert ens["n_models"] == 2 and ens["selection"] == "val_selected"
    preds = []
    for run in summary["runs"]:
        seed = run["seed"]
        model_config, train_config = split_config({**TINY, "seed": seed})
        # The finished state is read back, not retrained: its handed-over model's test predictions.
        record = train_run(data.with_validation(0.1, seed=seed), model_config, train_config,
                           RunOptions(state_dir=out / f"seed-{seed}" / "state", resume=True, predict_test=True))
        assert record.finished_before and record.model.epoch == run["val_selected"]["epoch"]
        preds.append(record.model.test_predictions)
        # Those predictions are the selected epoch's model: their RMSE is the one logged for that epoch.
        assert rmse(np.clip(preds[-1], 1, 5), data) == pytest.approx(run["val_selected"]["rmse"], rel=1e-6)
    assert ens["rmse"] == pytest.approx(rmse(np.clip((preds[0] + preds[1]) / 2, 1, 5), data), rel=1e-6)
    # The growth curve: one member is that seed's own val-selected model.
    assert ens["rmse_by_members"][0] == pytest.approx(summary["runs"][0]["val_selected"]["rmse"], rel=1e-6)
    assert ens["rmse_by_members"][-1] == ens["rmse"]


def rmse(pred: np.ndarray, data: RatingMatrix) -> float:
    return float(np.sqrt(np.mean((pred - data.test.tocoo().data) ** 2)))


def test_interrupted_multi_seed_run_keeps_finished_seeds_and_resumes_the_rest(tmp_path):
    class Stop(Exception):
        pass

    def stop_in_seed_2(seed, rec):
        if seed == 2 and rec["epoch"] == 2:
            raise Stop

    with pytest.raises(Stop):
        run_experiment(tiny_data(), TINY, [1, 2], tmp_path, on_epoch=stop_in_seed_2, command=["test"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["complete"] is False and [r["seed"] for r in summary["runs"]] == [1]
    assert summary["runs"][0]["epochs_run"] == 5
    assert summary["final"]["rmse"] == summary["runs"][0]["final"]["rmse"]  # the mean of the one finished seed
    trained = []
    resumed = run_experiment(tiny_data(), TINY, [1, 2], tmp_path, resume=True, command=["test"],
                             on_epoch=lambda seed, rec: trained.append((seed, rec["epoch"])))
    assert trained == [(2, 3), (2, 4), (2, 5)], "seed 1 is finished; seed 2 continues after its epoch 2"
    assert resumed["complete"] and resumed["runs"][0]["final"] == summary["runs"][0]["final"]
    fresh = run_experiment(tiny_data(), TINY, [2], tmp_path / "fresh", command=["test"])
    assert resumed["runs"][1]["final"]["rmse"] == pytest.approx(fresh["runs"][0]["final"]["rmse"], rel=1e-5)


def test_device_description_names_the_threads_a_run_was_given():
    from glocalk.store import device_description

    assert device_description("cpu", 1).endswith(", 1 torch threads)")
    assert device_description("cpu", 3).endswith(", 3 torch threads)")
