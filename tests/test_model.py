"""The GLocal-K model's mathematics against independent references.

- the hyperparameter validation of GLocalKConfig (one bad value per field, the message names it);
- the kernel layer and the local kernel on hand-computed values (SPEC: K = max(0, 1 - ||u_i - v_j||^2),
  y = act(x @ (W * K) + b), regulariser lambda_s/2 sum K^2 + lambda_2/2 sum W^2);
- the loss scaling (1/2 sum of squared masked errors + regularisers) by hand and against a plain
  NumPy forward pass (its own kernel computation, scipy.signal.correlate2d for the global convolution);
- the global kernel g = (p @ C) * dot_scale and R_hat = relu(conv2d_same(R, g)) for odd and even k;
- item_means (h @ mean W + mean b) against the mean of the dense decode;
- gradients by torch.autograd.gradcheck in float64 for both stages and every execution;
- the plain dense ``GLocalK.forward`` against the NumPy forward, and every training variant (fused
  weights in dense execution, sparse execution with R_hat sparse or dense) against the plain forward:
  loss, every gradient, predictions -- on random data and on the real ML-100K u1.base split
  (skipped when the data is absent);
- the ablation switches and the initialisation the SPEC prescribes.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.signal
import scipy.sparse as sp
import scipy.stats
import torch
from torch import nn

from glocalk.cli import main
from glocalk.errors import ConfigError
from glocalk.inputs import prepare_input
from glocalk.model import GLocalK, GLocalKConfig, KernelLayer, Stage, local_kernel

pytestmark = [pytest.mark.filterwarnings("ignore:Sparse"), pytest.mark.usefixtures("one_torch_thread")]

DATA = Path(os.environ.get("GLOCALK_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


# --------------------------------------------------------------------------- references


def random_ratings(n_items, n_users, density, seed, empty_rows=(), empty_cols=()):
    rng = np.random.default_rng(seed)
    dense = np.where(rng.random((n_items, n_users)) < density, rng.integers(1, 6, (n_items, n_users)), 0)
    dense[list(empty_rows), :] = 0
    dense[:, list(empty_cols)] = 0
    return sp.csr_matrix(dense.astype(np.float32))


def np_kernel(u, v):
    """K[i, j] = max(0, 1 - ||u_i - v_j||^2) by direct differences; u (n_in, 1, d), v (1, n_out, d)."""
    return np.maximum(0.0, 1.0 - ((u - v) ** 2).sum(-1))


def np_layers(model):
    return [{k: getattr(layer, k).detach().double().numpy() for k in ("W", "b", "u", "v")}
            for layer in [*model.hidden, model.out]]


def np_forward(layers, x, use_kernel=True):
    h = x
    for i, lay in enumerate(layers):
        k = np_kernel(lay["u"], lay["v"]) if use_kernel else 1.0
        z = h @ (lay["W"] * k) + lay["b"]
        h = 1.0 / (1.0 + np.exp(-z)) if i < len(layers) - 1 else z
    return h


def np_regulariser(layers, lambda_s, lambda_2, use_kernel=True):
    total = 0.0
    for lay in layers:
        if use_kernel:
            total += lambda_s / 2 * (np_kernel(lay["u"], lay["v"]) ** 2).sum()
        total += lambda_2 / 2 * (lay["W"] ** 2).sum()
    return total


def np_global_input(model, r):
    """R_hat = relu(correlate2d(R, g, 'same')), g = (mean over users of f(R)) @ C * dot_scale."""
    c = model.config
    layers = np_layers(model)
    p = np_forward(layers, r, c.local_kernel).mean(axis=1)
    g = (p @ model.gk_weight.detach().double().numpy()) * c.dot_scale
    if c.gk_norm == "sqrt":
        g = g / math.sqrt(r.shape[0])
    g = g.reshape(c.gk_size, c.gk_size)
    return np.maximum(scipy.signal.correlate2d(r, g, mode="same"), 0.0), g


def np_loss(model, r, stage):
    c = model.config
    layers = np_layers(model)
    x = np_global_input(model, r)[0] if stage == 2 and c.global_kernel else r
    out = np_forward(layers, x, c.local_kernel)
    err = (r > 0) * (r - out)
    return 0.5 * (err ** 2).sum() + np_regulariser(layers, c.lambda_s, c.lambda_2, c.local_kernel)


def make_model(n_items, n_users, seed=0, uv_std=0.3, **cfg):
    """A model whose u, v are spread out (so K varies and is clamped somewhere) and C is sizeable."""
    defaults = dict(n_hid=4, n_dim=2, lambda_2=0.5, lambda_s=0.05)
    defaults.update(cfg)
    torch.manual_seed(seed)
    model = GLocalK(n_items, n_users, GLocalKConfig(**defaults))
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for layer in [*model.hidden, model.out]:
            layer.u.copy_(torch.randn(layer.u.shape, generator=gen) * uv_std)
            layer.v.copy_(torch.randn(layer.v.shape, generator=gen) * uv_std)
    return model


def as_double(data):
    """Convert a TrainingInput (built in float32 by prepare_input) to float64 in place."""
    if data.is_sparse:
        data.values = data.values.double()
        data.conv.shift_values = data.conv.shift_values.double()
    else:
        data.dense, data.mask = data.dense.double(), data.mask.double()
    return data


def loss_and_grads(model, data, stage):
    """Loss and gradients of a training pass on a prepared input, or of the plain forward on a dense tensor."""
    model.zero_grad(set_to_none=True)
    loss = model(data, stage)[1] if isinstance(data, torch.Tensor) else model.loss(data, stage)
    loss.backward()
    grads = {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


def assert_grads_close(ga, gb, rtol, what):
    for name in ga:
        a, b = ga[name], gb[name]
        scale = max(float(a.abs().max()), float(b.abs().max()), 1e-12)
        err = float((a - b).abs().max())
        assert err <= rtol * scale, f"{what}: gradient of {name} differs by {err:.3g} (scale {scale:.3g})"


# --------------------------------------------------------------------------- hyperparameter validation


@pytest.mark.parametrize(("field", "value", "message"), [
    ("n_hid", 0, "n_hid (--n-hid) must be an integer >= 1, got 0"),
    ("n_dim", 0, "n_dim (--n-dim) must be an integer >= 1, got 0"),
    ("n_dim", -3, "n_dim (--n-dim) must be an integer >= 1, got -3"),
    ("n_layers", 0, "n_layers (--n-layers) must be an integer >= 1, got 0"),
    ("gk_size", 0, "gk_size (--gk-size) must be an integer >= 1, got 0"),
    ("n_hid", 2.5, "n_hid (--n-hid) must be an integer >= 1, got 2.5"),
    ("n_hid", True, "n_hid (--n-hid) must be an integer >= 1, got True"),
    ("lambda_2", -1.0, "lambda_2 (--lambda-2) must be a finite number >= 0, got -1.0"),
    ("lambda_s", -0.006, "lambda_s (--lambda-s) must be a finite number >= 0, got -0.006"),
    ("lambda_s", math.inf, "lambda_s (--lambda-s) must be a finite number >= 0, got inf"),
    ("lambda_2", "20", "lambda_2 (--lambda-2) must be a finite number >= 0, got '20'"),
    ("dot_scale", 0.0, "dot_scale (--dot-scale) must be a finite number > 0, got 0.0"),
    ("dot_scale", -1.0, "dot_scale (--dot-scale) must be a finite number > 0, got -1.0"),
    ("dot_scale", math.nan, "dot_scale (--dot-scale) must be a finite number > 0, got nan"),
    ("gk_norm", "bogus", "gk_norm (--gk-norm) must be 'paper' or 'sqrt', got 'bogus'"),
    ("output_bias", "zero", "output_bias (--output-bias) must be 'glorot' or 'mean', got 'zero'"),
    ("local_kernel", "no", "local_kernel must be true or false, got 'no'"),
    ("global_kernel", 0, "global_kernel must be true or false, got 0"),
])
def test_config_rejects_bad_hyperparameters(field, value, message):
    with pytest.raises(ConfigError) as err:
        GLocalKConfig(**{field: value})
    assert str(err.value) == message


def test_cli_reports_a_bad_hyperparameter(tmp_path, capsys):
    csv = tmp_path / "ratings.csv"
    csv.write_text("user,item,rating\n" + "".join(f"{u},{i},{1 + (u + i) % 5}\n" for u in range(12) for i in range(8)))
    assert main(["fit", str(csv), "--n-dim", "0", "--out", str(tmp_path / "model")]) == 2
    assert "n_dim (--n-dim) must be an integer >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "model").exists(), "nothing written for a rejected run"


def test_config_accepts_the_edges_of_each_range():
    c = GLocalKConfig(n_hid=1, n_dim=1, n_layers=1, gk_size=1, lambda_2=0, lambda_s=0.0, dot_scale=1e-9,
                      gk_norm="sqrt", local_kernel=False, global_kernel=False)
    assert c.to_dict()["n_hid"] == 1
    model = GLocalK(4, 3, GLocalKConfig(n_hid=2, gk_size=2, lambda_2=np.float64(1.0), n_dim=np.int64(2)))
    assert model.global_kernel(torch.ones(4)).shape == (2, 2), "even kernel sizes are allowed (TF 'SAME' padding)"


def test_stage_is_an_int_enum():
    assert Stage.PRETRAIN == 1 and Stage.FINETUNE == 2 and Stage(2) is Stage.FINETUNE
    r = random_ratings(6, 5, 0.5, seed=40)
    model = make_model(6, 5, seed=41)
    data = prepare_input(r, sparse=False)
    for stage in Stage:
        assert model.loss(data, stage).item() == model.loss(data, int(stage)).item()
    with pytest.raises(ValueError):
        model.loss(data, 3)


# --------------------------------------------------------------------------- kernel layer by hand


def set_layer(layer, W, b, u, v):
    with torch.no_grad():
        layer.W.copy_(torch.tensor(W, dtype=torch.float32))
        layer.b.copy_(torch.tensor(b, dtype=torch.float32))
        layer.u.copy_(torch.tensor(u, dtype=torch.float32).reshape(layer.u.shape))
        layer.v.copy_(torch.tensor(v, dtype=torch.float32).reshape(layer.v.shape))


def test_kernel_layer_hand_computed_n_dim_2():
    layer = KernelLayer(2, 2, 2, "sigmoid")
    # u0 = (0, 0), u1 = (.5, .5); v0 = (0, .5), v1 = (1, 1).
    # ||u-v||^2: [[.25, 2], [.25, .5]] -> K = max(0, 1 - d2) = [[.75, 0], [.75, .5]] (K[0, 1] is clamped).
    set_layer(layer, W=[[1.0, 2.0], [3.0, 4.0]], b=[0.1, -0.2], u=[[0.0, 0.0], [0.5, 0.5]], v=[[0.0, 0.5], [1.0, 1.0]])
    k = layer.local_kernel().detach().numpy()
    np.testing.assert_allclose(k, [[0.75, 0.0], [0.75, 0.5]], atol=1e-6, err_msg="local kernel K")
    w_eff, reg = layer.weight_and_regulariser(lambda_s=0.006, lambda_2=20.0)
    # W * K = [[.75, 0], [2.25, 2]]
    np.testing.assert_allclose(w_eff.detach().numpy(), [[0.75, 0.0], [2.25, 2.0]], atol=1e-6)
    # lambda_s/2 * sum K^2 = .003 * (.5625 + .5625 + .25) = .004125; lambda_2/2 * sum W^2 = 10 * 30 = 300.
    assert reg.item() == pytest.approx(300.004125, rel=1e-6), f"regulariser {reg.item()} != 300.004125"
    # The plain (autograd) weight and regulariser give the same values.
    np.testing.assert_allclose(layer.weight().detach().numpy(), [[0.75, 0.0], [2.25, 2.0]], atol=1e-6)
    assert layer.regulariser(0.006, 20.0).item() == pytest.approx(300.004125, rel=1e-6)
    # y = act(x @ (W * K) + b) with x = (1, 2): z = (.75 + 4.5 + .1, 0 + 4 - .2) = (5.35, 3.8).
    x = torch.tensor([[1.0, 2.0]])
    y = layer(x).detach().numpy()
    np.testing.assert_allclose(y, [[1 / (1 + math.exp(-5.35)), 1 / (1 + math.exp(-3.8))]], rtol=1e-6)
    ident = KernelLayer(2, 2, 2, "identity")
    set_layer(ident, W=[[1.0, 2.0], [3.0, 4.0]], b=[0.1, -0.2], u=[[0.0, 0.0], [0.5, 0.5]], v=[[0.0, 0.5], [1.0, 1.0]])
    np.testing.assert_allclose(ident(x).detach().numpy(), [[5.35, 3.8]], rtol=1e-6, err_msg="identity activation")


def test_fused_kernel_weight_equals_plain_autograd():
    """weight_and_regulariser (the fused Function training runs) against weight() and regulariser()."""
    torch.manual_seed(4)
    layer = KernelLayer(9, 6, 3, "sigmoid").double()
    with torch.no_grad():
        layer.u.normal_(0, 0.5)
        layer.v.normal_(0, 0.5)
    assert (layer.local_kernel() == 0).any() and (layer.local_kernel() > 0).any(), "exercise the clamp"
    upstream = torch.randn(9, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    grads = []
    for weight, reg in (layer.weight_and_regulariser(0.3, 2.0), (layer.weight(), layer.regulariser(0.3, 2.0))):
        layer.zero_grad(set_to_none=True)
        ((weight * upstream).sum() + 1.7 * reg).backward()
        grads.append((weight.detach(), reg.detach(), [p.grad.clone() for p in (layer.W, layer.u, layer.v)]))
    (w_f, r_f, g_f), (w_p, r_p, g_p) = grads
    torch.testing.assert_close(w_f, w_p, rtol=0, atol=0, msg="W * K")
    assert r_f.item() == pytest.approx(r_p.item(), rel=1e-13), "regulariser"
    for name, a, b in zip("Wuv", g_f, g_p, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=f"gradient of {name}")


def test_local_kernel_is_bit_for_bit_the_expanded_distance_form():
    """K's rounding is part of every frozen result (tests/golden): the in-place form must give exactly
    max(0, 1 - (|u|^2 + |v|^2 - 2 u.v)) in float32, computed here the plain way, at several scales of u, v."""
    gen = torch.Generator().manual_seed(6)
    for scale in (1e-3, 0.4, 2.0):
        u, v = torch.randn(37, 5, generator=gen) * scale, torch.randn(23, 5, generator=gen) * scale
        dist2 = ((u * u).sum(1, keepdim=True) + (v * v).sum(1)) - 2.0 * (u @ v.T)
        expanded = torch.clamp(1.0 - dist2, min=0.0)
        k = local_kernel(u, v)
        assert torch.equal(k, torch.clamp(1.0 - torch.addmm((u * u).sum(1, keepdim=True) + (v * v).sum(1), u, v.T,
                                                                 alpha=-2.0), min=0.0)), f"scale {scale}"
        torch.testing.assert_close(k, expanded, rtol=0, atol=1e-6)


def test_kernel_layer_hand_computed_n_dim_1():
    layer = KernelLayer(2, 2, 1, "identity")
    # u = (0, .5), v = (0, 1.5): d2 = [[0, 2.25], [.25, 1]] -> K = [[1, 0], [.75, 0]].
    set_layer(layer, W=[[2.0, -1.0], [4.0, 3.0]], b=[0.0, 1.0], u=[0.0, 0.5], v=[0.0, 1.5])
    np.testing.assert_allclose(layer.local_kernel().detach().numpy(), [[1.0, 0.0], [0.75, 0.0]], atol=1e-6)
    w_eff, reg = layer.weight_and_regulariser(lambda_s=2.0, lambda_2=0.1)
    # 2/2 * (1 + .5625) + .1/2 * (4 + 1 + 16 + 9) = 1.5625 + 1.5 = 3.0625
    assert reg.item() == pytest.approx(3.0625, rel=1e-6)
    np.testing.assert_allclose(w_eff.detach().numpy(), [[2.0, 0.0], [3.0, 0.0]], atol=1e-6)


def test_local_kernel_against_direct_differences():
    torch.manual_seed(3)
    layer = KernelLayer(7, 5, 3, "sigmoid")
    with torch.no_grad():
        layer.u.normal_(0, 0.4)
        layer.v.normal_(0, 0.4)
    k = layer.local_kernel().detach().double().numpy()
    ref = np_kernel(layer.u.detach().double().numpy(), layer.v.detach().double().numpy())
    assert (ref == 0).any() and (ref > 0).any(), "the test case should exercise the clamp"
    np.testing.assert_allclose(k, ref, atol=2e-6, err_msg="K differs from max(0, 1 - ||u_i - v_j||^2)")
    assert k.min() >= 0.0 and k.max() <= 1.0 + 1e-6, "K must lie in [0, 1]"
    # u_i == v_j gives K = 1 exactly (up to rounding).
    with torch.no_grad():
        layer.v[0, 2] = layer.u[4, 0]
    assert layer.local_kernel()[4, 2].item() == pytest.approx(1.0, abs=1e-6)


def assert_distributed_as(t, dist, what):
    """Kolmogorov-Smirnov test of a tensor's entries against a scipy distribution (seeded draws)."""
    x = t.detach().double().numpy().ravel()
    p = scipy.stats.kstest(x, dist.cdf).pvalue
    assert p > 1e-3, (f"{what}: entries not distributed as SPEC.md says "
                      f"(KS p = {p:.2g}, mean {x.mean():.3g}, std {x.std():.3g})")


