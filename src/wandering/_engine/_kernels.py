"""Numba CPU kernels for bump sums with P outputs (forward and recomputing backward).

Layout: a block of points is copied to (d, nb) and parameters are (d, K), so every
inner loop runs over contiguous 1-D buffers starting at index 0 (LLVM only
vectorised those here). Each (point, bump) exp and support test is computed once
per block and then serves all P outputs. The exp is a branch-free scalar
polynomial (float32 and float64) that LLVM inlines and vectorises; fusing the
whole pair (distance, test, exp, sums) into one loop per bump was measured no
faster than these L1-resident passes. P == 1 has its own fused loops; P > 1 shares
the exp across (P, nb) accumulators, which move to and from the callers' (n, P) rows
by 8 x 8 vector transposes (:func:`transpose_into`), whole-cache-line rows by
streaming stores (:func:`scatter_rows`).

Accumulation rule (every kernel here, and any new one, keeps it). A float32 sum over
points or over bumps never runs long in float32; it goes on in float64 in blocks:

- a sum over bumps per point (y, grad x) adds its terms, in the inputs' dtype, into a
  per-point accumulator that :func:`flush64` adds into a float64 one after every
  FLUSH_EVERY (32) bumps (registrations, on the culled path); the float64 sum is
  rounded to the output dtype once;
- a sum over points per parameter (grad c, w, m) goes through :func:`sum64`,
  :func:`dot64`, :func:`sum64x2` or :func:`dot64_axpy`: 16 lanes, each adding at most
  16 float32 terms before they go into 16 float64 lanes, combined in a fixed tree; the
  result goes into a float64 partial.

So a float32 sum's rounding error stays within ~32 roundings of the sum of its terms'
magnitudes however many points or bumps it has (a plain float32 running sum: up to n
or K). float64 inputs run the same code in float64.

No kernel has fast-math flags: LLVM keeps every operation as written, vectorising only
elementwise loops; a fused multiply-add is an explicit :func:`fma`, and the lane sums
are explicit <8 x T> vector IR, the same on any vector width. So results are bitwise
the same for any thread count (below), right after a compile or loaded from Numba's
disk cache (where fast-math reassociation gave other bits), and on AVX2 and AVX-512
machines.

Determinism across threads: work is cut into a fixed number of partitions that depends
only on the problem (never on the thread count); each partition accumulates its parameter
gradients in a fixed order into its own float64 partial buffer, and the caller reduces
the partials in partition order. Points are owned by exactly one partition, so y
and grad x have no races either.

``half`` holds the support half-widths (+inf for the exact sum); the support
test ``abs(x - c) < half`` is the reference's float op. ``iw`` is 1/w clamped
to the largest finite float, so a tiny width gives a huge but finite z.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

_B = 256  # points per block: buffers stay in L1
_BUCKETS = 256  # first-pass buckets of the binning sort (write streams that stay cached)

# exp(-s) in float32: 2**n * p(r), r = -s - n*ln2, |r| <= ln2/2 (Cephes-style minimax).
_LOG2E = np.float32(1.4426950408889634)
_NEG_LN2_HI = np.float32(-0.693359375)  # few bits: n * it is exact
_NEG_LN2_LO = np.float32(2.12194440e-4)
_P0 = np.float32(1.9875691500e-4)
_P1 = np.float32(1.3981999507e-3)
_P2 = np.float32(8.3334519073e-3)
_P3 = np.float32(4.1665795894e-2)
_P4 = np.float32(1.6666665459e-1)
_P5 = np.float32(5.0000001201e-1)
_ONE32 = np.float32(1.0)
_HALF32 = np.float32(0.5)
_LIM32 = np.float32(87.0)  # below exp(-87) we return 0 (no denormals)
# exp(-s) in float64: the same scheme with fdlibm's split of ln2 and Taylor terms to r**13
# (|r| <= 0.347: truncation below 1e-17); n comes from the 1.5 * 2**52 rounding trick.
_LIM64 = 708.0
_LOG2E64 = 1.4426950408889634
_NEG_LN2_HI64 = -6.93147180369123816490e-01
_NEG_LN2_LO64 = -1.90821492927058770002e-10
_ROUND64 = 6755399441055744.0  # 1.5 * 2**52: x + it rounds x to an integer in the low bits
_ROUND64_BITS = 0x4338000000000000
_INV_FACT = tuple(1.0 / math.factorial(i) for i in range(14))


@intrinsic
def _f32_from_bits(typingctx, bits):
    """The low 32 bits of an integer read as a float32 (LLVM bitcast: stays in vector registers)."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = args[0]
        if bits.bitwidth > 32:
            v = builder.trunc(v, ir.IntType(32))
        elif bits.bitwidth < 32:
            v = builder.sext(v, ir.IntType(32))
        return builder.bitcast(v, ir.FloatType())

    return types.float32(bits), codegen


@intrinsic
def _f64_from_bits(typingctx, bits):
    """A 64-bit integer read as a float64."""
    if not (isinstance(bits, types.Integer) and bits.bitwidth == 64):
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(bits), codegen


@intrinsic
def _bits_of_f64(typingctx, v):
    """A float64's bits as an int64."""
    if v != types.float64:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(v), codegen


@intrinsic
def fma(typingctx, a, b, c):
    """fma(a, b, c) = a * b + c with one rounding (LLVM's llvm.fma), for three float32 or
    three float64 scalars. Always fused, so the same bits on every machine and compile path
    (the kernels have no fast-math contraction); LLVM vectorises it like a multiply."""
    if not (a == b == c and a in (types.float32, types.float64)):
        return None

    def codegen(context, builder, sig, args):
        lty = context.get_value_type(sig.return_type)
        name = "llvm.fma.f32" if sig.return_type == types.float32 else "llvm.fma.f64"
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(lty, [lty] * 3), name)
        return builder.call(fn, list(args))

    return a(a, b, c), codegen


def neg_exp(s):
    """exp(-s) for s >= 0; 0 where s >= the limit (no denormals) or s is NaN (+inf gives 0).

    Scalar and branch-free, so LLVM inlines it into the callers' loops and vectorises them."""


