"""Dataset loaders, registry, data-directory lookup and (local-only) download."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import os
import threading
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.sparse as sp

from glocalk.data import datasets as ds
from glocalk.errors import DataError

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GLOCALK_DATA") or REPO_ROOT.parent / "shared" / "data")


def _need(*parts: str) -> Path:
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared benchmark data not found at {p} (set GLOCALK_DATA to the data folder)")
    return p


# --------------------------------------------------------------------------- real data

@pytest.fixture(scope="module")
def ml1m():
    path = _need("movielens-1m", "ratings.dat")
    return path, ds.load_ml1m(path)


def test_ml100k_counts():
    _need("movielens-100k")
    d = ds.load_dataset("ml-100k", SHARED)
    assert (d.n_users, d.n_items) == (943, 1682)
    assert (d.train.nnz, d.test.nnz) == (80_000, 20_000)
    assert d.rating_scale == (1.0, 5.0)
    assert d.train.dtype == np.float32 and d.train.format == "csr"
    assert d.user_ids[0] == 1 and d.item_ids[-1] == 1682


def test_ml100k_ratings_by_hand():
    folder = _need("movielens-100k")
    d = ds.load_ml100k(folder)
    for fname, m in (("u1.base", d.train), ("u1.test", d.test)):
        lines = (folder / fname).read_text().splitlines()
        for line in (lines[0], lines[len(lines) // 2], lines[-1]):
            user, item, rating, _ = (int(x) for x in line.split("\t"))
            assert m[item - 1, user - 1] == rating, line


def test_ml1m_counts_and_split(ml1m):
    path, d = ml1m
    assert (d.n_users, d.n_items) == (6_040, 3_706)
    assert (d.train.nnz, d.test.nnz) == (900_189, 100_020)
    assert d.train.multiply(d.test).nnz == 0
    raw = _raw_ml1m(path)
    users = np.searchsorted(d.user_ids, raw[:, 0])
    items = np.searchsorted(d.item_ids, raw[:, 1])
    full = sp.csr_matrix((raw[:, 2].astype(np.float32), (items, users)), shape=d.shape)
    assert full.nnz == 1_000_209
    assert abs(d.train + d.test - full).sum() == 0


def _raw_ml1m(path: Path) -> np.ndarray:
    text = path.read_text()
    return np.array(text.replace("::", " ").split(), dtype=np.int64).reshape(-1, 3)


def test_ml1m_split_is_the_originals(ml1m):
    """The original: np.random.seed(1234); shuffle(arange(n)); first int(0.1 n) rows are test."""
    path, d = ml1m
    raw = _raw_ml1m(path)
    state = np.random.get_state()
    try:
        np.random.seed(1234)
        idx = np.arange(len(raw))
        np.random.shuffle(idx)
    finally:
        np.random.set_state(state)
    test_rows = raw[idx[: int(0.1 * len(raw))]]
    test = sp.csr_matrix((test_rows[:, 2].astype(np.float32),
                          (np.searchsorted(d.item_ids, test_rows[:, 1]), np.searchsorted(d.user_ids, test_rows[:, 0]))),
                         shape=d.shape)
    assert abs(test - d.test).sum() == 0


def test_ml1m_does_not_touch_global_seed(tmp_path):
    f = tmp_path / "ratings.dat"
    f.write_text("".join(f"{u}::{i}::3\n" for u in range(1, 6) for i in range(1, 5)))
    np.random.seed(7)
    expected = np.random.rand()
    np.random.seed(7)
    ds.load_ml1m(f)
    assert np.random.rand() == expected


def test_douban():
    path = _need("douban", "training_test_dataset.mat")
    d = ds.load_dataset("douban", SHARED)
    assert d.shape == (3000, 3000)
    assert (d.train.nnz, d.test.nnz) == (123_202, 13_689)
    assert d.rating_scale == (1.0, 5.0)
    # Orientation as the original: M = ds[...].T (users x items), train_r = (Otraining * M).T.
    with h5py.File(path, "r") as f:
        M = np.asarray(f["M"]).astype(np.float32).T
        o_train = np.asarray(f["Otraining"]).astype(np.float32).T
    np.testing.assert_array_equal(d.train.toarray(), (o_train * M).T)


# --------------------------------------------------------------------------- text formats

def _ratings(n_users: int = 6, n_items: int = 5, seed: int = 0) -> list[tuple[int, int, int, int]]:
    rng = np.random.default_rng(seed)
    return [(u, i, int(rng.integers(1, 6)), 978300000 + 10 * u + i)
            for u in range(1, n_users + 1) for i in range(1, n_items + 1) if rng.random() < 0.7]


def test_ratings_dat_with_and_without_timestamp(tmp_path):
    rows = _ratings(40, 30)
    three, four = tmp_path / "three.dat", tmp_path / "four.dat"
    three.write_text("".join(f"{u}::{i}::{r}\n" for u, i, r, _ in rows))
    four.write_text("".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in rows))
    a, b = ds.load_ml1m(three), ds.load_ml1m(four)
    assert a.train.nnz + a.test.nnz == len(rows)
    assert (a.train != b.train).nnz == 0 and (a.test != b.test).nnz == 0
    np.testing.assert_array_equal(a.user_ids, b.user_ids)
    np.testing.assert_array_equal(a.item_ids, b.item_ids)


def test_crlf_and_trailing_blank_lines(tmp_path):
    f = tmp_path / "ratings.dat"
    f.write_bytes(b"1::10::5\r\n2::10::3\r\n2::20::4\r\n\r\n")
    d = ds.load_ml1m(f)
    assert d.train.nnz + d.test.nnz == 3
    assert list(d.item_ids) == [10, 20] and list(d.user_ids) == [1, 2]


@pytest.mark.parametrize("bad, why", [
    ("3::7", "expected 3 or 4 fields"),
    ("3::7::4::1::9", "expected 3 or 4 fields"),
    ("3::seven::4", "non-numeric"),
    ("3::7::0", "outside the rating scale"),
    ("3::7::-2", "outside the rating scale"),
    ("3::7::6", "outside the rating scale"),
    ("0::7::4", "positive integer"),
    ("3::7.5::4", "positive integer"),
])
def test_malformed_ratings_dat(tmp_path, bad, why):
    f = tmp_path / "ratings.dat"
    f.write_text("1::1::5\n1::2::3\n\n2::1::4\n" + bad + "\n2::2::1\n")
    with pytest.raises(DataError) as e:
        ds.load_ml1m(f)
    msg = str(e.value)
    assert str(f) in msg and "line 5" in msg and why in msg and repr(bad) in msg


def test_malformed_u1_base(tmp_path):
    (tmp_path / "u1.base").write_text("1\t1\t5\t1\n1\t2\tx\t2\n")
    (tmp_path / "u1.test").write_text("2\t1\t4\t3\n")
    with pytest.raises(DataError, match=r"u1\.base: line 2: non-numeric"):
        ds.load_ml100k(tmp_path)


def test_empty_file(tmp_path):
    (tmp_path / "ratings.dat").write_text("\n")
    with pytest.raises(DataError, match="empty"):
        ds.load_ml1m(tmp_path / "ratings.dat")


def test_duplicate_rating(tmp_path):
    f = tmp_path / "ratings.dat"
    f.write_text("1::1::5\n2::1::3\n1::1::4\n")
    with pytest.raises(DataError, match="more than once"):
        ds.load_ml1m(f)


def test_ml100k_shape_is_max_id_over_both_files(tmp_path):
    (tmp_path / "u1.base").write_text("1\t1\t5\t1\n2\t3\t4\t1\n")
    (tmp_path / "u1.test").write_text("4\t2\t1\t1\n")
    d = ds.load_ml100k(tmp_path)
    assert (d.n_items, d.n_users) == (3, 4)
    assert d.train[2, 1] == 4 and d.test[1, 3] == 1


# --------------------------------------------------------------------------- Monti .mat

def _write_monti(path: Path, M: np.ndarray, o_train: np.ndarray, o_test: np.ndarray | None,
                 sparse_fields: tuple[str, ...] = ()) -> None:
    """MATLAB v7.3 layout: dense matrices stored transposed; sparse as data/ir/jc groups."""
    with h5py.File(path, "w") as f:
        for name, m in (("M", M), ("Otraining", o_train), ("Otest", o_test)):
            if m is None:
                continue
            if name in sparse_fields:
                c = sp.csc_matrix(m)
                g = f.create_group(name)
                g.attrs["MATLAB_sparse"] = np.uint64(m.shape[0])
                g["data"], g["ir"], g["jc"] = c.data, c.indices.astype(np.uint64), c.indptr.astype(np.uint64)
            else:
                f[name] = np.ascontiguousarray(m.T)


def _half_stars(n_users: int = 7, n_items: int = 5):
    rng = np.random.default_rng(1)
    M = rng.choice(np.arange(1, 11) / 2, size=(n_users, n_items))
    M[0, 0], M[1, 1] = 0.5, 5.0
    split = rng.random(M.shape)
    return M, (split < 0.6).astype(float), ((split >= 0.6) & (split < 0.8)).astype(float)


@pytest.mark.parametrize("sparse_fields", [(), ("M", "Otraining", "Otest"), ("Otest",)])
def test_monti_half_stars(tmp_path, sparse_fields):
    M, o_train, o_test = _half_stars()
    o_train[0, 0] = o_train[1, 1] = 1
    o_test[0, 0] = o_test[1, 1] = 0
    f = tmp_path / "flixster.mat"
    _write_monti(f, M, o_train, o_test, sparse_fields)
    d = ds.load_monti(f)
    assert d.rating_scale == (0.5, 5.0)
    assert d.shape == (5, 7)  # items x users
    np.testing.assert_array_equal(d.train.toarray(), (o_train * M).T)
    np.testing.assert_array_equal(d.test.toarray(), (o_test * M).T)
    assert d.name == "flixster"


def test_monti_rating_scale_is_the_training_ratings(tmp_path):
    # Defect: the clip range was taken from train AND test ratings, leaking the test set's extremes.
    M = np.array([[2.0, 3.0, 5.0], [4.0, 1.0, 3.0]])  # users x items
    o_train = np.array([[1, 1, 0], [1, 0, 1]], dtype=float)  # training ratings 2, 3, 4, 3
    o_test = 1 - o_train  # test ratings 5 and 1
    f = tmp_path / "scale.mat"
    _write_monti(f, M, o_train, o_test)
    d = ds.load_monti(f)
    assert d.rating_scale == (2.0, 4.0)
    assert sorted(d.test.data.tolist()) == [1.0, 5.0]


def test_monti_missing_field(tmp_path):
    M, o_train, _ = _half_stars()
    f = tmp_path / "no_test.mat"
    _write_monti(f, M, o_train, None)
    with pytest.raises(DataError) as e:
        ds.load_monti(f)
    msg = str(e.value)
    assert str(f) in msg and "Otest" in msg and "found: M, Otraining" in msg


@pytest.mark.parametrize("content, extra", [
    (b"MATLAB 5.0 MAT-file, Platform: GLNXA64" + bytes(100), "older MATLAB"),
    (b"garbage" * 30, ""),
])
def test_monti_not_hdf5(tmp_path, content, extra):
    f = tmp_path / "old.mat"
    f.write_bytes(content)
    with pytest.raises(DataError, match="not an HDF5 file") as e:
        ds.load_monti(f)
    assert str(f) in str(e.value) and extra in str(e.value)


def test_monti_overlapping_masks(tmp_path):
    M, o_train, _ = _half_stars()
    f = tmp_path / "leak.mat"
    _write_monti(f, M, o_train, o_train)
    with pytest.raises(DataError, match="overlap"):
        ds.load_monti(f)


# --------------------------------------------------------------------------- lookup

def test_resolve_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("GLOCALK_DATA", str(tmp_path / "env"))
    assert ds.resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert ds.resolve_data_dir() == tmp_path / "env"
    monkeypatch.delenv("GLOCALK_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert ds.resolve_data_dir() == tmp_path / "xdg" / "glocalk"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert ds.resolve_data_dir() == tmp_path / "home" / ".cache" / "glocalk"


def _small_ml100k(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u1.base").write_text("1\t1\t5\t1\n2\t2\t3\t2\n")
    (folder / "u1.test").write_text("1\t2\t4\t3\n")


@pytest.mark.parametrize("sub", ["movielens-100k", "ml-100k", "movielens-100k/ml-100k", "."])
def test_layouts(tmp_path, sub):
    _small_ml100k(tmp_path / sub)
    d = ds.load_dataset("ml-100k", tmp_path)
    assert (d.train.nnz, d.test.nnz) == (2, 1)


def test_missing_dataset_message(tmp_path):
    root = tmp_path / "nothing"
    (root / "movielens-100k").mkdir(parents=True)
    (root / "movielens-100k" / "u1.base").write_text("1\t1\t5\t1\n")
    with pytest.raises(DataError) as e:
        ds.load_dataset("ml-100k", root)
    msg = str(e.value)
    for looked in (root / "movielens-100k", root / "ml-100k", root / "movielens-100k" / "ml-100k", root):
        assert f"  {looked}" in msg
    assert "u1.base, u1.test" in msg and "has u1.base but not the rest" in msg
    assert "--data-dir" in msg and "GLOCALK_DATA" in msg and "--download" in msg


def test_unknown_dataset():
    with pytest.raises(DataError, match="known datasets: ml-100k, ml-1m, douban"):
        ds.load_dataset("netflix")


def test_registry():
    assert set(ds.DATASETS) == {"ml-100k", "ml-1m", "douban"}
    assert {i.folder for i in ds.DATASETS.values()} == {"movielens-100k", "movielens-1m", "douban"}
    for info in ds.DATASETS.values():
        assert info.url.startswith("https://") and len(info.sha256) == 64


def test_registry_checksums_match_shared_copies():
    """The per-file sha256s in the registry are those of the shared data (README.md)."""
    for info in ds.DATASETS.values():
        for fname, sha in info.file_sha256.items():
            assert ds.sha256_file(_need(info.folder, fname)) == sha


# --------------------------------------------------------------------------- download (local server only)

@pytest.fixture
def server(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/www; yields (base_url, www, requested paths)."""
    www = tmp_path / "www"
    www.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server API
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):  # keep test output quiet
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", www, requests
    finally:
        httpd.shutdown()
        httpd.server_close()


