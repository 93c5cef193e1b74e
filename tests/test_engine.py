"""Engines through the public op vs the broadcast reference: outputs, gradients, support
edges, culling, several outputs, dispatch. (Numba's own internals: test_numba_engine.py.)"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import wandering._engine as eng
from wandering._engine import BACKENDS, ENGINES, bump_sum, resolve_backend
from wandering._engine import _kernels as kernels
from wandering._engine import _numba_engine as numba_engine
from wandering._engine._geometry import support_halfwidths
from wandering._engine._reference import bump_sum_reference, support_mask_reference

# "numba-cull" forces the grid path even where the dense fallback would be picked.
ENGINE_NAMES = ("reference", "torch", "numba", "numba-cull")
DTYPES = (torch.float32, torch.float64)


@contextlib.contextmanager
def _forced_cull(engine: str):
    old = numba_engine._CULL_FRACTION
    if engine == "numba-cull":
        numba_engine._CULL_FRACTION = math.inf
    try:
        yield
    finally:
        numba_engine._CULL_FRACTION = old


def _run(engine, x, c, w, m, support_p):
    with _forced_cull(engine):
        return bump_sum(x, c, w, m, support_p=support_p, backend=engine.split("-")[0])


def _tol(dtype):
    return {"rtol": 2e-5, "atol": 2e-5} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-12}


def _problem(n, d, K, dtype, seed, w_lo=0.1, w_hi=0.6, x_req=True, P=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, d, generator=g, dtype=dtype).requires_grad_(x_req)
    c = torch.rand(d, K, generator=g, dtype=dtype).requires_grad_()
    w = (w_lo + (w_hi - w_lo) * torch.rand(d, K, generator=g, dtype=dtype)).requires_grad_()
    shape = (K,) if P is None else (K, P)
    m = torch.randn(shape, generator=g, dtype=dtype).requires_grad_()
    return x, c, w, m


def _pair_count(x, c, w, support_p):
    return numba_engine.pair_count(x.detach(), c.detach(), support_halfwidths(w, support_p))


def _outputs_and_grads(fn, x, c, w, m, gy):
    y = fn(x, c, w, m)
    inputs = [t for t in (x, c, w, m) if t.requires_grad]
    grads = torch.autograd.grad(y, inputs, gy, allow_unused=True)
    grads = [torch.zeros_like(t) if gr is None else gr for t, gr in zip(inputs, grads)]
    return y, grads


def _assert_parity(engine, x, c, w, m, support_p, seed=0):
    g = torch.Generator().manual_seed(seed + 1)
    gy = torch.randn((x.shape[0], *tuple(m.shape[1:])), generator=g, dtype=x.dtype)
    y_ref, g_ref = _outputs_and_grads(lambda *a: bump_sum_reference(*a, support_p), x, c, w, m, gy)
    y, grads = _outputs_and_grads(lambda *a: _run(engine, *a, support_p), x, c, w, m, gy)
    tol = _tol(x.dtype)
    scale = 1.0 + float(m.detach().abs().sum(dim=0).max()) if m.numel() else 1.0
    torch.testing.assert_close(y, y_ref, rtol=tol["rtol"], atol=tol["atol"] * scale)
    for name, a, b in zip("xcwm", grads, g_ref):
        assert torch.isfinite(a).all(), name
        gscale = 1.0 + float(b.abs().max()) if b.numel() else 1.0
        torch.testing.assert_close(a, b, rtol=tol["rtol"], atol=tol["atol"] * gscale * 10, msg=f"grad {name}")


@settings(max_examples=25, deadline=None)
@given(
    d=st.integers(1, 5),
    K=st.integers(0, 20),
    n=st.sampled_from([0, 1, 37, 300]),
    P=st.sampled_from([None, 1, 2, 7, 37]),
    support_p=st.sampled_from([None, 0.01, 0.4]),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**16),
)
@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_parity_with_reference(engine, d, K, n, P, support_p, dtype, seed):
    x, c, w, m = _problem(n, d, K, dtype, seed, P=P)
    _assert_parity(engine, x, c, w, m, support_p, seed)


@pytest.mark.parametrize("engine", ENGINE_NAMES)
@pytest.mark.parametrize("support_p", [None, 0.01])
def test_outputs_are_independent_functions(engine, support_p):
    """Column p of a (K, P) sum is the (K,) sum with m[:, p], gradients included."""
    x, c, w, m = _problem(3000, 3, 40, torch.float64, 21, w_lo=0.03, w_hi=0.2, P=5)
    y = _run(engine, x, c, w, m, support_p)
    assert y.shape == (3000, 5)
    for p in (0, 3):
        torch.testing.assert_close(y[:, p], _run(engine, x, c, w, m[:, p], support_p), rtol=1e-12, atol=1e-12)
    y1 = _run(engine, x, c, w, m[:, :1], support_p)
    assert y1.shape == (3000, 1)
    torch.testing.assert_close(y1[:, 0], _run(engine, x, c, w, m[:, 0], support_p), rtol=0, atol=0)


@pytest.mark.parametrize("engine", ENGINE_NAMES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_points_on_and_near_support_edges(engine, dtype):
    d, K, support_p = 3, 4, 0.05
    _, c, w, m = _problem(0, d, K, dtype, 3, w_lo=0.05, w_hi=0.2)
    half = support_halfwidths(w, support_p)
    rows = []
    for k in range(K):
        for j in range(d):
            for sign in (-1.0, 1.0):
                edge = c[:, k].detach().clone()  # centre, then moved to the edge in dim j
                edge[j] = c[j, k].detach() + sign * half[j, k]
                toward = c[j, k].detach()
                away = edge[j] + sign
                for v in (edge[j], torch.nextafter(edge[j], toward), torch.nextafter(edge[j], away)):
                    p = edge.clone()
                    p[j] = v
                    rows.append(p)
    x = torch.stack(rows).requires_grad_()
    mask = support_mask_reference(x, c, w, support_p)
    assert 0 < int(mask.sum()) < mask.numel()  # both sides of the edges are exercised
    _assert_parity(engine, x, c, w, m, support_p)
    if engine == "numba-cull":
        with _forced_cull(engine):
            assert _pair_count(x, c, w, support_p) == int(mask.sum())


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_all_points_outside_every_support(engine):
    x, c, w, m = _problem(50, 3, 6, torch.float32, 4, w_lo=0.01, w_hi=0.02)
    x = (x.detach() + 5.0).requires_grad_()
    y = _run(engine, x, c, w, m, 0.01)
    assert torch.equal(y, torch.zeros_like(y))
    y.sum().backward()
    for t in (x, c, w, m):
        assert t.grad is not None and torch.equal(t.grad, torch.zeros_like(t))


@pytest.mark.parametrize("engine", ENGINE_NAMES)
@pytest.mark.parametrize("support_p", [None, 0.05])
def test_gradcheck_float64(engine, support_p):
    x, c, w, m = _problem(9, 2, 3, torch.float64, 5, w_lo=0.3, w_hi=0.8)
    # Keep points away from support edges, where the function jumps.
    assert torch.autograd.gradcheck(lambda *a: _run(engine, *a, support_p), (x, c, w, m), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("d", [1, 2, 3, 4])
def test_culled_pairs_match_reference_mask(d):
    x, c, w, _m = _problem(3000, d, 40, torch.float32, 6, w_lo=0.02, w_hi=0.15)
    for support_p in (0.01, 0.3):
        got = _pair_count(x, c, w, support_p)
        assert got is not None  # culling pays here
        assert got == int(support_mask_reference(x, c, w, support_p).sum())


def test_culled_path_on_clustered_data_with_outlying_bumps():
    g = torch.Generator().manual_seed(7)
    x = torch.cat([0.1 * torch.randn(2000, 3, generator=g), torch.rand(500, 3, generator=g) * 4 - 2]).requires_grad_()
    c = (torch.rand(3, 30, generator=g) * 6 - 3).requires_grad_()  # some boxes far outside the data
    w = (0.05 + 0.3 * torch.rand(3, 30, generator=g)).requires_grad_()
    m = torch.randn(30, generator=g).requires_grad_()
    assert _pair_count(x, c, w, 0.01) == int(support_mask_reference(x, c, w, 0.01).sum())
    _assert_parity("numba-cull", x, c, w, m, 0.01)


@pytest.mark.parametrize("engine", ENGINE_NAMES)
@pytest.mark.parametrize("support_p", [None, 0.01])
def test_tiny_width_gives_no_nan_gradients(engine, support_p):
    x, c, w, m = _problem(40, 3, 5, torch.float32, 8)
    with torch.no_grad():
        w[:, 0] = 1e-30
        c[:, 0] = 10.0  # bump 0 touches no point
    _assert_parity(engine, x, c, w, m, support_p)
    y = _run(engine, x, c, w, m, support_p)
    gx, gc, gw, gm = torch.autograd.grad(y, (x, c, w, m), torch.randn_like(y))
    for t in (gx, gc, gw, gm):
        assert torch.isfinite(t).all()
    assert gc[:, 0].abs().sum() == 0 and gw[:, 0].abs().sum() == 0


@pytest.mark.parametrize("engine", ENGINE_NAMES)
@pytest.mark.parametrize("n, K", [(0, 5), (7, 0), (0, 0)])
def test_empty_problems_give_zero_gradients(engine, n, K):
    x, c, w, m = _problem(n, 2, K, torch.float32, 9)
    y = _run(engine, x, c, w, m, 0.01)
    assert y.shape == (n,)
    y.sum().backward()
    for t in (x, c, w, m):
        assert t.grad is not None and t.grad.shape == t.shape and torch.equal(t.grad, torch.zeros_like(t))


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_non_contiguous_inputs(engine):
    x0, c0, w0, m0 = _problem(60, 6, 14, torch.float64, 10, x_req=False)
    x = x0[::2, ::2].requires_grad_()  # (30, 3), strided
    c = c0.detach().T.contiguous().T[::2, ::2].requires_grad_()
    w = w0.detach()[::2, ::2].requires_grad_()
    m = m0.detach()[::2].requires_grad_()
    assert not (x.is_contiguous() and c.is_contiguous() and w.is_contiguous())
    for support_p in (None, 0.05):
        _assert_parity(engine, x, c, w, m, support_p)


def test_x_without_grad_gets_none_and_params_still_match():
    x, c, w, m = _problem(200, 3, 8, torch.float32, 11, x_req=False)
    for engine in ENGINE_NAMES:
        _assert_parity(engine, x, c, w, m, 0.01)


def test_fast_paths_actually_run(monkeypatch):
    calls = []
    for name in ("dense_forward", "dense_backward", "culled_forward", "culled_backward"):
        orig = getattr(kernels, name)

        def spy(*args, _orig=orig, _name=name):
            calls.append(_name)
            return _orig(*args)

        monkeypatch.setattr(kernels, name, spy)
    x, c, w, m = _problem(4000, 3, 64, torch.float32, 12, w_lo=0.02, w_hi=0.05)
    assert resolve_backend("auto", x, 64) == "numba"
    bump_sum(x, c, w, m).sum().backward()
    assert calls == ["dense_forward", "dense_backward"]
    calls.clear()
    bump_sum(x, c, w, m, support_p=0.01).sum().backward()
    assert calls == ["culled_forward", "culled_backward"]


def test_wide_supports_fall_back_to_dense_with_support_test(monkeypatch):
    x, c, w, m = _problem(500, 3, 10, torch.float32, 13, w_lo=2.0, w_hi=3.0)
    assert _pair_count(x, c, w, 0.01) is None
    calls = []
    orig = kernels.dense_forward
    monkeypatch.setattr(kernels, "dense_forward", lambda *a: (calls.append(1), orig(*a))[1])
    _assert_parity("numba", x, c, w, m, 0.01)
    assert calls


def test_binning_reused_across_forward_backward_and_new_python_objects():
    """The cache keys on storage and values, not on the Python object: the op hands the
    engine detached views, and a compiled graph hands it tensors it made itself."""
    x, c, w, m = _problem(3000, 3, 30, torch.float32, 14, w_lo=0.02, w_hi=0.05, x_req=False)
    before = numba_engine.bin_calls
    y1 = bump_sum(x, c, w, m, support_p=0.01, backend="numba")
    y1.sum().backward()
    y2 = bump_sum(x.detach().view(3000, 3), c, w, m, support_p=0.01, backend="numba")
    assert numba_engine.bin_calls == before + 1
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)
    x.data.add_(0.25)  # writes through .data leave x._version alone (gradcheck does this)
    y3 = bump_sum(x, c, w, m, support_p=0.01, backend="numba")
    assert numba_engine.bin_calls == before + 2
    torch.testing.assert_close(y3, bump_sum_reference(x, c, w, m, 0.01), rtol=2e-5, atol=2e-5)


def test_backend_env_override(monkeypatch):
    x, c, w, m = _problem(100, 3, 400, torch.float32, 15)
    monkeypatch.setenv(eng.ENV_VAR, "torch")
    assert resolve_backend("auto", x, 400) == "torch"
    assert resolve_backend("reference", x, 400) == "reference"  # explicit names win
    monkeypatch.setenv(eng.ENV_VAR, "bogus")
    with pytest.raises(ValueError, match=r"WANDERING_BACKEND must be one of .*'numba'.*'bogus'"):
        bump_sum(x, c, w, m)


def test_unknown_backend_lists_valid_names():
    x, c, w, m = _problem(5, 2, 3, torch.float32, 16)
    with pytest.raises(ValueError, match=r"backend must be one of \['auto', 'reference', 'torch', 'numba', 'triton'\]"):
        bump_sum(x, c, w, m, backend="cuda-magic")
    with pytest.raises(TypeError, match="backend must be a str"):
        bump_sum(x, c, w, m, backend=3)
    # "triton" is listed even where it is unavailable (ENGINES says why)
    assert set(BACKENDS) == {"auto", "reference", "torch", "numba", "triton"}


def test_auto_picks_reference_for_tiny_and_torch_off_cpu():
    assert resolve_backend("auto", torch.empty(10, 3), 4) == "reference"
    assert resolve_backend("auto", torch.empty(10**5, 3), 64) == "numba"
    assert resolve_backend("auto", torch.empty(10**5, 3, device="meta"), 64) == "torch"
    assert resolve_backend("auto", torch.empty(10**5, 3, dtype=torch.bfloat16), 64) == "torch"


def test_registry_describes_each_engine_and_auto_follows_priority():
    assert list(BACKENDS) == ["auto", *ENGINES]
    for name, engine in ENGINES.items():
        assert engine.name == name
    for name in ("reference", "torch", "numba"):  # required engines: always there
        assert ENGINES[name].available and callable(ENGINES[name].forward)
    assert ENGINES["numba"].supports(torch.device("cpu"), torch.float32)
    assert not ENGINES["numba"].supports(torch.device("cpu"), torch.bfloat16)
    assert ENGINES["numba"].priority > ENGINES["torch"].priority > ENGINES["reference"].priority


def test_unavailable_or_unsuitable_engine_says_why(monkeypatch):
    import dataclasses

    missing = dataclasses.replace(
        ENGINES["torch"], forward=None, backward=None, unavailable="ImportError('no gpu lib')"
    )
    monkeypatch.setitem(ENGINES, "torch", missing)
    x, c, w, m = _problem(50, 2, 3, torch.float32, 17)
    with pytest.raises(RuntimeError, match=r"backend 'torch' is unavailable here: ImportError\('no gpu lib'\)"):
        bump_sum(x, c, w, m, backend="torch")
    with pytest.raises(
        ValueError, match=r"backend 'numba' needs float32/float64 tensors on cpu, but got torch.bfloat16"
    ):
        bump_sum(*(t.detach().bfloat16() for t in (x, c, w, m)), backend="numba")


@pytest.mark.parametrize(
    "args, exc, match",
    [
        (
            (torch.rand(5, 2), torch.rand(3, 4), torch.rand(3, 4), torch.rand(4)),
            ValueError,
            r"x must have shape \(n_smps, 3\)",
        ),
        (
            (torch.rand(5, 3), torch.rand(3, 4), torch.rand(3, 5), torch.rand(4)),
            ValueError,
            r"w must have shape \(3, 4\)",
        ),
        (
            (torch.rand(5, 3), torch.rand(3, 4), torch.rand(3, 4), torch.rand(3)),
            ValueError,
            r"m must have shape \(K,\) or \(K, P\) with K = 4",
        ),
        (
            (torch.rand(5, 3), torch.rand(3, 4), torch.rand(3, 4), torch.rand(4, 2, 2)),
            ValueError,
            r"m must have shape \(K,\) or \(K, P\) with K = 4 \(one row per bump\), but got \(4, 2, 2\)",
        ),
        ((torch.rand(5, 3), torch.rand(3, 4), torch.rand(3, 4), torch.rand(3, 2)), ValueError, r"but got \(3, 2\)"),
        (
            (torch.rand(5, 3).double(), torch.rand(3, 4), torch.rand(3, 4), torch.rand(4)),
            TypeError,
            "x must have dtype",
        ),
        (([[0.0]], torch.rand(1, 4), torch.rand(1, 4), torch.rand(4)), TypeError, "x must be a torch.Tensor"),
        ((torch.rand(5, 3), torch.rand(3), torch.rand(3, 4), torch.rand(4)), ValueError, r"c must have shape \(d, K\)"),
    ],
)
def test_bad_inputs_name_the_argument(args, exc, match):
    with pytest.raises(exc, match=match):
        bump_sum(*args)


@pytest.mark.parametrize("support_p, exc", [(0.0, ValueError), (1.5, ValueError), ("0.1", TypeError)])
def test_bad_support_p(support_p, exc):
    x, c, w, m = _problem(5, 2, 3, torch.float32, 18)
    with pytest.raises(exc, match="support_p"):
        bump_sum(x, c, w, m, support_p=support_p)


@pytest.mark.parametrize("dtype, ulp", [(np.float32, 2.0**-24), (np.float64, 2.0**-53)])
def test_kernel_exp_is_accurate(dtype, ulp):
    s = np.concatenate([np.linspace(0.0, 720.0, 400001), [np.inf, np.nan]]).astype(dtype)
    e = np.empty_like(s)
    kernels.neg_exp_block(s, e, s.shape[0])
    lim = kernels._LIM32 if dtype == np.float32 else kernels._LIM64
    live = s < lim
    ref = np.exp(-s[live].astype(np.longdouble))
    rel = np.abs(e[live] - ref) / ref
    assert rel.max() < 3 * ulp  # within ~2 ulp
    assert np.all(e[~live] == 0)  # past the limit, +inf and NaN all give 0


def test_flat_data_keeps_grid_small_and_exact():
    g = torch.Generator().manual_seed(19)
    x = torch.rand(5000, 3, generator=g)
    x[:, 2] *= 1e-9  # almost no extent in one dimension
    c = torch.rand(3, 30, generator=g)
    c[2] *= 1e-9
    w = 0.02 + 0.1 * torch.rand(3, 30, generator=g)
    b = numba_engine.get_binning(x)
    assert int(b.ncell.prod()) <= 4 * 5000 / numba_engine._POINTS_PER_CELL + 64
    assert _pair_count(x, c, w, 0.01) == int(support_mask_reference(x, c, w, 0.01).sum())


def test_optional_engine_is_not_imported_until_used():
    import subprocess
    import sys

    code = "import torch, sys, wandering._engine as e; print('triton' in sys.modules, e.ENGINES['triton'].available)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "False"  # listed (available or not) without importing Triton


def test_optional_triton_engine_listed_unavailable_without_triton(monkeypatch):
    import sys

    from wandering._engine import _registry

    monkeypatch.setitem(sys.modules, "triton", None)  # "import triton" raises ImportError
    monkeypatch.delitem(sys.modules, "wandering._engine._triton_engine", raising=False)
    e = _registry._optional_engine(
        "triton", "._triton_engine", "triton", ("cuda",), (torch.float32,), culls=True, priority=30
    )
    assert not e.available and "triton" in e.unavailable and e.forward is None
    assert not e.auto_supports(torch.device("cuda"), torch.float32)
