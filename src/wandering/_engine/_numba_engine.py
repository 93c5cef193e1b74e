"""CPU engine on the Numba kernels: dense fused sum and grid-culled sum, P outputs.

Implements the engine contract of ``_registry``, axis-aligned bumps (``_kernels``) and
oriented ones (``_kernels._oriented``): plain functions on detached tensors, no autograd
here (the op layer owns it). Backward recomputes the pairs.

The culled path bins the points on a grid (cached per x, by value; the same binning
serves both kinds of bump) and registers the bumps in the grid rows their support
boxes (oriented: ellipsoids) reach (cached per binning and the values of c and half,
and U and r2), so the forward and backward of one step share both.

Work is split into a fixed number of partitions that depends on the problem only;
partial gradient sums are reduced in partition order, so results are bitwise the
same for any thread count.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

import numba
import numpy as np
import torch

from wandering._engine import _buffers, _kernels
from wandering._engine._kernels import _oriented as _ko

# Target points per grid cell; a bump then visits ~(box/h + 1)**3 cells.
_POINTS_PER_CELL = 16
# Cells are this much wider across rows and finer along them (same cell count): each bump
# then meets fewer, longer rows for a few more candidates. Measured at 1 thread against
# cubic cells: 1.17x on the uniform culled case (d = 3), 1.08x at d = 2, 1.07x on clustered
# data, 0.98x on a thin slab.
_ROW_CELL_SCALE = 2.0
# Cull only when the candidate pairs are well below the dense n*K (tests raise it to force the grid).
_CULL_FRACTION = 0.5
# Small problems (n * K below _SMALL_GRID) skip the grid without binning when, for uniform
# data over x's bounding box, the candidates would already exceed _CULL_FRACTION: binning
# and registering (~0.4 ms at n = 1000, K = 100) then cost more than the
# dense kernels (~0.1 ms) they could save.
_SMALL_GRID = 1 << 18
# Work partitions: a number that depends on the problem only (never on the thread count).
# Each holds a float64 (2d + P, K) gradient partial, so their count is also capped by a
# memory budget for the partials, but kept at least _MIN_PARTS for parallelism.
_MAX_PARTS = 64
_MIN_PARTS = 8
_PART_BYTES = 16 << 20
_BIN_CACHE_MAX = 3  # binnings kept (each holds about 3 copies of x)
_PLAN_CACHE_MAX = 2  # culling plans kept per binning

# Test instrumentation: number of binnings computed since import.
bin_calls = 0


# Below this much work (pair evaluations, about 1-2 ms on one core) the kernels run on one
# thread: a second thread saves little there, and on a busy machine the parallel region can
# wait a whole scheduler slice for it. Partitions never depend on the thread count, so the
# choice changes no result.
_PARALLEL_WORK = 1 << 20


def _threads(work: float = math.inf) -> int:
    if work < _PARALLEL_WORK:
        return 1
    return max(1, min(numba.get_num_threads(), torch.get_num_threads()))


class _threads_capped:
    """Run numba kernels on at most torch's thread count too, and on one thread for small
    work (restored afterwards)."""

    def __init__(self, work: float = math.inf):
        self.work = work

    def __enter__(self):
        self.old = numba.get_num_threads()
        nt = _threads(self.work)
        # Numba's thread count is per thread: only this block can have changed it.
        self.changed = nt != self.old
        if self.changed:
            numba.set_num_threads(nt)

    def __exit__(self, *exc):
        if self.changed:
            numba.set_num_threads(self.old)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


def _line_aligned_empty(shape: tuple, dtype, buf: np.ndarray | None = None) -> np.ndarray:
    """np.empty whose data starts on a cache line, so whole-line rows can be streamed
    (``_kernels.scatter_rows``); numpy's own alignment is 16 bytes. ``buf``: a uint8
    buffer to carve it from (a new one when None or too small)."""
    count = int(np.prod(shape))
    itemsize = np.dtype(dtype).itemsize
    nbytes = count * itemsize + 64
    if buf is None or buf.nbytes < nbytes:
        buf = np.empty(nbytes, np.uint8)
    off = -buf.ctypes.data % 64
    return buf[off : off + count * itemsize].view(dtype).reshape(shape)


# Per thread, the buffer of the last upstream gradient put into sorted order. Reusing it
# spares the backward a fresh (n, P) allocation each step, whose page faults cost as
# much as sorting into it (P = 64, 1e6 points: ~60 ms, and now and then 0.5-1 s of
# system time where the kernel gave huge pages). It stays allocated between steps. Only
# small ones live here: large ones come from ``_buffers`` (a dead output's memory).
_scratch = threading.local()


def _sorted_gradient_buffer(shape: tuple, dtype) -> np.ndarray:
    if int(np.prod(shape)) * np.dtype(dtype).itemsize >= _buffers.MIN_BYTES:
        # Large: the memory of the forward's dead output (the same size), not a second buffer.
        return _buffers.empty_array(shape, dtype)
    buf = getattr(_scratch, "buf", None)
    out = _line_aligned_empty(shape, dtype, buf)
    if out.base is not buf:
        _scratch.buf = out.base
    return out


@dataclass
class _Plan:
    row_start: np.ndarray  # (nrows + 1,) registrations of each row
    reg_k: np.ndarray
    reg_p0: np.ndarray
    reg_p1: np.ndarray
    cost: np.ndarray  # (nrows + 1,) prefix sum of the work per row
    maxrow: int
    maxseg: int
    ncand: int


@dataclass
class _Binning:
    perm: np.ndarray  # (n,) int32 (int64 from 2**31 points): sorted position -> original index
    rank: np.ndarray  # (n,) the same dtype: original index -> sorted position
    start: np.ndarray  # (n_cells + 1,) first sorted position of each cell
    row_pts: np.ndarray  # (nrows + 1,) first sorted position of each row
    xs: np.ndarray  # (d, n) points in sorted order
    gdim: np.ndarray  # (gd,) data dim of each grid dim
    lo: np.ndarray
    inv_h: np.ndarray
    ncell: np.ndarray
    x_copy: torch.Tensor  # the binned values: writes through x.data do not bump x._version
    # Recent plans: (c copy, half copy, cull fraction, oriented key (U, r2 copies) or None,
    # plan or None when culling does not pay).
    plans: list = field(default_factory=list)


# Binnings keyed on (data_ptr, shape, stride, dtype, version) and verified by value,
# so a tensor that comes back as another Python object (compile, custom ops) still hits.
_BIN_CACHE: dict[tuple, _Binning] = {}


def _x_key(x: torch.Tensor) -> tuple:
    return (x.data_ptr(), tuple(x.shape), tuple(x.stride()), x.dtype, x._version)


def _make_binning(x: torch.Tensor) -> _Binning:
    global bin_calls
    bin_calls += 1
    n, d = x.shape
    gd = min(d, 3)
    xn = _np(x)
    with _threads_capped(n * d):
        lo, hi = _kernels.extent(xn, gd)
    ext = hi - lo
    pos = ext > 0
    total = max(1.0, n / _POINTS_PER_CELL)
    ncell = np.ones(gd, np.int64)
    inv_h = np.zeros(gd)
    if pos.any():
        h = (np.prod(ext[pos]) / total) ** (1.0 / pos.sum())
        for j in range(gd):
            if pos[j]:
                ncell[j] = int(min(max(1, math.ceil(ext[j] / h)), 4096))
                inv_h[j] = ncell[j] / ext[j]
        # Very flat data could ask for far more cells than points: coarsen the finest dims.
        while np.prod(ncell) > 4 * total + 64:
            j = int(np.argmax(ncell))
            ncell[j] = max(1, ncell[j] // 2)
            inv_h[j] = ncell[j] / ext[j]
    # Rows run along the grid dim with the most cells (stable order: ties keep data order).
    gdim = np.argsort(ncell, kind="stable").astype(np.int64)
    lo, inv_h, ncell = lo[gdim].copy(), inv_h[gdim].copy(), ncell[gdim].copy()
    f = _ROW_CELL_SCALE
    if gd > 1 and ncell[gd - 1] > 1:
        total_cells = int(np.prod(ncell))
        for j in range(gd - 1):
            if ncell[j] > 1:
                ncell[j] = max(1, int(round(ncell[j] / f)))
                inv_h[j] = ncell[j] / ext[gdim[j]]
        j = gd - 1
        ncell[j] = int(min(max(1, total_cells // int(np.prod(ncell[:j]))), 4096))
        inv_h[j] = ncell[j] / ext[gdim[j]]
    idx = np.int32 if n < 2**31 else np.int64
    perm, rank = np.empty(n, idx), np.empty(n, idx)
    with _threads_capped(n * d):
        # Any chunk count gives the same (stable) order: use one per thread.
        start, xs = _kernels.bin_points(xn, gdim, lo, inv_h, ncell, numba.get_num_threads(), perm, rank)
    row_pts = np.ascontiguousarray(start[:: int(ncell[gd - 1])])
    return _Binning(perm, rank, start, row_pts, xs, gdim, lo, inv_h, ncell, x.clone())


# Key of the binning the last forward verified by value, until a backward uses it.
_verified_key: tuple | None = None


def get_binning(x: torch.Tensor, trust_forward: bool = False) -> _Binning:
    """Binning of x, reused while x holds the same values at the same place.

    The value compare (O(n*d), far cheaper than re-binning; catches in-place writes via
    x.data) runs on every forward. A backward right after the forward that verified the
    same key (``trust_forward``) skips it once: it then computes the gradients at the
    values that forward saw, as autograd's saved tensors intend."""
    global _verified_key
    key = _x_key(x)
    hit = _BIN_CACHE.get(key)
    if hit is not None:
        if trust_forward and _verified_key == key:
            _verified_key = None
            return hit
        if torch.equal(hit.x_copy, x):
            _verified_key = None if trust_forward else key
            return hit
    b = _make_binning(x)
    _verified_key = None if trust_forward else key
    _BIN_CACHE.pop(key, None)
    while len(_BIN_CACHE) >= _BIN_CACHE_MAX:
        _BIN_CACHE.pop(next(iter(_BIN_CACHE)))
    _BIN_CACHE[key] = b
    return b


