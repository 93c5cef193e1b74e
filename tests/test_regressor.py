"""BumpRegressor: scikit-learn's estimator checks, one and several outputs, determinism,
errors, and the package working without scikit-learn."""

from __future__ import annotations

import itertools
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from wandering import BumpRegressor
from wandering.fit.regressor import NotFittedError

ROOT = pathlib.Path(__file__).resolve().parents[1]
FAST = dict(n_bumps=16, steps=60, random_state=0)


def _data(n=800, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 3, size=(n, 2))
    y = np.sin(1.5 * x[:, 0]) * np.cos(x[:, 1]) + 0.5 * x[:, 1]
    return x, y


# Oriented fits are several times slower on the tiny problems of the checks (rotations of up to
# d = 10 dimensions): fewer steps, the same checks.
@pytest.mark.parametrize("n_bumps, shape, steps", [(8, "axis", 20), ("auto", "axis", 20), (8, "oriented", 5)])
def test_check_estimator(n_bumps, shape, steps):
    pytest.importorskip("sklearn")
    from sklearn.utils.estimator_checks import check_estimator

    est = BumpRegressor(n_bumps=n_bumps, steps=steps, shape=shape, random_state=0)
    results = check_estimator(est, on_fail=None)
    failed = [(r["check_name"], repr(r["exception"])) for r in results if r["status"] == "failed"]
    assert not failed, failed
    assert len(results) > 40


def test_fit_predict_one_output():
    x, y = _data()
    est = BumpRegressor(**FAST).fit(x, y)
    assert est.predict(x).shape == (len(x),)
    assert est.score(x, y) > 0.98
    assert est.n_features_in_ == 2 and est.n_outputs_ == 1
    assert len(est.loss_curve_) == FAST["steps"]
    assert est.n_params_ == 5 * 16 + 1
    assert est.module_.bumps.m.shape == (16,)
    assert len(est.ridge_) == 2  # picked on held-out points at the start and for the polish
    fixed = BumpRegressor(**FAST, ridge=1e-6).fit(x, y)
    assert fixed.ridge_ == [1e-6, 1e-6]


def test_fit_predict_several_outputs_and_column_vector():
    x, y = _data()
    Y = np.stack([y, 3 * y + 1, x[:, 0] ** 2], axis=1)
    est = BumpRegressor(**FAST).fit(x, Y)
    assert est.predict(x).shape == (len(x), 3)
    assert est.module_.bumps.m.shape == (16, 3)
    assert est.score(x, Y) > 0.95
    one = BumpRegressor(**FAST).fit(x, y).predict(x)
    col = BumpRegressor(**FAST).fit(x, y[:, None]).predict(x)
    assert col.shape == (len(x), 1)
    np.testing.assert_array_equal(col[:, 0], one)  # (n, 1) is the single-output fit


def test_deterministic_and_leaves_global_rng_alone():
    x, y = _data()
    torch.manual_seed(5)
    before = torch.get_rng_state()
    a = BumpRegressor(**FAST).fit(x, y).predict(x)
    assert torch.equal(torch.get_rng_state(), before)
    b = BumpRegressor(**FAST).fit(x, y).predict(x)
    np.testing.assert_array_equal(a, b)
    c = BumpRegressor(**{**FAST, "random_state": 1}).fit(x, y).predict(x)
    assert not np.array_equal(a, c)


def test_minibatch_callback_noise_and_bounds():
    x, y = _data()
    seen = []

    def cb(step, loss, model):
        seen.append((step, loss))
        return step == 9  # stop after 10 steps

    est = BumpRegressor(
        n_bumps=16, steps=100, batch=128, c_grad_std=1e-3, bounds=[[-1, 2], [-2, 3]], random_state=0, callback=cb
    ).fit(x, y)
    assert [s for s, _ in seen] == list(range(10)) and len(est.loss_curve_) == 10
    c = est.module_.bumps.c.detach().numpy() * est.x_scale_[:, None] + est.x_lo_[:, None]
    assert (c[0] >= -1 - 1e-5).all() and (c[0] <= 2 + 1e-5).all()