def test_initialisation_follows_spec():
    torch.manual_seed(0)
    n_items, n_users, n_hid = 60, 150, 200  # b has n_out entries: enough for the KS test to see a wrong bound
    model = GLocalK(n_items, n_users, GLocalKConfig(n_hid=n_hid, n_dim=5))
    for layer, (n_in, n_out) in zip(model.layers, [(150, 200), (200, 200), (200, 150)], strict=True):
        assert layer.W.shape == (n_in, n_out) and layer.b.shape == (n_out,)
        assert layer.u.shape == (n_in, 1, 5) and layer.v.shape == (1, n_out, 5)
        glorot = math.sqrt(6.0 / (n_in + n_out))
        assert layer.W.abs().max() <= glorot, "W: Glorot-uniform, within its bound"
        assert_distributed_as(layer.W, scipy.stats.uniform(-glorot, 2 * glorot), "W: Glorot-uniform")
        bound = math.sqrt(3.0 / n_out)  # TF's 1-D Glorot-uniform: fan_in = fan_out = n_out
        assert layer.b.abs().max() <= bound, "b: within its Glorot bound"
        assert_distributed_as(layer.b, scipy.stats.uniform(-bound, 2 * bound), "b: Glorot-uniform (not zeros)")
        for name in ("u", "v"):  # truncated normal, std 1e-3, re-drawn beyond two std
            t = getattr(layer, name)
            assert t.abs().max() <= 2e-3 + 1e-9, f"{name}: truncated at two std"
            assert_distributed_as(t, scipy.stats.truncnorm(-2, 2, scale=1e-3), f"{name}: truncated normal std 1e-3")
    c = model.gk_weight
    assert c.shape == (n_items, 9) and c.abs().max() <= 0.2 + 1e-7
    assert_distributed_as(c, scipy.stats.truncnorm(-2, 2, scale=0.1), "C: truncated normal std 0.1")
    assert any(p is c for p in model.parameters()), "C must be a registered parameter"


