"""Evaluation engines for bump sums.

``bump_sum`` is the one entry point the modules call. Until the fast engines
land it dispatches to the plain reference.
"""

from __future__ import annotations

import torch

from .._reference import bump_sum_reference

BACKENDS = ("auto", "reference")


def bump_sum(
    x: torch.Tensor,
    c: torch.Tensor,
    w: torch.Tensor,
    m: torch.Tensor,
    support_p: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Sum of Gaussian bumps; see :func:`wandering._reference.bump_sum_reference` for the maths."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, but got {backend!r}")
    return bump_sum_reference(x, c, w, m, support_p)
