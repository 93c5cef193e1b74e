"""The accumulation rule's pieces (see the package docstring): float32 lane sums that go on in
float64 for sums over points, and the float64 flushes of per-point sums over bumps."""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

# ---------------------------------------------------------------- accumulation helpers
# The pieces of the accumulation rule (module docstring), for every kernel file of the
# engine: sum64/dot64/sum64x2/dot64_axpy for sums over points, flush64 (with FLUSH_EVERY)
# for per-point sums over bumps, fma. The array arguments are 1-D C-contiguous float32 or
# float64 arrays (a slice a[i0:i1] of one is) and n <= their length; none allocates.
# Usage, a bump k on nb points with values e and per-point terms t (see _grad_tail):
#     pcw[j, k] += sum64(t[:nb], nb)                 # a parameter's gradient
#     acc[i] += t[i]  (i < nb), then every FLUSH_EVERY bumps flush64(acc64, acc, 0, nb)
# dot64x4_axpy does four dot64_axpy at once (P outputs, see _multi_tm).

_LANES = 16  # lanes of the sums over points: lane l takes the terms i = l (mod 16)
_VEC = 8  # lanes per LLVM vector (two vectors make the 16 lanes)
_LANE_BLOCK = 256  # float32 lanes take at most this many terms (16 each) before going to float64


