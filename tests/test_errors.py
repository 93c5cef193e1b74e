"""Bad input raises ValueError/TypeError naming the argument, the expected and the received value."""

import pytest
import torch

from wandering import BumpFcn, SlowSumOfBumpFcns, SumOfBumpFcns

C, W, M = torch.rand(2, 3), torch.full((2, 3), 0.3), torch.ones(3)
SUMS = [SumOfBumpFcns, SlowSumOfBumpFcns]


@pytest.mark.parametrize("cls", SUMS)
@pytest.mark.parametrize(
    "args, exc, match",
    [
        (
            (C, torch.full((3, 2), 0.3), M, None, None),
            ValueError,
            r"w must have shape \(d, K\) like c = \(2, 3\), but got \(3, 2\)",
        ),
        (
            (C, W, torch.ones(4), None, None),
            ValueError,
            r"m must have shape \(K,\) or \(K, P\) with K = 3 \(one row per bump\), but got \(4,\)",
        ),
        (
            (C, W, torch.ones(4, 2), None, None),
            ValueError,
            r"m must have shape \(K,\) or \(K, P\) with K = 3.*but got \(4, 2\)",
        ),
        (
            (C, W, torch.ones(3, 2, 1), None, None),
            ValueError,
            r"m must have shape \(K,\) or \(K, P\).*but got \(3, 2, 1\)",
        ),
        ((C[0], W[0], M, None, None), ValueError, r"c must have shape \(d, K\).*but got \(3,\)"),
        (
            (C, W, M, torch.zeros(2, 3), None),
            ValueError,
            r"c_bounds must have shape \(d, 2\) = \(2, 2\), but got \(2, 3\)",
        ),
        ((C, W, M, None, torch.ones(2, 2, 1)), ValueError, r"w_bounds must have shape \(d, 2\)"),
        (
            (C, W, M, torch.tensor([[1.0, 0.0], [0, 1]]), None),
            ValueError,
            r"c_bounds must have lower <= upper, but got lower=1.0 > upper=0.0 in dimension 0",
        ),
        (
            (C, W, M, None, torch.tensor([[0.0, 1.0], [2.0, 1]])),
            ValueError,
            r"w_bounds must have lower <= upper, but got lower=2.0 > upper=1.0 in dimension 1",
        ),
        ((C, torch.zeros(2, 3), M, None, None), ValueError, r"w must be nonzero, but got 6 zero entries"),
        (
            (C, W.index_fill(1, torch.tensor([1]), 0.0)[:, :], M, None, None),
            ValueError,
            r"w must be nonzero, but got 2 zero entries",
        ),
        ((C * float("nan"), W, M, None, None), ValueError, r"c must be finite"),
        (("abc", W, M, None, None), TypeError, r"c must be a tensor or array of numbers, but got str"),
        ((C, W, [1, 2, "x"], None, None), TypeError, r"m must be a tensor or array of numbers, but got list"),
    ],
)
def test_sum_constructor_errors(cls, args, exc, match):
    with pytest.raises(exc, match=match):
        cls(*args)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(support_p=0.0), ValueError, r"support_p must be in \(0, 1\), but got 0.0"),
        (dict(support_p=1.0), ValueError, r"support_p must be in \(0, 1\), but got 1.0"),
        (dict(support_p="x"), TypeError, r"support_p must be a float in \(0, 1\), but got str"),
        (dict(c_grad_std=-0.1), ValueError, r"c_grad_std must be >= 0 and finite, but got -0.1"),
        (dict(w_grad_std=-1.0), ValueError, r"w_grad_std must be >= 0 and finite, but got -1.0"),
        (dict(m_grad_gain=-2.0), ValueError, r"m_grad_gain must be >= 0 and finite, but got -2.0"),
        (dict(c_grad_std="big"), TypeError, r"c_grad_std must be a non-negative float, but got str"),
    ],
)
@pytest.mark.parametrize("cls", [*SUMS, BumpFcn])
def test_setting_errors(cls, kwargs, exc, match):
    if cls is BumpFcn:
        make = lambda: BumpFcn(C[:, 0], W[:, 0], 1.0, **kwargs)  # noqa: E731
    else:
        make = lambda: cls(C, W, M, None, None, **kwargs)  # noqa: E731
    with pytest.raises(exc, match=match):
        make()