# --------------------------------------------------------------------------- loss by hand / NumPy


def hand_model(local_kernel=True):
    """n_users = 2, n_hid = 2; u = v = 0 (K = 1), hidden W = 1, output W = 0, output b = (1, 2)."""
    torch.manual_seed(0)
    model = GLocalK(2, 2, GLocalKConfig(n_hid=2, n_dim=2, lambda_s=0.5, lambda_2=1.0, local_kernel=local_kernel))
    with torch.no_grad():
        for layer in model.hidden:
            layer.W.fill_(1.0)
            layer.u.zero_()
            layer.v.zero_()
        model.out.W.zero_()
        model.out.b.copy_(torch.tensor([1.0, 2.0]))
        model.out.u.zero_()
        model.out.v.zero_()
    return model


@pytest.mark.parametrize("sparse", [False, True])
def test_loss_hand_computed(sparse):
    r = sp.csr_matrix(np.array([[5.0, 0.0], [3.0, 4.0]], dtype=np.float32))
    data = prepare_input(r, sparse=sparse)
    # f(x) = b_out = (1, 2) for every item: observed errors 5-1, 3-1, 4-2 -> 1/2 (16 + 4 + 4) = 12.
    # K = 1 everywhere: lambda_s/2 * (4 + 4 + 4) = 3. W: lambda_2/2 * (4 + 4 + 0) = 4. Total 19.
    model = hand_model()
    for stage in (1, 2):  # the output does not depend on the input, so stage 2 gives the same loss
        assert model.loss(data, stage).item() == pytest.approx(19.0, rel=1e-6), f"stage {stage} loss"
    # local_kernel=False drops the lambda_s term: 12 + 4 = 16.
    model = hand_model(local_kernel=False)
    for stage in (1, 2):
        assert model.loss(data, stage).item() == pytest.approx(16.0, rel=1e-6), f"ablation stage {stage} loss"


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("cfg", [
    dict(),
    dict(gk_size=4),
    dict(gk_size=5, dot_scale=0.5),
    dict(gk_norm="sqrt", dot_scale=2.0),
    dict(n_layers=1, n_dim=1),
    dict(local_kernel=False),
], ids=["default", "gk4", "gk5-dot0.5", "sqrt-dot2", "1layer-dim1", "no-local"])
def test_loss_against_numpy_forward(sparse, cfg):
    r = random_ratings(12, 9, 0.4, seed=1, empty_rows=(3,), empty_cols=(5,))
    model = make_model(12, 9, seed=2, **cfg)
    with torch.no_grad():
        model.gk_weight.mul_(5.0)  # a sizeable global kernel, so R_hat differs clearly from R
    data = prepare_input(r, sparse=sparse, gk_size=model.config.gk_size)
    rd = r.toarray().astype(np.float64)
    for stage in (1, 2):
        ref = np_loss(model, rd, stage)
        got = model.loss(data, stage).item()
        assert got == pytest.approx(ref, rel=2e-5), f"stage {stage} loss {got} != NumPy reference {ref}"
        plain = model(torch.from_numpy(rd).float(), stage)[1].item()
        assert plain == pytest.approx(ref, rel=2e-5), f"stage {stage} plain forward loss {plain} != NumPy {ref}"
    assert not np.allclose(np_global_input(model, rd)[0], rd, atol=0.1), "test setup: R_hat should differ from R"
    # Predictions of both stages against the NumPy forward.
    layers = np_layers(model)
    r_hat = np_global_input(model, rd)[0]
    for stage, x in ((1, rd), (2, r_hat)):
        ref = np_forward(layers, x, model.config.local_kernel)
        np.testing.assert_allclose(model.predict_dense(data, stage).double().numpy(), ref, rtol=1e-4, atol=1e-4,
                                   err_msg=f"stage {stage} predictions")
        plain = model(torch.from_numpy(rd).float(), stage)[0].detach().double().numpy()
        np.testing.assert_allclose(plain, ref, rtol=1e-4, atol=1e-4, err_msg=f"stage {stage} plain forward")


