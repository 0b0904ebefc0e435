"""glocalk.optim: L-BFGS-B in torch against SciPy's own L-BFGS-B, iterate by iterate.

The reference is ``scipy.optimize.minimize(method="L-BFGS-B")`` run on the same function in float64: every
point it evaluates (recorded in the function) and every iterate (recorded by its callback) must come back
from ``minimize_lbfgsb`` to 1e-8 relative, with the same counters and the same message. The limited-memory
matrix is checked against the two-loop recursion written here (SciPy's ``LbfgsInvHessProduct`` is no
reference for it: it starts its recursion from H0 = I, where L-BFGS-B scales by 1 / theta).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
import torch
from conftest import tiny_ratings

from glocalk.epoch import host_assign, host_flat
from glocalk.errors import ConfigError
from glocalk.inputs import prepare_input
from glocalk.model import GLocalK, GLocalKConfig
from glocalk.optim import LBFGSB, LBFGSBOptions, LBFGSMemory, LocalSpace, minimize_lbfgsb

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Recorded:
    """A float64 NumPy objective (x -> (f, g)) that records where it is evaluated."""

    def __init__(self, fun):
        self.fun, self.points = fun, []

    def numpy(self, x):
        self.points.append(np.array(x, dtype=np.float64))
        f, g = self.fun(np.array(x, dtype=np.float64))
        return float(f), np.asarray(g, dtype=np.float64)

    def torch(self, x):
        f, g = self.numpy(x.detach().cpu().numpy())
        return torch.tensor(f, dtype=torch.float64), torch.from_numpy(g)


def both(fun, x0, **options):
    """(SciPy's result, its evaluated points, its iterates), (ours, ...) on ``fun`` from ``x0``."""
    ref, ours = Recorded(fun), Recorded(fun)
    iterates = []
    scipy_options = {"maxiter": options.get("maxiter", 15000), "maxfun": options.get("maxfun", 15000)}
    res = scipy.optimize.minimize(ref.numpy, np.array(x0, dtype=np.float64), jac=True, method="L-BFGS-B",
                                  callback=lambda intermediate_result: iterates.append(intermediate_result.x.copy()),
                                  options=scipy_options)
    mine = minimize_lbfgsb(ours.torch, torch.tensor(x0, dtype=torch.float64), **options)
    return (res, ref.points, iterates), (mine, ours.points)


def assert_same_run(scipy_run, our_run, min_iterations, rtol=1e-8):
    """Equal counters and message, and the first evaluations (those of ``min_iterations`` iterations, or all
    if SciPy made fewer) at the same points to ``rtol`` relative."""
    (res, ref_points, iterates), (mine, points) = scipy_run, our_run
    k = min(min_iterations, len(iterates))
    # The evaluations up to SciPy's k-th iterate: that iterate is the last of them.
    upto = next(i for i, p in enumerate(ref_points) if np.array_equal(p, iterates[k - 1])) + 1 if k else 1
    assert len(points) >= upto, f"ours evaluated {len(points)} points, SciPy {upto} in {k} iterations"
    for i in range(upto):
        scale = np.max(np.abs(ref_points[i]))
        err = np.max(np.abs(points[i] - ref_points[i])) / scale
        assert err <= rtol, f"evaluation {i}: x differs by {err:.2e} (relative)"
    if k == len(iterates):  # the whole run compared: the ends must agree too
        assert (mine.nit, mine.nfev, mine.message, mine.success) == (res.nit, res.nfev, res.message, res.success)
        assert mine.fun == pytest.approx(res.fun, rel=rtol, abs=1e-300)
        np.testing.assert_allclose(mine.x.numpy(), res.x, rtol=rtol, atol=rtol * np.max(np.abs(res.x)))
        np.testing.assert_allclose(mine.jac.numpy(), res.jac, rtol=1e-6, atol=1e-6 * np.max(np.abs(res.jac)))


def quadratic(n=30, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, n))
    h, b = a @ a.T + np.eye(n), rng.standard_normal(n)
    return (lambda x: (0.5 * x @ h @ x - b @ x, h @ x - b)), rng.standard_normal(n)


def rosenbrock(x):
    return scipy.optimize.rosen(x), scipy.optimize.rosen_der(x)


# --------------------------------------------------------------------------- iterates equal SciPy's


