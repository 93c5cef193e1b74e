"""Compiles the triton engine's oriented kernels for an NVIDIA GPU (sm_90) without one.

The interpreter runs the kernels' Python, not Triton's compiler, so it lets through what
only the compiler refuses (types of mixed-precision expressions, shapes the layouts
cannot hold). ``triton.compile`` with an explicit target runs the whole pipeline down
to ptxas (bundled with triton) and needs no GPU. Run by test_triton_engine.py in a
subprocess with a fresh TRITON_CACHE_DIR, so every run compiles. Usage:

    python tests/_triton_compile.py

Prints one line per kernel (registers and spill stack per thread where cuobjdump, also
bundled, reports them) and ``all ok``; exits with "skip: ..." when this triton cannot
compile for NVIDIA targets here (another backend API or no ptxas).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile

import torch
import triton

from wandering._engine import _triton_engine as axis
from wandering._engine import _triton_oriented as oriented

try:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
except ImportError as exc:
    print(f"skip: this triton has no ahead-of-time compile API ({exc})")
    sys.exit(0)

TARGET = GPUTarget("cuda", 90, 32)
F64_BUFFERS = ("y64_ptr", "tz_ptr", "gu_ptr", "gm_ptr")  # the float64 sums (gm_ptr: only the params kernel has it)


def _signature(kernel, dtype: str, consts: dict) -> dict:
    sig = {}
    for name in kernel.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name == "idx_ptr":
            sig[name] = "*i64"
        elif name == "count_ptr":
            sig[name] = "*i32"
        elif name in F64_BUFFERS:
            sig[name] = "*fp64"
        elif name.endswith("_ptr"):
            sig[name] = "*" + dtype
        else:
            sig[name] = "i32"
    return sig


def _usage(compiled) -> str:
    """'REG/STACK' per thread from cuobjdump, or '?' where it cannot say."""
    tool = os.path.join(os.path.dirname(sys.modules["triton.backends.nvidia"].__file__), "bin", "cuobjdump")
    cubin = compiled.asm.get("cubin")
    if not cubin or not os.path.exists(tool):
        return "?"
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        out = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    finally:
        os.unlink(f.name)
    found = re.search(r"REG:(\d+).*?STACK:(\d+)", out, re.S)
    return f"{found[1]} registers, {found[2]} B stack" if found else "?"


def main() -> None:
    # Each ONE_CHUNK / CULL branch of each kernel, both dtypes, at d = 3 (a padded DP).
    cases = [  # (kernel, share, dtype, P, cull)
        (oriented._oriented_forward_kernel, oriented._FORWARD_SHARE, torch.float32, 1, True),
        (oriented._oriented_forward_kernel, oriented._FORWARD_SHARE, torch.float64, axis._MAX_BP + 1, False),
        (oriented._oriented_grad_x_kernel, oriented._BACKWARD_SHARE, torch.float32, 3, True),
        (oriented._oriented_grad_params_kernel, oriented._BACKWARD_SHARE, torch.float64, 1, True),
        (oriented._oriented_grad_params_kernel, oriented._BACKWARD_SHARE, torch.float32, axis._MAX_BP + 1, False),
    ]
    d = 3
    for kernel, share, dtype, P, cull in cases:
        cfg = axis._config(d, P, dtype, share)
        consts = dict(D=d, DP=cfg.DP, BN=cfg.BN, BK=cfg.BK, BP=cfg.BP, CULL=cull)
        if "ONE_CHUNK" in kernel.arg_names:
            consts["ONE_CHUNK"] = P <= cfg.BP
        if "COUNT" in kernel.arg_names:
            consts["COUNT"] = False
        fdt = {torch.float32: "fp32", torch.float64: "fp64"}[dtype]
        try:
            src = ASTSource(
                fn=kernel, signature=_signature(kernel, fdt, consts),
                constexprs={(kernel.arg_names.index(k),): v for k, v in consts.items()},
            )  # fmt: skip
        except TypeError as exc:
            print(f"skip: this triton's ASTSource takes other arguments ({exc})")
            return
        try:
            compiled = triton.compile(src, target=TARGET)
        except FileNotFoundError as exc:  # no ptxas in this install
            print(f"skip: cannot compile for {TARGET} here ({exc})")
            return
        print(f"ok {kernel.fn.__name__} {str(dtype)[6:]} P={P} cull={cull}: {_usage(compiled)}")
    print("all ok")


if __name__ == "__main__":
    main()
