"""exp(-s) for the kernels: a branch-free polynomial, float32 and float64, that LLVM inlines
and vectorises; exactly 0 past the underflow limit (no denormals). Bit-level intrinsics and an
explicit fused multiply-add beside it."""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

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
