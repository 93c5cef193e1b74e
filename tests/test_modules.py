"""The seed's modules: semantics, layouts, bounds, gradient noise, dtypes, persistence."""

import io
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from problems import DEVICES, DTYPES, TOL, per_bump_loop, random_problem

from wandering import BumpFcn, SlowSumOfBumpFcns, SumOfBumpFcns, WanderingModule
from wandering._engine._geometry import support_halfwidths
from wandering._engine._reference import bump_sum_reference

# Every test here runs once per engine (see conftest.engine).
pytestmark = pytest.mark.usefixtures("engine")


def make_sum(cls, c, w, m, c_bounds=None, w_bounds=None, **kw):
    return cls(c, w, m, c_bounds, w_bounds, **kw)


# --------------------------------------------------------------------------- forward


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=20, deadline=None)
@given(n=st.integers(0, 30), d=st.integers(1, 4), k=st.integers(1, 10), seed=st.integers(0, 2**16))
def test_sum_modules_match_reference_outputs_and_gradients(dtype, n, d, k, seed):
    x, c, w, m = random_problem(n, d, k, dtype=dtype, seed=seed)
    upstream = torch.randn(n, dtype=dtype, generator=torch.Generator().manual_seed(seed))
    for module, support_p in (
        (make_sum(SumOfBumpFcns, c, w, m), None),
        (make_sum(SumOfBumpFcns, c, w, m, support_p=0.02), 0.02),
        (make_sum(SlowSumOfBumpFcns, c, w, m), 0.01),
    ):
        xr = x.clone().requires_grad_(True)
        y = module(xr)
        assert y.shape == (n,) and y.dtype == dtype
        got = torch.autograd.grad(y, [xr, module.c, module.w, module.m], upstream, allow_unused=True)
        ref_args = [t.clone().requires_grad_(True) for t in (x, c, w, m)]
        y_ref = bump_sum_reference(*ref_args, support_p=support_p)
        want = torch.autograd.grad(y_ref, ref_args, upstream, allow_unused=True)
        torch.testing.assert_close(y, y_ref, **TOL[dtype])
        for g, r in zip(got, want):
            torch.testing.assert_close(g, torch.zeros_like(r) if r is None else r, **TOL[dtype])


def test_slow_sum_equals_sum_of_bump_fcns():
    x, c, w, m = random_problem(200, 3, 6, dtype=torch.float64, seed=5, width=(0.05, 0.2))
    slow = make_sum(SlowSumOfBumpFcns, c, w, m, support_p=0.05)
    bumps = [BumpFcn(c[:, k], w[:, k], float(m[k]), support_p=0.05) for k in range(6)]
    torch.testing.assert_close(slow(x), sum(b(x) for b in bumps), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(slow(x), per_bump_loop(x, c, w, m, 0.05), rtol=1e-12, atol=1e-12)


def test_sum_of_bump_fcns_is_exact_everywhere():
    # Far from the centre, the culled sum is 0 but the exact sum is not.
    c, w, m = torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1)
    x = torch.tensor([[2.5]])
    assert SumOfBumpFcns(c, w, m, None, None)(x).item() == pytest.approx(math.exp(-6.25), rel=1e-6)
    assert SlowSumOfBumpFcns(c, w, m, None, None)(x).item() == 0.0


def test_bump_fcn_value_and_support():
    f = BumpFcn(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 2.0]), 3.0, support_p=0.01)
    half = support_halfwidths(f.w, 0.01)
    x = torch.tensor([[0.5, 1.5], [0.0, 1.0], [half[0].item(), 1.0], [0.0, 1.0 + 0.999 * half[1].item()]])
    y = f(x)
    assert y[0].item() == pytest.approx(3 * math.exp(-(0.25 + 0.0625)), rel=1e-6)
    assert y[1].item() == pytest.approx(3.0)
    assert y[2].item() == 0.0  # exactly on the edge: outside (strict test)
    assert y[3].item() > 0.0
    idx, vals = f(x, small_output=True)
    assert idx.tolist() == [0, 1, 3]
    torch.testing.assert_close(vals, y[idx])


