"""The Numba engine's contract functions against a dense float64 oracle written here.

Covers P outputs, both dtypes, dense and (forced) culled paths, zero and negative
widths, support edges to the ulp, empty problems, non-contiguous inputs, thread-count
independence, the binning/plan caches, the pair-count instrumentation, and the layout
helpers that move P outputs (vector transposes, streamed row scatters).
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

numba = pytest.importorskip("numba")
ne = pytest.importorskip("wandering._engine._numba_engine")

DTYPES = (torch.float32, torch.float64)
PS = (1, 2, 7, 17)  # 17: above any block of outputs (the kernels use none, this guards a future one)
SCALE = math.sqrt(-math.log(0.01))  # support half-width per unit width at support_p = 0.01


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


def oracle_mask(x, c, w, half):
    """Pairs inside every support box (the float test in x's dtype), minus zero-width bumps."""
    inside = ((x[:, :, None] - c[None]).abs() < half[None]).all(dim=1)
    return inside & (w != 0).all(dim=0)[None]


def oracle(x, c, w, m, half, gy):
    """y and the gradients of sum(gy * y) by float64 autograd of the dense pair formula."""
    mask = oracle_mask(x, c, w, half)
    x64, c64, w64, m64 = (t.detach().double().requires_grad_() for t in (x, c, w, m))
    diff = x64[:, :, None] - c64[None]
    with torch.no_grad():
        mask &= torch.exp(-((diff / w64[None]) ** 2).sum(dim=1)) > 0
    w_safe = torch.where(mask[:, None, :], w64[None], torch.ones_like(w64)[None])
    e = torch.exp(-((diff / w_safe) ** 2).sum(dim=1))
    e = torch.where(mask, e, torch.zeros_like(e))
    y = e @ m64
    grads = torch.autograd.grad(y, (x64, c64, w64, m64), gy.double(), allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip((x64, c64, w64, m64), grads)]
    return y.detach(), grads


def problem(n, d, K, P, dtype, seed, w_lo=0.05, w_hi=0.3, support=True, odd_widths=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, d, generator=g, dtype=torch.float64).to(dtype)
    c = torch.rand(d, K, generator=g, dtype=torch.float64).to(dtype)
    w = (w_lo + (w_hi - w_lo) * torch.rand(d, K, generator=g, dtype=torch.float64)).to(dtype)
    if odd_widths and K:
        sign = torch.where(torch.rand(d, K, generator=g) < 0.3, -1.0, 1.0).to(dtype)
        w = w * sign
        w[0, 0] = 0.0  # a zero width: the bump counts nowhere
    m = torch.randn(K, P, generator=g, dtype=torch.float64).to(dtype)
    gy = torch.randn(n, P, generator=g, dtype=torch.float64).to(dtype)
    half = SCALE * w.abs() if support else torch.full_like(w, math.inf)
    if support:
        half = torch.where(w == 0, torch.zeros_like(half), half)
    return x, c, w, m, half, gy


def run_engine(x, c, w, m, half, gy, cull, need_x=True):
    y = ne.forward(x, c, w, m, half, cull)
    grads = ne.backward(gy, x, c, w, m, half, cull, need_x)
    return y, grads


def assert_matches_oracle(x, c, w, m, half, gy, cull):
    y, (gx, gc, gw, gm) = run_engine(x, c, w, m, half, gy, cull)
    y_ref, (gx_ref, gc_ref, gw_ref, gm_ref) = oracle(x, c, w, m, half, gy)
    n, d = x.shape
    K, P = m.shape
    assert y.shape == (n, P) and y.dtype == x.dtype
    assert gx.shape == (n, d) and gc.shape == (d, K) and gw.shape == (d, K) and gm.shape == (K, P)
    for t in (gx, gc, gw, gm):
        assert t.dtype == x.dtype
    f32 = x.dtype == torch.float32
    rtol = 2e-4 if f32 else 1e-9
    atol = 2e-5 if f32 else 1e-11
    for name, a, b in (("y", y, y_ref), ("gx", gx, gx_ref), ("gc", gc, gc_ref), ("gw", gw, gw_ref), ("gm", gm, gm_ref)):
        assert torch.isfinite(a).all(), name
        scale = 1.0 + (float(b.abs().max()) if b.numel() else 0.0)
        torch.testing.assert_close(a.double(), b, rtol=rtol, atol=atol * scale * (1 + K), msg=name)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    d=st.integers(1, 5),
    n=st.sampled_from([1, 37, 300, 700]),
    K=st.integers(1, 12),
    P=st.sampled_from(PS),
    dtype=st.sampled_from(DTYPES),
    mode=st.sampled_from(["dense-exact", "dense-support", "culled"]),
    seed=st.integers(0, 2**16),
)
def test_matches_oracle(d, n, K, P, dtype, mode, seed):
    support = mode != "dense-exact"
    x, c, w, m, half, gy = problem(n, d, K, P, dtype, seed, support=support)
    if mode == "culled":
        with forced_cull():
            assert ne.pair_count(x, c, half) is not None  # the grid path really runs
            assert_matches_oracle(x, c, w, m, half, gy, cull=True)
    else:
        assert_matches_oracle(x, c, w, m, half, gy, cull=False)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("P", PS)
