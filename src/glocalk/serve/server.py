"""Run the service with uvicorn; reload the model on SIGHUP or when its directory changes."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import signal
from dataclasses import dataclass, field
from pathlib import Path

from glocalk.errors import ConfigError
from glocalk.serve.http import build_app
from glocalk.serve.service import Limits, ModelHolder, Watcher

MISSING = ("glocalk serve needs FastAPI and uvicorn, the optional extra 'serve': "
           "pip install 'glocalk[serve]' (missing: {name})")


@dataclass(frozen=True)
class ServeOptions:
    """Where to listen and how to reload."""

    host: str = "127.0.0.1"
    port: int = 8000
    watch: float | None = None  # poll the model directory every so many seconds; None: SIGHUP only
    access_log: bool = False  # one line per request (costs throughput)
    unknown: str | None = None  # the unknown-id policy: "error", "baseline"; None: the model's own
    limits: Limits = field(default_factory=Limits)


def check_installed() -> None:
    """ConfigError naming the missing optional dependency, before any model is loaded."""
    for name in ("fastapi", "uvicorn", "pydantic"):
        if importlib.util.find_spec(name) is None:
            raise ConfigError(MISSING.format(name=name))


def one_blas_thread() -> contextlib.AbstractContextManager:
    """NumPy's BLAS on one thread while serving: requests run in parallel threads already, and a
    multi-threaded matrix-vector product per request makes them wait on each other (several times slower
    under load). A no-op without threadpoolctl."""
    if importlib.util.find_spec("threadpoolctl") is None:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def serve(model_dir: str | Path, options: ServeOptions) -> None:
    """Load ``model_dir`` (errors before anything listens), then serve it until SIGINT/SIGTERM.

    SIGHUP reloads the directory in a background thread: the new model is checked and swapped in,
    or refused with the old one still serving (``ModelHolder.reload``).
    """
    check_installed()
    import uvicorn

    holder = ModelHolder(model_dir, options.limits, options.unknown)
    log = logging.getLogger("glocalk.serve")
    if hasattr(signal, "SIGHUP"):  # uvicorn handles SIGINT and SIGTERM only; SIGHUP is ours
        signal.signal(signal.SIGHUP, lambda signum, frame: holder.reload_in_background())
    watcher = Watcher(holder, options.watch).start() if options.watch else None
    loaded = holder.current
    log.info("serving %s (%d users, %d items) on http://%s:%d (docs at /docs)", loaded.path, len(loaded.users),
             len(loaded.items), options.host, options.port)
    config = uvicorn.Config(build_app(holder), host=options.host, port=options.port,
                            access_log=options.access_log, log_level="info")
    try:
        with one_blas_thread():
            uvicorn.Server(config).run()
    finally:
        if watcher is not None:
            watcher.stop()
