"""Triton kernels for oriented (full-covariance) bumps; the engine's ``oriented_*`` functions.

Same structure as the axis-aligned kernels of ``_triton_engine`` (whose launch,
configuration, Morton order and tile boxes this module shares), with the pair
terms of the oriented contract: ``z = U[:, :, k] @ (x_i - c_k)``, ``s = |z|^2``,
``e = exp(-s)``; a pair counts iff ``s < r2[k]`` and e did not underflow. z is
built in D multiply-adds of (BN, BK, DP) blocks, one per data dimension j, from
``x[:, j] - c[j, k]`` and column j of each U_k (no (BN, BK, D, D) temporary).

``_oriented_forward_kernel``
    grid (point tiles,). The (BN, P) sums over bumps accumulate in float64 across
    bump blocks (each block's BK terms are summed in the inputs' dtype first), so
    float32 sums over many bumps are as accurate as a float32 matmul's. With more
    outputs than one chunk holds, the program adds into its own rows of a float64
    scratch y (read-modify-write of rows no other program touches).
``_oriented_grad_x_kernel``
    grid (point tiles,): ``gx[i, j] = -sum_k sum_a U[a, j, k] t z_a`` (t = 2 e gy.m),
    accumulated in float64 across bump blocks.
``_oriented_grad_params_kernel``
    grid (bump blocks, point chunks), as the axis kernel: each program writes float64
    partial sums to its own slot of (chunks, K, .) buffers, which torch then sums in a
    fixed order (no atomics). Per bump it sums ``t z`` (d,) and ``t z diff^T`` (d, d)
    over the pairs; the host turns them into ``gc = U^T sum(t z)`` (U is the same for
    all of a bump's pairs, so the product moves out of the sum; done in float64) and
    ``gU = -sum(t z diff^T)``.

Culling (``cull=True``). Points and bumps are in Morton order and each point tile has
its bounding box, as for axis-aligned bumps; a (tile, bump block) pair is skipped
when no bump of the block can reach the tile's box, the bump's box being its
ellipsoid's bounding box ``half`` (``_geometry.ellipsoid_halfwidths``) widened by
a relative ``_CULL_MARGIN`` plus a few ulps of |c|. The widening covers the rounding
of s: a pair outside the widened box has an exact s above ``r2 (1 + _CULL_MARGIN)^2``,
and its computed s falls below r2 only when its relative rounding error exceeds about
``2 * _CULL_MARGIN`` (float32: U would need a condition number in the thousands, and
the contract lets engines disagree on such pairs anyway). Tiles that are not skipped
run the exact test ``s < r2`` per pair; the box plays no part in it.

Block sizes come from the axis kernels' register budget (``_config``), a half share of it for
the forward and a quarter for the backward (``_FORWARD_SHARE``, ``_BACKWARD_SHARE``), so the
kernels compile without register spills; they are untuned: no GPU was available when this was
written.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from wandering._engine import _triton_engine as _axis
from wandering._engine._triton_engine import (
    _check_device,
    _chunks,
    _config,
    _inverse_perm,
    _load_block,
    _on_device,
    _points,
    _tile_hits,
    morton_order,
)

_CULL_MARGIN = 2.0**-10
"""Relative widening of the ellipsoids' boxes for the tile skip (see the module docstring)."""

# Shares of the axis kernels' tile budget (``_config``): an oriented pair holds more (BN, BK, DP)
# temporaries (z, U's columns, t z, diff), and at the axis budget the backward kernels spill
# registers (ptxas for sm_90, triton 3.9: up to ~1.5 KB of stack a thread at d = 4). At these
# shares none of the three kernels spills more than 24 bytes at d = 2..4, P = 1, 4, 17, float32
# and float64. Chosen by register count, not timed: no GPU was available.
_FORWARD_SHARE = 2
_BACKWARD_SHARE = 4


# ----------------------------------------------------------------------------- kernels