def test_convex_quadratic_matches_scipy_to_the_end():
    fun, x0 = quadratic()
    scipy_run, our_run = both(fun, x0)
    assert scipy_run[0].nit >= 20, "the problem should take SciPy at least 20 iterations"
    assert_same_run(scipy_run, our_run, min_iterations=10**6)


def test_rosenbrock_50d_matches_scipy_for_40_iterations():
    x0 = np.random.default_rng(0).uniform(-2, 2, 50)
    scipy_run, our_run = both(rosenbrock, x0)
    # Rounding differences grow along Rosenbrock's valley: compare the first 40 iterations' evaluations.
    assert_same_run(scipy_run, our_run, min_iterations=40)
    assert our_run[0].message == scipy_run[0].message == "CONVERGENCE: RELATIVE REDUCTION OF F <= FACTR*EPSMCH"


def test_small_glocalk_matches_scipy_for_25_iterations():
    data = tiny_ratings(n_items=20, n_users=15, seed=3)
    torch.manual_seed(0)
    model = GLocalK(data.n_items, data.n_users, GLocalKConfig(n_hid=8, n_dim=3, lambda_2=1.0))
    inp = prepare_input(data.train, sparse=False)
    params = model.network_parameters()

    def fun(x):  # float32 loss and gradient at float64 x, as train.py hands them to SciPy
        host_assign(params, x)
        for p in params:
            p.grad = None
        loss = model.loss(inp, 1)
        loss.backward()
        return loss.item(), torch.cat([p.grad.reshape(-1) for p in params]).double().numpy()

    scipy_run, our_run = both(fun, host_flat(params), maxiter=25)
    assert scipy_run[0].nit == 25
    assert_same_run(scipy_run, our_run, min_iterations=25)


def test_stop_messages_of_maxiter_and_maxfun_match_scipy():
    x0 = np.random.default_rng(0).uniform(-2, 2, 50)
    for options, message in (({"maxiter": 7}, "STOP: TOTAL NO. OF ITERATIONS REACHED LIMIT"),
                             ({"maxfun": 10}, "STOP: TOTAL NO. OF F,G EVALUATIONS EXCEEDS LIMIT")):
        scipy_run, our_run = both(rosenbrock, x0, **options)
        assert scipy_run[0].message == message
        assert_same_run(scipy_run, our_run, min_iterations=10**6)
        assert not our_run[0].success and our_run[0].status == 1


def test_failed_line_search_with_empty_memory_ends_abnormal_as_scipy():
    # The gradient points uphill: -g is an ascent direction for f, no step decreases f, the memory is empty.
    x0 = np.random.default_rng(1).standard_normal(10)
    scipy_run, our_run = both(lambda x: (x @ x, -2 * x), x0)
    assert scipy_run[0].message == "ABNORMAL: " and scipy_run[0].nit == 0
    assert_same_run(scipy_run, our_run, min_iterations=10**6)
    np.testing.assert_array_equal(our_run[0].x.numpy(), x0)  # back at the start


def test_failed_line_search_restarts_the_memory_then_ends_abnormal_as_scipy():
    # A gradient with a constant error: far from the minimum it still leads downhill (10 iterations with a
    # growing memory), near it the line search fails; SciPy then empties the memory, fails along -g too
    # and ends ABNORMAL. Both must take the same evaluations through all of it.
    x0 = np.random.default_rng(2).standard_normal(10)
    scipy_run, our_run = both(lambda x: (np.sum(x**4), 4 * x**3 + 0.01), x0)
    assert scipy_run[0].message == "ABNORMAL: " and scipy_run[0].nit > 2
    assert_same_run(scipy_run, our_run, min_iterations=10**6)


def test_a_start_that_already_converged_stops_at_once_as_scipy():
    scipy_run, our_run = both(lambda x: (x @ x, 2 * x), np.full(4, 1e-7))
    assert scipy_run[0].message == "CONVERGENCE: NORM OF PROJECTED GRADIENT <= PGTOL"
    assert_same_run(scipy_run, our_run, min_iterations=10**6)
    assert (our_run[0].nit, our_run[0].nfev) == (0, 1)