# --------------------------------------------------------------------------- global kernel / convolution


def test_global_kernel_formula():
    torch.manual_seed(0)
    for norm, scale in (("paper", 1.0), ("paper", 0.5), ("sqrt", 2.0)):
        model = GLocalK(10, 6, GLocalKConfig(n_hid=3, dot_scale=scale, gk_norm=norm))
        p = torch.randn(10)
        ref = (p.double().numpy() @ model.gk_weight.detach().double().numpy()) * scale
        if norm == "sqrt":
            ref = ref / math.sqrt(10)
        got = model.global_kernel(p).detach().double().numpy()
        assert got.shape == (3, 3)
        np.testing.assert_allclose(got, ref.reshape(3, 3), rtol=1e-5, err_msg=f"g for {norm}, dot_scale {scale}")


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_global_conv_equals_scipy_correlate2d(k):
    rng = np.random.default_rng(k)
    r = np.where(rng.random((8, 11)) < 0.5, rng.integers(1, 6, (8, 11)), 0).astype(np.float64)
    g = rng.standard_normal((k, k))
    ref = np.maximum(scipy.signal.correlate2d(r, g, mode="same"), 0.0)
    # TF/torch SAME convention written out: pad (k-1)//2 before and the rest after.
    before, after = (k - 1) // 2, k - 1 - (k - 1) // 2
    padded = np.pad(r, ((before, after), (before, after)))
    loop = np.array([[max(0.0, (padded[p:p + k, q:q + k] * g).sum()) for q in range(11)] for p in range(8)])
    np.testing.assert_allclose(ref, loop, atol=1e-12)
    got = GLocalK.global_conv(torch.from_numpy(r), torch.from_numpy(g)).numpy()
    assert got.shape == r.shape
    np.testing.assert_allclose(got, ref, atol=1e-12, err_msg=f"relu(conv2d same) differs for k={k}")