def _serve_ml100k_zip(www: Path, monkeypatch, tamper: bool = False) -> None:
    src = www.parent / "src"
    _small_ml100k(src)
    zpath = www / "datasets" / "movielens" / "ml-100k.zip"
    zpath.parent.mkdir(parents=True)
    with zipfile.ZipFile(zpath, "w") as z:
        for fname in ("u1.base", "u1.test"):
            z.write(src / fname, f"ml-100k/{fname}")
        z.writestr("ml-100k/u.data", "not needed\n")
    sha = hashlib.sha256(zpath.read_bytes()).hexdigest()
    files = {f: ds.sha256_file(src / f) for f in ("u1.base", "u1.test")}
    info = dataclasses.replace(ds.DATASETS["ml-100k"], sha256="0" * 64 if tamper else sha, file_sha256=files)
    monkeypatch.setitem(ds.DATASETS, "ml-100k", info)


def test_download_and_cache(tmp_path, server, monkeypatch):
    base, www, requests = server
    _serve_ml100k_zip(www, monkeypatch)
    cache = tmp_path / "cache"
    d = ds.load_dataset("ml-100k", cache, download=True, base_url=base)
    assert (d.train.nnz, d.test.nnz) == (2, 1)
    assert requests == ["/datasets/movielens/ml-100k.zip"]
    assert sorted(p.name for p in (cache / "movielens-100k").iterdir()) == ["u1.base", "u1.test"]
    ds.load_dataset("ml-100k", cache, download=True, base_url=base)
    assert len(requests) == 1  # served from the cache


