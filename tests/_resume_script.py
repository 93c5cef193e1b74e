"""Subprocess for test_resume: run a training segment from a seed or from a checkpoint.

python _resume_script.py start SEED STEPS CKPT      # fresh run, save a checkpoint
python _resume_script.py resume STEPS CKPT OUT      # fresh process, load, continue, save params
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _training_problem as tp

from wandering.nn.training import attach


def build():
    model = tp.make_model()
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    # hooks are not state: every process attaches them again
    attach(opt, model, **tp.param_noise())
    return model, opt


def run(model, opt, steps):
    x, y = tp.data()
    for _ in range(steps):
        tp.hooked_step(model, opt, x, y)


def main(argv):
    mode = argv[0]
    if mode == "start":
        seed, steps, ckpt = int(argv[1]), int(argv[2]), argv[3]
        torch.manual_seed(seed)
        model, opt = build()
        run(model, opt, steps)
        torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, ckpt)
    elif mode == "resume":
        steps, ckpt, out = int(argv[1]), argv[2], argv[3]
        torch.manual_seed(987654)  # the fresh process's generator is elsewhere
        torch.rand(17)
        model, opt = build()
        state = torch.load(ckpt, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        run(model, opt, steps)
        torch.save(tp.params_of(model), out)
    else:
        raise ValueError(f"mode must be 'start' or 'resume', but got {mode!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
