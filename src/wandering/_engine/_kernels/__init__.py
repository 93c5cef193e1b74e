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

Files: ``_exp`` (the exp polynomial, fma, bit intrinsics), ``_accumulate`` (the
accumulation rule's lane sums and flushes), ``_layout`` (block transposes, streaming
stores), ``_dense`` (the exact sum), ``_culled`` (grid binning, registration, partitions,
the culled sum), ``_prep`` (partials, widths, finite checks) and ``_oriented``
(full-covariance bumps, dense and culled). The names the engine calls are imported here.
"""

from wandering._engine._kernels._accumulate import (
    FLUSH_EVERY,
    dot64,
    dot64_axpy,
    dot64x4_axpy,
    flush64,
    sum64,
    sum64x2,
)
from wandering._engine._kernels._culled import (
    bin_points,
    box_fraction,
    culled_backward,
    culled_forward,
    culled_pair_count,
    extent,
    partition_bounds,
    register_bumps,
    row_costs,
    to_sorted,
)
from wandering._engine._kernels._dense import (
    _B,
    _pair_block,
    dense_backward,
    dense_forward,
    neg_exp_block,
)
from wandering._engine._kernels._exp import (  # the limits and bit casts: for the exp's tests and scans
    _LIM32,
    _LIM64,
    _f32_from_bits,
    fma,
    neg_exp,
)
from wandering._engine._kernels._layout import (
    scatter_rows,
    transpose_into,
    whole_lines,
)
from wandering._engine._kernels._prep import (
    all_finite,
    sum_parts,
    widths_prep,
)

__all__ = [
    "_LIM32",
    "_LIM64",
    "_f32_from_bits",
    "FLUSH_EVERY",
    "_B",
    "_pair_block",
    "all_finite",
    "bin_points",
    "box_fraction",
    "culled_backward",
    "culled_forward",
    "culled_pair_count",
    "dense_backward",
    "dense_forward",
    "dot64",
    "dot64_axpy",
    "dot64x4_axpy",
    "extent",
    "flush64",
    "fma",
    "neg_exp",
    "neg_exp_block",
    "partition_bounds",
    "register_bumps",
    "row_costs",
    "scatter_rows",
    "sum64",
    "sum64x2",
    "sum_parts",
    "to_sorted",
    "transpose_into",
    "whole_lines",
    "widths_prep",
]
