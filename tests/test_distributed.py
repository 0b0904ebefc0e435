"""GLocal-K sharded over users (glocalk.sharded) against the single-process model.

Workers run in 2 and 3 processes (torch.multiprocessing spawn, gloo on CPU). The reference is the
plain dense ``GLocalK.forward`` of the whole model in one process (SPEC.md's maths, itself tested
against a NumPy forward in tests/test_model.py): at the same weights the sum of the ranks' losses and
each rank's gradients (owned blocks, replicated parameters) must equal it to 1e-5 relative, in both
stages, in sparse execution (R_hat sparse and dense) and dense execution, with uneven blocks.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from glocalk.model import GLocalK, GLocalKConfig, Stage
from glocalk.sharded import USER_DIMS, Shard, ShardedGLocalK, halo_columns, prepare_shard_input, user_bounds

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


def _worker(rank: int, world: int, init_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
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