def _register(b: _Binning, c: torch.Tensor, half: torch.Tensor, n: int, K: int) -> _Plan | None:
    row_start, reg_k, reg_p0, reg_p1, ncand = _kernels.register_bumps(
        _np(c), _np(half), b.gdim, b.lo, b.inv_h, b.ncell, b.start
    )
    if ncand > _CULL_FRACTION * n * K:
        return None
    cost, maxrow, maxseg = _kernels.row_costs(b.row_pts, row_start, reg_p0, reg_p1)
    return _Plan(row_start, reg_k, reg_p0, reg_p1, cost, int(maxrow), int(maxseg), int(ncand))


def _register_oriented(b: _Binning, c, half, U, r2, n: int, K: int) -> _Plan | None:
    eps = float(torch.finfo(c.dtype).eps)
    row_start, reg_k, reg_p0, reg_p1, ncand = _ko.register_ellipsoids(
        _np(c), _np(U), _np(r2), _np(half), b.gdim, b.lo, b.inv_h, b.ncell, b.start, eps
    )
    if ncand > _CULL_FRACTION * n * K:
        return None
    cost, maxrow, maxseg = _kernels.row_costs(b.row_pts, row_start, reg_p0, reg_p1)
    return _Plan(row_start, reg_k, reg_p0, reg_p1, cost, int(maxrow), int(maxseg), int(ncand))


