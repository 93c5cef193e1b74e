"""Oriented (full-covariance) bumps: rotations, the op through every engine that runs them,
second order, torch.compile, and the modules (bounds, keyed noise, resume, errors)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import ORIENTED_ENGINES
from hypothesis import given, settings
from hypothesis import strategies as st
from problems import TOL

from wandering import (
    OrientedSumOfBumpFcns,
    SlowOrientedSumOfBumpFcns,
    SlowSumOfBumpFcns,
    bump_sum,
    bump_sum_reference,
    oriented_bump_sum,
    oriented_bump_sum_reference,
)
from wandering._engine import _op
from wandering._engine._geometry import cutoffs, ellipsoid_halfwidths
from wandering._engine._rotation import n_angles, precision_transforms, rotations
from wandering.nn.training import perturb_params


def oriented_problem(n, d, K, P=None, dtype=torch.float64, seed=0, scales=(0.05, 0.4), support_p=None):
    """x in the unit cube, centres inside it, random scales and angles, normal m.

    With ``support_p``, points within a relative 1e-3 of any bump's ellipsoid boundary are
    dropped: there s < r2 is decided by rounding, and the contract lets engines differ."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, d, generator=gen, dtype=torch.float64)
    c = torch.rand(d, K, generator=gen, dtype=torch.float64)
    w = scales[0] + (scales[1] - scales[0]) * torch.rand(d, K, generator=gen, dtype=torch.float64)
    angles = math.pi * (2 * torch.rand(n_angles(d), K, generator=gen, dtype=torch.float64) - 1)
    m = (
        torch.randn(K, generator=gen, dtype=torch.float64)
        if P is None
        else torch.randn(K, P, generator=gen, dtype=torch.float64)
    )
    if support_p is not None:
        U = precision_transforms(rotations(angles, d), w)
        z = torch.einsum("ajk,ijk->iak", U, x[:, :, None] - c[None])
        ratio = (z * z).sum(dim=1) / -math.log(support_p)
        x = x[((ratio - 1).abs() > 1e-3).all(dim=1)]
    return [t.to(dtype) for t in (x, c, w, m, angles)]


def _grads(fn, x, c, w, m, angles, gy):
    ts = [t.detach().clone().requires_grad_() for t in (x, c, w, m, angles)]
    y = fn(*ts)
    return (y.detach(), *torch.autograd.grad((y * gy).sum(), ts))


# ---------------------------------------------------------------- rotations and geometry


def test_two_d_rotation_is_the_angle_and_agrees_with_the_matrix_exponential():
    theta = torch.tensor([[0.3, -1.2, 2.9]], dtype=torch.float64)
    R = rotations(theta, 2)
    expected = torch.stack(
        [torch.stack([theta[0].cos(), -theta[0].sin()]), torch.stack([theta[0].sin(), theta[0].cos()])]
    )
    torch.testing.assert_close(R, expected)
    gen = torch.zeros(3, 2, 2, dtype=torch.float64)
    gen[:, 1, 0], gen[:, 0, 1] = theta[0], -theta[0]
    torch.testing.assert_close(R, torch.linalg.matrix_exp(gen).permute(1, 2, 0))


@pytest.mark.parametrize("d", [3, 4, 5])
def test_rotations_are_proper_orthogonal_and_differentiable(d):
    a = torch.randn(n_angles(d), 7, dtype=torch.float64, generator=torch.Generator().manual_seed(d))
    R = rotations(a, d).permute(2, 0, 1)
    torch.testing.assert_close(R @ R.transpose(1, 2), torch.eye(d, dtype=torch.float64).expand(7, d, d))
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(7, dtype=torch.float64))
    assert torch.autograd.gradcheck(lambda t: rotations(t, d), (a[:, :2].clone().requires_grad_(),))


def test_three_d_angle_order_is_documented():
    """(0, 1), (0, 2), (1, 2): a lone first angle turns x_0 towards x_1 about x_2."""
    a = torch.tensor([[0.5], [0.0], [0.0]], dtype=torch.float64)
    R = rotations(a, 3)[:, :, 0]
    torch.testing.assert_close(R[:, 0], torch.tensor([math.cos(0.5), math.sin(0.5), 0.0], dtype=torch.float64))
    torch.testing.assert_close(R[:, 2], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))