@overload(neg_exp)
def _neg_exp_impl(s):
    if s == types.float32:

        def impl32(s):
            ok = s < _LIM32
            t = -(s if ok else _LIM32)
            ni = np.int32(np.floor(fma(t, _LOG2E, _HALF32)))
            n = np.float32(ni)
            r = fma(n, _NEG_LN2_LO, fma(n, _NEG_LN2_HI, t))
            p = fma(fma(fma(fma(fma(_P0, r, _P1), r, _P2), r, _P3), r, _P4), r, _P5)
            p = fma(p, r * r, r) + _ONE32
            e = p * _f32_from_bits((ni + np.int32(127)) << np.int32(23))
            return e if ok else np.float32(0.0)

        return impl32

    if s == types.float64:
        f = _INV_FACT

        def impl64(s):
            ok = s < _LIM64
            t = -(s if ok else _LIM64)
            kf = fma(t, _LOG2E64, _ROUND64)
            n = kf - _ROUND64
            ni = _bits_of_f64(kf) - _ROUND64_BITS
            r = fma(n, _NEG_LN2_LO64, fma(n, _NEG_LN2_HI64, t))
            p = fma(f[13], r, f[12])
            p = fma(p, r, f[11])
            p = fma(p, r, f[10])
            p = fma(p, r, f[9])
            p = fma(p, r, f[8])
            p = fma(p, r, f[7])
            p = fma(p, r, f[6])
            p = fma(p, r, f[5])
            p = fma(p, r, f[4])
            p = fma(p, r, f[3])
            p = fma(p, r, f[2])
            p = fma(p, r * r, r) + 1.0
            e = p * _f64_from_bits((ni + 1023) << 52)
            return e if ok else 0.0

        return impl64

    return None


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
                builder.module, ir.FunctionType(vnat, [ptr.type, ir.IntType(32), vi1, vnat]), f"llvm.masked.load.{sfx}.p0"
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
                builder.insert_element(ir.Constant(ir.VectorType(i64, _VEC), ir.Undefined), left, ir.Constant(ir.IntType(32), 0)),
                ir.Constant(ir.VectorType(i64, _VEC), ir.Undefined),
                ir.Constant(ir.VectorType(ir.IntType(32), _VEC), [0] * _VEC),
            )
            mask = builder.icmp_signed("<", lane_ids, splat)
            idx = builder.add(start, ir.Constant(i64, h * _VEC))
            for job, a64 in zip(jobs, acc64):
                add_term(a64[h], job, idx, _VEC, True, mask)
    results = []
    for job, a64 in zip(jobs, acc64):
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
    return types.float64(u, v, w, a, n), lambda c, b, sig, args: _lane_sums_codegen(c, b, sig, args, [(0, 1)], (2, [(0, 3)]))


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


# ---------------------------------------------------------------- layout helpers


def _shuffle(builder, a, b, mask):
    return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(ir.IntType(32), len(mask)), mask))


@intrinsic
def _transpose8(typingctx, src, s0, ss, dst, d0, ds):
    """An 8 x 8 block: dst[d0 + c * ds + r] = src[s0 + r * ss + c] for r, c < 8 (1-D C arrays,
    float32 or float64, converted to dst's dtype), in three rounds of vector shuffles."""
    arrays_ok = all(
        isinstance(t, types.Array) and t.ndim == 1 and t.layout == "C" and t.dtype in (types.float32, types.float64)
        for t in (src, dst)
    )
    if not (arrays_ok and all(isinstance(t, types.Integer) for t in (s0, ss, d0, ds))):
        return None

    def codegen(context, builder, sig, args):
        sty, dty = sig.args[0].dtype, sig.args[3].dtype
        src_arr = context.make_array(sig.args[0])(context, builder, value=args[0])
        dst_arr = context.make_array(sig.args[3])(context, builder, value=args[3])
        s0v, ssv, d0v, dsv = (context.cast(builder, args[i], sig.args[i], types.int64) for i in (1, 2, 4, 5))
        i64 = ir.IntType(64)
        svec = ir.VectorType(context.get_data_type(sty), 8)
        dvec = ir.VectorType(context.get_data_type(dty), 8)
        rows = []
        for r in range(8):
            ptr = builder.gep(src_arr.data, [builder.add(s0v, builder.mul(ssv, ir.Constant(i64, r)))])
            v = builder.load(builder.bitcast(ptr, svec.as_pointer()), align=sty.bitwidth // 8)
            if sty.bitwidth > dty.bitwidth:
                v = builder.fptrunc(v, dvec)
            elif sty.bitwidth < dty.bitwidth:
                v = builder.fpext(v, dvec)
            rows.append(v)
        # Pairs of rows interleaved, then pairs of pairs, then the two halves: columns.
        t = []
        for q in range(4):
            t.append(_shuffle(builder, rows[2 * q], rows[2 * q + 1], [0, 8, 1, 9, 4, 12, 5, 13]))
            t.append(_shuffle(builder, rows[2 * q], rows[2 * q + 1], [2, 10, 3, 11, 6, 14, 7, 15]))
        m1, m2 = [0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15]
        tt = []
        for base in (0, 4):
            tt += [
                _shuffle(builder, t[base], t[base + 2], m1),
                _shuffle(builder, t[base], t[base + 2], m2),
                _shuffle(builder, t[base + 1], t[base + 3], m1),
                _shuffle(builder, t[base + 1], t[base + 3], m2),
            ]
        cols = [_shuffle(builder, tt[c], tt[c + 4], [0, 1, 2, 3, 8, 9, 10, 11]) for c in range(4)]
        cols += [_shuffle(builder, tt[c], tt[c + 4], [4, 5, 6, 7, 12, 13, 14, 15]) for c in range(4)]
        for c in range(8):
            ptr = builder.gep(dst_arr.data, [builder.add(d0v, builder.mul(dsv, ir.Constant(i64, c)))])
            builder.store(cols[c], builder.bitcast(ptr, dvec.as_pointer()), align=dty.bitwidth // 8)
        return context.get_dummy_value()

    return types.none(src, s0, ss, dst, d0, ds), codegen


_LINE = 64  # bytes of a cache line


@intrinsic
def _stream_line(typingctx, dst, d0, src, s0):
    """dst[d0:d0 + n] = src[s0:s0 + n] for one 64-byte line (n = 16 float32 or 8 float64),
    with a non-temporal store: a line written whole needs no read of its old contents."""
    if not (isinstance(dst, types.Array) and isinstance(src, types.Array) and dst.dtype == src.dtype):
        return None
    if dst.dtype not in (types.float32, types.float64) or not isinstance(d0, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        dty = sig.args[0].dtype
        width = _LINE * 8 // dty.bitwidth
        vec = ir.VectorType(context.get_data_type(dty), width)
        dst_arr = context.make_array(sig.args[0])(context, builder, value=args[0])
        src_arr = context.make_array(sig.args[2])(context, builder, value=args[2])
        d0v = context.cast(builder, args[1], sig.args[1], types.int64)
        s0v = context.cast(builder, args[3], sig.args[3], types.int64)
        v = builder.load(builder.bitcast(builder.gep(src_arr.data, [s0v]), vec.as_pointer()), align=dty.bitwidth // 8)
        store = builder.store(v, builder.bitcast(builder.gep(dst_arr.data, [d0v]), vec.as_pointer()), align=_LINE)
        store.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)]))
        return context.get_dummy_value()

    return types.none(dst, d0, src, s0), codegen


