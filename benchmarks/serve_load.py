"""Load test of ``glocalk serve`` on 127.0.0.1: throughput and latency with 1, 10, 100 concurrent clients.

::

    python benchmarks/serve_load.py MODEL_DIR                 # starts `glocalk serve MODEL_DIR` on a free port
    python benchmarks/serve_load.py MODEL_DIR --url http://127.0.0.1:8000   # an already running server

For each endpoint (GET /users/{id}/recommendations?k=10, POST /predict with --pairs pairs) and each
client count, N asyncio clients (each its own httpx client and connection) send requests back to back for
--seconds; a random known user (and items) per request, seeded. Reported: requests/s, p50/p99/max
latency in ms, and errors (a non-200 answer or a failed connection), with the load average before
and after (the client shares the machine's cores with the server). Writes --out (JSON) and the
same figures as a Markdown table beside it (.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from glocalk.estimator import GLocalKRecommender
from glocalk.store import versions

# health: the HTTP stack alone, for reference; new_user: POST /recommendations (a fold-in per request)
ENDPOINTS = ("recommendations", "predict", "health", "new_user")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir: str, port: int) -> subprocess.Popen:
    """``python -m glocalk serve MODEL_DIR`` in a subprocess, with this interpreter and path."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    return subprocess.Popen([sys.executable, "-m", "glocalk", "serve", model_dir, "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_ready(url: str, proc: subprocess.Popen | None, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"the server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"no answer from {url}/health within {timeout} s")


def request_maker(endpoint: str, users: np.ndarray, items: np.ndarray, n_pairs: int, seed: int):
    """A function building (method, path, json) for the next request of one client."""
    rng = np.random.default_rng(seed)

    def make() -> tuple[str, str, dict | None]:
        if endpoint == "health":
            return "GET", "/health", None
        if endpoint == "new_user":
            rated = items[rng.choice(len(items), size=n_pairs, replace=False)]
            return "POST", "/recommendations", {"ratings": [{"item": str(i), "rating": float(rng.integers(1, 6))}
                                                            for i in rated], "k": 10}
        if endpoint == "recommendations":
            return "GET", f"/users/{users[rng.integers(len(users))]}/recommendations?k=10", None
        u = users[rng.integers(len(users), size=n_pairs)]
        i = items[rng.integers(len(items), size=n_pairs)]
        return "POST", "/predict", {"pairs": [{"user": str(a), "item": str(b)} for a, b in zip(u, i, strict=True)]}

    return make


class Clock:
    """Starts the measurement once every client is connected (connecting 100 clients takes a while)."""

    def __init__(self, n_clients: int, seconds: float) -> None:
        self.waiting = n_clients
        self.seconds = seconds
        self.started = asyncio.Event()
        self.start = self.stop_at = 0.0

    def ready(self) -> None:
        self.waiting -= 1
        if self.waiting == 0:
            self.start = time.perf_counter()
            self.stop_at = self.start + self.seconds
            self.started.set()


async def client(url: str, make, clock: Clock, latencies: list[float], errors: list[str]) -> None:
    """One client: its own connection (a shared httpx pool slows down with many connections), requests back to
    back while the clock runs."""
    async with httpx.AsyncClient(base_url=url, limits=httpx.Limits(max_connections=1), timeout=60.0) as http:
        await http.get("/health")  # the connection is up before the clock starts
        clock.ready()
        await clock.started.wait()
        await requests(http, make, clock.stop_at, latencies, errors)


async def requests(http: httpx.AsyncClient, make, stop_at: float, latencies: list[float], errors: list[str]) -> None:
    while time.perf_counter() < stop_at:
        method, path, body = make()
        start = time.perf_counter()
        try:
            response = await http.request(method, path, json=body)
            ok = response.status_code == 200
            if not ok:
                errors.append(f"{response.status_code}: {response.text[:200]}")
        except httpx.HTTPError as e:
            ok = False
            errors.append(f"{type(e).__name__}: {e}")
        if ok:
            latencies.append(time.perf_counter() - start)


async def run_level(url: str, endpoint: str, n_clients: int, seconds: float, ids: tuple, n_pairs: int) -> dict:
    """N clients for ``seconds``: requests/s, latency percentiles, errors."""
    latencies: list[float] = []
    errors: list[str] = []
    clock = Clock(n_clients, seconds)
    await asyncio.gather(*(client(url, request_maker(endpoint, *ids, n_pairs, seed=k), clock, latencies, errors)
                           for k in range(n_clients)))
    elapsed = time.perf_counter() - clock.start
    ms = np.array(latencies) * 1e3
    row = {"endpoint": endpoint, "clients": n_clients, "seconds": round(elapsed, 2), "requests": len(latencies),
           "errors": len(errors), "req_per_s": round(len(latencies) / elapsed, 1),
           "p50_ms": round(float(np.percentile(ms, 50)), 2) if len(ms) else None,
           "p99_ms": round(float(np.percentile(ms, 99)), 2) if len(ms) else None,
           "max_ms": round(float(ms.max()), 2) if len(ms) else None,
           "first_errors": errors[:3]}
    if endpoint in ("predict", "new_user"):
        row["pairs_per_request"] = n_pairs
    return row


def cpu_seconds(pid: int | None) -> float | None:
    """CPU time (user + system) of process ``pid`` so far (Linux /proc); None where unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, TypeError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def per_request_cpu(row: dict, server: tuple, client: tuple) -> None:
    """CPU milliseconds per answered request of the server and of this client over the row: what the
    machine's cores spend per request, which a busy machine inflates much less than latency."""
    n = max(row["requests"], 1)
    if None not in server:
        row["server_cpu_ms"] = round((server[1] - server[0]) / n * 1e3, 2)
    row["client_cpu_ms"] = round((client[1] - client[0]) / n * 1e3, 2)


def markdown(result: dict) -> str:
    lines = [f"Model: `{result['model_dir']}` ({result['n_users']} users x {result['n_items']} items, "
             f"n_hid {result['n_hid']}); {result['seconds']} s per row; recommendations: GET "
             "/users/{id}/recommendations?k=10; predict: POST /predict with "
             f"{result['pairs']} pairs; new_user: POST /recommendations with {result['pairs']} ratings, k=10.", "",
             "| endpoint | clients | requests/s | p50 ms | p99 ms | max ms | requests | errors | server CPU ms/req "
             "| client CPU ms/req |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['endpoint']} | {r['clients']} | {r['req_per_s']} | {r['p50_ms']} | {r['p99_ms']} | "
                     f"{r['max_ms']} | {r['requests']} | {r['errors']} | {r.get('server_cpu_ms', '-')} | "
                     f"{r['client_cpu_ms']} |")
    lines += ["", f"Load average (1, 5, 15 min) before: {result['load_before']}, after: {result['load_after']}; "
                  f"{result['machine']}.", "", f"Command: `{result['command']}`"]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model_dir", help="a model directory written by glocalk fit")
    p.add_argument("--url", default=None, help="a running server (default: start one on a free port)")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 10, 100])
    p.add_argument("--seconds", type=float, default=10.0, help="duration of each (endpoint, clients) row")
    p.add_argument("--pairs", type=int, default=100,
                   help="(user, item) pairs per POST /predict; ratings per POST /recommendations (new_user)")
    p.add_argument("--endpoints", nargs="+", choices=ENDPOINTS, default=list(ENDPOINTS[:2]))
    p.add_argument("--out", default="docs/benchmarks/serve_load.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model = GLocalKRecommender.load(args.model_dir)
    ids = (np.asarray(model.user_ids_), np.asarray(model.item_ids_))
    proc = None
    url = args.url
    if url is None:
        url = f"http://127.0.0.1:{free_port()}"
        proc = start_server(args.model_dir, int(url.rsplit(":", 1)[1]))
    try:
        wait_ready(url, proc)
        load_before = [round(x, 2) for x in os.getloadavg()]
        rows = []
        for endpoint in args.endpoints:
            for n in args.clients:
                pid = None if proc is None else proc.pid
                server, client = [cpu_seconds(pid)], [time.process_time()]
                rows.append(asyncio.run(run_level(url, endpoint, n, args.seconds, ids, args.pairs)))
                per_request_cpu(rows[-1], (*server, cpu_seconds(pid)), (*client, time.process_time()))
                print(json.dumps(rows[-1]), file=sys.stderr)
        load_after = [round(x, 2) for x in os.getloadavg()]
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    result = {"model_dir": args.model_dir, "n_users": len(ids[0]), "n_items": len(ids[1]),
              "n_hid": model.model_.hyperparameters.get("n_hid"), "seconds": args.seconds, "pairs": args.pairs,
              "rows": rows, "load_before": load_before, "load_after": load_after,
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, server and client on the same machine",
              "versions": versions(), "command": "python benchmarks/serve_load.py " + " ".join(sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
