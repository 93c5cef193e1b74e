"""The reuse of large dead outputs (wandering._engine._buffers) never hands out memory still alive.

The cache's size threshold is lowered so that small problems take the reuse path; the
outputs are compared with the plain PyTorch reference (bump_sum_reference)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from wandering._engine import _buffers
from wandering._engine import _numba_engine as ne
from wandering._engine._geometry import support_halfwidths
from wandering._engine._reference import bump_sum_reference


@pytest.fixture(autouse=True)
def small_threshold(monkeypatch):
    monkeypatch.setattr(_buffers, "MIN_BYTES", 1024)
    _buffers.clear()
    yield
    _buffers.clear()


def _problem(seed, dtype, n=600, d=2, K=40, P=5):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, d, generator=g, dtype=dtype)
    c = torch.rand(d, K, generator=g, dtype=dtype)
    w = 0.05 + 0.1 * torch.rand(d, K, generator=g, dtype=dtype)
    m = torch.randn(K, P, generator=g, dtype=dtype)
    return x, c, w, m


def _span(t) -> tuple[int, int]:
    """Byte range of a contiguous tensor or numpy array (a transpose: that of its storage)."""
    if isinstance(t, np.ndarray):
        return t.__array_interface__["data"][0], t.__array_interface__["data"][0] + t.nbytes
    return t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()


def _overlap(a: torch.Tensor, b: torch.Tensor) -> bool:
    (a0, a1), (b0, b1) = _span(a), _span(b)
    return a0 < b1 and b0 < a1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cull", [False, True])
def test_outputs_kept_stay_distinct_and_correct(dtype, cull):
    """Outputs of several calls, all kept: no two share memory, each equals its reference;
    then once they die their memory is handed out again."""
    support_p = 0.01
    kept, refs = [], []
    for seed in range(4):
        x, c, w, m = _problem(seed, dtype)
        half = support_halfwidths(w, support_p) if cull else torch.full_like(w, math.inf)
        kept.append(ne.forward(x, c, w, m, half, cull))
        refs.append(bump_sum_reference(x, c, w, m, support_p if cull else None))
    for i, y in enumerate(kept):
        torch.testing.assert_close(y, refs[i])
        for z in kept[:i]:
            assert not _overlap(y, z)
    ptrs = {y.data_ptr() for y in kept}
    del y, z
    kept.clear()
    x, c, w, m = _problem(9, dtype)
    half = torch.full_like(w, math.inf)
    y = ne.forward(x, c, w, m, half, False)
    assert y.data_ptr() in ptrs  # a dead output's memory came back
    torch.testing.assert_close(y, bump_sum_reference(x, c, w, m))


@pytest.mark.parametrize(
    "keep",
    [
        lambda y: y[:, 1:3],  # a torch view
        lambda y: y.T,
        lambda y: y.numpy()[3:],  # a numpy view of the tensor
        lambda y: y.numpy().view(np.uint8),
        lambda y: torch.from_numpy(y.numpy()),
    ],
    ids=["slice", "transpose", "numpy-slice", "numpy-view", "from-numpy"],
)
def test_memory_reachable_from_a_view_is_not_reused(keep):
    x, c, w, m = _problem(0, torch.float32)
    half = torch.full_like(w, math.inf)
    y = ne.forward(x, c, w, m, half, False)
    alias = keep(y)
    before = alias.clone() if torch.is_tensor(alias) else alias.copy()
    del y  # only the alias is left
    x2, c2, w2, m2 = _problem(1, torch.float32)
    y2 = ne.forward(x2, c2, w2, m2, half, False)
    assert not _overlap(alias, y2)
    assert (alias == before).all()  # untouched by the second call
    torch.testing.assert_close(y2, bump_sum_reference(x2, c2, w2, m2))


def test_backward_output_reuse_and_budget(monkeypatch):
    """gx (need_x) goes through the cache too; the cache never holds more than its budget."""
    monkeypatch.setattr(_buffers, "MAX_BYTES", 64 << 10)
    x, c, w, m = _problem(0, torch.float64, n=2000)
    half = torch.full_like(w, math.inf)
    gy = torch.randn(2000, m.shape[1], dtype=torch.float64)
    outs = [ne.backward(gy, x, c, w, m, half, False, True)[0] for _ in range(6)]
    for i, gx in enumerate(outs):
        torch.testing.assert_close(gx, outs[0], rtol=0, atol=0)  # deterministic: same bits
        for other in outs[:i]:
            assert not _overlap(gx, other)
    xr = x.clone().requires_grad_()
    (bump_sum_reference(xr, c, w, m) * gy).sum().backward()
    torch.testing.assert_close(outs[0], xr.grad)
    assert _buffers.cached_bytes() <= 64 << 10


@pytest.mark.parametrize("keep_y", [False, True])
def test_backward_scratch_never_overwrites_a_live_output(keep_y):
    """The culled backward's sorted-gradient scratch (the output's size) comes from the cache:
    it takes a dead output's memory, never a live one's; the gradients are right either way."""
    x, c, w, m = _problem(3, torch.float32, n=3000)
    half = support_halfwidths(w, 0.01)
    gy = torch.randn(3000, m.shape[1])
    old = ne._CULL_FRACTION
    ne._CULL_FRACTION = math.inf  # the grid path, which sorts the upstream gradient
    try:
        y = ne.forward(x, c, w, m, half, True)
        y_before = y.clone()
        if not keep_y:
            del y
        grads = ne.backward(gy, x, c, w, m, half, True, True)
    finally:
        ne._CULL_FRACTION = old
    # Buffers: y's, gx's (returned), and the scratch's own only while y is alive (too
    # large for gx to take y's: reuse takes at most twice the size asked).
    assert len(_buffers._bufs) == (3 if keep_y else 2)
    if keep_y:
        assert (y == y_before).all()
        assert all(not _overlap(y, g) for g in grads if g is not None)
    xr, cr, wr, mr = (t.clone().requires_grad_() for t in (x, c, w, m))
    (bump_sum_reference(xr, cr, wr, mr, 0.01) * gy).sum().backward()
    for got, want in zip(grads, (xr.grad, cr.grad, wr.grad, mr.grad)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_a_buffer_larger_than_the_budget_is_not_kept(monkeypatch):
    monkeypatch.setattr(_buffers, "MAX_BYTES", 4096)
    y = _buffers.empty((100, 20), torch.float32)  # 8000 bytes
    assert y.shape == (100, 20) and y.dtype == torch.float32 and y.data_ptr() % 64 == 0
    assert _buffers.cached_bytes() == 0
    with pytest.raises(TypeError, match="dtype must be"):
        _buffers.empty((100, 20), torch.int32)