def _box_fraction(xn: np.ndarray, cn: np.ndarray, hn: np.ndarray) -> float:
    """Estimated candidate fraction of the grid path for uniform data over x's bounding box:
    per bump, the box widened by a cell and clipped to the bounding box, in the first
    min(d, 3) dims (cells of ~_POINTS_PER_CELL points). One compiled call: on a loaded
    machine a tiny torch op with 2 intra-op threads was measured at ~8 ms."""
    n, d = xn.shape
    gd = min(d, 3)
    return float(_kernels.box_fraction(xn, cn, hn, gd, (_POINTS_PER_CELL / max(n, 1)) ** (1.0 / gd)))


# Key (_dense_test_key) of the last forward that the small-problem test (_box_fraction) sent
# dense, until a backward uses it: a backward on the same tensors, unchanged (same storage,
# same version), reaches the same decision, so it skips the test.
# (Either path is exact; the decision only picks which one runs.)
_dense_key: tuple | None = None


def _dense_test_key(x, c, w, half, r2=None) -> tuple | None:
    # _x_key of each, lighter (one dtype for all, per the contract): this runs twice a step.
    # hz is a function of w and half, so the four pin the test's inputs. Oriented bumps pass
    # U as w, and r2.
    try:
        key = (
            x.dtype, x.data_ptr(), x._version, x.shape, x.stride(), c.data_ptr(), c._version, c.shape, c.stride(),
            w.data_ptr(), w._version, w.shape, w.stride(), half.data_ptr(), half._version, half.shape, half.stride(),
        )  # fmt: skip
        return key if r2 is None else (*key, r2.data_ptr(), r2._version, r2.shape)
    except RuntimeError:  # an inference tensor has no version counter (and no backward): no key
        return None