@pytest.mark.parametrize("path", ["dense", "culled"])
def test_matches_oracle_per_P(dtype, P, path):
    x, c, w, m, half, gy = problem(2000, 3, 40, P, dtype, seed=P)
    with forced_cull():
        assert_matches_oracle(x, c, w, m, half, gy, cull=path == "culled")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path", ["dense", "culled"])
def test_support_edges_to_the_ulp(dtype, path):
    """Points exactly on a box edge and one ulp either side count exactly as the float test says."""
    g = torch.Generator().manual_seed(3)
    d, K = 3, 6
    c = torch.rand(d, K, generator=g, dtype=torch.float64).to(dtype)
    w = (0.05 + 0.1 * torch.rand(d, K, generator=g, dtype=torch.float64)).to(dtype)
    half = SCALE * w.abs()
    pts = []
    for k in range(K):
        for j in range(d):
            for sgn in (-1.0, 1.0):
                edge = c[j, k] + sgn * half[j, k]
                for v in (torch.nextafter(edge, edge - 1), edge, torch.nextafter(edge, edge + 1)):
                    p = c[:, k].clone()
                    p[j] = v
                    pts.append(p)
    x = torch.stack(pts)
    x = torch.cat([x, torch.rand(200, d, generator=g, dtype=torch.float64).to(dtype)])  # so the grid has cells
    m = torch.eye(K, dtype=dtype)  # y[:, k] is bump k alone
    gy = torch.randn(x.shape[0], K, generator=g, dtype=torch.float64).to(dtype)
    mask = oracle_mask(x, c, w, half)
    assert 0 < int(mask.sum()) < mask.numel()
    with forced_cull():
        y = ne.forward(x, c, w, m, half, path == "culled")
        torch.testing.assert_close(y != 0, mask, rtol=0, atol=0)
        assert_matches_oracle(x, c, w, m, half, gy, cull=path == "culled")
        if path == "culled":
            assert ne.pair_count(x, c, half) == int(mask.sum())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path", ["dense-exact", "dense", "culled"])
def test_zero_and_negative_widths(dtype, path):
    x, c, w, m, half, gy = problem(500, 3, 8, 3, dtype, seed=5, support=path != "dense-exact")
    w[:, 1] = 0.0  # every width of bump 1 is zero
    w[1, 2] = -w[1, 2].abs()
    w[:, 3] = -w[:, 3].abs()
    if path != "dense-exact":
        half = torch.where(w == 0, torch.zeros_like(half), SCALE * w.abs())
    c[:, 1] = x[0]  # a zero-width bump centred exactly on a point still counts nowhere
    with forced_cull():
        y, (gx, gc, gw, gm) = run_engine(x, c, w, m, half, gy, cull=path == "culled")
        assert_matches_oracle(x, c, w, m, half, gy, cull=path == "culled")
    for t in (y, gx, gc, gw, gm):
        assert torch.isfinite(t).all()
    assert (gc[:, 1] == 0).all() and (gw[:, 1] == 0).all() and (gm[1] == 0).all()
    # Negating a width changes nothing but the sign of its gradient.
    w2 = w.clone()
    w2[:, 3] = -w2[:, 3]
    half2 = half if path == "dense-exact" else torch.where(w2 == 0, torch.zeros_like(half), SCALE * w2.abs())
    with forced_cull():
        y2, (_, _, gw2, _) = run_engine(x, c, w2, m, half2, gy, cull=path == "culled")
    torch.testing.assert_close(y2, y)
    torch.testing.assert_close(gw2[:, 3], -gw[:, 3])