def test_ellipsoid_box_is_tight_around_the_support():
    """Every point of the ellipsoid lies in the box, and the box's faces are touched."""
    d, K, sp = 3, 5, 0.01
    _, _c, w, _, a = oriented_problem(1, d, K)
    R = rotations(a, d)
    r2 = cutoffs(w, sp)
    half = ellipsoid_halfwidths(R, w, r2)
    dirs = torch.nn.functional.normalize(torch.randn(20000, d, dtype=torch.float64), dim=1)
    for k in range(K):
        pts = (R[:, :, k] @ (w[:, k, None] * dirs.T * r2[k].sqrt())).T  # on the boundary
        reach = pts.abs().max(dim=0).values
        assert bool((reach <= half[:, k] * (1 + 1e-12)).all())
        assert bool((reach >= half[:, k] * 0.99).all())


def test_dead_bump_has_zero_cutoff_and_box():
    w = torch.tensor([[0.2, 0.0], [0.3, 0.1]], dtype=torch.float64)
    r2 = cutoffs(w, 0.01)
    assert r2.tolist() == [-math.log(0.01), 0.0]
    assert cutoffs(w, None).tolist() == [math.inf, 0.0]
    half = ellipsoid_halfwidths(rotations(torch.zeros(1, 2, dtype=torch.float64), 2), w, r2)
    assert half[:, 1].tolist() == [0.0, 0.0]


# ---------------------------------------------------------------- the function


@pytest.mark.parametrize("support_p", [None, 0.01])
def test_zero_angles_exact_sum_is_the_axis_aligned_sum(support_p):
    x, c, w, m, _ = oriented_problem(500, 3, 9)
    zero = torch.zeros(3, 9, dtype=torch.float64)
    got = oriented_bump_sum_reference(x, c, w, m, zero)
    torch.testing.assert_close(got, bump_sum_reference(x, c, w, m))
    if support_p is not None:  # culled: the ellipsoid lies inside the axis box, and agrees with it there
        y_box = bump_sum_reference(x, c, w, m, support_p)
        y_ell = oriented_bump_sum_reference(x, c, w, m, zero, support_p)
        assert not torch.equal(y_box, y_ell)  # the box's corners hold pairs the ellipsoid drops


@pytest.mark.parametrize("support_p", [None, 0.01, 0.3])
def test_one_dimension_is_exactly_the_axis_aligned_bump(support_p):
    x, c, w, m, _ = oriented_problem(400, 1, 6, P=2)
    for backend in ("reference", "torch", "auto"):
        y = oriented_bump_sum(x, c, w, m, None, support_p, backend)
        assert torch.equal(y, bump_sum(x, c, w, m, support_p, backend))


def test_culled_bump_is_the_exact_bump_above_support_p_and_zero_below():
    """The seed's support_p, 'the percent of max value in any direction': one elongated,
    rotated bump is exactly its exact value where that is above support_p * m, else 0."""
    sp = 0.05
    c = torch.tensor([[0.5], [0.5]], dtype=torch.float64)
    w = torch.tensor([[0.3], [0.03]], dtype=torch.float64)
    a = torch.tensor([[0.7]], dtype=torch.float64)
    m = torch.tensor([2.0], dtype=torch.float64)
    x = torch.rand(20000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    exact = oriented_bump_sum_reference(x, c, w, m, a)
    culled = oriented_bump_sum_reference(x, c, w, m, a, sp)
    inside = exact > sp * 2.0 * (1 + 1e-9)
    outside = exact < sp * 2.0 * (1 - 1e-9)
    assert int(inside.sum()) > 100 and int(outside.sum()) > 100
    torch.testing.assert_close(culled[inside], exact[inside])
    assert bool((culled[outside] == 0).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("support_p", [None, 0.01])
@pytest.mark.parametrize("P", [None, 3])
@pytest.mark.parametrize("d", [2, 3, 4])
def test_every_engine_matches_the_reference(oriented_engine, d, P, support_p, dtype):
    x, c, w, m, a = oriented_problem(700, d, 20, P, dtype, seed=d, support_p=support_p)
    gy = torch.randn(x.shape[0], *(() if P is None else (P,)), dtype=dtype, generator=torch.Generator().manual_seed(5))
    got = _grads(lambda *t: oriented_bump_sum(*t, support_p, oriented_engine), x, c, w, m, a, gy)
    ref = _grads(
        lambda *t: oriented_bump_sum_reference(*t, support_p=support_p), *(t.double() for t in (x, c, w, m, a, gy))
    )
    tol = TOL[dtype] if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-4)
    for name, g, r in zip(("y", "x", "c", "w", "m", "angles"), got, ref):
        assert g.dtype == dtype, name
        torch.testing.assert_close(g.double(), r, **tol, msg=lambda s: f"{name}: {s}")


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(0, 60), d=st.integers(2, 4), K=st.integers(1, 9), P=st.sampled_from([None, 1, 4]),
    cull=st.booleans(), seed=st.integers(0, 1000),
)  # fmt: skip
def test_random_shapes_match_the_reference(oriented_engine, n, d, K, P, cull, seed):
    sp = 0.02 if cull else None
    x, c, w, m, a = oriented_problem(n, d, K, P, seed=seed, support_p=sp)
    gy = torch.randn(x.shape[0], *(() if P is None else (P,)), dtype=torch.float64)
    got = _grads(lambda *t: oriented_bump_sum(*t, sp, oriented_engine), x, c, w, m, a, gy)
    ref = _grads(lambda *t: oriented_bump_sum_reference(*t, support_p=sp), x, c, w, m, a, gy)
    for g, r in zip(got, ref):
        assert g.shape == r.shape
        torch.testing.assert_close(g, r, **TOL[torch.float64])