def make_plan(
    x: torch.Tensor,
    c: torch.Tensor,
    half: torch.Tensor,
    trust_forward: bool = False,
    half_finite: bool | None = None,
    arrays: tuple | None = None,
    key: tuple | None = None,
    oriented: tuple | None = None,
) -> tuple[_Binning, _Plan] | None:
    """Binning and grid plan for the culled sum, or None where culling does not pay (dense).

    ``arrays``: x, c, half as numpy arrays, when the caller has them. ``key``: the call's
    :func:`_dense_test_key`, so that a backward (``trust_forward``) reuses its forward's
    small-problem decision instead of testing again. ``oriented``: (U, r2) of oriented
    bumps, registered by their ellipsoids (else the boxes of half)."""
    global _dense_key
    n = x.shape[0]
    K = c.shape[1]
    if half_finite is None:
        half_finite = bool(torch.isfinite(half).all())
    if n == 0 or K == 0 or not half_finite:
        return None
    if n * K < _SMALL_GRID:
        xn, cn, hn = arrays if arrays is not None else (_np(x), _np(c), _np(half))
        reuse = trust_forward and key is not None and _dense_key == key
        dense = reuse or _box_fraction(xn, cn, hn) > _CULL_FRACTION
        _dense_key = key if dense and not trust_forward else None
        if dense:
            return None
    b = get_binning(x, trust_forward)
    frac = _CULL_FRACTION
    for cc, hc, fc, oc, plan in b.plans:
        if fc == frac and cc.shape == c.shape and torch.equal(cc, c) and torch.equal(hc, half):
            if _same_bumps(oc, oriented):
                return None if plan is None else (b, plan)
    if oriented is None:
        plan = _register(b, c, half, n, K)
    else:
        plan = _register_oriented(b, c, half, *oriented, n, K)
    if len(b.plans) >= _PLAN_CACHE_MAX:
        b.plans.pop(0)
    ocopy = None if oriented is None else tuple(t.clone() for t in oriented)
    b.plans.append((c.clone(), half.clone(), frac, ocopy, plan))
    return None if plan is None else (b, plan)


def _same_bumps(cached: tuple | None, oriented: tuple | None) -> bool:
    """Whether a cached plan's oriented key (None: axis-aligned bumps) matches this call's."""
    if cached is None or oriented is None:
        return cached is None and oriented is None
    return all(s.shape == t.shape and torch.equal(s, t) for s, t in zip(cached, oriented))


