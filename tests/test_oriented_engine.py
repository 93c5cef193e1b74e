"""The Numba engine's oriented contract functions against a dense float64 oracle written here.

Covers d = 2..4, P outputs, both dtypes, the dense and the (forced) culled path, elongated
rotated bumps, dead bumps, empty problems, the ellipsoid registration (no pair the kernels
count is ever skipped: culled counts equal brute-force counts, even for points placed
within rounding of the boundary), thread-count independence and the plan cache.

Float32 and the cut-off. A pair counts where its rounded s < r2, so a point within rounding
of an ellipsoid's boundary may count on one engine and not another (the contract allows it).
Parity tests drop every point with |s / r2 - 1| < 1e-4 for some bump (s in float64);
the counting tests compare the culled path with a brute-force count by the kernels' own
arithmetic instead, which must agree exactly.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import wandering
from wandering._engine._geometry import cutoffs, ellipsoid_halfwidths
from wandering._engine._rotation import n_angles, precision_transforms, rotations

numba = pytest.importorskip("numba")
ne = pytest.importorskip("wandering._engine._numba_engine")
te = pytest.importorskip("wandering._engine._torch_engine")

DTYPES = (torch.float32, torch.float64)
PS = (1, 2, 7, 17)
SP = 0.01
MARGIN = 1e-4  # relative distance from every ellipsoid boundary kept by parity problems


@contextlib.contextmanager
def forced_cull():
    """Take the grid path even where the dense fallback would be picked."""
    old = ne._CULL_FRACTION
    ne._CULL_FRACTION = math.inf
    try:
        yield
    finally:
        ne._CULL_FRACTION = old


@contextlib.contextmanager
def numba_threads(nt: int):
    old_n, old_t = numba.get_num_threads(), torch.get_num_threads()
    numba.set_num_threads(nt)
    torch.set_num_threads(max(nt, old_t))
    try:
        yield
    finally:
        numba.set_num_threads(old_n)
        torch.set_num_threads(old_t)


def s_values(x, c, U):
    """s (n, K) in float64 from the (possibly float32) values the engine sees."""
    z = torch.einsum("ajk,ijk->iak", U.double(), x.double()[:, :, None] - c.double()[None])
    return (z * z).sum(dim=1)


def problem(n, d, K, P, dtype, seed, support_p=SP, scales=(0.05, 0.3), aspect=1.0, dead=False, margin=MARGIN):
    """x, c uniform in the unit cube, random rotations, scales in ``scales`` (the first
    principal axis ``aspect`` times longer), m and gy normal. Returns the engine's inputs
    x, c, U, m, r2, half, gy in ``dtype``; points near a boundary are dropped (see the doc)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, d, generator=g, dtype=torch.float64)
    c = torch.rand(d, K, generator=g, dtype=torch.float64)
    w = scales[0] + (scales[1] - scales[0]) * torch.rand(d, K, generator=g, dtype=torch.float64)
    w[0] *= aspect
    if dead and K:
        w[d - 1, 0] = 0.0  # a zero scale: the bump counts nowhere
    angles = 2 * math.pi * torch.rand(n_angles(d), K, generator=g, dtype=torch.float64)
    m = torch.randn(K, P, generator=g, dtype=torch.float64)
    R = rotations(angles, d)
    r2 = cutoffs(w, support_p)
    U, half = precision_transforms(R, w), ellipsoid_halfwidths(R, w, r2)
    x, c, U, m, r2, half = (t.to(dtype) for t in (x, c, U, m, r2, half))
    if support_p is not None and margin and n and K:
        live = r2 > 0
        ratio = s_values(x, c, U)[:, live] / r2[live].double()
        x = x[((ratio - 1).abs() >= margin).all(dim=1)]
    gy = torch.randn(x.shape[0], P, generator=g, dtype=torch.float64).to(dtype)
    return x, c, U, m, r2, half, gy


def oracle(x, c, U, m, r2, gy):
    """y and the gradients of sum(gy * y) wrt x, c, U, m by float64 autograd of the pair formula."""
    x64, c64, U64, m64 = (t.detach().double().requires_grad_() for t in (x, c, U, m))
    z = torch.einsum("ajk,ijk->iak", U64, x64[:, :, None] - c64[None])
    s = (z * z).sum(dim=1)
    live = s.detach() < r2.double()[None]
    e = torch.where(live, torch.exp(-torch.where(live, s, torch.zeros_like(s))), torch.zeros_like(s))
    y = e @ m64
    grads = torch.autograd.grad(y, (x64, c64, U64, m64), gy.double(), allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip((x64, c64, U64, m64), grads)]
    return y.detach(), grads


