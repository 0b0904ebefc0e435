"""benchmarks/passes.py and benchmarks/memory.py: the analytic FLOP count and the optimiser-state
sizes against hand-computed values. Nothing here measures."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def bench(monkeypatch):
    """The benchmark scripts as modules (benchmarks/ is a scripts folder, not an installed package)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return {name: importlib.import_module(name) for name in ("passes", "memory")}


def test_pass_flops_by_hand(bench):
    flops = bench["passes"].pass_flops
    # I = 2 items, U = 3 users, z = 4 ratings, n_hid 1, one hidden layer (no n x n layer), n_dim 1:
    # kernels 6 * 1 * (3 + 0 + 3) = 36; first layer and its weight gradient 4 * 4 * 1 = 16;
    # the output at R's entries and its two backward products 6 * 4 * (1 + 1) = 48.
    assert flops((2, 3), 4, 1, 1, 1) == 100
    # Stage 2 adds R_hat's first layer (materialised: 6 * 2 * 3 * 1 = 36; sparse with P = 5: 6 * 5 * 1 = 30),
    # the encoding of R for the item means (4 * 4 * 1 = 16) and the convolution (4 * S = 40 for S = 10).
    assert flops((2, 3), 4, 1, 1, 1, conv=(10, 5, True)) == 100 + 36 + 16 + 40
    assert flops((2, 3), 4, 1, 1, 1, conv=(10, 5, False)) == 100 + 30 + 16 + 40
    # A second hidden layer of n = 2: 6 I n^2 = 48 in stage 1, twice that more in stage 2.
    one, two = flops((2, 3), 4, 2, 1, 1), flops((2, 3), 4, 2, 2, 1)
    assert two - one == 6 * 2 * 2 * 2 + 6 * 1 * 2 * 2  # + the n x n layer's local kernel (6 d n^2)


def test_optimiser_state_by_hand(bench):
    state = bench["memory"].optimiser_state_gb(1_000_000)
    assert state["scipy_float64_gb"] == pytest.approx(25 * 8e6 / 1e9)  # (2 * 10 + 5) vectors of 8 bytes
    assert state["float32_pairs_gb"] == pytest.approx(25 * 4e6 / 1e9)