@pytest.mark.parametrize("offset, steps", [(3e16, [64.0, -128.0, 256.0, 512.0]), (2.25e15 - 1e3, [0.0, 0.0, 0.0])])
def test_steps_that_round_away_or_move_a_few_ulps_are_scipys(offset, steps):
    """Far from 0 a step of length ~1 either rounds away (x stays bitwise the last x: SciPy does not evaluate
    it again, and the run ends ABNORMAL after 1 evaluation) or moves x by a few ulps (too little for the
    probe to prove it moves without comparing every entry): both as SciPy."""
    x0 = np.full(len(steps), 2.25e15 if offset < 1e16 else offset) + np.array(steps)
    scipy_run, our_run = both(lambda x: (0.5 * np.sum((x - offset) ** 2), x - offset), x0)
    assert_same_run(scipy_run, our_run, min_iterations=10**6)
    if offset == 3e16:
        assert (our_run[0].nfev, our_run[0].message) == (1, "ABNORMAL: ")
    else:
        assert our_run[0].nit >= 2 and our_run[0].success


def test_whether_x_moved_is_decided_by_the_space_for_every_process():
    """Sharded, one rank's x may stay bitwise put while another's moves; the evaluation is collective, so the
    run must ask the space (which all-reduces) rather than decide alone. Here the 'other ranks' report a move
    at every step: the step that rounds away locally (SciPy skips it and ends ABNORMAL after 1 evaluation) is
    evaluated, and the run asks the space about every line-search step."""
    asked = []

    class OthersMove(LocalSpace):
        def any_true(self, flag, like):
            asked.append(bool(flag))
            return True

    x0 = torch.from_numpy(np.full(4, 3e16) + np.array([64.0, -128.0, 256.0, 512.0]))
    alone = minimize_lbfgsb(lambda x: (0.5 * ((x - 3e16) ** 2).sum(), x - 3e16), x0)
    assert (alone.nfev, alone.message) == (1, "ABNORMAL: ")
    together = minimize_lbfgsb(lambda x: (0.5 * ((x - 3e16) ** 2).sum(), x - 3e16), x0, space=OthersMove())
    assert together.nfev > 1 and asked and not asked[0], f"nfev {together.nfev}, local answers {asked}"


# --------------------------------------------------------------------------- the limited-memory matrix


def two_loop(s_list, y_list, v):
    """H v by the two-loop recursion (Nocedal and Wright, Algorithm 7.4), H0 = s.y / y.y of the newest pair."""
    q, alphas = v.copy(), []
    for s, y in reversed(list(zip(s_list, y_list, strict=True))):
        alphas.append((s @ q) / (s @ y))
        q -= alphas[-1] * y
    r = q * (s_list[-1] @ y_list[-1]) / (y_list[-1] @ y_list[-1])
    for (s, y), alpha in zip(zip(s_list, y_list, strict=True), reversed(alphas), strict=True):
        r += s * (alpha - (y @ r) / (s @ y))
    return r


@pytest.mark.parametrize("pairs", [1, 3, 5])
def test_compact_form_is_the_two_loop_matrix(pairs):
    """SciPy's compact form (what LBFGSMemory.direction solves) and the two-loop recursion give one matrix H:
    -direction(g) = H g for every g, also after the ring of m = 3 pairs has wrapped (pairs = 5)."""
    n, m = 7, 3
    rng = np.random.default_rng(pairs)
    memory = LBFGSMemory(n, m, m, torch.zeros(n, dtype=torch.float64), LocalSpace())
    s_list, y_list = [], []
    for _ in range(pairs):
        s = rng.standard_normal(n)
        y = s + 0.5 * rng.standard_normal(n)  # s.y > 0
        s_list, y_list = (s_list + [s])[-m:], (y_list + [y])[-m:]
        assert memory.update(torch.from_numpy(s), torch.from_numpy(y), float(s @ y), float(s @ s))
    h_compact = np.empty((n, n))
    out = torch.empty(n, dtype=torch.float64)
    for i in range(n):
        assert memory.direction(torch.from_numpy(np.eye(n)[i]), out)
        h_compact[:, i] = -out.numpy()
    h_two_loop = np.column_stack([two_loop(s_list, y_list, e) for e in np.eye(n)])
    np.testing.assert_allclose(h_compact, h_two_loop, rtol=1e-10, atol=1e-12)
    assert memory.theta == pytest.approx(y_list[-1] @ y_list[-1] / (s_list[-1] @ y_list[-1]), rel=1e-14)