def run_engine(x, c, U, m, r2, half, gy, cull, need_x=True):
    y = ne.oriented_forward(x, c, U, m, r2, half, cull)
    return y, ne.oriented_backward(gy, x, c, U, m, r2, half, cull, need_x)


def assert_matches_oracle(x, c, U, m, r2, half, gy, cull):
    y, (gx, gc, gU, gm) = run_engine(x, c, U, m, r2, half, gy, cull)
    y_ref, refs = oracle(x, c, U, m, r2, gy)
    n, d = x.shape
    K, P = m.shape
    assert y.shape == (n, P) and gx.shape == (n, d) and gc.shape == (d, K) and gU.shape == (d, d, K)
    assert gm.shape == (K, P)
    f32 = x.dtype == torch.float32
    rtol, atol = (2e-4, 2e-5) if f32 else (1e-9, 1e-11)
    for name, a, b in zip(("y", "gx", "gc", "gU", "gm"), (y, gx, gc, gU, gm), (y_ref, *refs)):
        assert a.dtype == x.dtype, name
        assert torch.isfinite(a).all(), name
        scale = 1.0 + (float(b.abs().max()) if b.numel() else 0.0)
        torch.testing.assert_close(a.double(), b, rtol=rtol, atol=atol * scale * (1 + K), msg=lambda s: f"{name}: {s}")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    d=st.integers(2, 4),
    n=st.sampled_from([1, 37, 300, 700]),
    K=st.integers(1, 12),
    P=st.sampled_from(PS[:3]),
    dtype=st.sampled_from(DTYPES),
    mode=st.sampled_from(["dense-exact", "dense-support", "culled"]),
    aspect=st.sampled_from([1.0, 8.0]),
    seed=st.integers(0, 2**16),
)
def test_matches_oracle(d, n, K, P, dtype, mode, aspect, seed):
    sp = None if mode == "dense-exact" else SP
    x, c, U, m, r2, half, gy = problem(n, d, K, P, dtype, seed, sp, aspect=aspect, dead=seed % 3 == 0)
    if mode == "culled":
        with forced_cull():
            assert x.shape[0] == 0 or ne.oriented_pair_count(x, c, U, r2, half) is not None  # the grid runs
            assert_matches_oracle(x, c, U, m, r2, half, gy, cull=True)
    else:
        assert_matches_oracle(x, c, U, m, r2, half, gy, cull=False)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("P", PS)
@pytest.mark.parametrize("d", [2, 3, 4])
@pytest.mark.parametrize("path", ["dense", "culled"])
def test_matches_oracle_per_d_and_P(dtype, P, d, path):
    x, c, U, m, r2, half, gy = problem(2000, d, 40, P, dtype, seed=10 * d + P, scales=(0.04, 0.15))
    with forced_cull():
        assert_matches_oracle(x, c, U, m, r2, half, gy, cull=path == "culled")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [2, 3])
def test_matches_the_torch_engine(dtype, d):
    """The same inputs through the torch engine (the plain formulas of the contract)."""
    x, c, U, m, r2, half, gy = problem(3000, d, 50, 3, dtype, seed=d, scales=(0.03, 0.1), aspect=4.0)
    for cull in (False, True):
        with forced_cull():
            got = run_engine(x, c, U, m, r2, half, gy, cull)
        want = (
            te.oriented_forward(x, c, U, m, r2, half, cull),
            te.oriented_backward(gy, x, c, U, m, r2, half, cull, True),
        )
        tol = dict(rtol=2e-4, atol=2e-4) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(got[0], want[0], **tol)
        for a, b in zip(got[1], want[1]):
            torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("support_p", [None, SP])