@pytest.mark.parametrize("sparse", [False, True])
def test_global_input_against_numpy(sparse):
    r = random_ratings(10, 7, 0.45, seed=5)
    model = make_model(10, 7, seed=6, dot_scale=0.7)
    with torch.no_grad():
        model.gk_weight.mul_(3.0)
    data = prepare_input(r, sparse=sparse, conv_dense=False)
    weights, _ = model.weights()
    x = model.network_input(data, Stage.FINETUNE, weights)
    if sparse:
        pattern, values = x
        dense = torch.zeros(10, 7).index_put((pattern.row, pattern.col), values.detach())
    else:
        dense = x.detach()
    ref, _ = np_global_input(model, r.toarray().astype(np.float64))
    assert (ref == 0).any() and (ref > 0).any(), "the relu should act somewhere in this case"
    np.testing.assert_allclose(dense.double().numpy(), ref, rtol=1e-5, atol=1e-5, err_msg="R_hat")


def test_item_means_equal_mean_of_dense_decode():
    model = make_model(9, 13, seed=4, n_hid=5)
    h = torch.rand(9, 5)
    weights, _ = model.weights()
    got = model.item_means(h, weights).detach().double().numpy()
    w, b = (t.detach().double().numpy() for t in weights[-1])
    ref = (h.double().numpy() @ w + b).mean(axis=1)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6, err_msg="item_means vs mean_j (h @ W + b)")
    np.testing.assert_allclose(got, model.decode(h, weights).mean(1).detach().double().numpy(), rtol=1e-5,
                               atol=1e-6)