# --------------------------------------------------------------------------- the parameter-list optimiser


def quadratic_params(dtype=torch.float32):
    rng = np.random.default_rng(5)
    a = rng.standard_normal((6, 6))
    h, b = torch.tensor(a @ a.T + np.eye(6), dtype=dtype), torch.tensor(rng.standard_normal(6), dtype=dtype)
    p1 = torch.nn.Parameter(torch.ones(2, 2, dtype=dtype))
    p2 = torch.nn.Parameter(torch.ones(2, dtype=dtype))

    def closure():
        p1.grad = p2.grad = None
        x = torch.cat([p1.reshape(-1), p2])
        loss = 0.5 * x @ h @ x - b @ x
        loss.backward()
        return loss

    return [p1, p2], closure, np.linalg.solve(h.double().numpy(), b.double().numpy())


def test_parameter_list_optimiser_equals_the_functional_one_and_keeps_views():
    params, closure, x_star = quadratic_params(torch.float64)
    opt = LBFGSB(params, options=LBFGSBOptions(maxiter=50), dtype=torch.float64)
    start = opt.x.data_ptr()
    assert params[1].data_ptr() == start + 4 * 8, "the parameters are views into the flat buffer"
    res = opt.step(closure)

    def fun(x):  # the same quadratic on a flat vector, through the functional entry point
        p_ref, c_ref, _ = quadratic_params(torch.float64)
        host_assign(p_ref, x.numpy())
        loss = c_ref()
        return loss.detach(), torch.cat([p.grad.reshape(-1) for p in p_ref])

    ref = minimize_lbfgsb(fun, torch.ones(6, dtype=torch.float64), maxiter=50)
    assert (res.nit, res.nfev, res.message) == (ref.nit, ref.nfev, ref.message)
    np.testing.assert_array_equal(torch.cat([p.detach().reshape(-1) for p in params]).numpy(), ref.x.numpy())
    np.testing.assert_allclose(ref.x.numpy(), x_star, atol=1e-5)
    opt.release()
    assert params[1].data_ptr() != start + 4 * 8, "release gives each parameter its own storage"


def test_float32_state_by_default_and_float64_state_for_float32_parameters():
    params, closure, x_star = quadratic_params(torch.float32)
    res = LBFGSB(params, options=LBFGSBOptions(maxiter=100)).step(closure)
    assert res.x.dtype == torch.float32 and res.success
    np.testing.assert_allclose(torch.cat([p.detach().reshape(-1) for p in params]).numpy(), x_star, rtol=1e-3)
    params, closure, _ = quadratic_params(torch.float32)
    res64 = LBFGSB(params, options=LBFGSBOptions(maxiter=100), dtype=torch.float64).step(closure)
    assert res64.x.dtype == torch.float64 and params[0].dtype == torch.float32  # copied into, not viewed
    np.testing.assert_allclose(torch.cat([p.detach().reshape(-1) for p in params]).numpy(),
                               res64.x.float().numpy())


def test_every_reduction_goes_through_the_space():
    class Counting(LocalSpace):
        calls = 0

        def dot(self, a, b):
            Counting.calls += 1
            return super().dot(a, b)

        def norm_inf(self, a):
            Counting.calls += 1
            return super().norm_inf(a)

    fun, x0 = quadratic(n=8)
    wrapped = Recorded(fun)
    plain = minimize_lbfgsb(wrapped.torch, torch.tensor(x0), maxiter=6)
    counted = minimize_lbfgsb(wrapped.torch, torch.tensor(x0), maxiter=6, space=Counting())
    assert Counting.calls >= 4 * 6
    assert torch.equal(plain.x, counted.x)


@pytest.mark.parametrize("option, value", [("maxls", 0), ("m", 0), ("factr", -1.0), ("maxiter", 1.5)])
def test_invalid_options_are_rejected_naming_them(option, value):
    with pytest.raises(ConfigError, match=option):
        minimize_lbfgsb(lambda x: (x @ x, 2 * x), torch.ones(2), **{option: value})


def test_x0_must_be_a_1d_float_tensor():
    with pytest.raises(ConfigError, match="x0"):
        minimize_lbfgsb(lambda x: (x @ x, 2 * x), torch.ones(2, 2))
    with pytest.raises(ConfigError, match="parameter"):
        LBFGSB([])