@pytest.mark.parametrize(
    "args, match",
    [
        ((C, W[:, 0], 1.0), r"c must have shape \(d,\), but got \(2, 3\)"),
        ((C[:, 0], W[:1, 0], 1.0), r"w must have shape \(d,\) like c = \(2,\), but got \(1,\)"),
        (
            (C[:, 0], W[:, 0], torch.ones(2, 2)),
            r"m must be a number or a 1-D tensor of P magnitudes, but got shape \(2, 2\)",
        ),
        ((C[:, 0], W[:, 0], torch.ones(0)), r"m must hold at least one magnitude, but got an empty tensor"),
        (
            (C[:, 0], W[:, 0], 1.0, torch.zeros(2, 2, 2)),
            r"c_bounds must have shape \(2, d\) = \(2, 2\), but got \(2, 2, 2\)",
        ),
        (
            (C[:, 0], W[:, 0], 1.0, torch.tensor([[0.0, 2.0], [1.0, 1.0]])),
            r"c_bounds must have lower <= upper, but got lower=2.0 > upper=1.0 in dimension 1",
        ),
    ],
)
def test_bump_fcn_constructor_errors(args, match):
    with pytest.raises(ValueError, match=match):
        BumpFcn(*args)


@pytest.mark.parametrize("cls", [*SUMS, BumpFcn])
def test_forward_input_errors(cls):
    module = BumpFcn(C[:, 0], W[:, 0], 1.0) if cls is BumpFcn else cls(C, W, M, None, None)
    with pytest.raises(TypeError, match=r"x must be a torch.Tensor, but got ndarray"):
        module(torch.rand(4, 2).numpy())
    with pytest.raises(ValueError, match=r"x must have shape \(n_smps, 2\), but got \(4,\)"):
        module(torch.rand(4))
    with pytest.raises(ValueError, match=r"x must have shape \(n_smps, 2\), but got \(4, 3\)"):
        module(torch.rand(4, 3))
    with pytest.raises(ValueError, match=r"x must have dtype torch.float32 \(the module's\), but got torch.float64"):
        module(torch.rand(4, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"x must be on device cpu \(the module's\), but got meta"):
        module(torch.rand(4, 2, device="meta"))


@pytest.mark.parametrize("cls", [*SUMS, BumpFcn])
@pytest.mark.parametrize(
    "name, value, exc, match",
    [
        ("c_grad_std", -1.0, ValueError, r"c_grad_std must be >= 0 and finite, but got -1.0"),
        ("w_grad_std", float("nan"), ValueError, r"w_grad_std must be >= 0 and finite, but got nan"),
        ("m_grad_gain", "x", TypeError, r"m_grad_gain must be a non-negative float, but got str"),
        ("support_p", 1.0, ValueError, r"support_p must be in \(0, 1\), but got 1.0"),
        ("support_p", "big", TypeError, r"support_p must be a float in \(0, 1\), but got str"),
        (
            "backend",
            "nope",
            ValueError,
            r"backend must be one of \['auto', 'reference', 'torch', 'numba', 'triton'\], but got 'nope'",
        ),
        ("backend", 3, TypeError, r"backend must be a str, but got int"),
    ],
)
def test_settings_changed_later_are_checked_when_set(cls, name, value, exc, match):
    module = BumpFcn(C[:, 0], W[:, 0], 1.0) if cls is BumpFcn else cls(C, W, M, None, None)
    before = getattr(module, name)
    with pytest.raises(exc, match=match):
        setattr(module, name, value)
    assert getattr(module, name) == before  # the module keeps its working value


def test_unknown_backend_is_refused_at_construction():
    with pytest.raises(ValueError, match=r"backend must be one of \[.*'auto'.*\], but got 'nope'"):
        SumOfBumpFcns(C, W, M, None, None, backend="nope")


def test_settings_changed_later_take_effect():
    module = SlowSumOfBumpFcns(C, W, M, None, None)
    x = torch.rand(50, 2)
    module.support_p = None  # exact sum from now on
    torch.testing.assert_close(module(x), SumOfBumpFcns(C, W, M, None, None)(x))
    module.backend = "torch"
    assert module.backend == "torch"
    torch.testing.assert_close(module(x), SumOfBumpFcns(C, W, M, None, None)(x))


@pytest.mark.parametrize("cls", [*SUMS, BumpFcn])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_x_is_refused_by_every_engine(cls, bad, engine):
    module = BumpFcn(C[:, 0], W[:, 0], 1.0) if cls is BumpFcn else cls(C, W, M, None, None)
    x = torch.rand(6000, 2)
    x[17, 1] = bad
    x[40, 0] = bad
    with pytest.raises(ValueError, match=r"x must be finite, but got 2 non-finite entries \(NaN or \+-inf\)"):
        module(x)


def test_non_finite_parameters_are_refused_at_forward(engine):
    module = SlowSumOfBumpFcns(C, W, M, None, None)
    with torch.no_grad():
        module.w[0, 1] = float("nan")
    module.bound()  # clamping keeps NaN; the next forward says so instead of computing zeros
    with pytest.raises(ValueError, match=r"w must be finite, but got 1 non-finite entry"):
        module(torch.rand(10, 2))
