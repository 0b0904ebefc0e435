"""``glocalk serve``: the real server (``python -m glocalk serve`` on 127.0.0.1) with tiny models trained here.

Every endpoint and validation error over HTTP, a reload under traffic (no failed request), a bad model
refused while the old one keeps serving, and schema-driven fuzzing of the served OpenAPI (no 5xx).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd
import pytest

NEEDS = "the serve tests need the optional extra 'serve' (pip install -e '.[serve,test]')"
httpx = pytest.importorskip("httpx", reason=NEEDS)
pytest.importorskip("fastapi", reason=NEEDS)
pytest.importorskip("uvicorn", reason=NEEDS)

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from glocalk.cli.app import main  # noqa: E402
from glocalk.data.synthetic import example_ratings  # noqa: E402
from glocalk.errors import CheckpointError, ConfigError, DataError  # noqa: E402
from glocalk.estimator import GLocalKRecommender  # noqa: E402
from glocalk.serve import service  # noqa: E402
from glocalk.serve.http import build_app  # noqa: E402
from glocalk.serve.service import ModelHolder, Watcher  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"
TINY = dict(n_hid=8, n_dim=3, epoch_p=2, epoch_f=2, iter_p=3, iter_f=3, threads=1)
MAX_BATCH = 50  # the servers here run with --max-batch 50, so the limit is cheap to cross


def int_ids(df: pd.DataFrame) -> pd.DataFrame:
    """u001 -> 1, m0001 -> 1001: a model with int ids, served (as ML-1M's) to clients that send text."""
    return df.assign(user=df["user"].str[1:].astype(int), item=df["item"].str[1:].astype(int) + 1000)


@pytest.fixture(scope="module")
def ratings() -> tuple[pd.DataFrame, pd.DataFrame]:
    train, test = example_ratings(n_users=30, n_items=40, density=0.35, seed=3)
    return int_ids(train), int_ids(test)


@pytest.fixture(scope="module")
def models(ratings, tmp_path_factory) -> dict:
    """Model a (unknown="error"), model b (another seed, unknown="baseline") and a corrupt copy of a."""
    root = tmp_path_factory.mktemp("serve")
    train, _ = ratings
    a = GLocalKRecommender("ml-100k", seed=1, **TINY).fit(train)
    b = GLocalKRecommender("ml-100k", seed=2, unknown="baseline", **TINY).fit(train)
    a.save(root / "a")
    b.save(root / "b")
    a.save(root / "bad")
    weights = root / "bad" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated
    return {"a": a, "b": b, "root": root}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def point(link: Path, target: Path) -> None:
    """Make ``link`` a symlink to ``target``, atomically (how a deployment swaps model directories)."""
    tmp = link.with_name(link.name + ".new")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, link)


class Server:
    """``python -m glocalk serve MODEL_DIR`` in a subprocess on a free port of 127.0.0.1."""

    def __init__(self, model_dir: Path, log: Path, *extra: str) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "glocalk", "serve", str(model_dir), "--port", self.url.rsplit(":", 1)[1],
                 "--max-batch", str(MAX_BATCH), *extra], env=env, stdout=out, stderr=subprocess.STDOUT)
        self.client = httpx.Client(base_url=self.url, timeout=30.0)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the server exited: {log.read_text()[-3000:]}"
            try:
                if self.client.get("/health").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError(f"the server did not start: {log.read_text()[-3000:]}")

    def close(self) -> None:
        self.client.close()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


@pytest.fixture(scope="module")
def server(models):
    s = Server(models["root"] / "a", models["root"] / "server.log")
    yield s
    s.close()