def test_bump_fcn_m_takes_c_dtype_and_layouts():
    f = BumpFcn(torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64), 2)
    assert f.m.shape == (1,) and f.m.dtype == torch.float64
    assert f.c.shape == (3,) and f.n_bumps == 1
    assert f(torch.zeros(4, 3, dtype=torch.float64)).dtype == torch.float64


def test_gradients_exist_and_are_zero_where_no_point_is_inside():
    c = torch.tensor([[0.0, 10.0]])
    w = torch.tensor([[0.5, 0.5]])
    m = torch.tensor([1.0, 1.0])
    for module in (make_sum(SlowSumOfBumpFcns, c, w, m), make_sum(SumOfBumpFcns, c, w, m, support_p=0.01)):
        module(torch.tensor([[0.1], [-0.2]])).sum().backward()
        for p in (module.c, module.w, module.m):
            assert p.grad is not None and torch.isfinite(p.grad).all()
        assert module.c.grad[0, 1] == 0 and module.w.grad[0, 1] == 0 and module.m.grad[1] == 0
        assert module.m.grad[0] > 0
    f = BumpFcn(torch.tensor([10.0]), torch.tensor([0.5]), 1.0)
    f(torch.zeros(5, 1)).sum().backward()
    assert all(p.grad is not None and bool((p.grad == 0).all()) for p in (f.c, f.w, f.m))


def test_constructor_copies_user_tensors():
    c, w, m = torch.rand(2, 4), torch.full((2, 4), 0.2), torch.ones(4)
    bounds = torch.tensor([[0.2, 0.3], [0.2, 0.3]])
    c_before = c.clone()
    module = make_sum(SlowSumOfBumpFcns, c, w, m, c_bounds=bounds)
    module.bound()
    torch.testing.assert_close(c, c_before)  # the caller's tensor is untouched


# --------------------------------------------------------------------------- bounds


def test_bound_sum_layout_d_by_2():
    c = torch.tensor([[-1.0, 0.5, 2.0], [0.0, 5.0, -5.0]])
    w = torch.tensor([[0.01, 0.5, 9.0], [1.0, 1.0, 1.0]])
    c_bounds = torch.tensor([[0.0, 1.0], [-2.0, 2.0]])  # column 0 lower, column 1 upper
    w_bounds = torch.tensor([[0.1, 1.0], [0.1, 1.0]])
    for cls in (SumOfBumpFcns, SlowSumOfBumpFcns):
        module = make_sum(cls, c, w, torch.ones(3), c_bounds, w_bounds)
        module.bound()
        assert torch.equal(module.c.detach(), torch.tensor([[0.0, 0.5, 1.0], [0.0, 2.0, -2.0]]))
        assert torch.equal(module.w.detach(), torch.tensor([[0.1, 0.5, 1.0], [1.0, 1.0, 1.0]]))


def test_bound_bump_layout_2_by_d():
    f = BumpFcn(
        torch.tensor([-3.0, 3.0]),
        torch.tensor([5.0, 0.5]),
        1.0,
        c_bounds=torch.tensor([[-1.0, -1.0], [1.0, 1.0]]),  # row 0 lower, row 1 upper
        w_bounds=torch.tensor([[0.1, 0.1], [2.0, 2.0]]),
    )
    f.bound()
    assert f.c.tolist() == [-1.0, 1.0] and f.w.tolist() == [2.0, 0.5]