def test_dead_bumps_count_nowhere_and_get_zero_gradients(oriented_engine):
    x, c, w, m, a = oriented_problem(300, 2, 5, P=2, support_p=0.01)
    w[1, 2] = 0.0
    for sp in (None, 0.01):
        ts = [t.clone().requires_grad_() for t in (x, c, w, m, a)]
        y = oriented_bump_sum(*ts, sp, oriented_engine)
        keep = torch.ones(5, dtype=torch.bool)
        keep[2] = False
        torch.testing.assert_close(y, oriented_bump_sum_reference(x, c[:, keep], w[:, keep], m[keep], a[:, keep], sp))
        y.square().sum().backward()
        for t in ts[1:]:
            assert bool(torch.isfinite(t.grad).all())
        assert (
            ts[1].grad[:, 2].abs().max() == 0 and ts[3].grad[2].abs().max() == 0 and ts[4].grad[:, 2].abs().max() == 0
        )


@pytest.mark.parametrize("support_p", [None, 0.05])
def test_gradcheck_and_gradgradcheck(oriented_engine, support_p):
    x, c, w, m, a = oriented_problem(16, 3, 4, P=2, seed=11, support_p=support_p, scales=(0.3, 0.6))
    ts = [t.clone().requires_grad_() for t in (x, c, w, m, a)]
    fn = lambda *t: oriented_bump_sum(*t, support_p, oriented_engine)  # noqa: E731
    assert torch.autograd.gradcheck(fn, ts)
    assert torch.autograd.gradgradcheck(fn, ts)


@pytest.mark.parametrize("support_p", [None, 0.05])
def test_opcheck_passes_for_both_oriented_ops(oriented_engine, support_p):
    x, c, w, m, a = oriented_problem(200, 3, 10, P=2, dtype=torch.float32, support_p=support_p)
    R = rotations(a, 3)
    U, r2 = precision_transforms(R, w), cutoffs(w, support_p)
    half = ellipsoid_halfwidths(R, w, r2)
    x, c, U, m = (t.clone().requires_grad_() for t in (x, c, U, m))
    cull = support_p is not None
    torch.library.opcheck(_op.oriented_bump_sum_op, (x, c, U, m, r2, half, oriented_engine, cull))
    gy = torch.randn(x.shape[0], 2)
    for need_x in (True, False):
        args = (gy, x.detach(), c.detach(), U.detach(), m.detach(), r2, half, oriented_engine, cull, need_x)
        torch.library.opcheck(_op.oriented_bump_sum_backward_op, args)


def test_eager_twin_and_registered_op_agree_bitwise(oriented_engine):
    x, c, w, m, a = oriented_problem(300, 3, 12, P=2, dtype=torch.float32, support_p=0.02)
    R = rotations(a, 3)
    U, r2 = precision_transforms(R, w), cutoffs(w, 0.02)
    half = ellipsoid_halfwidths(R, w, r2)
    outs = []
    for call in (_op._EagerOrientedBumpSum.apply, _op.oriented_bump_sum_op):
        ts = [t.clone().requires_grad_() for t in (x, c, U, m)]
        y = call(ts[0], ts[1], ts[2], ts[3], r2, half, oriented_engine, True)
        y.square().sum().backward()
        outs.append([y.detach(), *(t.grad for t in ts)])
    for p, q in zip(*outs):
        assert torch.equal(p, q)