def error_of(response, status: int) -> str:
    """The JSON error's message, after checking the status and the error shape."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body["error"], str) and isinstance(body["message"], str)
    return body["message"]


# -- the endpoints --------------------------------------------------------------------------------


def test_health_and_metadata_describe_the_served_model(server, models, ratings):
    train, _ = ratings
    health = server.client.get("/health").json()
    assert health["status"] == "ok" and health["generation"] == 1 and health["last_reload"] is None
    assert health["model_dir"] == str(models["root"] / "a")
    meta = server.client.get("/metadata").json()
    assert meta["n_users"] == train["user"].nunique() == 30 and meta["n_items"] == train["item"].nunique()
    assert meta["n_ratings"] == len(train) and meta["rating_scale"] == [1.0, 5.0]
    assert meta["hyperparameters"]["n_hid"] == 8 and meta["estimator"]["unknown"] == "error"
    assert meta["fingerprint"] == health["fingerprint"] == models["a"].fingerprint_
    assert meta["versions"]["trained_with"]["glocalk"] == meta["versions"]["serving"]["glocalk"]
    assert meta["limits"]["max_pairs"] == MAX_BATCH and meta["metrics"] is None


def test_predict_returns_each_pair_in_order(server, models, ratings):
    _, test = ratings
    pairs = [{"user": str(u), "item": str(i)} for u, i in zip(test["user"][:20], test["item"][:20], strict=True)]
    got = server.client.post("/predict", json={"pairs": pairs})
    assert got.status_code == 200, got.text
    predictions = got.json()["predictions"]
    assert [(p["user"], p["item"]) for p in predictions] == [(q["user"], q["item"]) for q in pairs]
    rating = np.array([p["rating"] for p in predictions])
    assert np.all((rating >= 1) & (rating <= 5))
    # The same numbers as the model in Python (the service is a shell over it).
    assert rating == pytest.approx(models["a"].predict(test["user"][:20], test["item"][:20]), abs=1e-12)


def test_recommendations_rank_unseen_items_by_predicted_rating(server, models, ratings):
    train, _ = ratings
    user = int(train["user"].iloc[0])
    seen = {str(i) for i in train.loc[train["user"] == user, "item"]}
    items = server.client.get(f"/users/{user}/recommendations", params={"k": 5}).json()["items"]
    assert [r["rank"] for r in items] == [1, 2, 3, 4, 5]
    assert not seen & {r["item"] for r in items}
    scores = [r["score"] for r in items]
    assert scores == sorted(scores, reverse=True)
    # Independent reference: predict every unseen item, the 5 highest ratings are the scores listed.
    unseen = [i for i in models["a"].item_ids_ if str(i) not in seen]
    best = np.sort(models["a"].predict([user] * len(unseen), unseen))[::-1][:5]
    assert scores == pytest.approx(best, abs=1e-5)  # float32 sums in another order
    # Default k is 10; k beyond the unseen items gives them all; exclude_seen=false may list seen items.
    assert len(server.client.get(f"/users/{user}/recommendations").json()["items"]) == 10
    everything = server.client.get(f"/users/{user}/recommendations", params={"k": 1000}).json()["items"]
    assert len(everything) == len(unseen) == 40 - len(seen)
    with_seen = server.client.get(f"/users/{user}/recommendations",
                                  params={"k": 1000, "exclude_seen": "false"}).json()["items"]
    assert {r["item"] for r in with_seen} == {str(i) for i in models["a"].item_ids_}


def test_unknown_ids_are_404_naming_them_under_the_error_policy(server):
    message = error_of(server.client.get("/users/9999/recommendations"), 404)
    assert "'9999'" in message and "unknown user" in message
    message = error_of(server.client.post("/predict", json={"pairs": [{"user": "1", "item": "77"},
                                                                      {"user": "1", "item": "m0001"}]}), 404)
    assert "unknown item" in message and "'77'" in message and "'m0001'" in message
    # An id is an id, never a file: a path-like one is just unknown.
    message = error_of(server.client.post("/predict", json={"pairs": [{"user": "../../etc/passwd", "item": "1001"}]}),
                       404)
    assert "unknown user" in message and "'../../etc/passwd'" in message
    # "01" is not the canonical text of the int id 1.
    assert "'01'" in error_of(server.client.get("/users/01/recommendations"), 404)


LONG = "x" * 257
VALIDATION = [  # (method, path, body, where the message points)
    ("GET", "/users/1/recommendations?k=0", None, "query.k"),
    ("GET", f"/users/1/recommendations?k={1001}", None, "query.k"),
    ("GET", "/users/1/recommendations?k=ten", None, "query.k"),
    ("GET", "/users/1/recommendations?exclude_seen=maybe", None, "query.exclude_seen"),
    ("GET", f"/users/{LONG}/recommendations", None, "path.user_id"),
    ("POST", "/predict", {}, "body.pairs: Field required"),
    ("POST", "/predict", {"pairs": []}, "body.pairs"),
    ("POST", "/predict", {"pairs": [{"user": "1", "item": "1001"}] * (MAX_BATCH + 1)}, "at most 50"),
    ("POST", "/predict", {"pairs": [{"user": 1, "item": "1001"}]}, "body.pairs.0.user: Input should be a valid string"),
    ("POST", "/predict", {"pairs": [{"user": "1"}]}, "body.pairs.0.item: Field required"),
    ("POST", "/predict", {"pairs": [{"user": "1", "item": ""}]}, "body.pairs.0.item"),
    ("POST", "/predict", {"pairs": [{"user": LONG, "item": "1001"}]}, "body.pairs.0.user"),
    ("POST", "/predict", {"pairs": [{"user": "1", "item": "1001"}], "file": "/etc/passwd"}, "body.file: Extra"),
    ("POST", "/predict", [{"user": "1", "item": "1001"}], "body"),
    ("POST", "/predict", b'{"pairs": [', "not valid JSON"),
    ("POST", "/recommendations", {"ratings": []}, "body.ratings"),
    ("POST", "/recommendations", {"ratings": [{"item": "1001", "rating": "high"}]}, "body.ratings.0.rating"),
    ("POST", "/recommendations", {"ratings": [{"item": "1001", "rating": 4}], "k": 0}, "body.k"),
    ("POST", "/recommendations", b'{"ratings": [{"item": "1001", "rating": NaN}]}', "body.ratings.0.rating"),
]


@pytest.mark.parametrize("method, path, body, where", VALIDATION, ids=[f"{m} {p[:40]} {str(b)[:40]}"
                                                                      for m, p, b, _ in VALIDATION])
def test_invalid_requests_are_422_naming_the_problem(server, method, path, body, where):
    if isinstance(body, bytes):
        response = server.client.request(method, path, content=body, headers={"content-type": "application/json"})
    else:
        response = server.client.request(method, path, json=body)
    assert where in error_of(response, 422)


def test_other_refusals_are_json_too(server):
    assert "no such endpoint" in error_of(server.client.get("/files/etc/passwd"), 404)
    assert "does not accept PUT" in error_of(server.client.put("/predict", json={}), 405)
    big = b'{"pairs": [' + b" " * (5 * 1024 * 1024) + b"]}"
    assert "exceeds the limit" in error_of(server.client.post("/predict", content=big,
                                                             headers={"content-type": "application/json"}), 413)
    form = server.client.post("/predict", content=b'{"pairs": []}', headers={"content-type": "text/plain"})
    assert "Content-Type: application/json" in error_of(form, 422)


def test_openapi_and_docs_are_served(server):
    spec = server.client.get("/openapi.json").json()
    assert {"/health", "/metadata", "/predict", "/users/{user_id}/recommendations", "/recommendations"} <= set(
        spec["paths"])
    assert server.client.get("/docs").status_code == 200
    # No request can name a file: the only inputs are ids, ratings, k and exclude_seen.
    parameters = {p["name"] for path in spec["paths"].values() for op in path.values()
                  for p in op.get("parameters", [])}
    fields = {name for schema in spec["components"]["schemas"].values() for name in schema.get("properties", {})}
    assert parameters == {"user_id", "k", "exclude_seen"}
    assert fields == {"pairs", "user", "item", "ratings", "rating", "k", "predictions", "items", "score", "rank",
                      "ignored", "error", "message", "details"}


def test_post_recommendations_folds_in_a_new_user_per_request(server, models, ratings):
    train, _ = ratings
    rated = {"1001": 5.0, "1002": 1.0, "1003": 4.0, "1010": 2.0}
    body = {"ratings": [{"item": i, "rating": r} for i, r in rated.items()], "k": 6}
    got = server.client.post("/recommendations", json=body)
    assert got.status_code == 200, got.text
    items = got.json()["items"]
    assert [r["rank"] for r in items] == list(range(1, 7)) and not set(rated) & {r["item"] for r in items}
    scores = [r["score"] for r in items]
    assert scores == sorted(scores, reverse=True) and all(1 <= x <= 5 for x in scores)
    assert got.json()["ignored"] == []
    # The same answer as folding the user in from Python and asking for the unseen top 6.
    given = pd.DataFrame({"user": 31, "item": [int(i) for i in rated], "rating": list(rated.values())})
    new = models["a"].fold_in(given)
    expected = new.recommend(31, k=6)
    assert [r["item"] for r in items] == [str(i) for i in expected["item"]]
    assert scores == pytest.approx(expected["score"].to_numpy(), abs=1e-9)
    # Nothing is stored: the model still has its 30 users, and the fold-in's user is unknown.
    assert server.client.get("/metadata").json()["n_users"] == 30
    assert "unknown user" in error_of(server.client.get("/users/31/recommendations"), 404)


def test_post_recommendations_refuses_what_fold_in_cannot_use(server):
    def post(*pairs):
        return server.client.post("/recommendations", json={"ratings": [{"item": i, "rating": r} for i, r in pairs]})

    assert "'1001'" in error_of(post(("1001", 4.0), ("1001", 5.0)), 422)
    assert "1..5" in error_of(post(("1001", 4.0), ("1002", 9.0)), 422)
    assert "'77'" in error_of(post(("1001", 4.0), ("77", 5.0)), 404)  # the policy is "error"


def test_new_users_unknown_items_are_ignored_under_the_baseline_policy(models):
    lenient = service.load(models["root"] / "a", unknown="baseline")
    got = service.recommend_new(lenient, ["1001", "77", "1002"], [5.0, 4.0, 1.0], 3)
    assert got["ignored"] == ["77"] and len(got["items"]) == 3
    assert not {"1001", "1002"} & {r["item"] for r in got["items"]}
    # No rating the model can use: the bias model's ranking (as for any unknown user).
    only_unknown = service.recommend_new(lenient, ["77"], [5.0], 3)
    expected = models["a"].recommend("nobody", k=3, unknown="baseline")
    assert [r["item"] for r in only_unknown["items"]] == [str(i) for i in expected["item"]]


# -- schema-driven fuzzing ---------------------------------------------------------------------------

def nested(inner: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20), nested,
                    max_leaves=12)
# Derandomized (the same examples every run) and no example database written into the work tree.
FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))


def from_schema(schema: dict, spec: dict) -> st.SearchStrategy:
    """Values valid under ``schema``, a JSON schema of the served OpenAPI (the parts pydantic writes:
    $ref, anyOf, object, array, string, integer, number, boolean; their size and range bounds)."""
    if "$ref" in schema:
        return from_schema(spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]], spec)
    if "anyOf" in schema:
        return st.one_of([from_schema(s, spec) for s in schema["anyOf"]])
    kind = schema.get("type")
    if kind == "object":
        fields = {name: from_schema(s, spec) for name, s in schema.get("properties", {}).items()}
        required = set(schema.get("required", []))
        return st.fixed_dictionaries({k: v for k, v in fields.items() if k in required},
                                     optional={k: v for k, v in fields.items() if k not in required})
    if kind == "array":
        return st.lists(from_schema(schema["items"], spec), min_size=schema.get("minItems", 0),
                        max_size=min(schema.get("maxItems", 8), 8))
    if kind == "string":
        return st.text(min_size=schema.get("minLength", 0), max_size=schema.get("maxLength", 40))
    if kind == "integer":
        return st.integers(schema.get("minimum"), schema.get("maximum"))
    if kind == "number":
        return st.floats(allow_nan=False, allow_infinity=False)
    if kind == "boolean":
        return st.booleans()
    raise AssertionError(f"the fuzzer does not know this schema: {schema}")


def body_schema(spec: dict, path: str) -> dict:
    """The request body's JSON schema from the served OpenAPI."""
    return spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]


