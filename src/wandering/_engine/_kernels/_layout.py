"""Moving blocks between the callers' (n, P) rows and the kernels' (P, nb) buffers: 8 x 8 vector
transposes and whole-cache-line streaming stores."""

from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

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
