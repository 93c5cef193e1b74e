"""Keyed noise without GPU syncs: host mirrors of the key buffers (see wandering.nn._noise).

On the CPU a sync costs nothing, so these tests check the mechanism instead:
after the first draw, pert_grads and perturb_params never read a tensor into
Python (every such read is patched to raise), the numbers stay those of
``keyed_normal`` at the buffers' values, and every visible change to the
buffers is picked up.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from wandering import SlowSumOfBumpFcns, SumOfBumpFcns
from wandering.nn import _noise

C_STD, W_STD = 0.3, 0.2


def _model(seed=0, cls=SlowSumOfBumpFcns, dtype=torch.float64):
    torch.manual_seed(seed)
    d, K = 2, 6
    return cls(
        torch.rand(d, K),
        torch.full((d, K), 0.2),
        torch.randn(K),
        torch.tensor([[0.0, 1.0]] * d),
        torch.tensor([[0.05, 1.0]] * d),
        c_grad_std=C_STD,
        w_grad_std=W_STD,
        dtype=dtype,
    )


def _noise_of(model):
    """Gradient noise of one pert_grads call (zero gradients first) and parameter noise of one perturb_params."""
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    model.pert_grads()
    before = model.c.detach().clone()
    model.perturb_params(c_std=0.01)
    return model.c.grad.clone(), model.w.grad.clone(), model.c.detach() - before


def _expected(model, seed, step, pstep):
    c, w = model.c, model.w
    kn = _noise.keyed_normal
    return (
        kn(c.shape, seed, step, _noise.STREAM_C_GRAD, c.dtype, c.device) * C_STD,
        kn(w.shape, seed, step, _noise.STREAM_W_GRAD, w.dtype, w.device) * W_STD,
        kn(c.shape, seed, pstep, _noise.STREAM_C_PARAM, c.dtype, c.device),
    )


def _assert_noise(model, seed, step, pstep):
    got = _noise_of(model)
    want = _expected(model, seed, step, pstep)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    torch.testing.assert_close(got[2], want[2] * 0.01, rtol=1e-12, atol=1e-15)  # c + z*std - c: rounding


def _forbid_host_reads(monkeypatch):
    def refuse(self, *args, **kwargs):
        raise AssertionError("a tensor was read into Python (a GPU sync) in the noise hot path")

    for name in ("__int__", "__index__", "__float__", "__bool__", "item", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, refuse)


@pytest.mark.parametrize("cls", [SlowSumOfBumpFcns, SumOfBumpFcns])
def test_no_tensor_reads_after_the_first_draw(monkeypatch, cls):
    model = _model(cls=cls)
    seed = int(model.noise_seed)
    twin = copy.deepcopy(model)  # same key; its mirror starts empty
    _assert_noise(model, seed, 0, 0)  # first draw: reads the buffers once
    with monkeypatch.context() as mp:
        _forbid_host_reads(mp)
        got = [_noise_of(model) for _ in range(3)]
    for step, g in enumerate(got, start=1):
        want = _expected(model, seed, step, step)
        assert torch.equal(g[0], want[0]) and torch.equal(g[1], want[1])
    # the twin, reading its buffers on every first use, draws bitwise the same numbers
    twin_got = [_noise_of(twin) for _ in range(4)][1:]
    for a, b in zip(got, twin_got):
        assert all(torch.equal(x, y) for x, y in zip(a[:2], b[:2]))
    assert int(model.noise_step) == 4 and int(model.param_noise_step) == 4


def test_visible_buffer_changes_are_picked_up():
    model, other = _model(0), _model(1)
    seed = int(model.noise_seed)
    _assert_noise(model, seed, 0, 0)

    model.noise_step.fill_(7)  # in-place write
    _assert_noise(model, seed, 7, 1)

    for _ in range(3):
        _noise_of(other)
    model.load_state_dict(other.state_dict())  # resume from another module's key
    _assert_noise(model, int(other.noise_seed), 3, 3)

    model.noise_seed = torch.tensor(12345)  # a new tensor (same identity test as .to()/.cuda())
    _assert_noise(model, 12345, 4, 4)
    assert (int(model.noise_step), int(model.param_noise_step)) == (5, 5)


def test_mirror_is_not_pickled_or_deep_copied():
    model = _model()
    _noise_of(model)
    assert _noise._MIRROR in model.__dict__
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert _noise._MIRROR not in clone.__dict__
        assert torch.equal(clone.noise_step, model.noise_step)
        assert all(torch.equal(a, b) for a, b in zip(_noise_of(clone), _noise_of(copy.deepcopy(model))))


def test_draws_are_cast_on_the_host_as_the_device_would():
    z64 = _noise.keyed_normal((5, 7), 3, 4, 1, torch.float64, torch.device("cpu"))
    z32 = _noise.keyed_normal((5, 7), 3, 4, 1, torch.float32, torch.device("cpu"))
    assert torch.equal(z32, z64.to(torch.float32))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_draws_equal_cpu_draws_bitwise():
    for dtype in (torch.float32, torch.float64):
        cpu = _noise.keyed_normal((33, 5), 11, 2, 0, dtype, torch.device("cpu"))
        gpu = _noise.keyed_normal((33, 5), 11, 2, 0, dtype, torch.device("cuda"))
        assert torch.equal(gpu.cpu(), cpu)


def test_keys_and_draws_are_pinned():
    """The keyed noise is part of every saved run's future: these numbers must never change
    (values from the implementation that first shipped them)."""
    assert _noise.mix_key(3, 4, 1) == 7794642072196500690
    assert _noise.mix_key(-5, 2**40, 6) == 8048982139467767444
    assert _noise.mix_key(2**62 - 1, 0, 0) == 6915274289089138740
    for seed, step, stream in ((3, 4, 1), (-5, 2**40, 6), (2**62 - 1, 0, 0)):
        assert _noise.stream_key(_noise.step_key(seed, step), stream) == _noise.mix_key(seed, step, stream)
    z = _noise.keyed_normal((5,), 1, 2, 0, torch.float64, torch.device("cpu"))
    assert z.tolist() == [
        -0.06440932815871465,
        -0.37312849839810575,
        -2.4547717212279725,
        -0.4641569355275084,
        1.4082864778329593,
    ]
    z32 = _noise.keyed_normal((3, 100), 123456789, 17, 1, torch.float32, "cpu")
    assert z32.dtype == torch.float32
    assert z32[0, :3].tolist() == [1.2397502660751343, -1.9402061700820923, -0.5633957982063293]