@pytest.mark.parametrize("cull", [False, True])
@pytest.mark.parametrize("n,K", [(0, 5), (40, 0), (0, 0)])
def test_empty(n, K, cull):
    x, c, w, m, half, gy = problem(n, 2, K, 3, torch.float32, seed=1, odd_widths=False)
    y = ne.forward(x, c, w, m, half, cull)
    assert y.shape == (n, 3) and (y == 0).all()
    gx, gc, gw, gm = ne.backward(gy, x, c, w, m, half, cull, True)
    assert gx.shape == (n, 2) and gc.shape == (2, K) and gw.shape == (2, K) and gm.shape == (K, 3)
    for t in (gx, gc, gw, gm):
        assert (t == 0).all()
    assert ne.backward(gy, x, c, w, m, half, cull, False)[0] is None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path", ["dense", "culled"])
def test_non_contiguous_inputs(dtype, path):
    x, c, w, m, half, gy = problem(600, 3, 10, 4, dtype, seed=7)
    xt = x.T.contiguous().T  # same values, column-major
    ct, wt, ht = (t.T.contiguous().T for t in (c, w, half))
    mt = m.T.contiguous().T
    gyt = torch.cat([gy, gy], dim=1)[:, ::2]  # strided view
    gyt.copy_(gy)
    assert not (xt.is_contiguous() or ct.is_contiguous() or mt.is_contiguous() or gyt.is_contiguous())
    cull = path == "culled"
    with forced_cull():
        y, grads = run_engine(x, c, w, m, half, gy, cull)
        yt, grads_t = run_engine(xt, ct, wt, mt, ht, gyt, cull)
    assert torch.equal(y, yt)
    for a, b in zip(grads, grads_t):
        assert torch.equal(a, b)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 numba threads")
@pytest.mark.parametrize("dtype", DTYPES)  # float64: a changed summation order shows in the last bits
@pytest.mark.parametrize("P", [1, 5])
@pytest.mark.parametrize("path", ["dense", "culled"])
def test_bitwise_independent_of_thread_count(P, path, dtype):
    x, c, w, m, half, gy = problem(6000, 3, 64, P, dtype, seed=11, w_lo=0.03, w_hi=0.1)
    cull = path == "culled"
    results = []
    for nt in (1, 2):
        with numba_threads(nt), forced_cull():
            results.append(run_engine(x, c, w, m, half, gy, cull))
    (y1, g1), (y2, g2) = results
    assert torch.equal(y1, y2)
    for a, b in zip(g1, g2):
        assert torch.equal(a, b)


def test_binning_cache_reuse_and_invalidation(monkeypatch):
    x, c, w, m, half, gy = problem(3000, 3, 16, 2, torch.float32, seed=13)
    registered = []
    real_register = ne._register
    monkeypatch.setattr(ne, "_register", lambda *a: registered.append(1) or real_register(*a))
    with forced_cull():
        before = ne.bin_calls
        _y0, _g0 = run_engine(x, c, w, m, half, gy, True)
        assert ne.bin_calls == before + 1 and len(registered) == 1  # forward + backward: once each
        # Same storage coming back as another Python object (as under compile / custom ops).
        run_engine(x.detach(), c.clone(), w, m, half.clone(), gy, True)
        assert ne.bin_calls == before + 1 and len(registered) == 1
        # New centres: plan rebuilt once for the step, binning kept.
        c2 = c + 1e-3
        run_engine(x, c2, w, m, half, gy, True)
        assert ne.bin_calls == before + 1 and len(registered) == 2
        # An in-place write bumps the version: re-binned.
        x.add_(0.0)
        run_engine(x, c, w, m, half, gy, True)
        assert ne.bin_calls == before + 2
        # A write through .data leaves the version alone; the value check catches it.
        x.data[:100] = torch.rand(100, 3)
        y1, _ = run_engine(x, c, w, m, half, gy, True)
        assert ne.bin_calls == before + 3
        y_ref, _ = oracle(x, c, w, m, half, gy)
        torch.testing.assert_close(y1.double(), y_ref, rtol=2e-4, atol=2e-5 * 17)
        # A different tensor with the same values is re-binned (the key includes the storage).
        run_engine(x.clone(), c, w, m, half, gy, True)
        assert ne.bin_calls == before + 4
    assert len(ne._BIN_CACHE) <= ne._BIN_CACHE_MAX


