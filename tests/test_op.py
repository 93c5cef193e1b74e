"""The engine as a PyTorch op: registration (opcheck), torch.compile, exact second
derivatives, and the maths at widths that reach or cross 0."""

from __future__ import annotations

import pytest
import torch
from problems import random_problem

from wandering import BumpFcn, SlowSumOfBumpFcns, SumOfBumpFcns, bump_sum, bump_sum_reference
from wandering._engine import _op, resolve_backend
from wandering._engine._geometry import support_halfwidths


def _params(n, d, K, P, dtype=torch.float64, seed=0, width=(0.1, 0.4)):
    x, c, w, m = random_problem(n, d, K, dtype=dtype, seed=seed, width=width)
    if P is not None:
        m = torch.randn(K, P, dtype=dtype, generator=torch.Generator().manual_seed(seed + 7))
    return [t.clone().requires_grad_() for t in (x, c, w, m)]


# ----------------------------------------------------------------------------- op contract


@pytest.mark.parametrize("support_p", [None, 0.05])
def test_opcheck_passes_for_both_ops(engine, support_p):
    x, c, w, m = _params(300, 3, 12, 2, dtype=torch.float32)
    half = support_halfwidths(w, support_p)
    torch.library.opcheck(_op.bump_sum_op, (x, c, w, m, half, engine, support_p is not None))
    gy = torch.randn(300, 2)
    for need_x in (True, False):
        args = (gy, x.detach(), c.detach(), w.detach(), m.detach(), half, engine, support_p is not None, need_x)
        torch.library.opcheck(_op.bump_sum_backward_op, args)


def _module(cls, d, K, P=None, seed=0):
    torch.manual_seed(seed)
    big = torch.tensor([[-1e6, 1e6]] * d)
    m = torch.randn(K) if P is None else torch.randn(K, P)
    if cls is BumpFcn:
        return BumpFcn(torch.rand(d), torch.full((d,), 0.2), 1.5, big.T, big.T)
    return cls(torch.rand(d, K), 0.1 + 0.2 * torch.rand(d, K), m, big, big)


@pytest.mark.parametrize("cls", [SumOfBumpFcns, SlowSumOfBumpFcns, BumpFcn])
def test_compile_fullgraph_matches_eager_with_new_sizes(engine, cls):
    torch._dynamo.reset()
    inner = _module(cls, 2, 48)
    model = torch.nn.Sequential(torch.nn.Linear(2, 2, dtype=torch.float32), inner)
    compiled = torch.compile(model, fullgraph=True)  # any graph break raises
    for n in (5000, 7001, 2500):
        x = torch.rand(n, 2)
        y_c = compiled(x)
        (y_c**2).sum().backward()
        grads_c = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        y_e = model(x)
        (y_e**2).sum().backward()
        grads_e = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        torch.testing.assert_close(y_c, y_e, rtol=1e-5, atol=1e-6)
        for a, b in zip(grads_c, grads_e):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- second order


@pytest.mark.parametrize("support_p", [None, 0.05])
@pytest.mark.parametrize("P", [None, 3])
def test_hessian_vector_products_match_the_reference(engine, support_p, P):
    """The issue's example: loss = sum(y^2) + sum(c^3); the bump sum's term must not vanish."""

    def hvp(fn):
        x, c, w, m = _params(400, 3, 24, P, seed=3)
        loss = fn(x, c, w, m).pow(2).sum() + (c**3).sum()
        grads = torch.autograd.grad(loss, (x, c, w, m), create_graph=True)
        vs = [
            torch.randn(g.shape, dtype=g.dtype, generator=torch.Generator().manual_seed(i)) for i, g in enumerate(grads)
        ]
        total = sum((g * v).sum() for g, v in zip(grads, vs))
        return total, torch.autograd.grad(total, (x, c, w, m))

    s_ref, h_ref = hvp(lambda *a: bump_sum_reference(*a, support_p))
    s, h = hvp(lambda *a: bump_sum(*a, support_p=support_p, backend=engine))
    torch.testing.assert_close(s, s_ref, rtol=1e-10, atol=1e-10)
    for a, b in zip(h, h_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    # the bump sum's own term is there: the cubic term alone gives another answer
    _, c, _, _ = _params(400, 3, 24, P, seed=3)
    v_c = torch.randn(c.shape, dtype=c.dtype, generator=torch.Generator().manual_seed(1))
    s_cubic = (3 * c.detach() ** 2 * v_c).sum()
    assert abs(float(s.detach()) - float(s_cubic)) > 1e-3 * abs(float(s.detach()))


@pytest.mark.parametrize("support_p", [None, 0.3])
@pytest.mark.parametrize("P", [None, 2])
def test_gradgradcheck_float64(engine, support_p, P):
    x, c, w, m = _params(15, 2, 4, P, seed=5, width=(0.3, 0.6))
    fn = lambda *a: bump_sum(*a, support_p=support_p, backend=engine)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, c, w, m))
    assert torch.autograd.gradgradcheck(fn, (x, c, w, m))


