"""Rating sets shaped like Monti et al.'s Yahoo Music and Flixster matrices, built from Douban (issue 10).

The held-out sets of issue 10 are not in ../shared. Monti et al.'s Yahoo Music and Flixster files are
3000 x 3000 HDF5 .mat files like Douban's, but far sparser and on other scales. This writes two such
files from Douban's (the same users and items, its ratings subsampled, seeded, and mapped affinely):

- ``yahoo-like.mat``: ~5.3k training ratings (0.057% dense), every rating r -> 24.75 r - 23.75 (1..100);
- ``flixster-like.mat``: ~26k training ratings (0.29% dense), r -> 1.125 r - 0.625 (0.5..5).

Then run them as a new user would: ``glocalk train --mat OUT/yahoo-like.mat --seed 1``. The files are
Douban's data and are not to be committed.

    python benchmarks/monti_like.py --data-dir ../shared/data --out /tmp/monti-like
"""

from __future__ import annotations

import argparse
from pathlib import Path

import h5py
import numpy as np
import scipy.sparse as sp

from glocalk.data.datasets import load_dataset

SEED = 7
# name: (training ratings to keep, a, b) for r -> a r + b
CASES = {"yahoo-like": (5300, 24.75, -23.75), "flixster-like": (26000, 1.125, -0.625)}


def write_case(train: sp.csr_matrix, test: sp.csr_matrix, keep: int, a: float, b: float,
               rng: np.random.Generator, path: Path) -> tuple[int, int]:
    """Subsample both splits to ``keep / train.nnz`` of their ratings, map them, write a Monti .mat."""
    fraction = keep / train.nnz

    def sub(m: sp.csr_matrix) -> sp.csr_matrix:
        c = m.tocoo()
        kept = rng.random(c.nnz) < fraction
        return sp.csr_matrix((c.data[kept] * a + b, (c.row[kept], c.col[kept])), shape=m.shape)

    tr, te = sub(train), sub(test)
    with h5py.File(path, "w") as f:  # M, Otraining, Otest as Monti et al. (h5py writes MATLAB's layout)
        f.create_dataset("M", data=(tr + te).toarray())
        f.create_dataset("Otraining", data=(tr != 0).toarray().astype(np.float64))
        f.create_dataset("Otest", data=(te != 0).toarray().astype(np.float64))
    return tr.nnz, te.nnz


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", required=True, help="folder for the .mat files (not in the repository)")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    douban = load_dataset("douban", data_dir=args.data_dir)
    for name, (keep, a, b) in CASES.items():
        rng = np.random.default_rng(SEED)  # each case from the same seed, as the files of BENCHMARKS.md
        n_train, n_test = write_case(douban.train, douban.test, keep, a, b, rng, out / f"{name}.mat")
        print(f"{out / name}.mat: {n_train:,} training / {n_test:,} test ratings, "
              f"{n_train / np.prod(douban.train.shape):.3%} dense")


if __name__ == "__main__":
    main()
