"""Denormal floats flushed to zero on every CPU thread that computes, while training runs.

Why: after pre-training, fine-tuning saturates sigmoid units (the global kernel's first step, RESULTS.md), so
their outputs and the gradients through them reach float32's denormal range (below 1.2e-38). x86 cores do
arithmetic on denormals through a slow microcode path: on ML-100K a fine-tuning pass is ~25% slower, most of
it in the GEMMs. TensorFlow -- the original GLocal-K's framework -- flushes denormals to zero in all its
compute threads; torch leaves the CPU's default. ``torch.set_flush_denormal`` sets the flag (FTZ and DAZ in
MXCSR) of the calling thread only, while torch's products run on an OpenMP team: ``flushed`` sets and then
restores it on the calling thread and on every thread of that team, through libgomp's ``GOMP_parallel`` (the
team's threads are kept and reused by later parallel regions). Without libgomp (other platforms or OpenMP
runtimes) only the calling thread is switched, which is still correct, only slower.

The flag changes results only where a value would be a denormal: every such value becomes 0.
"""

from __future__ import annotations

import ctypes
import functools
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

_TEAM_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


# A float32 denormal (~1e-39) made from its bits: a float conversion would itself be flushed under FTZ.
_DENORMAL_BITS = 0x000AE398


def _thread_flushes() -> bool:
    """Whether the calling thread flushes denormals (a tiny op runs on the thread that calls it)."""
    x = torch.tensor([_DENORMAL_BITS], dtype=torch.int32).view(torch.float32)
    return float(x * 1.0) == 0.0


@functools.cache
def _libgomp() -> ctypes.CDLL | None:
    """torch's own OpenMP runtime (already loaded; the same library, hence the same thread team), or None.
    Looked up once per process: the loaded libraries do not change."""
    maps = Path("/proc/self/maps")
    if not maps.exists():
        return None
    paths = sorted(set(re.findall(r"(/\S*libgomp[^/\s]*\.so[^/\s]*)", maps.read_text())))
    if not paths:
        return None
    try:
        lib = ctypes.CDLL(paths[0])
        lib.GOMP_parallel.argtypes = [_TEAM_CALLBACK, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
        lib.GOMP_parallel.restype = None
    except (OSError, AttributeError):
        return None
    return lib


def _on_team(fn) -> list:
    """Run ``fn()`` once on each thread of torch's OpenMP team (the calling thread included); their results."""
    results = []
    lib = _libgomp()
    if lib is None or torch.get_num_threads() <= 1:
        return [fn()]

    def each(_data) -> None:
        results.append(fn())

    callback = _TEAM_CALLBACK(each)  # kept referenced while the team runs it
    lib.GOMP_parallel(callback, None, torch.get_num_threads(), 0)
    return results


@contextmanager
def flushed() -> Iterator[None]:
    """Flush denormals to zero on the calling thread and torch's CPU threads for the block; afterwards every
    thread flushes as it did before (a library call leaves the process as it found it)."""
    before = dict(_on_team(lambda: (threading.get_ident(), _thread_flushes())))
    _on_team(lambda: torch.set_flush_denormal(True))
    try:
        yield
    finally:
        _on_team(lambda: torch.set_flush_denormal(before.get(threading.get_ident(), False)))