@pytest.mark.parametrize("d", [2, 3, 4])
def test_through_the_op_matches_the_plain_reference(dtype, support_p, d):
    """oriented_bump_sum on the numba engine (grid forced when culled) against
    oriented_bump_sum_reference: outputs and the gradients wrt x, c, w, m and angles."""
    g = torch.Generator().manual_seed(d)
    x = torch.rand(1500, d, generator=g, dtype=torch.float64)
    c = torch.rand(d, 30, generator=g, dtype=torch.float64)
    w = 0.03 + 0.15 * torch.rand(d, 30, generator=g, dtype=torch.float64)
    w[0] *= 5.0
    angles = 2 * math.pi * torch.rand(n_angles(d), 30, generator=g, dtype=torch.float64)
    m = torch.randn(30, 2, generator=g, dtype=torch.float64)
    if support_p is not None:  # away from every boundary (see the module doc)
        ratio = s_values(x, c, precision_transforms(rotations(angles, d), w)) / -math.log(support_p)
        x = x[((ratio - 1).abs() >= MARGIN).all(dim=1)]
    gy = torch.randn(x.shape[0], 2, generator=g, dtype=torch.float64)

    def grads(fn, ts):
        ts = [t.detach().clone().requires_grad_() for t in ts]
        y = fn(*ts)
        return (y.detach(), *torch.autograd.grad((y * gy.to(y.dtype)).sum(), ts))

    with forced_cull():
        got = grads(
            lambda *t: wandering.oriented_bump_sum(*t, support_p, "numba"), [t.to(dtype) for t in (x, c, w, m, angles)]
        )
    ref = grads(
        lambda x, c, w, m, a: wandering.oriented_bump_sum_reference(x, c, w, m, a, support_p), (x, c, w, m, angles)
    )
    tol = dict(rtol=2e-4, atol=2e-4) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-10)
    for name, a, b in zip(("y", "x", "c", "w", "m", "angles"), got, ref):
        assert a.dtype == dtype, name
        torch.testing.assert_close(a.double(), b, **tol, msg=lambda s: f"{name}: {s}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [2, 3, 4])
@pytest.mark.parametrize("aspect", [1.0, 8.0, 100.0])
def test_culled_pairs_equal_brute_force_counts(dtype, d, aspect):
    """Every pair the kernels count (their own s < r2, rounding included) is among the culled
    path's candidates: the culled count equals the brute-force count over all n * K pairs.
    No margin here: many points sit within rounding of a boundary."""
    scales = (0.01, 0.05) if d < 4 else (0.04, 0.12)
    x, c, U, _m, r2, half, _gy = problem(20000, d, 60, 1, dtype, seed=d, scales=scales, aspect=aspect, margin=0)
    with forced_cull():
        culled = ne.oriented_pair_count(x, c, U, r2, half)
    brute = ne.oriented_pair_count(x, c, U, r2, half, culled=False)
    assert culled == brute and brute > 1000
    # And the brute-force count is the plain float64 one, up to pairs within rounding of s = r2.
    s = s_values(x, c, U)
    near = ((s / r2.double()[None] - 1).abs() < 1e-5).sum()
    assert abs(brute - int((s < r2.double()[None]).sum())) <= int(near)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [2, 3])
def test_points_on_the_boundary_are_never_skipped(dtype, d):
    """Points placed at |z|^2 = r2 (1 +- a few ulps) of elongated rotated bumps, on a fine grid
    (many small cells per ellipsoid) and a coarse one: culled and brute-force counts agree."""
    g = torch.Generator().manual_seed(3)
    K = 12
    c = 0.3 + 0.4 * torch.rand(d, K, generator=g, dtype=torch.float64)
    w = 0.01 + 0.04 * torch.rand(d, K, generator=g, dtype=torch.float64)
    w[0] *= 10.0
    angles = 2 * math.pi * torch.rand(n_angles(d), K, generator=g, dtype=torch.float64)
    R = rotations(angles, d)
    r2 = cutoffs(w, SP)
    pts = []
    for k in range(K):
        y = torch.randn(400, d, generator=g, dtype=torch.float64)
        y = (
            y
            / y.norm(dim=1, keepdim=True)
            * math.sqrt(r2[k])
            * (1 + 1e-7 * torch.randn(400, 1, generator=g, dtype=torch.float64))
        )
        pts.append(c[:, k] + (y * w[:, k]) @ R[:, :, k].T)  # x = c + R diag(w) y
    x_bound = torch.cat(pts)
    for filler in (200, 50000):  # coarse and fine grids
        x = torch.cat([x_bound, torch.rand(filler, d, generator=g, dtype=torch.float64)]).to(dtype)
        U, half = precision_transforms(R, w).to(dtype), ellipsoid_halfwidths(R, w, r2).to(dtype)
        cc, rr = c.to(dtype), r2.to(dtype)
        with forced_cull():
            culled = ne.oriented_pair_count(x, cc, U, rr, half)
        assert culled == ne.oriented_pair_count(x, cc, U, rr, half, culled=False)