@intrinsic
def _address(typingctx, a):
    """The address of an array's first element."""
    if not isinstance(a, types.Array):
        return None

    def codegen(context, builder, sig, args):
        arr = context.make_array(sig.args[0])(context, builder, value=args[0])
        return builder.ptrtoint(arr.data, ir.IntType(64))

    return types.uint64(a), codegen


@njit(cache=True)
def whole_lines(dst, P):
    """Whether the rows of a flat (n, P) dst are whole, aligned cache lines (then
    :func:`scatter_rows` streams them)."""
    row = P * dst.itemsize
    return row % _LINE == 0 and _address(dst) % _LINE == 0


@njit(cache=True)
def scatter_rows(dst, dst_idx, src, nr, P):
    """dst[dst_idx[i] * P : ... + P] = src[i * P : i * P + P] for i < nr (flat arrays of one
    dtype). Rows that are whole, aligned cache lines (:func:`whole_lines`) go by
    non-temporal line stores: no read of the lines they overwrite, which halved the time
    of the scattered rows of 16 float32 outputs."""
    if whole_lines(dst, P):
        step = _LINE // dst.itemsize
        for i in range(nr):
            d0 = dst_idx[i] * P
            for o in range(0, P, step):
                _stream_line(dst, d0 + o, src, i * P + o)
        return
    for i in range(nr):
        out = dst[dst_idx[i] * P : dst_idx[i] * P + P]
        inp = src[i * P : i * P + P]
        for p in range(P):
            out[p] = inp[p]


@njit(cache=True)
def transpose_into(src, ss, dst, ds, R, C):
    """dst[c * ds + r] = src[r * ss + c] for r < R, c < C (1-D arrays; converted to dst's
    dtype): a (R, C) block with row stride ss into a (C, R) one with row stride ds, by 8 x 8
    vector blocks (~5x a scalar loop), the edges one by one. Moves P outputs between the
    kernels' (P, points) layout and the callers' (points, P) rows."""
    R8 = R - R % 8
    C8 = C - C % 8
    for r0 in range(0, R8, 8):
        for c0 in range(0, C8, 8):
            _transpose8(src, r0 * ss + c0, ss, dst, c0 * ds + r0, ds)
        for r in range(r0, r0 + 8):
            for c in range(C8, C):
                dst[c * ds + r] = src[r * ss + c]
    for r in range(R8, R):
        for c in range(C):
            dst[c * ds + r] = src[r * ss + c]


# ---------------------------------------------------------------- pair kernels


@njit(cache=True)
def neg_exp_block(s, e, nb):
    """e[:nb] = neg_exp(s[:nb])."""
    for i in range(nb):
        e[i] = neg_exp(s[i])


@njit(cache=True)
def _pair_block(xs, p0, c, iw, half, k, nb, s, gate):
    """s = sum_j z_j**2 and gate = 1/0 (support test) for bump k against points p0:p0+nb of xs (d, n).

    Every array is read through a 1-D C-contiguous slice indexed from 0: an offset
    index (p0 + i) made Numba emit a negative-index check per element, which kept
    LLVM from vectorising the culled loops."""
    d = xs.shape[0]
    one = s.dtype.type(1.0)
    zero = s.dtype.type(0.0)
    for i in range(nb):
        s[i] = zero
        gate[i] = one
    for j in range(d):
        xj = xs[j][p0 : p0 + nb]
        cj = c[j, k]
        iwj = iw[j, k]
        hj = half[j, k]
        for i in range(nb):
            df = xj[i] - cj
            z = df * iwj
            s[i] = fma(z, z, s[i])
            gate[i] = gate[i] if abs(df) < hj else zero


@njit(cache=True)
def _accumulate_outputs(acc, off, m, k, e, gate, nb):
    """acc[p, off:off+nb] += m[k, p] * e[:nb] * gate[:nb] for every output p (one fma each;
    acc in the inputs' dtype, flushed by the caller); e becomes e * gate."""
    for i in range(nb):
        e[i] = e[i] * gate[i]
    P = m.shape[1]
    P4 = P - P % 4
    for p in range(0, P4, 4):  # four outputs a pass: one read of e for four
        a0 = acc[p][off : off + nb]
        a1 = acc[p + 1][off : off + nb]
        a2 = acc[p + 2][off : off + nb]
        a3 = acc[p + 3][off : off + nb]
        m0, m1, m2, m3 = m[k, p], m[k, p + 1], m[k, p + 2], m[k, p + 3]
        for i in range(nb):
            ei = e[i]
            a0[i] = fma(m0, ei, a0[i])
            a1[i] = fma(m1, ei, a1[i])
            a2[i] = fma(m2, ei, a2[i])
            a3[i] = fma(m3, ei, a3[i])
    for p in range(P4, P):
        ap = acc[p][off : off + nb]
        mkp = m[k, p]
        for i in range(nb):
            ap[i] = fma(mkp, e[i], ap[i])


