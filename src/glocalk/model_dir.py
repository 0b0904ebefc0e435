"""The saved-model format: a directory ``glocalk fit`` and ``GLocalKRecommender.save`` write.

``weights.safetensors`` holds each member's weights (``member{k}.{name}``), the training matrix the
model reads (``input.indptr/indices/data``) and the validation ratings held out of it (``val.*``),
so the model is complete without the original file; ``model.json`` holds the hyperparameters, the
raw id maps (with their type), the rating scale and offset, the library versions, the training
data's fingerprint, the members' selected epochs and the metrics. Written atomically by
``store.save_dir``; read by ``store.load_dir`` (safetensors and JSON: loading never runs code).

Loading trusts nothing in ``model.json``: every field is checked (type, range, and the sizes
the hyperparameters give against the shapes of the stored tensors) before any model is built,
and each problem is a CheckpointError naming the file and the field. This module knows the
format, not the network: the estimator checks every tensor's name and shape against a network
built on PyTorch's meta device (no memory) before building the real one. Weight values are not
scanned; a non-finite score is an error where it is computed (naming the model directory).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from glocalk.data.matrix import RatingMatrix
from glocalk.data.scaling import RatingMap
from glocalk.errors import CheckpointError, DataError
from glocalk.store import load_dir, save_dir, versions

MODEL_KIND = "glocalk-model"
# Hyperparameters that fix the shapes of the weights: required in model.json.
SHAPE_KEYS = ("n_hid", "n_dim", "n_layers", "gk_size")
EXECUTIONS = ("dense", "sparse")  # model.json's "path"
FALLBACK_ANSWERS = ("glocalk", "biases", "blend")  # model.json's "fallback.answer"
FALLBACK_TENSORS = ("fallback.mu", "fallback.b_item", "fallback.b_user")


@dataclass
class Member:
    """One trained model of an ensemble: its seed, the selected (stage, epoch), weights and epoch log."""

    seed: int
    stage: int
    epoch: int
    state: dict[str, torch.Tensor]
    history: list[dict] = field(default_factory=list)


@dataclass
class Fallback:
    """``fallback="baseline"``'s or ``"blend"``'s choice, made on the validation ratings: the model that
    answers ("glocalk", "biases" or "blend") and the validation-chosen bias model (internal units)."""

    answer: str
    mu: float
    b_item: np.ndarray  # (n_items,)
    b_user: np.ndarray  # (n_users,)
    info: dict = field(default_factory=dict)  # the regularisation chosen, both validation RMSEs
    alpha: float | None = None
    """With answer "blend": GLocal-K's weight in alpha * GLocal-K + (1 - alpha) * biases, in [0, 1]
    (model.json's "fallback.alpha")."""


@dataclass
class Folded:
    """Users and items added after training by fold-in (``glocalk.fold_in``; absent: None).

    Indices continue the trained ones: folded item k is row ``n_items + k``, folded user k column
    ``n_users + k``. Only the users' fitted columns and the bias model's new biases are stored; the
    new items' encodings are recomputed from their stored ratings (a deterministic forward pass).
    """

    user_ids: np.ndarray  # raw ids of the folded users, in index order
    item_ids: np.ndarray
    ratings: sp.csr_matrix  # (n_items + n_new_items, n_users + n_new_users), internal units: fold-in ratings only
    columns: list[tuple[np.ndarray, np.ndarray]]  # per member: the new users' W*K (n_hid, n_new_users), b; float32
    b_item: np.ndarray  # the answering bias model's biases of the new items (n_new_items,), internal units
    b_user: np.ndarray  # ... and of the new users (n_new_users,)
    info: dict = field(default_factory=dict)  # how they were fitted (model.json's "folded", besides the ids)


@dataclass
class SavedModel:
    """Everything a model directory holds (ratings in internal units: the user's plus ``offset``)."""

    input: sp.csr_matrix  # (n_items, n_users) the training matrix the members read
    val: sp.csr_matrix | None  # validation ratings held out of ``input`` (None: none)
    item_ids: np.ndarray  # index -> raw id
    user_ids: np.ndarray
    rating_scale: tuple[float, float]  # internal units: the clip range plus offset
    offset: float
    hyperparameters: dict  # the flat training parameters (presets.split_config reads them)
    members: list[Member]
    estimator: dict = field(default_factory=dict)  # the estimator's constructor arguments
    execution: str | None = None  # "dense" or "sparse" maths when serving (model.json's "path")
    metrics: dict | None = None
    fallback: Fallback | None = None  # None: GLocal-K answers (no fallback was asked for)
    folded: Folded | None = None  # users and items added by fold-in after training (None: none)
    rating_map: RatingMap = field(default_factory=RatingMap)
    """The map of the internal units onto the model's 1..5 the members were trained with (model.json's
    "rating_map"; a directory without it was trained before the map existed: the identity)."""

    @property
    def seen(self) -> sp.csr_matrix:
        """Every training rating: the input plus the validation ratings."""
        return as_csr(self.input) if self.val is None else as_csr(self.input + self.val)


def as_csr(m: sp.spmatrix) -> sp.csr_matrix:
    """``m`` as the matrices are stored: float32 CSR, explicit zeros removed, indices sorted."""
    out = sp.csr_matrix(m, dtype=np.float32)
    out.eliminate_zeros()
    out.sort_indices()
    return out


def fingerprint(m: sp.csr_matrix) -> str:
    """The content hash of a ratings matrix (``RatingMatrix.fingerprint``)."""
    return RatingMatrix(as_csr(m)).fingerprint()


# -- writing ------------------------------------------------------------------------------------


def save_model(path: str | Path, model: SavedModel, extra_files: dict[str, str] | None = None,
               owned: tuple[str, ...] = ()) -> Path:
    """Write ``model`` as directory ``path``, atomically (``store.save_dir``; ``owned``: see there)."""
    tensors: dict[str, torch.Tensor] = {}
    for k, m in enumerate(model.members):
        tensors.update({f"member{k}.{name}": t for name, t in m.state.items()})
    tensors.update(_csr_tensors("input", model.input))
    if model.val is not None:
        tensors.update(_csr_tensors("val", model.val))
    meta = {
        "kind": MODEL_KIND,
        "hyperparameters": model.hyperparameters,
        "estimator": model.estimator,
        "n_items": int(model.input.shape[0]), "n_users": int(model.input.shape[1]),
        "item_ids": _ids_to_json(model.item_ids), "user_ids": _ids_to_json(model.user_ids),
        "item_id_type": _id_type(model.item_ids), "user_id_type": _id_type(model.user_ids),
        "rating_scale": list(model.rating_scale), "offset": model.offset,
        **model.rating_map.json_entry(),
        "path": model.execution,
        "members": [{"seed": m.seed, "stage": m.stage, "epoch": m.epoch} for m in model.members],
        "history": {str(m.seed): m.history for m in model.members},
        "fingerprint": fingerprint(model.seen),
        "input_fingerprint": fingerprint(model.input),
        "metrics": model.metrics,
        "versions": versions(),
    }
    if model.fallback is not None:  # only with fallback="baseline" or "blend"
        fb = model.fallback
        meta["fallback"] = {"answer": fb.answer, **fb.info}
        if fb.alpha is not None:
            meta["fallback"]["alpha"] = fb.alpha
        tensors.update(zip(FALLBACK_TENSORS, (torch.tensor([fb.mu], dtype=torch.float64),
                                              torch.from_numpy(np.asarray(fb.b_item, dtype=np.float64)),
                                              torch.from_numpy(np.asarray(fb.b_user, dtype=np.float64))),
                           strict=True))
    if model.folded is not None:
        _save_folded(model, tensors, meta)
    return save_dir(path, tensors, meta, extra_files, owned)


def _save_folded(model: SavedModel, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """The fold-in part: its ratings, the users' columns per member and the new biases; ids in model.json."""
    f = model.folded
    for label, ids, trained in (("user", f.user_ids, model.user_ids), ("item", f.item_ids, model.item_ids)):
        if len(ids) and len(trained) and _id_type(ids) != _id_type(trained):
            raise DataError(f"folded-in {label} ids are {_id_type(ids)}s but the model's are {_id_type(trained)}s")
    tensors.update(_csr_tensors("folded.ratings", f.ratings))
    for k, (w, b) in enumerate(f.columns):
        tensors[f"folded.member{k}.w"] = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
        tensors[f"folded.member{k}.b"] = torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32))
    tensors["folded.b_item"] = torch.from_numpy(np.asarray(f.b_item, dtype=np.float64))
    tensors["folded.b_user"] = torch.from_numpy(np.asarray(f.b_user, dtype=np.float64))
    meta["folded"] = {**f.info, "user_ids": _ids_to_json(f.user_ids), "item_ids": _ids_to_json(f.item_ids),
                      "user_id_type": _id_type(model.user_ids), "item_id_type": _id_type(model.item_ids),
                      "fingerprint": fingerprint(f.ratings)}