def test_bound_follows_every_change_to_the_bounds_buffers():
    """bound() keeps views of the bounds between calls: they must follow in-place writes,
    load_state_dict, a replaced buffer, a swapped storage and dtype conversion, and neither
    pickles nor deep-copies travel with them."""
    import copy
    import pickle

    def wide():
        return make_sum(
            SlowSumOfBumpFcns,
            torch.full((2, 3), 5.0),
            torch.full((2, 3), 0.5),
            torch.ones(3),
            torch.tensor([[-10.0, 10.0]] * 2),
            torch.tensor([[0.1, 1.0]] * 2),
        )

    def centre_bound_after_bound(module):
        module.c.data.fill_(5.0)
        module.bound()
        return module.c.detach().unique().tolist()

    module = wide()
    assert centre_bound_after_bound(module) == [5.0]
    module.c_bounds.copy_(torch.tensor([[0.0, 1.0]] * 2))  # in place
    assert centre_bound_after_bound(module) == [1.0]
    state = module.state_dict()
    state["c_bounds"] = torch.tensor([[0.0, 2.0]] * 2)
    module.load_state_dict(state)
    assert centre_bound_after_bound(module) == [2.0]
    module.c_bounds = torch.tensor([[0.0, 3.0]] * 2)  # a new buffer
    assert centre_bound_after_bound(module) == [3.0]
    module.c_bounds.data = torch.tensor([[0.0, 4.0]] * 2)  # a new storage under the same tensor
    assert centre_bound_after_bound(module) == [4.0]
    module.double()
    assert module.c_bounds.dtype == torch.float64 and centre_bound_after_bound(module) == [4.0]
    for clone in (copy.deepcopy(module), pickle.loads(pickle.dumps(module))):
        clone.c_bounds.copy_(torch.tensor([[0.0, 0.5]] * 2))
        assert centre_bound_after_bound(clone) == [0.5]
    assert centre_bound_after_bound(module) == [4.0]


def test_forward_under_inference_mode_and_no_grad():
    """Inference tensors (no version counter) pass through every cache keyed on versions."""
    torch.manual_seed(3)
    d, K = 3, 100
    module = SlowSumOfBumpFcns(
        torch.rand(d, K),
        0.1 + 0.2 * torch.rand(d, K),
        0.1 * torch.randn(K),
        torch.tensor([[0.0, 1.0]] * d),
        torch.tensor([[0.05, 0.5]] * d),
    )
    x = torch.rand(1000, d)
    y = module(x)
    with torch.no_grad():
        assert torch.equal(module(x), y)
    with torch.inference_mode():
        assert torch.equal(module(x), y)
        assert torch.equal(module(x.clone()), y)  # an inference tensor as input


def test_none_bounds_leave_parameters_alone():
    c, w = torch.randn(2, 3) * 10, torch.rand(2, 3) * 10 + 0.1
    for module in (
        make_sum(SumOfBumpFcns, c, w, torch.ones(3)),
        make_sum(SlowSumOfBumpFcns, c, w, torch.ones(3)),
        BumpFcn(c[:, 0], w[:, 0], 1.0),
    ):
        before = [p.detach().clone() for p in module.parameters()]
        module.bound()
        for p, b in zip(module.parameters(), before):
            assert torch.equal(p, b)


# --------------------------------------------------------------------------- noise


def modules_with_noise(c_std=0.0, w_std=0.0, m_gain=0.0, d=2, k=5):
    c, w, m = torch.rand(d, k), torch.full((d, k), 0.2), torch.ones(k)
    kw = dict(c_grad_std=c_std, w_grad_std=w_std, m_grad_gain=m_gain)
    return [
        make_sum(SlowSumOfBumpFcns, c, w, m, **kw),
        make_sum(SumOfBumpFcns, c, w, m, **kw),
        BumpFcn(c[:, 0], w[:, 0], 1.0, **kw),
    ]


def test_default_pert_grads_leaves_gradients_bit_for_bit():
    for module in modules_with_noise():
        x = torch.rand(50, 2)
        module(x).sum().backward()
        before = [p.grad.clone() for p in module.parameters()]
        module.pert_grads()
        for p, b in zip(module.parameters(), before):
            assert torch.equal(p.grad, b)


def test_sum_of_bump_fcns_pert_grads_does_nothing_by_default():
    module = make_sum(SumOfBumpFcns, torch.rand(2, 3), torch.full((2, 3), 0.3), torch.ones(3))
    module.pert_grads()
    assert all(p.grad is None for p in module.parameters())


def test_pert_grads_before_backward_creates_noise():
    for module in modules_with_noise(c_std=0.1, w_std=0.2, m_gain=0.5):
        module.pert_grads()
        assert module.c.grad is not None and module.c.grad.abs().sum() > 0
        assert module.w.grad is not None and module.w.grad.abs().sum() > 0
        torch.testing.assert_close(module.m.grad, -0.5 * module.m.detach())


