"""Multi-seed experiments: aggregation, ensembles, summary.json, interrupted runs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.sparse as sp
from conftest import tiny_ratings

from glocalk.data.matrix import RatingMatrix
from glocalk.presets import split_config
from glocalk.protocol import aggregate, ensemble_metrics, run_experiment
from glocalk.store import load_dir
from glocalk.train import Trainer

TINY = {"n_hid": 8, "epoch_p": 2, "epoch_f": 3, "iter_p": 2, "iter_f": 2}


def tiny_data(seed: int = 0) -> RatingMatrix:
    return tiny_ratings(seed=seed)


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
    summary = run_experiment(data, TINY, [1, 2], out, val_frac=0.1, ensemble=True, command=["test"])
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


def _selected_test_predictions(data, out, seed):
    """Recompute one seed's val-selected test predictions from its saved training state."""
    tensors, meta = load_dir(out / f"seed-{seed}" / "state" / "last")
    model_config, train_config = split_config({**TINY, "seed": seed})
    trainer = Trainer(data.with_validation(0.1, seed=seed), model_config, train_config)
    trainer.model.load_state_dict({k[len("selected."):]: v for k, v in tensors.items() if k.startswith("selected.")})
    return trainer.predictions(2)["test"]


def test_ensemble_is_the_mean_of_the_selected_models(experiment):
    data, out, summary = experiment
    ens = summary["ensemble"]
    assert ens["n_models"] == 2 and ens["selection"] == "val_selected"
    preds = [_selected_test_predictions(data, out, s) for s in (1, 2)]
    test = data.test.tocoo()
    mean = np.clip((preds[0] + preds[1]) / 2, 1, 5)
    assert ens["rmse"] == pytest.approx(np.sqrt(np.mean((mean - test.data) ** 2)), rel=1e-6)
    # The growth curve: one member is that seed's own val-selected model.
    assert ens["rmse_by_members"][0] == pytest.approx(summary["runs"][0]["val_selected"]["rmse"], rel=1e-6)
    assert ens["rmse_by_members"][-1] == ens["rmse"]


def test_interrupted_multi_seed_run_keeps_finished_seeds(tmp_path):
    class Stop(Exception):
        pass

    def stop_in_seed_2(seed, rec):
        if seed == 2:
            raise Stop

    with pytest.raises(Stop):
        run_experiment(tiny_data(), TINY, [1, 2], tmp_path, on_epoch=stop_in_seed_2, command=["test"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["complete"] is False and [r["seed"] for r in summary["runs"]] == [1]
    assert "val_selected" not in summary["runs"][0] or summary["runs"][0]["val_selected"] is None


def test_device_description_names_the_threads_a_run_was_given():
    from glocalk.store import device_description

    assert device_description("cpu", 1).endswith(", 1 torch threads)")
    assert device_description("cpu", 3).endswith(", 3 torch threads)")
