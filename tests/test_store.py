"""Model directories: round trip, atomic replacement, and every corruption raising CheckpointError.

The pickle test writes a payload whose unpickling would create a marker file (checked to be live
with pickle.loads elsewhere) in place of weights.safetensors: loading must neither run it nor
succeed.
"""

from __future__ import annotations

import builtins
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from glocalk.errors import CheckpointError, OutputError
from glocalk.store import (
    FORMAT_VERSION,
    META,
    WEIGHTS,
    load_dir,
    remove_dir,
    replace_dir,
    save_dir,
    write_atomic,
    write_json_atomic,
)


def sample_tensors():
    gen = torch.Generator().manual_seed(0)
    return {
        "hidden.0.W": torch.randn(5, 3, generator=gen),
        "hidden.0.b": torch.randn(3, generator=gen),
        "scalar64": torch.tensor(1.5, dtype=torch.float64),
        "ints": torch.arange(7, dtype=torch.int64),
        "noncontig": torch.randn(4, 6, generator=gen).T,
    }


def test_round_trip(tmp_path):
    tensors = sample_tensors()
    meta = {"kind": "test", "config": {"n_hid": 4, "lr": 0.5}, "arr": np.array([1, 2, 3]),
            "path": Path("/some/where"), "history": [{"epoch": 1, "rmse": 0.9}]}
    out = save_dir(tmp_path / "model", tensors, meta, extra_files={"README.txt": "hello"})
    assert out == tmp_path / "model" and out.is_dir()
    assert (out / "README.txt").read_text() == "hello"
    loaded, meta2 = load_dir(out)
    assert set(loaded) == set(tensors)
    for k, t in tensors.items():
        assert loaded[k].dtype == t.dtype and torch.equal(loaded[k], t), f"tensor {k} changed in the round trip"
    assert meta2["format_version"] == FORMAT_VERSION
    assert meta2["config"] == meta["config"] and meta2["history"] == meta["history"]
    assert meta2["arr"] == [1, 2, 3] and meta2["path"] == "/some/where"
    # No temporary siblings are left behind.
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_save_replaces_existing_directory(tmp_path):
    save_dir(tmp_path / "m", {"a": torch.zeros(2)}, {"v": 1}, extra_files={"old.txt": "x"})
    save_dir(tmp_path / "m", {"b": torch.ones(3)}, {"v": 2}, owned={"old.txt"})
    tensors, meta = load_dir(tmp_path / "m")
    assert set(tensors) == {"b"} and meta["v"] == 2
    assert not (tmp_path / "m" / "old.txt").exists(), "the new directory replaces the old one entirely"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"], "no .old or temporary directory is left"


def test_save_never_deletes_a_file_it_did_not_write(tmp_path):
    # A model directory the user put a file into (here: the ratings being trained on).
    save_dir(tmp_path / "m", {"a": torch.zeros(2)}, {"v": 1})
    (tmp_path / "m" / "ratings.csv").write_text("user,item,rating\n")
    with pytest.raises(OutputError, match=r"not a glocalk model directory.*ratings\.csv"):
        save_dir(tmp_path / "m", {"b": torch.ones(3)}, {"v": 2})
    assert (tmp_path / "m" / "ratings.csv").read_text() == "user,item,rating\n"
    assert load_dir(tmp_path / "m")[1]["v"] == 1, "the refused save leaves the directory as it was"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    with pytest.raises(OutputError, match="ratings.csv"):
        remove_dir(tmp_path / "m", {META, WEIGHTS})
    assert (tmp_path / "m" / "ratings.csv").exists()
    (tmp_path / "m" / "ratings.csv").unlink()
    remove_dir(tmp_path / "m", {META, WEIGHTS})
    assert not (tmp_path / "m").exists()


def test_replace_dir_of_a_file_or_under_a_file(tmp_path):
    (tmp_path / "f").write_text("mine")
    with pytest.raises(OutputError, match="not a directory"):
        replace_dir(tmp_path / "f", lambda tmp: None, {"x"})
    with pytest.raises(OSError) as e:  # the system's error, naming the path (the CLI maps it to a message)
        replace_dir(tmp_path / "f" / "sub", lambda tmp: None, {"x"})
    assert str(tmp_path / "f") in str(e.value)
    assert (tmp_path / "f").read_text() == "mine"


