"""What ``glocalk serve`` answers, without a web framework: a model directory held for requests.

``ModelHolder`` keeps the loaded model as ONE immutable ``Loaded`` record. A request reads
``holder.current`` once and uses that record to the end, so a reload (``ModelHolder.reload``)
only rebinds the attribute: requests already running finish on the old model, later ones get
the new one, none is dropped or fails. A new model is loaded and checked (``load_checked``)
before the swap; a directory that does not load, or scores NaN, is refused and the old model
keeps serving (the refusal is reported by ``health``).

The operations (``predict``, ``recommend``, ``recommend_new``, ``metadata``, ``health``) take
raw ids as strings (the ids of the training file as text) and return JSON-ready dicts; a problem
the client can fix is a ``ServeError`` with an HTTP status and a message naming it. Unknown ids
follow the model's ``unknown`` policy (``GLocalKRecommender``'s ``--unknown``): "error" answers
404 naming them, "baseline" answers with the bias model. No operation takes a file path.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from glocalk.errors import ConfigError, DataError
from glocalk.estimator import UNKNOWN_POLICIES, GLocalKRecommender
from glocalk.store import META, WEIGHTS, versions

log = logging.getLogger("glocalk.serve")

NOT_FOUND = 404
UNPROCESSABLE = 422


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (bounds the work and memory one client can cause)."""

    max_pairs: int = 10_000  # (user, item) pairs in one POST /predict
    max_k: int = 1_000  # recommendations in one answer
    max_ratings: int = 10_000  # ratings of a new user in one POST /recommendations
    max_id_length: int = 256  # characters of one id
    max_body_bytes: int = 4 * 1024 * 1024  # a request body larger than this is refused (413)


class ServeError(Exception):
    """A request the service refuses: an HTTP status, a short code and a message naming the problem."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Loaded:
    """One loaded model and what is known about it; never changed after it is built."""

    model: GLocalKRecommender
    path: Path  # the directory as given (reloads read it again)
    resolved: Path  # where it pointed when loaded (a symlink's target)
    generation: int  # 1 for the model loaded at start, +1 per accepted reload
    loaded_at: str  # ISO 8601, UTC
    users: dict[str, Any] = field(repr=False)  # raw id as text -> raw id (as the model holds it)
    items: dict[str, Any] = field(repr=False)
    trained_with: dict = field(default_factory=dict)  # model.json's "versions": the libraries that trained it
    unknown: str = "error"  # the unknown-id policy served: --unknown, else the model's own
    signature: tuple = ()  # the directory's files as they were just before the load (``signature``)


def now() -> str:
    """The time in ISO 8601, UTC, to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def load_checked(path: str | Path) -> GLocalKRecommender:
    """Load a model directory and score one pair and one ranking with it, so that a model whose
    weights give NaN is refused at load time, not at its first request."""
    model = GLocalKRecommender.load(path)
    model.predict(model.user_ids_[:1], model.item_ids_[:1])
    model.recommend(model.user_ids_[0], k=1)
    return model


def load(path: str | Path, generation: int = 1, unknown: str | None = None) -> Loaded:
    """``load_checked`` plus the record the service keeps; errors as ``GLocalKRecommender.load``.
    ``unknown``: the unknown-id policy ("error" or "baseline"; None: the model's own)."""
    if unknown not in (None, *UNKNOWN_POLICIES):
        raise ConfigError(f"unknown (--unknown) must be one of {UNKNOWN_POLICIES}, got {unknown!r}")
    path = Path(path)
    files = signature(path)  # before reading: a change during the load is seen as a change afterwards
    model = load_checked(path)
    return Loaded(model=model, path=path, resolved=path.resolve(), generation=generation, loaded_at=now(),
                  users={str(u): u for u in model.user_ids_}, items={str(i): i for i in model.item_ids_},
                  trained_with=_trained_with(path), unknown=unknown or model.unknown,
                  signature=files)


def _trained_with(path: Path) -> dict:
    """model.json's "versions" entry (already validated as JSON by the load; {} if absent)."""
    try:
        found = json.loads((path / META).read_text()).get("versions", {})
    except (OSError, ValueError, AttributeError):  # replaced since the load: not worth failing for
        return {}
    return found if isinstance(found, dict) else {}


