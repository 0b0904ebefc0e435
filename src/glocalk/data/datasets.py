"""The paper's benchmark datasets: loaders, a registry, lookup and checksum-verified download.

Three benchmarks (SPEC.md, "Datasets and splits of the paper"):

* ``ml-100k``: MovieLens 100K, split u1 (``u1.base`` / ``u1.test``), 1-based ids used directly.
* ``ml-1m``: MovieLens 1M ``ratings.dat`` with the original code's seeded 90/10 split.
* ``douban``: the Monti et al. (2017) 3000 x 3000 subset, a MATLAB v7.3 (HDF5) ``.mat``.

Every loader returns a :class:`glocalk.data.RatingMatrix` (rows are items, columns users)
and raises :class:`glocalk.data.DataError` for anything wrong with the input, naming the
file (and, for text files, the 1-based line number and the line itself).

Data directory: :func:`resolve_data_dir` (argument, else ``$GLOCALK_DATA``, else the user
cache ``$XDG_CACHE_HOME/glocalk`` or ``~/.cache/glocalk``). Inside it each dataset lives in
its folder (``movielens-100k``, ``movielens-1m``, ``douban``, as in the project's shared
data), but the layouts GroupLens' zips extract to (``ml-100k/``, ``ml-1m/``) and files placed
directly in the directory are found too.

Checksums. Downloads are verified with sha256 before they are kept:

* ``ml-100k.zip``: sha256 ``50d2a982...a3229`` (GroupLens publishes only the md5
  ``0e33842e24a9c977be4e0107933c0723`` in ``ml-100k.zip.md5``; the sha256 is the one many
  independent projects pin for the same 4,924,029-byte file). The extracted ``u1.base`` /
  ``u1.test`` are then checked against their own sha256 (those of the project's shared copies).
* ``ml-1m.zip``: sha256 ``a6898adb...54e20`` (published md5 ``c4d9eecfca2ab87c1945afe126590906``;
  the sha256 is the one pinned by e.g. TensorFlow Models and Keras-RS). The extracted
  ``ratings.dat`` has a timestamp column, so it differs from the shared 3-column copy and is
  trusted through the zip's checksum only.
* ``training_test_dataset.mat`` (Douban): sha256 of the project's shared copy. That it is
  byte-identical to the file in the fmonti/mgcnn repository was not checked against the network.

Files already present in the data directory are loaded as they are (not re-hashed), so users
may supply their own copies, e.g. the 3-column ``ratings.dat``.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from types import MappingProxyType

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from glocalk.data.download import DatasetInfo, download, find_dir, resolve_data_dir, sha256_file
from glocalk.data.matrix import RatingMatrix
from glocalk.data.readers import open_text, opener, split_fields
from glocalk.errors import DataError

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "download_dataset",
    "find_dataset_dir",
    "load_dataset",
    "load_ml100k",
    "load_ml1m",
    "load_monti",
    "ml1m_split",
    "resolve_data_dir",  # re-exported from glocalk.data.download, as DatasetInfo and sha256_file
    "sha256_file",
]

log = logging.getLogger(__name__)

MOVIELENS_SCALE = (1.0, 5.0)
ML1M_SEED = 1234
ML1M_TEST_FRAC = 0.1


# --------------------------------------------------------------------------- text rating files

def _show(line: str, limit: int = 200) -> str:
    line = line.rstrip("\r\n")
    return repr(line if len(line) <= limit else line[:limit] + "...")


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed by extension as every reader does (``open_text``)."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with opener(path)(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read: {e}") from None
    if not raw.strip():
        raise DataError(f"{path}: the file is empty (no ratings)")
    return raw


def _columns_ok(users: np.ndarray, items: np.ndarray, ratings: np.ndarray, scale: tuple[float, float]) -> bool:
    """True when every row is valid; the fast parser falls back to the line scanner otherwise."""
    lo, hi = scale
    with np.errstate(invalid="ignore"):
        ok_ids = all(np.all(np.isfinite(a)) and np.all(a >= 1) and np.all(a == np.floor(a)) for a in (users, items))
        return bool(ok_ids and np.all(np.isfinite(ratings)) and np.all((ratings >= lo) & (ratings <= hi)))


def _scan_lines(path: Path, sep: str | None, scale: tuple[float, float]) -> np.ndarray:
    """Exact line-by-line parser: returns (n, 3) float64 [user, item, rating] or raises at the first bad line.

    Slow (pure Python) but only used when the fast parser rejects the file, so that the error can
    name the line. Lines come from the readers' ``open_text`` and are split by ``split_fields``.
    """
    rows: list[tuple[float, float, float]] = []
    with open_text(path) as f:
        for n, line in enumerate(f, start=1):
            if line.strip():  # blank lines (e.g. a trailing one) carry no rating
                rows.append(_scan_line(path, n, line.rstrip("\r\n"), sep, scale))
    if not rows:
        raise DataError(f"{path}: the file is empty (no ratings)")
    return np.asarray(rows, dtype=np.float64)


def _scan_line(path: Path, n: int, line: str, sep: str | None, scale: tuple[float, float]) -> tuple[float, ...]:
    """(user, item, rating) of one MovieLens line, or a DataError naming the line and showing it."""
    def bad(why: str) -> DataError:
        return DataError(f"{path}: line {n}: {why}: {_show(line)}")

    fmt = "user<TAB>item<TAB>rating[<TAB>timestamp]" if sep is None else "user::movie::rating[::timestamp]"
    fields = split_fields(line, sep)
    if len(fields) not in (3, 4):
        raise bad(f"expected 3 or 4 fields ({fmt}), found {len(fields)}")
    try:
        values = [float(f) for f in fields]
    except ValueError:
        raise bad("non-numeric field") from None
    for what, v, text in (("user id", values[0], fields[0]), ("item id", values[1], fields[1])):
        if not (np.isfinite(v) and v >= 1 and v == int(v)):
            raise bad(f"{what} must be a positive integer, got {text!r}")
    lo, hi = scale
    if not (np.isfinite(values[2]) and lo <= values[2] <= hi):
        raise bad(f"rating {fields[2]!r} outside the rating scale {lo:g}..{hi:g}")
    return values[0], values[1], values[2]


def _parse_ratings(path: str | Path, sep: str | None, scale: tuple[float, float]) -> np.ndarray:
    """Parse a MovieLens-style rating file into an (n, 3) float64 array [user, item, rating], file order.

    ``sep`` is ``"::"`` (ratings.dat) or None (whitespace: u1.base). A timestamp column is optional.

    Why not ``read_ratings``: these files are all-numeric, so pandas' C parser reads them straight
    into float64 (ML-1M in ~0.15 s); the general reader keeps ids as text first (so that "007" stays
    "007") and takes ~0.4 s. Bad files go to the exact scanner, which shares the readers' line
    reading and tokenising and names the line.
    """
    path = Path(path)
    raw = _read_bytes(path)
    # pandas' C parser needs a single-character separator (``sep='::'`` would force the python engine).
    buf = raw.replace(b"::", b"\t") if sep == "::" else raw
    if sep == "::" and b"\t" in raw:
        buf = None  # a TAB in a '::' file would be split on; let the scanner report the line
    if buf is not None:
        try:
            df = pd.read_csv(io.BytesIO(buf), sep="\t", header=None, dtype=np.float64, engine="c",
                             quoting=csv.QUOTE_NONE, skip_blank_lines=True, na_filter=True)
        except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
            df = None
        if df is not None and df.shape[1] in (3, 4) and len(df):
            arr = df.to_numpy()
            # NaN: a short line or an empty field (pandas pads them); the scanner decides.
            if not np.isnan(arr).any() and _columns_ok(arr[:, 0], arr[:, 1], arr[:, 2], scale):
                return np.ascontiguousarray(arr[:, :3])
    return _scan_lines(path, sep, scale)


def _check_unique(path: Path, rows: np.ndarray, cols: np.ndarray, n_cols: int,
                  row_ids: np.ndarray, col_ids: np.ndarray) -> None:
    """Reject repeated (item, user) pairs: a sparse matrix would silently add their ratings."""
    key = rows.astype(np.int64) * n_cols + cols
    uniq, counts = np.unique(key, return_counts=True)
    if len(uniq) != len(key):
        k = uniq[np.argmax(counts > 1)]
        raise DataError(f"{path}: user {col_ids[k % n_cols]} rated item {row_ids[k // n_cols]} more than once")


def load_ml100k(path_dir: str | Path) -> RatingMatrix:
    """MovieLens 100K, split u1: ``u1.base`` (train) and ``u1.test`` (test) in ``path_dir``.

    Ids are 1-based and used directly (row = item id - 1, column = user id - 1); the shape is
    the largest id over both files (1,682 items x 943 users for the GroupLens data).
    """
    path_dir = Path(path_dir)
    base, test = path_dir / "u1.base", path_dir / "u1.test"
    tr = _parse_ratings(base, None, MOVIELENS_SCALE)
    te = _parse_ratings(test, None, MOVIELENS_SCALE)
    n_users = int(max(tr[:, 0].max(), te[:, 0].max()))
    n_items = int(max(tr[:, 1].max(), te[:, 1].max()))
    item_ids, user_ids = np.arange(1, n_items + 1), np.arange(1, n_users + 1)
    mats = []
    for path, a in ((base, tr), (test, te)):
        r, c = a[:, 1].astype(np.int64) - 1, a[:, 0].astype(np.int64) - 1
        _check_unique(path, r, c, n_users, item_ids, user_ids)
        mats.append(sp.csr_matrix((a[:, 2].astype(np.float32), (r, c)), shape=(n_items, n_users)))
    if mats[0].multiply(mats[1]).nnz:
        raise DataError(f"{base} and {test} share ratings: the test split would leak into training")
    return RatingMatrix(train=mats[0], test=mats[1], item_ids=item_ids, user_ids=user_ids,
                        rating_scale=MOVIELENS_SCALE, name="ml-100k",
                        meta={"dataset": "ml-100k", "files": [str(base), str(test)]})


def ml1m_split(n_ratings: int, seed: int = ML1M_SEED, test_frac: float = ML1M_TEST_FRAC) -> np.ndarray:
    """Boolean test mask over the rows of ratings.dat (file order), exactly as the original code.

    The original does ``np.random.seed(1234); np.random.shuffle(idx)`` and takes the first
    ``int(0.1 * n)`` shuffled rows as test; a local ``RandomState(1234)`` draws the same stream
    without touching numpy's global seed.
    """
    idx = np.arange(n_ratings)
    np.random.RandomState(seed).shuffle(idx)
    is_test = np.zeros(n_ratings, dtype=bool)
    is_test[idx[: int(test_frac * n_ratings)]] = True
    return is_test


def load_ml1m(path: str | Path) -> RatingMatrix:
    """MovieLens 1M ``ratings.dat`` (``user::movie::rating[::timestamp]``) with the paper's 90/10 split.

    Users and movies are mapped to indices by sorted unique id over all rows; the split is
    :func:`ml1m_split` (seed 1234, first 10% of the shuffled rows are test), giving
    900,189 train / 100,020 test ratings for the GroupLens file.
    """
    path = Path(path)
    a = _parse_ratings(path, "::", MOVIELENS_SCALE)
    user_ids, cols = np.unique(a[:, 0].astype(np.int64), return_inverse=True)
    item_ids, rows = np.unique(a[:, 1].astype(np.int64), return_inverse=True)
    _check_unique(path, rows, cols, len(user_ids), item_ids, user_ids)
    is_test = ml1m_split(len(a))
    shape = (len(item_ids), len(user_ids))
    vals = a[:, 2].astype(np.float32)

    def part(m: np.ndarray) -> sp.csr_matrix:
        return sp.csr_matrix((vals[m], (rows[m], cols[m])), shape=shape)

    return RatingMatrix(train=part(~is_test), test=part(is_test), item_ids=item_ids, user_ids=user_ids,
                        rating_scale=MOVIELENS_SCALE, name="ml-1m",
                        meta={"dataset": "ml-1m", "files": [str(path)], "split_seed": ML1M_SEED})


# --------------------------------------------------------------------------- Monti et al. .mat

_MONTI_FIELDS = ("M", "Otraining", "Otest")


def _read_mat_field(path: Path, db, name: str) -> sp.csr_matrix:
    """One field of a MATLAB v7.3 file, in MATLAB's orientation, as the original ``load_matlab_file``.

    Dense datasets come out of h5py transposed (MATLAB is column-major), hence ``.T``; sparse
    ones are groups holding MATLAB's CSC arrays ``data``/``ir``/``jc``.
    """
    ds = db[name]
    if isinstance(ds, h5py.Group):
        if "jc" not in ds:
            raise DataError(f"{path}: field {name!r} is a group without 'jc': not a MATLAB sparse matrix "
                            f"(members: {', '.join(sorted(ds.keys()))})")
        jc = np.asarray(ds["jc"]).astype(np.int64)
        # An all-zero sparse matrix is stored without data/ir.
        data = np.asarray(ds["data"]).astype(np.float32) if "data" in ds else np.zeros(0, np.float32)
        ir = np.asarray(ds["ir"]).astype(np.int64) if "ir" in ds else np.zeros(0, np.int64)
        n_cols = len(jc) - 1
        # MATLAB records the row count in the MATLAB_sparse attribute; without it (as in the
        # original code) the shape is inferred, which drops trailing empty rows.
        n_rows = int(ds.attrs.get("MATLAB_sparse", (ir.max() + 1) if ir.size else 0))
        try:
            return sp.csc_matrix((data, ir, jc), shape=(n_rows, n_cols)).tocsr()
        except ValueError as e:
            raise DataError(f"{path}: field {name!r} is a malformed MATLAB sparse matrix: {e}") from None
    arr = np.asarray(ds)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
        raise DataError(f"{path}: field {name!r} is not a numeric matrix (shape {arr.shape}, dtype {arr.dtype})")
    return sp.csr_matrix(arr.astype(np.float32).T)


def load_monti(path: str | Path, name: str | None = None) -> RatingMatrix:
    """A Monti et al. (2017) MATLAB v7.3 (HDF5) ``.mat``: fields ``M``, ``Otraining``, ``Otest``.

    As the original GLocal-K code: train = Otraining * M and test = Otest * M (element-wise;
    the O's are 0/1 masks), transposed so rows are items (M is users x items in MATLAB). The
    rating scale is read from the TRAINING ratings (min/max nonzero of Otraining * M; SPEC.md),
    because the format also carries Flixster (half stars) and YahooMusic (1..100); test ratings
    never set it.
    """
    path = Path(path)
    M, o_train, o_test = _read_monti_fields(path)
    for k, o in (("Otraining", o_train), ("Otest", o_test)):
        if o.shape != M.shape:
            raise DataError(f"{path}: {k} is {o.shape[0]} x {o.shape[1]} but M is {M.shape[0]} x {M.shape[1]}")
        o.eliminate_zeros()
        if o.nnz and not np.all(o.data == 1):
            raise DataError(f"{path}: {k} must be a 0/1 mask, found values {np.unique(o.data)[:5].tolist()}")
    if o_train.multiply(o_test).nnz:
        raise DataError(f"{path}: Otraining and Otest overlap in {o_train.multiply(o_test).nnz} entries: "
                        "the test split would leak into training")
    if M.nnz and not np.all(np.isfinite(M.data)):
        raise DataError(f"{path}: M holds non-finite values")
    train = sp.csr_matrix(o_train.multiply(M)).T.tocsr()
    test = sp.csr_matrix(o_test.multiply(M)).T.tocsr()
    train.eliminate_zeros()
    test.eliminate_zeros()
    if train.nnz == 0:
        raise DataError(f"{path}: Otraining * M holds no ratings")
    values = np.concatenate([train.data, test.data])
    if values.min() < 0:
        raise DataError(f"{path}: negative ratings in M (min {values.min():g}); ratings must be > 0")
    # Masked entries where M is 0 cannot be represented (0 = unrated); keep a count, don't fail.
    unrated = (o_train.nnz - train.nnz) + (o_test.nnz - test.nnz)
    if unrated:
        log.warning("%s: %d masked entries have rating 0 in M and are dropped", path, unrated)
    label = name or path.stem
    return RatingMatrix(train=train, test=test, rating_scale=(float(train.data.min()), float(train.data.max())),
                        name=label, meta={"dataset": label, "files": [str(path)], "masked_unrated": unrated})


def _read_monti_fields(path: Path) -> tuple[sp.csr_matrix, sp.csr_matrix, sp.csr_matrix]:
    """M, Otraining and Otest of a MATLAB v7.3 file, or a DataError saying what the file is instead."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if not h5py.is_hdf5(path):
        with open(path, "rb") as f:
            head = f.read(128)
        hint = ""
        if head.startswith(b"MATLAB 5.0") or (head.startswith(b"MATLAB") and b"7.3" not in head[:20]):
            hint = (" It is an older MATLAB MAT-file (v5/v7); re-save it in MATLAB with "
                    "save(FILE, 'M', 'Otraining', 'Otest', '-v7.3').")
        raise DataError(f"{path}: not an HDF5 file, so not a MATLAB v7.3 .mat as the Monti et al. "
                        f"datasets are.{hint}")
    try:
        with h5py.File(path, "r") as db:
            found = sorted(k for k in db.keys() if not k.startswith("#"))  # '#refs#' is MATLAB's internal group
            missing = [k for k in _MONTI_FIELDS if k not in db]
            if missing:
                raise DataError(f"{path}: missing field(s) {', '.join(missing)}; a Monti et al. file needs "
                                f"{', '.join(_MONTI_FIELDS)}; found: {', '.join(found) or 'none'}")
            M, o_train, o_test = (_read_mat_field(path, db, k) for k in _MONTI_FIELDS)
    except OSError as e:
        raise DataError(f"{path}: cannot read the HDF5 file: {e}") from None
    return M, o_train, o_test


# --------------------------------------------------------------------------- registry

DATASETS: dict[str, DatasetInfo] = {
    "ml-100k": DatasetInfo(
        name="ml-100k",
        folder="movielens-100k",
        files=("u1.base", "u1.test"),
        url="https://files.grouplens.org/datasets/movielens/ml-100k.zip",
        sha256="50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
        md5="0e33842e24a9c977be4e0107933c0723",
        archive_dir="ml-100k",
        file_sha256=MappingProxyType({
            "u1.base": "ce253ec86c448b44fb3ba9a30d12dcfc2e9210cbde71efada3730c22e9ac212a",
            "u1.test": "18c6014a4b2c7324f250a63f8904a7b16b2b19f911129e346141507b0cbac950",
        }),
        loader=load_ml100k,
    ),
    "ml-1m": DatasetInfo(
        name="ml-1m",
        folder="movielens-1m",
        files=("ratings.dat",),
        url="https://files.grouplens.org/datasets/movielens/ml-1m.zip",
        sha256="a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
        md5="c4d9eecfca2ab87c1945afe126590906",
        archive_dir="ml-1m",
        loader=lambda d: load_ml1m(d / "ratings.dat"),
    ),
    "douban": DatasetInfo(
        name="douban",
        folder="douban",
        files=("training_test_dataset.mat",),
        url="https://github.com/fmonti/mgcnn/raw/master/Data/douban/training_test_dataset.mat",
        sha256="1f4476321cbfe0f606e7e35d0695ca15447a1b0b2c811df130109b6cb9a067ae",
        file_sha256=MappingProxyType({
            "training_test_dataset.mat": "1f4476321cbfe0f606e7e35d0695ca15447a1b0b2c811df130109b6cb9a067ae",
        }),
        alt_dirs=("Data/douban",),  # a checkout of fmonti/mgcnn
        loader=lambda d: load_monti(d / "training_test_dataset.mat", name="douban"),
    ),
}


def _info(name: str) -> DatasetInfo:
    info = DATASETS.get(name)
    if info is None:
        # Accept the folder names too (movielens-100k), as they are what users see on disk.
        info = next((i for i in DATASETS.values() if i.folder == name), None)
    if info is None:
        raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)} "
                        "(for another Monti et al. .mat file use load_monti / --mat)")
    return info