def test_global_kernel_parameter_is_persistent():
    """C is created once: repeated stage-2 losses agree and C is in the state_dict (unlike the seed port)."""
    r = random_ratings(8, 6, 0.5, seed=7)
    model = make_model(8, 6, seed=8)
    data = prepare_input(r, sparse=False)
    assert model.loss(data, 2).item() == model.loss(data, 2).item()
    assert "gk_weight" in model.state_dict()
    model.zero_grad()
    model.loss(data, 2).backward()
    assert model.gk_weight.grad is not None and model.gk_weight.grad.abs().max() > 0, "stage 2 must train C"
    model.zero_grad(set_to_none=True)
    model.loss(data, 1).backward()
    assert model.gk_weight.grad is None or model.gk_weight.grad.abs().max() == 0, "stage 1 does not involve C"


# --------------------------------------------------------------------------- gradcheck (float64)


class _Loss(nn.Module):
    def __init__(self, model, data, stage):
        super().__init__()
        self.model, self.data, self.stage = model, data, stage

    def forward(self):
        return self.model.loss(self.data, self.stage)


@pytest.mark.parametrize("execution", ["dense", "sparse", "sparse-conv-dense"])
@pytest.mark.parametrize("stage", [1, 2])
def test_loss_gradcheck_float64(stage, execution):
    r = random_ratings(7, 5, 0.45, seed=9, empty_cols=(2,))
    model = make_model(7, 5, seed=10, n_hid=3).double()
    with torch.no_grad():
        model.gk_weight.mul_(3.0)
    # Stay away from the kink of max(0, .) in K, where finite differences are meaningless.
    for layer in [*model.hidden, model.out]:
        d2 = ((layer.u.detach().numpy() - layer.v.detach().numpy()) ** 2).sum(-1)
        assert np.abs(1.0 - d2).min() > 1e-3, "test setup: a local kernel entry sits on its kink"
    data = as_double(prepare_input(r, sparse=execution != "dense", conv_dense=execution == "sparse-conv-dense"))
    wrapper = _Loss(model, data, stage)
    names = [n for n, _ in wrapper.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for _, p in wrapper.named_parameters())

    def f(*ps):
        return torch.func.functional_call(wrapper, dict(zip(names, ps, strict=True)), ())

    assert torch.autograd.gradcheck(f, params, eps=1e-6, atol=1e-5, rtol=1e-4), f"stage {stage}, {execution} execution"