def test_non_finite_scales_or_angles_are_named(oriented_engine):
    x, c, w, m, a = oriented_problem(50, 2, 4)
    w[0, 1] = math.nan
    with pytest.raises(ValueError, match=r"^w must be finite, but got 1 non-finite entry"):
        oriented_bump_sum(x, c, w, m, a)
    w[0, 1] = 0.2
    a[0, 0] = math.inf
    with pytest.raises(ValueError, match=r"^angles must be finite"):
        oriented_bump_sum(x, c, w, m, a)
    x[3, 1] = math.nan
    a[0, 0] = 0.0
    with pytest.raises(ValueError, match=r"^x must be finite"):
        oriented_bump_sum(x, c, w, m, a, 0.01)


def test_bad_angles_are_refused_with_the_expected_shape():
    x, c, w, m, a = oriented_problem(10, 3, 4)
    with pytest.raises(ValueError, match=r"angles must have shape \(d\(d-1\)/2, K\) = \(3, 4\).*but got \(2, 4\)"):
        oriented_bump_sum(x, c, w, m, a[:2])
    with pytest.raises(TypeError, match="angles must have dtype torch.float64 like c, but got torch.float32"):
        oriented_bump_sum(x, c, w, m, a.float())
    with pytest.raises(TypeError, match="angles must be a torch.Tensor or None, but got list"):
        oriented_bump_sum(x, c, w, m, a.tolist())


# ---------------------------------------------------------------- functorch transforms


def _fn(kind, c, w, m, a, sp):
    if kind == "axis":
        return lambda x: bump_sum(x, c, w, m, sp)
    return lambda x: oriented_bump_sum(x, c, w, m, a, sp)


def _ref(kind, c, w, m, a, sp):
    if kind == "axis":
        return lambda x: bump_sum_reference(x, c, w, m, sp)
    return lambda x: oriented_bump_sum_reference(x, c, w, m, a, sp)


@pytest.mark.parametrize("support_p", [None, 0.02])
@pytest.mark.parametrize("kind", ["axis", "oriented"])
def test_torch_func_transforms_match_the_reference(engine, kind, support_p):
    """grad, jacrev, jacfwd, hessian and vmap (issue 18: they raised on every sum)."""
    if kind == "oriented" and engine not in ORIENTED_ENGINES:
        pytest.skip(f"{engine} does not run oriented bumps")
    x, c, w, m, a = oriented_problem(40, 3, 7, support_p=support_p, seed=4)
    f, r = _fn(kind, c, w, m, a, support_p), _ref(kind, c, w, m, a, support_p)
    tol = TOL[torch.float64]
    torch.testing.assert_close(
        torch.func.grad(lambda t: f(t).sum())(x), torch.func.grad(lambda t: r(t).sum())(x), **tol
    )
    torch.testing.assert_close(torch.func.jacrev(f)(x[:5]), torch.autograd.functional.jacobian(r, x[:5]), **tol)
    torch.testing.assert_close(torch.func.jacfwd(f)(x[:5]), torch.autograd.functional.jacobian(r, x[:5]), **tol)
    h = torch.func.hessian(lambda t: f(t).square().sum())(x[:4])
    torch.testing.assert_close(h, torch.autograd.functional.hessian(lambda t: r(t).square().sum(), x[:4]), **tol)
    batched = torch.func.vmap(f)(x[:36].reshape(4, 9, 3))
    torch.testing.assert_close(batched.reshape(36), r(x[:36]), **tol)


def test_torch_func_per_sample_gradients_of_a_module(engine):
    """functional_call + vmap(grad): per-point parameter gradients of a culled module."""
    torch.manual_seed(0)
    mod = SlowSumOfBumpFcns(torch.rand(2, 6), torch.full((2, 6), 0.3), torch.randn(6), None, None, dtype=torch.float64)
    params = {k: v.detach() for k, v in mod.named_parameters()}
    x = torch.rand(8, 2, dtype=torch.float64)

    def point_loss(p, xi):
        return torch.func.functional_call(mod, p, (xi[None],)).square().sum()

    per = torch.func.vmap(torch.func.grad(point_loss), in_dims=(None, 0))(params, x)
    for i in range(8):
        mod.zero_grad()
        mod(x[i : i + 1]).square().sum().backward()
        for name, p in mod.named_parameters():
            torch.testing.assert_close(per[name][i], p.grad, **TOL[torch.float64])