def test_the_fuzzer_draws_valid_bodies(spec):
    """The schema-driven strategy is checked itself: what it draws satisfies the schema's bounds."""
    @FUZZ
    @given(body=from_schema(body_schema(spec, "/recommendations"), spec))
    def draw(body):
        assert set(body) <= {"ratings", "k"} and 1 <= len(body["ratings"]) and 1 <= body.get("k", 10) <= 1000
        assert all(set(r) == {"item", "rating"} and 1 <= len(r["item"]) <= 256 for r in body["ratings"])

    draw()


def check_answer(response) -> None:
    """No 5xx, and every answer is JSON: an error in the one error shape, or a result."""
    assert response.status_code < 500, response.text
    body = response.json()
    if response.status_code != 200:
        assert isinstance(body["error"], str) and isinstance(body["message"], str)


@pytest.fixture(scope="module")
def spec(server) -> dict:
    return server.client.get("/openapi.json").json()


@pytest.mark.parametrize("path", ["/predict", "/recommendations"])
def test_fuzz_post_bodies_never_5xx(server, spec, ratings, path):
    """Bodies drawn from the endpoint's own schema (ids drawn from the schema or the model's), or any JSON."""
    train = ratings[0]
    known = st.sampled_from([str(u) for u in train["user"].unique()] + [str(i) for i in train["item"].unique()])
    pair = st.fixed_dictionaries({"user": known, "item": known})
    rating = st.fixed_dictionaries({"item": known, "rating": st.floats(allow_nan=False, allow_infinity=False)})
    bodies = st.one_of(from_schema(body_schema(spec, path), spec), JSON,
                       st.fixed_dictionaries({"pairs": st.lists(pair, min_size=1, max_size=60)}),
                       st.fixed_dictionaries({"ratings": st.lists(rating, min_size=1, max_size=5),
                                              "k": st.integers(-2, 1002)}))

    @FUZZ
    @given(body=bodies)
    def post(body):
        check_answer(server.client.post(path, json=body))

    post()