def test_elongated_bumps_cost_what_their_ellipsoid_holds():
    """Thin rotated bumps (aspect 8:1): the ellipsoid registration visits far fewer candidates
    than their bounding boxes hold, and not many more than the pairs that count."""
    x, c, U, _m, r2, half, _gy = problem(
        200000, 2, 200, 1, torch.float32, seed=5, scales=(0.004, 0.006), aspect=8.0, margin=0
    )
    with forced_cull():
        _, plan = ne.make_plan(x, c, half, oriented=(U, r2))
        _, box_plan = ne.make_plan(x, c, half)  # the same bumps registered by their boxes
    pairs = ne.oriented_pair_count(x, c, U, r2, half, culled=False)
    assert plan.ncand < 0.5 * box_plan.ncand
    assert plan.ncand < 2.5 * pairs


@pytest.mark.parametrize("dtype", DTYPES)
def test_badly_conditioned_bumps_fall_back_to_their_boxes_and_still_count_every_pair(dtype):
    """Needles 1e6 times longer than wide: too badly conditioned for the float64 ellipsoid
    geometry's margins, they are registered by their bounding boxes (grown by the kernels'
    rounding, large in float32); points along the needles (and off them) still count exactly
    as by brute force."""
    g = torch.Generator().manual_seed(7)
    d, K = 3, 8
    c = 0.3 + 0.4 * torch.rand(d, K, generator=g, dtype=torch.float64)
    w = torch.full((d, K), 1e-5, dtype=torch.float64)
    w[0] = 10.0
    angles = 2 * math.pi * torch.rand(n_angles(d), K, generator=g, dtype=torch.float64)
    R = rotations(angles, d)
    r2 = cutoffs(w, SP)
    along = [c[:, k] + R[:, 0, k] * (0.6 * torch.rand(500, 1, generator=g, dtype=torch.float64) - 0.3)
             + 2e-5 * torch.randn(500, d, generator=g, dtype=torch.float64) for k in range(K)]  # fmt: skip
    x = torch.cat([*along, torch.rand(2000, d, generator=g, dtype=torch.float64)])
    U, half = precision_transforms(R, w), ellipsoid_halfwidths(R, w, r2)
    x, c, U, r2, half = (t.to(dtype) for t in (x, c, U, r2, half))
    with forced_cull():
        culled = ne.oriented_pair_count(x, c, U, r2, half)
    assert culled == ne.oriented_pair_count(x, c, U, r2, half, culled=False) and culled > 1000


@pytest.mark.parametrize("path", ["dense", "culled"])
def test_dead_bumps_count_nowhere(path):
    x, c, U, m, r2, half, gy = problem(3000, 3, 16, 2, torch.float64, seed=1, dead=True)
    assert r2[0] == 0 and half[:, 0].abs().max() == 0 and U[2, :, 0].abs().max() == 0
    with forced_cull():
        y, (_gx, gc, gU, gm) = run_engine(x, c, U, m, r2, half, gy, path == "culled")
        live = torch.arange(16) > 0
        y_live, _ = run_engine(x, c[:, live], U[:, :, live], m[live], r2[live], half[:, live], gy, path == "culled")
    torch.testing.assert_close(y, y_live, rtol=1e-12, atol=1e-12)
    assert gc[:, 0].abs().max() == 0 and gU[:, :, 0].abs().max() == 0 and gm[0].abs().max() == 0
    assert_matches_oracle(x, c, U, m, r2, half, gy, path == "culled")


@pytest.mark.parametrize("n,K,P", [(0, 5, 2), (10, 0, 2), (10, 5, 0), (0, 0, 1)])
@pytest.mark.parametrize("cull", [False, True])
def test_empty(n, K, P, cull):
    x, c, U, m, r2, half, gy = problem(n, 3, K, max(P, 1), torch.float32, seed=0)
    m, gy = m[:, :P], gy[:, :P]
    y, (gx, gc, gU, gm) = run_engine(x, c, U, m, r2, half, gy, cull)
    assert (
        y.shape == (n, P) and gx.shape == (n, 3) and gc.shape == (3, K) and gU.shape == (3, 3, K) and gm.shape == (K, P)
    )
    for t in (y, gx, gc, gU, gm):
        assert t.dtype == torch.float32 and t.abs().sum() == 0
    assert ne.oriented_backward(gy, x, c, U, m, r2, half, cull, False)[0] is None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path", ["dense", "culled"])
