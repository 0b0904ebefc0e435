"""Files glocalk writes: atomic JSON, provenance (versions, device) and model directories:
tensors in safetensors (no code runs on load) plus plain JSON metadata.

A directory is written into a temporary sibling and renamed into place, so a crash
mid-save leaves either the previous directory or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from pathlib import Path

import numpy as np
import scipy
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from glocalk.errors import CheckpointError
from glocalk.version import __version__

WEIGHTS = "weights.safetensors"
META = "model.json"
FORMAT_VERSION = 1


def save_dir(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict,
             extra_files: dict[str, str] | None = None) -> Path:
    """Atomically write ``tensors`` and ``meta`` (plus small text files) as directory ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / WEIGHTS))
        with open(tmp / META, "w") as f:
            json.dump({"format_version": FORMAT_VERSION, **meta}, f, indent=2, default=json_default)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        for child in tmp.iterdir():
            with open(child, "rb") as f:
                os.fsync(f.fileno())
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


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


def write_json_atomic(path: str | Path, obj: dict) -> None:
    """Write JSON via a temporary file and rename, so a crash never leaves a truncated file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, default=json_default)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
