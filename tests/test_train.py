"""The training engine: optimiser, end-to-end learning, summaries, early stopping, validation,
option validation, failure on non-finite losses, and its resumable state as plain data.

- ``lbfgs_epoch`` reaches the closed-form minimum of a convex quadratic (both optimisers);
- a Trainer run on a synthetic low-rank matrix beats the global-mean predictor on held-out ratings;
- ``summarise`` on a hand-made history (paper protocol = per-metric best over fine-tuning epochs);
- ``patience`` stops fine-tuning early (scripted validation curve), and the val-selected weights are
  the weights of that epoch;
- ``RatingMatrix.with_validation`` only splits the training ratings; the model never sees them;
- a NaN loss raises TrainingError with a clear message;
- ``Trainer.restore`` refuses a state of another configuration or kind (resuming through files, and
  resume = uninterrupted run, are tested on the runner in test_protocol.py).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from glocalk.data.matrix import RatingMatrix
from glocalk.epoch import any_nonfinite, host_assign, host_flat
from glocalk.errors import CheckpointError, ConfigError, DataError, TrainingError
from glocalk.inputs import choose_execution
from glocalk.model import GLocalKConfig
from glocalk.train import TrainConfig, Trainer, lbfgs_epoch, summarise

pytestmark = [pytest.mark.filterwarnings("ignore:Sparse"), pytest.mark.usefixtures("one_torch_thread")]


def synthetic(seed=0, n_items=60, n_users=50, rank=3, observed=0.4, test_frac=0.2):
    """Low-rank ratings 1..5 with item and user offsets; ~40% observed, a random 20% of them held out."""
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal((n_items, rank)), rng.standard_normal((n_users, rank))
    score = a @ b.T / np.sqrt(rank) + 0.5 * rng.standard_normal((n_items, 1)) + 0.5 * rng.standard_normal(n_users)
    ratings = np.clip(np.round(3 + 1.2 * score), 1, 5)
    items, users = np.nonzero(rng.random(ratings.shape) < observed)
    is_test = rng.random(items.size) < test_frac

    def pick(sel):
        return sp.csr_matrix((ratings[items[sel], users[sel]], (items[sel], users[sel])), shape=ratings.shape)

    return RatingMatrix(pick(~is_test), test=pick(is_test), name="synthetic")


SMALL_MODEL = dict(n_hid=16, n_dim=3, lambda_2=1.0, lambda_s=0.006)


def strip_times(history):
    return [{k: v for k, v in r.items() if k not in ("seconds", "eval_seconds")} for r in history]


# --------------------------------------------------------------------------- lbfgs_epoch


@pytest.mark.parametrize("optimizer", ["scipy", "torch", "lbfgsb"])
def test_lbfgs_epoch_minimises_convex_quadratic(optimizer):
    rng = np.random.default_rng(0)
    m = rng.standard_normal((6, 6))
    a = m @ m.T + np.eye(6)
    b = rng.standard_normal(6)
    x_star = np.linalg.solve(a, b)
    f_star = -0.5 * b @ x_star
    p1 = torch.nn.Parameter(torch.zeros(2, 2))  # two parameters of different shapes share one flat vector
    p2 = torch.nn.Parameter(torch.zeros(2))
    unused = torch.nn.Parameter(torch.full((3,), 7.0))  # no gradient: must stay put
    at, bt = torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)

    def loss_fn():
        x = torch.cat([p1.reshape(-1), p2])
        return 0.5 * x @ at @ x - bt @ x

    out = lbfgs_epoch([p1, p2, unused], loss_fn, max_iter=100, optimizer=optimizer)
    x = torch.cat([p1.detach().reshape(-1), p2.detach()]).double().numpy()
    np.testing.assert_allclose(x, x_star, rtol=1e-3, atol=1e-3, err_msg=f"{optimizer}: not at the minimum")
    assert out["loss"] == pytest.approx(f_star, rel=1e-4, abs=1e-5), f"{optimizer}: {out['loss']} vs {f_star}"
    assert out["nfev"] >= 1 and 1 <= out["nit"] <= 100
    assert torch.equal(unused.detach(), torch.full((3,), 7.0))


def test_lbfgs_epoch_respects_max_iter_and_restarts_from_current_values():
    a = torch.diag(torch.tensor([1.0, 10.0, 100.0]))
    p = torch.nn.Parameter(torch.tensor([1.0, 1.0, 1.0]))

    def loss_fn():
        return 0.5 * p @ a @ p

    losses = []
    for _ in range(3):
        out = lbfgs_epoch([p], loss_fn, max_iter=1)
        assert out["nit"] <= 1, f"max_iter=1 ran {out['nit']} iterations"
        assert out["loss"] == pytest.approx(loss_fn().item(), rel=1e-6), "reported loss is the loss at the result"
        losses.append(out["loss"])
    assert losses[0] > losses[1] > losses[2], f"each epoch must continue from the current parameters: {losses}"


def test_device_lbfgsb_follows_scipy_on_a_small_run_and_leaves_parameters_their_own_storage():
    """--optimizer lbfgsb is SciPy's L-BFGS-B with float32 state: on a short, well-conditioned run the epochs
    take the same iterations and evaluations as --optimizer scipy and end at the same RMSEs (to 1e-3, the
    float32 rounding that fine-tuning amplifies, as between the dense and sparse paths)."""
    data = synthetic(seed=0)
    runs = {}
    for optimizer in ("scipy", "lbfgsb"):
        tc = TrainConfig(epoch_p=4, epoch_f=2, iter_p=5, iter_f=5, seed=2, optimizer=optimizer)
        runs[optimizer] = Trainer(data, GLocalKConfig(n_hid=24, n_dim=3, lambda_2=5.0, lambda_s=0.006), tc).run()
    for rs, rl in zip(runs["scipy"].history, runs["lbfgsb"].history, strict=True):
        assert (rs["nit"], rs["nfev"]) == (rl["nit"], rl["nfev"]), f"epoch {rs['epoch']}: {rs} vs {rl}"
        assert rl["test_rmse"] == pytest.approx(rs["test_rmse"], abs=1e-3), f"epoch {rs['epoch']}"
        assert rl["loss"] == pytest.approx(rs["loss"], rel=1e-3)
    params = list(runs["lbfgsb"].model.parameters())
    assert len({p.untyped_storage().data_ptr() for p in params}) == len(params), "parameters share storage"


def test_at_last_pass_says_whether_the_result_is_the_point_evaluated_last():
    """lbfgsb's "at_last_pass" is true exactly when the parameters it ends with are those of loss_fn's last
    call: checked against the values loss_fn saw, on a run that ends after a line search (true) and on one
    whose last line search fails and is undone (false: SciPy's ABNORMAL end goes back to the start)."""
    a = torch.diag(torch.tensor([1.0, 10.0, 100.0]))
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    seen = []

    def loss_fn():
        seen.append(p.detach().clone())
        return 0.5 * p @ a @ p

    out = lbfgs_epoch([p], loss_fn, max_iter=3, optimizer="lbfgsb")
    assert out["at_last_pass"] is True and torch.equal(seen[-1], p.detach())

    q = torch.nn.Parameter(torch.tensor([1.0, 1.0]))

    def nowhere_better():  # a gradient that points uphill: every step is worse, the line search fails
        seen.append(q.detach().clone())
        return _uphill(q)

    seen.clear()
    start = q.detach().clone()
    out = lbfgs_epoch([q], nowhere_better, max_iter=5, optimizer="lbfgsb")
    assert torch.equal(q.detach(), start), "the failed search must go back to the start"
    assert len(seen) > 2 and not torch.equal(seen[1], start), "the search must have evaluated elsewhere"
    assert out["at_last_pass"] is False


def _uphill(q):
    """f = |q|^2 with a reported gradient of the wrong sign (custom backward): no step decreases f."""

    class Wrong(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return (x * x).sum()

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return -2 * x * g

    return Wrong.apply(q)


@pytest.mark.parametrize("optimizer", ["lbfgsb", "torch", "scipy"])
@pytest.mark.parametrize("path", ["dense", "sparse"])
def test_epoch_metrics_equal_a_fresh_evaluation_at_the_final_weights(optimizer, path):
    """The evaluation after an epoch may reuse the last training pass's hidden layer; its metrics must be those
    of encoding the input anew at the epoch's final weights (the reference: ``evaluate`` outside an epoch)."""
    data = synthetic(seed=1)
    tc = TrainConfig(epoch_p=2, epoch_f=2, iter_p=4, iter_f=3, path=path, seed=3, optimizer=optimizer)
    trainer = Trainer(data, GLocalKConfig(n_hid=12, n_dim=3, lambda_2=5.0, lambda_s=0.006), tc)
    for epoch in range(1, 5):
        rec = trainer._epoch(epoch)
        trainer.history.append(rec)
        fresh = trainer.evaluate(trainer.stage_of(epoch)[0])
        for key in ("train_rmse", "test_rmse", "test_mae", "test_ndcg"):
            assert rec[key] == pytest.approx(fresh[key], rel=1e-6, abs=1e-9), f"epoch {epoch} {key}"
    assert "at_last_pass" not in rec, "the flag is internal, not an epochs.jsonl key"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_any_nonfinite_finds_one_bad_entry_anywhere_and_never_flags_finite_extremes(bad):
    """The optimiser's overflow check: one NaN or infinity in any tensor is found; huge but finite float32
    values (whose float32 sum would overflow) are not flagged, nor are +inf and -inf cancelling unnoticed."""
    huge = torch.full((1000,), 3.0e38)
    finite = [torch.tensor(1.5), torch.randn(7, 5), huge, -huge[:10]]
    assert not bool(any_nonfinite(finite))
    for which in range(len(finite)):
        tensors = [t.clone() for t in finite]
        tensors[which].view(-1)[-1] = bad
        assert bool(any_nonfinite(tensors)), f"{bad} in tensor {which} not found"
    both = torch.tensor([float("inf"), -float("inf"), 1.0])
    assert bool(any_nonfinite([both]))


def test_lbfgs_epoch_rejects_unknown_optimizer():
    p = torch.nn.Parameter(torch.zeros(1))
    with pytest.raises(ConfigError, match="optimizer"):
        lbfgs_epoch([p], lambda: (p * p).sum(), 1, optimizer="adam")


# --------------------------------------------------------------------------- end to end


def test_trainer_learns_low_rank_matrix():
    data = synthetic(seed=0)
    test = data.test.tocoo()
    global_mean = float(data.train.data.mean())
    baseline = math.sqrt(np.mean((test.data - global_mean) ** 2))
    results = {}
    for path in ("dense", "sparse"):
        tc = TrainConfig(epoch_p=6, epoch_f=4, iter_p=10, iter_f=10, path=path, seed=2)
        res = Trainer(data, GLocalKConfig(n_hid=24, **{k: v for k, v in SMALL_MODEL.items() if k != "n_hid"}),
                      tc).run()
        results[path] = res
        rmses = [r["test_rmse"] for r in res.history]
        assert res.path == path and len(res.history) == 10
        assert [r["stage"] for r in res.history] == [1] * 6 + [2] * 4
        assert res.final["rmse"] < 0.85 * baseline, f"{path}: final RMSE {res.final['rmse']:.3f} vs mean {baseline:.3f}"
        assert res.best["rmse"] < 0.8 * baseline, f"{path}: per-epoch test RMSE {rmses}, baseline {baseline:.3f}"
        assert rmses[5] < rmses[0], f"{path}: pre-training did not improve the test RMSE: {rmses}"
        # The reported metrics are those of the clipped model predictions.
        pred = res.model.predict_dense(res.data, 2).double().numpy()[test.row, test.col]
        ref = math.sqrt(np.mean((np.clip(pred, 1, 5) - test.data) ** 2))
        assert res.final["rmse"] == pytest.approx(ref, rel=1e-6), "final RMSE must be that of the clipped predictions"
    d, s = results["dense"].history, results["sparse"].history
    assert d[0]["loss"] == pytest.approx(s[0]["loss"], rel=1e-4), "dense and sparse paths diverge from epoch 1"


def test_dense_and_sparse_runs_end_with_the_same_rmse():
    """Same mathematics end to end: a whole (pre-training) run gives RMSEs within 1e-3 on both paths.

    Only float32 rounding differs between the paths. Fine-tuning starts with the global kernel's
    saturation shock (docs/RESULTS.md), where L-BFGS's line search can branch on that rounding
    (a different number of evaluations) on a tiny, ill-conditioned problem, so this unit test's
    run uses a better-conditioned setting (lambda_2 5); the full paper protocol on ML-100K is
    compared in the performance benchmark (docs/PERFORMANCE.md: best-epoch RMSE 0.8920 dense vs
    0.8916 sparse).
    """
    data = synthetic(seed=0)
    runs = {}
    for path in ("dense", "sparse"):
        tc = TrainConfig(epoch_p=8, epoch_f=2, iter_p=5, iter_f=5, path=path, seed=2)
        runs[path] = Trainer(data, GLocalKConfig(n_hid=24, n_dim=3, lambda_2=5.0, lambda_s=0.006), tc).run()
        rmses = [r["test_rmse"] for r in runs[path].history]
        assert rmses[-1] < rmses[0] - 0.05, f"{path}: the run did not learn: {rmses}"
    for rd, rs in zip(runs["dense"].history, runs["sparse"].history, strict=True):
        gap = abs(rd["test_rmse"] - rs["test_rmse"])
        assert gap < 1e-3, f"epoch {rd['epoch']}: test RMSE {rd['test_rmse']} (dense) vs {rs['test_rmse']} (sparse)"
    for protocol in ("best", "final"):
        gap = abs(getattr(runs["dense"], protocol)["rmse"] - getattr(runs["sparse"], protocol)["rmse"])
        assert gap < 1e-3, f"{protocol} RMSE: dense and sparse differ by {gap:.2e}"


def test_choose_path_and_config_validation():
    assert choose_execution((100, 100), 2000, "auto") == "sparse"  # density .2
    assert choose_execution((100, 100), 3000, "auto") == "dense"  # density .3
    assert choose_execution((100, 100), 10, "dense") == "dense" and choose_execution((10, 10), 90, "sparse") == "sparse"
    with pytest.raises(ValueError, match="path"):
        choose_execution((10, 10), 5, "bogus")
    data = synthetic(seed=1, n_items=10, n_users=8)
    with pytest.raises(ConfigError, match="nothing to train"):
        Trainer(data, GLocalKConfig(**SMALL_MODEL), TrainConfig(epoch_p=0, epoch_f=0))


@pytest.mark.parametrize(("option", "value"), [
    ("patience", 0), ("patience", -2),  # defect 3: patience 0 stopped fine-tuning after one epoch
    ("threads", 0), ("threads", -1), ("epoch_p", -1), ("epoch_f", -3), ("iter_p", -1), ("iter_f", 1.5),
    ("optimizer", "adam"), ("path", "bogus"),
])
def test_invalid_train_options_are_rejected_naming_the_option(option, value):
    data = synthetic(seed=1, n_items=10, n_users=8)
    with pytest.raises(ConfigError, match=option):
        Trainer(data, GLocalKConfig(**SMALL_MODEL), TrainConfig(**{option: value}))
    with pytest.raises(ConfigError, match=option):
        TrainConfig(**{option: value}).validate()


def test_patience_one_is_valid():
    assert TrainConfig(patience=1, threads=1).validate().patience == 1


# --------------------------------------------------------------------------- summarise


def hand_history():
    nan = float("nan")
    return [
        # Pre-training epoch with the best numbers of all: the paper protocol must ignore it.
        {"epoch": 1, "stage": 1, "test_rmse": 0.50, "test_mae": 0.40, "test_ndcg": 0.99, "val_rmse": 0.10},
        {"epoch": 2, "stage": 2, "test_rmse": 0.95, "test_mae": 0.70, "test_ndcg": 0.90, "val_rmse": 0.99},
        {"epoch": 3, "stage": 2, "test_rmse": 0.90, "test_mae": 0.75, "test_ndcg": 0.91, "val_rmse": 0.97},
        {"epoch": 4, "stage": 2, "test_rmse": 0.92, "test_mae": 0.72, "test_ndcg": 0.93, "val_rmse": 0.95},
        {"epoch": 5, "stage": 2, "test_rmse": 0.93, "test_mae": 0.71, "test_ndcg": nan, "val_rmse": 0.96},
    ]


def test_summarise_hand_made_history():
    best, final, val_sel = summarise(hand_history())
    assert best["rmse"] == 0.90 and best["rmse_epoch"] == 3 and best["epoch"] == 3, best
    assert best["mae"] == 0.70 and best["mae_epoch"] == 2, best
    assert best["ndcg"] == 0.93 and best["ndcg_epoch"] == 4, f"NaN NDCG must not win: {best}"
    assert final["epoch"] == 5 and final["rmse"] == 0.93 and final["mae"] == 0.71 and math.isnan(final["ndcg"])
    assert val_sel == {"epoch": 4, "val_rmse": 0.95, "rmse": 0.92, "mae": 0.72, "ndcg": 0.93}, val_sel


def test_summarise_edge_cases():
    assert summarise([]) == (None, None, None)
    stage1 = [r for r in hand_history() if r["stage"] == 1] + [
        {"epoch": 2, "stage": 1, "test_rmse": 0.6, "test_mae": 0.3, "test_ndcg": 0.5, "val_rmse": 0.2}]
    best, final, val_sel = summarise(stage1)  # no fine-tuning: pre-training epochs are the pool
    assert (best["rmse"], best["mae"], best["ndcg"]) == (0.50, 0.30, 0.99) and final["epoch"] == 2
    assert val_sel["epoch"] == 1
    no_test = [{"epoch": 1, "stage": 2, "val_rmse": 0.9}, {"epoch": 2, "stage": 2, "val_rmse": 0.8}]
    best, final, val_sel = summarise(no_test)
    assert best is None and final == {"epoch": 2} and val_sel == {"epoch": 2, "val_rmse": 0.8}
    no_val = [{k: v for k, v in r.items() if k != "val_rmse"} for r in hand_history()]
    assert summarise(no_val)[2] is None


# --------------------------------------------------------------------------- patience / selection


def scripted_trainer(val_curve, epoch_p, epoch_f, patience, monkeypatch):
    data = synthetic(seed=3, n_items=12, n_users=10).with_validation(0.2, seed=0)
    tr = Trainer(data, GLocalKConfig(**SMALL_MODEL),
                 TrainConfig(epoch_p=epoch_p, epoch_f=epoch_f, iter_p=1, iter_f=1, patience=patience))
    curve = iter(val_curve)

    def fake_evaluate(stage):
        v = next(curve)
        return {"train_rmse": 1.0, "val_rmse": v, "test_rmse": v + 0.1, "test_mae": v, "test_ndcg": 0.9}

    monkeypatch.setattr(tr, "evaluate", fake_evaluate)
    return tr


def test_patience_stops_fine_tuning_early(monkeypatch):
    # Pre-training (2 epochs) gets worse and must not trigger the stop; fine-tuning is best at its epoch 2.
    curve = [1.0, 2.0, 3.0] + [1.0, 0.9, 0.95, 0.96, 0.97, 0.1, 0.1, 0.1]
    tr = scripted_trainer(curve, epoch_p=3, epoch_f=8, patience=2, monkeypatch=monkeypatch)
    states = {}
    res = tr.run(on_epoch=lambda rec: states.update(
        {rec["epoch"]: {k: v.detach().clone() for k, v in tr.model.state_dict().items()}}))
    assert [r["epoch"] for r in res.history] == [1, 2, 3, 4, 5, 6, 7], "stop 2 epochs after the best fine-tuning one"
    assert res.val_selected["epoch"] == 5 and res.val_selected["val_rmse"] == 0.9
    assert res.selected_stage == 2
    assert res.selected_state is not None
    for k, v in states[5].items():
        assert torch.equal(res.selected_state[k], v), f"selected_state.{k} is not the val-selected epoch's weight"
    assert not torch.equal(res.selected_state["gk_weight"], states[7]["gk_weight"]), "test setup: weights moved"


def test_no_patience_runs_all_epochs(monkeypatch):
    curve = [1.0, 1.0] + [0.5, 0.9, 0.95, 0.96]
    tr = scripted_trainer(curve, epoch_p=2, epoch_f=4, patience=None, monkeypatch=monkeypatch)
    res = tr.run()
    assert len(res.history) == 6 and res.val_selected["epoch"] == 3


# --------------------------------------------------------------------------- validation split


def test_with_validation_only_splits_training_ratings():
    data = synthetic(seed=4)
    v = data.with_validation(0.25, seed=7)
    assert v.val.nnz == round(0.25 * data.train.nnz) and v.train.nnz + v.val.nnz == data.train.nnz
    assert (v.test != data.test).nnz == 0, "the test split must be untouched"
    assert (v.train + v.val != data.train).nnz == 0, "train + val must be the original training ratings"
    assert v.train.multiply(v.val).nnz == 0, "train and val must be disjoint"
    assert v.val.multiply(data.test).nnz == 0 and v.train.multiply(data.test).nnz == 0
    assert v.rating_scale == data.rating_scale
    again = data.with_validation(0.25, seed=7)
    assert (again.val != v.val).nnz == 0, "the split is seeded"
    assert (data.with_validation(0.25, seed=8).val != v.val).nnz > 0
    for frac in (0.0, 1.0, -0.1, 1e-9):
        with pytest.raises(DataError):
            data.with_validation(frac)
    # The trainer's input is the reduced training matrix: validation ratings never enter training.
    tr = Trainer(v, GLocalKConfig(**SMALL_MODEL), TrainConfig(epoch_p=1, epoch_f=0, iter_p=1, path="dense"))
    np.testing.assert_array_equal(tr.input.dense.numpy(), v.train.toarray())
    rec = tr.run().history[0]
    assert {"train_rmse", "val_rmse", "val_mae", "test_rmse", "test_mae", "test_ndcg"} <= set(rec)


# --------------------------------------------------------------------------- non-finite loss


@pytest.mark.parametrize("nan_epoch", [3, 4])  # stage 1 epoch 3 / stage 2 epoch 1
def test_nan_loss_raises_naming_stage_and_epoch(nan_epoch):
    data = synthetic(seed=5, n_items=15, n_users=12)
    tr = Trainer(data, GLocalKConfig(**SMALL_MODEL), TrainConfig(epoch_p=3, epoch_f=2, iter_p=2, iter_f=2))
    original = tr.model.loss_and_hidden  # the trainer's pass
    state = {"nan": False}

    def loss_and_hidden(inp, stage):
        out, h, weights = original(inp, stage)
        return (out * float("nan") if state["nan"] else out), h, weights

    tr.model.loss_and_hidden = loss_and_hidden

    def on_epoch(rec):
        if rec["epoch"] == nan_epoch - 1:
            state["nan"] = True

    with pytest.raises(TrainingError) as info:
        tr.run(on_epoch=on_epoch)
    msg = str(info.value)
    stage, stage_epoch = (1, 3) if nan_epoch == 3 else (2, 1)
    assert "non-finite loss" in msg and f"stage {stage} epoch {stage_epoch}" in msg, msg
    assert [r["epoch"] for r in tr.history] == list(range(1, nan_epoch)), "the failed epoch is not recorded"


# --------------------------------------------------------------------------- resumable state


def _resume_setup():
    data = synthetic(seed=6, n_items=20, n_users=16).with_validation(0.15, seed=1)
    mc = GLocalKConfig(**SMALL_MODEL)
    tc = TrainConfig(epoch_p=2, epoch_f=1, iter_p=2, iter_f=2, seed=4, path="sparse")
    return data, mc, tc


def test_state_restores_into_a_fresh_trainer_and_training_continues():
    data, mc, tc = _resume_setup()
    first = Trainer(data, mc, tc)

    def interrupt(rec):
        if rec["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        first.run(on_epoch=interrupt)
    tensors, meta = first.state()
    assert meta["epoch"] == 2 and [r["epoch"] for r in meta["history"]] == [1, 2] and not first.finished
    assert {k for k in tensors if not k.startswith("selected.")} == set(first.model.state_dict())
    second = Trainer(data, mc, tc)
    second.restore(tensors, meta)
    for k, v in first.model.state_dict().items():
        assert torch.equal(second.model.state_dict()[k], v), k
    trained = []
    res = second.run(on_epoch=lambda rec: trained.append(rec["epoch"]))
    assert trained == [3] and [r["epoch"] for r in res.history] == [1, 2, 3]
    assert res.selected_state is not None and res.val_selected["epoch"] == 3


def test_restore_rejects_other_config_and_non_training_state():
    data, mc, tc = _resume_setup()
    tr = Trainer(data, mc, TrainConfig(**{**tc.to_dict(), "epoch_p": 1, "epoch_f": 0}))
    tr.run()
    tensors, meta = tr.state()
    with pytest.raises(CheckpointError, match="cannot resume from here: .*train_config"):
        Trainer(data, mc, tc).restore(tensors, meta, source="here")
    other_data = synthetic(seed=7, n_items=20, n_users=16).with_validation(0.15, seed=1)
    with pytest.raises(CheckpointError, match="fingerprint"):
        Trainer(other_data, mc, TrainConfig(**{**tc.to_dict(), "epoch_p": 1, "epoch_f": 0})).restore(tensors, meta)
    with pytest.raises(CheckpointError, match="not a training state"):
        Trainer(data, mc, tc).restore({"x": torch.zeros(1)}, {"kind": "something-else"})


# --------------------------------------------------------------------------- bad input


def test_negative_ratings_are_rejected():
    """Negative ratings would be inputs but not targets on the dense path (it masks R > 0) and targets on
    the sparse one: RatingMatrix refuses them instead."""
    r = np.array([[2.0, 0.0, -1.0], [0.0, 1.0, 2.0], [-2.0, 1.0, 0.0]], dtype=np.float32)
    with pytest.raises(DataError, match="negative"):
        RatingMatrix(sp.csr_matrix(r))


def test_a_run_on_its_own_thread_count_gives_the_caller_its_own_back():
    """threads=N applies while training; the process-wide torch setting is restored afterwards (and
    after a failure), so a library call leaves no global state changed."""
    before = torch.get_num_threads()
    seen = []
    trainer = Trainer(synthetic(), GLocalKConfig(n_hid=8), TrainConfig(epoch_p=1, epoch_f=1, iter_p=1, iter_f=1,
                                                                        threads=before + 1))
    trainer.run(on_epoch=lambda rec: seen.append(torch.get_num_threads()))
    assert seen == [before + 1, before + 1] and torch.get_num_threads() == before

    def fail(rec):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(synthetic(), GLocalKConfig(n_hid=8), TrainConfig(epoch_p=1, epoch_f=1, iter_p=1, iter_f=1,
                                                                 threads=before + 1)).run(on_epoch=fail)
    assert torch.get_num_threads() == before


def test_host_round_trip_copies_parameters_exactly():
    params = [torch.nn.Parameter(torch.tensor([[1.5, -2.0], [0.25, 3.0]])), torch.nn.Parameter(torch.tensor([7.0]))]
    x = host_flat(params)
    assert x.dtype.name == "float64" and x.tolist() == [1.5, -2.0, 0.25, 3.0, 7.0]
    x[:] = [0.0, 1.0, 2.0, 3.0, 4.0]
    host_assign(params, x)
    assert params[0].tolist() == [[0.0, 1.0], [2.0, 3.0]] and params[1].tolist() == [4.0]


@pytest.mark.parametrize("output_bias", ["glorot", "mean"])
def test_a_user_without_training_ratings_starts_at_the_mean_with_output_bias_mean(output_bias):
    # User 0 has test ratings only: nothing in training moves its output bias, and L2 pulls its output
    # weights towards 0, so its predictions stay near where the bias started: the training mean (3.4 here)
    # with "mean", near 0 (clipped to 1 in the metrics) with the paper's Glorot init.
    rng = np.random.default_rng(0)
    dense = rng.integers(1, 6, (20, 12)).astype(float)
    mask = rng.random((20, 12)) < 0.5
    test_mask = np.zeros_like(mask)
    test_mask[:, 0], mask[:, 0] = mask[:, 0], False
    data = RatingMatrix(sp.csr_matrix(dense * mask), test=sp.csr_matrix(dense * test_mask), rating_scale=(1.0, 5.0))
    trainer = Trainer(data, GLocalKConfig(n_hid=8, lambda_2=20.0, output_bias=output_bias),
                      TrainConfig(epoch_p=3, epoch_f=0, iter_p=5, threads=1))
    trainer.run()
    mean = float(data.train.data.mean())
    predicted = trainer.predictions(1)["test"]  # unclipped, all for user 0
    if output_bias == "mean":
        assert np.abs(predicted - mean).max() < 0.5
    else:
        assert np.abs(predicted - mean).min() > 2.0