def test_fuzz_recommendation_queries_never_5xx(server, ratings):
    users = st.one_of(st.sampled_from([str(u) for u in ratings[0]["user"].unique()]), st.text(min_size=1, max_size=300))
    ks = st.one_of(st.integers(-5, 2000), st.text(max_size=5))
    flags = st.sampled_from(["true", "false", "1", "0", "yes", "off", "maybe", ""])

    @FUZZ
    @given(user=users, k=ks, exclude_seen=flags)
    def get(user, k, exclude_seen):
        response = server.client.get(f"/users/{quote(user, safe='')}/recommendations",
                                     params={"k": k, "exclude_seen": exclude_seen})
        check_answer(response)
        if response.status_code == 200:
            ranks = [r["rank"] for r in response.json()["items"]]
            assert ranks == list(range(1, len(ranks) + 1)) and len(ranks) <= int(k)

    get()


# -- reload -------------------------------------------------------------------------------------


class Traffic:
    """Threads sending predict and recommendation requests back to back; every answer must be a 200."""

    def __init__(self, url: str, users: list[str], items: list[str], n_threads: int = 3) -> None:
        self.failures: list[str] = []
        self.count = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(url, users, items, k)) for k in range(n_threads)]

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def _run(self, url: str, users: list[str], items: list[str], k: int) -> None:
        rng = np.random.default_rng(k)
        with httpx.Client(base_url=url, timeout=30.0) as client:
            while not self._stop.is_set():
                user = users[rng.integers(len(users))]
                try:
                    if k % 2:
                        r = client.get(f"/users/{user}/recommendations", params={"k": 3})
                    else:
                        r = client.post("/predict", json={"pairs": [{"user": user, "item": i} for i in items[:5]]})
                    if r.status_code != 200:
                        self.failures.append(f"{r.status_code} {r.text[:200]}")
                except httpx.HTTPError as e:
                    self.failures.append(f"{type(e).__name__}: {e}")
                self.count += 1