@njit(cache=True)
def _grad_m1(g1, e, gate, mk2, nb, tm):
    """P == 1, one bump on nb points with upstream gradient g1[:nb]: returns sum g e (float64,
    :func:`dot64`) and sets tm = 2 m g e (0 for dead pairs); e becomes e * gate."""
    zero = tm.dtype.type(0.0)
    for i in range(nb):
        el = e[i] * gate[i]
        e[i] = el
        tm[i] = (g1[i] * el) * mk2 if el > zero else zero
    return dot64(g1, e, nb)


@njit(cache=True)
def _multi_tm(gb, g0, m, k, nb, e, gate, tm, pm):
    """P > 1, bump k on nb points whose upstream gradient is gb[:, g0:g0+nb]: adds
    sum_i g[p, i] e_i (dot64) into pm[k, p] and sets tm_i = 2 e_i sum_p g[p, i] m[k, p]
    (0 for dead pairs; the sum over outputs runs in p order); e becomes e * gate."""
    P = gb.shape[0]
    zero = tm.dtype.type(0.0)
    two = tm.dtype.type(2.0)
    for i in range(nb):
        e[i] = e[i] * gate[i]
        tm[i] = zero
    P4 = P - P % 4
    for p in range(0, P4, 4):  # four outputs a pass: the same bits as one at a time, fewer reads
        s0, s1, s2, s3 = dot64x4_axpy(
            gb[p][g0 : g0 + nb], gb[p + 1][g0 : g0 + nb], gb[p + 2][g0 : g0 + nb], gb[p + 3][g0 : g0 + nb],
            e[:nb], tm[:nb], m[k, p], m[k, p + 1], m[k, p + 2], m[k, p + 3], nb,
        )  # fmt: skip
        pm[k, p] += s0
        pm[k, p + 1] += s1
        pm[k, p + 2] += s2
        pm[k, p + 3] += s3
    for p in range(P4, P):
        pm[k, p] += dot64_axpy(gb[p][g0 : g0 + nb], e[:nb], tm[:nb], m[k, p], nb)
    for i in range(nb):
        el = e[i]
        tm[i] = two * el * tm[i] if el > zero else zero


@njit(cache=True)
def _grad_tail(xs, p0, c, iw, k, nb, tm, gxb, g0, pcw, need_x, ta, taz):
    """From t_i = 2 e_i sum_p g[i, p] m[k, p] (0 for dead pairs) for points p0:p0+nb of xs:
    grad x into gxb[:, g0:g0+nb] (the inputs' dtype, flushed by the caller; when need_x),
    grad c, w into pcw (:func:`sum64x2`). ta, taz: scratch of at least nb entries."""
    d = xs.shape[0]
    zero = tm.dtype.type(0.0)
    for j in range(d):
        xj = xs[j][p0 : p0 + nb]
        gxj = gxb[j][g0 : g0 + nb]
        cj = c[j, k]
        iwj = iw[j, k]
        for i in range(nb):
            z = (xj[i] - cj) * iwj
            a = tm[i] * z * iwj
            a = a if tm[i] != zero else zero  # dead pairs: z may be inf
            ta[i] = a
            taz[i] = a * z
            if need_x:
                gxj[i] -= a
        sc, sw = sum64x2(ta[:nb], taz[:nb], nb)
        pcw[j, k] += sc
        pcw[d + j, k] += sw


