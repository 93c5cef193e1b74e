"""Pure-PyTorch chunked engine (any device): memory O(chunk x d x K).

Forward and backward each loop over chunks of points and recompute the
(chunk, d, K) terms, so nothing of size (n_smps, K) is ever held.

Accuracy: every sum over bumps (y, grad x) or over points (grad c, w, m) is blocked:
runs of at most ``_RUN`` consecutive terms are summed in the inputs' dtype, and the run
sums are added in float64 (float32 for half types), then rounded to the inputs' dtype
once. A float32 result then carries the rounding of its terms and of short runs, not
that of a long float32 running sum (a float32 matmul over K bumps or n points adds its
terms one after another). Summing in float64 outright (sums with dtype=float64,
float64 matmuls) measured 3-10x slower for those sums on the CPU.
"""

from __future__ import annotations

import torch

from wandering._engine._geometry import inverse_widths

# Elements of the (chunk, d, K) temporaries per chunk: ~16 MB at float32.
_CHUNK_ELEMS = 1 << 22


def chunk_rows(d: int, K: int) -> int:
    return max(1, _CHUNK_ELEMS // max(1, d * K))


_RUN = 32  # terms summed in the inputs' dtype before the float64 accumulation (as the numba kernels)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    # Parameter gradients sum over all points: accumulate in float64 (float32 for half types).
    return torch.float64 if dtype in (torch.float32, torch.float64) else torch.float32


def blocked_sum(t: torch.Tensor, dim: int, acc: torch.dtype) -> torch.Tensor:
    """t summed over ``dim`` (non-negative) in runs of at most _RUN consecutive entries, the runs added in ``acc``."""
    size = t.shape[dim]
    full = size - size % _RUN
    out = None
    if full:
        runs = t.narrow(dim, 0, full).unflatten(dim, (full // _RUN, _RUN)).sum(dim + 1)
        out = runs.sum(dim, dtype=acc)
    if full < size or out is None:
        rest = t.narrow(dim, full, size - full).sum(dim, dtype=acc)
        out = rest if out is None else out + rest
    return out


def blocked_matmul(a: torch.Tensor, b: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """a (r, s) @ b (s, t) in ``acc``, the contraction over s in runs of at most _RUN terms
    (batched matmuls in the inputs' dtype) whose results are added in ``acc``."""
    r, s = a.shape
    full = s - s % _RUN
    out = None
    if full:
        nrun = full // _RUN
        a3 = a[:, :full].reshape(r, nrun, _RUN).transpose(0, 1)  # (runs, r, _RUN)
        b3 = b[:full].reshape(nrun, _RUN, b.shape[1])
        out = torch.bmm(a3, b3).sum(dim=0, dtype=acc)
    if full < s or out is None:
        rest = (a[:, full:] @ b[full:]).to(acc)
        out = rest if out is None else out + rest
    return out


def _terms(xc, c, iw, half):
    """z (chunk, d, K) and e (chunk, K), both exactly 0 on pairs that do not count."""
    diff = xc[:, :, None] - c[None]
    live = (diff.abs() < half[None]).all(dim=1)
    z = diff * iw[None]
    e = torch.exp(-(z * z).sum(dim=1))
    live &= e > 0
    e = torch.where(live, e, torch.zeros_like(e))
    z = torch.where(live[:, None, :], z, torch.zeros_like(z))  # no inf * 0 downstream
    return z, e


def forward(x, c, w, m, half, cull, rows=None):
    n, d = x.shape
    y = x.new_empty((n, m.shape[1]))
    iw = inverse_widths(w)
    acc = _acc_dtype(x.dtype)
    step = rows or chunk_rows(d, c.shape[1])
    for i0 in range(0, n, step):
        _, e = _terms(x[i0 : i0 + step], c, iw, half)
        y[i0 : i0 + step] = blocked_matmul(e, m, acc)
    return y


def backward(gy, x, c, w, m, half, cull, need_x, rows=None):
    n, d = x.shape
    acc = _acc_dtype(x.dtype)
    gc = torch.zeros(c.shape, dtype=acc, device=x.device)
    gw = torch.zeros(w.shape, dtype=acc, device=x.device)
    gm = torch.zeros(m.shape, dtype=acc, device=x.device)
    gx = torch.empty_like(x) if need_x else None
    iw = inverse_widths(w)
    gy = gy.to(x.dtype)
    step = rows or chunk_rows(d, c.shape[1])
    for i0 in range(0, n, step):
        z, e = _terms(x[i0 : i0 + step], c, iw, half)
        g = gy[i0 : i0 + step]  # (chunk, P)
        gm += blocked_matmul(e.T, g, acc)
        t = 2.0 * e * (g @ m.T)  # (chunk, K): the exp is shared by all P outputs
        a = t[:, None, :] * z * iw[None]  # (chunk, d, K)
        gc += blocked_sum(a, 0, acc)
        gw += blocked_sum(a * z, 0, acc)
        if need_x:
            gx[i0 : i0 + step] = -blocked_sum(a, 2, acc)
    return gx, gc.to(c.dtype), gw.to(w.dtype), gm.to(m.dtype)


# ---------------------------------------------------------------- oriented bumps
def _oriented_terms(xc, c, U, r2):
    """diff (chunk, d, K), z (chunk, d, K) and e (chunk, K); z and e exactly 0 on pairs that do not count."""
    diff = xc[:, :, None] - c[None]
    z = torch.einsum("ajk,ijk->iak", U, diff)
    s = (z * z).sum(dim=1)
    e = torch.exp(-s)
    live = (s < r2[None]) & (e > 0)  # a NaN s (inf - inf from huge 1/w) fails both tests
    e = torch.where(live, e, torch.zeros_like(e))
    z = torch.where(live[:, None, :], z, torch.zeros_like(z))  # no inf * 0 downstream
    return diff, z, e


def oriented_forward(x, c, U, m, r2, half, cull, rows=None):
    n, d = x.shape
    y = x.new_empty((n, m.shape[1]))
    step = rows or chunk_rows(d, c.shape[1])
    for i0 in range(0, n, step):
        _, _, e = _oriented_terms(x[i0 : i0 + step], c, U, r2)
        y[i0 : i0 + step] = e @ m
    return y


def oriented_backward(gy, x, c, U, m, r2, half, cull, need_x, rows=None):
    n, d = x.shape
    acc = _acc_dtype(x.dtype)
    gc = torch.zeros(c.shape, dtype=acc, device=x.device)
    gU = torch.zeros(U.shape, dtype=acc, device=x.device)
    gm = torch.zeros(m.shape, dtype=acc, device=x.device)
    gx = torch.empty_like(x) if need_x else None
    gy = gy.to(x.dtype)
    step = rows or chunk_rows(d, c.shape[1])
    for i0 in range(0, n, step):
        diff, z, e = _oriented_terms(x[i0 : i0 + step], c, U, r2)
        g = gy[i0 : i0 + step]  # (chunk, P)
        gm += (e.T @ g).to(acc)
        t = 2.0 * e * (g @ m.T)  # (chunk, K): dL/dz = -t z; the exp is shared by all P outputs
        az = t[:, None, :] * z  # (chunk, d, K)
        gU -= torch.einsum("iak,ibk->abk", az, diff).to(acc)
        v = torch.einsum("ajk,iak->ijk", U, az)  # U^T (t z) per pair: dL/dc
        gc += v.sum(dim=0).to(acc)
        if need_x:
            gx[i0 : i0 + step] = -v.sum(dim=2)
    return gx, gc.to(c.dtype), gU.to(U.dtype), gm.to(m.dtype)