def _lane_sums_codegen(context, builder, sig, args, jobs, axpy=None):
    """LLVM IR of the lane sums: for each job (argument indices; one array: its sum; two:
    the sum of their products), 16 lanes in explicit <8 x T> vectors, no fast-math flags,
    so every target computes the same operations in the same order. ``axpy`` (w, [(u, a),
    ...]) also sets w[i] = fma(u[i], a, w[i]) for each (u, a) in turn, in the same pass
    (a: a scalar argument).

    Order (float32 terms): the full groups of 16 terms go, 256 terms at a time, into 16
    float32 lanes (a product is added with one fma), which are then added to 16 float64
    lanes and restarted; a last partial group, padded with zeros, goes straight to the
    float64 lanes (exact float64 products); the float64 lanes end in a fixed tree (l + 8,
    then halves: ((0+8)+(4+12)) + ((2+10)+(6+14)) + ...). float64 terms go straight to
    the float64 lanes. The result is float64."""
    arrays = {
        i: context.make_array(t)(context, builder, value=v)
        for i, (t, v) in enumerate(zip(sig.args[:-1], args[:-1]))
        if isinstance(t, types.Array)
    }
    dtypes = sig.args
    n = context.cast(builder, args[-1], sig.args[-1], types.int64)
    i64 = n.type
    f64 = ir.DoubleType()
    v64 = ir.VectorType(f64, _VEC)
    native = context.get_data_type(dtypes[jobs[0][0]].dtype)
    wide = dtypes[jobs[0][0]].dtype == types.float64
    vnat = ir.VectorType(native, _VEC)

    def fma_fn(ty):
        name = {v64: "llvm.fma.v8f64", f64: "llvm.fma.f64", vnat: "llvm.fma.v8f32"}.get(ty, "llvm.fma.f32")
        return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ty, [ty] * 3), name)

    def do_axpy(idx, width):
        if axpy is None:
            return
        w, terms = axpy
        ptr = builder.gep(arrays[w].data, [idx])
        if width > 1:
            ptr = builder.bitcast(ptr, vnat.as_pointer())
        cur = builder.load(ptr, align=dtypes[w].dtype.bitwidth // 8)
        for u, a in terms:
            scalar = context.cast(builder, args[a], sig.args[a], dtypes[w].dtype)
            if width > 1:
                scalar = builder.shuffle_vector(
                    builder.insert_element(ir.Constant(vnat, ir.Undefined), scalar, ir.Constant(ir.IntType(32), 0)),
                    ir.Constant(vnat, ir.Undefined),
                    ir.Constant(ir.VectorType(ir.IntType(32), _VEC), [0] * _VEC),
                )
            cur = builder.call(fma_fn(cur.type), [load(u, idx, width, False), scalar, cur])
        builder.store(cur, ptr, align=dtypes[w].dtype.bitwidth // 8)

    def load(k, idx, width, to64, mask=None):
        ptr = builder.gep(arrays[k].data, [idx])
        align = dtypes[k].dtype.bitwidth // 8
        if width > 1:
            ptr = builder.bitcast(ptr, vnat.as_pointer())
        if mask is None:
            v = builder.load(ptr, align=align)
        else:  # lanes past the end read nothing and are 0
            vi1 = ir.VectorType(ir.IntType(1), _VEC)
            sfx = "v8f64" if wide else "v8f32"
            fn = cgutils.get_or_insert_function(
                builder.module,
                ir.FunctionType(vnat, [ptr.type, ir.IntType(32), vi1, vnat]),
                f"llvm.masked.load.{sfx}.p0",
            )
            v = builder.call(fn, [ptr, ir.Constant(ir.IntType(32), align), mask, ir.Constant(vnat, [0.0] * _VEC)])
        if to64 and not wide:
            v = builder.fpext(v, v64 if width > 1 else f64)
        return v

    def add_term(acc, job, idx, width, to64, mask=None):
        vals = [load(k, idx, width, to64, mask) for k in job]
        cur = builder.load(acc)
        if len(vals) == 1:
            builder.store(builder.fadd(cur, vals[0]), acc)
        else:
            builder.store(builder.call(fma_fn(cur.type), [vals[0], vals[1], cur]), acc)

    halves = _LANES // _VEC
    acc64 = [[cgutils.alloca_once_value(builder, ir.Constant(v64, [0.0] * _VEC)) for _ in range(halves)] for _ in jobs]
    accn = [[cgutils.alloca_once(builder, vnat) if not wide else None for _ in range(halves)] for _ in jobs]
    ngroups = builder.udiv(n, ir.Constant(i64, _LANES))
    per_block = _LANE_BLOCK // _LANES
    nblocks = builder.udiv(builder.add(ngroups, ir.Constant(i64, per_block - 1)), ir.Constant(i64, per_block))
    with cgutils.for_range(builder, nblocks) as blk:
        g0 = builder.mul(blk.index, ir.Constant(i64, per_block))
        g1 = builder.select(
            builder.icmp_signed("<", builder.add(g0, ir.Constant(i64, per_block)), ngroups),
            builder.add(g0, ir.Constant(i64, per_block)),
            ngroups,
        )
        if not wide:
            for accs in accn:
                for acc in accs:
                    builder.store(ir.Constant(vnat, [0.0] * _VEC), acc)
        with cgutils.for_range_slice(builder, g0, g1, ir.Constant(i64, 1)) as (grp, _):
            base = builder.mul(grp, ir.Constant(i64, _LANES))
            for h in range(halves):
                idx = builder.add(base, ir.Constant(i64, h * _VEC))
                for job, a64, an in zip(jobs, acc64, accn):
                    add_term(a64[h] if wide else an[h], job, idx, _VEC, wide)
                do_axpy(idx, _VEC)
        if not wide:
            for a64, an in zip(acc64, accn):
                for h in range(halves):
                    builder.store(builder.fadd(builder.load(a64[h]), builder.fpext(builder.load(an[h]), v64)), a64[h])
    start = builder.mul(ngroups, ir.Constant(i64, _LANES))
    rem = builder.sub(n, start)
    lane_ids = ir.Constant(ir.VectorType(i64, _VEC), list(range(_VEC)))
    with builder.if_then(builder.icmp_signed(">", rem, ir.Constant(i64, 0))):
        for h in range(halves):
            left = builder.sub(rem, ir.Constant(i64, h * _VEC))
            splat = builder.shuffle_vector(
                builder.insert_element(
                    ir.Constant(ir.VectorType(i64, _VEC), ir.Undefined), left, ir.Constant(ir.IntType(32), 0)
                ),
                ir.Constant(ir.VectorType(i64, _VEC), ir.Undefined),
                ir.Constant(ir.VectorType(ir.IntType(32), _VEC), [0] * _VEC),
            )
            mask = builder.icmp_signed("<", lane_ids, splat)
            idx = builder.add(start, ir.Constant(i64, h * _VEC))
            for job, a64 in zip(jobs, acc64):
                add_term(a64[h], job, idx, _VEC, True, mask)
    results = []
    for a64 in acc64:
        v = builder.load(a64[0])
        for acc in a64[1:]:
            v = builder.fadd(v, builder.load(acc))
        width = _VEC
        while width > 1:
            width //= 2
            mask = ir.VectorType(ir.IntType(32), width)
            lo = builder.shuffle_vector(v, v, ir.Constant(mask, list(range(width))))
            hi = builder.shuffle_vector(v, v, ir.Constant(mask, list(range(width, 2 * width))))
            v = builder.fadd(lo, hi)
        results.append(builder.extract_element(v, ir.Constant(ir.IntType(32), 0)))
    if axpy is not None:
        with cgutils.for_range_slice(builder, start, n, ir.Constant(i64, 1)) as (idx, _):
            do_axpy(idx, 1)
    if len(results) == 1:
        return results[0]
    return context.make_tuple(builder, sig.return_type, results)


def _lane_array(a) -> bool:
    return isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C" and a.dtype in (types.float32, types.float64)


@intrinsic
def sum64(typingctx, v, n):
    """sum64(v, n) -> float64: the sum of v[i] for i < n, in the fixed order of the
    accumulation rule (see :func:`_lane_sums_codegen`)."""
    if not (_lane_array(v) and isinstance(n, types.Integer)):
        return None
    return types.float64(v, n), lambda c, b, sig, args: _lane_sums_codegen(c, b, sig, args, [(0,)])


@intrinsic
def dot64(typingctx, u, v, n):
    """dot64(u, v, n) -> float64: the sum of u[i] * v[i] for i < n (u, v of one dtype), in
    sum64's order; each float32 product is added to its lane with one fma."""
    if not (_lane_array(u) and _lane_array(v) and u.dtype == v.dtype and isinstance(n, types.Integer)):
        return None
    return types.float64(u, v, n), lambda c, b, sig, args: _lane_sums_codegen(c, b, sig, args, [(0, 1)])


@intrinsic
def sum64x2(typingctx, u, v, n):
    """sum64x2(u, v, n) -> (sum64(u, n), sum64(v, n)) in one pass (u, v of one dtype)."""
    if not (_lane_array(u) and _lane_array(v) and u.dtype == v.dtype and isinstance(n, types.Integer)):
        return None
    sig = types.UniTuple(types.float64, 2)(u, v, n)
    return sig, lambda c, b, sig, args: _lane_sums_codegen(c, b, sig, args, [(0,), (1,)])


@intrinsic
def dot64_axpy(typingctx, u, v, w, a, n):
    """dot64_axpy(u, v, w, a, n) -> dot64(u, v, n), also setting w[i] = fma(u[i], a, w[i])
    for i < n in the same pass (u, v, w of one dtype, a a scalar of it): one output's
    upstream gradient u against a bump's values v, while w gathers sum_p u_p m_p."""
    ok = all(_lane_array(t) and t.dtype == u.dtype for t in (u, v, w))
    if not (ok and a == u.dtype and isinstance(n, types.Integer)):
        return None
    return types.float64(u, v, w, a, n), lambda c, b, sig, args: _lane_sums_codegen(
        c, b, sig, args, [(0, 1)], (2, [(0, 3)])
    )


@intrinsic
def dot64x4_axpy(typingctx, u0, u1, u2, u3, v, w, a0, a1, a2, a3, n):
    """Four dot64_axpy in one pass: returns (dot64(u0, v, n), ..., dot64(u3, v, n)) and sets
    w[i] = fma(u3[i], a3, fma(u2[i], a2, fma(u1[i], a1, fma(u0[i], a0, w[i])))): the same
    bits as four dot64_axpy calls in order, with one read of v and one read and write of w
    for four outputs."""
    arrays = (u0, u1, u2, u3, v, w)
    ok = all(_lane_array(t) and t.dtype == u0.dtype for t in arrays)
    if not (ok and all(a == u0.dtype for a in (a0, a1, a2, a3)) and isinstance(n, types.Integer)):
        return None
    sig = types.UniTuple(types.float64, 4)(u0, u1, u2, u3, v, w, a0, a1, a2, a3, n)
    jobs = [(0, 4), (1, 4), (2, 4), (3, 4)]
    return sig, lambda c, b, sig, args: _lane_sums_codegen(c, b, sig, args, jobs, (5, [(0, 6), (1, 7), (2, 8), (3, 9)]))


FLUSH_EVERY = 32
"""Bumps (or registrations) a float32 per-point accumulator takes before :func:`flush64`."""
_COUNT_POINTS = 4  # accumulator rows from which culled rows count terms per point (see _row_flush)


@njit(cache=True)
def flush64(acc64, acc, lo, hi):
    """acc64[lo:hi] += float64(acc[lo:hi]); acc[lo:hi] = 0. The per-point half of the
    accumulation rule: acc (the inputs' dtype) sums at most FLUSH_EVERY terms per point
    between flushes into the float64 acc64."""
    zero = acc.dtype.type(0.0)
    a64 = acc64[lo:hi]
    a = acc[lo:hi]
    for i in range(hi - lo):
        a64[i] += np.float64(a[i])
        a[i] = zero


@njit(cache=True)
def _flush_rows(acc64, acc, lo, hi):
    """:func:`flush64` on every row of 2-D (rows, n) accumulators."""
    for r in range(acc.shape[0]):
        flush64(acc64[r], acc[r], lo, hi)