@njit(parallel=True, cache=True)
def dense_forward(x, c, iw, half, m, y, npart):
    """y (n, P) = the bump sum at every point; partition q owns a fixed run of blocks."""
    n, d = x.shape
    K, P = m.shape
    dt = x.dtype
    nblk = (n + _B - 1) // _B
    for q in prange(npart):
        xb = np.empty((d, _B), dt)
        s = np.empty(_B, dt)
        gate = np.empty(_B, dt)
        e = np.empty(_B, dt)
        acc = np.zeros((P, _B), dt)
        acc64 = np.empty((P, _B))
        for blk in range(q * nblk // npart, (q + 1) * nblk // npart):
            i0 = blk * _B
            nb = min(_B, n - i0)
            for i in range(nb):
                for j in range(d):
                    xb[j, i] = x[i0 + i, j]
            acc64[:, :nb] = 0.0
            for k in range(K):
                _pair_block(xb, 0, c, iw, half, k, nb, s, gate)
                neg_exp_block(s, e, nb)
                _accumulate_outputs(acc, 0, m, k, e, gate, nb)
                if k % FLUSH_EVERY == FLUSH_EVERY - 1 or k == K - 1:
                    _flush_rows(acc64, acc, 0, nb)
            transpose_into(acc64.reshape(P * _B), _B, y.reshape(n * P)[i0 * P :], P, P, nb)


@njit(parallel=True, cache=True)
def dense_backward(x, c, iw, half, m, g, gx, pcw, pm, npart):
    """gx (n, d) gets dL/dx; partition q adds its dL/dc, dL/dw into pcw[q] and dL/dm into pm[q]."""
    n, d = x.shape
    K, P = m.shape
    dt = x.dtype
    two = dt.type(2.0)
    nblk = (n + _B - 1) // _B
    for q in prange(npart):
        xb = np.empty((d, _B), dt)
        gxb = np.zeros((d, _B), dt)
        gx64 = np.empty((d, _B))
        gb = np.empty((P, _B), dt)
        s = np.empty(_B, dt)
        gate = np.empty(_B, dt)
        e = np.empty(_B, dt)
        tm = np.empty(_B, dt)
        ta = np.empty(_B, dt)
        taz = np.empty(_B, dt)
        pcq = pcw[q]
        pmq = pm[q]
        for blk in range(q * nblk // npart, (q + 1) * nblk // npart):
            i0 = blk * _B
            nb = min(_B, n - i0)
            for i in range(nb):
                for j in range(d):
                    xb[j, i] = x[i0 + i, j]
            transpose_into(g.reshape(n * P)[i0 * P :], P, gb.reshape(P * _B), _B, nb, P)
            gx64[:, :nb] = 0.0
            for k in range(K):
                _pair_block(xb, 0, c, iw, half, k, nb, s, gate)
                neg_exp_block(s, e, nb)
                if P == 1:
                    pmq[k, 0] += _grad_m1(gb[0], e, gate, two * m[k, 0], nb, tm)
                else:
                    _multi_tm(gb, 0, m, k, nb, e, gate, tm, pmq)
                _grad_tail(xb, 0, c, iw, k, nb, tm, gxb, 0, pcq, True, ta, taz)
                if k % FLUSH_EVERY == FLUSH_EVERY - 1 or k == K - 1:
                    _flush_rows(gx64, gxb, 0, nb)
            for i in range(nb):
                for j in range(d):
                    gx[i0 + i, j] = gx64[j, i]


# ---------------------------------------------------------------- culled (grid) path
# Points are binned on a uniform grid over the first gd = min(d, 3) dims (ordered so the
# last has the most cells) and
# sorted by cell (counting sort). A "row" is a line of cells along the last grid
# dim; its points are contiguous. Each bump is registered in every row its support
# box overlaps, with the range of cells along that line. Rows are split into fixed
# partitions of about equal work; a partition owns its rows' points (y, grad x) and
# its own gradient partials. Upstream gradients are gathered into sorted order and
# outputs scattered back by separate passes, keeping random access out of the hot loops.


@njit(parallel=True, cache=True)
def extent(x, gd):
    """Per-dim min and max (float64) of the first gd columns of x (n, d)."""
    n = x.shape[0]
    nchunk = max(1, min(64, n // 16384))
    part = np.empty((nchunk, 2, gd))
    for q in prange(nchunk):
        lo = np.full(gd, np.inf)
        hi = np.full(gd, -np.inf)
        for i in range(q * n // nchunk, (q + 1) * n // nchunk):
            for j in range(gd):
                v = np.float64(x[i, j])
                lo[j] = min(lo[j], v)
                hi[j] = max(hi[j], v)
        part[q, 0] = lo
        part[q, 1] = hi
    lo = np.full(gd, np.inf)
    hi = np.full(gd, -np.inf)
    for q in range(nchunk):
        for j in range(gd):
            lo[j] = min(lo[j], part[q, 0, j])
            hi[j] = max(hi[j], part[q, 1, j])
    return lo, hi


@njit(cache=True)
def _cells_of(x, gdim, lo, inv_h, ncell, i0, i1, cell):
    """cell[i] for points i0:i1 of x: the row-major index of its grid cell (float64 arithmetic,
    monotone in x; clipped into the grid)."""
    gd = gdim.shape[0]
    c = cell[i0:i1]
    for i in range(i1 - i0):
        c[i] = 0
    # Dim by dim: each loop is branch-free over the points (vectorised).
    for j in range(gd):
        xj = x[i0:i1, gdim[j]]
        lj = lo[j]
        hj = inv_h[j]
        nj = ncell[j]
        top = nj - 1
        for i in range(i1 - i0):
            t = np.int64(np.floor((np.float64(xj[i]) - lj) * hj))
            c[i] = c[i] * nj + min(max(t, 0), top)


@njit(parallel=True, cache=True)
def bin_points(x, gdim, lo, inv_h, ncell, nchunk, perm, rank):
    """Cell of every point of x (n, d) (float64 arithmetic, monotone in x) and a stable
    counting sort by cell.

    Fills perm (sorted position -> original index) and rank (its inverse); returns the first
    sorted position of every cell (n_cells + 1,) and the points sorted, (d, n). Grid dim j
    is data dim gdim[j]; the last grid dim (along which rows run) is the one with the most cells, so
    thin data (a slab) still gives long runs.

    Two scatters, each cache-friendly (one straight scatter into the sorted arrays was
    measured at ~50 ns a point, all cache misses): points go first, by fixed chunks of the
    input in parallel, to buckets of consecutive cells (few sequential write streams), then
    each bucket, small enough for L2, is sorted into its cells. Stable, so the order does not
    depend on nchunk."""
    n, d = x.shape
    gd = gdim.shape[0]
    total = 1
    for j in range(gd):
        total *= ncell[j]
    cell = np.empty(n, perm.dtype)
    counts = np.zeros((total, nchunk), np.int64)
    for q in prange(nchunk):
        i0 = q * n // nchunk
        i1 = (q + 1) * n // nchunk
        _cells_of(x, gdim, lo, inv_h, ncell, i0, i1, cell)
        # Counted in a loop of its own: fused with the cell loop it ran 2x slower.
        for i in range(i0, i1):
            counts[cell[i], q] += 1
    cb = max(1, -(-total // _BUCKETS))  # cells per bucket
    nbk = -(-total // cb)
    start = np.empty(total + 1, np.int64)
    bfill = np.empty((nbk, nchunk), np.int64)  # next slot of bucket b for chunk q
    run = 0
    for b in range(nbk):
        for q in range(nchunk):
            bfill[b, q] = run
            for t in range(b * cb, min(total, (b + 1) * cb)):
                run += counts[t, q]
    run = 0
    for t in range(total):
        start[t] = run
        for q in range(nchunk):
            run += counts[t, q]
    start[total] = run
    tcell = np.empty(n, perm.dtype)
    tidx = np.empty(n, perm.dtype)
    tx = np.empty((n, d), x.dtype)
    for q in prange(nchunk):
        for i in range(q * n // nchunk, (q + 1) * n // nchunk):
            t = cell[i]
            b = t // cb
            p = bfill[b, q]
            bfill[b, q] = p + 1
            tcell[p] = t
            tidx[p] = i
            for j in range(d):
                tx[p, j] = x[i, j]
    xs = np.empty((d, n), x.dtype)
    for b in prange(nbk):
        t0 = b * cb
        t1 = min(total, t0 + cb)
        fill = start[t0:t1].copy()
        for p in range(start[t0], start[t1]):
            dst = fill[tcell[p] - t0]
            fill[tcell[p] - t0] = dst + 1
            perm[dst] = tidx[p]
            for j in range(d):
                xs[j, dst] = tx[p, j]
    # rank in a pass of its own: inside the loop above its random writes tripled its time.
    for q in prange(nchunk):
        for p in range(q * n // nchunk, (q + 1) * n // nchunk):
            rank[perm[p]] = p
    return start, xs


@njit(cache=True)
def _cell_range(a, b, lo, inv_h, nc):
    """Cells [q0, q1] (clipped) that [a, b] covers; q0 > q1 when no point can lie in it.

    Points get floor((x - lo) * inv_h) in [0, nc] before clipping, so the test
    uses nc, not nc - 1, as the top."""
    q0 = math.floor((a - lo) * inv_h)
    q1 = math.floor((b - lo) * inv_h)
    if q1 < 0 or q0 > nc:
        return 1, 0
    return min(max(q0, 0), nc - 1), max(min(q1, nc - 1), 0)


@njit(cache=True)
def register_bumps(c, half, gdim, lo, inv_h, ncell, start):
    """Per row, the bumps whose support box reaches it and their segment of points.

    Returns (row_start, reg_k, reg_p0, reg_p1, n_candidates). The box is widened by
    a relative 2**-20 so float32 rounding in the support test can never put an
    inside point in a cell the bump skips.
    """
    K = c.shape[1]
    gd = gdim.shape[0]
    nrows = 1
    for j in range(gd - 1):
        nrows *= ncell[j]
    nz = ncell[gd - 1]
    r0 = np.zeros((gd, K), np.int64)
    r1 = np.zeros((gd, K), np.int64)
    valid = np.ones(K, np.bool_)
    for k in range(K):
        for j in range(gd):
            cj = np.float64(c[gdim[j], k])
            hj = np.float64(half[gdim[j], k])
            tol = (abs(cj) + hj) * 2.0**-20
            a, b = _cell_range(cj - hj - tol, cj + hj + tol, lo[j], inv_h[j], ncell[j])
            if not (a <= b) or not (hj > 0):
                valid[k] = False
            r0[j, k] = a
            r1[j, k] = b
    counts = np.zeros(nrows + 1, np.int64)
    for k in range(K):
        if valid[k]:
            empty = np.empty(0, np.int64)
            _visit_rows(k, gd, r0, r1, ncell, counts, 0, empty, empty, empty, start, nz)
    row_start = np.zeros(nrows + 1, np.int64)
    for r in range(nrows):
        row_start[r + 1] = row_start[r] + counts[r + 1]
    nreg = row_start[nrows]
    reg_k = np.empty(nreg, np.int64)
    reg_p0 = np.empty(nreg, np.int64)
    reg_p1 = np.empty(nreg, np.int64)
    fill = row_start[:-1].copy()
    for k in range(K):
        if valid[k]:
            _visit_rows(k, gd, r0, r1, ncell, fill, 1, reg_k, reg_p0, reg_p1, start, nz)
    ncand = 0
    for q in range(nreg):
        ncand += reg_p1[q] - reg_p0[q]
    return row_start, reg_k, reg_p0, reg_p1, ncand


@njit(cache=True)
def _visit_rows(k, gd, r0, r1, ncell, arr, mode, reg_k, reg_p0, reg_p1, start, nz):
    """mode 0: count bump k in every row it overlaps; mode 1: write its registrations."""
    # Rows are over the first gd-1 grid dims (at most 2 here).
    z0 = r0[gd - 1, k]
    z1 = r1[gd - 1, k]
    if gd == 1:
        rows_a0, rows_a1, rows_b0, rows_b1, nb_ = 0, 0, 0, 0, 1
    elif gd == 2:
        rows_a0, rows_a1, rows_b0, rows_b1, nb_ = 0, 0, r0[0, k], r1[0, k], ncell[0]
    else:
        rows_a0, rows_a1, rows_b0, rows_b1, nb_ = r0[0, k], r1[0, k], r0[1, k], r1[1, k], ncell[1]
    for a in range(rows_a0, rows_a1 + 1):
        for b in range(rows_b0, rows_b1 + 1):
            row = a * nb_ + b if gd == 3 else b
            if mode == 0:
                arr[row + 1] += 1
            else:
                q = arr[row]
                reg_k[q] = k
                reg_p0[q] = start[row * nz + z0]
                reg_p1[q] = start[row * nz + z1 + 1]
                arr[row] += 1


@njit(cache=True)
def row_costs(row_pts, row_start, reg_p0, reg_p1):
    """Work per row (points + candidate pairs) as a prefix sum (nrows + 1,), longest row, longest segment."""
    nrows = row_start.shape[0] - 1
    cost = np.zeros(nrows + 1, np.int64)
    maxrow = 1
    maxseg = 1
    for r in range(nrows):
        w = row_pts[r + 1] - row_pts[r]
        maxrow = max(maxrow, w)
        for q in range(row_start[r], row_start[r + 1]):
            L = reg_p1[q] - reg_p0[q]
            w += L
            maxseg = max(maxseg, L)
        cost[r + 1] = cost[r] + w
    return cost, maxrow, maxseg


@njit(cache=True)
def partition_bounds(cost, npart):
    """Split rows into npart contiguous runs of about equal cost: (npart + 1,) row bounds.

    Depends only on the plan and npart, never on the thread count."""
    nrows = cost.shape[0] - 1
    bounds = np.empty(npart + 1, np.int64)
    bounds[0] = 0
    r = 0
    for q in range(1, npart):
        target = (cost[nrows] * q) // npart
        while r < nrows and cost[r + 1] <= target:
            r += 1
        bounds[q] = r
    bounds[npart] = nrows
    return bounds


@njit(parallel=True, cache=True)
def culled_forward(xs, perm, c, iw, half, m, row_pts, row_start, reg_k, reg_p0, reg_p1, bounds, maxrow, maxseg, y):
    """y (n, P), original order. Partition q owns rows bounds[q]:bounds[q+1]; per row a
    (P, row) accumulator takes every registered segment's m[k, p] * e, each segment
    evaluated straight from the sorted points, is flushed into a float64 one before any
    point has more than FLUSH_EVERY terms (see :func:`_row_flush`), and is written back
    through perm."""
    d, n = xs.shape
    P = m.shape[1]
    dt = xs.dtype
    npart = bounds.shape[0] - 1
    yf = y.reshape(n * P)
    for q in prange(npart):
        s = np.empty(maxseg, dt)
        gate = np.empty(maxseg, dt)
        e = np.empty(maxseg, dt)
        acc = np.zeros((P, maxrow), dt)
        acc64 = np.empty((P, maxrow))
        terms = np.zeros(maxrow if P >= _COUNT_POINTS else 0, np.int32)
        rows = np.empty(maxrow * P if P > 1 else 0, dt)
        for r in range(bounds[q], bounds[q + 1]):
            a = row_pts[r]
            nr = row_pts[r + 1] - a
            if nr == 0:
                continue
            lo, hi, count, flushed = nr, 0, 0, False  # touched since the last flush; whether one happened
            for t in range(row_start[r], row_start[r + 1]):
                p0 = reg_p0[t]
                L = reg_p1[t] - p0
                if L == 0:
                    continue
                k = reg_k[t]
                off = p0 - a
                _pair_block(xs, p0, c, iw, half, k, L, s, gate)
                neg_exp_block(s, e, L)
                if P == 1:  # one fused pass: here ~8% faster than _accumulate_outputs' two
                    ap = acc[0][off : off + L]
                    mk = m[k, 0]
                    for i in range(L):
                        ap[i] += mk * (e[i] * gate[i])
                else:
                    _accumulate_outputs(acc, off, m, k, e, gate, L)
                lo, hi, count, flushed = _row_flush(acc64, acc, terms, nr, off, L, lo, hi, count, flushed)
            terms[lo:hi] = 0
            _scatter_rows(acc64, acc, flushed, nr, perm[a : a + nr], yf, rows)


@njit(cache=True)
def _row_flush(acc64, acc, terms, nr, off, L, lo, hi, count, flushed):
    """Flush bookkeeping of a row's per-point accumulators (rows of acc, (., nr)) after a
    registration added a term to points off:off+L. Once a point may hold FLUSH_EVERY
    terms, every point touched since the last flush (lo:hi) is flushed into acc64 (set to
    0 at the row's first flush, so rows that never flush never touch it). ``terms``
    counts each point's terms (a point meets few of a row's registrations, so flushes
    stay rare: worth its cost with many accumulator rows); empty, ``count`` counts the
    row's registrations instead. Returns the new (lo, hi, count, flushed)."""
    if terms.shape[0] == 0:
        count += 1
        top = count
    else:
        seg = terms[off : off + L]
        one = np.int32(1)
        for i in range(L):
            seg[i] += one
        top = 0
        for i in range(L):  # apart from the additions and with a select: vectorised, 3x faster
            top = top if top > seg[i] else seg[i]
    lo = min(lo, off)
    hi = max(hi, off + L)
    if top < FLUSH_EVERY:
        return lo, hi, count, flushed
    if not flushed:
        acc64[:, :nr] = 0.0
    _flush_rows(acc64, acc, lo, hi)
    terms[lo:hi] = 0
    return nr, 0, 0, True


@njit(cache=True)
def _scatter_rows(acc64, acc, flushed, nr, dst_idx, dst, rows):
    """The write back: row i < nr of a flat (n, P) dst, dst[dst_idx[i] * P + p], gets
    acc[p, i] (plus acc64[p, i] when the row was flushed), rounded to dst's dtype;
    acc[:, :nr] becomes 0. rows: scratch of nr * P entries of dst's dtype (P > 1: the
    (P, nr) block is transposed into it, then copied out one contiguous row per point)."""
    P, width = acc.shape
    zero = acc.dtype.type(0.0)
    if P == 1:
        a0 = acc[0]
        if flushed:
            a64 = acc64[0]
            for i in range(nr):
                dst[dst_idx[i]] = a64[i] + np.float64(a0[i])
                a0[i] = zero
        else:
            for i in range(nr):
                dst[dst_idx[i]] = a0[i]
                a0[i] = zero
        return
    if flushed:
        _flush_rows(acc64, acc, 0, nr)
        transpose_into(acc64.reshape(P * width), width, rows, P, P, nr)
    else:
        transpose_into(acc.reshape(P * width), width, rows, P, P, nr)
        acc[:, :nr] = zero
    scatter_rows(dst, dst_idx, rows, nr, P)


@njit(parallel=True, cache=True)
def culled_backward(
    xs, perm, c, iw, half, m, g, row_pts, row_start, reg_k, reg_p0, reg_p1, bounds, maxrow, maxseg, gx, need_x, pcw, pm
):
    """g (n, P) is the upstream gradient in sorted order (see :func:`to_sorted`), gx (n, d)
    in original order. Per row the upstream gradient is read in place (P == 1) or its
    (row, P) block transposed into a (P, row) buffer, and grad x collects in a (d, row)
    buffer flushed into a float64 one as in :func:`culled_forward`, written back through
    perm; partition q adds its parameter gradients into pcw[q] and pm[q]."""
    d, n = xs.shape
    P = m.shape[1]
    dt = xs.dtype
    two = dt.type(2.0)
    npart = bounds.shape[0] - 1
    gf = g.reshape(n * P)
    gxf = gx.reshape(gx.shape[0] * d)
    for q in prange(npart):
        s = np.empty(maxseg, dt)
        gate = np.empty(maxseg, dt)
        e = np.empty(maxseg, dt)
        tm = np.empty(maxseg, dt)
        ta = np.empty(maxseg, dt)
        taz = np.empty(maxseg, dt)
        grow = np.empty((P if P > 1 else 0, maxrow), dt)
        rows = np.empty(maxrow * d, dt)
        gxr = np.zeros((d, maxrow), dt)
        gx64 = np.empty((d, maxrow))
        terms = np.zeros(maxrow if d >= _COUNT_POINTS else 0, np.int32)
        pcq = pcw[q]
        pmq = pm[q]
        for r in range(bounds[q], bounds[q + 1]):
            a = row_pts[r]
            nr = row_pts[r + 1] - a
            if nr == 0:
                continue
            lo, hi, count, flushed = nr, 0, 0, False  # touched since the last flush; whether one happened
            if row_start[r] < row_start[r + 1]:
                g1 = gf[a : a + nr]  # P == 1: the row's upstream gradient, in place
                if P > 1:  # the row's (nr, P) block of gs, transposed
                    transpose_into(gf[a * P : (a + nr) * P], P, grow.reshape(P * maxrow), maxrow, nr, P)
                for t in range(row_start[r], row_start[r + 1]):
                    p0 = reg_p0[t]
                    L = reg_p1[t] - p0
                    if L == 0:
                        continue
                    k = reg_k[t]
                    off = p0 - a
                    _pair_block(xs, p0, c, iw, half, k, L, s, gate)
                    neg_exp_block(s, e, L)
                    if P == 1:
                        pmq[k, 0] += _grad_m1(g1[off : off + L], e, gate, two * m[k, 0], L, tm)
                    else:
                        _multi_tm(grow, off, m, k, L, e, gate, tm, pmq)
                    _grad_tail(xs, p0, c, iw, k, L, tm, gxr, off, pcq, need_x, ta, taz)
                    if need_x:
                        lo, hi, count, flushed = _row_flush(gx64, gxr, terms, nr, off, L, lo, hi, count, flushed)
            if need_x:
                terms[lo:hi] = 0
                _scatter_rows(gx64, gxr, flushed, nr, perm[a : a + nr], gxf, rows)


@njit(parallel=True, cache=True)
def to_sorted(g, rank, gs, npart):
    """gs[rank[i]] = g[i], rows of flat (n * P,) arrays into sorted order by sequential
    reads and scattered writes (random reads stall on cache misses; random writes do
    not, and whole-line rows are streamed, see :func:`scatter_rows`)."""
    n = rank.shape[0]
    P = g.shape[0] // max(n, 1)
    for q in prange(npart):
        i0 = q * n // npart
        i1 = (q + 1) * n // npart
        if P == 1:
            _scatter1(g, rank, gs, i0, i1)
        else:
            scatter_rows(gs, rank[i0:i1], g[i0 * P :], i1 - i0, P)


@njit(cache=True)
def _scatter1(src, dst_idx, dst, i0, i1):
    """dst[dst_idx[i]] = src[i] for i in i0:i1."""
    for i in range(i0, i1):
        dst[dst_idx[i]] = src[i]


@njit(parallel=True, cache=True)
def culled_pair_count(xs, c, half, row_start, reg_k, reg_p0, reg_p1, bounds):
    """Number of in-support (point, bump) pairs the culled engine visits (test instrumentation)."""
    d = xs.shape[0]
    npart = bounds.shape[0] - 1
    counts = np.zeros(npart, np.int64)
    for q in prange(npart):
        cnt = 0
        for r in range(bounds[q], bounds[q + 1]):
            for t in range(row_start[r], row_start[r + 1]):
                k = reg_k[t]
                for p in range(reg_p0[t], reg_p1[t]):
                    ok = True
                    for j in range(d):
                        if not (abs(xs[j, p] - c[j, k]) < half[j, k]):
                            ok = False
                    if ok:
                        cnt += 1
        counts[q] = cnt
    return counts.sum()


@njit(cache=True)
def box_fraction(x, c, half, gd, cell_frac):
    """Mean over bumps of the fraction of x's bounding box (first gd dims) that the support
    box, widened by cell_frac of the extent, covers once clipped to it."""
    n = x.shape[0]
    K = c.shape[1]
    lo = np.empty(gd)
    hi = np.empty(gd)
    for j in range(gd):
        lo[j] = np.inf
        hi[j] = -np.inf
    for i in range(n):
        for j in range(gd):
            v = np.float64(x[i, j])
            lo[j] = min(lo[j], v)
            hi[j] = max(hi[j], v)
    total = 0.0
    for k in range(K):
        f = 1.0
        for j in range(gd):
            ext = hi[j] - lo[j]
            if ext > 0:
                h = np.float64(half[j, k]) + cell_frac * ext
                ck = np.float64(c[j, k])
                f *= min(1.0, max(0.0, min(hi[j], ck + h) - max(lo[j], ck - h)) / ext)
        total += f
    return total / max(K, 1)


@njit(cache=True)
def sum_parts(part):
    """Sum of the per-partition partials part[q] (3-D, float64), added in partition order."""
    out = np.zeros((part.shape[1], part.shape[2]))
    for q in range(part.shape[0]):
        pq = part[q]
        for a in range(part.shape[1]):
            for b in range(part.shape[2]):
                out[a, b] += pq[a, b]
    return out


@njit(cache=True)
def widths_prep(w, half):
    """(1/w clamped to the largest finite float, half with 0 where w == 0, whether half is all finite)
    for (d, K) arrays: one compiled pass instead of several small torch ops per call."""
    d, K = w.shape
    big = np.finfo(w.dtype).max
    iw = np.empty((d, K), w.dtype)
    hz = np.empty((d, K), half.dtype)
    finite = True
    for j in range(d):
        for k in range(K):
            wk = w[j, k]
            hk = half[j, k]
            if wk == 0:
                iw[j, k] = big
                hz[j, k] = 0
            else:
                iw[j, k] = min(max(1 / wk, -big), big)
                hz[j, k] = hk
            finite = finite and math.isfinite(hk)
    return iw, hz, finite


@njit(cache=True)
def _finite(a):
    for v in a.flat:
        if not math.isfinite(v):
            return False
    return True


@njit(cache=True)
def all_finite(x, c, w, m):
    """Whether every entry of the four arrays is finite (any layout), in one compiled call."""
    return _finite(x) and _finite(c) and _finite(w) and _finite(m)