# --------------------------------------------------------------------------- every execution == plain forward


def compare_executions(model, r, rtol_loss, rtol_grad, atol_pred, conv_dense_options=(False, True), dtype=None):
    """Plain forward == fused dense execution == sparse execution: loss, every gradient, predictions."""
    dense = prepare_input(r, sparse=False, gk_size=model.config.gk_size)
    sparse_inputs = [prepare_input(r, sparse=True, gk_size=model.config.gk_size, conv_dense=cd)
                     for cd in conv_dense_options]
    if dtype == torch.float64:
        model = model.double()
        dense = as_double(dense)
        sparse_inputs = [as_double(s) for s in sparse_inputs]
    pattern = sparse_inputs[0].pattern
    for stage in (Stage.PRETRAIN, Stage.FINETUNE):
        l_p, g_p = loss_and_grads(model, dense.dense, stage)
        with torch.no_grad():
            p_p = model(dense.dense, stage)[0]
        l_d, g_d = loss_and_grads(model, dense, stage)
        p_d = model.predict_dense(dense, stage)
        assert l_d.item() == pytest.approx(l_p.item(), rel=rtol_loss), f"stage {stage}: fused {l_d} vs plain {l_p}"
        assert_grads_close(g_d, g_p, rtol_grad, f"stage {stage}, fused dense vs plain")
        torch.testing.assert_close(p_d, p_p, rtol=0, atol=atol_pred, msg=f"stage {stage}: fused vs plain predictions")
        for cd, s in zip(conv_dense_options, sparse_inputs, strict=True):
            what = f"stage {stage}, conv_dense={cd}"
            l_s, g_s = loss_and_grads(model, s, stage)
            assert l_s.item() == pytest.approx(l_d.item(), rel=rtol_loss), f"{what}: loss {l_s} vs dense {l_d}"
            assert_grads_close(g_s, g_d, rtol_grad, what)
            p_s = model.predict_dense(s, stage)
            torch.testing.assert_close(p_s, p_d, rtol=0, atol=atol_pred, msg=f"{what}: dense predictions")
            at = model.predict_at(s, stage, pattern)
            torch.testing.assert_close(at, p_d[pattern.row, pattern.col], rtol=0, atol=atol_pred,
                                       msg=f"{what}: predict_at")


@pytest.mark.parametrize("gk_size", [3, 4])
def test_sparse_equals_dense_random_float64(gk_size):
    r = random_ratings(25, 18, 0.25, seed=11, empty_rows=(0, 13), empty_cols=(4, 17))
    model = make_model(25, 18, seed=12, n_hid=6, gk_size=gk_size)
    with torch.no_grad():
        model.gk_weight.mul_(3.0)
    compare_executions(model, r, rtol_loss=1e-12, rtol_grad=1e-10, atol_pred=1e-10, dtype=torch.float64)


def test_sparse_equals_dense_random_float32():
    r = random_ratings(40, 30, 0.2, seed=13, empty_rows=(7,), empty_cols=(11,))
    model = make_model(40, 30, seed=14, n_hid=8, lambda_2=20.0, lambda_s=0.006)
    compare_executions(model, r, rtol_loss=1e-5, rtol_grad=1e-4, atol_pred=1e-4)


def _ml100k_base():
    path = DATA / "movielens-100k" / "u1.base"
    if not path.is_file():
        pytest.skip(f"ML-100K not found at {path} (set GLOCALK_DATA)")
    raw = np.loadtxt(path, dtype=np.int64, usecols=(0, 1, 2))
    users, items, ratings = raw[:, 0] - 1, raw[:, 1] - 1, raw[:, 2].astype(np.float32)
    return sp.csr_matrix((ratings, (items, users)), shape=(1682, 943))


def test_sparse_equals_dense_ml100k():
    r = _ml100k_base()
    assert r.nnz == 80_000 and r.shape == (1682, 943)
    model = make_model(1682, 943, seed=15, n_hid=16, n_dim=5, lambda_2=20.0, lambda_s=0.006, uv_std=0.2)
    compare_executions(model, r, rtol_loss=1e-5, rtol_grad=2e-4, atol_pred=2e-4)


# --------------------------------------------------------------------------- ablations


