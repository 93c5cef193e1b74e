"""A small fitting problem shared by the training, DDP and resume tests (and their subprocesses).

Data come from a private generator, never the global one, so every process builds
the same points however its global generator has been used.
"""

from __future__ import annotations

import os

import torch

from wandering import SlowOrientedSumOfBumpFcns, SlowSumOfBumpFcns

N_POINTS = 64
K = 6
D = 2
# Number of outputs P (m of shape (K, P)); unset means m of shape (K,). An environment
# variable so that the DDP and resume subprocesses build the same problem as the test.
OUTPUTS_ENV = "WANDERING_TEST_OUTPUTS"
# "oriented" builds SlowOrientedSumOfBumpFcns (random angles, angle noise); unset: the seed's module.
SHAPE_ENV = "WANDERING_TEST_SHAPE"


def n_outputs() -> int | None:
    value = os.environ.get(OUTPUTS_ENV, "")
    return int(value) if value else None


def data(dtype=torch.float64):
    gen = torch.Generator().manual_seed(1234)
    x = torch.rand(N_POINTS, D, generator=gen, dtype=dtype)
    y = torch.sin(3 * x[:, 0]) * torch.cos(2 * x[:, 1])
    P = n_outputs()
    if P is not None:
        y = torch.stack([y * (1 + p) + 0.1 * p * x[:, 1] for p in range(P)], dim=1)
    return x, y


def make_model(dtype=torch.float64, c_grad_std=0.05, w_grad_std=0.02, m_grad_gain=0.01):
    """A sum of bumps whose parameters (and noise seed) come from the global generator."""
    c = torch.rand(D, K, dtype=dtype)
    w = 0.2 + 0.2 * torch.rand(D, K, dtype=dtype)
    P = n_outputs()
    m = torch.randn(K, dtype=dtype) if P is None else torch.randn(K, P, dtype=dtype)
    bounds_c = torch.tensor([[0.0, 1.0]] * D, dtype=dtype)
    bounds_w = torch.tensor([[0.05, 0.6]] * D, dtype=dtype)
    if os.environ.get(SHAPE_ENV, "") == "oriented":
        angles = torch.rand(1, K, dtype=dtype) * 3.0
        return SlowOrientedSumOfBumpFcns(c, w, m, bounds_c, bounds_w, c_grad_std, w_grad_std, m_grad_gain, 0.01,
                                         angles=angles, angle_grad_std=0.03)  # fmt: skip
    return SlowSumOfBumpFcns(c, w, m, bounds_c, bounds_w, c_grad_std, w_grad_std, m_grad_gain, 0.01)


def param_noise() -> dict:
    """The parameter-noise settings the DDP and resume tests attach (angles too when oriented)."""
    stds = dict(param_c_std=0.01, param_w_std=0.002)
    if os.environ.get(SHAPE_ENV, "") == "oriented":
        stds["param_angle_std"] = 0.01
    return stds


def loss_fn(model, x, y):
    return ((model(x) - y) ** 2).mean()


def seed_loop_step(model, opt, x, y, modules=None):
    """One step of the seed's loop: backward, pert_grads, step, bound."""
    modules = [model] if modules is None else modules
    opt.zero_grad()
    loss_fn(model, x, y).backward()
    for mod in modules:
        mod.pert_grads()
    opt.step()
    for mod in modules:
        mod.bound()


def hooked_step(model, opt, x, y):
    """One step with the noise and bounds done by hooks attached to ``opt``."""
    opt.zero_grad()
    loss_fn(model, x, y).backward()
    opt.step()


def params_of(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