def test_relocation_moves_bumps():
    x, y = _data()
    # a start far from the data (centres bounded to a box the data only touch) leaves dead bumps
    kw = dict(
        n_bumps=32, steps=200, relocate_every=20, relocate_max_fraction=0.5, relocate_min_rel_m=0.2, random_state=0
    )
    est = BumpRegressor(relocate=True, **kw).fit(x, y)
    assert est.relocated_ > 0
    off = BumpRegressor(**kw).fit(x, y)  # off by default
    assert off.relocated_ == 0 and not BumpRegressor().relocate


@pytest.mark.parametrize(
    "X, y, exc, match",
    [
        (np.full((5, 2), np.nan), np.zeros(5), ValueError, "NaN"),
        (np.array([[np.inf, 0.0]] * 5), np.zeros(5), ValueError, "inf"),
        (np.zeros((5, 2)), np.array([0, 1, np.nan, 0, 0.0]), ValueError, "NaN"),
        (np.zeros((5, 2)), np.zeros(4), ValueError, "inconsistent numbers of samples"),
        (np.zeros(5), np.zeros(5), ValueError, "2D array"),
        (np.zeros((0, 2)), np.zeros(0), ValueError, "0 sample"),
        (np.zeros((5, 2)), np.zeros((5, 2, 1)), ValueError, None),
    ],
)
def test_fit_input_errors(X, y, exc, match):
    with pytest.raises(exc, match=match):
        BumpRegressor(**FAST).fit(X, y)


@pytest.mark.parametrize(
    "params, exc, match",
    [
        (dict(n_bumps=0), ValueError, "n_bumps"),
        (dict(n_bumps=2.5), TypeError, "n_bumps"),
        (dict(steps=-1), ValueError, "steps"),
        (dict(batch="big"), ValueError, "batch"),
        (dict(init="grid"), ValueError, "init"),
        (dict(support_p=1.5), ValueError, "support_p"),
        (dict(lr_position=-1.0), ValueError, "lr_position"),
        (dict(relocate="yes"), TypeError, "relocate"),
        (dict(bounds=[[0, 1]]), ValueError, "bounds"),
        (dict(callback=3), TypeError, "callback"),
        (dict(random_state="x"), ValueError, "random_state"),
        (dict(device="nonsense"), ValueError, "device"),
        (dict(ridge="big"), TypeError, "ridge"),
        (dict(ridge=-1.0), ValueError, "ridge"),
        (dict(early_stopping="yes"), TypeError, "early_stopping must be a bool, but got str"),
        (dict(validation_every=0), ValueError, "validation_every must be >= 1, but got 0"),
        (dict(validation_every=2.5), TypeError, "validation_every must be an int, but got float"),
        (dict(shape="round"), ValueError, r"shape must be one of \('axis', 'oriented'\), but got 'round'"),
        (dict(shape=None), ValueError, "shape must be one of"),
        (dict(lr_angle=-0.1), ValueError, r"lr_angle must be in \[0, inf\), but got -0.1"),
        (dict(lr_angle="fast"), TypeError, "lr_angle must be a number, but got str"),
        (dict(grow_from=0), ValueError, "grow_from must be >= 1, but got 0"),
        (dict(grow_from=4.0), TypeError, "grow_from must be an int, but got float"),
        (dict(grow_from=17), ValueError, "grow_from must be <= n_bumps = 16, but got 17"),
        (dict(grow_from=4, grow_every=0), ValueError, "grow_every must be >= 1, but got 0"),
        (dict(grow_from=4, grow_until=0.0), ValueError, r"grow_until must be in \(0, 1.0\], but got 0.0"),
        (dict(grow_from=4, grow_until=1.5), ValueError, r"grow_until must be in \(0, 1.0\], but got 1.5"),
        (
            dict(grow_from=4, grow_every=30),
            ValueError,
            "grow_every must be < grow_until \\* steps = 30 for growth to reach n_bumps, but got 30",
        ),
        (
            dict(grow_from=1, grow_every=10),
            ValueError,
            r"grow_from must be >= n_bumps / 2\*\*2 \(growth events\) = 4 to reach n_bumps = 16, but got 1",
        ),
    ],
)
def test_parameter_errors(params, exc, match):
    x, y = _data(50)
    with pytest.raises(exc, match=match):
        BumpRegressor(**{**FAST, **params}).fit(x, y)


