"""The triton engine, checked on the CPU through Triton's interpreter.

The interpreter is switched on by ``TRITON_INTERPRET=1``, which Triton and the
engine read when they are imported; this pytest process imported wandering
already, so every check runs in a fresh subprocess with the variable set
(tests/_triton_check.py, and the GPU benchmark's ``--tiny`` mode). The oriented
kernels are also compiled for an NVIDIA target, which needs no GPU (tests/_triton_compile.py).
Skipped when triton is not installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TIMEOUT_S = 300


def _run(*args: str, interpret: bool = True, **env_vars: str) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", **env_vars)
    env["TRITON_INTERPRET"] = "1" if interpret else "0"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p)
    env.pop("WANDERING_BACKEND", None)
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    return proc.stdout


def test_cpu_tensors_refused_without_the_interpreter():
    import torch

    from wandering import bump_sum
    from wandering._engine import ENGINES, resolve_backend

    if "cpu" in ENGINES["triton"].devices:
        pytest.skip("this process runs under TRITON_INTERPRET=1")
    x = torch.rand(100, 2)
    with pytest.raises(ValueError, match="backend 'triton' needs .* on cuda"):
        bump_sum(x, torch.rand(2, 5), torch.full((2, 5), 0.3), torch.ones(5), backend="triton")
    assert resolve_backend("auto", torch.empty(10**5, 3), 64) == "numba"


@pytest.mark.parametrize("group", ["parity-f32", "parity-f64", "op-module", "oriented-f32", "oriented-f64"])
def test_triton_engine_under_interpreter(group):
    out = _run(str(HERE / "_triton_check.py"), group)
    assert out.rstrip().endswith("all ok"), out


def test_gpu_benchmark_runs_tiny_under_interpreter():
    out = _run(str(ROOT / "benchmarks" / "bench_gpu.py"), "--tiny", "--device", "cpu")
    for case in ("dense P=1", "dense P=16", "culled", "training step"):
        assert case in out, out
    assert "triton" in out and "torch" in out, out


def test_oriented_kernels_compile_for_a_gpu_target(tmp_path):
    # Triton's compiler, down to ptxas, for sm_90: no GPU needed; a fresh cache, so it compiles.
    out = _run(str(HERE / "_triton_compile.py"), interpret=False, TRITON_CACHE_DIR=str(tmp_path))
    if out.startswith("skip:"):
        pytest.skip(out.strip())
    assert out.rstrip().endswith("all ok"), out
