"""Time the Numba engine's multi-output kernels (forward + backward, float32).

For each case and thread count it prints every run, then the median (and the
minimum, which resists load from other processes) over repeats of
forward+backward for P = 1 and P = 16, the ratio P=16 / P=1 and, with
``--baseline-dir``, the same-run ratio against an older single-output engine
(a directory holding that version's ``_kernels.py`` and ``_numba_engine.py``,
e.g. from ``git show <rev>:src/wandering/_engine/_kernels.py``). Measurements
of old and new are interleaved per repeat, so drift on a shared machine hits
both alike. Each repeat shifts the centres slightly, so like a training step
the forward registers the bumps afresh and the backward reuses that plan.

    PYTHONPATH=src python benchmarks/bench_multi_output.py
    PYTHONPATH=src python benchmarks/bench_multi_output.py --baseline-dir /tmp/old --threads 1 2
    PYTHONPATH=src python benchmarks/bench_multi_output.py --rss-only   # peak RSS of culled P=16
    PYTHONPATH=src python benchmarks/bench_multi_output.py --public     # the issue's table, through bump_sum
    PYTHONPATH=src python benchmarks/bench_multi_output.py --public --P 1 16 64 --clock cpu   # + P=64; CPU time

``--public`` times the user's path, ``wandering.bump_sum`` forward + backward with
c, w, m requiring grad: m of shape (K,), (K, 1) and (K, 16), and 16 separate (K,)
sums (what P single-output modules cost), with the ratios the README quotes; ``--P`` adds
(K, P) columns (e.g. 64). ``--clock cpu`` times by process CPU time, for a busy machine.

Peak RSS of the culled P=16 run is measured in a separate process
(``resource.getrusage`` maxrss), next to that process's RSS after imports and
compilation.
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import time

_clock = time.perf_counter  # --clock cpu: process CPU time (all threads), steadier on a shared machine

# name: (n_smps, K, d, (w_lo, w_hi), support_p or None)
CASES = {
    "culled": (1_000_000, 1024, 3, (0.02, 0.06), 0.01),
    "dense": (200_000, 1024, 3, (0.2, 0.6), None),
}


def _inputs(case: str, P_max: int, seed: int = 0):
    import torch

    n, K, d, (w_lo, w_hi), support_p = CASES[case]
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, d, generator=g)
    c = torch.rand(d, K, generator=g)
    w = w_lo + (w_hi - w_lo) * torch.rand(d, K, generator=g)
    m = torch.randn(K, P_max, generator=g)
    gy = torch.randn(n, P_max, generator=g)
    if support_p is None:
        half = torch.full_like(w, math.inf)
    else:
        half = math.sqrt(-math.log(support_p)) * w.abs()
    return x, c, w, m, gy, half, support_p is not None


def _new_step(eng, x, c, w, m, gy, half, cull):
    eng.forward(x, c, w, m, half, cull)
    eng.backward(gy, x, c, w, m, half, cull, False)


def _old_step(old, x, c, w, m, gy, half, cull):
    cr, wr, mr = (t.clone().requires_grad_() for t in (c, w, m[:, 0]))
    y = old.bump_sum_numba(x, cr, wr, mr, half if cull else None, cull)
    y.backward(gy[:, 0])


def _timed(fn, *args) -> float:
    t0 = _clock()
    fn(*args)
    return _clock() - t0


def run_case(case, threads, Ps, repeats, eng, old):
    import numba
    import torch

    numba.set_num_threads(threads)
    torch.set_num_threads(threads)
    x, c, w, m_all, gy_all, half, cull = _inputs(case, max(Ps))
    ms = {P: m_all[:, :P].contiguous() for P in Ps}
    gys = {P: gy_all[:, :P].contiguous() for P in Ps}
    # Warm-up: compilation and the binning of x (cached by both engines).
    for P in Ps:
        _new_step(eng, x, c, w, ms[P], gys[P], half, cull)
    if old is not None:
        _old_step(old, x, c, w, ms[1], gys[1], half, cull)
    times: dict[str, list[float]] = {}
    for r in range(repeats):
        cr = c + (r + 1) * 1e-6  # fresh centres: the culling plan is rebuilt once per step
        if old is not None:
            times.setdefault("old P=1", []).append(_timed(_old_step, old, x, cr, w, ms[1], gys[1], half, cull))
        for P in Ps:
            times.setdefault(f"new P={P}", []).append(_timed(_new_step, eng, x, cr, w, ms[P], gys[P], half, cull))
    return times


def run_public(case, threads, repeats, extra_Ps=()):
    import numba
    import torch

    from wandering import bump_sum

    numba.set_num_threads(threads)
    torch.set_num_threads(threads)
    x, c, w, m_all, gy_all, _, _ = _inputs(case, max(16, *extra_Ps))
    support_p = CASES[case][4]
    layouts = {
        "(K,)": (m_all[:, 0].contiguous(), gy_all[:, 0].contiguous()),
        "(K,1)": (m_all[:, :1].contiguous(), gy_all[:, :1].contiguous()),
        "(K,16)": (m_all[:, :16].contiguous(), gy_all[:, :16].contiguous()),
    }
    for P in extra_Ps:
        layouts[f"(K,{P})"] = (m_all[:, :P].contiguous(), gy_all[:, :P].contiguous())

    def step(cr, m, gy):
        cr = cr.clone().requires_grad_()
        wr, mr = w.clone().requires_grad_(), m.clone().requires_grad_()
        bump_sum(x, cr, wr, mr, support_p=support_p).backward(gy)

    def sixteen(cr):
        for p in range(16):
            step(cr, m_all[:, p].contiguous(), gy_all[:, p].contiguous())

    for m, gy in layouts.values():  # warm-up: compilation, binning
        step(c, m, gy)
    times: dict[str, list[float]] = {}
    for r in range(repeats):
        cr = c + (r + 1) * 1e-6  # fresh centres, as after an optimizer step
        for name, (m, gy) in layouts.items():
            times.setdefault(name, []).append(_timed(step, cr, m, gy))
        times.setdefault("16 x (K,)", []).append(_timed(sixteen, cr))
    return times


def _vm(field: str) -> float:
    """A /proc/self/status memory field in MiB (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss_child(case: str, P: int) -> None:
    """Print peak RSS (getrusage maxrss) of one fwd+bwd of the case, P outputs.

    Compiling or loading the kernels from numba's cache has its own transient peak, so
    the high-water mark is reset (Linux: /proc/self/clear_refs) after a tiny warm-up
    run; both the whole-process and the post-reset peaks are printed."""
    import resource

    import torch

    from wandering._engine import _numba_engine as eng

    xs, cs, ws, ms, gs, hs = (
        torch.rand(300, 3), torch.rand(3, 8), torch.full((3, 8), 0.1), torch.randn(8, P), torch.randn(300, P),
        torch.full((3, 8), 0.2),
    )  # fmt: skip
    for cull in (True, False):
        _new_step(eng, xs, cs, ws, ms, gs, hs, cull)
    whole = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        reset = True
    except OSError:
        reset = False
    base = _vm("VmRSS")
    x, c, w, m, gy, half, cull = _inputs(case, P)
    with_inputs = _vm("VmRSS")
    _new_step(eng, x, c, w, m, gy, half, cull)
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"rss {case} P={P}: whole-process maxrss before the run {whole:.0f} MiB (compile/cache load)")
    if reset:
        # getrusage also keeps the peak of exited threads (e.g. numba's compile), which the reset
        # does not clear; VmHWM is the reset high-water mark of this run alone.
        hwm = _vm("VmHWM")
        print(f"rss {case} P={P}: RSS after warm-up {base:.0f} MiB, with inputs {with_inputs:.0f} MiB, "
              f"peak during fwd+bwd {hwm:.0f} MiB (VmHWM; getrusage maxrss {maxrss:.0f} MiB), "
              f"i.e. {hwm - with_inputs:.0f} MiB above inputs")  # fmt: skip
    else:
        print(f"rss {case} P={P}: maxrss {maxrss:.0f} MiB (could not reset the high-water mark)")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline-dir", help="directory with an older _kernels.py and _numba_engine.py (P=1 only)")
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--P", nargs="+", type=int, default=[1, 16], dest="Ps")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rss-only", action="store_true", help="only the peak-RSS measurement")
    ap.add_argument("--no-rss", action="store_true", help="skip the peak-RSS measurement")
    ap.add_argument("--public", action="store_true", help="the user's path (bump_sum) for (K,), (K,1), (K,16), 16x(K,)")
    ap.add_argument("--rss-child", nargs=2, metavar=("CASE", "P"), help=argparse.SUPPRESS)
    ap.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall",
        help="cpu: time by process CPU time (all threads together), which other jobs on a busy machine disturb less",
    )  # fmt: skip
    args = ap.parse_args(argv)
    global _clock
    _clock = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.rss_child:
        rss_child(args.rss_child[0], int(args.rss_child[1]))
        return
    if args.public:
        extra = [P for P in args.Ps if P not in (1, 16)]
        rows = [(case, nt, run_public(case, nt, args.repeats, extra)) for case in args.cases for nt in args.threads]
        for label, stat in (("medians", statistics.median), ("minima", min)):
            print(f"\nbump_sum forward+backward, float32, {label} of {args.repeats} runs, ms")
            print(f"{'case':7s} {'thr':>3s} {'(K,)':>9s} {'(K,1)':>9s} {'(K,16)':>9s} {'16x(K,)':>9s} "
                  f"{'(K,1)/(K,)':>10s} {'P16/P1':>7s} {'16 sums/P16':>11s}"
                  + "".join(f" {f'(K,{P})':>9s} {f'P{P}/P1':>7s}" for P in extra))  # fmt: skip
            for case, nt, raw in rows:
                t = {k: stat(v) * 1e3 for k, v in raw.items()}
                print(f"{case:7s} {nt:3d} {t['(K,)']:9.1f} {t['(K,1)']:9.1f} {t['(K,16)']:9.1f} {t['16 x (K,)']:9.1f} "
                      f"{t['(K,1)'] / t['(K,)']:10.3f} {t['(K,16)'] / t['(K,)']:7.2f} "
                      f"{t['16 x (K,)'] / t['(K,16)']:11.2f}"
                      + "".join(f" {t[f'(K,{P})']:9.1f} {t[f'(K,{P})'] / t['(K,)']:7.2f}" for P in extra),
                      flush=True)  # fmt: skip
        args.rss_only = True
    if not args.rss_only:
        from bench_engine import _load_baseline  # the one loader of an older engine (same folder)

        from wandering._engine import _numba_engine as eng

        old = _load_baseline(args.baseline_dir) if args.baseline_dir else None
        if 1 not in args.Ps:
            args.Ps = [1, *args.Ps]
        rows = []
        for case in args.cases:
            for nt in args.threads:
                raw = run_case(case, nt, args.Ps, args.repeats, eng, old)
                for k, v in raw.items():
                    print(f"{case:7s} threads={nt} {k:9s} runs: " + " ".join(f"{t * 1e3:.1f}" for t in v), flush=True)
                rows.append((case, nt, raw))
        # Medians are the headline; minima are printed too, as they resist load from other processes.
        for label, stat in (("medians", statistics.median), ("minima", min)):
            print(f"\n{label} of {args.repeats} forward+backward runs, float32, ms")
            head = f"{'case':7s} {'thr':>3s} " + ("{:>10s} ".format("old P=1") if old else "")
            head += " ".join(f"{'new P=' + str(P):>10s}" for P in args.Ps)
            head += ("  {:>9s}".format("new/old") if old else "") + "".join(
                f"  {'P' + str(P) + '/P1':>8s}" for P in args.Ps if P != 1
            )
            print(head)
            for case, nt, raw in rows:
                med = {k: stat(v) for k, v in raw.items()}
                line = f"{case:7s} {nt:3d} " + (f"{med['old P=1'] * 1e3:10.1f} " if old else "")
                line += " ".join(f"{med[f'new P={P}'] * 1e3:10.1f}" for P in args.Ps)
                if old:
                    line += f"  {med['new P=1'] / med['old P=1']:9.3f}"
                line += "".join(f"  {med[f'new P={P}'] / med['new P=1']:8.2f}" for P in args.Ps if P != 1)
                print(line, flush=True)
    if not args.no_rss:
        out = subprocess.run(
            [sys.executable, __file__, "--rss-child", "culled", str(max(args.Ps))],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        print(out.stdout.strip())


if __name__ == "__main__":
    main()