@triton.jit
def _pair_terms(x_ptr, rows, rmask, ct_ptr, ut_ptr, r2_ptr, ks, kmask, cols, jmask, D: tl.constexpr):
    """z (BN, BK, DP) and e (BN, BK), both exactly 0 on pairs that do not count.

    ``ut`` is (K, D, D) with ``ut[k, j, a] = U[a, j, k]``: column j of U_k is one (BK, DP) load."""
    rows64 = rows.to(tl.int64)
    ks64 = ks.to(tl.int64)
    umask = kmask[:, None] & jmask[None, :]
    z = tl.zeros([rows.shape[0], ks.shape[0], cols.shape[0]], dtype=x_ptr.dtype.element_ty)
    for j in tl.static_range(D):
        xj = tl.load(x_ptr + rows64 * D + j, mask=rmask, other=0.0)
        cj = tl.load(ct_ptr + ks64 * D + j, mask=kmask, other=0.0)
        uj = tl.load(ut_ptr + (ks64 * D + j)[:, None] * D + cols[None, :], mask=umask, other=0.0)
        z += (xj[:, None] - cj[None, :])[:, :, None] * uj[None, :, :]
    s = tl.sum(z * z, axis=2)
    e = tl.exp(-s)
    r2 = tl.load(r2_ptr + ks, mask=kmask, other=0.0)  # padding bumps: r2 = 0 counts nowhere
    # a NaN s (inf - inf from a huge U) fails s < r2
    live = (s < r2[None, :]) & (e > 0) & rmask[:, None] & kmask[None, :]
    e = tl.where(live, e, 0.0)
    z = tl.where(live[:, :, None], z, 0.0)
    return z, e


@triton.jit
def _gy_dot_m(gy_ptr, rows, rmask, m_ptr, ks, kmask, P, BP: tl.constexpr):
    """(BN, BK): gy[i] . m[k] over all P outputs, in chunks of BP."""
    ps = tl.arange(0, BP)
    acc = tl.zeros([rows.shape[0], ks.shape[0]], dtype=m_ptr.dtype.element_ty)
    for p0 in range(0, P, BP):
        pc = p0 + ps
        pmask = pc < P
        gyt = _load_block(gy_ptr, rows, rmask, pc, pmask, P)
        mb = _load_block(m_ptr, ks, kmask, pc, pmask, P)
        acc += tl.sum(gyt[:, None, :] * mb[None, :, :], axis=2)
    return acc


@triton.jit
def _tile_box(plo_ptr, phi_ptr, t, cols, jmask, D: tl.constexpr):
    plo = tl.load(plo_ptr + t * D + cols, mask=jmask, other=0.0)
    phi = tl.load(phi_ptr + t * D + cols, mask=jmask, other=0.0)
    return plo, phi


