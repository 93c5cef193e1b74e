"""Triton engine: fused GPU kernels for CUDA tensors, float32 and float64.

Kernels (no (n x K) or (n x d x K) intermediate anywhere):

``_forward_kernel``
    grid (point tiles,). A program owns BN points and loops over the bumps in
    blocks of BK; each (point, bump) pair's support test and exp are computed
    once, then multiplied into every output in chunks of BP outputs. When all P
    outputs fit one chunk the (BN, P) sums stay in registers; otherwise the
    program adds each chunk into its own rows of a float64 copy of y
    (read-modify-write of rows no other program touches).
``_grad_x_kernel``
    grid (point tiles,), like the forward: gx of its BN points, summed over all
    bump blocks in registers.
``_grad_params_kernel``
    grid (bump blocks, point chunks). A program owns BK bumps and one fixed
    chunk of consecutive point tiles, and writes its partial sums of gc, gw, gm
    (accumulated in float64) to its own slot of a (chunks, K, .) buffer; the
    chunks are then summed by torch in a fixed order. No atomics: results are
    deterministic, and the chunking is a function of the shapes only (not of
    the GPU model).

Oriented (full-covariance) bumps: ``oriented_forward`` and ``oriented_backward``
run the same three kernels' oriented twins, in ``_triton_oriented`` (which uses this
module's configuration, Morton order, tile boxes and culling test).
Accuracy: each block of BK bumps (forward, grad x) or tile of BN points (parameter
gradients) is summed in the inputs' dtype, and the block sums are added in float64,
so no float32 sum runs over more than one block (the numba kernels' rule).

Culling (``cull=True``, finite support boxes). Points are put in Morton
(Z-curve) order over their first min(d, 3) coordinates, so a tile of BN
consecutive points is spatially compact, and so are the bumps (so a block of BK
bumps is too). For each point tile the bounding box of its points is computed
once; a (point tile, bump block) pair is skipped when, for every bump in the
block, some dimension j has ``dist_j >= half[j, k]``, where ``dist_j`` is the
float distance from c[j, k] to the tile's interval in dimension j (0 inside
it). Because float subtraction is monotone, ``abs(x - c)`` for any point of the
tile is then at least ``dist_j``, so the skip never drops a pair the exact test
``abs(x - c) < half`` would keep. Tiles that are not skipped run that exact test
per pair. Outputs and gx are written straight back to the callers' row order.

Pair rule, as in the contract: a pair counts iff ``abs(x - c) < half`` in every
dimension (in x's dtype) and its exp did not underflow; 1/w is 0 where w == 0
(``_torch_engine.inverse_widths``), and pairs that do not count have e and z set
to exactly 0 before any product, so they contribute 0 (never 0 * inf). Triton may
fuse multiply-adds (z*z sums) and its float32 exp is the fast hardware one, so
values agree with the torch engine to rounding, not bit for bit; pairs whose
exp lies at the float underflow edge may count on one engine and not the other
(their contribution is below the smallest normal float either way).

Dtypes: float32 and float64 (Triton lowers the float64 exp to libdevice). Block
sizes are fixed per (d, P, dtype) and were chosen for register budget, not
tuned on a GPU (none was available when this was written).

Interpreter. When ``TRITON_INTERPRET=1`` is set before this module is imported,
Triton runs the kernels on the CPU in Python (numpy), and this engine then also
accepts CPU tensors (``DEVICES``); that is how the tests check it without a
GPU. It is slow: a correctness tool only. ``"auto"`` never picks it on the CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from wandering._engine._torch_engine import inverse_widths


def _interpreting() -> bool:
    knobs = getattr(triton, "knobs", None)  # triton >= 3.4 parses its own settings there
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


INTERPRET = _interpreting()
DEVICES = ("cuda", "cpu") if INTERPRET else ("cuda",)
"""Device types this engine runs on: CUDA, plus the CPU under Triton's interpreter."""
AUTO_DEVICES = ("cuda",)
"""Device types where ``"auto"`` may pick it (never the CPU interpreter)."""

