"""GLocal-K sharded over users (glocalk.sharded) against the single-process model.

Workers run in 2 and 3 processes (torch.multiprocessing spawn, gloo on CPU). The reference is the
plain dense ``GLocalK.forward`` of the whole model in one process (SPEC.md's maths, itself tested
against a NumPy forward in tests/test_model.py): at the same weights the sum of the ranks' losses and
each rank's gradients (owned blocks, replicated parameters) must equal it to 1e-5 relative, in both
stages, in sparse execution (R_hat sparse and dense) and dense execution, with uneven blocks; the
optimiser's ShardedSpace gives the dot products and inf-norm of the whole vector (NaN included).

Training (glocalk.distributed): a 2-process run whose rank 1 hangs ends on rank 0 within the collective
timeout with an error naming the cause and --resume; the state it left is the single-process format (a
one-process Trainer restores and evaluates it); resumed on 3 processes, every epoch's RMSEs equal an
uninterrupted one-process run with the same optimiser to 1e-4, and rank 0 alone wrote files.
"""

from __future__ import annotations

import datetime
import json
import math
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import tiny_ratings

from glocalk.cli import main
from glocalk.distributed import ProcessGroup, ShardedSpace, backend_for, collective_timeout
from glocalk.errors import ConfigError, TrainingError
from glocalk.model import GLocalK, GLocalKConfig, Stage
from glocalk.protocol import RunOptions, train_run
from glocalk.sharded import USER_DIMS, Shard, ShardedGLocalK, halo_columns, prepare_shard_input, user_bounds
from glocalk.store import load_dir
from glocalk.train import TrainConfig, Trainer

pytestmark = pytest.mark.filterwarnings("ignore:Sparse")

N_ITEMS, N_USERS = 17, 13  # 13 users: uneven blocks over 2 (7, 6) and 3 (5, 4, 4) ranks


def _ratings(density: float, seed: int) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = rng.integers(1, 6, size=(N_ITEMS, N_USERS)) * (rng.random((N_ITEMS, N_USERS)) < density)
    return sp.csr_matrix(dense.astype(np.float32))


def _model(config: GLocalKConfig) -> GLocalK:
    torch.manual_seed(3)
    model = GLocalK(N_ITEMS, N_USERS, config)
    with torch.no_grad():  # spread u, v so that the local kernels are neither all ~1 nor all clamped at 0
        for layer in model.layers:
            layer.u.normal_(0, 0.4)
            layer.v.normal_(0, 0.4)
    return model


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-30))


def _check_pass(rank: int, world: int, config: GLocalKConfig, r: sp.csr_matrix, sparse: bool,
                conv_dense: bool) -> None:
    model = _model(config)
    shard = Shard.of(N_USERS, rank, world)
    sharded = ShardedGLocalK.from_full(model, shard)
    data = prepare_shard_input(r, shard, sparse, config.gk_size)
    data.conv_dense = conv_dense
    dense_r = torch.from_numpy(r.toarray())
    for stage in (Stage.PRETRAIN, Stage.FINETUNE):
        params = dict(model.named_parameters())
        for p in params.values():
            p.grad = None
        _, want = model(dense_r, stage)
        want.backward()
        local_params = dict(sharded.local.named_parameters())
        total, grads = sharded.value_and_grad(data, stage, list(local_params.values()))
        case = f"rank {rank}/{world} stage {int(stage)} sparse={sparse} conv_dense={conv_dense}"
        assert _relative_error(total, want.detach()) <= 1e-5, case
        for name, g in zip(local_params, grads, strict=True):
            full = params[name].grad
            dim = USER_DIMS.get(name)
            ref = full if dim is None else full.narrow(dim, shard.lo, shard.n_local)
            if stage == Stage.PRETRAIN and name == "gk_weight":
                assert ref is None and not g.any(), case
                continue
            assert _relative_error(g, ref) <= 1e-5, f"{case}: gradient of {name}"


def _check_space(rank: int, world: int) -> None:
    """ShardedSpace over [owned block | replicated tail] equals plain reductions of the whole vector."""
    gen = torch.Generator().manual_seed(0)
    owned, replicated = torch.randn(3, N_USERS, generator=gen, dtype=torch.float64), torch.randn(
        3, 4, generator=gen, dtype=torch.float64)
    shard = Shard.of(N_USERS, rank, world)
    local = torch.cat([owned[:, shard.lo: shard.hi], replicated], 1)  # rows: three vectors
    whole = torch.cat([owned, replicated], 1)
    space = ShardedSpace(shard.n_local, rank)
    assert torch.allclose(space.dot(local[0], local[1]), whole[0] @ whole[1], rtol=1e-12)
    assert torch.allclose(space.dot(local[:2], local[2]), whole[:2] @ whole[2], rtol=1e-12)  # (k, n) rows
    assert torch.allclose(space.dot(local[:2], local[1:].T), whole[:2] @ whole[1:].T, rtol=1e-12)  # (n, j)
    assert space.norm_inf(local[0]) == whole[0].abs().max()
    if rank == world - 1:
        local[0, 0] = math.nan
    assert space.norm_inf(local[0]).isnan()  # a NaN on one rank is a NaN everywhere, as SciPy's projgr