def _n_parts(units: int, d: int, K: int, P: int, width: int | None = None) -> int:
    """Partitions for ``units`` blocks or rows: a function of the problem size only.
    ``width``: float64 partials per bump (default 2d + P, the axis kernels')."""
    per_part = 8 * ((2 * d + P) if width is None else width) * max(K, 1)
    by_memory = max(_MIN_PARTS, _PART_BYTES // per_part)
    return int(max(1, min(_MAX_PARTS, units, by_memory)))


def _dense_parts(n: int, d: int, K: int, P: int, width: int | None = None, block: int = _kernels._B) -> int:
    return _n_parts((n + block - 1) // block, d, K, P, width)


def _bounds(plan: _Plan, d: int, K: int, P: int, width: int | None = None) -> np.ndarray:
    nrows = plan.row_start.shape[0] - 1
    return _kernels.partition_bounds(plan.cost, _n_parts(nrows, d, K, P, width))


def _prepare(x, c, w, m, half, cull, trust_forward=False):
    """Kernel arrays (x, c, 1/w, half, m), and the binning and plan when the culled path runs
    (else None, None). Each tensor goes to numpy once: every conversion and compiled call
    costs microseconds, which count at small n.

    1/w is clamped to the largest finite float (a zero width gives a huge z, never inf*0),
    and a zero width's half-width is 0 (it counts nowhere, whatever half says)."""
    xn, cn = _np(x), _np(c)
    iw, hz, half_finite = _kernels.widths_prep(_np(w), _np(half))
    bp = None
    if cull:
        # Keyed only where the small-problem test runs: the key costs microseconds too.
        key = _dense_test_key(x, c, w, half) if x.shape[0] * c.shape[1] < _SMALL_GRID else None
        bp = make_plan(x, c, torch.from_numpy(hz), trust_forward, half_finite, (xn, cn, hz), key)
    b, plan = (None, None) if bp is None else bp
    return b, plan, xn, cn, iw, hz, _np(m)


def _work(n: int, K: int, P: int, plan: _Plan | None) -> float:
    """Pair evaluations of one pass (P outputs count as P / 4 more each), for the thread choice."""
    pairs = n * K if plan is None else plan.ncand + n
    return pairs * (1.0 + P / 4.0)


def forward(x, c, w, m, half, cull):
    """y (n, P) = sum_k m[k, p] * e[i, k] over the pairs that count (see the contract in ``_registry``)."""
    n, d = x.shape
    K, P = m.shape
    if n == 0 or K == 0 or P == 0:
        return torch.zeros((n, P), dtype=x.dtype)
    b, plan, xn, cn, iw, hn, mn = _prepare(x, c, w, m, half, cull)
    y = _buffers.empty((n, P), x.dtype)  # large: a dead output's memory, already mapped
    with _threads_capped(_work(n, K, P, plan)):
        if plan is None:
            _kernels.dense_forward(xn, cn, iw, hn, mn, y.numpy(), _dense_parts(n, d, K, P))
            return y
        bounds = _bounds(plan, d, K, P)
        args = (b.row_pts, plan.row_start, plan.reg_k, plan.reg_p0, plan.reg_p1, bounds, plan.maxrow, plan.maxseg)
        _kernels.culled_forward(b.xs, b.perm, cn, iw, hn, mn, *args, y.numpy())
    return y


def backward(gy, x, c, w, m, half, cull, need_x):
    """Gradients of sum(gy * y): (gx or None, gc, gw, gm), in the inputs' dtype."""
    n, d = x.shape
    K, P = m.shape
    if n == 0 or K == 0 or P == 0:
        gx = torch.zeros((n, d), dtype=x.dtype) if need_x else None
        return (
            gx,
            torch.zeros((d, K), dtype=c.dtype),
            torch.zeros((d, K), dtype=w.dtype),
            torch.zeros((K, P), dtype=m.dtype),
        )
    b, plan, xn, cn, iw, hn, mn = _prepare(x, c, w, m, half, cull, trust_forward=True)
    g = _np(gy.to(x.dtype))
    gx = _buffers.empty((n, d) if (need_x or plan is None) else (0, d), x.dtype)
    with _threads_capped(2 * _work(n, K, P, plan)):
        if plan is None:
            npart = _dense_parts(n, d, K, P)
            pcw, pm = np.zeros((npart, 2 * d, K)), np.zeros((npart, K, P))
            _kernels.dense_backward(xn, cn, iw, hn, mn, g, gx.numpy(), pcw, pm, npart)
        else:
            bounds = _bounds(plan, d, K, P)
            npart = bounds.shape[0] - 1
            pcw, pm = np.zeros((npart, 2 * d, K)), np.zeros((npart, K, P))
            args = (b.row_pts, plan.row_start, plan.reg_k, plan.reg_p0, plan.reg_p1, bounds, plan.maxrow, plan.maxseg)
            gs = _sorted_gradient_buffer(g.shape, g.dtype)
            _kernels.to_sorted(g.reshape(n * P), b.rank, gs.reshape(n * P), npart)
            _kernels.culled_backward(b.xs, b.perm, cn, iw, hn, mn, gs, *args, gx.numpy(), need_x, pcw, pm)
    # Fixed-order reduction: partials added in partition order. The casts to the inputs'
    # dtypes run in numpy (the same IEEE rounding as torch's, for less call overhead) and
    # copy, so no result is a view of another.
    scw = _kernels.sum_parts(pcw)
    gc, gw = scw[:d].astype(cn.dtype), scw[d:].astype(iw.dtype)
    gm = _kernels.sum_parts(pm).astype(mn.dtype)
    return (gx if need_x else None), torch.from_numpy(gc), torch.from_numpy(gw), torch.from_numpy(gm)


def pair_count(x, c, half) -> int | None:
    """Test instrumentation: in-support pairs the culled path visits, or None when it would run dense."""
    bp = make_plan(x, c, half)
    if bp is None:
        return None
    b, plan = bp
    d, K = c.shape
    bounds = _bounds(plan, d, K, 1)
    with _threads_capped():
        return int(
            _kernels.culled_pair_count(
                b.xs, _np(c), _np(half), plan.row_start, plan.reg_k, plan.reg_p0, plan.reg_p1, bounds
            )
        )


# ---------------------------------------------------------------- oriented bumps
def _moment_count(d: int) -> int:
    """Float64 moments per bump in the oriented backward: S1 (d) and S2's upper triangle."""
    return d + d * (d + 1) // 2


def _oriented_prepare(x, c, U, m, r2, half, cull, trust_forward=False):
    """Kernel arrays (x, c, U, r2, m), and the binning and plan when the culled path runs."""
    xn, cn, Un, r2n, mn = _np(x), _np(c), _np(U), _np(r2), _np(m)
    bp = None
    if cull:
        hn = _np(half)
        key = _dense_test_key(x, c, U, half, r2) if x.shape[0] * c.shape[1] < _SMALL_GRID else None
        bp = make_plan(x, c, half, trust_forward, bool(np.isfinite(hn).all()), (xn, cn, hn), key, (U, r2))
    b, plan = (None, None) if bp is None else bp
    return b, plan, xn, cn, Un, r2n, mn


def _oriented_work(n: int, d: int, K: int, P: int, plan: _Plan | None) -> float:
    # An oriented pair costs about (d + 1) / 4 axis-aligned ones more (its d^2 multiply-adds).
    return _work(n, K, P, plan) * (1.0 + d / 4.0)


def oriented_forward(x, c, U, m, r2, half, cull):
    """y (n, P) of oriented bumps (see the contract in ``_registry``)."""
    n, d = x.shape
    K, P = m.shape
    if n == 0 or K == 0 or P == 0:
        return torch.zeros((n, P), dtype=x.dtype)
    b, plan, xn, cn, Un, r2n, mn = _oriented_prepare(x, c, U, m, r2, half, cull)
    y = _buffers.empty((n, P), x.dtype)  # large: a dead output's memory, already mapped
    width = _moment_count(d) + P
    with _threads_capped(_oriented_work(n, d, K, P, plan)):
        if plan is None:
            _ko.dense_forward(xn, cn, Un, r2n, mn, y.numpy(), _dense_parts(n, d, K, P, width, _ko._BO))
            return y
        bounds = _bounds(plan, d, K, P, width)
        args = (b.row_pts, plan.row_start, plan.reg_k, plan.reg_p0, plan.reg_p1, bounds, plan.maxrow, plan.maxseg)
        _ko.culled_forward(b.xs, b.perm, cn, Un, r2n, mn, *args, y.numpy())
    return y


def oriented_backward(gy, x, c, U, m, r2, half, cull, need_x):
    """Gradients of sum(gy * y): (gx or None, gc, gU, gm), in the inputs' dtype."""
    n, d = x.shape
    K, P = m.shape
    if n == 0 or K == 0 or P == 0:
        gx = torch.zeros((n, d), dtype=x.dtype) if need_x else None
        return (
            gx,
            torch.zeros((d, K), dtype=c.dtype),
            torch.zeros((d, d, K), dtype=U.dtype),
            torch.zeros((K, P), dtype=m.dtype),
        )
    b, plan, xn, cn, Un, r2n, mn = _oriented_prepare(x, c, U, m, r2, half, cull, trust_forward=True)
    g = _np(gy.to(x.dtype))
    gx = _buffers.empty((n, d) if need_x else (0, d), x.dtype)
    # A = U^T U per bump (float64): grad x's v = 2 t A diff.
    A = _ko.gram(Un) if need_x else np.empty((d, d, 0))
    nq = _moment_count(d)
    width = nq + P
    with _threads_capped(2 * _oriented_work(n, d, K, P, plan)):
        if plan is None:
            npart = _dense_parts(n, d, K, P, width, _ko._BO)
            ps, pm = np.zeros((npart, K, nq)), np.zeros((npart, K, P))
            _ko.dense_backward(xn, cn, Un, A, r2n, mn, g, gx.numpy(), need_x, ps, pm, npart)
        else:
            bounds = _bounds(plan, d, K, P, width)
            npart = bounds.shape[0] - 1
            ps, pm = np.zeros((npart, K, nq)), np.zeros((npart, K, P))
            args = (b.row_pts, plan.row_start, plan.reg_k, plan.reg_p0, plan.reg_p1, bounds, plan.maxrow, plan.maxseg)
            gs = np.empty_like(g)
            _kernels.to_sorted(g, b.rank, gs, npart)
            _ko.culled_backward(b.xs, b.perm, cn, Un, A, r2n, mn, gs, *args, gx.numpy(), need_x, ps, pm)
    # Fixed-order reduction of the partials, then U applied once per bump (float64).
    gc, gU = _ko.finish_gradients(Un, _kernels.sum_parts(ps))
    gm = _kernels.sum_parts(pm).astype(mn.dtype)
    return (
        (gx if need_x else None), torch.from_numpy(gc.astype(cn.dtype)), torch.from_numpy(gU.astype(Un.dtype)),
        torch.from_numpy(gm),
    )  # fmt: skip


def oriented_pair_count(x, c, U, r2, half, culled: bool = True) -> int | None:
    """Test instrumentation: pairs that count, by the kernels' own arithmetic, among the
    culled path's candidates (None when it would run dense), or (``culled`` False) among
    all n * K pairs."""
    if not culled:
        return int(_ko.dense_pair_count(_np(x), _np(c), _np(U), _np(r2)))
    bp = make_plan(x, c, half, oriented=(U, r2))
    if bp is None:
        return None
    b, plan = bp
    d, K = c.shape
    bounds = _bounds(plan, d, K, 1, _moment_count(d) + 1)
    with _threads_capped():
        return int(
            _ko.culled_pair_count(
                b.xs, _np(c), _np(U), _np(r2), plan.row_start, plan.reg_k, plan.reg_p0, plan.reg_p1, bounds, plan.maxseg
            )
        )