def test_first_order_runs_the_engine_kernel_and_create_graph_the_pair_formula(monkeypatch):
    calls = []
    orig_bwd, orig_pairs = _op._backward_impl, _op.pair_formula_grads
    monkeypatch.setattr(_op, "_backward_impl", lambda *a: (calls.append("kernel"), orig_bwd(*a))[1])
    monkeypatch.setattr(_op, "pair_formula_grads", lambda *a: (calls.append("pairs"), orig_pairs(*a))[1])
    x, c, w, m = _params(2000, 3, 32, None, seed=8)
    y = bump_sum(x, c, w, m, support_p=0.05, backend="numba")
    g1 = torch.autograd.grad(y.pow(2).sum(), (x, c, w, m))
    y = bump_sum(x, c, w, m, support_p=0.05, backend="numba")
    g2 = torch.autograd.grad(y.pow(2).sum(), (x, c, w, m), create_graph=True)
    assert calls == ["kernel", "pairs"]
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b.detach(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("support_p", [None, 0.05])
@pytest.mark.parametrize("P", [None, 3])
def test_eager_twin_is_the_registered_op(engine, support_p, P):
    """Plain eager calls take the autograd.Function twin; it gives the op's values, gradients
    and second derivatives bit for bit."""
    from wandering._engine._geometry import support_halfwidths

    x, c, w, m = _params(700, 2, 9, P, seed=12)
    m2 = m[:, None] if m.dim() == 1 else m
    half = support_halfwidths(w, support_p).detach()
    eng = resolve_backend(engine, x, c.shape[1])
    assert _op._plain_eager(x, c, w, m2, half)
    outs = []
    for f in (_op.bump_sum, _op.bump_sum_op):
        y = f(x, c, w, m2, half, eng, support_p is not None)
        g = torch.autograd.grad(y.pow(2).sum(), (x, c, w, m), create_graph=True)
        gg = torch.autograd.grad(sum(t.pow(2).sum() for t in g), (x, c, w, m))
        g1 = torch.autograd.grad(f(x, c, w, m2, half, eng, support_p is not None).pow(2).sum(), (x, c, w, m))
        outs.append((y, *g, *gg, *g1))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_eager_twin_steps_aside_for_modes_and_fake_tensors():
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.overrides import TorchFunctionMode

    x = torch.rand(5, 2)
    assert _op._plain_eager(x, torch.nn.Parameter(torch.rand(2, 3)))
    with TorchFunctionMode():
        assert not _op._plain_eager(x)
    with FakeTensorMode() as mode:
        fake = mode.from_tensor(x)
        assert not _op._plain_eager(fake)
    assert not _op._plain_eager(torch.empty(5, 2, device="meta"))


# ----------------------------------------------------------------------------- widths at and across 0


@pytest.mark.parametrize("support_p", [None, 0.01])
def test_negative_width_is_the_same_bump_and_zero_width_counts_nowhere(engine, support_p):
    x, c, w, m = _params(3000, 2, 6, None, seed=9)
    w_mixed = w.detach().clone()
    w_mixed[:, 1] *= -1
    w_mixed[0, 2] = 0.0
    w_mixed.requires_grad_()
    y = bump_sum(x, c, w_mixed, m, support_p=support_p, backend=engine)
    keep = torch.ones(6, dtype=torch.bool)
    keep[2] = False
    y_abs = bump_sum_reference(x, c[:, keep], w.detach()[:, keep], m[keep], support_p)
    torch.testing.assert_close(y, y_abs, rtol=1e-10, atol=1e-12)
    gx, gc, gw, gm = torch.autograd.grad(y.sum(), (x, c, w_mixed, m))
    for g in (gx, gc, gw, gm):
        assert torch.isfinite(g).all()
    assert float(gc[:, 2].abs().max()) == 0.0 and float(gw[:, 2].abs().max()) == 0.0 and float(gm[2]) == 0.0
    # w -> -w flips the sign of dL/dw (y depends on w**2), leaves the rest alone
    gw_pos = torch.autograd.grad(bump_sum(x, c, w, m, support_p=support_p, backend=engine).sum(), w)[0]
    torch.testing.assert_close(gw[:, 1], -gw_pos[:, 1], rtol=1e-10, atol=1e-12)


def test_seed_code_with_wide_bounds_trains_through_zero_width(engine):
    """The seed's users wrote "unbounded" as wide symmetric bounds for both parameters."""
    torch.manual_seed(0)
    d, K = 2, 16
    big = torch.tensor([[-1e6, 1e6]] * d)
    model = SlowSumOfBumpFcns(
        torch.rand(d, K), torch.full((d, K), 0.05), torch.randn(K), big, big, 0.01, 0.01, 0.0, 0.01
    )
    x = torch.rand(4000, d)
    y = torch.sin(5 * x[:, 0])
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    for _ in range(40):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        model.pert_grads()
        opt.step()
        model.bound()
        with torch.no_grad():
            model.w[0, :3] = torch.tensor([0.0, -0.04, 1e-30])  # at, across and near 0
        assert torch.isfinite(loss)
        for p in model.parameters():
            assert torch.isfinite(p).all() and torch.isfinite(p.grad).all()