def _worker(rank: int, world: int, init_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        _check_space(rank, world)
        base = GLocalKConfig(n_hid=6, n_dim=3, n_layers=2, lambda_2=0.5, lambda_s=0.1)
        dense_r, sparse_r = _ratings(0.6, 0), _ratings(0.08, 1)
        _check_pass(rank, world, base, sparse_r, sparse=True, conv_dense=False)
        _check_pass(rank, world, base, dense_r, sparse=True, conv_dense=True)
        _check_pass(rank, world, base, dense_r, sparse=False, conv_dense=False)
        # Three hidden layers (two replicated ones), an even kernel (asymmetric halo), the sqrt norm.
        other = GLocalKConfig(n_hid=5, n_dim=2, n_layers=3, gk_size=4, gk_norm="sqrt", lambda_2=0.5)
        _check_pass(rank, world, other, dense_r, sparse=True, conv_dense=False)
        # The gathered state is the single-process model, bit for bit.
        sharded = ShardedGLocalK.from_full(_model(base), Shard.of(N_USERS, rank, world))
        state = sharded.gather_state()
        if rank == 0:
            want = _model(base).state_dict()
            assert state.keys() == want.keys()
            assert all(torch.equal(state[k], want[k]) for k in want)
        else:
            assert state is None
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_loss_and_gradients_equal_single_process(world, tmp_path):
    mp.spawn(_worker, args=(world, str(tmp_path / "store")), nprocs=world)


def test_user_blocks_are_contiguous_and_even():
    assert user_bounds(13, 3).tolist() == [0, 5, 9, 13]
    assert [(s.lo, s.hi) for s in (Shard.of(10, r, 4) for r in range(4))] == [(0, 3), (3, 6), (6, 8), (8, 10)]
    # 3x3 kernel: one halo column each side, clipped at the matrix's edges.
    assert halo_columns(Shard.of(13, 1, 3), 3) == (4, 10)
    assert halo_columns(Shard.of(13, 0, 3), 3) == (0, 6)
    assert halo_columns(Shard.of(13, 2, 3), 3) == (8, 13)
    # 4x4 (TF SAME): one column on the left, two on the right.
    assert halo_columns(Shard.of(13, 1, 3), 4) == (4, 11)


def test_more_processes_than_users_is_a_clear_error():
    with pytest.raises(Exception, match="fewer users than processes"):
        Shard.of(2, 0, 3)


# --------------------------------------------------------------------------- training sharded


TRAIN_MODEL = GLocalKConfig(n_hid=8, n_dim=3, lambda_2=20.0, lambda_s=0.01)  # ML-100K's lambda_2: a well-posed
# problem, where float32 rounding (which differs between 1 and 2 processes) does not grow over the epochs
TRAIN_RUN = TrainConfig(epoch_p=2, epoch_f=3, iter_p=3, iter_f=3, seed=1, path="sparse", optimizer="lbfgsb")
HANG_AFTER = 3  # epoch after which rank 1 stops answering in the fault test


def _train_data():
    return tiny_ratings(n_items=30, n_users=25).with_validation(0.1, seed=1)


def _train_worker(rank: int, world: int, store: str, out: str, hang: bool) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=5))

    def hang_after(rec: dict) -> None:
        if hang and rec["epoch"] == HANG_AFTER:
            dist.barrier()  # rank 0 has written this epoch's state
            if rank == 1:
                time.sleep(60)  # alive but silent: rank 0's next collective must time out

    try:
        train_run(_train_data(), TRAIN_MODEL, TRAIN_RUN, RunOptions(
            state_dir=Path(out) / "state", log_path=Path(out) / "epochs.jsonl", resume=not hang, on_epoch=hang_after))
    except TrainingError as e:
        (Path(out) / f"error-{rank}.txt").write_text(str(e))
        raise
    finally:
        dist.destroy_process_group()