def _noisy(n=300, seed=0, noise=0.3):
    x, y = _data(n, seed)
    return x, y + np.random.default_rng(seed + 7).normal(scale=noise, size=n)


def test_early_stopping_restores_the_best_parameters():
    x, y = _noisy()
    snaps = {}

    def cb(step, loss, model):  # the parameters after step + 1 steps
        snaps[step + 1] = [t.detach().clone() for t in model.parameters()]

    kw = dict(n_bumps=64, steps=120, lr_position=0.5, lr_magnitude=0.05, init="kmeans", polish=False, random_state=0)
    est = BumpRegressor(**kw, early_stopping=True, validation_every=10, callback=cb).fit(x, y)
    steps = [s for s, _ in est.validation_loss_]
    assert steps == list(range(0, 121, 10))  # before the first step, every 10 steps, after the last
    losses = dict(est.validation_loss_)
    assert est.best_step_ == min(losses, key=losses.get)
    assert 0 < est.best_step_ < 120  # this noisy fit overfits: an earlier state is kept
    for got, want in zip(est.module_.parameters(), snaps[est.best_step_]):
        assert torch.equal(got.detach(), want)
    assert not torch.equal(snaps[120][0], snaps[est.best_step_][0])
    off = BumpRegressor(**kw).fit(x, y)
    assert off.best_step_ is None and off.validation_loss_ == []


def test_early_stopping_validation_split_is_reproducible():
    x, y = _noisy()
    kw = dict(n_bumps=32, steps=60, early_stopping=True, validation_every=5)
    a = BumpRegressor(**kw, random_state=3).fit(x, y)
    b = BumpRegressor(**kw, random_state=3).fit(x, y)
    assert a.validation_loss_ == b.validation_loss_ and a.best_step_ == b.best_step_
    np.testing.assert_array_equal(a.predict(x), b.predict(x))
    c = BumpRegressor(**kw, random_state=4).fit(x, y)
    assert c.validation_loss_[0] != a.validation_loss_[0]  # another seed, another split and start
    # a stop by the callback still validates there and keeps the best state
    d = BumpRegressor(**kw, random_state=3, callback=lambda s, loss, m: s == 11).fit(x, y)
    assert [s for s, _ in d.validation_loss_] == [0, 5, 10, 12]


def test_widths_stay_above_the_point_spacing():
    x, y = _noisy(400)
    est = BumpRegressor(n_bumps=64, steps=150, lr_position=0.5, random_state=0).fit(x, y)
    w = est.module_.bumps.w.detach().numpy()
    # unit-box widths: at least min(the initial width, one point spacing n**(-1/d))
    assert w.min() >= min(0.7 * 64**-0.5, 400**-0.5) * (1 - 1e-5)


def test_predict_errors():
    x, y = _data()
    with pytest.raises(NotFittedError):
        BumpRegressor().predict(x)
    est = BumpRegressor(**FAST).fit(x, y)
    with pytest.raises(ValueError, match="features"):
        est.predict(x[:, :1])
    with pytest.raises(ValueError, match="NaN"):
        est.predict(np.full((3, 2), np.nan))


def test_params_protocol():
    est = BumpRegressor(n_bumps=7, steps=3)
    assert est.get_params()["n_bumps"] == 7 and est.get_params()["steps"] == 3
    assert est.set_params(n_bumps=9) is est and est.n_bumps == 9
    with pytest.raises(ValueError):
        est.set_params(not_a_param=1)
    assert "n_bumps=9" in repr(est)