# ---------------------------------------------------------------- modules


def _oriented_module(cls, d=2, K=8, P=None, **kw):
    torch.manual_seed(3)
    m = torch.randn(K) if P is None else torch.randn(K, P)
    return cls(torch.rand(d, K), 0.1 + 0.2 * torch.rand(d, K), m, [[0.0, 1.0]] * d, [[0.02, 0.5]] * d,
               angles=torch.rand(n_angles(d), K), **kw)  # fmt: skip


@pytest.mark.parametrize("cls", [OrientedSumOfBumpFcns, SlowOrientedSumOfBumpFcns])
@pytest.mark.parametrize("P", [None, 3])
def test_modules_compute_the_reference(oriented_engine, cls, P):
    f = _oriented_module(cls, d=3, K=10, P=P)
    x = torch.rand(500, 3)
    sp = f.support_p
    torch.testing.assert_close(
        f(x), oriented_bump_sum_reference(x, f.c, f.w, f.m, f.angles, sp).detach(), rtol=1e-5, atol=1e-5
    )
    assert f(x).shape == ((500,) if P is None else (500, P))
    assert [n for n, _ in f.named_parameters()] == ["c", "w", "m", "angles"]


def test_slow_oriented_module_keeps_the_axis_modules_positions():
    """Swapping SlowSumOfBumpFcns for SlowOrientedSumOfBumpFcns runs the same call."""
    args = (
        torch.rand(2, 4),
        torch.full((2, 4), 0.2),
        torch.zeros(4),
        [[0.0, 1.0]] * 2,
        [[0.05, 0.5]] * 2,
        1e-3,
        1e-4,
        0.01,
        0.05,
    )
    f = SlowOrientedSumOfBumpFcns(*args)
    g = SlowSumOfBumpFcns(*args)
    for name in ("c_grad_std", "w_grad_std", "m_grad_gain", "support_p"):
        assert getattr(f, name) == getattr(g, name)
    assert torch.equal(f.angles, torch.zeros(1, 4))
    assert f.angle_grad_std == 0.0


def test_bound_clamps_centres_and_scales_and_leaves_angles():
    f = _oriented_module(SlowOrientedSumOfBumpFcns)
    with torch.no_grad():
        f.c[0, 0], f.w[1, 1], f.angles[0, 2] = 3.0, 0.001, 17.0
    f.bound()
    assert f.c[0, 0] == 1.0 and f.w[1, 1] == 0.02 and f.angles[0, 2] == 17.0


def test_angle_noise_is_keyed_resumable_and_leaves_other_streams_alone():
    a = _oriented_module(SlowOrientedSumOfBumpFcns, c_grad_std=0.1, w_grad_std=0.01, angle_grad_std=0.05)
    b = _oriented_module(SlowOrientedSumOfBumpFcns, c_grad_std=0.1, w_grad_std=0.01, angle_grad_std=0.0)
    b.load_state_dict(a.state_dict())
    for mod in (a, b):
        mod.pert_grads()
        mod.pert_grads()
    assert torch.equal(a.c.grad, b.c.grad) and torch.equal(a.w.grad, b.w.grad)
    assert b.angles.grad is None and a.angles.grad.abs().max() > 0
    # resume: a copy of the state draws the same next noise
    c = _oriented_module(SlowOrientedSumOfBumpFcns, c_grad_std=0.1, w_grad_std=0.01, angle_grad_std=0.05)
    c.load_state_dict(a.state_dict())
    a.zero_grad()
    a.pert_grads()
    c.pert_grads()
    assert torch.equal(a.angles.grad, c.angles.grad)
    std = float(a.angles.grad.std())
    assert 0.02 < std < 0.1


def test_frozen_angles_get_no_noise_and_parameter_noise_reaches_angles():
    f = _oriented_module(SlowOrientedSumOfBumpFcns, angle_grad_std=0.05)
    f.angles.requires_grad_(False)
    f.pert_grads()
    assert f.angles.grad is None
    f.angles.requires_grad_(True)
    before = f.angles.detach().clone()
    perturb_params(f, angle_std=0.1)
    assert not torch.equal(before, f.angles)
    g = SlowSumOfBumpFcns(torch.rand(2, 3), torch.full((2, 3), 0.2), torch.zeros(3), None, None)
    with pytest.raises(ValueError, match="angle_std > 0 needs oriented wandering modules"):
        perturb_params(g, angle_std=0.1)