def test_write_atomic_file(tmp_path):
    target = tmp_path / "out" / "r.json"
    write_json_atomic(target, {"a": np.arange(2), "p": Path("/x")})
    assert json.loads(target.read_text()) == {"a": [0, 1], "p": "/x"}

    def crash(tmp):
        tmp.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, crash)
    assert json.loads(target.read_text()) == {"a": [0, 1], "p": "/x"}, "a failed write keeps the old file"
    assert [p.name for p in target.parent.iterdir()] == ["r.json"], "no temporary file is left"
    with pytest.raises(IsADirectoryError) as e:
        write_json_atomic(tmp_path / "out", {})
    assert e.value.filename2 == str(tmp_path / "out") and [p.name for p in target.parent.iterdir()] == ["r.json"]
    with pytest.raises(OSError):
        write_json_atomic(target / "under-a-file.json", {})


def test_failed_save_leaves_previous_directory(tmp_path):
    save_dir(tmp_path / "m", {"a": torch.zeros(2)}, {"v": 1})
    with pytest.raises(TypeError):
        save_dir(tmp_path / "m", {"a": torch.ones(2)}, {"bad": object()})  # not JSON-serialisable
    tensors, meta = load_dir(tmp_path / "m")
    assert meta["v"] == 1 and torch.equal(tensors["a"], torch.zeros(2)), "the previous save must survive"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"], "the temporary directory is cleaned up"


def test_missing_directory_and_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_dir(tmp_path / "nope")
    save_dir(tmp_path / "m", {"a": torch.zeros(2)}, {})
    (tmp_path / "m" / WEIGHTS).unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_dir(tmp_path / "m")
    save_dir(tmp_path / "m2", {"a": torch.zeros(2)}, {})
    (tmp_path / "m2" / META).unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_dir(tmp_path / "m2")


def test_missing_directory_hints_at_interrupted_save(tmp_path):
    (tmp_path / ".m.old").mkdir()
    with pytest.raises(CheckpointError, match="interrupted save"):
        load_dir(tmp_path / "m")


@pytest.mark.parametrize("keep", [0, 5, 8, 40, -1])
def test_truncated_weights_raise(tmp_path, keep):
    d = save_dir(tmp_path / "m", sample_tensors(), {})
    raw = (d / WEIGHTS).read_bytes()
    cut = raw[:keep] if keep >= 0 else raw[:-1]
    (d / WEIGHTS).write_bytes(cut)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_dir(d)


def test_garbage_weights_raise(tmp_path):
    d = save_dir(tmp_path / "m", sample_tensors(), {})
    (d / WEIGHTS).write_bytes(b"\x00" * 3 + b"not a safetensors file at all" * 10)
    with pytest.raises(CheckpointError):
        load_dir(d)


@pytest.mark.parametrize("text", ["{not json", '{"format_version": 1,', "", "<non-utf8>"])
def test_corrupt_json_raises(tmp_path, text):
    d = save_dir(tmp_path / "m", sample_tensors(), {})
    if text == "<non-utf8>":
        (d / META).write_bytes(b"\xff\xfe\x00garbage")  # not UTF-8
    else:
        (d / META).write_text(text)
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_dir(d)


@pytest.mark.parametrize("meta", [[], {"format_version": 99}, {"no_version": True}, "1"])
def test_wrong_format_version_raises(tmp_path, meta):
    d = save_dir(tmp_path / "m", sample_tensors(), {})
    (d / META).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="format_version"):
        load_dir(d)


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.exec, (f"open({self.marker!r}, 'w').close()",))


def test_pickle_in_place_of_weights_is_not_executed(tmp_path):
    # The payload is live: plain unpickling creates its marker.
    probe = tmp_path / "probe_marker"
    pickle.loads(pickle.dumps(_Payload(probe)))
    assert probe.exists(), "test setup: the pickle payload should create its marker when unpickled"

    marker = tmp_path / "marker_created_by_unpickling"
    d = save_dir(tmp_path / "m", sample_tensors(), {})
    for writer in ("pickle", "torch"):
        if writer == "pickle":
            (d / WEIGHTS).write_bytes(pickle.dumps(_Payload(marker)))
        else:
            torch.save({"w": _Payload(marker)}, d / WEIGHTS)  # torch's zip format with a pickle inside
        with pytest.raises(CheckpointError):
            load_dir(d)
        assert not marker.exists(), f"loading a {writer} file ran code from it"