# --------------------------------------------------------------------------- memory traffic


class PairCounting(LocalSpace):
    """Counts the reductions that read the stored pairs (a 2-D argument): fused ones, whose other side is a
    block of vectors (the new s, y and g), and plain ones (g alone)."""

    def __init__(self):
        self.fused = self.plain = 0

    def dot(self, a, b):
        if a.dim() == 2 and b.dim() == 2:
            self.fused += 1
        elif a.dim() == 2 or b.dim() == 2:
            self.plain += 1
        return super().dot(a, b)


def weighted_abs(x):
    """sum_i i |x_i|: its kinks end line searches on dcsrch's xtol warning, with s.y <= 0 (a skipped update)."""
    w = np.arange(1, len(x) + 1)
    return np.sum(w * np.abs(x)), w * np.sign(x)


def test_the_pairs_are_read_twice_per_iteration():
    """One product over the stored pairs per iteration (the new s, y and g against all of them; the direction
    reuses the products with g) plus the pass that forms the direction: 2 reads, not 3."""
    fun, x0 = quadratic(n=40)
    space = PairCounting()
    res = minimize_lbfgsb(Recorded(fun).torch, torch.tensor(x0), maxiter=15, space=space)
    assert res.nit == 15 and res.message.startswith("STOP")
    commits = res.nit - 1  # a pair after every iteration but the last (the quadratic never skips one)
    assert (space.fused, space.plain) == (commits, 0)

    n = len(x0)  # every BLAS product whose operand is the (2k, n) block of pairs (or its transpose)
    with torch.profiler.profile(record_shapes=True) as prof:
        minimize_lbfgsb(Recorded(fun).torch, torch.tensor(x0), maxiter=15)
    products = {"aten::mm", "aten::addmm", "aten::addmv", "aten::addmv_"}
    reads = sum(1 for e in prof.events() if e.name in products and any(
        len(s) == 2 and n in s and min(s) % 2 == 0 and s != [n, n] for s in e.input_shapes))
    assert reads == 2 * commits


def test_skipped_updates_keep_scipys_iterates():
    """Through skipped updates (the direction then reads the pairs itself: the products cached with the last
    pair are stale) the evaluations stay SciPy's."""
    x0 = np.random.default_rng(0).standard_normal(5)
    space = PairCounting()
    scipy_run, our_run = both(weighted_abs, x0)
    assert_same_run(scipy_run, our_run, min_iterations=10**6)
    counted = minimize_lbfgsb(Recorded(weighted_abs).torch, torch.tensor(x0), space=space)
    assert torch.equal(counted.x, our_run[0].x)
    assert space.plain >= 1, "some update should have been skipped on this problem"
    assert space.fused >= 1


def test_direction_after_update_step_reads_the_current_g():
    """The products cached by update_step serve only the g they were taken with, unchanged: after an
    in-place change of g (or for another g) the direction is still the two-loop recursion's -H g."""
    n, m = 6, 3
    rng = np.random.default_rng(7)
    memory = LBFGSMemory(n, m, m, torch.zeros(n, dtype=torch.float64), LocalSpace())
    s_list, y_list, out = [], [], torch.empty(n, dtype=torch.float64)
    for step in range(5):
        d, g_old = torch.from_numpy(rng.standard_normal(n)), torch.from_numpy(rng.standard_normal(n))
        g = g_old + d + 0.3 * torch.from_numpy(rng.standard_normal(n))  # y.s > 0
        s, y = (0.5 * d).numpy(), (g - g_old).numpy()
        s_list, y_list = (s_list + [s])[-m:], (y_list + [y])[-m:]
        assert memory.update_step(d, 0.5, g, g_old, float(s @ y), float(s @ s))
        if step % 2:
            g.mul_(-2.0).add_(1.0)  # changed in place after the update
        expected = -two_loop(s_list, y_list, g.numpy())
        assert memory.direction(g, out)
        np.testing.assert_allclose(out.numpy(), expected, rtol=1e-10, atol=1e-12)
        other = torch.from_numpy(rng.standard_normal(n))
        assert memory.direction(other, out)
        np.testing.assert_allclose(out.numpy(), -two_loop(s_list, y_list, other.numpy()), rtol=1e-10, atol=1e-12)
