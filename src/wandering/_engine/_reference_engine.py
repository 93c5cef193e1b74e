"""The reference engine: the torch engine's formulas in one dense broadcast.

Used by ``"auto"`` for tiny problems, where one broadcast beats the fixed
cost of compiled kernels and of chunking. Memory O(n_smps x d x K).
"""

from __future__ import annotations

from wandering._engine import _torch_engine


def forward(x, c, w, m, half, cull):
    return _torch_engine.forward(x, c, w, m, half, cull, rows=max(1, x.shape[0]))


def backward(gy, x, c, w, m, half, cull, need_x):
    return _torch_engine.backward(gy, x, c, w, m, half, cull, need_x, rows=max(1, x.shape[0]))


def oriented_forward(x, c, U, m, r2, half, cull):
    return _torch_engine.oriented_forward(x, c, U, m, r2, half, cull, rows=max(1, x.shape[0]))


def oriented_backward(gy, x, c, U, m, r2, half, cull, need_x):
    return _torch_engine.oriented_backward(gy, x, c, U, m, r2, half, cull, need_x, rows=max(1, x.shape[0]))