def test_m_grad_gain_subtracts_gain_times_m():
    module = make_sum(SlowSumOfBumpFcns, torch.rand(1, 4), torch.full((1, 4), 0.3), torch.tensor([1.0, -2, 3, 0]))
    module.m_grad_gain = 0.25
    module(torch.rand(10, 1)).sum().backward()
    before = module.m.grad.clone()
    module.pert_grads()
    torch.testing.assert_close(module.m.grad, before - 0.25 * module.m.detach())
    assert module.c.grad is not None


def test_noise_statistics_mean_std_independence():
    k, steps, c_std, w_std = 200, 60, 0.3, 0.05
    module = make_sum(
        SlowSumOfBumpFcns, torch.rand(3, k), torch.full((3, k), 0.2), torch.ones(k), c_grad_std=c_std, w_grad_std=w_std
    )
    c_draws, w_draws = [], []
    for _ in range(steps):
        module.c.grad = None
        module.w.grad = None
        module.pert_grads()
        c_draws.append(module.c.grad.clone())
        w_draws.append(module.w.grad.clone())
    c_all = torch.stack(c_draws).double()  # (steps, d, K)
    w_all = torch.stack(w_draws).double()
    n = c_all.numel()
    # Mean within 5 standard errors of 0; std within 5%.
    assert abs(c_all.mean().item()) < 5 * c_std / math.sqrt(n)
    assert c_all.std().item() == pytest.approx(c_std, rel=0.05)
    assert w_all.std().item() == pytest.approx(w_std, rel=0.05)
    # Independence: correlations between entries, bumps, steps and the two parameters are ~0.
    flat = c_all.reshape(steps, -1)
    pairs = [
        (flat[:, :-1].reshape(-1), flat[:, 1:].reshape(-1)),  # neighbouring entries
        (c_all[:, 0, :].reshape(-1), c_all[:, 1, :].reshape(-1)),  # dimensions of a bump
        (flat[:-1].reshape(-1), flat[1:].reshape(-1)),  # consecutive steps
        (c_all.reshape(-1), w_all.reshape(-1)),  # c vs w noise
    ]
    for a, b in pairs:
        r = torch.corrcoef(torch.stack([a, b]))[0, 1].item()
        assert abs(r) < 5 / math.sqrt(a.numel()), r


def test_distinct_modules_draw_distinct_noise():
    torch.manual_seed(0)
    a, b = modules_with_noise(c_std=1.0)[:2]
    a.pert_grads()
    b.pert_grads()
    assert not torch.equal(a.c.grad, b.c.grad)