def test_module_errors_name_the_argument():
    c, w, m = torch.rand(3, 4), torch.full((3, 4), 0.2), torch.zeros(4)
    with pytest.raises(ValueError, match=r"angles must have shape \(d\(d-1\)/2, K\) = \(3, 4\)"):
        OrientedSumOfBumpFcns(c, w, m, angles=torch.zeros(1, 4))
    with pytest.raises(ValueError, match="angles must be finite"):
        OrientedSumOfBumpFcns(c, w, m, angles=torch.full((3, 4), math.nan))
    with pytest.raises(ValueError, match="angle_grad_std must be >= 0"):
        SlowOrientedSumOfBumpFcns(c, w, m, angle_grad_std=-1.0)
    with pytest.raises(ValueError, match="w must be nonzero"):
        OrientedSumOfBumpFcns(c, torch.zeros(3, 4), m)
    f = OrientedSumOfBumpFcns(c, w, m)
    with pytest.raises(ValueError, match=r"x must have shape \(n_smps, 3\), but got \(5, 2\)"):
        f(torch.rand(5, 2))
    with pytest.raises(ValueError, match="angle_grad_std must be >= 0"):
        f.angle_grad_std = -0.5
    assert f.angle_grad_std == 0.0


def test_factory_kwargs_state_dict_and_covariances():
    f = _oriented_module(OrientedSumOfBumpFcns, d=3)
    g = OrientedSumOfBumpFcns(f.c, f.w, f.m, angles=f.angles, dtype=torch.float64)
    assert g.angles.dtype == torch.float64 and g.c.dtype == torch.float64
    h = OrientedSumOfBumpFcns(torch.rand(3, 8), torch.ones(3, 8), torch.ones(8))
    h.load_state_dict(f.state_dict(), strict=False)
    x = torch.rand(50, 3)
    torch.testing.assert_close(h(x), f(x))
    cov = f.covariances().permute(2, 0, 1).double()
    assert bool((torch.linalg.eigvalsh(cov) > 0).all())
    R = f.axes().permute(2, 0, 1).double()
    torch.testing.assert_close(cov, R @ torch.diag_embed(f.w.detach().T.double() ** 2 / 2) @ R.transpose(1, 2))
    assert "angle_grad_std=0.0" in repr(f)


@pytest.mark.parametrize("cls", [OrientedSumOfBumpFcns, SlowOrientedSumOfBumpFcns])
def test_compile_fullgraph_matches_eager(oriented_engine, cls):
    torch._dynamo.reset()
    inner = _oriented_module(cls, d=2, K=24, P=2)
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), inner)
    compiled = torch.compile(model, fullgraph=True)
    for n in (3000, 4001):
        x = torch.rand(n, 2)
        grads = []
        for fn in (compiled, model):
            model.zero_grad()
            y = fn(x)
            y.square().sum().backward()
            grads.append([y.detach(), *(p.grad.clone() for p in model.parameters())])
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_oriented_bumps_fit_an_oblique_ridge_that_axis_bumps_cannot():
    """The point of orientation: a thin ridge along the diagonal, 12 bumps, the same steps."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2000, 2, generator=gen)
    y = torch.exp(-(((x[:, 0] - x[:, 1]) / 0.05) ** 2))
    losses = {}
    for cls in (SlowSumOfBumpFcns, SlowOrientedSumOfBumpFcns):
        torch.manual_seed(0)
        t = torch.linspace(0.05, 0.95, 12)
        model = cls(torch.stack([t, t]), torch.full((2, 12), 0.06), torch.full((12,), 0.5),
                    [[0.0, 1.0]] * 2, [[0.01, 0.5]] * 2, 0.0, 0.0, 0.0, 0.001)  # fmt: skip
        opt = torch.optim.Adam(model.parameters(), lr=0.02)
        for _ in range(150):
            opt.zero_grad()
            loss = ((model(x) - y) ** 2).mean()
            loss.backward()
            opt.step()
            model.bound()
        losses[cls.__name__] = float(loss)
    assert losses["SlowOrientedSumOfBumpFcns"] < 0.2 * losses["SlowSumOfBumpFcns"], losses
