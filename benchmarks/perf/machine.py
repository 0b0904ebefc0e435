"""Memory of this and other processes, and the description of the machine a run measured on."""

from __future__ import annotations

import os
import platform
import resource
import sys
from pathlib import Path

import numpy as np
import scipy
import torch


def proc_rss_mb(pid: int | str = "self") -> float:
    """Resident set of a process (default this one), MB (Linux /proc; 0 if it is gone or elsewhere)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def peak_rss_mb() -> float:
    """High-water mark of this process's resident set, MB (ru_maxrss is KB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def meminfo_kb(field: str) -> int | None:
    """One field of /proc/meminfo in KB (None where unknown)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def mem_available_mb() -> float | None:
    """The kernel's estimate of memory available to new work, MB (None where unknown)."""
    kb = meminfo_kb("MemAvailable")
    return None if kb is None else kb / 2**10


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_description() -> dict | None:
    """Name, memory, count and CUDA version of the first GPU, or None."""
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return {"name": props.name, "memory_gb": props.total_memory / 2**30, "count": torch.cuda.device_count(),
            "cuda": torch.version.cuda}


def machine_description(device: str) -> dict:
    """CPU model, cores, RAM, load, library versions and threads, GPU if any."""
    ram_kb = meminfo_kb("MemTotal")
    return {"cpu": cpu_model(), "logical_cores": os.cpu_count(), "ram_gb": None if ram_kb is None else ram_kb / 2**20,
            "os": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "scipy": scipy.__version__, "torch_threads": torch.get_num_threads(),
            "mkl": bool(torch.backends.mkl.is_available()), "gpu": gpu_description(), "device": device,
            "loadavg_start": list(os.getloadavg())}