def test_random_walk_spread_matches_lr_std_sqrt_t():
    # No data gradient: T SGD steps of rate lr spread the centres by lr * std * sqrt(T).
    torch.manual_seed(1)
    k, steps, lr, std = 2000, 100, 0.01, 0.5
    c0 = torch.full((2, k), 0.5, dtype=torch.float64)
    module = make_sum(
        SlowSumOfBumpFcns,
        c0,
        torch.full((2, k), 0.1, dtype=torch.float64),
        torch.zeros(k, dtype=torch.float64),
        c_grad_std=std,
    )
    opt = torch.optim.SGD(module.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        module.pert_grads()
        opt.step()
        module.bound()
    spread = (module.c.detach() - c0).std().item()
    assert spread == pytest.approx(lr * std * math.sqrt(steps), rel=0.05)


def test_manual_seed_reproduces_a_noisy_run():
    def run():
        torch.manual_seed(123)
        x, c, w, m = random_problem(100, 2, 8, dtype=torch.float32, seed=0)
        module = make_sum(SlowSumOfBumpFcns, c, w, m, c_grad_std=0.1, w_grad_std=0.01, m_grad_gain=0.01)
        opt = torch.optim.Adam(module.parameters(), lr=0.01)
        for _ in range(10):
            opt.zero_grad()
            ((module(x) - 1) ** 2).mean().backward()
            module.pert_grads()
            opt.step()
            module.bound()
        return [p.detach().clone() for p in module.parameters()]

    for a, b in zip(run(), run()):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------- dtype, device, persistence


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_dtype_and_device_end_to_end(dtype, device):
    module = make_sum(
        SlowSumOfBumpFcns,
        torch.rand(2, 4),
        torch.full((2, 4), 0.3),
        torch.ones(4),
        torch.tensor([[0.0, 1], [0, 1]]),
        None,
        dtype=dtype,
        device=device,
        c_grad_std=0.1,
    )
    assert all(p.dtype == dtype for p in module.parameters())
    assert module.c_bounds.dtype == dtype
    y = module(torch.rand(6, 2, dtype=dtype, device=device))
    assert y.dtype == dtype and y.device.type == device
    y.sum().backward()
    module.pert_grads()
    module.bound()


def test_to_converts_parameters_and_bounds():
    module = make_sum(
        SlowSumOfBumpFcns,
        torch.rand(2, 4),
        torch.full((2, 4), 0.3),
        torch.ones(4),
        torch.tensor([[0.0, 1], [0, 1]]),
        torch.tensor([[0.1, 1], [0.1, 1]]),
    )
    module = module.to(torch.float64)
    assert module.c.dtype == module.c_bounds.dtype == module.w_bounds.dtype == torch.float64
    assert module.noise_step.dtype == torch.int64
    assert module(torch.rand(3, 2, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("cls", [SumOfBumpFcns, SlowSumOfBumpFcns, BumpFcn])
def test_state_dict_round_trip_with_weights_only(cls):
    torch.manual_seed(0)
    if cls is BumpFcn:

        def make():
            return BumpFcn(
                torch.rand(2),
                torch.full((2,), 0.3),
                1.0,
                torch.tensor([[0.0, 0.0], [1.0, 1.0]]),
                None,
                c_grad_std=0.1,
            )
    else:

        def make():
            return cls(
                torch.rand(2, 3),
                torch.full((2, 3), 0.3),
                torch.ones(3),
                torch.tensor([[0.0, 1], [0, 1]]),
                None,
                c_grad_std=0.1,
            )

    a = make()
    a.pert_grads()
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = make()
    b.load_state_dict(torch.load(buf, weights_only=True))
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    x = torch.rand(5, 2)
    torch.testing.assert_close(a(x), b(x))
    # Same noise state: the next draws agree.
    a.c.grad = b.c.grad = None
    a.pert_grads()
    b.pert_grads()
    assert torch.equal(a.c.grad, b.c.grad)


def test_extra_repr_shows_sizes_bounds_and_noise():
    module = make_sum(
        SlowSumOfBumpFcns,
        torch.rand(3, 7),
        torch.full((3, 7), 0.3),
        torch.ones(7),
        torch.tensor([[0.0, 1], [0, 1], [0, 2]]),
        None,
        c_grad_std=0.1,
    )
    text = repr(module)
    for part in (
        "d=3",
        "n_bumps=7",
        "support_p=0.01",
        "c_bounds=[(0, 1), (0, 1), (0, 2)]",
        "w_bounds=None",
        "c_grad_std=0.1",
        "w_grad_std=0.0",
        "m_grad_gain=0.0",
    ):
        assert part in text, part


def test_wandering_module_is_abstract_and_subclassable():
    with pytest.raises(TypeError):
        WanderingModule()

    class Mine(WanderingModule):
        def bound(self):
            pass

        def pert_grads(self):
            pass

    assert isinstance(Mine(), torch.nn.Module)


def test_positional_seed_signatures():
    # Old user code passes everything positionally, in the seed's order.
    f = BumpFcn(torch.zeros(2), torch.ones(2), 1.0, None, None, 0.1, 0.2, 0.3, 0.05)
    assert (f.c_grad_std, f.w_grad_std, f.m_grad_gain, f.support_p) == (0.1, 0.2, 0.3, 0.05)
    s = SlowSumOfBumpFcns(torch.zeros(2, 3), torch.ones(2, 3), torch.ones(3), None, None, 0.1, 0.2, 0.3, 0.05)
    assert (s.c_grad_std, s.w_grad_std, s.m_grad_gain, s.support_p) == (0.1, 0.2, 0.3, 0.05)
    e = SumOfBumpFcns(torch.zeros(2, 3), torch.ones(2, 3), torch.ones(3), None, None)
    assert e.support_p is None and e.n_bumps == 3


# --------------------------------------------------------------------------- fitting


def test_end_to_end_fit_with_adam():
    torch.manual_seed(0)
    x = torch.rand(400, 2)
    target = 1.5 * torch.exp(-(((x - torch.tensor([0.3, 0.6])) / 0.2) ** 2).sum(1)) - 0.8 * torch.exp(
        -(((x - torch.tensor([0.7, 0.3])) / torch.tensor([0.15, 0.3])) ** 2).sum(1)
    )
    k = 9
    grid = torch.stack(torch.meshgrid(torch.linspace(0.15, 0.85, 3), torch.linspace(0.15, 0.85, 3), indexing="ij"))
    module = SlowSumOfBumpFcns(
        grid.reshape(2, k),
        torch.full((2, k), 0.25),
        torch.zeros(k),
        torch.tensor([[0.0, 1], [0, 1]]),
        torch.tensor([[0.05, 1], [0.05, 1]]),
        c_grad_std=1e-3,
        w_grad_std=1e-4,
    )
    opt = torch.optim.Adam(module.parameters(), lr=0.03)
    for _ in range(300):
        opt.zero_grad()
        loss = ((module(x) - target) ** 2).mean()
        loss.backward()
        module.pert_grads()
        opt.step()
        module.bound()
    rmse = loss.sqrt().item()
    assert rmse < 0.05 * target.std().item()
    assert (module.c >= 0).all() and (module.c <= 1).all() and (module.w >= 0.05).all()


# --------------------------------------------------------------------------- gradcheck and edges


def test_modules_gradcheck_float64():
    x, c, w, m = random_problem(9, 2, 3, dtype=torch.float64, seed=11, width=(0.3, 0.7))
    for module in (
        make_sum(SumOfBumpFcns, c, w, m),
        make_sum(SlowSumOfBumpFcns, c, w, m, support_p=0.05),
        BumpFcn(c[:, 0], w[:, 0], float(m[0]), support_p=0.05),
    ):
        names, params = zip(*module.named_parameters())

        def fn(xx, *ps):
            return torch.func.functional_call(module, dict(zip(names, ps)), (xx,))

        inputs = [x.clone().requires_grad_(True)] + [p.detach().clone().requires_grad_(True) for p in params]
        assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("dtype", DTYPES)
def test_culled_modules_at_and_near_support_edges(dtype):
    c = torch.tensor([[0.3, 0.7], [0.5, 0.5]], dtype=dtype)
    w = torch.tensor([[0.05, 0.1], [0.2, 0.07]], dtype=dtype)
    m = torch.tensor([1.0, 2.0], dtype=dtype)
    half = support_halfwidths(w, 0.01)
    pts = []
    for k in range(2):
        for sign in (-1.0, 1.0):
            edge = c[0, k] + sign * half[0, k]
            for target in (c[0, k], edge + sign):  # one ulp inside, one ulp outside
                pts.append(torch.stack([torch.nextafter(edge, target), c[1, k]]))
            pts.append(torch.stack([edge, c[1, k]]))  # exactly on the edge: outside
    x = torch.stack(pts)
    module = make_sum(SlowSumOfBumpFcns, c, w, m)
    y = module(x)
    torch.testing.assert_close(y, per_bump_loop(x, c, w, m, 0.01), **TOL[dtype])
    torch.testing.assert_close(y, bump_sum_reference(x, c, w, m, 0.01), **TOL[dtype])
    bump = BumpFcn(c[:, 0], w[:, 0], 1.0, support_p=0.01, dtype=dtype)
    idx, _ = bump(x, small_output=True)
    assert idx.tolist() == [0, 3]  # the two one-ulp-inside points of bump 0