def test_ablation_local_kernel_off():
    r = random_ratings(9, 7, 0.4, seed=16)
    model = make_model(9, 7, seed=17, local_kernel=False)
    data = prepare_input(r, sparse=False)
    for layer in [*model.hidden, model.out]:
        w_eff, reg = layer.weight_and_regulariser(0.5, 2.0)
        assert w_eff is layer.W or torch.equal(w_eff, layer.W), "K must be identically 1"
        assert reg.item() == pytest.approx(1.0 * (layer.W.detach() ** 2).sum().item(), rel=1e-6), "no lambda_s term"
    before = [model.loss(data, s).item() for s in (1, 2)]
    with torch.no_grad():
        for layer in [*model.hidden, model.out]:
            layer.u.add_(5.0)  # would zero K if the kernel were on
    after = [model.loss(data, s).item() for s in (1, 2)]
    assert before == after, "u, v must not matter without the local kernel"
    uv = {id(p) for layer in [*model.hidden, model.out] for p in (layer.u, layer.v)}
    assert not uv & {id(p) for p in model.network_parameters()}, "u, v must not be optimised"


def test_ablation_global_kernel_off():
    r = random_ratings(9, 7, 0.4, seed=18)
    for sparse in (False, True):
        model = make_model(9, 7, seed=19, global_kernel=False)
        data = prepare_input(r, sparse=sparse)
        assert model.loss(data, 2).item() == model.loss(data, 1).item(), "stage 2 loss must equal stage 1's"
        assert torch.equal(model.predict_dense(data, 2), model.predict_dense(data, 1))
        assert all(p is not model.gk_weight for p in model.finetune_parameters()), "C is not trained"
    model = make_model(9, 7, seed=19)
    assert any(p is model.gk_weight for p in model.finetune_parameters()), "C is a stage-2 variable"
    assert all(p is not model.gk_weight for p in model.network_parameters()), "C is not a stage-1 variable"
    n_layer_params = sum(4 for _ in [*model.hidden, model.out])
    assert len(model.network_parameters()) == n_layer_params, "stage 1 trains W, b, u, v of every layer"


# --------------------------------------------------------------------------- what counts as observed


def test_executions_agree_on_explicitly_stored_zeros():
    """An explicitly stored 0 in a CSR input means "not rated" (M = (R > 0), SPEC.md) in both executions:
    prepare_input drops stored zeros, so sparse execution does not treat one as an observed rating of 0."""
    e = sp.csr_matrix((np.array([3.0, 0.0, 4.0, 5.0], np.float32), np.array([0, 1, 2, 0]),
                       np.array([0, 2, 3, 4])), shape=(3, 3))
    assert e.nnz == 4, "test setup: the explicit zero must be stored"
    model = make_model(3, 3, seed=30)
    with torch.no_grad():
        model.out.b.fill_(3.0)  # predictions near 3, so a spurious target of 0 costs about 9/2
    ref = np_loss(model, e.toarray().astype(np.float64), 1)
    dense = model.loss(prepare_input(e, sparse=False), 1).item()
    sparse = model.loss(prepare_input(e, sparse=True), 1).item()
    assert dense == pytest.approx(ref, rel=1e-5), "dense execution vs NumPy reference with M = (R > 0)"
    assert sparse == pytest.approx(ref, rel=1e-5), (
        f"sparse execution loss {sparse} != {ref} (dense {dense}): an explicitly stored 0 is treated as an "
        "observed rating of 0")


def test_sparse_execution_gradients_are_bitwise_reproducible_with_threads():
    """Same parameters, same data -> identical gradients on repeated passes (resume and seeds rely on it)."""
    rng = np.random.default_rng(3)
    dense = np.where(rng.random((400, 500)) < 0.25, rng.integers(1, 6, (400, 500)), 0).astype(np.float32)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(0)
        model = GLocalK(400, 500, GLocalKConfig(n_hid=32))
        for conv_dense in (False, True):
            data = prepare_input(sp.csr_matrix(dense), sparse=True, conv_dense=conv_dense)
            for stage in (1, 2):
                grads = []
                for _ in range(3):
                    model.zero_grad()
                    model.loss(data, stage).backward()
                    grads.append([p.grad.clone() for p in model.finetune_parameters() if p.grad is not None])
                for other in grads[1:]:
                    for a, b in zip(grads[0], other, strict=True):
                        assert torch.equal(a, b), f"stage {stage}, conv_dense={conv_dense}: gradients differ"
    finally:
        torch.set_num_threads(old)


def test_output_bias_mean_sets_only_the_output_bias():
    # The same seed draws the same parameters; "mean" then overwrites the output bias alone.
    torch.manual_seed(3)
    paper = GLocalK(12, 9, GLocalKConfig(n_hid=6))
    torch.manual_seed(3)
    mean = GLocalK(12, 9, GLocalKConfig(n_hid=6, output_bias="mean"))
    paper.init_output_bias(3.25)  # "glorot": nothing changes
    mean.init_output_bias(3.25)
    for (name, a), (_, b) in zip(paper.state_dict().items(), mean.state_dict().items(), strict=True):
        if name == "out.b":
            assert torch.equal(b, torch.full((9,), 3.25)) and a.abs().max() < 1.0
        else:
            assert torch.equal(a, b), name