# Largest (BN, BK, width) temporary a program holds, in elements.
_TILE_BUDGET = {torch.float32: 8192, torch.float64: 4096}
_MAX_BP = 16  # outputs per inner chunk
_TARGET_PROGRAMS = 1024  # bump blocks x point chunks for the parameter gradients

tile_counts: list | None = None
"""Tests set a list here: each forward then appends (evaluated tiles, all tiles) of its
(point tile, bump block) pairs, so culling can be seen to skip. None in normal use."""


@dataclass(frozen=True)
class _Config:
    DP: int  # d rounded up to a power of 2
    BN: int  # points per tile
    BK: int  # bumps per block
    BP: int  # outputs per chunk


def _config(d: int, P: int, dtype: torch.dtype, share: int = 1) -> _Config:
    """Block sizes whose (BN, BK, width) temporaries fit ``_TILE_BUDGET[dtype] // share`` elements
    (kernels that hold more temporaries per pair ask for a smaller share)."""
    DP = triton.next_power_of_2(d)
    BP = min(triton.next_power_of_2(P), _MAX_BP)
    width = max(DP, BP)
    BN, BK = 64, 32
    budget = _TILE_BUDGET[dtype] // share
    while BN * BK * width > budget and BN > 16:
        BN //= 2
    while BN * BK * width > budget and BK > 16:
        BK //= 2
    return _Config(DP, BN, BK, BP)


# ----------------------------------------------------------------------------- kernels


@triton.jit
def _load_block(ptr, rows, rmask, cols, cmask, stride):
    """ptr[rows, cols] of a row-major matrix with ``stride`` columns; 0 where masked."""
    offs = rows.to(tl.int64)[:, None] * stride + cols[None, :]
    return tl.load(ptr + offs, mask=rmask[:, None] & cmask[None, :], other=0.0)


@triton.jit
def _load_bumps(ct_ptr, iwt_ptr, ht_ptr, ks, kmask, cols, jmask, D: tl.constexpr):
    """Centres, inverse widths and half-widths of a bump block, each (BK, DP); padding is 0."""
    offs = ks.to(tl.int64)[:, None] * D + cols[None, :]
    msk = kmask[:, None] & jmask[None, :]
    cb = tl.load(ct_ptr + offs, mask=msk, other=0.0)
    iwb = tl.load(iwt_ptr + offs, mask=msk, other=0.0)
    hb = tl.load(ht_ptr + offs, mask=msk, other=0.0)
    return cb, iwb, hb


@triton.jit
def _tile_hits(plo, phi, cb, hb, kmask, jmask):
    """False only if no bump of the block can count at any point of the tile's box [plo, phi]."""
    lo = plo[None, :]
    hi = phi[None, :]
    dist = tl.where(cb < lo, lo - cb, tl.where(cb > hi, cb - hi, 0.0))
    miss = (dist >= hb) & jmask[None, :]
    hit_k = (tl.max(miss.to(tl.int32), axis=1) == 0) & kmask
    return tl.max(hit_k.to(tl.int32), axis=0) > 0


@triton.jit
def _pair_terms(xt, rmask, cb, iwb, hb, kmask, jmask):
    """z (BN, BK, DP) and e (BN, BK), both exactly 0 on pairs that do not count."""
    diff = xt[:, None, :] - cb[None, :, :]
    out = (tl.abs(diff) >= hb[None, :, :]) & jmask[None, None, :]
    live = (tl.max(out.to(tl.int32), axis=2) == 0) & rmask[:, None] & kmask[None, :]
    z = diff * iwb[None, :, :]
    e = tl.exp(-tl.sum(z * z, axis=2))
    live = live & (e > 0)
    e = tl.where(live, e, 0.0)
    z = tl.where(live[:, :, None], z, 0.0)
    return z, e