def wait_for(server: Server, condition, what: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = server.client.get("/health").json()
        if condition(health):
            return health
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {timeout} s; /health: {health}; log: "
                         f"{server.log.read_text()[-2000:]}")


def test_sighup_swaps_the_model_under_traffic_and_refuses_a_bad_one(models, ratings):
    root = models["root"]
    live = root / "live"
    point(live, root / "a")
    server = Server(live, root / "reload.log")
    train, _ = ratings
    users = [str(u) for u in sorted(train["user"].unique())]
    items = [str(i) for i in sorted(train["item"].unique())]
    pair = {"pairs": [{"user": users[0], "item": items[0]}]}
    try:
        before = server.client.post("/predict", json=pair).json()["predictions"][0]["rating"]
        assert before == pytest.approx(models["a"].predict(int(users[0]), int(items[0])), abs=1e-12)
        with Traffic(server.url, users, items) as traffic:
            time.sleep(0.3)
            point(live, root / "b")
            server.proc.send_signal(signal.SIGHUP)
            health = wait_for(server, lambda h: h["generation"] == 2, "the reload to model b")
            assert health["last_reload"]["ok"] is True
            time.sleep(0.3)
            point(live, root / "bad")
            server.proc.send_signal(signal.SIGHUP)
            health = wait_for(server, lambda h: h["last_reload"]["ok"] is False, "the refusal of the bad model")
            time.sleep(0.3)
        assert traffic.failures == [] and traffic.count > 20
        # The bad model was refused, naming its file; model b still answers.
        assert health["generation"] == 2 and "weights.safetensors" in health["last_reload"]["error"]
        after = server.client.post("/predict", json=pair).json()["predictions"][0]["rating"]
        assert after == pytest.approx(models["b"].predict(int(users[0]), int(items[0])), abs=1e-12) != before
        # Model b's policy is "baseline": an unknown user is answered (by the bias model), not refused.
        unknown = server.client.get("/users/9999/recommendations", params={"k": 3})
        assert unknown.status_code == 200 and len(unknown.json()["items"]) == 3
        assert server.client.get("/metadata").json()["unknown"] == "baseline"
    finally:
        server.close()