def _csr_tensors(prefix: str, m: sp.csr_matrix) -> dict[str, torch.Tensor]:
    m = as_csr(m)
    return {f"{prefix}.indptr": torch.from_numpy(m.indptr.astype(np.int64)),
            f"{prefix}.indices": torch.from_numpy(m.indices.astype(np.int64)),
            f"{prefix}.data": torch.from_numpy(m.data.astype(np.float32))}


def _id_type(ids: np.ndarray) -> str:
    values = list(ids)
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        return "int"
    if all(isinstance(v, str) for v in values):
        return "str"
    raise DataError("ids must be all integers or all strings to be saved "
                    f"(found {sorted({type(v).__name__ for v in values})})")


def _ids_to_json(ids: np.ndarray) -> list:
    return [int(v) for v in ids] if _id_type(ids) == "int" else [str(v) for v in ids]


# -- reading ------------------------------------------------------------------------------------


def load_model(path: str | Path) -> SavedModel:
    """Read and validate a model directory; CheckpointError names the file and the field at fault."""
    path = Path(path)
    tensors, meta = load_dir(path)
    where = path / "model.json"
    if meta.get("kind") != MODEL_KIND:
        raise CheckpointError(f"{where}: not a glocalk model (kind={meta.get('kind')!r}, expected {MODEL_KIND!r})")
    try:
        return _read(path, tensors, meta)
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as e:
        detail = f"missing entry {e}" if isinstance(e, KeyError) else str(e)
        raise CheckpointError(f"{path} is incompatible or corrupt: {detail}") from e