@pytest.mark.parametrize("d", [1, 2, 3, 4])
@pytest.mark.parametrize("dtype", DTYPES)
def test_pair_count_matches_oracle(d, dtype):
    x, c, w, _m, half, _gy = problem(1500, d, 30, 1, dtype, seed=17 + d)
    with forced_cull():
        assert ne.pair_count(x, c, half) == int(oracle_mask(x, c, w, half).sum())
    inf = torch.full_like(half, math.inf)
    assert ne.pair_count(x, c, inf) is None  # exact sums run dense


def test_dense_fallback_when_culling_does_not_pay():
    x, c, w, m, half, gy = problem(2000, 3, 20, 2, torch.float64, seed=19, w_lo=2.0, w_hi=3.0)
    assert ne.pair_count(x, c, half) is None
    assert_matches_oracle(x, c, w, m, half, gy, cull=True)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 numba threads")
@pytest.mark.parametrize("P", [1, 4])
@pytest.mark.parametrize("path", ["dense", "culled"])
def test_thread_choice_by_work_size_changes_nothing(P, path, monkeypatch):
    """Small work runs on one thread, large on all: the same bits either way."""
    x, c, w, m, half, gy = problem(5000, 3, 48, P, torch.float64, seed=23, w_lo=0.03, w_hi=0.1)
    cull = path == "culled"
    results = []
    for limit in (0, math.inf):  # 0: always parallel; inf: always one thread
        monkeypatch.setattr(ne, "_PARALLEL_WORK", limit)
        with numba_threads(2), forced_cull():
            results.append(run_engine(x, c, w, m, half, gy, cull))
    (y1, g1), (y2, g2) = results
    assert torch.equal(y1, y2)
    for a, b in zip(g1, g2):
        assert torch.equal(a, b)


