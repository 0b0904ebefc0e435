"""``fallback="blend"`` (issue 10, item 3): alpha * GLocal-K + (1 - alpha) * the bias model, each clipped to
the training scale, alpha in [0, 1] the least-squares weight on the validation ratings.

Expectations are independent of the code under test: alpha from a 4-rating example solved by hand,
the least-squares optimality checked against a grid of weights, and the blended model's answers
recomputed here from the two parts (the members' scores of the same weights without the blend, and
the stored bias model's mu + b_item + b_user).

The data: the rank-2 block matrix of tests/test_fallback.py with noise and item biases, on which a
short GLocal-K and the bias model are close (GLocal-K 0.88 vs biases 0.96 on validation, seeded), so
the blend's weight lies inside (0, 1) and both parts matter.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from glocalk.baselines import entries
from glocalk.cli.app import main
from glocalk.comparison import blend_alpha
from glocalk.errors import CheckpointError
from glocalk.estimator import GLocalKRecommender
from glocalk.scoring import Scorer
from glocalk.serve import service

pytestmark = [pytest.mark.filterwarnings("ignore:Sparse"), pytest.mark.usefixtures("one_torch_thread")]

BLOCKS = np.array([[5.0, 3.0], [1.0, 2.0]])
SHORT = {"n_hid": 20, "lambda_2": 3.0, "lambda_s": 0.006, "epoch_p": 4, "epoch_f": 4, "threads": 1, "seed": 0}


def noisy_blocks(n: int = 60) -> pd.DataFrame:
    """70% of the block matrix's pairs, plus N(0, 0.5) noise and N(0, 0.5) item biases, to 0.1."""
    group = (np.arange(n) >= n // 2).astype(int)
    full = BLOCKS[group[:, None], group[None, :]]
    items, users = np.nonzero(np.random.default_rng(1).random((n, n)) < 0.7)
    rng = np.random.default_rng(3)
    rating = full[items, users] + rng.normal(0, 0.5, len(items)) + rng.normal(0, 0.5, n)[items]
    return pd.DataFrame({"user": users, "item": items, "rating": np.round(rating, 1)})


@pytest.fixture(scope="module")
def split():
    df = noisy_blocks()
    test = df.sample(frac=0.1, random_state=0)
    return df.drop(test.index), test


@pytest.fixture(scope="module")
def blended(split):
    train, test = split
    return GLocalKRecommender("ml-100k", val_frac=0.15, fallback="blend", **SHORT).fit(train, test=test)


def _parts(model: GLocalKRecommender, items: np.ndarray, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """GLocal-K's and the bias model's clipped scores (internal units), each computed without the blend."""
    lo, hi = model.model_.rating_scale
    glocalk = Scorer(replace(model.model_, fallback=None)).scores(items, users)
    fb = model.model_.fallback
    biases = fb.mu + fb.b_item[items] + fb.b_user[users]
    return np.clip(glocalk, lo, hi), np.clip(biases, lo, hi)


# -- alpha ---------------------------------------------------------------------------------------


def test_alpha_of_a_hand_computed_example():
    # d = g - b = (1, 0, 1, -1), y - b = (1, 0, 0, 0): alpha = <d, y - b> / <d, d> = 1 / 3. Squared errors:
    # alpha 0 -> 1, alpha 1 -> 2, alpha 1/3 -> 4/9 + 1/9 + 1/9 = 2/3, the parabola's minimum.
    g, b, y = np.array([3.0, 4, 5, 2]), np.array([2.0, 4, 4, 3]), np.array([3.0, 4, 4, 3])
    assert blend_alpha(g, b, y) == pytest.approx(1 / 3, abs=1e-15)
    assert blend_alpha(g, b, g) == 1.0 and blend_alpha(g, b, b) == 0.0
    assert blend_alpha(g, b, b - (g - b)) == 0.0, "the optimum -1 is clipped to 0"
    assert blend_alpha(g, b, g + (g - b)) == 1.0, "the optimum 2 is clipped to 1"
    assert blend_alpha(g, g.copy(), y) == 1.0, "identical predictions: GLocal-K"


def test_alpha_is_the_least_squares_weight_on_a_grid():
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.uniform(1, 5, 30)
        g, b = y + rng.normal(0, rng.uniform(0.1, 1), 30), y + rng.normal(0, rng.uniform(0.1, 1), 30)
        alpha = blend_alpha(g, b, y)
        sse = [float(np.sum((a * g + (1 - a) * b - y) ** 2)) for a in (alpha, *np.linspace(0, 1, 201))]
        assert 0.0 <= alpha <= 1.0
        assert sse[0] <= min(sse[1:]) + 1e-12


# -- the fitted model ------------------------------------------------------------------------------


def test_the_blend_is_recorded_and_not_worse_than_either_model_on_validation(blended):
    c = blended.comparison_
    assert c["fallback"] == "blend" and c["answer"] == "blend"
    assert c["winner_on_validation"] in ("glocalk", "biases")
    alpha = c["blend"]["alpha"]
    assert 0.05 < alpha < 0.95, "test setup: both parts should matter"
    assert c["blend"]["val"]["rmse"] <= min(c["glocalk"]["val"]["rmse"], c["biases"]["val"]["rmse"])
    # The recorded alpha is the least-squares weight of the two parts on the validation ratings.
    items, users, truth = entries(blended.model_.val)
    g, b = _parts(blended, items, users)
    assert alpha == pytest.approx(np.dot(g - b, truth - b) / np.dot(g - b, g - b), rel=1e-9)
    rmse = np.sqrt(np.mean((alpha * g + (1 - alpha) * b - truth) ** 2))
    assert c["blend"]["val"]["rmse"] == pytest.approx(rmse, rel=1e-9)
    # The model answers the test set with the blend.
    assert c["answer_test"] == c["blend"]["test"]
    assert blended.metrics_["rmse"] == pytest.approx(c["blend"]["test"]["rmse"], rel=1e-12)


def test_predict_and_recommend_are_the_blend_of_the_two_parts(blended):
    alpha, offset = blended.model_.fallback.alpha, blended.offset_
    items, users, _ = entries(blended.model_.input)
    g, b = _parts(blended, items, users)
    pred = blended.predict(blended.user_ids_[users], blended.item_ids_[items])
    np.testing.assert_allclose(pred, alpha * g + (1 - alpha) * b - offset, rtol=0, atol=1e-9)
    u = 3
    all_items = np.arange(len(blended.item_ids_))
    g, b = _parts(blended, all_items, np.full(len(all_items), u))
    hand = alpha * g + (1 - alpha) * b - offset
    seen = set(blended.model_.seen[:, u].nonzero()[0])
    unseen = np.array([i for i in all_items if i not in seen])
    top = blended.recommend(blended.user_ids_[u], k=5)
    np.testing.assert_allclose(top["score"].to_numpy(), np.sort(hand[unseen])[::-1][:5], rtol=0, atol=1e-9)
    every = blended.recommend_all(k=5)
    # recommend_all scores a block of users by one matrix product: equal up to float32 rounding (its docstring).
    np.testing.assert_allclose(every[every["user"] == blended.user_ids_[u]]["score"].to_numpy(),
                               top["score"].to_numpy(), rtol=0, atol=1e-5)
    # An unknown user gets the bias model: mu + b_item.
    fb = blended.model_.fallback
    assert blended.predict("nobody", blended.item_ids_[0], unknown="baseline") == pytest.approx(
        np.clip(fb.mu + fb.b_item[0], *blended.model_.rating_scale) - offset, abs=1e-12)


def test_each_part_is_clipped_before_blending(blended):
    # A bias model 100 above the scale: its part is the scale's top everywhere, so the blend stays in range
    # and is alpha * GLocal-K + (1 - alpha) * max, not alpha * GLocal-K + (1 - alpha) * (mu + 100 + ...).
    fb = blended.model_.fallback
    lo, hi = blended.model_.rating_scale
    scorer = Scorer(replace(blended.model_, fallback=replace(fb, mu=fb.mu + 100.0)))
    items, users = np.arange(20), np.arange(20) % len(blended.user_ids_)
    g, _ = _parts(blended, items, users)
    np.testing.assert_allclose(scorer.scores(items, users), fb.alpha * g + (1 - fb.alpha) * hi, rtol=0, atol=1e-9)
    np.testing.assert_allclose(scorer.user_scores(2), scorer.block_scores(np.array([2]))[0], rtol=0, atol=1e-9)
    assert scorer.user_scores(2).max() <= hi


def test_a_blended_model_directory_round_trips(blended, tmp_path):
    blended.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["fallback"]["answer"] == "blend" and meta["fallback"]["alpha"] == blended.comparison_["blend"]["alpha"]
    assert meta["estimator"]["fallback"] == "blend"
    back = GLocalKRecommender.load(tmp_path / "m")
    assert back.model_.fallback.alpha == blended.model_.fallback.alpha
    users, items = blended.user_ids_, np.roll(blended.item_ids_, 7)
    np.testing.assert_array_equal(back.predict(users, items), blended.predict(users, items))
    pd.testing.assert_frame_equal(back.recommend(users[0], 5), blended.recommend(users[0], 5))
    pd.testing.assert_frame_equal(back.recommend_all(k=3), blended.recommend_all(k=3))


def test_the_service_answers_with_the_blend(blended, tmp_path):
    blended.save(tmp_path / "m")
    loaded = service.load(tmp_path / "m")
    users, items = [str(u) for u in blended.user_ids_[:4]], [str(i) for i in blended.item_ids_[5:9]]
    answers = service.predict(loaded, users, items)
    np.testing.assert_array_equal([a["rating"] for a in answers],
                                  blended.predict(blended.user_ids_[:4], blended.item_ids_[5:9]))
    ranked = service.recommend(loaded, users[0], 4, True)
    assert [r["item"] for r in ranked] == [str(i) for i in blended.recommend(blended.user_ids_[0], 4)["item"]]
    new = service.recommend_new(loaded, items[:3], [4.0, 2.0, 5.0], 3)  # fold-in of a blended model
    assert len(new["items"]) == 3 and not set(r["item"] for r in new["items"]) & set(items[:3])


@pytest.mark.parametrize("alpha", ["0.5", 1.5, -0.1, None, True, float("nan")])
def test_a_corrupt_alpha_is_a_checkpoint_error(blended, tmp_path, alpha):
    blended.save(tmp_path / "m")
    meta_path = tmp_path / "m" / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["fallback"]["alpha"] = alpha
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"model\.json.*fallback\.alpha"):
        GLocalKRecommender.load(tmp_path / "m")


def test_fold_in_keeps_the_blend(blended, tmp_path):
    known = blended.item_ids_[:3]
    new = pd.DataFrame({"user": [1000] * 3, "item": known, "rating": [4.0, 2.0, 3.0]})
    folded = blended.fold_in(new)
    users, items = blended.user_ids_, np.roll(blended.item_ids_, 3)
    np.testing.assert_allclose(folded.predict(users, items), blended.predict(users, items), rtol=0, atol=1e-9)
    # The new user's answer is alpha * GLocal-K + (1 - alpha) * the folded bias model, both clipped.
    alpha, (lo, hi) = folded.model_.fallback.alpha, folded.model_.rating_scale
    u = len(folded.scorer_.b_user) - 1
    i = np.arange(5)
    g = Scorer(replace(folded.model_, fallback=None)).scores(i, np.full(5, u))
    b = folded.scorer_.mu + folded.scorer_.b_item[i] + folded.scorer_.b_user[u]
    hand = alpha * np.clip(g, lo, hi) + (1 - alpha) * np.clip(b, lo, hi) - folded.offset_
    np.testing.assert_allclose(folded.predict([1000] * 5, folded.item_ids_[i]), hand, rtol=0, atol=1e-9)
    folded.save(tmp_path / "f")
    back = GLocalKRecommender.load(tmp_path / "f")
    np.testing.assert_array_equal(back.predict([1000] * 5, folded.item_ids_[i]),
                                  folded.predict([1000] * 5, folded.item_ids_[i]))


# -- the commands ----------------------------------------------------------------------------------


def test_glocalk_fit_fallback_blend_prints_and_saves_the_blend(split, tmp_path, capsys):
    train, test = split
    train.to_csv(tmp_path / "train.csv", index=False)
    test.to_csv(tmp_path / "test.csv", index=False)
    out = tmp_path / "m"
    args = ["--preset", "ml-100k", "--n-hid", "8", "--epoch-p", "1", "--epoch-f", "1", "--iter-p", "2",
            "--iter-f", "2", "--threads", "1", "--quiet"]
    code = main(["fit", str(tmp_path / "train.csv"), "--test", str(tmp_path / "test.csv"), "--val-frac", "0.15",
                 "--fallback", "blend", *args, "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    report = json.loads((out / "report.json").read_text())["comparison"]
    assert report["answer"] == "blend" and "x GLocal-K" in printed and "  blend    validation RMSE" in printed
    assert json.loads((out / "model.json").read_text())["fallback"]["alpha"] == report["blend"]["alpha"]


def test_glocalk_train_fallback_blend_is_refused_before_training(tmp_path, capsys):
    code = main(["train", "--dataset", "ml-100k", "--val-frac", "0.1", "--fallback", "blend",
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "--fallback blend" in err and "glocalk fit" in err and "--fallback baseline" in err
    assert not (tmp_path / "run").exists()