class ModelHolder:
    """The model being served and its reloads (one at a time; requests never wait for one)."""

    def __init__(self, path: str | Path, limits: Limits | None = None, unknown: str | None = None) -> None:
        self.limits = limits or Limits()
        self.unknown = unknown
        self.current: Loaded = load(path, unknown=unknown)
        self.last_reload: dict | None = None  # the outcome of the latest reload, for /health
        self._reloading = threading.Lock()

    def reload(self) -> bool:
        """Load the model directory again and swap it in if it loads and scores; else keep the old one.

        Returns whether the new model is now served. Any failure is refused, not raised: the
        service must keep answering whatever the directory holds.
        """
        with self._reloading:
            old = self.current
            started = time.perf_counter()
            try:
                new = load(old.path, old.generation + 1, self.unknown)
            except Exception as e:  # noqa: BLE001 - any failure refuses the new model, and says why
                self.last_reload = {"ok": False, "at": now(), "error": f"{type(e).__name__}: {e}",
                                    "generation": old.generation}
                log.error("reload of %s refused, still serving generation %d: %s", old.path, old.generation, e)
                return False
            self.current = new  # the swap: one attribute binding, atomic for readers
            self.last_reload = {"ok": True, "at": now(), "generation": new.generation,
                                "seconds": round(time.perf_counter() - started, 3)}
            log.info("reloaded %s (generation %d, %d users, %d items)", new.path, new.generation,
                     len(new.users), len(new.items))
            return True

    def reload_in_background(self) -> threading.Thread:
        """Start ``reload`` in a daemon thread (a signal handler must return at once)."""
        thread = threading.Thread(target=self.reload, name="glocalk-reload", daemon=True)
        thread.start()
        return thread


class Watcher:
    """Reload when the model directory's files change: polls their (inode, mtime, size) every
    ``interval`` seconds and reloads once a change has held still for one more poll (so a directory
    being replaced is not read half-written). Files refused once are not tried again until they change."""

    def __init__(self, holder: ModelHolder, interval: float) -> None:
        self.holder = holder
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="glocalk-watch", daemon=True)

    def start(self) -> Watcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        pending = refused = None
        while not self._stop.wait(self.interval):
            now_sig = signature(self.holder.current.path)
            if now_sig in (self.holder.current.signature, refused):
                pending = None
            elif now_sig == pending:  # changed, and unchanged since the last poll
                if not self.holder.reload():
                    refused = now_sig
                pending = None
            else:
                pending = now_sig


def signature(path: Path) -> tuple:
    """(inode, mtime, size) of the model directory's files; None entries for missing ones."""
    out = []
    for name in (META, WEIGHTS):
        try:
            st = (path / name).stat()
            out.append((st.st_ino, st.st_mtime_ns, st.st_size))
        except OSError:
            out.append(None)
    return tuple(out)


# -- the operations -------------------------------------------------------------------------------


def _unknown(loaded: Loaded, kind: str, ids: Sequence[str]) -> list[str]:
    known = loaded.users if kind == "user" else loaded.items
    return list(dict.fromkeys(i for i in ids if i not in known))