def test_download_base_from_env(tmp_path, server, monkeypatch):
    base, www, requests = server
    _serve_ml100k_zip(www, monkeypatch)
    monkeypatch.setenv("GLOCALK_DOWNLOAD_BASE", base)
    ds.load_dataset("ml-100k", tmp_path / "cache", download=True)
    assert requests == ["/datasets/movielens/ml-100k.zip"]


def test_download_checksum_mismatch(tmp_path, server, monkeypatch):
    base, www, _ = server
    _serve_ml100k_zip(www, monkeypatch, tamper=True)
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as e:
        ds.load_dataset("ml-100k", cache, download=True, base_url=base)
    msg = str(e.value)
    actual = hashlib.sha256((www / "datasets" / "movielens" / "ml-100k.zip").read_bytes()).hexdigest()
    assert "0" * 64 in msg and actual in msg
    assert list((cache / "movielens-100k").iterdir()) == []


def test_download_member_checksum_mismatch(tmp_path, server, monkeypatch):
    base, www, _ = server
    _serve_ml100k_zip(www, monkeypatch)
    info = ds.DATASETS["ml-100k"]
    monkeypatch.setitem(ds.DATASETS, "ml-100k",
                        dataclasses.replace(info, file_sha256={**info.file_sha256, "u1.test": "f" * 64}))
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="u1.test"):
        ds.load_dataset("ml-100k", cache, download=True, base_url=base)
    left = {p.name for p in (cache / "movielens-100k").iterdir()}
    assert "u1.test" not in left and not [n for n in left if n.endswith((".tmp", ".part"))], left


def test_download_plain_file(tmp_path, server, monkeypatch):
    base, www, requests = server
    M, o_train, o_test = _half_stars()
    mat = www / "fmonti" / "mgcnn" / "raw" / "master" / "Data" / "douban" / "training_test_dataset.mat"
    mat.parent.mkdir(parents=True)
    _write_monti(mat, M, o_train, o_test)
    sha = ds.sha256_file(mat)
    monkeypatch.setitem(ds.DATASETS, "douban", dataclasses.replace(
        ds.DATASETS["douban"], sha256=sha, file_sha256={"training_test_dataset.mat": sha}))
    d = ds.load_dataset("douban", tmp_path / "cache", download=True, base_url=base)
    assert d.name == "douban" and d.rating_scale == (0.5, 5.0)
    assert len(requests) == 1


def test_download_unreachable(tmp_path):
    # Port 9 on localhost (discard) is closed in test environments: a quick connection refusal.
    with pytest.raises(DataError, match="download of http://127.0.0.1:9/.* failed"):
        ds.load_dataset("ml-1m", tmp_path, download=True, base_url="http://127.0.0.1:9")