def test_grad_x_is_optional_and_changes_nothing_else(dtype, path):
    x, c, U, m, r2, half, gy = problem(3000, 3, 30, 2, dtype, seed=2)
    with forced_cull():
        with_x = ne.oriented_backward(gy, x, c, U, m, r2, half, path == "culled", True)
        without = ne.oriented_backward(gy, x, c, U, m, r2, half, path == "culled", False)
    assert without[0] is None
    for a, b in zip(with_x[1:], without[1:]):
        assert torch.equal(a, b)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 numba threads")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("P", [1, 5])
@pytest.mark.parametrize("d", [2, 3, 4])
@pytest.mark.parametrize("path", ["dense", "culled"])
def test_bitwise_independent_of_thread_count(P, d, path, dtype, monkeypatch):
    x, c, U, m, r2, half, gy = problem(6000, d, 64, P, dtype, seed=11, scales=(0.03, 0.1), aspect=3.0)
    cull = path == "culled"
    results = []
    for nt, limit in ((1, math.inf), (2, 0)):  # one thread; two, even for small work
        monkeypatch.setattr(ne, "_PARALLEL_WORK", limit)
        with numba_threads(nt), forced_cull():
            results.append(run_engine(x, c, U, m, r2, half, gy, cull))
    (y1, g1), (y2, g2) = results
    assert torch.equal(y1, y2)
    for a, b in zip(g1, g2):
        assert torch.equal(a, b)


def test_binning_is_shared_with_axis_bumps_and_plans_are_cached(monkeypatch):
    x, c, U, m, r2, half, gy = problem(3000, 3, 16, 2, torch.float32, seed=13, margin=0)
    registered = []
    real = ne._register_oriented
    monkeypatch.setattr(ne, "_register_oriented", lambda *a: registered.append(1) or real(*a))
    w_axis = torch.full_like(c, 0.05)
    with forced_cull():
        before = ne.bin_calls
        ne.forward(x, c, w_axis, m, 2.15 * w_axis, True)  # an axis-aligned sum bins x
        run_engine(x, c, U, m, r2, half, gy, True)
        assert ne.bin_calls == before + 1 and len(registered) == 1  # same binning; forward + backward: one plan
        run_engine(x, c, U.clone(), m, r2.clone(), half, gy, True)  # same values: the cached plan
        assert len(registered) == 1
        U2 = U * 1.01  # new transforms, same c and half: a new plan, and an exact one
        y, _ = run_engine(x, c, U2, m, r2, half, gy, True)
        assert len(registered) == 2 and ne.bin_calls == before + 1
        torch.testing.assert_close(y, ne.oriented_forward(x, c, U2, m, r2, half, False), rtol=1e-5, atol=1e-6)
        # An axis-aligned sum with the same c and half keeps its own (box) plan.
        y_axis = ne.forward(x, c, w_axis, m, half, True)
        torch.testing.assert_close(y_axis, ne.forward(x, c, w_axis, m, half, False), rtol=1e-5, atol=1e-6)


def test_exact_sums_run_dense():
    x, c, U, _m, r2, half, _gy = problem(2000, 2, 10, 1, torch.float64, seed=4, support_p=None)
    assert ne.oriented_pair_count(x, c, U, r2, half) is None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("P", [1, 3])
@pytest.mark.parametrize("d", [2, 3, 4])
def test_y_at_a_point_has_the_same_bits_on_both_paths_and_among_any_other_points(dtype, P, d):
    """BumpRegressor.predict relies on it: y at a point may not depend on the path (dense or
    culled: a different grid) or on which other points came along."""
    x, c, U, m, r2, half, _gy = problem(4000, d, 37, P, dtype, seed=d, scales=(0.03, 0.12), aspect=3.0, dead=True)
    dense = ne.oriented_forward(x, c, U, m, r2, half, False)
    with forced_cull():
        culled = ne.oriented_forward(x, c, U, m, r2, half, True)
        subset = ne.oriented_forward(x[::7].contiguous(), c, U, m, r2, half, True)
    assert torch.equal(dense, culled)
    assert torch.equal(subset, dense[::7])