@triton.jit
def _oriented_forward_kernel(
    x_ptr, idx_ptr, plo_ptr, phi_ptr, ct_ptr, ut_ptr, r2_ptr, ht_ptr, m_ptr, y_ptr, y64_ptr, n, K, P, count_ptr,
    D: tl.constexpr, DP: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BP: tl.constexpr,
    ONE_CHUNK: tl.constexpr, CULL: tl.constexpr, COUNT: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    rows = pid * BN + tl.arange(0, BN)
    rmask = rows < n
    cols = tl.arange(0, DP)
    jmask = cols < D
    if CULL:  # x is in tile order; idx maps back to the caller's rows
        out_rows = tl.load(idx_ptr + rows, mask=rmask, other=0).to(tl.int64)
        plo, phi = _tile_box(plo_ptr, phi_ptr, pid, cols, jmask, D)
    else:
        out_rows = rows.to(tl.int64)
    ps = tl.arange(0, BP)
    acc = tl.zeros([BN, BP], dtype=tl.float64)
    for k0 in range(0, K, BK):
        ks = k0 + tl.arange(0, BK)
        kmask = ks < K
        hit = True
        if CULL:
            cb = _load_block(ct_ptr, ks, kmask, cols, jmask, D)
            hb = _load_block(ht_ptr, ks, kmask, cols, jmask, D)
            hit = _tile_hits(plo, phi, cb, hb, kmask, jmask)
        if hit:
            if COUNT:  # tests: how many (tile, bump block) pairs were evaluated
                tl.atomic_add(count_ptr, 1)
            _z, e = _pair_terms(x_ptr, rows, rmask, ct_ptr, ut_ptr, r2_ptr, ks, kmask, cols, jmask, D)
            if ONE_CHUNK:
                mb = _load_block(m_ptr, ks, kmask, ps, ps < P, P)
                acc += tl.sum(e[:, :, None] * mb[None, :, :], axis=1).to(tl.float64)
            else:
                for p0 in range(0, P, BP):
                    pc = p0 + ps
                    pmask = pc < P
                    mb = _load_block(m_ptr, ks, kmask, pc, pmask, P)
                    yo = y64_ptr + out_rows[:, None] * P + pc[None, :]
                    ym = rmask[:, None] & pmask[None, :]
                    part = tl.sum(e[:, :, None] * mb[None, :, :], axis=1).to(tl.float64)
                    tl.store(yo, tl.load(yo, mask=ym, other=0.0) + part, mask=ym)
                    tl.debug_barrier()  # the next read of these rows may come from another thread
    if ONE_CHUNK:
        yo = y_ptr + out_rows[:, None] * P + ps[None, :]
        tl.store(yo, acc.to(y_ptr.dtype.element_ty), mask=rmask[:, None] & (ps < P)[None, :])


@triton.jit
def _oriented_grad_x_kernel(
    x_ptr, gy_ptr, idx_ptr, plo_ptr, phi_ptr, ct_ptr, ut_ptr, r2_ptr, ht_ptr, m_ptr, gx_ptr, n, K, P,
    D: tl.constexpr, DP: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BP: tl.constexpr,
    CULL: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    rows = pid * BN + tl.arange(0, BN)
    rmask = rows < n
    cols = tl.arange(0, DP)
    jmask = cols < D
    if CULL:
        out_rows = tl.load(idx_ptr + rows, mask=rmask, other=0).to(tl.int64)
        plo, phi = _tile_box(plo_ptr, phi_ptr, pid, cols, jmask, D)
    else:
        out_rows = rows.to(tl.int64)
    gacc = tl.zeros([BN, DP], dtype=tl.float64)
    for k0 in range(0, K, BK):
        ks = k0 + tl.arange(0, BK)
        kmask = ks < K
        hit = True
        if CULL:
            cb = _load_block(ct_ptr, ks, kmask, cols, jmask, D)
            hb = _load_block(ht_ptr, ks, kmask, cols, jmask, D)
            hit = _tile_hits(plo, phi, cb, hb, kmask, jmask)
        if hit:
            z, e = _pair_terms(x_ptr, rows, rmask, ct_ptr, ut_ptr, r2_ptr, ks, kmask, cols, jmask, D)
            t = 2.0 * e * _gy_dot_m(gy_ptr, rows, rmask, m_ptr, ks, kmask, P, BP)
            tz = t[:, :, None] * z  # (BN, BK, DP); -dL/dz
            umask = kmask[:, None] & jmask[None, :]
            for j in tl.static_range(D):
                uj = tl.load(ut_ptr + (ks.to(tl.int64) * D + j)[:, None] * D + cols[None, :], mask=umask, other=0.0)
                vj = tl.sum(tl.sum(tz * uj[None, :, :], axis=2), axis=1)  # (BN,): sum_k (U_k^T t z)_j
                gacc += tl.where(cols[None, :] == j, vj[:, None].to(tl.float64), 0.0)
    gx = (-gacc).to(gx_ptr.dtype.element_ty)
    tl.store(gx_ptr + out_rows[:, None] * D + cols[None, :], gx, mask=rmask[:, None] & jmask[None, :])


@triton.jit
def _oriented_grad_params_kernel(
    x_ptr, gy_ptr, plo_ptr, phi_ptr, ct_ptr, ut_ptr, r2_ptr, ht_ptr, m_ptr, tz_ptr, gu_ptr, gm_ptr,
    n, K, P, n_tiles, tiles_per_chunk,
    D: tl.constexpr, DP: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BP: tl.constexpr,
    ONE_CHUNK: tl.constexpr, CULL: tl.constexpr,
):  # fmt: skip
    kb = tl.program_id(0)
    ch = tl.program_id(1)
    ks = kb * BK + tl.arange(0, BK)
    kmask = ks < K
    ks64 = ks.to(tl.int64)
    cols = tl.arange(0, DP)
    jmask = cols < D
    ps = tl.arange(0, BP)
    if CULL:
        cb = _load_block(ct_ptr, ks, kmask, cols, jmask, D)
        hb = _load_block(ht_ptr, ks, kmask, cols, jmask, D)
    slot = ch.to(tl.int64) * K + ks64  # this program's rows of the (chunks, K, .) partials
    acct = tl.zeros([BK, DP], dtype=tl.float64)  # sum over pairs of t z
    accu = tl.zeros([BK, DP, DP], dtype=tl.float64)  # [k, j, a]: sum over pairs of t z_a diff_j
    accm = tl.zeros([BK, BP], dtype=tl.float64)
    jcol = cols[None, :, None]
    t0 = ch * tiles_per_chunk
    t1 = tl.minimum(t0 + tiles_per_chunk, n_tiles)
    for t in range(t0, t1):
        hit = True
        if CULL:
            plo, phi = _tile_box(plo_ptr, phi_ptr, t, cols, jmask, D)
            hit = _tile_hits(plo, phi, cb, hb, kmask, jmask)
        if hit:
            rows = t * BN + tl.arange(0, BN)
            rmask = rows < n
            z, e = _pair_terms(x_ptr, rows, rmask, ct_ptr, ut_ptr, r2_ptr, ks, kmask, cols, jmask, D)
            s = tl.zeros([BN, BK], dtype=z.dtype)
            for p0 in range(0, P, BP):
                pc = p0 + ps
                pmask = pc < P
                gyt = _load_block(gy_ptr, rows, rmask, pc, pmask, P)
                mb = _load_block(m_ptr, ks, kmask, pc, pmask, P)
                s += tl.sum(gyt[:, None, :] * mb[None, :, :], axis=2)
                gmt = tl.sum(e[:, :, None] * gyt[:, None, :], axis=0).to(tl.float64)
                if ONE_CHUNK:
                    accm += gmt
                else:
                    gp = gm_ptr + slot[:, None] * P + pc[None, :]
                    gmask = kmask[:, None] & pmask[None, :]
                    tl.store(gp, tl.load(gp, mask=gmask, other=0.0) + gmt, mask=gmask)
                    tl.debug_barrier()
            tz = (2.0 * e * s)[:, :, None] * z  # (BN, BK, DP), 0 on pairs that do not count
            acct += tl.sum(tz, axis=0).to(tl.float64)
            rows64 = rows.to(tl.int64)
            for j in tl.static_range(D):
                xj = tl.load(x_ptr + rows64 * D + j, mask=rmask, other=0.0)
                cj = tl.load(ct_ptr + ks64 * D + j, mask=kmask, other=0.0)
                gj = tl.sum(tz * (xj[:, None] - cj[None, :])[:, :, None], axis=0)  # (BK, DP over a)
                accu += tl.where(jcol == j, gj[:, None, :].to(tl.float64), 0.0)
    dmask = kmask[:, None] & jmask[None, :]
    tl.store(tz_ptr + slot[:, None] * D + cols[None, :], acct, mask=dmask)
    uoffs = slot[:, None, None] * (D * D) + jcol * D + cols[None, None, :]
    tl.store(gu_ptr + uoffs, accu, mask=dmask[:, None, :] & (jcol < D))
    if ONE_CHUNK:
        tl.store(gm_ptr + slot[:, None] * P + ps[None, :], accm, mask=kmask[:, None] & (ps < P)[None, :])


# ----------------------------------------------------------------------------- host side


@dataclass
class _Bumps:
    ct: torch.Tensor  # (K, d) centres, in block order
    ut: torch.Tensor  # (K, d, d): ut[k, j, a] = U[a, j, k]
    r2: torch.Tensor  # (K,) cut-offs on s
    ht: torch.Tensor | None  # (K, d) widened ellipsoid boxes (culled sums only)
    m: torch.Tensor  # (K, P)
    perm: torch.Tensor | None  # block order -> caller's bump index (culled sums only)


def _cull_halfwidths(c: torch.Tensor, half: torch.Tensor) -> torch.Tensor:
    """``half`` widened so rounding in s never puts a counted pair outside it (module docstring)."""
    ulps = 4.0 * torch.finfo(c.dtype).eps
    return half * (1.0 + _CULL_MARGIN) + ulps * c.abs()


def _bumps(c, U, m, r2, half, cull: bool) -> _Bumps:
    ct, ut = c.T, U.permute(2, 1, 0)
    ht = _cull_halfwidths(c, half).T if cull else None
    perm = None
    if cull and c.shape[1] > 1:
        perm = morton_order(ct)
        ct, ut, r2, ht, m = ct[perm], ut[perm], r2[perm], ht[perm], m[perm]
    ht = ht.contiguous() if ht is not None else None
    return _Bumps(ct.contiguous(), ut.contiguous(), r2.contiguous(), ht, m.contiguous(), perm)


def forward(x, c, U, m, r2, half, cull):
    """The contract's ``oriented_forward`` (see ``_registry``)."""
    _check_device(x)
    n, d = x.shape
    K, P = m.shape
    if n == 0 or K == 0 or P == 0:
        return x.new_zeros((n, P))
    cfg = _config(d, P, x.dtype, _FORWARD_SHARE)
    one_chunk = P <= cfg.BP
    b = _bumps(c, U, m, r2, half, cull)
    pts = _points(x, cfg.BN, cull)
    dummy = pts.x
    y = x.new_empty((n, P)) if one_chunk else dummy
    y64 = dummy if one_chunk else torch.zeros((n, P), dtype=torch.float64, device=x.device)
    counts = _axis.tile_counts
    count = torch.zeros(1, dtype=torch.int32, device=x.device) if counts is not None else dummy
    with _on_device(x):
        _oriented_forward_kernel[(pts.n_tiles,)](
            pts.x, pts.perm if cull else dummy, pts.lo if cull else dummy, pts.hi if cull else dummy,
            b.ct, b.ut, b.r2, b.ht if cull else dummy, b.m, y, y64, n, K, P, count,
            D=d, DP=cfg.DP, BN=cfg.BN, BK=cfg.BK, BP=cfg.BP, ONE_CHUNK=one_chunk, CULL=cull,
            COUNT=counts is not None,
        )  # fmt: skip
    if counts is not None:
        counts.append((int(count[0]), pts.n_tiles * triton.cdiv(K, cfg.BK)))
    return y if one_chunk else y64.to(x.dtype)


def backward(gy, x, c, U, m, r2, half, cull, need_x):
    """The contract's ``oriented_backward`` (see ``_registry``)."""
    _check_device(x)
    n, d = x.shape
    K, P = m.shape
    gy = gy.to(x.dtype)
    if n == 0 or K == 0 or P == 0:
        gx = x.new_zeros((n, d)) if need_x else None
        return gx, torch.zeros_like(c), torch.zeros_like(U), torch.zeros_like(m)
    cfg = _config(d, P, x.dtype, _BACKWARD_SHARE)
    b = _bumps(c, U, m, r2, half, cull)
    pts = _points(x, cfg.BN, cull)
    gys = gy[pts.perm].contiguous() if cull else gy.contiguous()
    dummy = pts.x
    lo = pts.lo if cull else dummy
    hi = pts.hi if cull else dummy
    ht = b.ht if cull else dummy
    consts = dict(D=d, DP=cfg.DP, BN=cfg.BN, BK=cfg.BK, BP=cfg.BP, CULL=cull)
    gx = None
    n_kblocks = triton.cdiv(K, cfg.BK)
    n_chunks, per_chunk = _chunks(pts.n_tiles, n_kblocks)
    acc = dict(dtype=torch.float64, device=x.device)
    tz_parts = torch.zeros((n_chunks, K, d), **acc)
    gu_parts = torch.zeros((n_chunks, K, d, d), **acc)
    gm_parts = torch.zeros((n_chunks, K, P), **acc)
    with _on_device(x):
        if need_x:
            gx = x.new_empty((n, d))
            _oriented_grad_x_kernel[(pts.n_tiles,)](
                pts.x, gys, pts.perm if cull else dummy, lo, hi, b.ct, b.ut, b.r2, ht, b.m, gx, n, K, P, **consts
            )
        _oriented_grad_params_kernel[(n_kblocks, n_chunks)](
            pts.x, gys, lo, hi, b.ct, b.ut, b.r2, ht, b.m, tz_parts, gu_parts, gm_parts,
            n, K, P, pts.n_tiles, per_chunk, ONE_CHUNK=P <= cfg.BP, **consts,
        )  # fmt: skip
    # Fixed-order sums over the chunks, then back to the caller's bump order.
    tz, gu, gm = tz_parts.sum(dim=0), gu_parts.sum(dim=0), gm_parts.sum(dim=0)
    if b.perm is not None:
        inv = _inverse_perm(b.perm)
        tz, gu, gm = tz[inv], gu[inv], gm[inv]
    gc = torch.einsum("ajk,ka->jk", U.to(torch.float64), tz)  # sum over pairs of U_k^T t z
    gU = -gu.permute(2, 1, 0)  # [k, j, a] -> [a, j, k]
    return gx, gc.to(c.dtype).contiguous(), gU.to(U.dtype).contiguous(), gm.to(m.dtype).contiguous()
