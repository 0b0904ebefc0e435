"""``glocalk serve``: a saved model over HTTP (FastAPI + uvicorn; ``pip install 'glocalk[serve]'``)."""

from __future__ import annotations

import argparse
import logging

from glocalk.cli.options import positive_int
from glocalk.estimator import UNKNOWN_POLICIES
from glocalk.serve.server import ServeOptions, serve
from glocalk.serve.service import Limits

DEFAULTS = Limits()


def port(text: str) -> int:
    """An argparse type: a TCP port, 0..65535 (0: any free port)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number 0..65535, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0..65535, got {value}")
    return value


def positive_seconds(text: str) -> float:
    """An argparse type: a number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def register(sub) -> None:
    """Add the ``serve`` subcommand to the ``glocalk`` parser."""
    p = sub.add_parser(
        "serve", help="serve a saved model over HTTP (FastAPI; pip install 'glocalk[serve]')",
        description="Serve MODEL_DIR (written by glocalk fit) over HTTP: GET /health, GET /metadata, POST /predict, "
                    "GET /users/{id}/recommendations?k=&exclude_seen=, POST /recommendations (a new user's ratings); "
                    "OpenAPI docs at /docs. `kill -HUP PID` reloads MODEL_DIR: the new model is checked first and "
                    "swapped in without failing requests in flight; a model that does not load is refused and the "
                    "old one keeps serving. Ids the model did not see follow its --unknown policy.")
    p.add_argument("model_dir", metavar="MODEL_DIR", help="the model directory to serve")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=port, default=8000, help="TCP port (default 8000)")
    p.add_argument("--watch", type=positive_seconds, default=None, metavar="SECONDS",
                   help="also reload when MODEL_DIR's files change, checking every SECONDS (default: SIGHUP only)")
    p.add_argument("--max-batch", type=positive_int, default=DEFAULTS.max_pairs,
                   help=f"most (user, item) pairs in one POST /predict (default {DEFAULTS.max_pairs})")
    p.add_argument("--max-k", type=positive_int, default=DEFAULTS.max_k,
                   help=f"most recommendations in one answer (default {DEFAULTS.max_k})")
    p.add_argument("--unknown", choices=UNKNOWN_POLICIES, default=None,
                   help="ids absent from the training data: 'error' answers 404 naming them, 'baseline' answers with "
                        "the user + item bias model (default: the model's own policy, 'error' for glocalk fit's)")
    p.add_argument("--access-log", action="store_true", help="log one line per request (costs throughput)")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    """``glocalk serve``: load the model (errors before listening), then serve until Ctrl-C or SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
    limits = Limits(max_pairs=args.max_batch, max_k=args.max_k)
    serve(args.model_dir, ServeOptions(host=args.host, port=args.port, watch=args.watch,
                                       access_log=args.access_log, unknown=args.unknown, limits=limits))
    return 0
