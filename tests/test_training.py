"""Training helpers: module discovery, perturb/bound, optimizer hooks, GradScaler,
gradient accumulation and clipping, parameter noise, reproducibility, errors."""

from __future__ import annotations

import copy
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
import _training_problem as tp

from wandering import BumpFcn, SlowSumOfBumpFcns, WanderingModule
from wandering.nn.training import (
    WanderingHooks,
    attach,
    bound_params,
    perturb_grads,
    perturb_params,
    wandering_modules,
)

# Every test here runs once per engine (see conftest.engine).
pytestmark = pytest.mark.usefixtures("engine")


class CountingWanderer(WanderingModule):
    """A user subclass: counts calls, no perturb_params."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.zeros(3))
        self.n_bound = 0
        self.n_pert = 0

    def forward(self, x):
        return x @ self.a

    def bound(self):
        self.n_bound += 1

    def pert_grads(self):
        self.n_pert += 1


def two_module_net(seed=0):
    torch.manual_seed(seed)
    inner = tp.make_model()
    net = torch.nn.ModuleDict({"a": torch.nn.Sequential(torch.nn.Identity(), inner), "b": tp.make_model()})
    net.shared = inner  # the same module reachable twice must be perturbed once
    return net


def net_forward(net, x):
    return net["a"](x) + net["b"](x)


# -- discovery and the plain helpers -----------------------------------------------------


def test_wandering_modules_finds_nested_user_subclasses_once():
    net = two_module_net()
    user = CountingWanderer()
    net.user = user
    mods = wandering_modules(net)
    assert len(mods) == 3
    assert net["a"][1] in mods and net["b"] in mods and user in mods
    assert wandering_modules(net["b"]) == [net["b"]]  # the root itself counts


def test_perturb_grads_and_bound_params_match_the_seed_calls():
    net = two_module_net()
    ref = copy.deepcopy(net)  # same parameters and noise seeds
    x, y = tp.data()
    for model in (net, ref):
        ((net_forward(model, x) - y) ** 2).mean().backward()
    assert perturb_grads(net) == 2
    for mod in (ref["a"][1], ref["b"]):
        mod.pert_grads()
    for p, q in zip(net.parameters(), ref.parameters()):
        assert torch.equal(p.grad, q.grad)
    with torch.no_grad():
        for model in (net, ref):
            for p in model.parameters():
                p.add_(5.0)  # push out of bounds
    assert bound_params(net) == 2
    for mod in (ref["a"][1], ref["b"]):
        mod.bound()
    for p, q in zip(net.parameters(), ref.parameters()):
        assert torch.equal(p, q)
    assert float(net["b"].c.detach().max()) == 1.0


def test_user_subclass_is_called():
    user = CountingWanderer()
    perturb_grads(user)
    bound_params(user)
    assert (user.n_pert, user.n_bound) == (1, 1)


# -- optimizer hooks ---------------------------------------------------------------------


@pytest.mark.parametrize("opt_cls", [torch.optim.SGD, torch.optim.Adam])
def test_attach_equals_the_seed_loop_bitwise(opt_cls):
    torch.manual_seed(3)
    model = tp.make_model()
    ref = copy.deepcopy(model)
    x, y = tp.data()
    opt = opt_cls(model.parameters(), lr=0.05)
    opt_ref = opt_cls(ref.parameters(), lr=0.05)
    hooks = attach(opt, model)
    assert isinstance(hooks, WanderingHooks) and hooks.modules == [model]
    for _ in range(10):
        tp.hooked_step(model, opt, x, y)
        tp.seed_loop_step(ref, opt_ref, x, y)
    for k, v in tp.params_of(model).items():
        assert torch.equal(v, tp.params_of(ref)[k]), k
    assert int(model.noise_step) == 10


def test_remove_detaches_both_hooks():
    torch.manual_seed(0)
    model = tp.make_model()
    x, y = tp.data()
    opt = torch.optim.SGD(model.parameters(), lr=100.0)  # a huge step leaves bounds
    with attach(opt, model) as hooks:
        tp.hooked_step(model, opt, x, y)
        assert int(model.noise_step) == 1 and float(model.c.detach().max()) <= 1.0
    assert not hooks.attached
    hooks.remove()  # idempotent
    tp.hooked_step(model, opt, x, y)
    assert int(model.noise_step) == 1  # no pre-hook any more
    assert float(model.c.detach().abs().max()) > 1.0  # no bound any more


def test_attach_hooks_only_modules_in_the_optimizer():
    net = two_module_net()
    opt_a = torch.optim.SGD(net["a"].parameters(), lr=0.01)
    opt_b = torch.optim.SGD(net["b"].parameters(), lr=0.01)
    ha, hb = attach(opt_a, net), attach(opt_b, net)
    assert ha.modules == [net["a"][1]] and hb.modules == [net["b"]]
    x, y = tp.data()
    opt_a.zero_grad()
    opt_b.zero_grad()
    ((net_forward(net, x) - y) ** 2).mean().backward()
    opt_a.step()
    assert (int(net["a"][1].noise_step), int(net["b"].noise_step)) == (1, 0)
    opt_b.step()
    assert (int(net["a"][1].noise_step), int(net["b"].noise_step)) == (1, 1)


def test_gradient_accumulation_perturbs_once_per_step():
    torch.manual_seed(1)
    model = tp.make_model()
    ref = copy.deepcopy(model)
    x, y = tp.data()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.05)
    attach(opt, model)
    chunks = list(zip(x.chunk(4), y.chunk(4)))
    for _ in range(5):
        for m, o in ((model, opt), (ref, opt_ref)):
            o.zero_grad()
            for xb, yb in chunks:
                (tp.loss_fn(m, xb, yb) / len(chunks)).backward()
        opt.step()
        ref.pert_grads()  # after the last micro-batch
        opt_ref.step()
        ref.bound()
    assert int(model.noise_step) == 5
    for k, v in tp.params_of(model).items():
        assert torch.equal(v, tp.params_of(ref)[k]), k


def test_clipping_happens_before_the_noise():
    torch.manual_seed(2)
    model = tp.make_model(c_grad_std=10.0)
    ref = copy.deepcopy(model)
    x, y = tp.data()
    seen = {}
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    attach(opt, model)
    opt.register_step_pre_hook(lambda o, a, k: seen.update(c_grad=model.c.grad.clone()))  # runs after ours
    opt.zero_grad()
    tp.loss_fn(model, x, y).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1e-3)
    opt.step()
    # the seed order by hand: clip, then pert_grads
    tp.loss_fn(ref, x, y).backward()
    torch.nn.utils.clip_grad_norm_(ref.parameters(), max_norm=1e-3)
    ref.pert_grads()
    assert torch.equal(seen["c_grad"], ref.c.grad)
    assert float(seen["c_grad"].norm()) > 1.0  # the noise itself was not clipped


def test_grad_scaler_unscales_before_the_noise():
    torch.manual_seed(4)
    model = tp.make_model(dtype=torch.float32)
    ref = copy.deepcopy(model)
    x, y = (t.float() for t in tp.data())
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.05)
    attach(opt, model)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    assert scaler.is_enabled()
    for _ in range(5):
        opt.zero_grad()
        scaler.scale(tp.loss_fn(model, x, y)).backward()
        scaler.step(opt)
        scaler.update()
        tp.seed_loop_step(ref, opt_ref, x, y)
    # noise added to scaled gradients would be divided by 4096 and leave a visible gap
    for k, v in tp.params_of(model).items():
        torch.testing.assert_close(v, tp.params_of(ref)[k], rtol=1e-6, atol=1e-6)


def test_grad_scaler_skipped_step_draws_no_noise():
    torch.manual_seed(5)
    model = tp.make_model(dtype=torch.float32)
    ref = copy.deepcopy(model)
    x, y = (t.float() for t in tp.data())
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.05)
    attach(opt, model)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    before = tp.params_of(model)
    opt.zero_grad()
    scaler.scale(tp.loss_fn(model, x, y)).backward()
    model.c.grad[0, 0] = float("inf")  # an overflow: the scaler must skip this step
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == 2.0**11
    after = tp.params_of(model)
    for k in before:
        assert torch.equal(before[k], after[k]), k  # no noise, no step, counter unchanged
    # the next real step draws the noise the first step would have drawn
    opt.zero_grad()
    scaler.scale(tp.loss_fn(model, x, y)).backward()
    scaler.step(opt)
    scaler.update()
    tp.seed_loop_step(ref, opt_ref, x, y)
    for k, v in tp.params_of(model).items():
        torch.testing.assert_close(v, tp.params_of(ref)[k], rtol=1e-6, atol=1e-6)


# -- parameter noise -----------------------------------------------------------------------


def test_perturb_params_is_keyed_and_ignores_the_global_generator():
    torch.manual_seed(6)
    a = tp.make_model()
    b = copy.deepcopy(a)
    perturb_params(a, c_std=0.1, w_std=0.01, m_std=0.2, bound=False)
    torch.rand(100)  # moving the global generator must not matter
    perturb_params(b, c_std=0.1, w_std=0.01, m_std=0.2, bound=False)
    for k, v in tp.params_of(a).items():
        assert torch.equal(v, tp.params_of(b)[k]), k
    assert int(a.param_noise_step) == 1
    c0 = a.c.detach().clone()
    perturb_params(a, c_std=0.1, bound=False)
    assert not torch.equal(a.c, c0)  # the counter moved: fresh draws


def test_perturb_params_size_and_independence_from_grad_noise():
    torch.manual_seed(7)
    big = SlowSumOfBumpFcns(torch.zeros(2, 5000), torch.ones(2, 5000), torch.zeros(5000), None, None, 0.3, 0.0)
    ref = copy.deepcopy(big)
    perturb_params(big, c_std=0.25)
    assert abs(float(big.c.detach().std()) - 0.25) < 0.01
    assert torch.equal(big.w, ref.w) and torch.equal(big.m, ref.m)
    # gradient noise keeps its own sequence whether or not parameter noise was drawn
    big.pert_grads()
    ref.pert_grads()
    assert torch.equal(big.c.grad, ref.c.grad)
    assert int(big.noise_step) == 1


def test_perturb_params_bounds_after_the_noise():
    torch.manual_seed(8)
    model = tp.make_model()
    perturb_params(model, c_std=10.0, w_std=10.0)
    assert float(model.c.detach().min()) >= 0.0 and float(model.c.detach().max()) <= 1.0
    assert float(model.w.detach().min()) >= 0.05 and float(model.w.detach().max()) <= 0.6


def test_attach_with_param_noise_matches_manual_order():
    torch.manual_seed(9)
    model = tp.make_model()
    ref = copy.deepcopy(model)
    x, y = tp.data()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    opt_ref = torch.optim.Adam(ref.parameters(), lr=0.01)
    attach(opt, model, pert_grads=False, param_c_std=0.01, param_w_std=0.005)
    for _ in range(5):
        tp.hooked_step(model, opt, x, y)
        opt_ref.zero_grad()
        tp.loss_fn(ref, x, y).backward()
        opt_ref.step()
        perturb_params(ref, c_std=0.01, w_std=0.005)
    for k, v in tp.params_of(model).items():
        assert torch.equal(v, tp.params_of(ref)[k]), k
    assert int(model.noise_step) == 0 and int(model.param_noise_step) == 5


def test_adam_rescales_gradient_noise_but_not_parameter_noise():
    # With no data gradient, Adam's first step moves every entry by ~lr whatever the noise std...
    steps = []
    for std in (1e-4, 1e2):
        torch.manual_seed(10)
        f = SlowSumOfBumpFcns(torch.zeros(1, 2000), torch.ones(1, 2000), torch.zeros(2000), None, None, std, 0.0)
        opt = torch.optim.Adam(f.parameters(), lr=0.01)
        c0 = f.c.detach().clone()
        f.pert_grads()
        opt.step()
        steps.append(float((f.c.detach() - c0).abs().mean()))
    assert steps[0] == pytest.approx(steps[1], rel=1e-3)
    assert steps[0] == pytest.approx(0.01, rel=1e-3)
    # ...while parameter noise moves each entry by its own std, through the same Adam loop.
    for std in (1e-4, 1e-1):
        torch.manual_seed(10)
        f = SlowSumOfBumpFcns(torch.zeros(1, 2000), torch.ones(1, 2000), torch.zeros(2000), None, None)
        opt = torch.optim.Adam(f.parameters(), lr=0.01)
        attach(opt, f, pert_grads=False, param_c_std=std)
        c0 = f.c.detach().clone()
        f.c.grad = torch.zeros_like(f.c)  # no data gradient
        opt.step()
        moved = (f.c.detach() - c0).flatten()
        assert float(moved.std()) == pytest.approx(std, rel=0.05)  # 2000 draws: ~1.6% sampling error


def test_parameter_noise_resumes_through_state_dict():
    torch.manual_seed(11)
    a = tp.make_model()
    perturb_params(a, c_std=0.05)
    sd = a.state_dict()
    assert "param_noise_step" in sd
    torch.manual_seed(99)
    b = tp.make_model()
    assert int(b.param_noise_step) == 0
    b.load_state_dict(sd)
    assert int(b.param_noise_step) == 1
    perturb_params(a, c_std=0.05)
    perturb_params(b, c_std=0.05)
    assert torch.equal(a.c, b.c)


# -- reproducibility -----------------------------------------------------------------------


def run_from_seed(seed, steps=15):
    torch.manual_seed(seed)
    model = tp.make_model()
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    attach(opt, model, param_c_std=0.01)
    x, y = tp.data()
    for _ in range(steps):
        tp.hooked_step(model, opt, x, y)
    return tp.params_of(model)


def test_a_run_reproduces_from_one_seed():
    a, b, c = run_from_seed(0), run_from_seed(0), run_from_seed(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["c"], c["c"])


# -- errors ----------------------------------------------------------------------------------


def test_errors_name_the_argument():
    torch.manual_seed(0)
    model = tp.make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, but got list"):
        wandering_modules([model])
    with pytest.raises(ValueError, match="model must contain at least one WanderingModule.*Linear"):
        perturb_grads(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="at least one WanderingModule"):
        bound_params(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer, but got dict"):
        attach({"lr": 0.1}, model)
    other = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(ValueError, match="optimizer must hold parameters of at least one WanderingModule"):
        attach(other, model)
    with pytest.raises(ValueError, match="param_c_std must be >= 0 and finite, but got -1.0"):
        attach(opt, model, param_c_std=-1.0)
    with pytest.raises(TypeError, match="pert_grads must be a bool, but got int"):
        attach(opt, model, pert_grads=1)
    with pytest.raises(TypeError, match="c_std must be a non-negative float, but got str"):
        perturb_params(model, c_std="0.1")
    with pytest.raises(ValueError, match="w_std must be >= 0 and finite, but got nan"):
        perturb_params(model, w_std=float("nan"))
    user = CountingWanderer()
    with pytest.raises(TypeError, match="perturb_params.*CountingWanderer"):
        perturb_params(user, c_std=0.1)
    with pytest.raises(TypeError, match="perturb_params.*CountingWanderer"):
        attach(torch.optim.SGD(user.parameters(), lr=0.1), user, param_c_std=0.1)
    attach(torch.optim.SGD(user.parameters(), lr=0.1), user)  # gradient noise alone is fine
    with pytest.raises(ValueError, match="c_std must be >= 0 and finite, but got -1.0"):
        BumpFcn(torch.zeros(1), torch.ones(1), 1.0).perturb_params(c_std=-1.0)


# -- misuse: loud, never silent ---------------------------------------------------------


def test_frozen_parameters_get_no_noise_even_in_an_attached_optimizer():
    torch.manual_seed(0)
    model = tp.make_model()
    _x, _y = tp.data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    attach(opt, model, param_c_std=0.1, param_w_std=0.1, param_m_std=0.1)
    model.requires_grad_(False)  # frozen, but still in the optimizer
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(3):
        opt.zero_grad()
        opt.step()
    for p, b in zip(model.parameters(), before):
        assert p.grad is None
        assert torch.equal(p.detach(), b)
    model.c.requires_grad_(True)  # only c thaws: only c moves
    opt.step()
    assert not torch.equal(model.c.detach(), before[0])
    assert torch.equal(model.w.detach(), before[1]) and torch.equal(model.m.detach(), before[2])


def test_attach_twice_is_refused_and_allowed_again_after_remove():
    torch.manual_seed(0)
    model = tp.make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    hooks = attach(opt, model)
    with pytest.raises(
        ValueError, match=r"SlowSumOfBumpFcns must be attached once, but it is already attached to this optimizer"
    ):
        attach(opt, model)
    hooks.remove()
    attach(opt, model).remove()


def test_one_module_split_over_two_attached_optimizers_is_refused():
    torch.manual_seed(0)
    model = tp.make_model()
    opt_cw = torch.optim.SGD([model.c, model.w], lr=0.1)
    opt_m = torch.optim.Adam([model.m], lr=0.1)
    attach(opt_cw, model)
    with pytest.raises(
        ValueError, match=r"already attached to another optimizer, so its noise would be added twice per step"
    ):
        attach(opt_m, model)


def test_a_dropped_optimizer_releases_its_modules():
    import gc

    torch.manual_seed(0)
    model = tp.make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    attach(opt, model)
    del opt
    gc.collect()
    attach(torch.optim.SGD(model.parameters(), lr=0.1), model)  # no error: the old hooks are gone