def test_sharded_training_survives_a_hung_rank_and_resumes_on_3_to_the_single_process_result(tmp_path):
    want = train_run(_train_data(), TRAIN_MODEL, TRAIN_RUN).history
    out = tmp_path / "run"
    # Rank 1 hangs after epoch 3: rank 0 fails within the timeout with an error that says what happened.
    with pytest.raises(mp.ProcessRaisedException):
        mp.spawn(_train_worker, args=(2, str(tmp_path / "store1"), str(out), True), nprocs=2)
    error = (out / "error-0.txt").read_text()
    assert "died or stopped answering" in error and "--resume" in error
    saved = load_dir(out / "state" / "last")
    assert saved[1]["epoch"] == HANG_AFTER and not saved[1]["finished"]
    # The saved state is the single-process format: a one-process Trainer loads it and evaluates the same.
    trainer = Trainer(_train_data(), TRAIN_MODEL, TRAIN_RUN)
    trainer.restore(*saved)
    assert trainer.evaluate(2)["test_rmse"] == pytest.approx(saved[1]["history"][-1]["test_rmse"], abs=1e-5)
    # Resumed on 3 processes (another P: each cuts its blocks out of the gathered state), the run ends
    # where one process gets without interruption.
    mp.spawn(_train_worker, args=(3, str(tmp_path / "store2"), str(out), False), nprocs=3)
    got = [json.loads(line) for line in (out / "epochs.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in got] == [r["epoch"] for r in want]
    for mine, ref in zip(got, want, strict=True):
        for key in ("train_rmse", "val_rmse", "test_rmse"):
            assert mine[key] == pytest.approx(ref[key], abs=1e-4), (mine["epoch"], key)
    assert sorted(p.name for p in out.iterdir()) == ["epochs.jsonl", "error-0.txt", "state"]


# --------------------------------------------------------------------------- the command line


def _write_mat(path: Path, data) -> None:
    """A Monti et al. MATLAB v7.3 file (dense fields, stored transposed; M and the masks are users x items)."""
    train, test = data.train.toarray().T, data.test.toarray().T
    with h5py.File(path, "w") as f:
        for name, m in (("M", train + test), ("Otraining", (train > 0) * 1.0), ("Otest", (test > 0) * 1.0)):
            f[name] = np.ascontiguousarray(m.T)


def test_train_nproc_2_writes_one_run_equal_to_one_process(tmp_path, capfd):
    mat = tmp_path / "tiny.mat"
    _write_mat(mat, tiny_ratings(n_items=30, n_users=25))
    flags = ["train", "--mat", str(mat), "--preset", "douban", "--optimizer", "lbfgsb", "--path", "sparse",
             "--n-hid", "8", "--lambda-2", "20", "--epoch-p", "2", "--epoch-f", "2", "--iter-p", "3", "--iter-f", "3",
             "--quiet"]
    assert main([*flags, "--out", str(tmp_path / "one")]) == 0
    assert main([*flags, "--nproc", "2", "--out", str(tmp_path / "two")]) == 0
    printed = capfd.readouterr().out
    assert printed.count("written:") == 2  # the closing table: once for one process, once for rank 0 of two
    one, two = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("one", "two"))
    for protocol in ("best", "final"):
        assert two[protocol]["rmse"] == pytest.approx(one[protocol]["rmse"], abs=1e-4)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["seed-1", "summary.json"]


def test_torchrun_environment_is_checked_before_any_process_group(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    mat = tmp_path / "tiny.mat"
    _write_mat(mat, tiny_ratings(n_items=30, n_users=25))
    base = ["train", "--mat", str(mat), "--preset", "douban", "--out", str(tmp_path / "x"), "--quiet"]
    assert main([*base, "--optimizer", "scipy"]) == 2  # SciPy's host L-BFGS-B cannot be sharded
    assert "--optimizer scipy cannot be sharded" in capsys.readouterr().err
    assert main([*base, "--optimizer", "lbfgsb", "--nproc", "3"]) == 2
    assert "--nproc 3 disagrees with the 2 processes torchrun started" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main([*base, "--optimizer", "lbfgsb", "--device", "cuda"]) == 2
        assert "device 'cuda:0' requested but CUDA is not available" in capsys.readouterr().err
    monkeypatch.setenv("RANK", "x")
    assert main([*base, "--optimizer", "lbfgsb"]) == 2
    assert "RANK and WORLD_SIZE must be integers" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_process_group_reads_the_torchrun_environment():
    assert ProcessGroup.from_env({}) == ProcessGroup(0, 1, 0) and not ProcessGroup.from_env({}).sharded
    group = ProcessGroup.from_env({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"})
    assert group.sharded and not group.writer
    assert group.device("cuda") == "cuda:1" and group.device("cpu") == "cpu"  # each process its own GPU
    # NCCL on a GPU, gloo on the CPU (the NCCL path itself needs GPUs: not run here)
    assert backend_for(group.device("cuda")) == "nccl" and backend_for("cpu") == "gloo"
    with pytest.raises(ConfigError, match="RANK=8 is not in WORLD_SIZE=8"):
        ProcessGroup.from_env({"RANK": "8", "WORLD_SIZE": "8"})
    assert collective_timeout({}) == 600.0 and collective_timeout({"GLOCALK_DIST_TIMEOUT": "2.5"}) == 2.5
    for bad in ("soon", "0", "-1", "inf"):
        with pytest.raises(ConfigError, match="GLOCALK_DIST_TIMEOUT must be a number of seconds > 0"):
            collective_timeout({"GLOCALK_DIST_TIMEOUT": bad})