# --------------------------------------------------------------------------- lookup, download, loading

def find_dataset_dir(name: str, data_dir: str | Path | None = None) -> Path:
    """The folder inside the data directory that holds all of the dataset's files.

    Raises DataError naming every folder searched, the files expected there and how to fix it.
    """
    return find_dir(_info(name), data_dir)


def download_dataset(name: str, data_dir: str | Path | None = None, base_url: str | None = None) -> Path:
    """Download (if needed) the dataset's canonical file into ``<data_dir>/<folder>/``; return that folder.

    See :func:`glocalk.data.download.download` (sha256-verified; ``base_url``, else
    ``$GLOCALK_DOWNLOAD_BASE``, replaces the ``scheme://host`` of the canonical URL).
    """
    return download(_info(name), data_dir, base_url)


def load_dataset(name: str, data_dir: str | Path | None = None, download: bool = False,
                 base_url: str | None = None) -> RatingMatrix:
    """Load a paper benchmark (``ml-100k``, ``ml-1m``, ``douban``) with the paper's split.

    Looks for the files in the data directory (:func:`resolve_data_dir`) in any accepted
    layout (:meth:`DatasetInfo.candidate_dirs`). If they are missing: with ``download=True``
    fetches them (:func:`download_dataset`), else raises DataError saying where it looked
    and how to fix it.
    """
    info = _info(name)
    try:
        folder = find_dataset_dir(info.name, data_dir)
    except DataError:
        if not download:
            raise
        folder = download_dataset(info.name, data_dir, base_url=base_url)
    return info.loader(folder)