def _refuse_unknown(loaded: Loaded, kind: str, ids: Sequence[str]) -> None:
    """ServeError 404 naming the unknown ids when the model's policy is "error"."""
    missing = _unknown(loaded, kind, ids)
    if missing and loaded.unknown == "error":
        shown = ", ".join(repr(m) for m in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ServeError(NOT_FOUND, f"unknown_{kind}",
                         f"unknown {kind} id(s) {shown}: not in the model's training data (this service answers "
                         "unknown ids with an error; `glocalk serve --unknown baseline` answers them with the bias "
                         "model)")


def _as_ids(loaded: Loaded, kind: str, ids: Sequence[str]) -> np.ndarray:
    """The ids as the model holds them (text stays text for an unknown one). The estimator would match
    text to int ids too, but through pandas' string methods: several milliseconds per request."""
    known = loaded.users if kind == "user" else loaded.items
    found = [known.get(i, i) for i in ids]
    if all(type(f) is type(found[0]) for f in found):
        return np.array(found)
    return np.array(found, dtype=object)  # an int-id model asked for an unknown (text) id


def predict(loaded: Loaded, users: Sequence[str], items: Sequence[str]) -> list[dict]:
    """``{"user", "item", "rating"}`` per pair, in the data's scale, clipped to it."""
    _refuse_unknown(loaded, "user", users)
    _refuse_unknown(loaded, "item", items)
    ratings = loaded.model.predict(_as_ids(loaded, "user", users), _as_ids(loaded, "item", items),
                                   unknown="baseline")
    return [{"user": u, "item": i, "rating": float(r)} for u, i, r in zip(users, items, ratings, strict=True)]


def ranked(frame: pd.DataFrame) -> list[dict]:
    """A recommendation DataFrame (item, score, rank) as ``{"item", "score", "rank"}`` records, ids as text."""
    return [{"item": str(i), "score": float(s), "rank": int(r)}
            for i, s, r in zip(frame["item"], frame["score"], frame["rank"], strict=True)]


def recommend(loaded: Loaded, user: str, k: int, exclude_seen: bool) -> list[dict]:
    """The top ``k`` items for a known user (or, with the "baseline" policy, any user)."""
    _refuse_unknown(loaded, "user", [user])
    frame = loaded.model.recommend(loaded.users.get(user, user), k=k, exclude_seen=exclude_seen, unknown="baseline")
    return ranked(frame)


def new_user_id(loaded: Loaded) -> Any:
    """An id no user of the model has, of the model's id type, for the request's new user."""
    ids = loaded.model.user_ids_
    if ids.dtype.kind in "iu":
        return int(ids.max()) + 1
    candidate = "new user"
    while candidate in loaded.users:
        candidate += "+"
    return candidate


def recommend_new(loaded: Loaded, items: Sequence[str], ratings: Sequence[float], k: int) -> dict:
    """The top ``k`` items for a new user from the ratings they gave: the model is folded in for this
    request (``GLocalKRecommender.fold_in``: the new user's output column fitted to their ratings,
    everything trained frozen), asked, and dropped; nothing is stored.

    The rated items are left out of the answer. An item the model does not know is refused (404)
    under the "error" policy; under "baseline" it is ignored (listed as ``ignored``), and a user with
    no usable rating gets the bias model's ranking. A repeated item or a rating outside the model's
    scale is a 422 naming it.
    """
    model = loaded.model
    repeated = [i for i, n in Counter(items).items() if n > 1]
    if repeated:
        raise ServeError(UNPROCESSABLE, "repeated_item", f"item(s) {', '.join(map(repr, repeated[:5]))} rated more "
                                                         "than once: give each item one rating")
    lo, hi = model.rating_scale_
    off = [(i, r) for i, r in zip(items, ratings, strict=True) if not lo <= r <= hi]
    if off:
        raise ServeError(UNPROCESSABLE, "rating_out_of_scale", f"rating {off[0][1]:g} of item {off[0][0]!r} lies "
                                                               f"outside the model's rating scale {lo:g}..{hi:g}")
    _refuse_unknown(loaded, "item", items)
    ignored = _unknown(loaded, "item", items)
    keep = [(loaded.items[i], r) for i, r in zip(items, ratings, strict=True) if i in loaded.items]
    user = new_user_id(loaded)
    if keep:
        frame = pd.DataFrame({"user": [user] * len(keep), "item": [i for i, _ in keep],
                              "rating": [r for _, r in keep]})
        try:
            model = model.fold_in(frame)
        except DataError as e:  # what fold-in cannot use, named (the checks above leave little)
            raise ServeError(UNPROCESSABLE, "fold_in_refused", str(e)) from e
        ranking = model.recommend(user, k=k, exclude_seen=True)
    else:  # nothing the model knows: the bias model's ranking, as for any unknown user
        ranking = model.recommend(user, k=k, exclude_seen=False, unknown="baseline")
    return {"items": ranked(ranking), "ignored": ignored}


def metadata(loaded: Loaded, limits: Limits) -> dict:
    """What the served model is: hyperparameters, training fingerprint, metrics, sizes, versions."""
    model = loaded.model
    return {
        "model_dir": str(loaded.path), "resolved_dir": str(loaded.resolved),
        "generation": loaded.generation, "loaded_at": loaded.loaded_at,
        "n_users": len(model.user_ids_), "n_items": len(model.item_ids_),
        "n_ratings": int(model.model_.seen.nnz), "rating_scale": list(model.rating_scale_),
        "unknown": loaded.unknown, "fallback": model.fallback,
        "hyperparameters": model.model_.hyperparameters, "estimator": model.get_params(),
        "members": model.members_, "fingerprint": model.fingerprint_, "metrics": model.metrics_,
        "execution": model.model_.execution,
        "versions": {"trained_with": loaded.trained_with, "serving": versions()},
        "limits": limits.__dict__,
    }


def health(holder: ModelHolder) -> dict:
    """Liveness and which model answers: its directory, generation and the last reload's outcome."""
    loaded = holder.current
    return {"status": "ok", "model_dir": str(loaded.path), "generation": loaded.generation,
            "loaded_at": loaded.loaded_at, "fingerprint": loaded.model.fingerprint_,
            "last_reload": holder.last_reload}