@triton.jit
def _forward_kernel(
    x_ptr, idx_ptr, plo_ptr, phi_ptr, ct_ptr, iwt_ptr, ht_ptr, m_ptr, y_ptr, n, K, P, count_ptr,
    D: tl.constexpr, DP: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BP: tl.constexpr,
    ONE_CHUNK: tl.constexpr, CULL: tl.constexpr, COUNT: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    rows = pid * BN + tl.arange(0, BN)
    rmask = rows < n
    cols = tl.arange(0, DP)
    jmask = cols < D
    xt = _load_block(x_ptr, rows, rmask, cols, jmask, D)
    if CULL:  # x is in tile order; idx maps back to the caller's rows
        out_rows = tl.load(idx_ptr + rows, mask=rmask, other=0).to(tl.int64)
        plo = tl.load(plo_ptr + pid * D + cols, mask=jmask, other=0.0)
        phi = tl.load(phi_ptr + pid * D + cols, mask=jmask, other=0.0)
    else:
        out_rows = rows.to(tl.int64)
    ps = tl.arange(0, BP)
    acc = tl.zeros([BN, BP], dtype=tl.float64)
    for k0 in range(0, K, BK):
        ks = k0 + tl.arange(0, BK)
        kmask = ks < K
        cb, iwb, hb = _load_bumps(ct_ptr, iwt_ptr, ht_ptr, ks, kmask, cols, jmask, D)
        hit = True
        if CULL:
            hit = _tile_hits(plo, phi, cb, hb, kmask, jmask)
        if hit:
            if COUNT:  # tests: how many (tile, bump block) pairs were evaluated
                tl.atomic_add(count_ptr, 1)
            _z, e = _pair_terms(xt, rmask, cb, iwb, hb, kmask, jmask)
            if ONE_CHUNK:
                mb = _load_block(m_ptr, ks, kmask, ps, ps < P, P)
                acc += tl.sum(e[:, :, None] * mb[None, :, :], axis=1).to(tl.float64)
            else:
                for p0 in range(0, P, BP):
                    pc = p0 + ps
                    pmask = pc < P
                    mb = _load_block(m_ptr, ks, kmask, pc, pmask, P)
                    yo = y_ptr + out_rows[:, None] * P + pc[None, :]
                    ym = rmask[:, None] & pmask[None, :]
                    yt = tl.load(yo, mask=ym, other=0.0)  # y is float64 here
                    tl.store(yo, yt + tl.sum(e[:, :, None] * mb[None, :, :], axis=1).to(tl.float64), mask=ym)
                    tl.debug_barrier()  # the next read of these rows may come from another thread
    if ONE_CHUNK:
        yv = acc.to(y_ptr.dtype.element_ty)
        tl.store(y_ptr + out_rows[:, None] * P + ps[None, :], yv, mask=rmask[:, None] & (ps < P)[None, :])


@triton.jit
def _grad_x_kernel(
    x_ptr, gy_ptr, idx_ptr, plo_ptr, phi_ptr, ct_ptr, iwt_ptr, ht_ptr, m_ptr, gx_ptr, n, K, P,
    D: tl.constexpr, DP: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BP: tl.constexpr,
    CULL: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    rows = pid * BN + tl.arange(0, BN)
    rmask = rows < n
    cols = tl.arange(0, DP)
    jmask = cols < D
    xt = _load_block(x_ptr, rows, rmask, cols, jmask, D)
    if CULL:
        out_rows = tl.load(idx_ptr + rows, mask=rmask, other=0).to(tl.int64)
        plo = tl.load(plo_ptr + pid * D + cols, mask=jmask, other=0.0)
        phi = tl.load(phi_ptr + pid * D + cols, mask=jmask, other=0.0)
    else:
        out_rows = rows.to(tl.int64)
    ps = tl.arange(0, BP)
    gacc = tl.zeros([BN, DP], dtype=tl.float64)
    for k0 in range(0, K, BK):
        ks = k0 + tl.arange(0, BK)
        kmask = ks < K
        cb, iwb, hb = _load_bumps(ct_ptr, iwt_ptr, ht_ptr, ks, kmask, cols, jmask, D)
        hit = True
        if CULL:
            hit = _tile_hits(plo, phi, cb, hb, kmask, jmask)
        if hit:
            z, e = _pair_terms(xt, rmask, cb, iwb, hb, kmask, jmask)
            s = tl.zeros([BN, BK], dtype=xt.dtype)  # gy[i] . m[k]
            for p0 in range(0, P, BP):
                pc = p0 + ps
                pmask = pc < P
                gyt = _load_block(gy_ptr, rows, rmask, pc, pmask, P)
                mb = _load_block(m_ptr, ks, kmask, pc, pmask, P)
                s += tl.sum(gyt[:, None, :] * mb[None, :, :], axis=2)
            t = 2.0 * e * s
            gacc += tl.sum(t[:, :, None] * z * iwb[None, :, :], axis=1).to(tl.float64)
    gv = (-gacc).to(gx_ptr.dtype.element_ty)
    tl.store(gx_ptr + out_rows[:, None] * D + cols[None, :], gv, mask=rmask[:, None] & jmask[None, :])


@triton.jit
def _grad_params_kernel(
    x_ptr, gy_ptr, plo_ptr, phi_ptr, ct_ptr, iwt_ptr, ht_ptr, m_ptr, gc_ptr, gw_ptr, gm_ptr,
    n, K, P, n_tiles, tiles_per_chunk,
    D: tl.constexpr, DP: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BP: tl.constexpr,
    ONE_CHUNK: tl.constexpr, CULL: tl.constexpr,
):  # fmt: skip
    kb = tl.program_id(0)
    ch = tl.program_id(1)
    ks = kb * BK + tl.arange(0, BK)
    kmask = ks < K
    cols = tl.arange(0, DP)
    jmask = cols < D
    ps = tl.arange(0, BP)
    cb, iwb, hb = _load_bumps(ct_ptr, iwt_ptr, ht_ptr, ks, kmask, cols, jmask, D)
    slot = ch.to(tl.int64) * K + ks.to(tl.int64)  # this program's rows of the (chunks, K, .) partials
    accc = tl.zeros([BK, DP], dtype=tl.float64)
    accw = tl.zeros([BK, DP], dtype=tl.float64)
    accm = tl.zeros([BK, BP], dtype=tl.float64)
    t0 = ch * tiles_per_chunk
    t1 = tl.minimum(t0 + tiles_per_chunk, n_tiles)
    for t in range(t0, t1):
        hit = True
        if CULL:
            plo = tl.load(plo_ptr + t * D + cols, mask=jmask, other=0.0)
            phi = tl.load(phi_ptr + t * D + cols, mask=jmask, other=0.0)
            hit = _tile_hits(plo, phi, cb, hb, kmask, jmask)
        if hit:
            rows = t * BN + tl.arange(0, BN)
            rmask = rows < n
            xt = _load_block(x_ptr, rows, rmask, cols, jmask, D)
            z, e = _pair_terms(xt, rmask, cb, iwb, hb, kmask, jmask)
            s = tl.zeros([BN, BK], dtype=xt.dtype)
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
            a = (2.0 * e * s)[:, :, None] * z * iwb[None, :, :]
            accc += tl.sum(a, axis=0).to(tl.float64)
            accw += tl.sum(a * z, axis=0).to(tl.float64)
    dmask = kmask[:, None] & jmask[None, :]
    tl.store(gc_ptr + slot[:, None] * D + cols[None, :], accc, mask=dmask)
    tl.store(gw_ptr + slot[:, None] * D + cols[None, :], accw, mask=dmask)
    if ONE_CHUNK:
        tl.store(gm_ptr + slot[:, None] * P + ps[None, :], accm, mask=kmask[:, None] & (ps < P)[None, :])


# ----------------------------------------------------------------------------- host side


def _check_device(x: torch.Tensor) -> None:
    if x.device.type not in DEVICES:
        hint = "" if INTERPRET else " (set TRITON_INTERPRET=1 before importing wandering to run it on the CPU)"
        raise ValueError(f"the triton engine runs on {'/'.join(DEVICES)} tensors, but got {x.device}{hint}")


def _spread_bits(v: torch.Tensor, gd: int) -> torch.Tensor:
    """Moves bit b of v (int64, < 2**(30 // gd)) to bit b * gd."""
    if gd == 1:
        return v
    if gd == 2:  # 15 bits -> even positions
        v = (v | (v << 8)) & 0x00FF00FF
        v = (v | (v << 4)) & 0x0F0F0F0F
        v = (v | (v << 2)) & 0x33333333
        return (v | (v << 1)) & 0x55555555
    # gd == 3: 10 bits -> every third position
    v = (v | (v << 16)) & 0x030000FF
    v = (v | (v << 8)) & 0x0300F00F
    v = (v | (v << 4)) & 0x030C30C3
    return (v | (v << 2)) & 0x09249249


def morton_order(p: torch.Tensor) -> torch.Tensor:
    """Permutation (int64) that puts the rows of p (n, d) in Z-curve order of their first min(d, 3) coordinates.

    Deterministic (stable sort of integer keys), so forward and backward agree."""
    n, d = p.shape
    gd = min(d, 3)
    bits = 30 // gd
    q = p[:, :gd]
    lo = q.amin(dim=0)
    ext = q.amax(dim=0) - lo
    top = (1 << bits) - 1
    scale = torch.where(ext > 0, top / torch.where(ext > 0, ext, torch.ones_like(ext)), torch.zeros_like(ext))
    cells = ((q - lo) * scale).floor().clamp_(0, top).to(torch.int64)
    code = torch.zeros(n, dtype=torch.int64, device=p.device)
    for j in range(gd):
        code |= _spread_bits(cells[:, j], gd) << j
    return torch.argsort(code, stable=True)


def _inverse_perm(perm: torch.Tensor) -> torch.Tensor:
    return torch.argsort(perm)


@dataclass
class _Bumps:
    ct: torch.Tensor  # (K, d) centres, in block order
    iwt: torch.Tensor  # (K, d) 1/w, 0 where w == 0
    ht: torch.Tensor  # (K, d) support half-widths
    m: torch.Tensor  # (K, P)
    perm: torch.Tensor | None  # block order -> caller's bump index (culled sums only)


@dataclass
class _Points:
    x: torch.Tensor  # (n, d) in tile order
    perm: torch.Tensor | None  # tile order -> caller's row (culled sums only)
    lo: torch.Tensor | None  # (n_tiles, d) per-tile bounding boxes (culled sums only)
    hi: torch.Tensor | None
    n_tiles: int


def _bumps(c, w, m, half, cull: bool) -> _Bumps:
    ct, iwt, ht = c.T, inverse_widths(w).T, half.T
    perm = None
    if cull and c.shape[1] > 1:
        perm = morton_order(ct)
        ct, iwt, ht, m = ct[perm], iwt[perm], ht[perm], m[perm]
    return _Bumps(ct.contiguous(), iwt.contiguous(), ht.contiguous(), m.contiguous(), perm)


def _points(x, BN: int, cull: bool) -> _Points:
    n, d = x.shape
    n_tiles = triton.cdiv(n, BN)
    if not cull:
        return _Points(x.contiguous(), None, None, None, n_tiles)
    perm = morton_order(x)
    xs = x[perm].contiguous()
    pad = n_tiles * BN - n
    xp = torch.cat([xs, xs[-1:].expand(pad, d)]) if pad else xs  # repeat a real point: boxes stay tight
    tiles = xp.view(n_tiles, BN, d)
    return _Points(xs, perm, tiles.amin(dim=1).contiguous(), tiles.amax(dim=1).contiguous(), n_tiles)


def _on_device(x: torch.Tensor):
    if x.is_cuda:
        return torch.cuda.device(x.device)
    import contextlib

    return contextlib.nullcontext()


def forward(x, c, w, m, half, cull):
    _check_device(x)
    n, d = x.shape
    K, P = m.shape
    if n == 0 or K == 0 or P == 0:
        return x.new_zeros((n, P))
    cfg = _config(d, P, x.dtype)
    one_chunk = P <= cfg.BP
    # zeros: with several output chunks, programs add into y, in float64
    y = x.new_zeros((n, P), dtype=x.dtype if one_chunk else torch.float64)
    b = _bumps(c, w, m, half, cull)
    pts = _points(x, cfg.BN, cull)
    dummy = pts.x
    counts = tile_counts
    count = torch.zeros(1, dtype=torch.int32, device=x.device) if counts is not None else dummy
    with _on_device(x):
        _forward_kernel[(pts.n_tiles,)](
            pts.x, pts.perm if cull else dummy, pts.lo if cull else dummy, pts.hi if cull else dummy,
            b.ct, b.iwt, b.ht, b.m, y, n, K, P, count,
            D=d, DP=cfg.DP, BN=cfg.BN, BK=cfg.BK, BP=cfg.BP, ONE_CHUNK=one_chunk, CULL=cull,
            COUNT=counts is not None,
        )  # fmt: skip
    if counts is not None:
        counts.append((int(count[0]), pts.n_tiles * triton.cdiv(K, cfg.BK)))
    return y if one_chunk else y.to(x.dtype)


def _chunks(n_tiles: int, n_kblocks: int) -> tuple[int, int]:
    """(chunks, tiles per chunk) for the parameter gradients: a function of the shapes only."""
    want = max(1, min(n_tiles, triton.cdiv(_TARGET_PROGRAMS, n_kblocks)))
    per = triton.cdiv(n_tiles, want)
    return triton.cdiv(n_tiles, per), per


def backward(gy, x, c, w, m, half, cull, need_x):
    _check_device(x)
    n, d = x.shape
    K, P = m.shape
    gy = gy.to(x.dtype)
    if n == 0 or K == 0 or P == 0:
        gx = x.new_zeros((n, d)) if need_x else None
        return gx, torch.zeros_like(c), torch.zeros_like(w), torch.zeros_like(m)
    cfg = _config(d, P, x.dtype)
    b = _bumps(c, w, m, half, cull)
    pts = _points(x, cfg.BN, cull)
    gys = gy[pts.perm].contiguous() if cull else gy.contiguous()
    dummy = pts.x
    lo = pts.lo if cull else dummy
    hi = pts.hi if cull else dummy
    consts = dict(D=d, DP=cfg.DP, BN=cfg.BN, BK=cfg.BK, BP=cfg.BP, CULL=cull)
    gx = None
    n_kblocks = triton.cdiv(K, cfg.BK)
    n_chunks, per_chunk = _chunks(pts.n_tiles, n_kblocks)
    acc = dict(dtype=torch.float64, device=x.device)
    gc_parts = torch.zeros((n_chunks, K, d), **acc)
    gw_parts = torch.zeros((n_chunks, K, d), **acc)
    gm_parts = torch.zeros((n_chunks, K, P), **acc)
    with _on_device(x):
        if need_x:
            gx = x.new_empty((n, d))
            _grad_x_kernel[(pts.n_tiles,)](
                pts.x, gys, pts.perm if cull else dummy, lo, hi, b.ct, b.iwt, b.ht, b.m, gx, n, K, P, **consts
            )
        _grad_params_kernel[(n_kblocks, n_chunks)](
            pts.x, gys, lo, hi, b.ct, b.iwt, b.ht, b.m, gc_parts, gw_parts, gm_parts,
            n, K, P, pts.n_tiles, per_chunk, ONE_CHUNK=P <= cfg.BP, **consts,
        )  # fmt: skip
    # Fixed-order sums over the chunks, then back to the caller's bump order.
    gct, gwt, gm = gc_parts.sum(dim=0), gw_parts.sum(dim=0), gm_parts.sum(dim=0)
    if b.perm is not None:
        inv = _inverse_perm(b.perm)
        gct, gwt, gm = gct[inv], gwt[inv], gm[inv]
    return gx, gct.T.to(c.dtype).contiguous(), gwt.T.to(w.dtype).contiguous(), gm.to(m.dtype).contiguous()


# ----------------------------------------------------------------------------- oriented bumps
# Their kernels live in ``_triton_oriented`` (which shares this module's helpers); imported on
# first use, so neither module imports the other at load time.


def oriented_forward(x, c, U, m, r2, half, cull):
    from wandering._engine._triton_oriented import forward as run

    return run(x, c, U, m, r2, half, cull)


def oriented_backward(gy, x, c, U, m, r2, half, cull, need_x):
    from wandering._engine._triton_oriented import backward as run

    return run(gy, x, c, U, m, r2, half, cull, need_x)