def _read(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> SavedModel:
    where, weights = path / "model.json", path / "weights.safetensors"
    n_items = _integer(meta, "n_items", where, low=1)
    n_users = _integer(meta, "n_users", where, low=1)
    item_ids = _ids_from_json(meta["item_ids"], meta["item_id_type"], f"{where}: item_ids")
    user_ids = _ids_from_json(meta["user_ids"], meta["user_id_type"], f"{where}: user_ids")
    if len(item_ids) != n_items or len(user_ids) != n_users:
        raise CheckpointError(f"{where}: {len(item_ids)} item ids and {len(user_ids)} user ids for a "
                              f"{n_items} x {n_users} model")
    for label, ids in (("item", item_ids), ("user", user_ids)):
        if len(pd.unique(ids)) != len(ids):
            raise CheckpointError(f"{where}: the {label} ids are not unique")
    input_m = _csr_from_tensors(tensors, "input", (n_items, n_users), weights)
    val = _csr_from_tensors(tensors, "val", (n_items, n_users), weights) if "val.indptr" in tensors else None
    seen = input_m if val is None else as_csr(input_m + val)
    if fingerprint(input_m) != meta["input_fingerprint"] or fingerprint(seen) != meta["fingerprint"]:
        raise CheckpointError(f"{weights}: the stored training matrix does not match the fingerprint in {where} "
                              "(the files are corrupt or come from different models)")
    params = check_hyperparameters(meta["hyperparameters"], where)
    members = _members(meta, tensors, params, (n_items, n_users), path)
    scale, offset = _scale(meta, where)
    execution = meta.get("path")
    if execution is not None and execution not in EXECUTIONS:
        raise CheckpointError(f"{where}: path must be one of {EXECUTIONS}, got {execution!r}")
    estimator = meta.get("estimator", {})
    metrics = meta.get("metrics")
    if not isinstance(estimator, dict) or not (metrics is None or isinstance(metrics, dict)):
        raise CheckpointError(f"{where}: estimator and metrics must be JSON objects")
    return SavedModel(input=input_m, val=val, item_ids=item_ids, user_ids=user_ids, rating_scale=scale,
                      offset=offset, hyperparameters=params, members=members, estimator=dict(estimator),
                      execution=execution, metrics=metrics,
                      fallback=_fallback(meta, tensors, (n_items, n_users), path),
                      rating_map=_rating_map(meta, where),
                      folded=_folded(meta, tensors, (item_ids, user_ids), params["n_hid"], path))


def _fallback(meta: dict, tensors: dict[str, torch.Tensor], shape: tuple[int, int], path: Path) -> Fallback | None:
    """model.json's "fallback" with its tensors, checked; None for a model without one (all before issue 10)."""
    if "fallback" not in meta:
        return None
    where, weights = path / "model.json", path / "weights.safetensors"
    info = meta["fallback"]
    if not isinstance(info, dict) or info.get("answer") not in FALLBACK_ANSWERS:
        raise CheckpointError(f"{where}: fallback must be a JSON object whose answer is one of {FALLBACK_ANSWERS}")
    missing = [name for name in FALLBACK_TENSORS if name not in tensors]
    if missing:
        raise CheckpointError(f"{weights}: the fallback's bias model is missing ({', '.join(missing)})")
    mu, b_item, b_user = (tensors[name].double().numpy() for name in FALLBACK_TENSORS)
    if mu.shape != (1,) or b_item.shape != (shape[0],) or b_user.shape != (shape[1],):
        raise CheckpointError(f"{weights}: the fallback's bias model does not fit a {shape[0]} x {shape[1]} model")
    if not all(np.isfinite(a).all() for a in (mu, b_item, b_user)):
        raise CheckpointError(f"{weights}: the fallback's bias model holds NaN or infinite values")
    alpha = None
    if info["answer"] == "blend":
        value = info.get("alpha")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise CheckpointError(f"{where}: fallback.alpha (the blend's weight of GLocal-K) must be a number "
                                  f"in [0, 1], got {value!r}")
        alpha = float(value)
    rest = {k: v for k, v in info.items() if k not in ("answer", "alpha")}
    return Fallback(info["answer"], float(mu[0]), b_item, b_user, rest, alpha)


def _folded(meta: dict, tensors: dict[str, torch.Tensor], trained: tuple[np.ndarray, np.ndarray], n_hid: int,
            path: Path) -> Folded | None:
    """model.json's "folded" with its tensors, checked; None for a model without fold-in (all before issue 12)."""
    if "folded" not in meta:
        return None
    where, weights = path / "model.json", path / "weights.safetensors"
    info = meta["folded"]
    if not isinstance(info, dict):
        raise CheckpointError(f"{where}: folded must be a JSON object")
    item_ids = _ids_from_json(info["item_ids"], info["item_id_type"], f"{where}: folded.item_ids")
    user_ids = _ids_from_json(info["user_ids"], info["user_id_type"], f"{where}: folded.user_ids")
    for label, ids, old in (("item", item_ids, trained[0]), ("user", user_ids, trained[1])):
        if len(pd.unique(np.concatenate([old, ids]))) != len(old) + len(ids):
            raise CheckpointError(f"{where}: the folded-in {label} ids are not unique or repeat trained ones")
    (n_items, n_users), new = (len(trained[0]), len(trained[1])), (len(item_ids), len(user_ids))
    shape = (n_items + new[0], n_users + new[1])
    ratings = _csr_from_tensors(tensors, "folded.ratings", shape, weights)
    coo = ratings.tocoo()
    if np.any((coo.row < n_items) & (coo.col < n_users)) or fingerprint(ratings) != info["fingerprint"]:
        raise CheckpointError(f"{weights}: the folded-in ratings are corrupt (they do not match model.json's "
                              "fingerprint, or rate a trained item by a trained user)")
    columns = []
    for k in range(len(meta["members"])):
        w, b = (tensors.get(f"folded.member{k}.{name}") for name in ("w", "b"))
        if w is None or b is None or tuple(w.shape) != (n_hid, new[1]) or tuple(b.shape) != (new[1],):
            raise CheckpointError(f"{weights}: member {k}'s folded-in user columns are missing or not "
                                  f"{n_hid} x {new[1]}")
        columns.append((w.float().numpy(), b.float().numpy()))
    b_item, b_user = (tensors.get(f"folded.{name}") for name in ("b_item", "b_user"))
    if b_item is None or b_user is None or tuple(b_item.shape) != (new[0],) or tuple(b_user.shape) != (new[1],):
        raise CheckpointError(f"{weights}: the folded-in biases are missing or do not fit {new[0]} items, "
                              f"{new[1]} users")
    rest = {k: v for k, v in info.items() if k not in ("user_ids", "item_ids", "user_id_type", "item_id_type",
                                                       "fingerprint")}
    return Folded(user_ids, item_ids, ratings, columns, b_item.double().numpy(), b_user.double().numpy(), rest)


def _integer(obj: dict, key: str, where: Any, low: int = 0, label: str | None = None) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise CheckpointError(f"{where}: {label or key} must be an integer >= {low}, got {value!r}")
    return value


def _number(obj: dict, key: str, where: Any, low: float | None = None, label: str | None = None) -> float:
    value = obj.get(key)
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not ok or (low is not None and value < low):
        bound = "" if low is None else f" >= {low:g}"
        raise CheckpointError(f"{where}: {label or key} must be a finite number{bound}, got {value!r}")
    return float(value)


def check_hyperparameters(params: Any, where: Any) -> dict:
    """The hyperparameters of ``model.json``, each checked for type and range (CheckpointError naming it).

    Names unknown to this format are left to the caller (``presets.split_config`` knows them all).
    """
    if not isinstance(params, dict):
        raise CheckpointError(f"{where}: hyperparameters must be a JSON object")
    missing = [k for k in SHAPE_KEYS if k not in params]
    if missing:
        raise CheckpointError(f"{where}: hyperparameters lack {', '.join(missing)}")
    for key in SHAPE_KEYS:
        _integer(params, key, where, low=1, label=f"hyperparameters.{key}")
    for key in ("epoch_p", "epoch_f", "iter_p", "iter_f"):
        if key in params:
            _integer(params, key, where, low=0, label=f"hyperparameters.{key}")
    for key, low in (("lambda_2", 0.0), ("lambda_s", 0.0), ("dot_scale", None)):
        if key in params:
            _number(params, key, where, low=low, label=f"hyperparameters.{key}")
    if params.get("gk_norm", "paper") not in ("paper", "sqrt"):
        raise CheckpointError(f"{where}: hyperparameters.gk_norm must be 'paper' or 'sqrt', "
                              f"got {params['gk_norm']!r}")
    for key in ("local_kernel", "global_kernel"):
        if not isinstance(params.get(key, True), bool):
            raise CheckpointError(f"{where}: hyperparameters.{key} must be true or false, got {params[key]!r}")
    return dict(params)


def _scale(meta: dict, where: Path) -> tuple[tuple[float, float], float]:
    raw = meta["rating_scale"]
    if not isinstance(raw, list) or len(raw) != 2:
        raise CheckpointError(f"{where}: rating_scale must be [min, max], got {raw!r}")
    lo = _number({"v": raw[0]}, "v", where, label="rating_scale[0]")
    hi = _number({"v": raw[1]}, "v", where, label="rating_scale[1]")
    offset = _number(meta, "offset", where)
    if not 0 < lo < hi:
        raise CheckpointError(f"{where}: invalid rating scale {raw} (internal units: need 0 < min < max)")
    return (lo, hi), offset


def _rating_map(meta: dict, where: Path) -> RatingMap:
    """model.json's "rating_map" ({"lo", "hi"}, internal units); absent (written before it existed): identity."""
    raw = meta.get("rating_map")
    if raw is None:
        return RatingMap()
    if not isinstance(raw, dict):
        raise CheckpointError(f"{where}: rating_map must be an object {{\"lo\": ..., \"hi\": ...}}, got {raw!r}")
    lo = _number(raw, "lo", where, label="rating_map.lo")
    hi = _number(raw, "hi", where, label="rating_map.hi")
    if not 0 < lo < hi:
        raise CheckpointError(f"{where}: invalid rating_map {raw} (internal units: need 0 < lo < hi)")
    return RatingMap(lo, hi)


def _members(meta: dict, tensors: dict[str, torch.Tensor], params: dict, shape: tuple[int, int],
             path: Path) -> list[Member]:
    where, weights = path / "model.json", path / "weights.safetensors"
    infos = meta["members"]
    if not isinstance(infos, list) or not infos:
        raise CheckpointError(f"{where}: the model has no members")
    history = meta.get("history", {})
    if not isinstance(history, dict):
        raise CheckpointError(f"{where}: history must be a JSON object")
    members, seeds = [], set()
    for k, info in enumerate(infos):
        if not isinstance(info, dict):
            raise CheckpointError(f"{where}: members[{k}] must be a JSON object")
        seed = _integer(info, "seed", where, low=-(2**63), label=f"members[{k}].seed")
        if seed in seeds:
            raise CheckpointError(f"{where}: members[{k}].seed {seed} is repeated")
        seeds.add(seed)
        log = history.get(str(seed), [])
        stage, epoch = _selected(info, params, log, where, k)
        prefix = f"member{k}."
        state = {name[len(prefix):]: t for name, t in tensors.items() if name.startswith(prefix)}
        if not state:
            raise CheckpointError(f"{weights}: no weights for member {k} (seed {seed})")
        _check_state(state, params, shape, f"{weights}: member {k}", where)
        members.append(Member(seed, stage, epoch, state, log))
    return members


def _selected(info: dict, params: dict, log: Any, where: Path, k: int) -> tuple[int, int]:
    """The member's (stage, epoch), consistent with the epoch counts and its epoch log."""
    total = params.get("epoch_p", 0) + params.get("epoch_f", 0)
    epoch = _integer(info, "epoch", where, low=1, label=f"members[{k}].epoch")
    stage = _integer(info, "stage", where, low=1, label=f"members[{k}].stage")
    if "epoch_p" in params:
        if epoch > total:
            raise CheckpointError(f"{where}: members[{k}].epoch {epoch} is beyond the {total} epochs trained")
        # Epochs are numbered across both stages: 1..epoch_p pre-train, the rest fine-tune.
        want = 1 if epoch <= params["epoch_p"] else 2
        if stage != want:
            raise CheckpointError(f"{where}: members[{k}].stage is {stage} but epoch {epoch} is a "
                                  f"{'pre-training' if want == 1 else 'fine-tuning'} epoch (stage {want}; "
                                  f"epoch_p={params['epoch_p']})")
    elif stage not in (1, 2):
        raise CheckpointError(f"{where}: members[{k}].stage must be 1 or 2, got {stage}")
    if not isinstance(log, list) or not all(isinstance(r, dict) for r in log):
        raise CheckpointError(f"{where}: history of members[{k}] must be a list of epoch records")
    logged = [r.get("stage") for r in log if r.get("epoch") == epoch]
    if logged and logged[0] != stage:
        raise CheckpointError(f"{where}: members[{k}].stage {stage} differs from its epoch log (stage {logged[0]})")
    return stage, epoch


def _check_state(state: dict[str, torch.Tensor], params: dict, shape: tuple[int, int], label: str,
                 where: Path) -> None:
    """The sizes the weights imply (layers, hidden units, kernel dimensions) against model.json, by field.

    The complete check of names and shapes against the network is the estimator's (it builds the
    network); this one names the field of model.json that disagrees, and needs no model.
    """
    try:
        found = {"n_layers": len({n.split(".")[1] for n in state if n.startswith("hidden.")}),
                 "n_hid": state["hidden.0.W"].shape[1], "n_dim": state["hidden.0.u"].shape[-1],
                 "gk_size": math.isqrt(state["gk_weight"].shape[1])}
        sizes = {"n_users": state["hidden.0.W"].shape[0], "n_items": state["gk_weight"].shape[0]}
    except (KeyError, IndexError) as e:
        raise CheckpointError(f"{label}: weights are missing or malformed ({e})") from e
    for key, value in found.items():
        if params[key] != value:
            raise CheckpointError(f"{where}: hyperparameters.{key} is {params[key]!r} but the weights "
                                  f"({label}) have {key} {value}")
    for key, value in sizes.items():
        want = shape[0] if key == "n_items" else shape[1]
        if want != value:
            raise CheckpointError(f"{where}: {key} is {want} but the weights ({label}) have {value}")


def _csr_from_tensors(tensors: dict[str, torch.Tensor], prefix: str, shape: tuple[int, int],
                      where: Path) -> sp.csr_matrix:
    try:
        indptr, indices, data = (tensors[f"{prefix}.{k}"].numpy() for k in ("indptr", "indices", "data"))
    except KeyError as e:
        raise CheckpointError(f"{where}: the stored training matrix is missing ({e.args[0]})") from e
    ok = (indptr.ndim == indices.ndim == data.ndim == 1 and len(indptr) == shape[0] + 1 and indptr[0] == 0
          and indptr[-1] == len(indices) == len(data) and np.all(np.diff(indptr) >= 0)
          and (len(indices) == 0 or (indices.min() >= 0 and indices.max() < shape[1])))
    if not ok:
        raise CheckpointError(f"{where}: the stored {prefix} matrix is malformed for a {shape[0]} x {shape[1]} model")
    return as_csr(sp.csr_matrix((data, indices, indptr), shape=shape))


def _ids_from_json(values: Any, kind: Any, where: str) -> np.ndarray:
    if not isinstance(values, list):
        raise CheckpointError(f"{where} is not a list")
    if kind == "int" and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return np.array(values, dtype=np.int64)
    if kind == "str" and all(isinstance(v, str) for v in values):
        out = np.empty(len(values), dtype=object)
        out[:] = values
        return out
    raise CheckpointError(f"{where}: ids do not match their recorded type {kind!r}")