def test_watch_reloads_when_the_directory_changes(models):
    root = models["root"]
    live = root / "watched"
    point(live, root / "a")
    holder = ModelHolder(live)
    watcher = Watcher(holder, interval=0.05).start()
    try:
        point(live, root / "b")
        deadline = time.monotonic() + 30
        while holder.current.generation == 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert holder.current.generation == 2 and holder.current.model.unknown == "baseline"
        point(live, root / "bad")
        while holder.last_reload["ok"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert holder.last_reload["ok"] is False and holder.current.generation == 2
    finally:
        watcher.stop()


# -- string ids, and the command line ------------------------------------------------------------


def test_string_id_models_are_served_by_their_ids(tmp_path):
    train, _ = example_ratings(n_users=20, n_items=25, density=0.4, seed=1)
    model = GLocalKRecommender("ml-100k", **TINY).fit(train)
    model.save(tmp_path / "m")
    loaded = service.load(tmp_path / "m")
    got = service.predict(loaded, ["u001", "u002"], ["m0001", "m0002"])
    assert [g["rating"] for g in got] == pytest.approx(model.predict(["u001", "u002"], ["m0001", "m0002"]))
    top = service.recommend(loaded, "u001", 3, True)
    assert [r["item"] for r in top] == list(model.recommend("u001", k=3)["item"])
    with pytest.raises(service.ServeError, match="'1'"):
        service.recommend(loaded, "1", 3, True)
    # --unknown baseline overrides the model's policy: an unknown user gets the bias model's ranking.
    lenient = service.load(tmp_path / "m", unknown="baseline")
    assert lenient.unknown == "baseline" and loaded.unknown == "error"
    expected = model.recommend("nobody", k=3, unknown="baseline")
    assert [r["item"] for r in service.recommend(lenient, "nobody", 3, True)] == list(expected["item"])
    with pytest.raises(ConfigError, match="--unknown"):
        service.load(tmp_path / "m", unknown="skip")


def test_cli_refuses_a_missing_model_before_listening(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "nowhere"), "--port", str(free_port())]) == 2
    assert "model directory not found" in capsys.readouterr().err
    for bad in (["--port", "70000"], ["--unknown", "skip"], ["--watch", "0"], ["--max-k", "0"]):
        with pytest.raises(SystemExit):
            main(["serve", str(tmp_path), *bad])
        assert bad[0] in capsys.readouterr().err


def test_library_errors_that_reach_the_shell_are_json(models, monkeypatch):
    """A safety net behind the service's own checks: a DataError is the client's (422), a model that
    scores NaN the server's (500), both JSON with the library's message (in-process: the patch needs it)."""
    holder = ModelHolder(models["root"] / "a")
    app = build_app(holder)

    async def post() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            return await client.post("/predict", json={"pairs": [{"user": "1", "item": "1001"}]})

    for error, status in ((DataError("bad pair"), 422), (CheckpointError("NaN from the model in X"), 500)):
        def fail(*args, error=error, **kwargs):
            raise error

        monkeypatch.setattr(holder.current.model, "predict", fail)
        response = asyncio.run(post())
        assert response.status_code == status and response.json()["message"] == str(error)