_NO_SKLEARN = r"""
import sys
sys.modules["sklearn"] = None  # import sklearn now raises ImportError, as if it were not installed
import numpy as np
import wandering
from wandering import BumpRegressor
from wandering.fit.regressor import HAVE_SKLEARN, NotFittedError
assert not HAVE_SKLEARN
rng = np.random.default_rng(0)
x = rng.uniform(size=(400, 2)); y = np.sin(4 * x[:, 0]) + x[:, 1]
est = BumpRegressor(n_bumps=16, steps=40, random_state=0)
assert est.get_params()["n_bumps"] == 16 and est.set_params(steps=30) is est
try:
    est.predict(x)
except NotFittedError:
    pass
else:
    raise AssertionError("no NotFittedError")
est.fit(x, y)
assert est.predict(x).shape == (400,) and est.score(x, y) > 0.95, est.score(x, y)
for bad in (np.full((3, 2), np.nan), x[:, :1]):
    try:
        est.predict(bad)
    except ValueError:
        pass
    else:
        raise AssertionError("no ValueError")
print("ok", repr(est))
"""


def test_works_without_sklearn():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    r = subprocess.run([sys.executable, "-c", _NO_SKLEARN], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ok BumpRegressor(n_bumps=16, random_state=0, steps=30)" in r.stdout


@pytest.mark.parametrize("P", [None, 2])
def test_least_squares_paths_agree_with_the_dense_design(monkeypatch, P):
    from wandering._engine._geometry import support_halfwidths
    from wandering.fit import _lstsq

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(700, 2, generator=gen)
    c, w = torch.rand(2, 30, generator=gen), 0.1 + 0.1 * torch.rand(2, 30, generator=gen)
    y = torch.randn(700, generator=gen) if P is None else torch.randn(700, P, generator=gen)
    phi = _lstsq._design_chunk(x.double(), c.double(), w.double(), support_halfwidths(w.double(), 0.01))
    phi = torch.cat([phi, torch.ones(700, 1, dtype=torch.float64)], 1)
    y2 = y.double().reshape(700, -1)
    for work in (1e18, 0.0):  # dense chunks, then the Numba kernel
        monkeypatch.setattr(_lstsq, "_DENSE_WORK", work)
        G, B = _lstsq.normal_equations(x, y, c, w, 0.01)
        torch.testing.assert_close(G, phi.T @ phi, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(B, phi.T @ y2, rtol=1e-4, atol=1e-4)
        m, b = _lstsq.solve_magnitudes(x, y, c, w, 0.01, ridge=0.0)
        ref = torch.linalg.lstsq(phi, y2).solution
        torch.testing.assert_close(torch.cat([m.reshape(30, -1), b.reshape(1, -1)]), ref, rtol=1e-3, atol=1e-3)


def test_ridge_cv_refit_on_the_fit_part_only():
    from wandering.fit import _lstsq

    gen = torch.Generator().manual_seed(1)
    x = torch.rand(600, 2, generator=gen)
    c, w = torch.rand(2, 40, generator=gen), torch.full((2, 40), 0.08)
    y = torch.sin(6 * x[:, 0]) + 0.3 * torch.randn(600, generator=gen)
    val = torch.zeros(600, dtype=torch.bool)
    val[::10] = True
    m_all, b_all, r_all = _lstsq.solve_magnitudes_cv(x, y, c, w, 0.01, val)
    m_fit, b_fit, r_fit = _lstsq.solve_magnitudes_cv(x, y, c, w, 0.01, val, refit_all=False)
    assert r_all == r_fit
    m, b = _lstsq.solve_magnitudes(x[~val], y[~val], c, w, 0.01, ridge=r_fit)
    torch.testing.assert_close(m_fit, m)
    torch.testing.assert_close(b_fit, b)
    m, b = _lstsq.solve_magnitudes(x, y, c, w, 0.01, ridge=r_all)
    torch.testing.assert_close(m_all, m)
    torch.testing.assert_close(b_all, b)


def test_the_polish_ridge_is_no_smaller_than_the_start():
    x, y = _noisy(400)
    est = BumpRegressor(n_bumps=64, steps=100, lr_position=0.5, random_state=0).fit(x, y)
    assert est.ridge_[1] >= est.ridge_[0]


# ---------------------------------------------------------------- few points: the bump count and the fit's verdict
def test_auto_bump_count_keeps_four_points_per_parameter():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from wandering.fit.regressor import auto_n_bumps

    assert BumpRegressor().get_params()["n_bumps"] == "auto"
    # diabetes (d = 10): 398 points -> 4 bumps; 2-D benchmark sizes keep the old 256
    assert auto_n_bumps(398, 10) == 4 and auto_n_bumps(353, 10) == 4
    assert auto_n_bumps(5120, 2) == 256 and auto_n_bumps(5119, 2) == 255 and auto_n_bumps(18000, 2) == 256
    assert auto_n_bumps(10, 3) == 1 and auto_n_bumps(1, 1) == 1

    @settings(max_examples=300, deadline=None)
    @given(st.integers(1, 10**7), st.integers(1, 64))
    def check(n, d):
        k = auto_n_bumps(n, d)
        per_output = (2 * d + 1) * k
        assert 1 <= k <= 256
        if n >= 4 * (2 * d + 1):
            assert 4 * per_output <= n  # at most a quarter of the points
        if 1 < k < 256:
            assert 4 * (per_output + 2 * d + 1) > n  # the most bumps that keep it so

    check()


def test_default_bump_count_on_few_points_in_many_dimensions():
    """load_diabetes (d = 10): the defaults fitted 256 bumps (5,377 parameters) on 398 points."""
    sklearn = pytest.importorskip("sklearn")
    from sklearn.datasets import load_diabetes

    del sklearn
    x, y = load_diabetes(return_X_y=True)
    perm = np.random.default_rng(1).permutation(len(x))
    te, tr = perm[: len(x) // 10], perm[len(x) // 10 :]
    est = BumpRegressor(steps=300, random_state=0).fit(x[tr], y[tr])
    assert est.n_bumps == "auto" and est.n_bumps_ == 4  # the parameter is left as given
    assert est.n_params_ == 4 * 21 + 1 and est.n_params_ * 4 <= len(tr)
    assert est.score(x[te], y[te]) > 0.4  # linear regression: 0.59 on this split


def _pure_noise(n=300, d=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(size=(n, d)), rng.normal(size=n)


def test_a_fit_worse_than_a_constant_says_so():
    from wandering import FitQualityWarning

    x, y = _pure_noise()
    with pytest.warns(FitQualityWarning, match="worse than a constant") as caught:
        est = BumpRegressor(64, steps=200, random_state=0).fit(x, y)
    msg = str(caught[0].message)
    assert est.validation_score_ < 0 and f"validation R^2 {est.validation_score_:.3g} on 30 held-out points" in msg
    assert "705 parameters, 300 points in 5-D" in msg and "n_bumps='auto' picks 6" in msg
    assert "\n" not in msg and caught[0].filename == __file__  # points at the caller's fit
    # several outputs: the one that is noise is named
    x2, y2 = _data(100)
    both = np.column_stack([y2, np.random.default_rng(1).normal(size=100)])
    with pytest.warns(FitQualityWarning, match="below 0 for output 1 of 2"):
        BumpRegressor(64, steps=100, random_state=0).fit(x2, both)


def test_a_good_fit_is_silent_and_scores_its_validation_split():
    import warnings

    from wandering import FitQualityWarning

    x, y = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FitQualityWarning)
        est = BumpRegressor(**FAST).fit(x, y)  # enough points per parameter
        few = BumpRegressor(64, steps=100, random_state=0).fit(x[:100], y[:100])  # fewer points than parameters
    assert est.validation_score_ > 0.9 and few.validation_score_ > 0.5
    assert BumpRegressor(**FAST, ridge=1e-6).fit(x, y).validation_score_ is None  # no split, no figure


@pytest.mark.filterwarnings("ignore::wandering.FitQualityWarning")  # shuffled validation values fit badly
def test_with_few_points_the_validation_points_stay_unseen_until_the_polish(monkeypatch):
    """Fewer points than parameters: the placement and Adam use the 90% only, so the validation
    score is honest. Shuffling the values among the validation points leaves the centres and
    widths as they were (up to the rounding of the standardisation); among other points it does not.
    (The validation points pick the ridge, their one use before the polish: here it has one choice.)"""
    import wandering.fit.regressor

    monkeypatch.setattr(wandering.fit.regressor, "RIDGE_GRID", (1e-3,))
    x, y = _data(120)
    kw = dict(n_bumps=32, steps=60, random_state=5)  # 32 * 5 + 1 = 161 parameters > 120 points
    val = np.sort(np.random.default_rng(5).permutation(len(x))[: len(x) // 10])  # drawn first
    fit = np.setdiff1d(np.arange(len(x)), val)

    def centres_widths(values):
        est = BumpRegressor(**kw).fit(x, values)
        return est, torch.cat([est.module_.bumps.c, est.module_.bumps.w]).detach()

    ref, cw = centres_widths(y)
    y_val = y.copy()
    y_val[val] = y[val][::-1]
    other, cw_val = centres_widths(y_val)
    torch.testing.assert_close(cw_val, cw, rtol=1e-4, atol=1e-5)
    assert other.validation_score_ != ref.validation_score_
    y_fit = y.copy()
    y_fit[fit[: len(val)]] = y[fit[: len(val)]][::-1]
    _, cw_fit = centres_widths(y_fit)
    assert float((cw_fit - cw).abs().max()) > 1e-3


# ---------------------------------------------------------------- oriented bumps
def _ridge_data(n=900, seed=0):
    """An oblique ridge: what one rotated bump fits and axis-aligned ones need many for."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, size=(n, 2))
    y = np.exp(-(((x[:, 0] - x[:, 1]) / 0.08) ** 2)) + 0.3 * x[:, 0]
    return x, y


def test_oriented_fit_trains_the_angles():
    from wandering import SlowOrientedSumOfBumpFcns, SlowSumOfBumpFcns

    assert BumpRegressor().shape == "axis"  # the default, for now
    x, y = _ridge_data(400)
    kw = dict(n_bumps=8, steps=60, random_state=0)
    est = BumpRegressor(**kw, shape="oriented").fit(x, y)
    bumps = est.module_.bumps
    assert isinstance(bumps, SlowOrientedSumOfBumpFcns)
    assert bumps.angles.shape == (1, 8) and float(bumps.angles.detach().abs().max()) > 0.1
    assert est.n_params_ == (2 * 2 + 1 + 1) * 8 + 1  # c, w, one angle and m per bump, and the offset
    axis = BumpRegressor(**kw).fit(x, y)
    assert isinstance(axis.module_.bumps, SlowSumOfBumpFcns) and axis.n_params_ == 5 * 8 + 1
    assert est.score(x, y) > axis.score(x, y) + 0.1, (est.score(x, y), axis.score(x, y))  # 0.99 against 0.70
    # no angle rate: the angles stay exactly at their start (the cells' shapes, see test_oriented_init)
    still = BumpRegressor(**kw, shape="oriented", lr_angle=0.0).fit(x, y)
    start = BumpRegressor(**{**kw, "steps": 1}, shape="oriented", lr_angle=0.0).fit(x, y)
    assert start.module_.bumps.angles.any()
    assert torch.equal(still.module_.bumps.angles, start.module_.bumps.angles)


def test_oriented_start_is_the_axis_aligned_placement_shaped_and_solved_on_the_ellipsoids():
    from wandering.fit._lstsq import solve_magnitudes

    x, y = _ridge_data(400)
    # nothing moves (all rates 0, no polish): the fitted model is the start
    frozen = dict(n_bumps=10, steps=1, lr_position=0.0, lr_magnitude=0.0, lr_angle=0.0, polish=False, random_state=2)
    ax = BumpRegressor(**frozen).fit(x, y).module_
    est = BumpRegressor(**frozen, shape="oriented").fit(x, y)
    bumps = est.module_.bumps
    assert torch.equal(ax.bumps.c, bumps.c)  # the same placement
    # turned and stretched like their cells (wandering.fit._oriented_init), the scales' geometric mean
    # the axis-aligned width wherever the bounds did not clip them
    assert bumps.angles.any()
    w, w_ax = bumps.w.detach().double(), ax.bumps.w.detach().double()
    lo, hi = bumps.w_bounds[0].tolist()
    free = ((w > lo * (1 + 1e-6)) & (w < hi * (1 - 1e-6))).all(0)
    assert free.any() and (w.max(0).values > 1.5 * w.min(0).values).any()
    torch.testing.assert_close(w.log().mean(0)[free].exp(), w_ax[0][free], rtol=1e-5, atol=0)
    # the magnitudes are the exact ridge solve of the oriented design (the ellipsoids inside the boxes)
    xt = torch.as_tensor((x - est.x_lo_) / est.x_scale_, dtype=torch.float32)
    yt = torch.as_tensor((y - est.y_mean_[0]) / est.y_std_[0], dtype=torch.float32)
    m, b = solve_magnitudes(xt, yt, bumps.c, bumps.w, 0.01, est.ridge_[0], angles=bumps.angles)
    torch.testing.assert_close(bumps.m.detach(), m.float())
    torch.testing.assert_close(est.module_.offset.detach(), b.float())
    m_box, _ = solve_magnitudes(xt, yt, bumps.c, bumps.w, 0.01, est.ridge_[0])
    assert not torch.allclose(m_box, m)


@pytest.mark.parametrize("d, P", [(1, None), (3, 2)])
def test_oriented_fit_dimensions_outputs_and_determinism(d, P):
    rng = np.random.default_rng(d)
    x = rng.uniform(-1, 1, size=(500, d))
    y = np.sin(2 * x.sum(1)) + x[:, 0]
    if P is not None:
        y = np.stack([y, np.cos(3 * x[:, -1])], axis=1)
    kw = dict(n_bumps=10, steps=40, shape="oriented", random_state=0)
    a = BumpRegressor(**kw).fit(x, y)
    assert a.module_.bumps.angles.shape == (d * (d - 1) // 2, 10)
    assert a.n_params_ == (2 * d + d * (d - 1) // 2 + (P or 1)) * 10 + (P or 1)
    assert a.predict(x).shape == ((500,) if P is None else (500, P))
    assert a.score(x, y) > 0.5
    np.testing.assert_array_equal(a.predict(x), BumpRegressor(**kw).fit(x, y).predict(x))


def test_oriented_fit_relocates_and_stops_early():
    x, y = _data(400)
    kw = dict(
        n_bumps=32,
        steps=60,
        relocate_every=10,
        relocate_max_fraction=0.5,
        relocate_min_rel_m=0.2,
        shape="oriented",
        random_state=0,
    )
    est = BumpRegressor(relocate=True, early_stopping=True, validation_every=20, **kw).fit(x, y)
    assert est.relocated_ > 0 and est.best_step_ is not None
    assert est.score(x, y) > 0.95


@pytest.mark.parametrize("shape, P", [("axis", None), ("oriented", 2)])
def test_growth_reaches_n_bumps_on_schedule_and_is_deterministic(shape, P):
    x, y = _data(600)
    if P:
        y = np.stack([y, np.cos(x[:, 0])], 1)
    events = []

    def watch(step, loss, model):
        events.append(model.bumps.n_bumps)

    kw = dict(n_bumps=40, steps=60, grow_from=10, grow_every=5, grow_until=0.5, shape=shape, random_state=0)
    est = BumpRegressor(callback=watch, **kw).fit(x, y)
    assert est.n_bumps_ == 40 and est.module_.bumps.n_bumps == 40 and est.grown_ == 30
    assert est.module_.bumps.m.shape == ((40,) if P is None else (40, P))
    # K: 10 until the first event (after step 5), then growing at steps 5, 10, ..., 25, 40 from step 25 on
    assert events[:5] == [10] * 5 and events[5] > 10
    assert all(a <= b for a, b in itertools.pairwise(events)) and events[25:] == [40] * 35
    assert len(set(events)) == 6  # one K per event (5 events) and the start
    assert est.n_params_ == sum(t.numel() for t in est.module_.parameters())
    again = BumpRegressor(**kw).fit(x, y)
    np.testing.assert_array_equal(est.predict(x), again.predict(x))
    assert est.score(x, y) > 0.9
    assert BumpRegressor().grow_from is None  # off by default


def test_growth_with_early_stopping_keeps_a_final_size_best():
    x, y = _data(600)
    est = BumpRegressor(
        n_bumps=24,
        steps=60,
        grow_from=8,
        grow_every=10,
        grow_until=0.5,
        early_stopping=True,
        validation_every=5,
        random_state=0,
    ).fit(x, y)
    assert est.module_.bumps.n_bumps == 24 and est.best_step_ >= 21  # after the last event (step 20)