def clustered_problem(layout, n, K, P, dtype, seed):
    """Points in tight clusters or on a thin slab; a tenth of the bumps 10x wider."""
    g = torch.Generator().manual_seed(seed)
    d = 3
    if layout == "clusters":
        centres = 0.2 + 0.6 * torch.rand(4, d, generator=g, dtype=torch.float64)
        x = centres[torch.randint(0, 4, (n,), generator=g)] + 0.02 * torch.randn(n, d, generator=g, dtype=torch.float64)
    else:
        x = torch.rand(n, d, generator=g, dtype=torch.float64)
        x[:, 1] = 0.5 + 0.003 * x[:, 1]  # slab thin in a middle dim: rows must not run along it
    c = torch.rand(d, K, generator=g, dtype=torch.float64)
    w = 0.02 + 0.05 * torch.rand(d, K, generator=g, dtype=torch.float64)
    w[:, : max(1, K // 10)] *= 10.0
    m = torch.randn(K, P, generator=g, dtype=torch.float64)
    gy = torch.randn(n, P, generator=g, dtype=torch.float64)
    x, c, w, m, gy = (t.to(dtype) for t in (x, c, w, m, gy))
    return x, c, w, m, SCALE * w.abs(), gy


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("P", [1, 3])
@pytest.mark.parametrize("layout", ["clusters", "slab"])
def test_clustered_data_parity(layout, P, dtype):
    x, c, w, m, half, gy = clustered_problem(layout, 3000, 40, P, dtype, seed=29)
    with forced_cull():
        assert ne.pair_count(x, c, half) == int(oracle_mask(x, c, w, half).sum())
        assert_matches_oracle(x, c, w, m, half, gy, cull=True)
    if layout == "slab":  # the thin dim is not the one rows run along
        assert ne.get_binning(x).gdim[-1] != 1


def test_small_problem_skips_the_grid_without_binning():
    x, c, w, m, half, gy = problem(1000, 3, 100, 1, torch.float32, seed=31, w_lo=0.1, w_hi=0.3, odd_widths=False)
    before = ne.bin_calls
    assert ne.make_plan(x, c, half) is None
    assert ne.bin_calls == before
    assert_matches_oracle(x, c, w, m, half, gy, cull=True)


def test_backward_reuses_the_forward_dense_decision_only_when_valid(monkeypatch):
    """A small problem's backward skips the box-fraction test when it follows the forward
    that made it on the same unchanged tensors; any other backward decides afresh, and every
    backward gives the gradients at the values it is given."""
    calls = []
    real = ne._box_fraction
    monkeypatch.setattr(ne, "_box_fraction", lambda *a: calls.append(1) or real(*a))
    x, c, w, m, half, gy = problem(1000, 3, 100, 2, torch.float64, seed=37, w_lo=0.1, w_hi=0.3, odd_widths=False)

    def assert_grads(grads, x, c, w, m, half):
        for a, b in zip(grads, oracle(x, c, w, m, half, gy)[1]):
            torch.testing.assert_close(a.double(), b, rtol=1e-9, atol=1e-10)

    ne.forward(x, c, w, m, half, True)
    assert len(calls) == 1 and ne._dense_key is not None
    assert_grads(ne.backward(gy, x, c, w, m, half, True, True), x, c, w, m, half)
    assert len(calls) == 1  # reused: same tensors, same versions
    ne.backward(gy, x, c, w, m, half, True, True)
    assert len(calls) == 2  # used once only

    # Centres changed in place between forward and backward (the version moves): decided afresh.
    ne.forward(x, c, w, m, half, True)
    c.add_(0.01)
    assert_grads(ne.backward(gy, x, c, w, m, half, True, True), x, c, w, m, half)
    assert len(calls) == 4

    # Another x, and narrow boxes that make the grid pay, in the backward: it takes the grid.
    ne.forward(x, c, w, m, half, True)
    x2 = torch.rand(1000, 3, generator=torch.Generator().manual_seed(38), dtype=torch.float64)
    w2, half2 = w * 0.05, half * 0.05
    before = ne.bin_calls
    assert_grads(ne.backward(gy, x2, c, w2, m, half2, True, True), x2, c, w2, m, half2)
    assert len(calls) == 6 and ne.bin_calls == before + 1

    # Values written through .data (no version change) after the forward: the decision is kept
    # (either path is exact) and the gradients are those at the new values.
    ne.forward(x, c, w, m, half, True)
    x.data[:10] = 0.5
    w.data[:, :5] *= 2.0
    assert_grads(ne.backward(gy, x, c, w, m, half, True, True), x, c, w, m, half)
    assert len(calls) == 7

    # Inference tensors have no version counter: no key, the test runs, the result is the same.
    y = ne.forward(x, c, w, m, half, True)
    with torch.inference_mode():
        assert torch.equal(ne.forward(x, c, w, m, half.clone(), True), y)
    assert ne._dense_key is None and len(calls) == 9


_FRESH_VS_CACHED = {
    "axis": """
import hashlib, torch, wandering
out = []
for sp in (None, 0.01):
    g = torch.Generator().manual_seed(0)
    f = wandering.SumOfBumpFcns(torch.rand(3, 100, generator=g), 0.02 + 0.05 * torch.rand(3, 100, generator=g),
                                torch.randn(100, generator=g), None, None, support_p=sp)
    x = torch.rand(20000, 3, generator=g)
    y = f(x)
    y.square().sum().backward()
    out.append(b"".join(t.numpy().tobytes() for t in (y.detach(), f.c.grad, f.w.grad, f.m.grad)))
print(hashlib.sha1(b"".join(out)).hexdigest())
""",
    # Oriented bumps, d = 2 and 3 (their own kernels), P = 1 and 2, grad x too.
    "oriented": """
import hashlib, torch, wandering
out = []
for d, P, sp in ((3, None, None), (3, None, 0.01), (2, 2, 0.01)):
    g = torch.Generator().manual_seed(0)
    K = 100
    m = torch.randn(K, *(() if P is None else (P,)), generator=g)
    f = wandering.OrientedSumOfBumpFcns(
        torch.rand(d, K, generator=g), 0.02 + 0.05 * torch.rand(d, K, generator=g), m,
        angles=6 * torch.rand(d * (d - 1) // 2, K, generator=g), support_p=sp, backend="numba")
    x = torch.rand(20000, d, generator=g).requires_grad_()
    y = f(x)
    y.square().sum().backward()
    ts = (y.detach(), x.grad, f.c.grad, f.w.grad, f.m.grad, f.angles.grad)
    out.append(b"".join(t.numpy().tobytes() for t in ts))
print(hashlib.sha1(b"".join(out)).hexdigest())
""",
}


@pytest.mark.parametrize("kind", ["axis", "oriented"])
def test_results_are_the_same_right_after_a_compile_and_from_the_disk_cache(tmp_path, kind):
    """The first process compiles the kernels, the second loads them from Numba's disk cache:
    both must give the same bits (grad m once differed, in the dense and the culled path)."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path), PYTHONHASHSEED="0")
    runs = [
        subprocess.run(
            [sys.executable, "-c", _FRESH_VS_CACHED[kind]], capture_output=True, text=True, env=env, timeout=600
        )
        for _ in range(2)
    ]
    for r in runs:
        assert r.returncode == 0, r.stderr
    assert any(tmp_path.rglob("*.nbi"))  # the first run did write the cache the second read
    assert runs[0].stdout == runs[1].stdout


@pytest.mark.parametrize(
    "dtype, P", [(torch.float32, 16), (torch.float32, 32), (torch.float64, 8), (torch.float64, 24)]
)
@pytest.mark.parametrize("path", ["dense", "culled"])
def test_whole_line_outputs_match_oracle_and_thread_count(dtype, P, path):
    """P outputs whose rows are whole cache lines (streamed scatters) and multiples of 8
    (vector transposes): the oracle's values, the same bits at 1 and 2 threads."""
    x, c, w, m, half, gy = problem(3000, 3, 48, P, dtype, seed=P + 1, w_lo=0.03, w_hi=0.15)
    cull = path == "culled"
    with forced_cull():
        assert_matches_oracle(x, c, w, m, half, gy, cull)
        results = []
        for nt in (1, 2):
            with numba_threads(nt):
                results.append(run_engine(x, c, w, m, half, gy, cull))
    (y1, g1), (y2, g2) = results
    assert torch.equal(y1, y2)
    for a, b in zip(g1, g2):
        assert torch.equal(a, b)


@pytest.mark.parametrize("R, C", [(1, 1), (7, 5), (8, 8), (16, 2500), (2501, 19), (40, 17)])
@pytest.mark.parametrize(
    "src_dtype, dst_dtype", [(np.float32, np.float32), (np.float64, np.float32), (np.float64, np.float64)]
)
def test_transpose_into(R, C, src_dtype, dst_dtype):
    from wandering._engine import _kernels

    rng = np.random.default_rng(R * 1000 + C)
    ss, ds = C + 3, R + 5  # row strides wider than the rows
    src = rng.standard_normal(R * ss).astype(src_dtype)
    dst = np.full(C * ds, -7.0, dst_dtype)
    _kernels.transpose_into(src, ss, dst, ds, R, C)
    want = np.full((C, ds), -7.0, dst_dtype)
    want[:, :R] = src.reshape(R, ss)[:, :C].T.astype(dst_dtype)
    np.testing.assert_array_equal(dst.reshape(C, ds), want)


@pytest.mark.parametrize(
    "P, dtype, offset",
    [
        (1, np.float32, 0),
        (5, np.float32, 0),
        (16, np.float32, 0),
        (16, np.float32, 1),
        (32, np.float32, 0),
        (8, np.float64, 0),
    ],
)
def test_scatter_rows_streamed_or_not(P, dtype, offset):
    """Rows scattered through an index, by streamed whole-line stores where rows are
    whole aligned lines (offset 0 on a 64-byte aligned buffer), else one by one."""
    from wandering._engine import _kernels
    from wandering._engine._numba_engine import _line_aligned_empty

    n = 1000
    rng = np.random.default_rng(P)
    idx = rng.permutation(n).astype(np.int32)
    src = rng.standard_normal(n * P).astype(dtype)
    dst = _line_aligned_empty((n * P + offset,), dtype)[offset:]
    assert _kernels.whole_lines(dst, P) == (offset == 0 and (P * dst.itemsize) % 64 == 0)
    _kernels.scatter_rows(dst, idx, src, n, P)
    want = np.empty((n, P), dtype)
    want[idx] = src.reshape(n, P)
    np.testing.assert_array_equal(dst.reshape(n, P), want)
