"""Save at step T, resume in a fresh process, reach bitwise the same step 2T as one run.

Noise included: gradient noise (noise_step) and parameter noise (param_noise_step)
both travel in the module's state_dict; Adam's moments in the optimizer's.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
import _resume_script as rs
import _training_problem as tp

# every engine, one and several outputs, axis-aligned and oriented bumps
pytestmark = pytest.mark.usefixtures("engine", "outputs", "shape")

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_resume_script.py")
SEED, T = 21, 12


def _run(*args):
    proc = subprocess.run([sys.executable, SCRIPT, *map(str, args)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_resume_in_a_fresh_process_is_bitwise_exact(tmp_path):
    ckpt, out = tmp_path / "ckpt.pt", tmp_path / "out.pt"
    _run("start", SEED, T, ckpt)
    _run("resume", T, ckpt, out)
    resumed = torch.load(out, weights_only=True)

    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        model, opt = rs.build()
        rs.run(model, opt, 2 * T)
    full = tp.params_of(model)

    assert set(resumed) == set(full)
    for k, v in full.items():
        assert torch.equal(resumed[k], v), k
    assert int(full["noise_step"]) == 2 * T and int(full["param_noise_step"]) == 2 * T
    # the checkpoint was a real midpoint, not the end
    mid = torch.load(ckpt, weights_only=True)["model"]
    assert int(mid["noise_step"]) == T and not torch.equal(mid["c"], full["c"])
