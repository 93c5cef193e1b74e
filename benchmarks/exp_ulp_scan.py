"""Error in ulps of the engine's compiled exp(-s) (``_kernels.neg_exp``), float32 and float64.

float32: every float32 s in [0, 87) (1.12e9 values, bit pattern by bit pattern, in
chunks), against float64 ``exp(-s)`` (libm, within ~1e-16 relative: far below a float32
ulp), in ulps of the float32 nearest the exact value (``np.spacing``, as
tests/test_accuracy.py measures). float64: ``--samples`` uniform random s in [0, 708)
(default 1.2e8) against ``exp`` in long double (x87: 11 more bits than float64), in
float64 ulps; skipped where long double is float64.

Prints the largest error and the s where it occurs, per dtype.

    PYTHONPATH=src python benchmarks/exp_ulp_scan.py               # both
    PYTHONPATH=src python benchmarks/exp_ulp_scan.py --dtype float32
    PYTHONPATH=src python benchmarks/exp_ulp_scan.py --dtype float64 --samples 2e7
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
from numba import njit, prange

from wandering._engine import _kernels

_CHUNK = 1 << 22  # float32 bit patterns per parallel chunk


@njit(parallel=True, cache=True)
def _scan32(b0, b1, worst, where):
    """worst[q], where[q]: the largest ulp error over bit patterns [b0 + q*CHUNK, ...) and its s."""
    nchunk = worst.shape[0]
    for q in prange(nchunk):
        lo = b0 + q * _CHUNK
        hi = min(b1, lo + _CHUNK)
        best = -1.0
        at = np.float32(0.0)
        for b in range(lo, hi):
            sf = _kernels._f32_from_bits(np.int32(b))
            e = _kernels.neg_exp(sf)
            ref = math.exp(-np.float64(sf))
            # ulp of the float32 nearest ref (all normal here): its binade [2**(x-1), 2**x) by frexp
            ulp = 2.0 ** (math.frexp(np.float64(np.float32(ref)))[1] - 24)
            err = abs(np.float64(e) - ref) / ulp
            if err > best:
                best = err
                at = sf
        worst[q] = best
        where[q] = at


def scan_float32() -> tuple[float, float, int]:
    top = int(np.float32(87.0).view(np.int32))  # bit patterns 0 .. top-1 are the float32 in [0, 87)
    nchunk = (top + _CHUNK - 1) // _CHUNK
    worst = np.empty(nchunk)
    where = np.empty(nchunk, np.float32)
    _scan32(0, top, worst, where)
    q = int(np.argmax(worst))
    return float(worst[q]), float(where[q]), top


def _test_samples() -> np.ndarray:
    """The 2.6e6 s of tests/test_accuracy.py's float64 exp test (same seed and construction)."""
    rng = np.random.default_rng(3)
    wide, small = rng.uniform(0.0, 708.0, 2_000_000), rng.uniform(0.0, 1.0, 500_000)
    return np.concatenate([wide, small, np.linspace(0, 708, 100_001)[:-1]])


def _ulps64(s: np.ndarray) -> np.ndarray:
    e = np.empty_like(s)
    _kernels.neg_exp_block(s, e, s.shape[0])
    ref = np.exp(-s.astype(np.longdouble))
    return np.abs(e.astype(np.longdouble) - ref) / np.spacing(ref.astype(np.float64)).astype(np.longdouble)


def scan_float64(samples: int, seed: int = 0, chunk: int = 1 << 21) -> list[tuple[str, float, float, int]]:
    """(label, max ulps, its s, count) for the test's samples and for ``samples`` random ones."""
    out = []
    s = _test_samples()
    u = _ulps64(s)
    i = int(np.argmax(u))
    out.append(("the test's samples", float(u[i]), float(s[i]), s.shape[0]))
    rng = np.random.default_rng(seed)
    best, at, done = -1.0, 0.0, 0
    while done < samples:
        s = rng.uniform(0.0, 708.0, min(chunk, samples - done))
        u = _ulps64(s)
        i = int(np.argmax(u))
        if float(u[i]) > best:
            best, at = float(u[i]), float(s[i])
        done += s.shape[0]
    out.append((f"uniform random in [0, 708) (seed {seed})", best, at, done))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dtype", choices=("float32", "float64", "both"), default="both")
    ap.add_argument("--samples", type=float, default=1.2e8, help="float64 random samples (default 1.2e8)")
    args = ap.parse_args(argv)
    if args.dtype in ("float32", "both"):
        t0 = time.perf_counter()
        worst, at, count = scan_float32()
        print(f"float32: every float32 s in [0, 87) ({count} values): max error {worst:.6f} ulp "
              f"at s = {at!r} ({np.float32(at).view(np.int32):#010x}), {time.perf_counter() - t0:.0f} s")  # fmt: skip
    if args.dtype in ("float64", "both"):
        if np.finfo(np.longdouble).nmant <= 52:
            print("float64: skipped, long double is float64 here (no finer reference)")
            return
        t0 = time.perf_counter()
        for label, worst, at, count in scan_float64(int(args.samples)):
            print(f"float64: {count} s, {label}: max error {worst:.6f} ulp at s = {at!r}")
        print(f"float64: {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
