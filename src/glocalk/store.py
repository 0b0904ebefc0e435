"""Files glocalk writes: the one atomic writer (files and directories), model directories
(tensors in safetensors, so no code runs on load, plus plain JSON metadata) and provenance
(versions, device).

Atomic. A file or directory is written into a temporary sibling and renamed into place, so a
crash mid-write leaves the previous version or the new one, never half of one.

Only what we wrote. Replacing a directory replaces a directory glocalk wrote, and nothing else:
``replace_dir`` and ``remove_dir`` refuse (``OutputError``) a directory holding any entry whose
name is not one the caller owns (a user's file put into a model directory, the ratings file
being trained on), so a user's file is never deleted; nothing is merged into a directory either.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import uuid
from collections.abc import Callable, Collection
from pathlib import Path

import numpy as np
import scipy
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from glocalk.errors import CheckpointError, OutputError
from glocalk.version import __version__

WEIGHTS = "weights.safetensors"
META = "model.json"
FORMAT_VERSION = 1


# -- the one atomic writer -------------------------------------------------------------------


def write_atomic(path: str | Path, fill: Callable[[Path], object]) -> Path:
    """Write file ``path`` atomically: ``fill(tmp)`` writes a temporary sibling, which is synced
    and renamed over ``path``. An unwritable path raises the system's OSError, which names it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp: its file is private (0600); open(..., "x") keeps the user's umask.
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    open(tmp, "x").close()
    try:
        fill(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | Path, obj: dict) -> None:
    """Write ``obj`` as indented JSON (``json_default`` encodes arrays and paths), atomically."""
    text = json.dumps(obj, indent=2, default=json_default) + "\n"
    write_atomic(path, lambda tmp: tmp.write_text(text))


def foreign_entries(path: str | Path, owned: Collection[str]) -> list[str]:
    """Names in directory ``path`` that are not in ``owned`` (files glocalk did not write there)."""
    path = Path(path)
    if not path.exists():
        return []
    if not path.is_dir():
        raise OutputError(f"{path} exists and is not a directory")
    return sorted(p.name for p in path.iterdir() if p.name not in owned)


def check_replaceable(path: str | Path, owned: Collection[str], what: str = "directory") -> None:
    """Raise OutputError unless ``path`` is absent, or a directory holding only entries named in ``owned``."""
    foreign = foreign_entries(path, owned)
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise OutputError(f"{path} is not a glocalk {what}: it holds files glocalk did not write ({shown}); "
                          "glocalk replaces only what it wrote -- choose another path or move those files")


def replace_dir(path: str | Path, fill: Callable[[Path], object], owned: Collection[str],
                what: str = "directory") -> Path:
    """Make directory ``path`` hold exactly what ``fill(tmp)`` writes into a temporary sibling, atomically.

    An existing ``path`` is replaced only when every entry in it is named in ``owned`` (else
    OutputError, and nothing is touched); the new files must be named in ``owned`` too. An
    unwritable path raises the system's OSError, which names it.
    """
    path = Path(path)
    check_replaceable(path, owned, what)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        fill(tmp)
        stray = foreign_entries(tmp, owned)
        if stray:
            raise ValueError(f"replace_dir: wrote {stray}, which are not in owned={sorted(owned)}")
        for child in tmp.iterdir():
            _fsync(child)
        old = None
        if path.exists():
            # A kill between the two renames leaves only the previous version, as ".NAME.old".
            old = path.with_name(f".{path.name}.old")
            remove_dir(old, owned, what)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def remove_dir(path: str | Path, owned: Collection[str], what: str = "directory") -> None:
    """Delete directory ``path`` (if present) when every entry in it is named in ``owned``; else OutputError."""
    path = Path(path)
    check_replaceable(path, owned, what)
    if path.exists():
        shutil.rmtree(path)


def _fsync(path: Path) -> None:
    if path.is_file():
        with open(path, "rb") as f:
            os.fsync(f.fileno())


# -- model directories -------------------------------------------------------------------------


def save_dir(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict,
             extra_files: dict[str, str] | None = None, owned: Collection[str] = ()) -> Path:
    """Atomically write ``tensors`` and ``meta`` (plus small text files) as directory ``path``.

    An existing ``path`` is replaced only if it holds nothing but files of these names (and
    ``owned``); anything else there makes this an OutputError before anything is written.
    """
    extra_files = dict(extra_files or {})
    names = {WEIGHTS, META, *extra_files, *owned}
    text = json.dumps({"format_version": FORMAT_VERSION, **meta}, indent=2, default=json_default)

    def fill(tmp: Path) -> None:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / WEIGHTS))
        (tmp / META).write_text(text)
        for name, content in extra_files.items():
            (tmp / name).write_text(content)

    return replace_dir(path, fill, names, "model directory")


def load_dir(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a directory written by ``save_dir``; raises CheckpointError naming the problem."""
    path = Path(path)
    if not path.is_dir():
        old = path.with_name(f".{path.name}.old")
        hint = f" (an interrupted save left {old}; rename it to recover)" if old.is_dir() else ""
        raise CheckpointError(f"model directory not found: {path}{hint}")
    meta_path, weights_path = path / META, path / WEIGHTS
    for p in (meta_path, weights_path):
        if not p.is_file():
            raise CheckpointError(f"{path} is not a glocalk model directory: {p.name} is missing")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{meta_path} is corrupt (not valid JSON): {e}") from e
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{meta_path}: unsupported format_version {version!r}"
            f" (this glocalk reads version {FORMAT_VERSION})"
        )
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights_path} is corrupt or truncated: {e}") from e
    return tensors, meta


def json_default(o: object) -> object:
    """The one JSON encoder of glocalk's files: arrays and NumPy scalars as lists/numbers, paths as text."""
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot store {type(o).__name__} in a JSON file")


def versions() -> dict[str, str]:
    """Versions of the libraries a result depends on."""
    return {"glocalk": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "scipy": scipy.__version__, "python": platform.python_version()}


def device_description(device: str, threads: int | None = None) -> str:
    """The device a run used, in words; ``threads``: the torch threads it was given (default: torch's now)."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, " \
           f"{threads or torch.get_num_threads()} torch threads)"
